"""KeyVault: where the platform's keys and passwords live, readable by named readers only.

Why: no secret may sit in plain config, code, logs or tracking, and production secrets must
not be readable by developers. On AWS the vault is a rotating KMS key plus Secrets Manager
secrets encrypted with it, each with a resource policy that denies ``GetSecretValue`` to
every principal but the named readers. On-prem it is one Kubernetes Secret whose only
``get`` grant is an RBAC Role bound to the named readers; its values can be synced from the
AWS vault so that one place holds the truth. Values travel as Pulumi secrets end to end.
"""

from __future__ import annotations

import json
import re

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pydantic import Field, field_validator, model_validator

from components.base import Args, OrgTags, Platform, PlatformComponent

_SECRET_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_K8S_SUBJECT = re.compile(r"^(ServiceAccount:[a-z0-9-]+:[a-z0-9-]+|Group:\S+|User:\S+)$")


class KeyVaultArgs(Args):
    platform: Platform
    tags: OrgTags
    prefix: str = Field(pattern=r"^[A-Za-z0-9/_+=.@-]+$")
    """Secrets Manager name prefix (``hybridml/dev``); on-prem, the Kubernetes Secret's name
    is derived from it."""
    secrets: dict[str, str | pulumi.Output | None] = Field(default_factory=dict)
    """Name -> value, wrapped as a Pulumi secret whatever it arrives as. On-prem, ``None``
    means: read it from the AWS vault under ``sync_from_aws_prefix``."""
    reader_principals: list[str] = Field(min_length=1)
    """AWS: role ARNs. On-prem: ``ServiceAccount:<ns>:<name>``, ``Group:<g>`` or ``User:<u>``."""
    key_user_principals: list[str] = Field(default_factory=list)
    """AWS: roles that may encrypt/decrypt data with the key (e.g. for S3 SSE-KMS)."""
    namespace: str = "hybridml"
    sync_from_aws_prefix: str | None = None
    """On-prem: read each named secret from AWS Secrets Manager under this prefix."""

    @field_validator("secrets")
    @classmethod
    def _names(cls, value: dict) -> dict:
        for name in value:
            if not _SECRET_NAME.match(name):
                raise ValueError(f"secret name {name!r} must be lowercase letters, digits, '-'")
        return value

    @model_validator(mode="after")
    def _platform_fits(self) -> KeyVaultArgs:
        synced = [name for name, value in self.secrets.items() if value is None]
        if synced and not (self.platform == "onprem" and self.sync_from_aws_prefix):
            raise ValueError(
                f"secrets {synced} have no value: give one, or on platform "
                "'onprem' set sync_from_aws_prefix to read them from AWS"
            )
        if self.platform == "onprem":
            bad = [p for p in self.reader_principals if not _K8S_SUBJECT.match(p)]
            if bad:
                raise ValueError(
                    f"reader_principals: {bad} are not Kubernetes subjects; use "
                    "ServiceAccount:<namespace>:<name>, Group:<g> or User:<u>"
                )
        elif self.sync_from_aws_prefix:
            raise ValueError("sync_from_aws_prefix is for platform 'onprem' only")
        elif not all(p.startswith("arn:aws") for p in self.reader_principals):
            raise ValueError("reader_principals: on platform 'aws' give IAM role ARNs")
        return self


