"""The snapshot manifest and the references a job or a command gives to one.

A manifest is plain JSON at ``s3://<bucket>/.hml-snapshots/<name>/<version>.json``: any S3
client can read it and fetch the exact object versions it lists, hml or not.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from hmlkit.errors import InvalidInput

DATASET_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
VERSION_PATTERN = r"^v[1-9][0-9]{0,8}$"
SNAPSHOTS = ".hml-snapshots/"
"""The key prefix of manifests in every dataset bucket (never part of a snapshot itself)."""
_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")
_REF = re.compile(r"^([^@]+)(?:@(.*))?$")
INPUT_REF_HELP = "a snapshot NAME@VERSION (digits@v3), NAME (its latest version) or s3://bucket/prefix"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Prefix(_Strict):
    bucket: str
    prefix: str
    """Empty, or ending in ``/``: a snapshot of ``data/train`` holds ``data/train/*`` only."""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class SnapshotRef(_Strict):
    name: str
    version: str | None = None
    """``None``: the latest version when the reference is resolved."""

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


def parse_uri(value: str, field: str) -> S3Prefix:
    match = _URI.match(value.strip())
    if not match:
        raise InvalidInput(field, [f"{value!r} is not an S3 prefix; use s3://bucket/prefix"])
    prefix = (match.group(2) or "").strip("/")
    if ".." in prefix.split("/") or prefix.startswith(SNAPSHOTS.rstrip("/")):
        raise InvalidInput(field, [f"{value!r}: a prefix without '..' and outside {SNAPSHOTS}"])
    return S3Prefix(bucket=match.group(1), prefix=f"{prefix}/" if prefix else "")


def parse_ref(value: str, field: str) -> SnapshotRef:
    match = _REF.match(value.strip())
    name, version = (match.group(1), match.group(2)) if match else (value, None)
    problems = []
    if not re.match(DATASET_NAME_PATTERN, name):
        problems.append(
            f"{name!r} is not a dataset name: lower-case letters, digits, '.', '_' and '-', "
            "at most 63, starting with a letter or digit (e.g. digits)"
        )
    if version is not None and not re.match(VERSION_PATTERN, version):
        problems.append(f"{version!r} is not a version: use v1, v2, ... (hml data show {name} lists them)")
    if problems:
        raise InvalidInput(field, problems)
    return SnapshotRef(name=name, version=version)


def input_ref_problem(value: str) -> str | None:
    """Why a job's ``inputs`` entry is no reference (None when it is one), checked at load."""
    try:
        if value.strip().startswith("s3://"):
            parse_uri(value, "")
        else:
            parse_ref(value, "")
    except InvalidInput as exc:
        return "; ".join(exc.problems) + f" (expected {INPUT_REF_HELP})"
    return None


class ObjectVersion(_Strict):
    key: str
    """Relative to the snapshot's prefix: the path inside the job's input directory."""
    version_id: str
    size: Annotated[int, Field(ge=0)]
    etag: str = ""
    sha256: str | None = None
    """The content's hash (snapshots always have it); an ad-hoc ``s3://`` input has none."""

    @property
    def cache_key(self) -> str:
        """The object's name in a host's cache: its content hash, or for an unhashed object its
        version's identity (an S3 object version never changes)."""
        if self.sha256:
            return self.sha256
        return "v-" + hashlib.sha256(f"{self.key}\0{self.version_id}".encode()).hexdigest()


class Snapshot(_Strict):
    format: Literal["hml-snapshot/1"] = "hml-snapshot/1"
    name: str
    version: str
    """``v1``, ``v2``, ...; ``latest`` for an ad-hoc ``s3://`` input resolved at submit."""
    source: str
    """``s3://bucket/prefix/``: where the objects live (keys below are relative to it)."""
    store: str
    created_by: str = ""
    created_at: str = ""
    objects: list[ObjectVersion]

    @property
    def where(self) -> S3Prefix:
        return parse_uri(self.source, "source")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def digest(self) -> str:
        """One hash over the exact objects (path, version, content): equal digests, equal data."""
        lines = "".join(
            f"{o.cache_key} {o.version_id} {o.key}\n" for o in sorted(self.objects, key=lambda o: o.key)
        )
        return hashlib.sha256(lines.encode()).hexdigest()

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.name, self.version)


def manifest_key(name: str, version: str) -> str:
    return f"{SNAPSHOTS}{name}/{version}.json"


def version_number(version: str) -> int:
    return int(version[1:]) if re.match(VERSION_PATTERN, version) else 0
