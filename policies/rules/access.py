"""Keys, secrets and permissions: KMS rotation, no plaintext secrets, least-privilege IAM/RBAC.

Secret detection looks at what a literal *is* (an access key id, a private key block, a URL
carrying a password, a well-known token prefix) and at what it is *called* (a key or variable
named like a password). Secret stores (Kubernetes Secrets, Secrets Manager versions, SSM
SecureString parameters) are where such values belong and are not scanned. A value the program
marked as a Pulumi secret is exempt from the name heuristic offline; under ``pulumi preview`` the
policy SDK hands rules secrets already unwrapped, so there the heuristic cannot tell them apart
(see docs/policies.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import Severity

from policies.props import (
    containers,
    dig,
    is_map,
    items,
    number,
    policy_statements,
    strings,
    unwrap,
    walk,
)
from policies.registry import resource_rule

_CREDENTIAL_PATTERNS = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a password inside a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?![$]\(|[$]\{)[^/\s@]+@"),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "a Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    "a JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
}
#: Key or variable names whose value is a secret (compared without case, '-' or '_').
#: Anchored at the end, so DB_PASSWORD_FILE or secretName (references to a secret) do not match.
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|apikey|accesskey|privatekey|credentials?)$")
_SECRET_STORES = {
    "kubernetes:core/v1:Secret": ("data", "stringData"),
    "aws:secretsmanager/secretVersion:SecretVersion": ("secretString", "secretBinary"),
}
_WORKLOAD_PREFIX = ("kubernetes:apps/", "kubernetes:batch/", "kubernetes:core/v1:Pod")


def looks_like_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(re.sub(r"[-_.]", "", name).lower()))


def _store_paths(resource_type: str, props: Mapping[str, Any]) -> tuple[str, ...]:
    if resource_type == "aws:ssm/parameter:Parameter" and dig(props, "type") == "SecureString":
        return ("value",)
    return _SECRET_STORES.get(resource_type, ())


@resource_rule(
    "no-plaintext-secrets",
    description="No resource input holds a plaintext secret: no credential-shaped literal, and "
    "no value under a password-like key unless it is a Pulumi secret.",
    severity=Severity.CRITICAL,
    remediation="Keep the value in the KeyVault (Secrets Manager or a Kubernetes Secret), pass "
    "it as a Pulumi secret (`pulumi config set --secret`, pulumi.Output.secret) and reference "
    "it (secretKeyRef, secretsmanager ARN) instead of writing it into the resource.",
    types=None,
)
def no_plaintext_secrets(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    stores = _store_paths(resource_type, props)
    for path, value, secret in walk(props):
        top = re.split(r"[.\[]", path)[0]
        if not isinstance(value, str) or not value or top in stores or top.startswith("__"):
            continue  # "__provider" & co. are SDK internals (a dynamic provider's pickle)
        shape = next((what for what, rx in _CREDENTIAL_PATTERNS.items() if rx.search(value)), None)
        if shape:
            yield f"input '{path}' contains {shape}"
        elif (
            not secret
            and len(value) >= 6
            and not value.startswith(("arn:", "$(", "${"))
            and looks_like_secret_name(re.split(r"[.\[]", path)[-1])
        ):
            yield f"input '{path}' is named like a secret but holds a plaintext literal"


def _ecs_environment(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    definitions = unwrap(dig(props, "containerDefinitions"))
    if isinstance(definitions, str):
        try:
            definitions = json.loads(definitions)
        except ValueError:
            return []
    return [e for d in items(definitions) for e in items(dig(d, "environment")) if is_map(e)]


@resource_rule(
    "workload-env-secret-refs",
    description="Container and function environment variables named like secrets are "
    "references to a secret store, never literal values.",
    severity=Severity.HIGH,
    remediation="Use env[].valueFrom.secretKeyRef (Kubernetes), the task definition's `secrets` "
    "with valueFrom (ECS), or read the secret at start-up from Secrets Manager (Lambda).",
    types=None,
)
def workload_env_secret_refs(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    if resource_type.startswith(_WORKLOAD_PREFIX):
        env = [
            (dig(c, "name", default="?"), e)
            for c in containers(resource_type, props)
            for e in items(dig(c, "env"))
            if is_map(e)
        ]
        literals = [(f"container '{c}'", dig(e, "name", default=""), dig(e, "value")) for c, e in env]
    elif resource_type == "aws:ecs/taskDefinition:TaskDefinition":
        literals = [
            ("task definition", dig(e, "name", default=""), dig(e, "value")) for e in _ecs_environment(props)
        ]
    elif resource_type == "aws:lambda/function:Function":
        variables = dig(props, "environment", "variables", default={})
        literals = [
            ("function", str(k), unwrap(variables[k])) for k in (variables if is_map(variables) else {})
        ]
    else:
        return
    for where, name, value in literals:
        if value not in (None, "") and looks_like_secret_name(str(name)):
            yield f"{where}: environment variable {name} is a literal value"


@resource_rule(
    "kms-key-rotation",
    description="Symmetric KMS keys rotate automatically at least yearly.",
    severity=Severity.HIGH,
    remediation="Set enableKeyRotation=True (and rotationPeriodInDays at most maxRotationDays).",
    types={"aws:kms/key:Key"},
    config={"maxRotationDays": {"type": "integer", "default": 365}},
)
def kms_key_rotation(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    spec = dig(props, "keySpec") or dig(props, "customerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    if spec != "SYMMETRIC_DEFAULT":
        return  # AWS rotates only symmetric encryption keys
    if dig(props, "enableKeyRotation") is not True:
        yield "enableKeyRotation is not true"
    period = number(dig(props, "rotationPeriodInDays"))
    if period is not None and period > config["maxRotationDays"]:
        yield f"rotationPeriodInDays {period} exceeds {config['maxRotationDays']}"


@resource_rule(
    "secrets-manager-cmk",
    description="Secrets Manager secrets are encrypted with a customer-managed KMS key, so "
    "who may decrypt them is governed by the key policy.",
    severity=Severity.MEDIUM,
    remediation="Set kmsKeyId to the KeyVault's KMS key.",
    types={"aws:secretsmanager/secret:Secret"},
)
def secrets_manager_cmk(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    if not dig(props, "kmsKeyId"):
        yield "kmsKeyId is not set: the secret uses the AWS-managed key"


_IAM_DOCUMENTS = {
    "aws:iam/policy:Policy": "policy",
    "aws:iam/rolePolicy:RolePolicy": "policy",
    "aws:iam/userPolicy:UserPolicy": "policy",
    "aws:iam/groupPolicy:GroupPolicy": "policy",
}
_ATTACHMENTS = frozenset(
    {
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        "aws:iam/userPolicyAttachment:UserPolicyAttachment",
        "aws:iam/groupPolicyAttachment:GroupPolicyAttachment",
        "aws:iam/policyAttachment:PolicyAttachment",
    }
)
_ROLE = "aws:iam/role:Role"


def _admin_statement(statement: Mapping[str, Any]) -> bool:
    allow = dig(statement, "Effect", default="Allow") == "Allow"
    actions = strings(dig(statement, "Action"))
    return allow and any(a in ("*", "*:*") for a in actions) and "*" in strings(dig(statement, "Resource"))


@resource_rule(
    "iam-no-wildcard-admin",
    description="No IAM policy allows every action on every resource.",
    severity=Severity.CRITICAL,
    remediation="Grant the specific actions (e.g. s3:GetObject) on the specific ARNs the role "
    "needs; never Action '*' with Resource '*' or AdministratorAccess.",
    types=set(_IAM_DOCUMENTS) | _ATTACHMENTS | {_ROLE},
    config={
        "forbiddenManagedPolicies": {
            "type": "array",
            "items": {"type": "string"},
            "default": ["arn:aws:iam::aws:policy/AdministratorAccess"],
        }
    },
)
def iam_no_wildcard_admin(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    documents = []
    if resource_type in _IAM_DOCUMENTS:
        documents.append(("policy", dig(props, _IAM_DOCUMENTS[resource_type])))
    if resource_type == _ROLE:
        documents += [
            (f"inline policy '{dig(p, 'name', default=i)}'", dig(p, "policy"))
            for i, p in enumerate(items(dig(props, "inlinePolicies")))
        ]
    for where, document in documents:
        if any(_admin_statement(s) for s in policy_statements(document)):
            yield f"{where} allows Action '*' on Resource '*'"
    arns = strings(dig(props, "policyArn")) + strings(dig(props, "managedPolicyArns"))
    for arn in arns:
        if arn in config["forbiddenManagedPolicies"]:
            yield f"attaches {arn}"


_K8S_ROLES = frozenset(
    {
        "kubernetes:rbac.authorization.k8s.io/v1:Role",
        "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole",
    }
)
_K8S_BINDINGS = frozenset(
    {
        "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding",
        "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding",
    }
)


@resource_rule(
    "k8s-rbac-no-wildcard",
    description="Kubernetes Roles and ClusterRoles never grant every verb on every resource.",
    severity=Severity.HIGH,
    remediation="List the verbs (get, list, watch, ...) and resources (secrets, pods, ...) the "
    "subject needs, with resourceNames where possible.",
    types=_K8S_ROLES,
)
def k8s_rbac_no_wildcard(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    for index, rule in enumerate(items(dig(props, "rules"))):
        if "*" in strings(dig(rule, "verbs")) and "*" in strings(dig(rule, "resources")):
            yield f"rules[{index}] grants verb '*' on resource '*'"


@resource_rule(
    "k8s-no-cluster-admin-binding",
    description="No RoleBinding or ClusterRoleBinding hands out the cluster-admin role.",
    severity=Severity.HIGH,
    remediation="Bind a Role scoped to the namespace and the resources the subject needs.",
    types=_K8S_BINDINGS,
    config={"forbiddenRoles": {"type": "array", "items": {"type": "string"}, "default": ["cluster-admin"]}},
)
def k8s_no_cluster_admin_binding(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    role = dig(props, "roleRef", "name")
    if role in config["forbiddenRoles"]:
        yield f"binds the {role!r} role"
