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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmlkit.errors import BackendError, UsageError
from hmlkit.extras import require

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


def stage(client: Any, manifest: Manifest, workdir: Path, root: str) -> StageResult:
    """Make ``<root>/code/<hash>/`` exist on the host, sending only the blobs it lacks."""
    from hmlkit.ssh.hosts import run

    code_dir = f"{root}/code/{manifest.tree_hash}"
    q_root, q_code = shlex.quote(root), shlex.quote(code_dir)
    rc, out, err = run(client, f"test -f {q_code}/.hml-complete && echo present || echo absent")
    if rc == 0 and out.strip() == "present":
        return StageResult(code_dir, 0, 0)
    wanted = sorted({e.sha256 for e in manifest.entries})
    listing = "\n".join(wanted) + "\n"
    check = (
        f"mkdir -p {q_root}/blobs && cd {q_root}/blobs && "
        'while read -r h; do [ -n "$h" ] && [ ! -f "$h" ] && echo "$h"; done; true'
    )
    missing = set(_run_with_input(client, check, listing).split())
    sent_files = sent_bytes = 0
    sftp = client.open_sftp()
    try:
        for entry in manifest.entries:
            if entry.sha256 in missing:
                tmp = f"{root}/blobs/.{entry.sha256}.part"
                sftp.put(str(workdir / entry.path), tmp)
                sftp.posix_rename(tmp, f"{root}/blobs/{entry.sha256}")
                missing.discard(entry.sha256)
                sent_files += 1
                sent_bytes += entry.size
        lines = [json.dumps([e.sha256, f"{e.mode:o}", e.path]) for e in manifest.entries]
        sftp.putfo(
            io.BytesIO(("\n".join(lines) + "\n").encode()), f"{root}/blobs/.manifest-{manifest.tree_hash}"
        )
    finally:
        sftp.close()
    assemble = (
        f'set -e; tmp={q_code}.tmp.$$; rm -rf "$tmp"; mkdir -p "$tmp"; '
        f'python3 -I -S -c {shlex.quote(_ASSEMBLE)} {q_root} "$tmp" {shlex.quote(manifest.tree_hash)}; '
        f'touch "$tmp/.hml-complete"; rm -rf {q_code}; mv "$tmp" {q_code}'
    )
    rc, _, err = run(client, assemble, timeout=300)
    if rc != 0:
        raise BackendError(f"assembling {code_dir} failed: {err.strip()[-300:]}")
    return StageResult(code_dir, sent_files, sent_bytes)


_ASSEMBLE = """
import json, os, shutil, sys
root, dst, tree = sys.argv[1:4]
with open(os.path.join(root, "blobs", ".manifest-" + tree)) as fh:
    for line in fh:
        sha, mode, rel = json.loads(line)
        out = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(os.path.join(root, "blobs", sha), out)
        os.chmod(out, int(mode, 8))
"""


def _run_with_input(client: Any, command: str, data: str) -> str:
    try:
        stdin, stdout, _ = client.exec_command(command, timeout=120)
        stdin.write(data)
        stdin.channel.shutdown_write()
        return str(stdout.read().decode())
    except Exception as exc:  # paramiko: socket, SSH and EOF errors on a lost host
        raise BackendError(f"staging failed: {str(exc) or type(exc).__name__}") from None
