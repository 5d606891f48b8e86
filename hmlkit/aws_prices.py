"""On-demand list prices of common GPU instance types, for when nothing better is known.

AWS's Pricing API is slow, regional and needs its own permission; spot prices come from the
EC2 spot price history instead, and a profile may carry its own table (negotiated rates).
These are public Linux on-demand prices in us-east-1, USD per instance hour, as listed on
the date below: a ceiling for cost estimates, not an invoice.
"""

from __future__ import annotations

TAKEN = "2026-11-01"
LIST_PRICES_USD: dict[str, float] = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g4dn.12xlarge": 3.912,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.12xlarge": 5.672,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.805,
    "g6.12xlarge": 4.602,
    "g6e.xlarge": 1.861,
    "g6e.12xlarge": 10.493,
    "p3.2xlarge": 3.06,
    "p3.8xlarge": 12.24,
    "p4d.24xlarge": 32.773,
    "p5.48xlarge": 98.32,
}
