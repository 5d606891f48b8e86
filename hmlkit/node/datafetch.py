"""Materialise a job's inputs on a host, with the standard library only (it runs on any host).

The runner sends a plan (JSON): the objects of each input by cache key, size, content hash
and, when the host may read the store itself, a presigned GET URL. Objects go once into the
host's content-addressed cache ``<root>/data/<key>``; each input becomes a read-only tree of
hard links ``<root>/inputs/<digest>/``, built in a scratch directory and renamed into place,
so a directory that exists is complete. A second job on the same data fetches nothing.
When the store cannot be reached (the first URL fails to connect), the keys still missing are
reported and the runner streams them over SSH into the cache, then runs the plan again.

    python3 -I -S datafetch.py PLAN.json   ->   {"fetched_bytes": N, "missing": [...], "dirs": {...}}
"""

import hashlib
import json
import os
import shutil
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TIMEOUT_S = 30
WORKERS = 8


def _fetch(url: str, dest: str, sha256: "str | None") -> int:
    tmp = f"{dest}.part.{os.getpid()}"
    h = hashlib.sha256()
    size = 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(tmp, "wb") as out:  # noqa: S310 - presigned https/http URL
        for block in iter(lambda: resp.read(1 << 20), b""):
            h.update(block)
            out.write(block)
            size += len(block)
    if sha256 and h.hexdigest() != sha256:
        os.unlink(tmp)
        raise ValueError(f"{dest}: content hash {h.hexdigest()} is not the snapshot's {sha256}")
    os.chmod(tmp, 0o444)
    os.replace(tmp, dest)
    return size


def _link_tree(cache: str, dest: str, objects: "list[dict[str, Any]]") -> None:
    tmp = f"{dest}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for obj in objects:
        path = os.path.join(tmp, obj["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.link(os.path.join(cache, obj["key"]), path)
        except OSError:  # another file system: a copy, made read-only like the cache
            shutil.copyfile(os.path.join(cache, obj["key"]), path)
            os.chmod(path, 0o444)
    for dirpath, _, _ in os.walk(tmp, topdown=False):
        os.chmod(dirpath, 0o555)
    try:
        os.rename(tmp, dest)
    except OSError:  # made meanwhile by another job: the same content
        _remove(tmp)


def _remove(path: str) -> None:
    for dirpath, _, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _fetch_all(cache: str, wanted: "dict[str, dict[str, Any]]") -> "tuple[int, list[str]]":
    """Fetch ``wanted`` (cache key -> object) in parallel; (bytes fetched, keys not fetched).

    A connection failure marks the store unreachable: what is left is reported, not retried
    one time-out at a time.
    """
    unreachable = threading.Event()

    def one(obj: "dict[str, Any]") -> "int | None":
        if unreachable.is_set() or not obj.get("url"):
            return None
        try:
            return _fetch(obj["url"], os.path.join(cache, obj["key"]), obj.get("sha256"))
        except urllib.error.HTTPError:
            raise  # the store answered: an expired URL or a lost version is an error, not a route
        except (urllib.error.URLError, OSError):
            unreachable.set()
            return None

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        sizes = list(pool.map(one, wanted.values()))
    missing = [key for key, size in zip(wanted, sizes) if size is None]  # noqa: B905  (strict= is 3.10+; map keeps the length)
    return sum(s for s in sizes if s is not None), missing


def materialise(plan: "dict[str, Any]") -> "dict[str, Any]":
    root = plan["root"]
    cache = os.path.join(root, "data")
    os.makedirs(cache, exist_ok=True)
    os.makedirs(os.path.join(root, "inputs"), exist_ok=True)
    dirs = {name: os.path.join(root, "inputs", inp["digest"]) for name, inp in plan["inputs"].items()}
    todo = {name: inp for name, inp in plan["inputs"].items() if not os.path.isdir(dirs[name])}
    wanted = {
        obj["key"]: obj
        for inp in todo.values()
        for obj in inp["objects"]
        if not os.path.exists(os.path.join(cache, obj["key"]))
    }
    fetched, missing = _fetch_all(cache, wanted)
    for name, inp in todo.items():
        if not any(o["key"] in missing for o in inp["objects"]):
            _link_tree(cache, dirs[name], inp["objects"])
    return {"fetched_bytes": fetched, "missing": missing, "dirs": dirs}


def main(argv: "list[str]") -> int:
    with open(argv[1]) as fh:
        plan = json.load(fh)
    os.unlink(argv[1])  # its URLs are read; they should not outlive the fetch on disk
    try:
        print(json.dumps(materialise(plan)))
    except (ValueError, OSError) as exc:
        print(f"datafetch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
