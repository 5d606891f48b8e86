"""Offline evaluation: run a stack program under Pulumi's mocks and apply the pack's policies.

A pull request from a fork has no engine, plugins or credentials, so ``hml policy check`` runs
the program with ``policies.offline`` and hands every registration to the very
``Policy`` objects the CrossGuard pack serves (``policies.pack.build_policies``), wrapped in the
SDK's own ``ResourceValidationArgs``/``StackValidationArgs``/``PolicyResource`` the way the engine
fills them: inputs behind the SDK's unknown-checking proxy, resource references as ids/URNs,
the provider (explicit, or the default one configured from stack config), parents and
dependencies as objects.

What the engine would know and mocks cannot is reported as notes rather than passed silently:
values another resource computes at apply time (the mocks make them known, with fake values),
remote components' children, and secret config values that stay encrypted.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
    StackValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy

from policies.pack import build_policies
from policies.registry import Rule, all_rules
from policies.report import Finding, Location, Note, Report

if TYPE_CHECKING:  # the program runner loads Pulumi's mock engine: only when a check runs
    from policies.offline import ProgramResult, RegisteredResource

DEFAULT_PROVIDER_PACKAGES = ("aws", "kubernetes")


class PolicyInputError(ValueError):
    """The project, stack or pack configuration given to the check is unusable."""


def load_pack_config(path: str | Path | None) -> dict[str, Any]:
    """Read a ``--policy-pack-config`` style JSON file: ``{"rule-id": level | {...}}``."""
    if path is None:
        return {}
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PolicyInputError(
            f"{path}: cannot read the pack configuration ({exc}); give a "
            'JSON object like {"rule-id": "advisory"}'
        ) from exc
    if not isinstance(config, dict):
        raise PolicyInputError(
            f'{path}: the pack configuration must be a JSON object like {{"rule-id": "advisory"}}'
        )
    known = {rule.id for rule in all_rules()}
    unknown = sorted(set(config) - known - {"all"})
    if unknown:
        raise PolicyInputError(
            f"{path}: unknown policy ids {', '.join(unknown)}; known ids: {', '.join(sorted(known))}"
        )
    return config


def _level(config: Mapping[str, Any], policy_name: str, default: EnforcementLevel) -> EnforcementLevel:
    for key in (policy_name, "all"):
        value = config.get(key)
        level = value.get("enforcementLevel") if isinstance(value, Mapping) else value
        if level is not None:
            try:
                return EnforcementLevel(level)
            except ValueError as exc:
                raise PolicyInputError(
                    f"{policy_name}: enforcement level {level!r} is not one of "
                    f"{', '.join(e.value for e in EnforcementLevel)}"
                ) from exc
    return default


def _policy_value(value: Any) -> Any:
    """The program runner's view of an input as the policy SDK presents it (secrets marked)."""
    from policies import offline

    if isinstance(value, offline.Secret):
        return Secret(_policy_value(value.value))
    if isinstance(value, Mapping):
        return {k: _policy_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_policy_value(v) for v in value]
    return value


def _locations(resource: RegisteredResource, project_dir: Path) -> tuple[Location | None, Location | None]:
    """Where the program declared the resource, and the innermost call that registered it.

    The first is the outermost frame inside the project (the stack program line a reviewer
    sees in the PR); the second is, e.g., the component line that built the child resource.
    """
    frames = [Location(Path(path), line) for path, line in resource.source]
    in_project = [f for f in frames if f.path.is_relative_to(project_dir)]
    primary = in_project[-1] if in_project else (frames[0] if frames else None)
    origin = frames[0] if frames and frames[0] != primary else None
    return primary, origin


