"""Whether the snapshots a version was trained on still exist: the facts the promotion rules read.

The retention plan becomes the buckets' lifecycle rules (``components.retention``); once they
delete a pinned object version, the snapshot can no longer be fetched, so the model made from
it can be neither retrained nor audited. The store itself is asked: the manifest is read, each
pinned version checked with a HEAD, and the bucket's lifecycle rules read, to say why in the refusal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hmlkit.errors import HmlError
from hmlkit.profile import Profile
from policies.promotion import SnapshotFacts
from runners.data.manifest import S3Prefix, manifest_key, parse_ref, parse_uri


def _lifecycle_words(rules: list[dict[str, Any]]) -> str:
    said = []
    for rule in rules:
        if rule.get("Status") != "Enabled":
            continue
        if days := rule.get("Expiration", {}).get("Days"):
            said.append(f"deletes objects {days} days after they were written")
        if days := rule.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays"):
            said.append(f"deletes replaced versions after {days} days")
    return ", ".join(said)


def _facts(profile: Profile, ref: str, source: str, store_name: str) -> SnapshotFacts:
    from runners.data.store import Store

    parsed = parse_ref(ref, "hml.lineage.inputs")
    where: S3Prefix = parse_uri(source, "hml.lineage.inputs")
    config = profile.stores.get(store_name)
    if config is None or parsed.version is None:
        return SnapshotFacts(
            ref, unreachable=f"store {store_name!r} is not in the profile ({profile.source})"
        )
    store = Store(store_name, config)
    try:
        snap = store.read(where.bucket, parsed.name, parsed.version)
    except KeyError:
        return SnapshotFacts(
            ref, missing=(manifest_key(parsed.name, parsed.version),), retention=_rules(store, where)
        )
    except HmlError as exc:
        return SnapshotFacts(ref, unreachable=str(exc))

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            kept = list(pool.map(lambda o: store.has(where, o), snap.objects))
        missing = tuple(o.key for o, ok in zip(snap.objects, kept, strict=True) if not ok)
    except HmlError as exc:
        return SnapshotFacts(ref, unreachable=str(exc))
    return SnapshotFacts(ref, missing=missing, retention=_rules(store, where) if missing else "")


def _rules(store: Any, where: S3Prefix) -> str:
    try:
        return _lifecycle_words(store.lifecycle(where.bucket))
    except HmlError:
        return ""


def snapshot_facts(profile: Profile, lineage: Mapping[str, str]) -> list[SnapshotFacts]:
    """The facts for every snapshot in a version's ``hml.lineage.inputs`` (none when it has none)."""
    try:
        inputs = json.loads(lineage.get("hml.lineage.inputs") or "{}")
    except ValueError:
        return [SnapshotFacts("hml.lineage.inputs", unreachable="the tag is not JSON; it was edited")]
    return [_facts(profile, d["ref"], d["source"], d["store"]) for d in inputs.values()]
