"""Versioned datasets against a real moto server process (tests/conftest.py) and real runs.

Snapshot, then change the objects, then a run on the old version sees exactly the old bytes;
a second run on the same host fetches nothing; a 2-node ssh job gets the inputs on both nodes
(read from the store by the hosts, or streamed over SSH), and so does a 2-node Slurm job, from
one copy on the shared file system; a host that cannot reach the store gets the bytes over SSH;
bad names, missing prefixes,
unversioned buckets and missing versions are refused with exit 2 before any run exists.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.runners.helpers import hml, status, submit_json, wait_finalized, write_job
from tests.runners.test_bad_input import assert_refused_without_debris, run_cli
from tests.runners.test_tracking_via_runner import cut_off_bed  # noqa: F401  (a fixture)

CHECK = """
import hashlib, json, os, pathlib, stat
d = pathlib.Path(os.environ["HML_INPUT_TRAIN"])
files = {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
         for p in sorted(d.rglob("*")) if p.is_file()}
writable = [str(p) for p in [d, *d.rglob("*")] if p.stat().st_mode & 0o222]
if os.environ.get("LOG_MODEL"):
    import mlflow
    mlflow.initialize_logged_model(name="m", source_run_id=os.environ["MLFLOW_RUN_ID"])
print("INPUT " + json.dumps({"files": files, "writable": writable}))
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def lake(s3, moto_endpoint, tmp_path, mlflow_server):
    """A versioned bucket of a store named in a fresh profile; (boto3 client, bucket, profile)."""
    bucket = f"ds-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    plain = f"plain-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=plain, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "tracking_uri": mlflow_server.url,
                "stores": {
                    "lake": {
                        "endpoint_url": moto_endpoint,
                        "region": "eu-west-1",
                        "buckets": [bucket, plain],
                    }
                },
                "targets": {"local": {"kind": "local"}},
            }
        )
    )
    return s3, bucket, profile


def data(profile: Path, *args: str) -> dict:
    out = hml("--config", str(profile), "data", *args, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


OLD = {"a.txt": b"alpha v1\n", "sub/b.bin": bytes(range(256)) * 40}


def put_all(s3, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body)


def test_snapshot_list_show_and_the_manifest_is_plain_json(lake):
    s3, bucket, profile = lake
    put_all(s3, bucket, "digits", OLD)
    s3.put_object(Bucket=bucket, Key="digitsextra/not-in.txt", Body=b"x")  # a sibling prefix stays out
    out = hml("--config", str(profile), "data", "snapshot", "digits", f"s3://{bucket}/digits")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "digits@v1"
    s3.put_object(Bucket=bucket, Key="digits/a.txt", Body=b"alpha v2\n")
    v2 = data(profile, "snapshot", "digits", f"s3://{bucket}/digits/")
    assert v2["ref"] == "digits@v2" and v2["objects"] == 2

    shown = data(profile, "show", "digits@v1")
    assert shown["objects"] == 2 and shown["bytes"] == sum(len(b) for b in OLD.values())
    assert shown["versions"] == ["v1", "v2"] and shown["runs"] == []
    assert data(profile, "show", "digits")["version"] == "v2"  # no version: the latest
    listed = data(profile, "list")
    assert [(r["name"], r["version"], r["versions"]) for r in listed] == [("digits", "v2", ["v1", "v2"])]

    # readable without hml: any S3 client gets the exact old bytes from the manifest alone
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=".hml-snapshots/digits/v1.json")["Body"].read())
    assert manifest["source"] == f"s3://{bucket}/digits/" and manifest["digest"] == shown["digest"]
    for obj in manifest["objects"]:
        body = s3.get_object(Bucket=bucket, Key="digits/" + obj["key"], VersionId=obj["version_id"])[
            "Body"
        ].read()
        assert body == OLD[obj["key"]] and sha(body) == obj["sha256"]

    text = hml("--config", str(profile), "data", "list")
    assert text.returncode == 0 and "digits" in text.stdout and "v2" in text.stdout


