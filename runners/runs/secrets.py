"""Secrets: named in the job file, resolved from the vault at run time, redacted everywhere.

Values never touch the job file, the run record, MLflow params or error messages; only the
job's environment sees them, and every line the runner copies out is redacted first.
"""

from __future__ import annotations

import os
import re
from typing import Any

from hmlkit.errors import UsageError
from hmlkit.extras import require

REDACTED = "***"


def resolve(names: list[str], vault: dict[str, Any] | None) -> dict[str, str]:
    """Values for ``names`` from the profile's vault (default: ``HML_SECRET_<NAME>`` variables)."""
    vault = vault or {"kind": "env"}
    values, missing = {}, []
    for name in names:
        value = _lookup(name, vault)
        if value is None:
            missing.append(name)
        else:
            values[name] = value
    if missing:
        where = (
            "set HML_SECRET_<NAME> in the environment of hml"
            if vault.get("kind") == "env"
            else f"add them to the {vault.get('kind')} vault under {vault.get('prefix', '')!r}"
        )
        raise UsageError(f"secrets not found in the vault: {', '.join(missing)}; {where}")
    return values


def _lookup(name: str, vault: dict[str, Any]) -> str | None:
    if vault.get("kind") == "env":
        return os.environ.get(f"HML_SECRET_{name}")
    if vault.get("kind") == "aws":
        boto3 = require("boto3", "an aws vault")  # lazy: only profiles with an AWS vault pay for it

        client = boto3.client("secretsmanager", region_name=vault.get("region"))
        try:
            return client.get_secret_value(SecretId=f"{vault.get('prefix', '')}{name}")["SecretString"]
        except client.exceptions.ResourceNotFoundException:
            return None
    raise UsageError(f"vault kind {vault.get('kind')!r} is not one of: env, aws")


class Redactor:
    """Replaces every secret value in text; values shorter than 4 characters are too common."""

    def __init__(self, values: list[str]) -> None:
        secrets = sorted((v for v in values if len(v) >= 4), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern else text

    def tree(self, value: Any) -> Any:
        """The same structure with every string redacted (job specs, params)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        return value
