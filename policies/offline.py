"""Run a Pulumi Python program without the engine and return what it would deploy.

Why this exists: a pull request has no Pulumi CLI, provider plugin or cloud credentials, yet
``hml policy check`` must see what a stack program would register: every resource with its
inputs, parent and options, and what the stack exports. Pulumi's own unit-test mocks
(``pulumi.runtime.set_mocks``) run the real program; this module wraps them once, with
isolation (a fresh monitor, root stack and config per run, because the mocks' monitor is
process-wide) and a typed result instead of untyped dicts. It is a program runner, not a mock
of our code: it imports nothing of ``components``, and the pack's rules never import it (only
the offline evaluator does, when it runs); the tests and the benchmark use it too.

Secrets stay visible as secrets: ``RegisteredResource.raw_inputs`` and
``ProgramResult.raw_outputs`` keep every Pulumi secret wrapped in :class:`Secret`, so a test
can prove a password never travels in plain text; ``inputs``/``outputs`` are the unwrapped
views that policies (like CrossGuard) read.

Example::

    result = run_project("stacks/platform", "onprem")
    buckets = result.by_type("aws:s3/bucket:Bucket")
    profile = result.outputs["runnerProfile"]
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pulumi
import yaml
from google.protobuf import struct_pb2
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc, settings
from pulumi.runtime import stack as pulumi_stack
from pulumi.runtime.config import set_all_config
from pulumi.runtime.sync_await import _sync_await

MOCK_ACCOUNT = "123456789012"
MOCK_REGION = "eu-west-1"
SECRET_PLACEHOLDER = "mock-secret:{key}"
"""Value given to a secret config key that the caller did not supply: stack files hold
only ciphertext, which cannot be decrypted without the CLI, so evaluation uses a marker."""


@dataclass(frozen=True)
class Secret:
    """A value Pulumi carries as a secret (encrypted in state, masked in output)."""

    value: Any


@dataclass(frozen=True)
class ResourceOptions:
    """The options the engine would receive for one resource registration."""

    provider: str | None = None
    """Provider reference ``urn::id`` when explicit (e.g. a MinIO-aimed aws.Provider)."""
    depends_on: tuple[str, ...] = ()
    property_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    protect: bool = False
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    additional_secret_outputs: tuple[str, ...] = ()
    import_id: str | None = None


@dataclass(frozen=True)
class RegisteredResource:
    """One resource the program registered, as the engine would have seen it."""

    type: str
    name: str
    urn: str
    custom: bool
    parent: str | None
    raw_inputs: Mapping[str, Any]
    options: ResourceOptions
    id: str | None = None
    raw_outputs: Mapping[str, Any] = field(default_factory=dict)
    """Custom resources: the state the mocks returned; components: ``register_outputs``."""
    remote: bool = False
    """A multi-language component: its children are created by its provider, unseen here."""
    source: tuple[tuple[str, int], ...] = ()
    """``(file, line)`` of the registering call stack, innermost user frame first."""

    @property
    def inputs(self) -> dict[str, Any]:
        return unwrap(self.raw_inputs)

    @property
    def outputs(self) -> dict[str, Any]:
        return unwrap(self.raw_outputs)

    @property
    def is_provider(self) -> bool:
        return self.type.startswith("pulumi:providers:")


@dataclass(frozen=True)
class ProgramResult:
    """Everything one program run registered, in registration order, plus its exports."""

    project: str
    stack: str
    resources: tuple[RegisteredResource, ...]
    raw_outputs: Mapping[str, Any]

    @property
    def outputs(self) -> dict[str, Any]:
        return unwrap(self.raw_outputs)

    @property
    def stack_urn(self) -> str:
        return f"urn:pulumi:{self.stack}::{self.project}::pulumi:pulumi:Stack::{self.project}-{self.stack}"

    def by_type(self, type_token: str) -> list[RegisteredResource]:
        return [r for r in self.resources if r.type == type_token]

    def by_urn(self, urn: str) -> RegisteredResource:
        for res in self.resources:
            if res.urn == urn:
                return res
        raise KeyError(f"no resource with urn {urn}")

    def named(self, name: str, type_token: str | None = None) -> RegisteredResource:
        """The one resource with this logical name (and type, when names repeat)."""
        found = [r for r in self.resources if r.name == name and type_token in (None, r.type)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r} (type {type_token}); expected 1")
        return found[0]

    def children(self, parent_urn: str) -> list[RegisteredResource]:
        return [r for r in self.resources if r.parent == parent_urn]

    def descendants(self, parent_urn: str) -> list[RegisteredResource]:
        out: list[RegisteredResource] = []
        for child in self.children(parent_urn):
            out.append(child)
            out.extend(self.descendants(child.urn))
        return out


def unwrap(value: Any) -> Any:
    """Replace every :class:`Secret` with its value (the view policies evaluate)."""
    if isinstance(value, Secret):
        return unwrap(value.value)
    if isinstance(value, Mapping):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


def _mark_secrets(value: Any) -> Any:
    """Turn Pulumi's wire form of a secret into :class:`Secret`, recursively.

    Whole floats become ints: the wire has only doubles, and ``pulumi stack output --json``
    prints ``4``, not ``4.0``, so this is what a consumer of the outputs would read.
    """
    if rpc.is_rpc_secret(value):
        return Secret(_mark_secrets(rpc.unwrap_rpc_secret(value)))
    if isinstance(value, Mapping):
        return {k: _mark_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_secrets(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class OfflineMocks(pulumi.runtime.Mocks):
    """Default mocks: echo inputs and fill in what a provider computes that programs read.

    Only attributes our components consume are synthesised (ARNs, ids, bucket names,
    endpoints); everything else is the inputs, as with the real provider's echo of inputs.
    """

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        state = dict(args.inputs)
        resource_id = args.resource_id or f"{args.name}-id"
        computed = {
            "aws:s3/bucket:Bucket": {
                "bucket": args.name,
                "arn": f"arn:aws:s3:::{args.name}",
                "bucketRegionalDomainName": f"{args.name}.s3.{MOCK_REGION}.amazonaws.com",
            },
            "aws:kms/key:Key": {"keyId": resource_id},
            "aws:ec2/launchTemplate:LaunchTemplate": {"latestVersion": 1},
            "aws:eks/cluster:Cluster": {"endpoint": f"https://{args.name}.eks.example.com"},
            "aws:rds/instance:Instance": {"address": f"{args.name}.rds.example.com"},
        }.get(args.typ, {})
        if args.typ.startswith("aws:"):
            service = args.typ.split(":")[1].split("/")[0]
            computed.setdefault("arn", f"arn:aws:{service}:{MOCK_REGION}:{MOCK_ACCOUNT}:{args.name}")
        for key, value in computed.items():
            state.setdefault(key, value)
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        results: dict[str, dict[str, Any]] = {
            "aws:index/getCallerIdentity:getCallerIdentity": {
                "accountId": MOCK_ACCOUNT,
                "arn": f"arn:aws:iam::{MOCK_ACCOUNT}:user/mock",
                "userId": "mock",
            },
            "aws:index/getRegion:getRegion": {"name": MOCK_REGION, "region": MOCK_REGION},
            "aws:secretsmanager/getSecretVersion:getSecretVersion": {
                "secretId": args.args.get("secretId", ""),
                "secretString": SECRET_PLACEHOLDER.format(key=args.args.get("secretId", "")),
            },
            "aws:ssm/getParameter:getParameter": {
                "name": args.args.get("name", ""),
                "value": "ami-0mockgpu",
                "type": "String",
            },
        }
        return results.get(args.token, {})


_SIG_KEY = "4dabf18193072939515e22adb298388d"
_RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"


def _downgrade_resource_refs(struct: struct_pb2.Struct) -> None:
    """Replace resource references with the id (custom) or URN (component), in place.

    The engine hands references to analyzers and most providers this way; deserialising a
    reference under the mocks would rehydrate the resource from inside the monitor and hang.
    """
    for value in struct.fields.values():
        _downgrade_value(value)


def _downgrade_value(value: struct_pb2.Value) -> None:
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        for element in value.list_value.values:
            _downgrade_value(element)
    elif kind == "struct_value":
        fields = value.struct_value.fields
        if _SIG_KEY in fields and fields[_SIG_KEY].string_value == _RESOURCE_SIG:
            ref_id = fields["id"].string_value if "id" in fields else None
            value.string_value = (
                (ref_id or rpc.UNKNOWN) if ref_id is not None else (fields["urn"].string_value)
            )
        else:
            _downgrade_resource_refs(value.struct_value)


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The stock mock monitor, also keeping each registration's options and outputs."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[RegisteredResource] = []
        self.registered_outputs: dict[str, dict[str, Any]] = {}

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        _downgrade_resource_refs(request.object)
        response = super().RegisterResource(request)
        inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
        options = ResourceOptions(
            provider=request.provider or None,
            depends_on=tuple(request.dependencies),
            property_dependencies={k: tuple(v.urns) for k, v in request.propertyDependencies.items()},
            protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete),
            delete_before_replace=bool(request.deleteBeforeReplace),
            ignore_changes=tuple(request.ignoreChanges),
            replace_on_changes=tuple(request.replaceOnChanges),
            additional_secret_outputs=tuple(request.additionalSecretOutputs),
            import_id=request.importId or None,
        )
        registration = self.resources.get(response.urn)
        self.registrations.append(
            RegisteredResource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                custom=bool(request.custom),
                parent=request.parent or None,
                raw_inputs=_mark_secrets(inputs),
                options=options,
                id=registration.id if registration else None,
                raw_outputs=_mark_secrets(registration.state) if registration and request.custom else {},
                remote=bool(request.remote),
                source=tuple(
                    (url2pathname(urlparse(f.pc.uri).path), f.pc.line)
                    for f in request.stackTrace.frames
                    if f.pc.uri
                ),
            )
        )
        return response

    def RegisterResourceOutputs(self, request):  # noqa: N802 - gRPC method name
        outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
        self.registered_outputs[request.urn] = _mark_secrets(outputs)
        return super().RegisterResourceOutputs(request)

    def result(self, project: str, stack: str) -> ProgramResult:
        resources = tuple(
            r
            if r.custom
            else RegisteredResource(**{**r.__dict__, "raw_outputs": self.registered_outputs.get(r.urn, {})})
            for r in self.registrations
        )
        stack_res = next(r for r in resources if r.type == "pulumi:pulumi:Stack")
        return ProgramResult(
            project=project, stack=stack, resources=resources, raw_outputs=stack_res.raw_outputs
        )


def run_program(
    program: Callable[[], object],
    *,
    project: str = "project",
    stack: str = "stack",
    config: Mapping[str, Any] | None = None,
    secret_keys: tuple[str, ...] = (),
    mocks: pulumi.runtime.Mocks | None = None,
    preview: bool = False,
) -> ProgramResult:
    """Run ``program`` as the body of a fresh stack and return what it registered.

    ``config`` maps full keys (``"platform:team"``) to values; non-string values are
    JSON-encoded as the CLI does for structured config. ``secret_keys`` are delivered as
    secrets (``Config.require_secret`` returns a secret Output). Exceptions the program
    raises propagate unchanged.
    """
    monitor = _RecordingMonitor(mocks or OfflineMocks())
    settings.ROOT.set(None)
    settings.configure(
        pulumi_mocks.MockSettings(
            monitor=monitor,
            monitor_features=set(monitor.GetDeploymentInfo(None).supportedFeatures),
            engine=pulumi_mocks.MockEngine(None),
            project=project,
            stack=stack,
            dry_run=preview,
            organization="organization",
            callbacks=None,
        )
    )
    settings.SETTINGS.outputs.clear()
    set_all_config({k: _config_string(v) for k, v in (config or {}).items()}, list(secret_keys))
    _sync_await(pulumi_stack.run_in_stack(program))
    return monitor.result(project, stack)


def _config_string(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class StackConfig:
    """A project's stack configuration, as the CLI would hand it to the program."""

    project: str
    values: dict[str, Any]
    secret_keys: tuple[str, ...]