@pytest.mark.parametrize(
    "args,word",
    [
        (["snapshot", "Bad Name", "s3://{bucket}/digits"], "NAME"),
        (["snapshot", "digits@v2", "s3://{bucket}/digits"], "NAME"),
        (["snapshot", "digits", "http://{bucket}/digits"], "S3_PREFIX"),
        (["snapshot", "digits", "s3://{bucket}/nothing-here"], "no objects under this prefix"),
        (["snapshot", "digits", "s3://{plain}/digits"], "put-bucket-versioning"),
        (["snapshot", "digits", "s3://elsewhere-bucket/digits"], "is in no store"),
        (["show", "digits@v7"], "no such version"),
        (["show", "digits@7"], "v1, v2"),
        (["show", "nosuch"], "no such dataset"),
    ],
    ids=[
        "bad name",
        "name with version",
        "not s3",
        "empty prefix",
        "unversioned",
        "unknown bucket",
        "missing version",
        "bad version",
        "unknown dataset",
    ],
)
def test_bad_data_commands_exit_2_naming_the_fix(lake, hml_home, args, word):
    s3, bucket, profile = lake
    plain = yaml.safe_load(profile.read_text())["stores"]["lake"]["buckets"][1]
    put_all(s3, bucket, "digits", OLD)
    put_all(s3, plain, "digits", OLD)
    if args[0] == "show":
        assert (
            run_cli("--config", str(profile), "data", "snapshot", "digits", f"s3://{bucket}/digits")[0] == 0
        )
    rc, _, err = run_cli(
        "--config", str(profile), "data", *[a.format(bucket=bucket, plain=plain) for a in args]
    )
    assert_refused_without_debris(rc, err, word, hml_home)


def test_no_store_in_the_profile_is_exit_2(tmp_path, hml_home):
    rc, _, err = run_cli("data", "list")
    assert_refused_without_debris(rc, err, "stores", hml_home)


def _input_run(
    tmp_path: Path, profile: Path, ref: str, *sets: str, target: str = "local"
) -> tuple[dict, dict, str]:
    import sys

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "check.py").write_text(CHECK)
    job = write_job(work, name="uses-data", run=f"{sys.executable} -B check.py", inputs={"train": ref})
    args = [a for s in sets for a in ("--set", s)]
    summary, out = submit_json(str(job), "--target", target, *args, env={"HML_CONFIG": str(profile)})
    logs = hml("logs", summary["run_id"]).stdout
    assert out.returncode == 0, out.stderr + logs
    seen = [json.loads(line.split("INPUT ", 1)[1]) for line in logs.splitlines() if "INPUT " in line]
    assert seen, logs
    return summary, seen[0], logs


def test_a_run_on_an_old_version_sees_the_old_bytes_and_a_rerun_fetches_nothing(
    tmp_path, lake, mlflow_server
):
    s3, bucket, profile = lake
    put_all(s3, bucket, "digits", OLD)
    assert data(profile, "snapshot", "digits", f"s3://{bucket}/digits")["ref"] == "digits@v1"
    s3.put_object(Bucket=bucket, Key="digits/a.txt", Body=b"alpha v2, longer\n")
    s3.delete_object(Bucket=bucket, Key="digits/sub/b.bin")
    assert data(profile, "snapshot", "digits", f"s3://{bucket}/digits")["ref"] == "digits@v2"

    first, seen, _ = _input_run(tmp_path, profile, "digits@v2", "inputs.train=digits@v1", "envs.LOG_MODEL=1")
    assert seen["files"] == {k: sha(v) for k, v in OLD.items()}
    assert seen["writable"] == [], "the input directory must be read-only"
    assert status(first["run_id"])["data_bytes"] == {"localhost": sum(len(v) for v in OLD.values())}

    second, seen_again, _ = _input_run(tmp_path, profile, "digits@v1")
    assert seen_again == seen
    assert status(second["run_id"])["data_bytes"] == {"localhost": 0}

    latest, seen_latest, _ = _input_run(tmp_path, profile, "digits")
    assert seen_latest["files"] == {"a.txt": sha(b"alpha v2, longer\n")}

    client = mlflow_server.client()
    run = wait_finalized(client, first["run_id"])
    assert run.data.tags["hml.input.train"] == "digits@v1"
    [logged] = run.inputs.dataset_inputs
    assert logged.dataset.name == "digits@v1" and logged.dataset.source_type == "s3"
    source = json.loads(logged.dataset.source)
    assert source["uri"] == f"s3://{bucket}/digits/" and source["manifest"].endswith("digits/v1.json")
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "train"
    [model] = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert model.tags["hml.input.train"] == "digits@v1"
    used = {r["run_id"] for r in data(profile, "show", "digits@v1")["runs"]}
    assert used == {first["run_id"], second["run_id"]}
    assert {r["run_id"] for r in data(profile, "show", "digits@v2")["runs"]} == {latest["run_id"]}


