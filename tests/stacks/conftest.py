"""Fixtures for the platform stack: each example stack evaluated once under Pulumi's mocks."""

from __future__ import annotations

import pytest

from policies.offline import ProgramResult, run_project
from tests.stacks.examples import PROJECT, SECRETS, STACKS


@pytest.fixture(scope="session")
def evaluated() -> dict[str, ProgramResult]:
    """Every example stack, with known secret values so tests can look for leaks."""
    return {stack: run_project(PROJECT, stack, secrets=SECRETS) for stack in STACKS}
