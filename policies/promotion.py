"""Promotion rules: which model versions may become the champion, as pure functions over facts.

Why here and not in the CrossGuard pack: a model version is no Pulumi resource, yet the rule is
the same kind of thing as the pack's (an organisation's rule written once, with an id, a
remediation and a message naming what broke it), and it must be checkable offline, from what
the registry and the store say, without any engine. The runner gathers the facts (the version's
lineage tags, whether each snapshot's pinned object versions still exist) and calls ``check``;
a refusal names its rule id. Standard library only: ``hml model promote`` needs no Pulumi.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LINEAGE_KEYS = {
    "hml.lineage.run_id": "the run that trained it",
    "hml.lineage.inputs": "the dataset snapshot versions and digests",
    "hml.lineage.workdir_digest": "the digest of the code it ran",
    "hml.lineage.env_digest": "the environment (image or installed packages digest)",
    "hml.lineage.params_digest": "the hyper-parameters",
}
"""What a version must carry to be promoted: which data, code, environment and params made it."""


@dataclass(frozen=True)
class PromotionRule:
    id: str
    description: str
    remediation: str


LINEAGE_COMPLETE = PromotionRule(
    "model-lineage-complete",
    "A model version is promoted only with its complete lineage: run, dataset snapshots (versions "
    "and digests), code digest, environment and params.",
    "Register it from an hml run of a job with a model: section and snapshot inputs (hml data "
    "snapshot, inputs: {train: NAME@VERSION}); it records the lineage itself.",
)
DATA_RETAINED = PromotionRule(
    "model-data-retained",
    "A model version is not promoted when the objects of a snapshot it was trained on are gone "
    "(the retention plan's lifecycle rules deleted them): it could not be retrained or audited.",
    "Retrain on a snapshot whose objects are kept (hml data snapshot, then hml retrain JOB --on "
    "NAME), or keep the data longer in the retention plan.",
)
RULES = (LINEAGE_COMPLETE, DATA_RETAINED)


@dataclass(frozen=True)
class SnapshotFacts:
    """What the store says now about one snapshot a version was trained on."""

    ref: str
    """``NAME@VERSION``."""
    missing: tuple[str, ...] = ()
    """Object keys whose pinned version the store no longer has (the manifest's own key if it is gone)."""
    unreachable: str = ""
    """Why the store could not be asked (then nothing is known: the rule refuses)."""
    retention: str = ""
    """The bucket's lifecycle rules in words (``deletes objects after 1095 days...``), for the message."""


@dataclass(frozen=True)
class Refusal:
    rule: PromotionRule
    message: str

    def __str__(self) -> str:
        return f"[{self.rule.id}] {self.message}; to fix: {self.rule.remediation}"


def check(lineage: Mapping[str, str], snapshots: Sequence[SnapshotFacts]) -> list[Refusal]:
    """Every reason ``lineage`` (a version's tags) and ``snapshots`` forbid promotion; [] allows it."""
    refusals = []
    missing = [f"{key} ({what})" for key, what in LINEAGE_KEYS.items() if not lineage.get(key)]
    if missing:
        refusals.append(Refusal(LINEAGE_COMPLETE, "the version lacks " + ", ".join(missing)))
    elif lineage.get("hml.lineage.inputs") in ("{}", "[]"):
        refusals.append(Refusal(LINEAGE_COMPLETE, "the version was trained on no dataset snapshot"))
    for snap in snapshots:
        if snap.unreachable:
            refusals.append(
                Refusal(
                    DATA_RETAINED, f"{snap.ref}: whether its objects are kept is unknown: {snap.unreachable}"
                )
            )
        elif snap.missing:
            shown = ", ".join(snap.missing[:3]) + (
                f" and {len(snap.missing) - 3} more" if len(snap.missing) > 3 else ""
            )
            why = f" (the bucket's retention plan: {snap.retention})" if snap.retention else ""
            refusals.append(Refusal(DATA_RETAINED, f"{snap.ref}: the store no longer has {shown}{why}"))
    return refusals
