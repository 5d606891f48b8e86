"""The one place optional dependencies are loaded, so a missing one is an install hint.

``pip install hybridml`` gives the runner for the local target; each extra adds what its
features import (``ssh``: paramiko, ``aws``: boto3, ``infra``: pulumi, ``train``: torch, ``sweep``: optuna).
A command that needs a module the user did not install says which extra brings it and
exits 2, instead of ending in a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA_OF = {
    "paramiko": "ssh",
    "pathspec": "ssh",
    "pip": "ssh",
    "uv": "env",
    "boto3": "aws",
    "botocore": "aws",
    "kubernetes": "k8s",
    "pulumi": "infra",
    "pulumi_aws": "infra",
    "pulumi_kubernetes": "infra",
    "pulumi_policy": "infra",
    "google": "infra",  # protobuf, which pulumi brings
    "grpc": "infra",
    "torch": "train",
    "sklearn": "train",
    "matplotlib": "train",
    "optuna": "sweep",
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says how to install it."""

    exit_code = 2

    def __init__(self, module: str, purpose: str = "") -> None:
        top = module.partition(".")[0]
        extra = EXTRA_OF.get(top)
        fix = f"pip install 'hybridml[{extra}]'" if extra else f"pip install {top}"
        super().__init__(f"{purpose or 'this command'} needs the Python package {top!r}; install it: {fix}")
        self.name = top
        self.extra = extra


def require(module: str, purpose: str = "") -> ModuleType:
    """``import module``, or MissingExtra naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if missing.partition(".")[0] not in EXTRA_OF and missing != module:
            raise  # a broken install of something else: let it show
        raise MissingExtra(missing, purpose) from None
