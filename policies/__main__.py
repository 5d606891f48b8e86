"""CrossGuard entry point: ``pulumi preview --policy-pack policies/``.

This is the only place that constructs ``PolicyPack``: its constructor starts the analyzer's
gRPC server and blocks, so importing it anywhere else (tests, the offline evaluator) would hang.
"""

import sys
from pathlib import Path

from pulumi_policy import EnforcementLevel, PolicyPack

# The CLI runs this file from policies/; the rules import the ``policies`` and ``hmlkit``
# packages, which live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policies.pack import PACK_NAME, build_policies  # noqa: E402

PolicyPack(
    name=PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=build_policies(),
    description="hybridml platform guard-rails: storage, secrets, GPU capacity, cost, access.",
)
