"""The host side of dataset staging (standard library only) against a real HTTP server."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hmlkit.node import datafetch
from tests.conftest import free_port

BLOBS = {"/a": b"alpha\n", "/b": b"beta" * 1000}


@pytest.fixture(scope="module")
def store() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = BLOBS.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _plan(root, base: str, sha: dict[str, str] | None = None) -> dict:
    objects = [
        {"key": hashlib.sha256(body).hexdigest(), "path": f"dir{path}.txt", "url": base + path}
        for path, body in BLOBS.items()
    ]
    for obj in objects:
        obj["sha256"] = (sha or {}).get(obj["path"], obj["key"])
    return {"root": str(root), "inputs": {"train": {"digest": "d1", "objects": objects}}}


def test_fetches_once_links_read_only_and_refetches_nothing(tmp_path, store):
    done = datafetch.materialise(_plan(tmp_path, store))
    assert done["missing"] == [] and done["fetched_bytes"] == sum(len(b) for b in BLOBS.values())
    tree = done["dirs"]["train"]
    assert (tmp_path / "inputs" / "d1" / "dir" / "a.txt").read_bytes() == b"alpha\n"
    modes = [
        os.stat(os.path.join(d, n)).st_mode & 0o222 for d, dirs, files in os.walk(tree) for n in dirs + files
    ]
    assert modes and not any(modes) and not os.stat(tree).st_mode & 0o222
    again = datafetch.materialise(_plan(tmp_path, store))
    assert again["fetched_bytes"] == 0 and again["dirs"] == done["dirs"]


def test_an_unreachable_store_reports_what_is_missing(tmp_path):
    done = datafetch.materialise(_plan(tmp_path, f"http://127.0.0.1:{free_port()}"))
    assert sorted(done["missing"]) == sorted(hashlib.sha256(b).hexdigest() for b in BLOBS.values())
    assert done["fetched_bytes"] == 0 and not (tmp_path / "inputs" / "d1").exists()


def test_other_bytes_than_the_snapshot_are_refused(tmp_path, store):
    with pytest.raises(ValueError, match="is not the snapshot's"):
        datafetch.materialise(_plan(tmp_path, store, sha={"dir/a.txt": "0" * 64}))
    assert not (tmp_path / "inputs" / "d1").exists()
    assert not (tmp_path / "data" / hashlib.sha256(b"alpha\n").hexdigest()).exists()
