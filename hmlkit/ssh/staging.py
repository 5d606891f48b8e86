"""Content-addressed code staging: a workdir goes to ``<root>/code/<tree hash>/``.

Files are stored once under ``<root>/blobs/<sha256>``; a submission uploads only the blobs
the host lacks, then the host assembles the tree from them. Unchanged code sends no file
content at all; a one-file change sends that one file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmlkit.errors import BackendError, UsageError
from hmlkit.extras import require
from hmlkit.ssh.shell import Member, Runner, tar_feed, untar

IGNORE_FILES = (".gitignore", ".hmlignore")
ALWAYS_IGNORED = [".git/", "__pycache__/", ".hybridml/", ".checkpoints/", ".venv/"]


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    mode: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]

    @property
    def tree_hash(self) -> str:
        lines = "".join(f"{e.sha256} {e.mode:o} {e.path}\n" for e in self.entries)
        return hashlib.sha256(lines.encode()).hexdigest()[:32]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def _ignore_spec(workdir: Path) -> Any:
    pathspec = require("pathspec", "code staging for ssh targets")

    patterns = list(ALWAYS_IGNORED)
    for name in IGNORE_FILES:
        file = workdir / name
        if file.is_file():
            patterns += file.read_text(encoding="utf-8", errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(patterns)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def scan(workdir: Path, max_bytes: int) -> Manifest:
    """The files to stage (``.gitignore``/``.hmlignore`` honoured); refuses oversize workdirs."""
    spec = _ignore_spec(workdir)
    found: list[tuple[str, Path]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(workdir):
        rel_dir = Path(dirpath).relative_to(workdir)
        dirnames[:] = sorted(d for d in dirnames if not spec.match_file(f"{(rel_dir / d).as_posix()}/"))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            if spec.match_file(rel) or not full.is_file() or "\n" in rel:
                continue
            found.append((rel, full))
            total += full.stat().st_size
    if total > max_bytes:
        biggest = sorted(found, key=lambda f: f[1].stat().st_size, reverse=True)[:3]
        names = ", ".join(f"{rel} ({p.stat().st_size / 1e6:.1f} MB)" for rel, p in biggest)
        raise UsageError(
            f"workdir {workdir} is {total / 1e6:.1f} MB, over the target's limit of "
            f"{max_bytes / 1e6:.0f} MB (largest: {names}); list data and outputs in .hmlignore, "
            "keep datasets in the object store, or raise max_workdir_mb"
        )
    entries = tuple(Entry(rel, p.stat().st_size, p.stat().st_mode & 0o777, _sha256(p)) for rel, p in found)
    return Manifest(entries)


@dataclass
class StageResult:
    code_dir: str
    files_sent: int
    bytes_sent: int


def stage(
    execute: Runner, manifest: Manifest, workdir: Path, root: str, python: str = "python3"
) -> StageResult:
    """Make ``<root>/code/<hash>/`` exist on the host, sending only the blobs it lacks.

    Three commands at most: is the tree there, which blobs are missing, then one tar stream of
    those blobs and the manifest, unpacked and assembled by the same command (no SFTP: a banner
    printed by the login's start-up files breaks it, hmlkit/ssh/shell.py).
    """
    code_dir = f"{root}/code/{manifest.tree_hash}"
    q_root, q_code = shlex.quote(root), shlex.quote(code_dir)
    rc, out, err = execute(f"test -f {q_code}/.hml-complete && echo present || echo absent")
    if rc == 0 and out.strip() == "present":
        return StageResult(code_dir, 0, 0)
    wanted = sorted({e.sha256 for e in manifest.entries})
    check = (
        f"mkdir -p {q_root}/blobs && cd {q_root}/blobs && "
        'while read -r h; do [ -n "$h" ] && [ ! -f "$h" ] && echo "$h"; done; true'
    )
    _, out, err = execute(check, timeout=120, stdin="\n".join(wanted) + "\n")
    missing = set(out.split())
    sending = {e.sha256: e for e in manifest.entries if e.sha256 in missing}
    lines = "".join(json.dumps([e.sha256, f"{e.mode:o}", e.path]) + "\n" for e in manifest.entries).encode()

    def members() -> Iterator[Member]:
        for entry in sending.values():
            with open(workdir / entry.path, "rb") as fh:
                yield entry.sha256, 0o644, entry.size, fh
        yield "manifest", 0o600, len(lines), io.BytesIO(lines)

    assemble = f"""set -e; cd {q_root}/blobs
in=$(mktemp -d .in.XXXXXX); trap 'rm -rf "$in"' EXIT
{untar('"$in"')}; mv "$in/manifest" "$in/.manifest"
for f in "$in"/*; do if [ -f "$f" ]; then mv -f "$f" .; fi; done
tmp={q_code}.tmp.$$; rm -rf "$tmp"; mkdir -p "$tmp"
{shlex.quote(python)} -I -S -c {shlex.quote(_ASSEMBLE)} {q_root} "$tmp" "$in/.manifest"
touch "$tmp/.hml-complete"; rm -rf {q_code}; mv "$tmp" {q_code}
"""
    rc, _, err = execute(assemble, timeout=300, stdin=tar_feed(members()))
    if rc != 0:
        raise BackendError(f"assembling {code_dir} failed: {err.strip()[-300:]}")
    return StageResult(code_dir, len(sending), sum(e.size for e in sending.values()))


_ASSEMBLE = """
import json, os, shutil, sys
root, dst, manifest = sys.argv[1:4]
with open(manifest) as fh:
    for line in fh:
        sha, mode, rel = json.loads(line)
        out = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(os.path.join(root, "blobs", sha), out)
        os.chmod(out, int(mode, 8))
"""
