"""Questions tests ask of a program run (``policies.offline.ProgramResult``) and nothing else does.

Kept with the tests so that the runner the offline evaluator loads carries no test helpers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from policies.offline import ProgramResult, Secret
from policies.taggable import tag_carrier


def missing_tags(result: ProgramResult, required: Mapping[str, str]) -> list[str]:
    """Taggable custom resources whose tags (AWS) or labels (Kubernetes) lack ``required``.

    Taggable as the ``required-tags`` rule sees it (``policies.taggable``), so a type the
    pack cannot place counts as taggable here too.
    """
    missing = []
    for res in result.resources:
        carrier = tag_carrier(res.type) if res.custom and not res.is_provider else None
        if carrier is None:
            continue
        value: Any = res.inputs
        for part in carrier.split("."):
            value = value.get(part) or {} if isinstance(value, Mapping) else {}
        absent = {k: v for k, v in required.items() if value.get(k) != v}
        if absent:
            missing.append(f"{res.urn}: {carrier} lacks {absent}")
    return missing


def plaintext_occurrences(result: ProgramResult, needle: str) -> list[str]:
    """Where ``needle`` appears outside a Pulumi secret, as ``urn:path`` strings."""
    hits = [f"{r.urn}:{p}" for r in result.resources for p in _plain_paths(r.raw_inputs, needle)]
    hits += [f"{r.urn}:outputs.{p}" for r in result.resources for p in _plain_paths(r.raw_outputs, needle)]
    hits += [f"stack:{p}" for p in _plain_paths(result.raw_outputs, needle)]
    return hits


def _plain_paths(value: Any, needle: str, path: str = "") -> Iterator[str]:
    if isinstance(value, Secret):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _plain_paths(v, needle, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _plain_paths(v, needle, f"{path}[{i}]")
    elif isinstance(value, str) and needle in value:
        yield path or "<value>"