class _Stack:
    """The program run's result turned into the SDK's resource objects, built once per run."""

    def __init__(self, result: ProgramResult, config: Mapping[str, Any]) -> None:
        by_urn = {r.urn: r for r in result.resources}
        self.providers = {f"{r.urn}::{r.id}": r for r in result.resources if r.is_provider}
        # Resources without an explicit provider get the engine's default one, configured
        # from the stack's "<package>:<key>" config (aws:region, aws:defaultTags, ...).
        self.defaults = {
            pkg: PolicyProviderResource(
                f"pulumi:providers:{pkg}",
                {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith(f"{pkg}:")},
                f"{result.stack_urn}::pulumi:providers:{pkg}::default",
                "default",
            )
            for pkg in DEFAULT_PROVIDER_PACKAGES
        }
        self.policy_resources = {urn: self._policy_resource(r) for urn, r in by_urn.items()}
        for urn, resource in by_urn.items():
            target = self.policy_resources[urn]
            target.parent = self.policy_resources.get(resource.parent or "")
            target.dependencies = [
                self.policy_resources[d] for d in resource.options.depends_on if d in self.policy_resources
            ]
            target.property_dependencies = {
                key: [self.policy_resources[d] for d in deps if d in self.policy_resources]
                for key, deps in resource.options.property_dependencies.items()
            }

    def provider(self, resource: RegisteredResource) -> PolicyProviderResource | None:
        explicit = self.providers.get(resource.options.provider or "")
        if explicit is not None:
            return PolicyProviderResource(
                explicit.type,
                unknown_checking_proxy(_policy_value(explicit.raw_inputs)),
                explicit.urn,
                explicit.name,
            )
        return self.defaults.get(resource.type.split(":")[0]) if resource.custom else None

    def options(self, resource: RegisteredResource) -> PolicyResourceOptions:
        opts = resource.options
        return PolicyResourceOptions(
            opts.protect,
            list(opts.ignore_changes),
            opts.delete_before_replace,
            [],
            PolicyCustomTimeouts(0, 0, 0),
            list(opts.additional_secret_outputs),
            resource.parent,
        )

    def props(self, resource: RegisteredResource) -> Mapping[str, Any]:
        return unknown_checking_proxy(_policy_value(resource.raw_inputs))

    def _policy_resource(self, resource: RegisteredResource) -> PolicyResource:
        return PolicyResource(
            resource.type,
            self.props(resource),
            resource.urn,
            resource.name,
            self.options(resource),
            self.provider(resource),
            None,
            [],
            {},
        )


def _blind_spots(result: ProgramResult, secret_keys: tuple[str, ...]) -> list[Note]:
    """What this run could not see as the engine would, one note per kind of blind spot."""
    notes = []
    parents = {r.parent for r in result.resources}
    for resource in result.resources:
        if resource.remote or (
            not resource.custom and resource.urn not in parents and not resource.type.startswith("pulumi:")
        ):
            notes.append(
                Note(
                    f"{resource.type} '{resource.name}' is a remote or empty component: the "
                    "resources it creates at deploy time were not visible and not evaluated",
                    urn=resource.urn,
                )
            )
    computed = [
        r for r in result.resources if any(r.options.property_dependencies.get(k) for k in r.raw_inputs)
    ]
    if computed:
        notes.append(
            Note(
                f"{len(computed)} resources take inputs computed by other resources at apply time; "
                "offline these hold mock values, so rules judged that they are set, not their "
                "real values"
            )
        )
    if secret_keys:
        notes.append(
            Note(
                f"secret config ({', '.join(secret_keys)}) is not decrypted offline; the program "
                "saw placeholders"
            )
        )
    defaulted = Counter(
        r.type.split(":")[0]
        for r in result.resources
        if r.custom
        and not r.is_provider
        and r.options.provider is None
        and r.type.split(":")[0] in DEFAULT_PROVIDER_PACKAGES
    )
    for package, count in sorted(defaulted.items()):
        notes.append(
            Note(
                f"{count} {package} resources use the default {package} provider: offline its "
                f"settings come from the stack config ({package}:*) only, not from the deploy "
                "environment (credentials files, environment variables), and inputs left unset "
                "are judged by the provider's documented defaults"
            )
        )
    return notes


def _require_python(project_dir: Path) -> None:
    """Only Python programs run under the Python mocks; say so rather than fail obscurely."""
    try:
        runtime = yaml.safe_load((project_dir / "Pulumi.yaml").read_text()).get("runtime")
    except (yaml.YAMLError, AttributeError) as exc:
        raise PolicyInputError(
            f"{project_dir / 'Pulumi.yaml'}: not a Pulumi project file ({exc}); fix the YAML"
        ) from exc
    name = runtime.get("name") if isinstance(runtime, Mapping) else runtime
    if name != "python":
        raise PolicyInputError(
            f"{project_dir}: runtime {name!r}: offline checks run Python "
            "programs only; run `pulumi preview --policy-pack policies/` "
            "for other runtimes"
        )