def _seen_on_every_node(logs: str, files: dict[str, bytes], nodes: int) -> None:
    for rank in range(nodes):
        line = next(ln for ln in logs.splitlines() if ln.startswith(f"[node {rank}] INPUT "))
        seen = json.loads(line.split("INPUT ", 1)[1])
        assert seen["files"] == {k: sha(v) for k, v in files.items()} and seen["writable"] == []


def test_an_s3_prefix_input_is_pinned_at_submit(tmp_path, lake):
    s3, bucket, profile = lake
    put_all(s3, bucket, "raw", {"x.txt": b"raw\n"})
    _, seen, _ = _input_run(tmp_path, profile, f"s3://{bucket}/raw")
    assert seen["files"] == {"x.txt": sha(b"raw\n")}


def test_a_missing_version_fails_before_any_run(tmp_path, lake, hml_home):
    s3, bucket, profile = lake
    put_all(s3, bucket, "digits", OLD)
    data(profile, "snapshot", "digits", f"s3://{bucket}/digits")
    job = write_job(tmp_path / "w", run="true", inputs={"train": "digits@v1"})
    rc, _, err = run_cli("--config", str(profile), "submit", str(job), "--set", "inputs.train=digits@v3")
    assert rc == 2 and "inputs.train" in err and "digits@v3: no such version" in err, err
    assert not (hml_home / "runs").exists() or not list((hml_home / "runs").iterdir())


@pytest.mark.parametrize("via", ["auto", "ssh"])
def test_a_two_node_ssh_job_gets_the_inputs_on_both_nodes(tmp_path, lake, ssh_bed, via):
    s3, bucket, profile = lake
    files = {f"f{i}.txt": f"{via} {i}\n".encode() for i in range(3)}
    name = f"two-{via}"
    put_all(s3, bucket, name, files)
    data(profile, "snapshot", name, f"s3://{bucket}/{name}")
    raw = yaml.safe_load(profile.read_text())
    known = tmp_path / "known_hosts"
    known.write_text(ssh_bed.known_hosts_text())
    raw["targets"]["onprem"] = ssh_bed.target(known, data_via=via)
    profile.write_text(yaml.safe_dump(raw))
    summary, _, logs = _input_run(tmp_path, profile, f"{name}@v1", "num_nodes=2", target="onprem")
    _seen_on_every_node(logs, files, 2)
    size = sum(len(v) for v in files.values())
    shown = status(summary["run_id"])
    assert sorted(shown["data_bytes"].values()) == [size, size]
    assert sorted(shown.get("data_streamed", {}).values()) == ([size, size] if via == "ssh" else [])
    again, _, _ = _input_run(tmp_path, profile, f"{name}@v1", "num_nodes=2", target="onprem")
    assert sorted(status(again["run_id"])["data_bytes"].values()) == [0, 0]


def test_auto_placement_prefers_the_target_near_the_inputs(tmp_path, lake, hml_home):
    s3, bucket, profile = lake
    put_all(s3, bucket, "digits", OLD)
    data(profile, "snapshot", "digits", f"s3://{bucket}/digits")
    raw = yaml.safe_load(profile.read_text())
    raw["targets"] = {"here": {"kind": "local"}, "by-the-lake": {"kind": "local", "near": ["lake"]}}
    raw["placement"] = ["here", "by-the-lake"]
    profile.write_text(yaml.safe_dump(raw))
    with_inputs = write_job(tmp_path / "a", run="true", inputs={"train": "digits@v1"})
    rc, out, err = run_cli(
        "--config", str(profile), "submit", str(with_inputs), "-t", "auto", "--dry-run", "-o", "json"
    )
    assert rc == 0, err
    plan = json.loads(out.splitlines()[0])
    assert plan["target"] == "by-the-lake"
    assert plan["transfer_bytes"] == {"here": sum(len(v) for v in OLD.values()), "by-the-lake": 0}
    assert plan["inputs"] == {"train": "digits@v1"}
    without = write_job(tmp_path / "b", run="true")
    rc, out, err = run_cli(
        "--config", str(profile), "submit", str(without), "-t", "auto", "--dry-run", "-o", "json"
    )
    assert rc == 0 and json.loads(out.splitlines()[0])["target"] == "here", err
    raw["targets"]["here"]["near"] = ["nowhere"]
    profile.write_text(yaml.safe_dump(raw))
    rc, _, err = run_cli("--config", str(profile), "submit", str(without), "--dry-run")
    assert_refused_without_debris(rc, err, "targets.here.near", hml_home)


