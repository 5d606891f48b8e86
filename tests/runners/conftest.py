"""Fixtures of the runner tests that need more than the shared ones (tests/conftest.py)."""

from tests.slurmbed import slurm_bed  # noqa: F401  (a real Slurm cluster, session-wide)
