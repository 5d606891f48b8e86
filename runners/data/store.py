"""The S3 API side of datasets: snapshot a prefix, read manifests back, hand out object versions.

boto3 is imported lazily (``hml --help`` stays fast). Errors a user can fix (no such bucket,
no versioning, an empty prefix, a version that does not exist) are ``InvalidInput`` (exit 2)
naming the field and the fix; the store being down is a ``BackendError``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from hmlkit.errors import BackendError, InvalidInput
from hmlkit.extras import require
from hmlkit.profile import DataStore, Profile
from runners.data.manifest import (
    SNAPSHOTS,
    ObjectVersion,
    S3Prefix,
    Snapshot,
    SnapshotRef,
    manifest_key,
    version_number,
)

PRESIGN_SECONDS = 3600
"""How long a host may use the URLs it is given: the time to fetch, not the job's life."""


class Store:
    """One store of the profile, reached through boto3."""

    def __init__(self, name: str, config: DataStore) -> None:
        self.name = name
        self.config = config
        boto3 = require("boto3", "datasets in S3")
        botocore = require("botocore.config", "datasets in S3")
        self.s3 = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            config=botocore.Config(retries={"max_attempts": 3}, max_pool_connections=16),
        )

    def _call(self, what: str, fn: Any, *also: str, **kw: Any) -> Any:
        """``fn(**kw)``; KeyError(code) for a missing or forbidden thing (and the codes ``also``
        names), BackendError for the store failing."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kw)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404", "NoSuchKey", "NoSuchVersion", "AccessDenied", "403", *also):
                raise KeyError(code) from exc
            raise BackendError(f"store {self.name!r}: {what}: {exc}") from None
        except BotoCoreError as exc:
            raise BackendError(f"store {self.name!r}: {what}: {exc}") from None

    def check_versioned(self, where: S3Prefix, field: str) -> None:
        try:
            got = self._call("GetBucketVersioning", self.s3.get_bucket_versioning, Bucket=where.bucket)
        except KeyError:
            raise InvalidInput(
                field, [f"bucket {where.bucket!r} does not exist in store {self.name!r} (or is not yours)"]
            ) from None
        if got.get("Status") != "Enabled":
            raise InvalidInput(
                field,
                [
                    f"bucket {where.bucket!r} has no versioning, so a snapshot could not pin its objects; "
                    f"enable it (the ObjectStore component does; by hand: aws s3api put-bucket-versioning "
                    f"--bucket {where.bucket} --versioning-configuration Status=Enabled)"
                ],
            )

    def current(self, where: S3Prefix) -> list[ObjectVersion]:
        """Every object under the prefix as it is now: its latest version, delete markers left out."""
        found = []
        pages = self.s3.get_paginator("list_object_versions").paginate(
            Bucket=where.bucket, Prefix=where.prefix
        )
        try:
            for page in pages:
                for v in page.get("Versions", []):
                    if v["IsLatest"] and not v["Key"].startswith(SNAPSHOTS) and not v["Key"].endswith("/"):
                        found.append(
                            ObjectVersion(
                                key=v["Key"][len(where.prefix) :],
                                version_id=v["VersionId"],
                                size=v["Size"],
                                etag=v.get("ETag", "").strip('"'),
                            )
                        )
        except Exception as exc:  # botocore: connection and client errors alike
            raise BackendError(f"store {self.name!r}: listing {where.uri}: {exc}") from None
        return sorted(found, key=lambda o: o.key)

    def _hash(self, where: S3Prefix, obj: ObjectVersion) -> ObjectVersion:
        body = self.open(where, obj)
        h = hashlib.sha256()
        for block in iter(lambda: body.read(1 << 20), b""):
            h.update(block)
        return obj.model_copy(update={"sha256": h.hexdigest()})

    def open(self, where: S3Prefix, obj: ObjectVersion) -> Any:
        """A stream of exactly this object version."""
        out = self._call(
            f"GetObject {obj.key}",
            self.s3.get_object,
            Bucket=where.bucket,
            Key=where.prefix + obj.key,
            VersionId=obj.version_id,
        )
        return out["Body"]

    def presign(self, where: S3Prefix, obj: ObjectVersion) -> str:
        """A short-lived GET of this version: a host fetches it without holding credentials."""
        url: str = self.s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": where.bucket, "Key": where.prefix + obj.key, "VersionId": obj.version_id},
            ExpiresIn=PRESIGN_SECONDS,
        )
        return url

    def has(self, where: S3Prefix, obj: ObjectVersion) -> bool:
        """Whether the store still holds exactly this object version (lifecycle rules delete them)."""
        try:
            self._call(
                f"HeadObject {obj.key}",
                self.s3.head_object,
                Bucket=where.bucket,
                Key=where.prefix + obj.key,
                VersionId=obj.version_id,
            )
        except KeyError as exc:
            if exc.args[0] in ("AccessDenied", "403"):  # not knowing is not gone
                raise BackendError(f"store {self.name!r}: not allowed to read {where.uri}{obj.key}") from None
            return False
        return True

    def lifecycle(self, bucket: str) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules (its retention plan, as S3 applies it); [] without any."""
        try:
            got = self._call(
                "GetBucketLifecycleConfiguration",
                self.s3.get_bucket_lifecycle_configuration,
                "NoSuchLifecycleConfiguration",
                Bucket=bucket,
            )
        except KeyError:
            return []
        return list(got.get("Rules", []))

    # -- manifests ----------------------------------------------------------------
    def versions(self, bucket: str, name: str) -> list[str]:
        prefix = f"{SNAPSHOTS}{name}/"
        try:
            out = self._call("ListObjectsV2", self.s3.list_objects_v2, Bucket=bucket, Prefix=prefix)
        except KeyError:
            return []
        names = [
            o["Key"][len(prefix) : -len(".json")]
            for o in out.get("Contents", [])
            if o["Key"].endswith(".json")
        ]
        return sorted((v for v in names if version_number(v)), key=version_number)

    def names(self, bucket: str) -> list[str]:
        try:
            out = self._call(
                "ListObjectsV2", self.s3.list_objects_v2, Bucket=bucket, Prefix=SNAPSHOTS, Delimiter="/"
            )
        except KeyError:
            return []
        return sorted(p["Prefix"][len(SNAPSHOTS) :].rstrip("/") for p in out.get("CommonPrefixes", []))

    def read(self, bucket: str, name: str, version: str) -> Snapshot:
        out = self._call("GetObject", self.s3.get_object, Bucket=bucket, Key=manifest_key(name, version))
        try:
            data = json.loads(out["Body"].read())
            stated = data.pop("digest", None)
            snap = Snapshot.model_validate(data)
        except ValueError as exc:  # JSON or pydantic: not a manifest hml can read
            raise BackendError(
                f"s3://{bucket}/{manifest_key(name, version)}: not a snapshot manifest: {exc}"
            ) from None
        if stated != snap.digest:
            raise BackendError(
                f"s3://{bucket}/{snap.manifest_key}: its digest does not match its objects; it was edited"
            )
        return snap

    def snapshot(self, name: str, where: S3Prefix, field: str) -> Snapshot:
        """Freeze the prefix as it is now, as the next version of ``name``.

        Objects unchanged since the previous version (same key and version id) keep its hash;
        the others are read once to hash them.
        """
        self.check_versioned(where, field)
        objects = self.current(where)
        if not objects:
            raise InvalidInput(
                field, [f"{where.uri}: no objects under this prefix; check the path (aws s3 ls {where.uri})"]
            )
        done = self.versions(where.bucket, name)
        known: dict[tuple[str, str], str | None] = {}
        if done:
            previous = self.read(where.bucket, name, done[-1])
            if previous.source != where.uri:
                raise InvalidInput(
                    field,
                    [f"dataset {name!r} snapshots {previous.source}, not {where.uri}; pick another name"],
                )
            known = {(o.key, o.version_id): o.sha256 for o in previous.objects}
        with ThreadPoolExecutor(max_workers=8) as pool:
            hashed = list(
                pool.map(
                    lambda o: (
                        o.model_copy(update={"sha256": known[(o.key, o.version_id)]})
                        if known.get((o.key, o.version_id))
                        else self._hash(where, o)
                    ),
                    objects,
                )
            )
        version = f"v{version_number(done[-1]) + 1 if done else 1}"
        snap = Snapshot(
            name=name,
            version=version,
            source=where.uri,
            store=self.name,
            created_by=getpass.getuser(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            objects=hashed,
        )
        body = json.dumps({**snap.model_dump(mode="json"), "digest": snap.digest}, indent=1).encode()
        try:  # written once: a snapshot made meanwhile under the same version is not overwritten
            self._call(
                "PutObject",
                self.s3.put_object,
                "PreconditionFailed",
                Bucket=where.bucket,
                Key=snap.manifest_key,
                Body=body,
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except KeyError:
            raise BackendError(
                f"{snap.ref} was written meanwhile by another snapshot; run it again"
            ) from None
        return snap


def stores(profile: Profile, field: str = "stores") -> Iterator[tuple[str, DataStore, str]]:
    """(store name, config, bucket) for every dataset bucket of the profile."""
    if not profile.stores:
        raise InvalidInput(
            profile.source,
            [
                f"{field}: the profile names no dataset store; add e.g. stores: {{lake: {{buckets: "
                "[ml-datasets], endpoint_url: https://minio.internal:9000}} (no endpoint_url: AWS S3)"
            ],
        )
    for name, config in profile.stores.items():
        for bucket in config.buckets:
            yield name, config, bucket


def store_of(profile: Profile, bucket: str, field: str) -> Store:
    for name, config, b in stores(profile, field):
        if b == bucket:
            return Store(name, config)
    known = ", ".join(b for _, _, b in stores(profile, field))
    raise InvalidInput(
        field,
        [
            f"bucket {bucket!r} is in no store of {profile.source} (known: {known}); "
            "add it to a store's buckets"
        ],
    )


def find(profile: Profile, ref: SnapshotRef, field: str) -> Snapshot:
    """The snapshot a reference names (its latest version when it names none)."""
    for name, config, bucket in stores(profile, field):
        store = Store(name, config)
        versions = store.versions(bucket, ref.name)
        if not versions:
            continue
        if ref.version is None:
            return store.read(bucket, ref.name, versions[-1])
        if ref.version not in versions:
            raise InvalidInput(
                field,
                [f"{ref}: no such version; {ref.name} has {', '.join(versions)} (hml data show {ref.name})"],
            )
        return store.read(bucket, ref.name, ref.version)
    raise InvalidInput(
        field, [f"{ref.name!r}: no such dataset; hml data list shows them, hml data snapshot makes one"]
    )


def current(profile: Profile, where: S3Prefix, name: str, field: str) -> Snapshot:
    """An ``s3://`` input: the prefix's objects as they are at submit, pinned by version id."""
    store = store_of(profile, where.bucket, field)
    store.check_versioned(where, field)
    objects = store.current(where)
    if not objects:
        raise InvalidInput(
            field, [f"{where.uri}: no objects under this prefix; check the path (aws s3 ls {where.uri})"]
        )
    return Snapshot(name=name, version="latest", source=where.uri, store=store.name, objects=objects)
