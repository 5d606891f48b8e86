"""Is the tracking server there? Asked with a short time-out before anything is created.

Without it ``hml submit`` against a stopped server sat for minutes in MLflow's own retries.
Standard library only: answering must not cost the mlflow import.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from hmlkit.errors import NotReady


def check_tracking(uri: str, timeout: float, source: str) -> None:
    """Raise NotReady, saying what was tried and what to do, unless ``uri`` can take a run."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - the profile's own URI
                return
        except urllib.error.HTTPError:
            return  # it answered (a proxy or an auth front may refuse /health): it is up
        except (OSError, ValueError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise NotReady(
                f"tracking server {uri} is not answering (GET {url}: {why}; waited up to {timeout:g} s); "
                f"start it or fix tracking_uri in {source}; probe_timeout_s in the profile sets "
                "how long to wait"
            ) from None
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        if not os.access(existing, os.W_OK):
            raise NotReady(f"tracking store {uri}: {existing} is not writable; fix tracking_uri in {source}")
