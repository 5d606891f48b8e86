"""Which resource types carry the organisation's tags, and in which input.

Read from the provider SDKs installed with the pack (``policies/requirements.txt``), from the
class the SDK generates for each type token, so every taggable type of those SDKs is covered
without a hand-kept list going stale. The answer fails closed: a type of a tagged provider
that the installed SDK does not know (newer than the pack's SDK, or a CustomResource) is
taken to carry tags, so ``required-tags`` reports it instead of letting it through unseen.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import keyword

#: provider package -> (its Python SDK, the constructor input that carries tags, where)
_SDKS = {
    "aws": ("pulumi_aws", "tags", "tags"),
    "kubernetes": ("pulumi_kubernetes", "metadata", "metadata.labels"),
}


@functools.cache
def tag_carrier(type_token: str) -> str | None:
    """``"tags"`` (AWS), ``"metadata.labels"`` (Kubernetes), or None if the type takes none.

    None only when the SDK's class for the type exists and has no such input, or the type
    belongs to a provider without organisation tags (``random``, dynamic resources, ...).
    """
    parts = type_token.split(":")
    if len(parts) != 3 or parts[0] not in _SDKS:
        return None
    package, module_path, class_name = parts
    root, parameter, carrier = _SDKS[package]
    try:
        cls = getattr(importlib.import_module(_module_name(root, package, module_path)), class_name)
    except (ImportError, AttributeError):
        return carrier
    return carrier if parameter in inspect.signature(cls._internal_init).parameters else None


def _module_name(root: str, package: str, module_path: str) -> str:
    """The SDK module of a type token's module, as Pulumi's Python code generator names it.

    ``aws:lambda/function`` lives in ``pulumi_aws.lambda_`` (a keyword gets ``_``),
    ``aws:index/...`` in ``pulumi_aws``, and ``kubernetes:rbac.authorization.k8s.io/v1`` in
    ``pulumi_kubernetes.rbac.v1``.
    """
    group, _, version = module_path.partition("/")
    name = "" if group == "index" else group.split(".")[0]
    if keyword.iskeyword(name):
        name += "_"
    if package != "kubernetes":
        version = ""
    return ".".join(p for p in (root, name, version) if p)
