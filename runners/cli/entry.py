"""The ``hml`` executable: handed to the warm agent when one runs, else the CLI in this process.

Standard library only up to the hand-over, so a command the agent runs costs this process an
interpreter start and a socket round trip (runners/cli/agent.py says why and how).
"""

from __future__ import annotations

import os
import sys

from runners.cli import agent_client


def main() -> None:
    os.umask(0o077)  # run records, logs and the embedded store are the user's alone
    argv = sys.argv[1:]
    # `hml agent` manages the agent itself; `hml watch` is a service its supervisor (systemd,
    # Kubernetes) must be able to kill: neither goes through the agent
    if argv[:1] not in (["agent"], ["watch"]):
        code = agent_client.run_command(argv)
        if code is not None:
            sys.exit(code)
        if argv[:1] == ["submit"]:  # the edit-submit loop: the next submit finds it warm
            agent_client.start_background()
    from runners.cli.app import main as cli_main

    cli_main()
