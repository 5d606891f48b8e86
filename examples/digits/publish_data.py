"""Seed an S3 prefix with the digits data as CSV, to snapshot it as a dataset.

    python publish_data.py s3://ml-datasets/digits
    hml data snapshot digits s3://ml-datasets/digits
    hml submit job.yaml --set inputs.digits=digits@v1

The endpoint and credentials are boto3's own (``AWS_ENDPOINT_URL`` for an on-prem store).
"""

from __future__ import annotations

import io
import sys

import boto3
import numpy as np
from sklearn.datasets import load_digits


def main(uri: str) -> None:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    x, y = load_digits(return_X_y=True)
    out = io.StringIO()
    np.savetxt(out, np.column_stack([x, y]), delimiter=",", fmt="%g")
    key = f"{prefix.strip('/')}/digits.csv".lstrip("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=out.getvalue().encode())
    print(f"s3://{bucket}/{key}: {len(y)} samples")


if __name__ == "__main__":
    main(sys.argv[1])
