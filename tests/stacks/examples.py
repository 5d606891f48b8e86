"""The example stacks and the secret values the tests give them (to look for leaks)."""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2] / "stacks" / "platform"
STACKS = ("onprem", "aws-dev", "hybrid")
SECRETS = {
    "trackingDbUri": "postgresql://mlflow:pg-Pa55word@pg.internal:5432/mlflow",
    "trackingAdminPassword": "mlflow-Adm1n-pass",
    "s3AccessKey": "MINIOACCESSKEY01",
    "s3SecretKey": "minio-Secret-Key-0123456789",
}
