"""The session helper (hmlkit/node/session.py) speaks its protocol under every Python a host may
have: 3.6 (RHEL 8) to the newest this machine has, run here directly on its stdin and stdout
(over SSH it is tests/runners/test_ssh_session.py's)."""

from __future__ import annotations

import subprocess

import pytest

from hmlkit.node import session
from hmlkit.ssh.preflight import MIN_PYTHON
from tests.runners.test_hosts import interpreters

PYTHONS = {".".join(map(str, v[:2])): p for v, p in interpreters().items() if v[:2] >= MIN_PYTHON}


def frames(out: bytes) -> list[tuple[str, bytes]]:
    """The helper's replies after its first line: (tag, bytes) for O/E, (tag, value) else."""
    assert out.startswith(session.PROTOCOL), out[:200]
    out = out[len(session.PROTOCOL) :]
    got = []
    while out:
        head, _, out = out.partition(b"\n")
        tag, _, value = head.decode().partition(" ")
        if tag in ("O", "E"):
            got.append((tag, out[: int(value)]))
            out = out[int(value) :]
        elif tag == "B":
            got.append(("B", out))  # what the command it became printed
            out = b""
        else:
            got.append((tag, value.encode()))
    return got


def request(script: str, stdin: bytes = b"") -> bytes:
    body = script.encode()
    chunks = b"".join(b"%d\n" % len(stdin[i : i + 7]) + stdin[i : i + 7] for i in range(0, len(stdin), 7))
    return b"RUN %d\n" % len(body) + body + chunks + b"0\n"


@pytest.mark.parametrize("python", sorted(PYTHONS), ids=lambda v: f"py{v}")
def test_requests_then_the_follower_on_one_stdin(python: str):
    become = b"echo became; cat"
    feed = (
        request("cat; echo to-err >&2; exit 3", b"fed in pieces\n")
        + request("echo ${LC_CTYPE-unset}; echo $HML_LOGIN_VAR")
        + b"EXEC %d\n" % len(become)
        + become
        + b"after the exec\n"
    )
    out = subprocess.run(
        [PYTHONS[python], "-I", "-S", session.__file__, "", ""],
        input=feed,
        capture_output=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LANG": "C", "HML_LOGIN_VAR": "login"},  # C: 3.7+ coerce it
    )
    assert out.returncode == 0, out.stderr
    first, second, rest = replies(frames(out.stdout))
    assert first == (b"fed in pieces\n", b"to-err\n", 3)
    # the login had no LC_CTYPE: Python's locale coercion leaves none in what the commands get
    assert second == (b"unset\nlogin\n", b"", 0)
    assert rest == [("B", b"became\nafter the exec\n")]


def replies(got: list[tuple[str, bytes]]) -> tuple[tuple[bytes, bytes, int], tuple[bytes, bytes, int], list]:
    """The first two requests' (stdout, stderr, status), and the frames after them."""
    done: list[tuple[bytes, bytes, int]] = []
    out, err = b"", b""
    while got and len(done) < 2:
        tag, value = got.pop(0)
        if tag == "X":
            done.append((out, err, int(value)))
            out, err = b"", b""
        elif tag == "O":
            out += value
        else:
            err += value
    return done[0], done[1], got


def test_a_request_cut_short_never_finishes_its_command(tmp_path):
    """End of file in the middle of a command's input kills it: ``mv`` never runs."""
    part, whole = tmp_path / "f.part", tmp_path / "f"
    body = f"cat > {part} && mv {part} {whole}".encode()
    feed = b"RUN %d\n" % len(body) + body + b"5\nhalf-"
    out = subprocess.run(
        [PYTHONS[max(PYTHONS)], "-I", "-S", session.__file__, "", ""],
        input=feed,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert not whole.exists()
    assert b"X " not in out.stdout  # no status: the runner that gave up reads none
