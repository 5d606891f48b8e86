"""The output filter (hmlkit/node/redact_stream.py) catches a secret printed escaped or encoded.

A job that prints its secret through ``json.dumps``, ``repr`` (alone or inside a list or a
dict) or base64 (standard or URL-safe, padded or not, alone or inside a longer encoded
string at each alignment) leaves none of those forms in ``output.log`` or ``hml logs``; the
filter runs as the wrapper runs it (``python3 -I -S redact.py NAMES``), and a form split
across two writes is caught as a plain value is.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hmlkit.node import jobscript
from tests.runners.helpers import hml, submit_json, write_job

FILTER = Path(jobscript.__file__).with_name("redact_stream.py")
SECRET = f'p\\a"ss-{uuid.uuid4().hex}/é+?'
"""A backslash and a double quote, which JSON and ``repr`` escape, and a non-ASCII letter."""
AROUND = (b"", b"u", b"us", b"use")
"""Bytes before the secret inside a longer base64 string: each of the three alignments."""


def _b64(data: bytes, urlsafe: bool) -> str:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()


PRINTER = f"""
import base64, json, os
t = os.environ["TOKEN"]
print(json.dumps({{"token": t}}))
print(json.dumps(t, ensure_ascii=False))
print(repr(t))
print([t, "it's"])
print({{"k": t + "'"}})
for urlsafe in (False, True):
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    print("bare", urlsafe, encode(t.encode()).decode(), encode(t.encode()).decode().rstrip("="))
    for before in {AROUND!r}:
        print("b64", urlsafe, len(before), encode(before + t.encode() + b":x").decode())
"""

EXPECTED = [
    '{"token": "***"}',
    '"***"',
    "'***'",
    "['***', \"it's\"]",
    "{'k': '***\\''}",
]


def _leaks(text: str) -> list[str]:
    """Every form of SECRET the job printed that is still in ``text``."""
    raw = SECRET.encode()
    forms = [
        SECRET,
        json.dumps(SECRET)[1:-1],
        json.dumps(SECRET, ensure_ascii=False)[1:-1],
        repr(SECRET)[1:-1],
    ]
    forms += [_b64(raw, u).rstrip("=") for u in (False, True)]
    return [f for f in forms if f in text]


def _check_base64_lines(text: str) -> None:
    """Each encoded line lost every character that only the secret determines: what remains
    is at most what the bytes around it, and the one or two characters they share, encode."""
    lines = [line.split() for line in text.splitlines() if line.startswith(("b64 ", "bare "))]
    assert len(lines) == 2 * (len(AROUND) + 1), text
    for words in lines:
        if words[0] == "bare":
            assert words[2:] == ["***", "***"], words
            continue
        before = int(words[2])
        assert "***" in words[3], words
        left = words[3].replace("***", "")
        assert len(left) <= len(_b64(bytes(before), False)) + len(_b64(b":x", False)) + 2, words


def test_escaped_and_encoded_forms_never_reach_output_log_or_hml_logs(tmp_path, hml_home):
    work = tmp_path / "w"
    work.mkdir()
    (work / "printer.py").write_text(PRINTER)
    job = write_job(work, run=f"{sys.executable} printer.py", secrets=["TOKEN"])
    env = {"HML_SECRET_TOKEN": SECRET, "HML_AGENT": "0"}
    summary, out = submit_json(str(job), env=env, timeout=120)
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
    run_id = summary["run_id"]
    logs = hml("logs", run_id, env={"HML_AGENT": "0"}).stdout
    for line in EXPECTED:
        assert line in logs.splitlines(), logs
    _check_base64_lines(logs)
    files = [p for p in hml_home.rglob("*") if p.is_file()]
    assert any(p.name == "output.log" for p in files)
    for path in files:
        assert _leaks(path.read_bytes().decode(errors="replace")) == [], path
    assert _leaks(logs + out.stdout + out.stderr) == []


def test_a_form_written_in_two_pieces_is_caught():
    """The JSON form, its first half, a pause longer than the filter waits, then the rest."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(FILTER), "TOKEN"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "TOKEN": SECRET},
    )
    assert proc.stdin is not None and proc.stdout is not None
    escaped = json.dumps(SECRET).encode()
    proc.stdin.write(b"progress " + escaped[:9])
    proc.stdin.flush()
    time.sleep(1.0)
    proc.stdin.write(escaped[9:] + b" done\n")
    proc.stdin.close()
    assert proc.stdout.read() == b'progress "***" done\n'
    assert proc.wait(timeout=10) == 0
