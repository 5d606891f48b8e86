"""A run's environment as MLflow holds it: the lock artifact and the ``hml.env.*`` tags, for
``hml env show`` and ``hml submit --env-of`` on runs this machine does not know."""

from __future__ import annotations

from pathlib import Path

from hmlkit.errors import TrackingError, UsageError
from runners.envs.lock import ARTIFACT


def from_run(tracking_uri: str, run_id: str) -> tuple[str | None, dict[str, str]]:
    """(the lock's text, or None: the run had no ``environment:``; its ``hml.env.*`` tags)."""
    import tempfile

    from runners.tracking.ownership import _client, _short

    try:
        client = _client(tracking_uri)
        run = client.get_run(run_id)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            raise UsageError(f"run {run_id!r}: no such run in {tracking_uri}") from None
        raise TrackingError(f"tracking server {tracking_uri}: {_short(exc)}") from exc
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("hml.env.")}
    if "hml.env.digest" not in tags:
        return None, tags
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, ARTIFACT, tmp)
            return Path(path).read_text(), tags
    except Exception as exc:
        raise TrackingError(f"tracking server {tracking_uri}: the run's {ARTIFACT}: {_short(exc)}") from exc