class _Collector:
    """Turns violations reported through the SDK's callback into located findings."""

    def __init__(
        self,
        stack: _Stack,
        locations: Mapping[str, tuple[Location | None, Location | None]],
        fallback: Location,
    ) -> None:
        self.stack, self.locations, self.fallback = stack, locations, fallback
        self.findings: list[Finding] = []

    def reporter(self, rule: Rule, level: EnforcementLevel, subject: str | None = None) -> ReportViolation:
        """A ``report_violation``; resource policies pin the URN to their ``subject``."""

        def report(message: str, urn: str | None = None) -> None:
            urn = subject or urn
            resource = self.stack.policy_resources.get(urn or "")
            location, origin = self.locations.get(urn or "", (None, None))
            self.findings.append(
                Finding(
                    rule=rule,
                    enforcement=level,
                    message=message,
                    urn=urn,
                    resource_type=resource.resource_type if resource else None,
                    resource_name=resource.name if resource else None,
                    location=location or self.fallback,
                    origin=origin,
                )
            )

        return report


def evaluate(
    project_dir: str | Path,
    stack: str,
    pack_config: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Report:
    """Run the program for ``stack`` and every enabled policy over it.

    ``config`` overrides stack config keys (full ``namespace:key`` names), e.g. to scale a
    stack up for the benchmark.
    """
    from policies import offline

    project_dir = Path(project_dir).resolve()
    if not (project_dir / "Pulumi.yaml").is_file():
        raise PolicyInputError(
            f"{project_dir}: no Pulumi.yaml here; give the directory of a "
            "Pulumi project (e.g. stacks/platform)"
        )
    _require_python(project_dir)
    try:
        stack_config = offline.load_stack_config(project_dir, stack)
    except FileNotFoundError as exc:
        raise PolicyInputError(str(exc)) from exc
    except Exception as exc:  # malformed YAML or a project file without a name
        raise PolicyInputError(
            f"{project_dir}: cannot read Pulumi.yaml / Pulumi.{stack}.yaml "
            f"({type(exc).__name__}: {exc}); fix the YAML"
        ) from exc
    started = time.perf_counter()
    try:
        result = offline.run_project(project_dir, stack, config=config)
    except Exception as exc:  # the program is user input: any failure is reported, not raised
        detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise PolicyInputError(
            f"{project_dir.name} stack {stack!r}: the program failed: "
            f"{type(exc).__name__}: {detail}. Fix the program or "
            f"Pulumi.{stack}.yaml and run the check again"
        ) from exc
    program_seconds = time.perf_counter() - started
    pack_config = pack_config or {}
    view = _Stack(result, {**stack_config.values, **(config or {})})
    rules = {rule.id: rule for rule in all_rules()}
    notes = _blind_spots(result, stack_config.secret_keys)
    collector = _Collector(
        view,
        {r.urn: _locations(r, project_dir) for r in result.resources},
        Location(project_dir / f"Pulumi.{stack}.yaml", 1),
    )
    subjects = [r for r in result.resources if r.type != "pulumi:pulumi:Stack"]

    for policy in build_policies():
        rule = rules[policy.name]
        level = _level(pack_config, rule.id, rule.enforcement)
        if level == EnforcementLevel.DISABLED:
            continue
        rule_config = pack_config.get(rule.id)
        rule_config = rule_config if isinstance(rule_config, Mapping) else None
        if isinstance(policy, ResourceValidationPolicy):
            for resource in (r for r in subjects if rule.applies_to(r.type)):
                target = view.policy_resources[resource.urn]
                args = ResourceValidationArgs(
                    resource.type,
                    target.props,
                    resource.urn,
                    resource.name,
                    target.opts,
                    target.provider,
                    rule_config,
                )
                policy.validate(args, collector.reporter(rule, level, resource.urn))
        else:
            args = StackValidationArgs(list(view.policy_resources.values()), rule_config)
            policy.validate(args, collector.reporter(rule, level))
    return Report(
        project=result.project,
        stack=stack,
        project_dir=project_dir,
        findings=collector.findings,
        notes=notes,
        rules=list(rules.values()),
        resource_count=len(subjects),
        program_seconds=program_seconds,
        rules_seconds=time.perf_counter() - started - program_seconds,
    )
