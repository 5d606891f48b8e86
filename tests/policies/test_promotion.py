"""The promotion rules as pure functions over facts: offline, no engine, no store, no server."""

from __future__ import annotations

import json

import pytest

from policies.promotion import DATA_RETAINED, LINEAGE_COMPLETE, LINEAGE_KEYS, RULES, SnapshotFacts, check

COMPLETE = {
    "hml.lineage.run_id": "0123abcd",
    "hml.lineage.inputs": json.dumps({"train": {"ref": "digits@v3", "digest": "ab" * 32}}),
    "hml.lineage.workdir_digest": "c" * 32,
    "hml.lineage.env_digest": "d" * 64,
    "hml.lineage.params_digest": "e" * 64,
}


def test_complete_lineage_on_kept_data_is_allowed():
    assert check(COMPLETE, [SnapshotFacts("digits@v3")]) == []


@pytest.mark.parametrize("key", sorted(LINEAGE_KEYS))
def test_each_missing_lineage_key_is_named(key):
    [refusal] = check({k: v for k, v in COMPLETE.items() if k != key}, [])
    assert refusal.rule is LINEAGE_COMPLETE and key in refusal.message
    assert str(refusal).startswith("[model-lineage-complete] ") and "to fix:" in str(refusal)


def test_no_snapshot_at_all_is_incomplete():
    [refusal] = check({**COMPLETE, "hml.lineage.inputs": "{}"}, [])
    assert refusal.rule is LINEAGE_COMPLETE and "no dataset snapshot" in refusal.message


def test_deleted_objects_and_an_unknown_store_are_refused_by_the_retention_rule():
    facts = [
        SnapshotFacts(
            "digits@v3", missing=("a", "b", "c", "d", "e"), retention="deletes objects after 1095 days"
        ),
        SnapshotFacts("labels@v1", unreachable="store 'lake' is not in the profile"),
    ]
    gone, unknown = check(COMPLETE, facts)
    assert gone.rule is DATA_RETAINED and unknown.rule is DATA_RETAINED
    assert gone.message == (
        "digits@v3: the store no longer has a, b, c and 2 more "
        "(the bucket's retention plan: deletes objects after 1095 days)"
    )
    assert "labels@v1: whether its objects are kept is unknown" in unknown.message


def test_rule_ids_are_unique_and_distinct_from_the_pack():
    from policies.registry import all_rules

    ids = [r.id for r in RULES]
    assert len(set(ids)) == len(ids)
    assert not set(ids) & {r.id for r in all_rules()}


def test_docs_list_every_promotion_rule_and_their_job_file_validates():
    import re
    from pathlib import Path

    import yaml

    from runners.spec import JobSpec

    doc = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    assert [r.id for r in RULES if f"| `{r.id}` |" not in doc] == []
    job = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", doc, re.S)[0])
    spec = JobSpec.model_validate(job)
    assert spec.model is not None and [t.kind for t in spec.triggers] == [
        "dataset digits",
        "cron '0 3 * * 1'",
    ]
