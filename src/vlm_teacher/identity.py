"""Model identity: the name a model folder has in result rows, config hashes and model cards.

The identity hashes every byte of every weight and config file, so any change to a weight is a
new identity. Hashing a large model takes a while (about 1 s per GB), so each file's digest is
cached by (absolute path, size, mtime in ns): in this process, and in
``$VLM_TEACHER_CACHE`` (default ``~/.cache/vlm-teacher``) / ``file_digests.json`` for the next.
A file modified in the last 2 s is hashed again every time (a rewrite within one timestamp tick
keeps its mtime). A change that keeps a file's size and modification time (both restored by hand)
is not seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

#: what the recipes write beside the weights about a model (its measured figures): re-measuring a
#: card rewrites them without changing what the model computes, so they are not part of its identity
MODEL_RECORD_FILES = frozenset({"eval.json", "metrics.json"})
CACHE_ENV = "VLM_TEACHER_CACHE"
DIGEST_CACHE_FILE = "file_digests.json"
RACY_NS = 2_000_000_000

_memory: dict[str, str] = {}
_lock = threading.Lock()


def model_id(path: str | os.PathLike) -> str:
    """``<folder name>-<hash>``: the hash covers the relative path and the whole content of every
    config and weight file, so a retrained model in the same folder gets new rows (the recipes'
    figure files, ``MODEL_RECORD_FILES``, are left out)."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt")
                   and p.name not in MODEL_RECORD_FILES)
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(file_digest(p).encode())
    return f"{root.name}-{h.hexdigest()[:8]}"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vlm-teacher")


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the whole file, from the cache when its size and mtime are the cached ones."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    # a file written in the last seconds could be rewritten within the same timestamp tick, so its
    # digest is not cached until its mtime is safely in the past (git's "racy" entries)
    cacheable = time.time_ns() - st.st_mtime_ns > RACY_NS
    if cacheable:
        with _lock:
            if key in _memory:
                return _memory[key]
        digest = _read_cache().get(key)
        if digest is not None:
            with _lock:
                _memory[key] = digest
            return digest
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if cacheable:
        _write_cache(key, digest)
        with _lock:
            _memory[key] = digest
    return digest


def _read_cache() -> dict[str, str]:
    try:
        data = json.loads((cache_dir() / DIGEST_CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, digest: str) -> None:
    """Add one entry (entries of files that changed since are dropped); a cache that cannot be
    written only costs the next process the hashing."""
    from .files import write_json

    path_prefix = key.rsplit("|", 2)[0] + "|"
    entries = {k: v for k, v in _read_cache().items()
               if not k.startswith(path_prefix) and os.path.exists(k.rsplit("|", 2)[0])}
    entries[key] = digest
    try:
        write_json(cache_dir() / DIGEST_CACHE_FILE, entries)
    except OSError:
        pass
