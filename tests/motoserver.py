"""moto's server with the two back doors the aws test bed needs; everything else is moto's own.

1. Each instance's console output, as the instance wrote it. moto answers ``GetConsoleOutput``
   with one fixed kernel log for every instance, and the aws target reads each instance's SSH
   host key from its console output. On EC2 only the instance (its kernel, cloud-init as root)
   and the hypervisor write that output; here the bed plays both, through a door no API client
   has: it writes what an instance "printed" to ``BED_DIR/console/<instance id>``, and this
   server returns it after moto's kernel log, as a real console has it.
2. A log of IAM decisions, ``BED_DIR/iam-actions.jsonl``: for each request checked while IAM
   is enforced, the signer's access key, the action as moto names it, and the verdict. The
   runner's least-privilege test compares what the runner called with what its policy grants.

Run as ``python tests/motoserver.py BED_DIR -H ADDR -p PORT``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> None:
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.ec2.responses import general
    from moto.ec2.utils import Base64EncodedString
    from moto.iam import access_control
    from moto.server import main as moto_main

    bed = Path(argv[0])

    def get_console_output(self: Any) -> ActionResult:
        instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
        printed = bed / "console" / instance.id
        text = general.SAMPLE_CONSOLE_OUTPUT + (printed.read_text() if printed.is_file() else "")
        return ActionResult(
            {
                "InstanceId": instance.id,
                "Timestamp": utcnow(),
                "Output": Base64EncodedString.from_raw_string(text),
            }
        )

    checked = access_control.IAMRequestBase.check_action_permitted

    def check_action_permitted(self: Any, resource: str) -> None:
        entry = {"key": getattr(self._access_key, "_access_key_id", ""), "action": self._action}
        try:
            checked(self, resource)
        except Exception:
            entry["denied"] = resource
            raise
        finally:
            with open(bed / "iam-actions.jsonl", "a") as log:
                log.write(json.dumps(entry) + "\n")

    general.General.get_console_output = get_console_output  # type: ignore[method-assign]
    access_control.IAMRequestBase.check_action_permitted = check_action_permitted  # type: ignore[method-assign]
    moto_main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
