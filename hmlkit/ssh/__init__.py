"""The one SSH layer: verified connections, staging, remote launch, following, GPU queries.

Every target that reaches a machine's shell (ssh, and the cloud and Slurm targets that stand
on it) and the on-prem GPU host inventory use this package; it imports no product package.
"""
