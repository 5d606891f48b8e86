"""The fast tier (``python3 dev.py test --fast``): the tests that start no server, for the edit loop.

A test is in the server tier when it carries the ``server`` mark, which tests/conftest.py sets
from the fixtures a test uses; a test that starts a server itself is marked by hand. Forgetting
that mark is caught here: every server and bed starter calls ``refuse_in_fast_tier``.
"""

from __future__ import annotations

import os

TIER_VAR = "HML_TEST_TIER"
"""``fast`` while ``dev.py test --fast`` runs (it passes ``-m "not server"`` too)."""


def refuse_in_fast_tier(what: str) -> None:
    """In the fast tier, a test that reaches a server starter lacks its ``server`` mark."""
    if os.environ.get(TIER_VAR) == "fast":
        raise RuntimeError(
            f"this test starts {what} but is not marked server; add @pytest.mark.server "
            "(a test that uses a server fixture is marked already)"
        )
