"""Versioned datasets: snapshots of an S3 prefix, and their materialisation next to a job.

A snapshot (``manifest``) freezes a prefix as the exact object versions it holds now; it lives
in the bucket beside the data, so it is readable without hml. ``store`` talks to the S3 API
(AWS or the on-prem S3-compatible endpoint of the profile); ``stage`` puts a snapshot's objects
into a host's content-addressed cache and links them into a read-only directory per input.
Which snapshot versions a run used is tracking's part (``runners.tracking.lineage``), and
``hml data`` is the CLI's (``runners.cli.data``).
"""
