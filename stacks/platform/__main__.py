"""The hybridml platform stack: read the typed config, build the platform, export the profile.

All logic lives in ``components`` (``components.platform``); this file only wires it to the
Pulumi program entry point so that ``pulumi up`` and the offline runner (``policies.offline``)
run the same code.
"""

import pulumi

from components.platform import Platform
from components.platform_config import load_config

platform = Platform(*load_config())
pulumi.export("runnerProfile", platform.profile())
pulumi.export("trackingUri", platform.tracking.url)
pulumi.export("buckets", {name: store.bucket for name, store in platform.stores.items()})
