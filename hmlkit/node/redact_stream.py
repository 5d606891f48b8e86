"""The filter between a job and its log file: secret values are replaced before a byte is written.

The job wrapper pipes everything the job prints through this script (copied next to the job
on every host, standard library only), so unredacted output never reaches a disk, and a
supervisor restarted from a shell that lacks the secrets has nothing left to redact. Values
come from the environment variables named on the command line, the same ones the job gets.

A value is caught in the forms a job prints it by accident as well as whole: escaped inside
JSON or a Python ``repr`` (either quote), and base64-encoded, standard or URL-safe, padded or
not, alone or at any of the three alignments inside a longer encoded string (the characters
that depend only on the secret's bytes). A value transformed otherwise (reversed, hashed,
encrypted) is out of reach; docs/security.md lists what is.

A secret printed in pieces (``printf abc; sleep 1; printf def``) is still caught: complete
lines are written at once; a line still being written is held back only as far as its tail
could be the start of a secret, and flushed after a short pause so progress bars stay live.
"""

import base64
import json
import os
import select
import signal
import sys
import time

MIN_SECRET_LEN = 4
"""Shorter values are too common to replace (and too short to be real credentials)."""
REDACTED = b"***"
PAUSE_S = 0.3


def forms(value: str) -> "set[bytes]":
    """The byte strings that betray ``value`` in output: itself, its JSON and ``repr`` escapes,
    and its base64 encodings (see the module's docstring)."""
    texts = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1]}
    texts.add(repr(value + "'\"")[1:-4])  # single quotes, ' escaped (a repr holding both quotes)
    if '"' not in value:
        texts.add(repr(value + "'")[1:-2])  # double quotes, ' as is
    found = {t.encode("utf-8", "surrogateescape") for t in texts}
    raw = value.encode("utf-8", "surrogateescape")
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw)
        found |= {whole, whole.rstrip(b"=")}
        for k in range(3):  # after k other bytes, inside a longer encoding: drop the characters
            end = k + len(raw)  # that share bits with the bytes before it or after it
            found.add(encode(bytes(k) + raw)[(8 * k + 5) // 6 : end // 3 * 4 + end % 3 * 8 // 6])
    return {f for f in found if len(f) >= MIN_SECRET_LEN}


def secrets_from(names: "list[str]", environ: "dict[str, str] | os._Environ[str]") -> "list[bytes]":
    values = {environ.get(name, "") for name in names}
    patterns = set().union(*(forms(v) for v in values if len(v) >= MIN_SECRET_LEN))
    return sorted(patterns, key=len, reverse=True)


def redact(data: bytes, secrets: "list[bytes]") -> bytes:
    for secret in secrets:  # longest first, so a secret containing another goes whole
        data = data.replace(secret, REDACTED)
    return data


def held_back(data: bytes, secrets: "list[bytes]") -> int:
    """How many trailing bytes could be the first part of a secret still being printed."""
    keep = 0
    for secret in secrets:
        for n in range(min(len(secret) - 1, len(data)), keep, -1):
            if data.endswith(secret[:n]):
                keep = n
                break
    return keep


def pump(fd_in: int, fd_out: int, secrets: "list[bytes]") -> None:
    buf = b""
    last_out = time.monotonic()
    while True:
        ready, _, _ = select.select([fd_in], [], [], PAUSE_S if buf else None)
        if ready:
            data = os.read(fd_in, 1 << 16)
            if not data:
                break
            buf += data
        buf = redact(buf, secrets)
        cut = buf.rfind(b"\n") + 1
        if not cut and buf and (not ready or time.monotonic() - last_out > PAUSE_S):
            cut = len(buf) - held_back(buf, secrets)
        if cut:
            os.write(fd_out, buf[:cut])
            buf, last_out = buf[cut:], time.monotonic()
    if buf:
        os.write(fd_out, redact(buf, secrets))


def main(argv: "list[str]") -> int:
    # the job's process group gets cancel's TERM; this filter leaves only at end of input, so
    # whatever the job prints while it stops is still redacted and kept
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    pump(sys.stdin.fileno(), sys.stdout.fileno(), secrets_from(argv, os.environ))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
