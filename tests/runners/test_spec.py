"""The job file: valid forms, and junk that must always give exit 2 and a message."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hmlkit.errors import SpecError
from runners.cli import app
from runners.spec import load_job, parse_duration

VALID = {"name": "train", "run": "python train.py"}


def write(tmp: Path, data: object) -> Path:
    path = tmp / "job.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_and_workdir(tmp_path):
    spec, workdir = load_job(write(tmp_path, VALID))
    assert workdir == tmp_path.resolve()
    assert spec.resources.gpus == 0 and spec.num_nodes == 1 and spec.retries == 0
    assert spec.experiment_name == "train"


@pytest.mark.parametrize("text,seconds", [(90, 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "override,problem",
    [
        ({"resources": {"gpus": -1}}, "resources.gpus: Input should be greater than or equal to 0"),
        ({"resources": {"gpu": 1}}, "resources.gpu: unknown field"),
        ({"max_runtime": "soon"}, "max_runtime: 'soon' is not a duration"),
        ({"num_nodes": 0}, "num_nodes: Input should be greater than or equal to 1"),
        ({"secrets": ["lower-case"]}, "secrets.0: String should match pattern"),
        ({"envs": {"MLFLOW_RUN_ID": "x"}}, "envs: MLFLOW_RUN_ID: set by hml for every job"),
        ({"run": None}, "run: Input should be a valid string"),
        ({"name": "bad name!"}, "name: String should match pattern"),
    ],
)
def test_errors_name_the_field(tmp_path, override, problem):
    with pytest.raises(SpecError) as err:
        load_job(write(tmp_path, {**VALID, **override}))
    assert any(line.startswith(f"{tmp_path / 'job.yaml'}: {problem}") for line in str(err.value).splitlines())


def test_set_overrides_params_and_fields(tmp_path):
    spec, _ = load_job(write(tmp_path, VALID), ["lr=0.1", "resources.gpus=2", "max_runtime=1h"])
    assert spec.params == {"lr": 0.1} and spec.resources.gpus == 2 and spec.max_runtime == 3600
    with pytest.raises(SpecError, match="expected key=value"):
        load_job(write(tmp_path, VALID), ["novalue"])


def run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = app.run(list(args))
    return rc, err.getvalue()


def test_cli_bad_file_is_exit_2_one_line_per_problem(tmp_path):
    rc, err = run_cli("submit", str(write(tmp_path, {"name": "x", "run": "", "resources": {"gpus": -2}})))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("hml: error: ") for line in lines)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
junk_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
fields = st.sampled_from(
    [
        "name",
        "run",
        "resources",
        "num_nodes",
        "envs",
        "params",
        "secrets",
        "max_runtime",
        "retries",
        "max_cost_usd",
        "workdir",
        "setup",
        "experiment",
        "bogus",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    junk=st.one_of(
        st.text(max_size=200),  # anything at all
        junk_values,
        st.dictionaries(fields, junk_values, max_size=6).map(
            lambda d: {k: v for k, v in d.items() if k != "run"}
        ),
        st.tuples(fields, junk_values).map(lambda kv: {**VALID, kv[0]: kv[1], "bogus": kv[1]}),
    )
)
def test_junk_job_files_always_exit_2_with_a_message(tmp_path, junk):
    path = tmp_path / "junk.yaml"
    if isinstance(junk, str):
        path.write_text(junk)
    else:
        path.write_text(yaml.safe_dump(junk))
    rc, err = run_cli("submit", str(path), "--dry-run")
    assert rc == 2, f"exit {rc} for {junk!r}: {err}"
    assert err.startswith("hml: error: ") and "Traceback" not in err


def test_usage_counts_node_hours_gpu_hours_and_cost():
    from runners.backends.base import Usage

    usage = Usage(nodes=4, gpus_per_node=8, gpu_hour_usd=2.5)
    assert usage.node_hours(1800) == 2.0
    assert usage.gpu_hours(1800) == 16.0
    assert usage.cost_usd(1800) == 40.0
    assert Usage().cost_usd(3600) == 0.0


def test_param_rules_hold_at_their_boundaries():
    from runners.spec import MAX_PARAM_KEY, MAX_PARAM_VALUE, param_problems

    assert param_problems("k" * MAX_PARAM_KEY, "v" * MAX_PARAM_VALUE) == []
    assert "longer than 250" in param_problems("k" * (MAX_PARAM_KEY + 1), 1)[0]
    assert "value longer than 6000" in param_problems("k", "v" * (MAX_PARAM_VALUE + 1))[0]
    for bad in ("a//b", ".", "a/./b", "a/", "/abs", "../up"):
        assert param_problems(bad, 1), bad
    assert param_problems("ok/with.dots-and space:colon", 1) == []


def test_duration_edges():
    assert parse_duration("0.5s") == 0.5
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(True)
    with pytest.raises(ValueError, match="positive"):
        parse_duration("0")


def test_set_values_edge_cases(tmp_path):
    with pytest.raises(SpecError, match="^--set: lr: empty value"):
        load_job(write(tmp_path, VALID), ["lr="])
    spec, _ = load_job(write(tmp_path, VALID), ["note=a=b"])  # the first = splits
    assert spec.params["note"] == "a=b"
    spec, _ = load_job(write(tmp_path, VALID), ["note=[unclosed"])  # not YAML: kept as text
    assert spec.params["note"] == "[unclosed"
    with pytest.raises(SpecError, match="^--set params=3: params: Input should be a valid dictionary"):
        load_job(write(tmp_path, VALID), ["params=3"])


@pytest.mark.parametrize(
    "text,mib",
    [("16GiB", 16384), ("16GB", 15259), ("512MiB", 512), ("1TiB", 1048576), ("2", 1908), ("1024K", 1)],
)
def test_memory_sizes_in_mib(text, mib):
    from runners.spec import memory_mib

    assert memory_mib(text) == mib


def test_memory_size_that_is_not_one():
    from runners.spec import memory_mib

    with pytest.raises(ValueError, match="not a size"):
        memory_mib("lots")
