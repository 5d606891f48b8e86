"""Putting a job's inputs next to it, before it starts: on this machine or on each SSH host.

The plan is built here (presigned URLs need the runner's credentials); the host side is
``hmlkit.node.datafetch``, shipped as it is. A host that cannot reach the store gets the missing
objects streamed by the runner over SSH (read from the store, written into the host's cache,
hashed on the way), then the plan runs again and only links.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hmlkit.errors import BackendError
from hmlkit.node import datafetch
from runners.data.inputs import Input
from runners.data.store import Store

Via = Literal["auto", "store", "ssh"]


@dataclass
class Staged:
    env: dict[str, str] = field(default_factory=dict)
    fetched_bytes: int = 0
    """Read from the store by the host itself."""
    streamed_bytes: int = 0
    """Sent by the runner over SSH (hosts that cannot reach the store)."""


def plan(inputs: list[Input], root: str, urls_for: set[str]) -> dict[str, Any]:
    """The host's plan; objects whose cache key is in ``urls_for`` get a presigned URL."""
    stores: dict[str, Store] = {}

    def url(inp: Input, obj: Any) -> str | None:
        if obj.cache_key not in urls_for:
            return None
        if inp.snapshot.store not in stores:
            stores[inp.snapshot.store] = Store(inp.snapshot.store, inp.store)
        return stores[inp.snapshot.store].presign(inp.snapshot.where, obj)

    return {
        "root": root,
        "inputs": {
            inp.name: {
                "digest": inp.snapshot.digest,
                "objects": [
                    {"key": o.cache_key, "path": o.key, "sha256": o.sha256, "url": url(inp, o)}
                    for o in inp.snapshot.objects
                ],
            }
            for inp in inputs
        },
    }


def _env(inputs: list[Input], dirs: dict[str, str]) -> dict[str, str]:
    return {inp.env_name: dirs[inp.name] for inp in inputs}


def stage_here(inputs: list[Input], root: Path) -> Staged:
    """This machine is the host: it reads the store itself (it resolved the inputs from it)."""
    if not inputs:
        return Staged()
    staged = Staged()
    urls_for: set[str] = set()  # first round: what the cache holds already is only linked
    for _ in range(2):
        try:
            done = datafetch.materialise(plan(inputs, str(root), urls_for))
        except (ValueError, OSError) as exc:
            raise BackendError(f"staging the inputs: {exc}") from None
        staged.fetched_bytes += done["fetched_bytes"]
        if not done["missing"]:
            staged.env = _env(inputs, done["dirs"])
            return staged
        urls_for = set(done["missing"])
    raise BackendError(f"staging the inputs: the store did not answer for {len(urls_for)} object(s)")


def stage_remote(pool: Any, host: Any, root: str, scratch: str, inputs: list[Input], via: Via) -> Staged:
    """Materialise ``inputs`` on an SSH host (``pool``: its HostPool); ``scratch``: a private
    directory of this attempt on the host for the plan.

    Rounds: link what the host's cache holds; presign what it lacks and let it fetch (unless
    ``via`` is ssh); stream over SFTP what it still lacks (unless ``via`` is store), and link.
    """
    from hmlkit.ssh.hosts import write_files

    if not inputs:
        return Staged()
    client = pool.client(host)
    script = Path(datafetch.__file__).read_text()
    staged = Staged()
    urls_for: set[str] = set()
    for round_ in ("cache", "store", "ssh"):
        if round_ == "ssh" and via == "store":
            raise BackendError(
                f"{host.label}: cannot reach the data store (data_via: store); use data_via: auto or ssh"
            )
        if round_ == "store" and via == "ssh":
            continue
        files = {"datafetch.py": script, "inputs-plan.json": json.dumps(plan(inputs, root, urls_for))}
        write_files(pool.runner(host), scratch, files)
        q = shlex.quote(scratch)
        py = shlex.quote(host.python)
        rc, out, err = pool.exec(host, f"{py} -I -S {q}/datafetch.py {q}/inputs-plan.json", timeout=3600)
        if rc != 0:
            raise BackendError(f"{host.label}: staging the inputs failed: {(err or out).strip()[-300:]}")
        done = json.loads(out.strip().splitlines()[-1])
        staged.fetched_bytes += done["fetched_bytes"]
        if not done["missing"]:
            staged.env = _env(inputs, done["dirs"])
            return staged
        urls_for = set(done["missing"])
        if via != "store" and (round_ == "store" or via == "ssh"):
            staged.streamed_bytes += _stream(client, root, inputs, urls_for)
            urls_for = set()
    raise BackendError(f"{host.label}: inputs still incomplete after streaming them")


def _stream(client: Any, root: str, inputs: list[Input], missing: set[str]) -> int:
    """Copy the ``missing`` cache keys from the store into the host's cache: one tar stream
    (hmlkit.ssh.shell.tar_feed), each object hashed as it passes; one that does not match its
    snapshot breaks the stream off, and the host keeps nothing of it."""
    from hmlkit.ssh.shell import Member, run, tar_feed, untar

    sent = 0

    def members() -> Iterator[Member]:
        nonlocal sent
        for inp in inputs:
            store = Store(inp.snapshot.store, inp.store)
            for obj in inp.snapshot.objects:
                if obj.cache_key not in missing:
                    continue
                missing.discard(obj.cache_key)
                body = _Hashing(store.open(inp.snapshot.where, obj))
                yield obj.cache_key, 0o444, obj.size, body
                if obj.sha256 and body.sha.hexdigest() != obj.sha256:
                    raise BackendError(f"{obj.key}: the store returned other bytes than the snapshot's")
                sent += obj.size

    data = shlex.quote(f"{root}/data")
    script = f"""set -e; mkdir -p {data}; cd {data}
in=$(mktemp -d .in.XXXXXX); trap 'rm -rf "$in"' EXIT
{untar('"$in"')}
for f in "$in"/*; do if [ -f "$f" ]; then chmod 444 "$f"; mv -f "$f" .; fi; done
"""
    rc, _, err = run(client, script, timeout=3600, stdin=tar_feed(members()))
    if rc != 0:
        raise BackendError(f"streaming inputs to the host failed: {err.strip()[-300:]}")
    return sent


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.body.read(n)
        self.sha.update(data)
        return data
