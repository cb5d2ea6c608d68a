"""Model identity: the name a model folder has in result rows, config hashes and model cards."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: what the recipes write beside the weights about a model (its measured figures): re-measuring a
#: card rewrites them without changing what the model computes, so they are not part of its identity
MODEL_RECORD_FILES = frozenset({"eval.json", "metrics.json"})


def model_id(path: str | os.PathLike) -> str:
    """``<folder name>-<hash>``: the hash covers every config file and the size and first
    MiB of every weight file, so a retrained model in the same folder gets new rows
    (the recipes' figure files, ``MODEL_RECORD_FILES``, are left out)."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt")
                   and p.name not in MODEL_RECORD_FILES)
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 20))
    return f"{root.name}-{h.hexdigest()[:8]}"