def load_stack_config(
    project_dir: str | os.PathLike[str], stack: str, secrets: Mapping[str, str] | None = None
) -> StackConfig:
    """Read ``Pulumi.yaml`` and ``Pulumi.<stack>.yaml`` the way the CLI merges them.

    Project-level ``config:`` defaults apply first, then the stack file. Keys without a
    namespace get the project's name. A ``secure:`` value, or a key the project declares
    ``secret: true`` (in ``config:`` or ``template.config:``) that nobody set, takes its
    value from ``secrets`` or a placeholder.
    """
    root = Path(project_dir)
    project_doc = yaml.safe_load((root / "Pulumi.yaml").read_text()) or {}
    project = project_doc["name"]
    stack_file = root / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        known = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in root.glob("Pulumi.*.yaml"))
        raise FileNotFoundError(f"{stack_file}: no such stack file; stacks here: {', '.join(known)}")
    stack_doc = yaml.safe_load(stack_file.read_text()) or {}

    def full(key: str) -> str:
        return key if ":" in key else f"{project}:{key}"

    values: dict[str, Any] = {}
    secret_keys: set[str] = set()
    for key, decl in (project_doc.get("config") or {}).items():
        decl = decl if isinstance(decl, Mapping) else {"default": decl}
        if "default" in decl:
            values[full(key)] = decl["default"]
        if decl.get("secret"):
            secret_keys.add(full(key))
    for key, decl in ((project_doc.get("template") or {}).get("config") or {}).items():
        if isinstance(decl, Mapping) and decl.get("secret"):
            secret_keys.add(full(key))
    for key, value in (stack_doc.get("config") or {}).items():
        if isinstance(value, Mapping) and set(value) == {"secure"}:
            secret_keys.add(full(key))
            continue
        values[full(key)] = value
    for key in secret_keys:
        values.setdefault(key, SECRET_PLACEHOLDER.format(key=key))
    for key, value in (secrets or {}).items():
        values[full(key)] = value
        secret_keys.add(full(key))
    return StackConfig(project=project, values=values, secret_keys=tuple(sorted(secret_keys)))


def run_project(
    project_dir: str | os.PathLike[str],
    stack: str,
    *,
    config: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    mocks: pulumi.runtime.Mocks | None = None,
    preview: bool = False,
) -> ProgramResult:
    """Evaluate a Pulumi Python project directory for one of its stacks.

    ``config`` overrides or adds plain keys on top of the stack file (``None`` unsets one);
    ``secrets`` supplies values for secret keys. The program's ``__main__.py`` runs with the project directory
    on ``sys.path``, as under ``pulumi up``.
    """
    root = Path(project_dir).resolve()
    stack_config = load_stack_config(root, stack, secrets)
    values = dict(stack_config.values)
    for key, value in (config or {}).items():
        full_key = key if ":" in key else f"{stack_config.project}:{key}"
        if value is None:
            values.pop(full_key, None)
        else:
            values[full_key] = value

    def program() -> None:
        sys.path.insert(0, str(root))
        try:
            runpy.run_path(str(root / "__main__.py"), run_name="__main__")
        finally:
            sys.path.remove(str(root))

    return run_program(
        program,
        project=stack_config.project,
        stack=stack,
        config=values,
        secret_keys=stack_config.secret_keys,
        mocks=mocks,
        preview=preview,
    )
