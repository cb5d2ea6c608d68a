"""Weight files: a safetensors file is checked to be whole before a loader reads it, so a file cut
short (an interrupted copy or download) is named as damaged in one line instead of a loader's
traceback.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (each tensor's
dtype, shape and ``data_offsets`` [begin, end) into the data that follows), then the data."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import UserError

#: a header larger than this is not a safetensors header (the format's own limit is 100 MB)
MAX_HEADER_BYTES = 100_000_000


def check_safetensors(path: str | os.PathLike) -> None:
    """UserError naming ``path`` as damaged unless its header reads and its data is all there."""
    path = Path(path)
    size = path.stat().st_size
    fix = "copy or download it again (or re-save the model)"
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError(f"{path} is damaged: {size} bytes, too short for a safetensors header; {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise UserError(f"{path} is damaged: its header claims {n} bytes but the file has {size}; {fix}")
        try:
            header = json.loads(fh.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise UserError(f"{path} is damaged: its safetensors header is not readable; {fix}") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise UserError(f"{path} is damaged (cut short): {size} bytes of the {need} its header describes; {fix}")


def check_weight_folder(folder: str | os.PathLike) -> None:
    """``check_safetensors`` on every ``*.safetensors`` file directly in ``folder``."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        check_safetensors(path)