def test_the_digits_example_trains_from_its_snapshot(tmp_path, lake, mlflow_server):
    import subprocess
    import sys

    s3, bucket, profile = lake
    digits = Path(__file__).resolve().parents[2] / "examples" / "digits"
    subprocess.run([sys.executable, str(digits / "publish_data.py"), f"s3://{bucket}/digits"], check=True)
    assert data(profile, "snapshot", "digits", f"s3://{bucket}/digits")["ref"] == "digits@v1"
    sets = ["inputs.digits=digits@v1", "epochs=2", f"run={sys.executable} train.py"]
    args = [a for s in sets for a in ("--set", s)]
    summary, out = submit_json(str(digits / "job.yaml"), *args, env={"HML_CONFIG": str(profile)}, timeout=600)
    logs = hml("logs", summary["run_id"]).stdout
    assert out.returncode == 0, out.stderr + logs
    assert "data: 1797 samples from " in logs
    run = wait_finalized(mlflow_server.client(), summary["run_id"])
    assert run.data.metrics["test_accuracy"] >= 0.8
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["digits@v1"]


def test_a_two_node_slurm_job_reads_the_inputs_staged_once_on_the_login_node(
    tmp_path, lake, ssh_bed, slurm_bed
):
    """The cache under remote_root is on the file system the nodes share: one fetch, by the
    login node, serves every node; a re-run fetches nothing."""
    s3, bucket, profile = lake
    files = {f"f{i}.txt": f"slurm {i}\n".encode() for i in range(3)}
    put_all(s3, bucket, "on-slurm", files)
    data(profile, "snapshot", "on-slurm", f"s3://{bucket}/on-slurm")
    raw = yaml.safe_load(profile.read_text())
    known = tmp_path / "known_hosts"
    known.write_text(ssh_bed.known_hosts_text())
    raw["targets"]["cluster"] = slurm_bed.target(ssh_bed.hosts[0], known)
    profile.write_text(yaml.safe_dump(raw))
    slurm_bed.wait_idle()
    summary, _, logs = _input_run(tmp_path, profile, "on-slurm@v1", "num_nodes=2", target="cluster")
    _seen_on_every_node(logs, files, 2)
    assert list(status(summary["run_id"])["data_bytes"].values()) == [sum(len(v) for v in files.values())]
    again, _, logs = _input_run(tmp_path, profile, "on-slurm@v1", "num_nodes=2", target="cluster")
    _seen_on_every_node(logs, files, 2)
    assert list(status(again["run_id"])["data_bytes"].values()) == [0]


def test_a_host_that_cannot_reach_the_store_gets_the_inputs_over_ssh(
    tmp_path,
    lake,
    cut_off_bed,  # noqa: F811  (the imported fixture)
    moto_endpoint,
):
    """data_via: auto on a host in its own network namespace (see test_tracking_via_runner.py):
    its presigned URLs refuse, so the runner streams the objects over SSH."""
    host = cut_off_bed.hosts[0]
    port = int(moto_endpoint.rsplit(":", 1)[1].strip("/"))
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
    inside = subprocess.run(
        ["ip", "netns", "exec", host.netns, sys.executable, "-c", probe], capture_output=True, text=True
    )
    assert inside.returncode != 0 and "ConnectionRefusedError" in inside.stderr, "the host reaches the store"
    s3, bucket, profile = lake
    files = {"a.txt": b"far away\n", "sub/b.bin": bytes(range(256)) * 8}
    put_all(s3, bucket, "far", files)
    data(profile, "snapshot", "far", f"s3://{bucket}/far")
    raw = yaml.safe_load(profile.read_text())
    known = tmp_path / "known_hosts"
    known.write_text(cut_off_bed.known_hosts_text())
    raw["targets"]["closed"] = cut_off_bed.target(known, data_via="auto", tracking_via="runner")
    profile.write_text(yaml.safe_dump(raw))
    summary, seen, logs = _input_run(tmp_path, profile, "far@v1", target="closed")
    assert seen["files"] == {k: sha(v) for k, v in files.items()} and seen["writable"] == []
    size = sum(len(v) for v in files.values())
    label = f"{host.user}@{host.address}:{host.port}"
    shown = status(summary["run_id"])
    assert shown["data_bytes"] == {label: size} and shown["data_streamed"] == {label: size}
    assert f"[hml] inputs: the runner sent {size} bytes to {label} over SSH" in logs
