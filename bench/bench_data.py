"""Dataset staging figures against a real moto server process (S3 API on loopback).

    .venv/bin/python bench/bench_data.py [--objects 2000] [--mb 100]

A versioned bucket holds 2,000 objects (100 MB). It is snapshotted, then staged into a
fresh host cache (``runners.data.stage``, the code the local target runs; an SSH host runs
the same ``hmlkit/node/datafetch.py``): (a) the first staging, (b) a re-run with a warm cache
(goal: 0 bytes fetched, under 1 s), (c) after one object changed (goal: only its bytes).
The baseline, in the same run, is an ``aws s3 sync``-style copy: boto3 lists the prefix and
downloads every object, 10 at a time (the AWS CLI's default concurrency), into a directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import report  # noqa: E402

from hmlkit.profile import DataStore  # noqa: E402
from runners.data.inputs import Input  # noqa: E402
from runners.data.manifest import parse_uri  # noqa: E402
from runners.data.stage import stage_here  # noqa: E402
from runners.data.store import Store  # noqa: E402
from tests.conftest import moto_server  # noqa: E402

BUCKET = "bench-datasets"
T = TypeVar("T")


def sync_copy(s3, prefix: str, dest: Path) -> int:
    """What ``aws s3 sync s3://bucket/prefix dest`` does on an empty dest: list, then get all."""
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for o in page.get("Contents", [])
    ]

    def get(key: str) -> int:
        path = dest / key
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(BUCKET, key, str(path))
        return path.stat().st_size

    with ThreadPoolExecutor(max_workers=10) as pool:
        return sum(pool.map(get, keys))


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--mb", type=float, default=100)
    args = parser.parse_args()
    size = int(args.mb * 1e6 / args.objects)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="eu-west-1"
    )
    with moto_server() as endpoint:
        config = DataStore(endpoint_url=endpoint, region="eu-west-1", buckets=[BUCKET])
        store = Store("lake", config)
        s3 = store.s3
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        with ThreadPoolExecutor(max_workers=10) as pool:
            list(
                pool.map(
                    lambda i: s3.put_object(
                        Bucket=BUCKET, Key=f"train/{i // 100:02d}/{i:05d}.bin", Body=os.urandom(size)
                    ),
                    range(args.objects),
                )
            )
        where = parse_uri(f"s3://{BUCKET}/train", "bench")
        t_snap, v1 = timed(lambda: store.snapshot("bench", where, "bench"))
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "host"
            t_sync, synced = timed(lambda: sync_copy(s3, "train/", Path(tmp) / "sync"))
            t_first, first = timed(lambda: stage_here([Input("train", v1, config)], cache))
            t_warm, warm = timed(lambda: stage_here([Input("train", v1, config)], cache))
            s3.put_object(Bucket=BUCKET, Key="train/00/00000.bin", Body=os.urandom(size))
            v2 = store.snapshot("bench", where, "bench")
            t_one, one = timed(lambda: stage_here([Input("train", v2, config)], cache))
        print(
            f"{args.objects} objects, {synced / 1e6:.1f} MB; "
            f"snapshot v1 (hashes every object) {t_snap:.2f} s\n"
            f"bytes fetched: first {first.fetched_bytes}, warm re-run {warm.fetched_bytes}, "
            f"after one change {one.fetched_bytes} (one object: {size})"
        )
        report(
            "dataset staging vs an aws s3 sync-style copy (boto3, 10 at a time) in the same run",
            [
                ("first staging (empty host cache)", t_first, t_sync),
                ("re-run, warm cache (goal: 0 bytes, < 1 s)", t_warm, t_sync),
                ("after one object changed (new snapshot version)", t_one, t_sync),
            ],
        )
        assert warm.fetched_bytes == 0 and one.fetched_bytes == size, "staging fetched more than it had to"


if __name__ == "__main__":
    main()