def key_policy(account_id: str, key_users: list[str]) -> str:
    """Account administrators manage the key; only ``key_users`` use it for data."""
    statements = [
        {
            "Sid": "AccountAdministers",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    if key_users:
        statements.append(
            {
                "Sid": "KeyUsersEncryptDecrypt",
                "Effect": "Allow",
                "Principal": {"AWS": key_users},
                "Action": [
                    "kms:Encrypt",
                    "kms:Decrypt",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:DescribeKey",
                ],
                "Resource": "*",
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def secret_read_policy(readers: list[str]) -> str:
    """Readers may read; every other principal is denied, whatever its IAM policies say."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "NamedReadersRead",
                    "Effect": "Allow",
                    "Principal": {"AWS": readers},
                    "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                    "Resource": "*",
                },
                {
                    "Sid": "DenyEveryoneElse",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "secretsmanager:GetSecretValue",
                    "Resource": "*",
                    "Condition": {"StringNotLike": {"aws:PrincipalArn": readers}},
                },
            ],
        }
    )


class KeyVault(PlatformComponent):
    """Outputs: ``prefix``, ``key_arn`` (AWS), ``secret_refs`` (name -> ARN or ns/secret#key).

    Values are available to sibling components as secret Outputs via :meth:`value`.
    """

    def __init__(self, name: str, args: KeyVaultArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("hybridml:security:KeyVault", name, opts)
        self._values = {
            k: pulumi.Output.secret(v if v is not None else self._synced(args, k))
            for k, v in args.secrets.items()
        }
        self.key_arn: pulumi.Output[str] | None = None
        if args.platform == "aws":
            self.secret_refs = self._aws(args)
        else:
            self.secret_refs = self._onprem(args)
        self.prefix = args.prefix
        outputs = {"prefix": self.prefix, "secret_refs": self.secret_refs}
        if self.key_arn is not None:
            outputs["key_arn"] = self.key_arn
        self.register_outputs(outputs)

    def value(self, secret_name: str) -> pulumi.Output[str]:
        """A secret's value as a Pulumi secret, for wiring into sibling components."""
        return self._values[secret_name]

    def _synced(self, args: KeyVaultArgs, secret_name: str) -> pulumi.Output[str]:
        return aws.secretsmanager.get_secret_version_output(
            secret_id=f"{args.sync_from_aws_prefix}/{secret_name}",
            opts=pulumi.InvokeOutputOptions(parent=self),
        ).secret_string

    def _aws(self, args: KeyVaultArgs) -> dict[str, pulumi.Output[str]]:
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        key = aws.kms.Key(
            self.child_name("key"),
            description=f"hybridml key vault {args.prefix}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=account.account_id.apply(lambda a: key_policy(a, args.key_user_principals)),
            tags=args.tags.as_tags(),
            opts=self.child_opts(),
        )
        aws.kms.Alias(
            self.child_name("alias"),
            name=f"alias/{args.prefix.replace('/', '-')}",
            target_key_id=key.key_id,
            opts=self.child_opts(),
        )
        self.key_arn = key.arn
        refs = {}
        for secret_name, value in self._values.items():
            secret = aws.secretsmanager.Secret(
                self.child_name(secret_name),
                name=f"{args.prefix}/{secret_name}",
                kms_key_id=key.arn,
                recovery_window_in_days=7,
                tags=args.tags.as_tags(),
                opts=self.child_opts(),
            )
            aws.secretsmanager.SecretPolicy(
                self.child_name(f"{secret_name}-policy"),
                secret_arn=secret.arn,
                policy=secret_read_policy(args.reader_principals),
                opts=self.child_opts(),
            )
            aws.secretsmanager.SecretVersion(
                self.child_name(f"{secret_name}-value"),
                secret_id=secret.id,
                secret_string=value,
                opts=self.child_opts(),
            )
            refs[secret_name] = secret.arn
        return refs

    def _onprem(self, args: KeyVaultArgs) -> dict[str, str]:
        secret_name = args.prefix.replace("/", "-").lower()
        labels = args.tags.as_tags(**{"app.kubernetes.io/part-of": "hybridml"})
        meta = {"namespace": args.namespace, "labels": labels}
        k8s.core.v1.Secret(
            self.child_name("secret"),
            metadata={**meta, "name": secret_name},
            type="Opaque",
            string_data=self._values,
            opts=self.child_opts(),
        )
        role = k8s.rbac.v1.Role(
            self.child_name("reader"),
            metadata={**meta, "name": f"{secret_name}-reader"},
            rules=[
                {
                    "api_groups": [""],
                    "resources": ["secrets"],
                    "resource_names": [secret_name],
                    "verbs": ["get"],
                }
            ],
            opts=self.child_opts(),
        )
        k8s.rbac.v1.RoleBinding(
            self.child_name("readers"),
            metadata={**meta, "name": f"{secret_name}-readers"},
            role_ref={"api_group": "rbac.authorization.k8s.io", "kind": "Role", "name": role.metadata.name},
            subjects=[_subject(p) for p in args.reader_principals],
            opts=self.child_opts(),
        )
        return {name: f"{args.namespace}/{secret_name}#{name}" for name in args.secrets}


def _subject(principal: str) -> dict[str, str]:
    kind, _, rest = principal.partition(":")
    if kind == "ServiceAccount":
        namespace, _, name = rest.partition(":")
        return {"kind": kind, "name": name, "namespace": namespace}
    return {"kind": kind, "name": rest, "api_group": "rbac.authorization.k8s.io"}
