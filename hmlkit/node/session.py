"""One SSH session that serves a submit's commands on a host: standard library only.

    python3 -I -S -c SOURCE SET VALUE    (sent inline by hmlkit/ssh/session.py)

sshd runs the login user's shell, its start-up files and PAM's session hooks again for every
SSH command, and a ``~/.bashrc`` that initialises conda or ``module`` costs 0.2-1 s each time.
So the runner starts this once per host with its first command and sends the rest to it as
requests on its stdin: each runs as ``/bin/sh -c SCRIPT`` in the environment the login gave
this helper (what a command of its own would have got), and costs no login.

The protocol, after the login shell's banners (cut off by hmlkit/ssh/shell.py's mark)::

    helper -> runner   HML-SESSION 1                  once it runs
    runner -> helper   RUN <n>, n bytes of script, then the command's stdin as chunks
                       <n> and n bytes, ended by 0
    helper -> runner   O <n> / E <n> and n bytes of its stdout / stderr, then X <status>
    runner -> helper   EXEC <n>, n bytes of a command line: the helper answers B and becomes
                       /bin/sh -c LINE on the channel's own stdin, stdout and stderr (the
                       output follower, hmlkit/node/follow_stream.py)

End of file on stdin ends it. ``SET``/``VALUE``: whether the login had ``LC_CTYPE`` and its
value, so that Python's locale coercion (PEP 538 sets ``LC_CTYPE`` in its own environment)
leaves no trace in what the commands, and the jobs they start, inherit.
"""

import os
import signal
import subprocess
import sys
import threading

PROTOCOL = b"HML-SESSION 1\n"


class Channel:
    """The runner's end: requests in on stdin, framed replies out on stdout. Stdin is read
    unbuffered and never past the request at hand: what follows an ``EXEC`` is the follower's."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]

    def line(self) -> bytes:
        """One header line (a few bytes, read one at a time); b'' at end of file."""
        got = b""
        while not got.endswith(b"\n"):
            byte = os.read(0, 1)
            if not byte:
                return got
            got += byte
        return got

    def exactly(self, n: int) -> bytes:
        parts, left = [], n
        while left:
            data = os.read(0, min(left, 1 << 16))
            if not data:
                raise EOFError("the runner went away")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)


def pump(chan: Channel, fd: int, tag: bytes) -> None:
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            return
        chan.send(tag + b" %d\n" % len(data) + data)


def run(chan: Channel, script: bytes, env: "dict[str, str]") -> None:
    """One ``RUN``: the script's stdin is fed from the request's chunks as they come."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script.decode("utf-8", "surrogateescape")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        bufsize=0,
        start_new_session=True,  # as sshd gives each command; a cut request ends all of it
    )
    feed, out, err = proc.stdin, proc.stdout, proc.stderr
    if feed is None or out is None or err is None:  # never: all three are pipes
        raise RuntimeError("no pipes")
    pumps = [
        threading.Thread(target=pump, args=(chan, out.fileno(), b"O")),
        threading.Thread(target=pump, args=(chan, err.fileno(), b"E")),
    ]
    for thread in pumps:
        thread.start()
    taking, cut = True, False
    try:
        while True:
            head = chan.line()
            if not head.strip():
                cut = True  # end of file mid-request: the runner gave up (a feed that failed)
                break
            n = int(head)
            if not n:
                break
            chunk = chan.exactly(n)
            if taking:
                try:
                    feed.write(chunk)
                except BrokenPipeError:
                    taking = False  # the script stopped reading: the rest is dropped
    except (EOFError, ValueError):
        cut = True
    if cut:  # the command never gets the end of its input: it must not finish as if it had
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        feed.close()
    except BrokenPipeError:
        pass
    for thread in pumps:
        thread.join()
    status = proc.wait()
    if cut:
        raise EOFError("the runner went away")
    chan.send(b"X %d\n" % (128 - status if status < 0 else status))


def main() -> None:
    env = dict(os.environ)
    if sys.argv[1:2] == ["1"]:
        env["LC_CTYPE"] = sys.argv[2]
    else:
        env.pop("LC_CTYPE", None)
    chan = Channel()
    chan.send(PROTOCOL)
    while True:
        head = chan.line()
        if not head:
            return
        word, _, size = head.decode().strip().partition(" ")
        body = chan.exactly(int(size))
        if word == "RUN":
            try:
                run(chan, body, env)
            except EOFError:
                return
        elif word == "EXEC":
            chan.send(b"B\n")
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            os.execve("/bin/sh", ["/bin/sh", "-c", body.decode("utf-8", "surrogateescape")], env)
        else:
            sys.stderr.write(f"hml session: unknown request {word!r}\n")
            sys.exit(2)


if __name__ == "__main__":
    main()
