"""What a new user meets at the CLI's edges, through the real ``hml`` executable: a refusal said
once and in full, blamed on the input at fault; short ids, filters and cancel that say what
they did; help and hints that can be typed or pasted as they are."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from hmlkit.profile import parse_profile
from tests.runners.helpers import hml, submit_json, write_job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "digits" / "job.yaml").read_text())


def _digits_job(tmp_path: Path, **fields: object) -> Path:
    shutil.copy(ROOT / "examples" / "digits" / "train.py", tmp_path / "train.py")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**EXAMPLE, **fields}, sort_keys=False))
    return job


def test_a_dry_run_refusal_names_every_problem_once(tmp_path):
    job = _digits_job(tmp_path, name="has spaces", run="", bogus=1)
    out = hml("submit", str(job), "--dry-run")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"hml: error: {job}: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{{0,62}}$'",
        f"hml: error: {job}: run: String should have at least 1 character",
        f"hml: error: {job}: bogus: unknown field; remove it or check its spelling",
        "not ready: 3 problems above",
    ]
    assert out.stdout == ""


def test_a_bad_set_value_is_blamed_on_the_set_not_the_job_file(tmp_path):
    job = _digits_job(tmp_path)
    out = hml("submit", str(job), "--set", "resources.gpus=abc")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "hml: error: --set resources.gpus=abc: resources.gpus: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]
    listed = hml("submit", str(job), "--set", "lr=[1, 2]", "--dry-run")
    assert listed.returncode == 2
    assert listed.stderr.splitlines() == [  # one line, not one per type a param may have
        "hml: error: --set lr=[1, 2]: params.lr: "
        "expected a string, number or true/false, not a list; quote it to pass it as text",
        "not ready: 1 problem above",
    ]
    key = hml("submit", str(job), "--set", "params.bad key!=1", "--dry-run")
    assert key.stderr.splitlines() == [
        "hml: error: --set params.bad key!=1: params: "
        "'bad key!': use letters, digits, spaces and _ - . / : only",
        "not ready: 1 problem above",
    ]


def test_the_job_file_and_a_set_are_each_blamed_for_their_own(tmp_path):
    job = _digits_job(tmp_path, name="has spaces", params={"bad key!": 1, "lr": 0.1})
    out = hml("submit", str(job), "--set", "resources.gpus=-1", "--set", "lr=0.5", "--dry-run")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"hml: error: {job}: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{{0,62}}$'",
        f"hml: error: {job}: params: 'bad key!': use letters, digits, spaces and _ - . / : only",
        "hml: error: --set resources.gpus=-1: resources.gpus: Input should be greater than or equal to 0",
        "not ready: 3 problems above",
    ]
    fixed = _digits_job(tmp_path, resources={"gpus": "two"})  # a --set that mends the file is fine
    assert hml("submit", str(fixed), "--set", "resources.gpus=0", "--dry-run").returncode == 0


def test_short_ids_state_and_target_filters_and_cancel_say_what_they_did(tmp_path, hml_home):
    laptop = tmp_path / "laptop.yaml"  # a target only a past run knows: the default profile lacks it
    laptop.write_text(yaml.safe_dump({"targets": {"laptop": {"kind": "local"}}}))
    job = write_job(tmp_path / "w", run="true")
    first, out = submit_json(str(job), "--target", "laptop", env={"HML_CONFIG": str(laptop)})
    assert out.returncode == 0, out.stderr
    ids = [first["run_id"]]
    while len({i[0] for i in ids}) == len(ids):  # until two ids share their first character
        run, out = submit_json(str(job))
        assert out.returncode == 0, out.stderr
        ids.append(run["run_id"])
    prefix = next(i[0] for i in ids if [j[0] for j in ids].count(i[0]) > 1)
    matching = sorted(i for i in ids if i.startswith(prefix))

    ambiguous = hml("status", prefix)
    assert ambiguous.returncode == 2
    shown = ", ".join(f"{i[:8]}..." for i in matching)
    assert ambiguous.stderr.splitlines() == [
        f"hml: error: run id {prefix!r} is ambiguous: matches {shown} (give more characters)"
    ]
    assert json.loads(hml("status", matching[0][:8], "-o", "json").stdout)["run_id"] == matching[0]

    def listed(*args: str) -> set[str]:
        out = hml("list", "-o", "json", *args)
        assert out.returncode == 0, out.stderr
        return {r["run_id"] for r in json.loads(out.stdout)}

    assert listed("--state", "finished") == listed("--state", "Finished") == set(ids)
    assert listed("--state", "running") == set()
    assert listed("--target", "laptop") == {first["run_id"]}
    unknown = hml("list", "--target", "nosuch")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--target': 'nosuch' is no target of the profile nor of any run here; "
        "known: laptop, local"
    )

    cancelled = hml("cancel", first["run_id"][:8], "-o", "json")
    assert cancelled.returncode == 0
    assert cancelled.stderr.splitlines() == [
        f"hml: run {first['run_id']} already FINISHED; nothing to cancel"
    ]
    assert json.loads(cancelled.stdout)["status"] == "FINISHED"


def test_the_data_hint_is_yaml_to_paste_into_the_profile():
    out = hml("data", "list")
    assert out.returncode == 2
    hint = re.fullmatch(
        r"hml: error: embedded default: stores: the profile names no dataset store; add e\.g\. (.*) "
        r"\(no endpoint_url: AWS S3\)",
        out.stderr.strip(),
    )
    assert hint, out.stderr
    pasted = yaml.safe_load(hint.group(1))
    assert pasted == {
        "stores": {"lake": {"buckets": ["ml-datasets"], "endpoint_url": "https://minio.internal:9000"}}
    }
    assert parse_profile(pasted, "hint").stores["lake"].buckets == ["ml-datasets"]


def test_help_names_arguments_as_they_are_typed():
    text = hml("submit", "--help").stdout
    assert text.splitlines()[0] == "Usage: hml submit [OPTIONS] JOB"
    assert "  JOB  The job file (YAML)\n" in text
    assert "{" not in text and "<str>" not in text
    check = hml("policy", "check", "--help").stdout
    assert check.splitlines()[0] == "Usage: hml policy check [OPTIONS] PROJECT_DIR"
    assert hml("status", "--help").stdout.splitlines()[0] == "Usage: hml status [OPTIONS] RUN"


def test_the_readme_table_lists_every_command():
    commands = re.findall(r"^  (\w+)\s", hml("--help").stdout.split("Commands:")[1], re.M)
    assert {"submit", "ui", "agent", "gc", "policy", "data"} <= set(commands)
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### The CLI")[1].split("Exit codes:")[0]
    assert [c for c in commands if f"`hml {c}" not in table] == []
