"""The exception tree of hybridml, so callers catch one thing and map it to an exit code.

HmlError                 anything the runner reports to a user without a traceback
+-- UsageError           bad input: job file, profile, CLI argument (exit code 2)
|   +-- InvalidInput     a file or argument is invalid; one ``source: path: problem`` line each
|       +-- SpecError    the job file (or a ``--set`` override)
|       +-- ProfileError the environment profile, or a target it does not define
|       +-- RunNotFound  no run with that id is known here
+-- BackendError         a target could not do what was asked (host down, API error)
|   +-- HostKeyError     an SSH host key is unknown or changed (never auto-accepted)
|   +-- NoCapacityError  nothing in the target fits the job right now
|   +-- HostFault        a host answered, but hml's own program there died (waiting won't help)
+-- TrackingError        the tracking server refused or could not be reached
+-- NotReady             the tracking server or the target did not answer in time; nothing
                         was started (exit code 2: fix it and submit again)
"""

from __future__ import annotations


class HmlError(Exception):
    """Root of every error the CLI turns into a one-line message."""

    exit_code = 1


class UsageError(HmlError):
    exit_code = 2


class InvalidInput(UsageError):
    def __init__(self, source: str, problems: list[str], also: InvalidInput | None = None) -> None:
        """``also``: what the same check found at another source (a ``--set`` beside its job file),
        so one message names every problem by where it comes from."""
        self.source = source
        self.problems = problems
        lines = [f"{source}: {p}" for p in problems]
        super().__init__("\n".join([*lines, *([str(also)] if also else [])]))


class SpecError(InvalidInput):
    pass


class ProfileError(InvalidInput):
    pass


class BackendError(HmlError):
    pass


class HostKeyError(BackendError):
    exit_code = 2


class NoCapacityError(BackendError):
    pass


class HostFault(BackendError):
    pass


class TrackingError(HmlError):
    pass


class RunNotFound(InvalidInput):
    pass


class NotReady(HmlError):
    exit_code = 2
