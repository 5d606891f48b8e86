"""A job's ``inputs`` resolved to exact snapshots before any run exists, and kept with the run.

Resolution is input checking: a dataset or version that does not exist is refused (exit 2)
before the MLflow run is opened. The resolved snapshots go into the run's directory, so a
retry or a restarted supervisor stages the very same object versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmlkit.profile import DataStore, Profile
from runners.data.manifest import Snapshot, parse_ref, parse_uri

INPUTS_FILE = "inputs.json"


@dataclass(frozen=True)
class Input:
    """One resolved input of a job: the snapshot and the store config to reach it."""

    name: str
    snapshot: Snapshot
    store: DataStore

    @property
    def env_name(self) -> str:
        return "HML_INPUT_" + self.name.upper()


def resolve(refs: dict[str, str], profile: Profile, source: str) -> list[Input]:
    from runners.data import store

    found = []
    for name, ref in refs.items():
        field = f"{source}: inputs.{name}"
        if ref.strip().startswith("s3://"):
            snap = store.current(profile, parse_uri(ref, field), name, field)
        else:
            snap = store.find(profile, parse_ref(ref, field), field)
        found.append(Input(name, snap, profile.stores[snap.store]))
    return found


def far_bytes(target: dict[str, Any], inputs: list[Input]) -> int:
    """Input bytes from stores the target is not ``near``: what would cross a slow link to it
    (at most: a host's cache may hold some already)."""
    near = set(target.get("near") or [])
    return sum(i.snapshot.size for i in inputs if i.snapshot.store not in near)


def save(directory: Path, inputs: list[Input]) -> None:
    data = [
        {"name": i.name, "snapshot": i.snapshot.model_dump(mode="json"), "store": i.store.model_dump()}
        for i in inputs
    ]
    (directory / INPUTS_FILE).write_text(json.dumps(data))


def load(directory: Path) -> list[Input]:
    path = directory / INPUTS_FILE
    if not path.is_file():
        return []
    return [
        Input(d["name"], Snapshot.model_validate(d["snapshot"]), DataStore.model_validate(d["store"]))
        for d in json.loads(path.read_text())
    ]
