"""Fixtures for the platform stack: each example stack evaluated once under Pulumi's mocks; for the
real engine on the Kubernetes bed, a GPU node of its own and the prometheus-operator's CRDs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from policies.offline import ProgramResult, run_project
from tests.k8sbed import K8sBed, Pool
from tests.pulumibed import install_crds, prometheus_operator_crds
from tests.stacks.examples import PROJECT, SECRETS, STACKS

NODE = "engine-0"
"""The Kubernetes bed's node that the engine tests' GPU pools label and taint."""


@pytest.fixture(scope="session")
def evaluated() -> dict[str, ProgramResult]:
    """Every example stack, with known secret values so tests can look for leaks."""
    return {stack: run_project(PROJECT, stack, secrets=SECRETS) for stack in STACKS}


@pytest.fixture
def engine_node(k8s_bed: K8sBed) -> Iterator[str]:
    """A GPU node of the bed's own for the pool to label and taint (the session's nodes stay as
    other tests expect them); removed afterwards."""
    k8s_bed.add_node(Pool("engine", 1, gpus=1), 0)
    yield NODE
    k8s_bed.delete_node(NODE)


@pytest.fixture
def prometheus_crds(k8s_bed: K8sBed) -> list[str]:
    """The prometheus-operator's PrometheusRule and AlertmanagerConfig CRDs in the bed, from its
    Go module (fetched once into ~/.cache/hybridml/gomod); left there, as a cluster keeps them."""
    return install_crds(k8s_bed.client(), prometheus_operator_crds())
