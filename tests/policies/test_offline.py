"""The offline program runner: what a program registers comes back typed, isolated and secret-aware."""

from __future__ import annotations

import textwrap

import pulumi
import pulumi_aws as aws
import pytest

from policies.offline import Secret, load_stack_config, run_program, run_project
from tests.programs import missing_tags, plaintext_occurrences


def _program() -> None:
    password = pulumi.Config("platform").require_secret("password")
    parent = pulumi.ComponentResource("hybridml:test:Thing", "thing")
    bucket = aws.s3.Bucket(
        "thing-bucket", tags={"team": "ml"}, opts=pulumi.ResourceOptions(parent=parent, protect=True)
    )
    aws.secretsmanager.SecretVersion(
        "thing-secret",
        secret_id=bucket.id,
        secret_string=password,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[bucket]),
    )
    parent.register_outputs({"bucket": bucket.bucket})
    pulumi.export("bucketArn", bucket.arn)
    pulumi.export("password", password)


def _run():
    return run_program(
        _program,
        project="proj",
        stack="dev",
        config={"platform:password": "hunter2"},
        secret_keys=("platform:password",),
    )


def test_records_types_parents_options_and_outputs():
    result = _run()
    component = result.named("thing")
    bucket = result.named("thing-bucket")
    version = result.named("thing-secret")
    assert component.parent == result.stack_urn
    assert bucket.parent == component.urn and version.parent == component.urn
    assert bucket.options.protect is True
    assert version.options.depends_on == (bucket.urn,)
    assert bucket.inputs["tags"] == {"team": "ml"}
    assert component.outputs == {"bucket": "thing-bucket"}
    assert result.outputs["bucketArn"].startswith("arn:aws:s3:")


def test_secrets_stay_marked_and_plaintext_search_finds_leaks():
    result = _run()
    assert result.named("thing-secret").raw_inputs["secretString"] == Secret("hunter2")
    assert result.raw_outputs["password"] == Secret("hunter2")
    assert plaintext_occurrences(result, "hunter2") == []
    assert plaintext_occurrences(result, "thing-bucket")  # a plain value is found


def test_missing_tags_reports_each_taggable_resource_without_them():
    tags = {"team": "ml", "cost-center": "cc-1"}

    def program() -> None:
        aws.s3.Bucket("tagged", tags=tags)
        aws.s3.Bucket("half", tags={"team": "ml"})
        aws.lambda_.Function("fn", role="arn:aws:iam::1:role/r", package_type="Image", image_uri="repo/fn:1")
        aws.iam.RolePolicy("inline", role="r", policy="{}")  # takes no tags

    result = run_program(program)
    # registration order is the engine's (asynchronous): compare as sets
    assert sorted(missing_tags(result, tags)) == sorted(
        [
            f"{result.named('half').urn}: tags lacks {{'cost-center': 'cc-1'}}",
            f"{result.named('fn').urn}: tags lacks {{'team': 'ml', 'cost-center': 'cc-1'}}",
        ]
    )


def test_runs_are_isolated():
    first = _run()
    second = _run()
    assert [r.urn for r in first.resources] == [r.urn for r in second.resources]
    assert len(second.by_type("aws:s3/bucket:Bucket")) == 1


def test_program_errors_propagate():
    def broken() -> None:
        raise ValueError("platform:team: missing")

    with pytest.raises(ValueError, match="platform:team"):
        run_program(broken)
    assert len(_run().resources) == 4  # a failed run leaves nothing behind


def test_project_dir_and_stack_config(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text(
        textwrap.dedent("""\
        name: demo
        runtime: python
        config:
          demo:size: {type: integer, default: 1}
        template:
          config:
            demo:token: {description: an API token, secret: true}
    """)
    )
    (tmp_path / "Pulumi.dev.yaml").write_text(
        textwrap.dedent("""\
        config:
          size: 3
          demo:tags: {team: ml}
          demo:apiKey:
            secure: v1:AAAA
    """)
    )
    (tmp_path / "__main__.py").write_text(
        textwrap.dedent("""\
        import pulumi
        cfg = pulumi.Config()
        pulumi.export("size", cfg.require_int("size"))
        pulumi.export("tags", cfg.require_object("tags"))
        pulumi.export("apiKey", cfg.require_secret("apiKey"))
        pulumi.export("token", cfg.require_secret("token"))
    """)
    )
    loaded = load_stack_config(tmp_path, "dev")
    assert loaded.secret_keys == ("demo:apiKey", "demo:token")
    result = run_project(tmp_path, "dev", secrets={"token": "t0k"})
    assert result.raw_outputs == {
        "size": 3,
        "tags": {"team": "ml"},
        "apiKey": Secret("mock-secret:demo:apiKey"),
        "token": Secret("t0k"),
    }
    with pytest.raises(FileNotFoundError, match="stacks here: dev"):
        run_project(tmp_path, "prod")
