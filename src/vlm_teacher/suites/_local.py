"""Helpers for reading an external benchmark from a local folder.

Dataset files name other files by relative path. Those paths come from a
download the user did not write, so they are treated as untrusted: a path may
not be absolute, may not climb out with ``..``, and may not reach outside the
root through a symlink. The same rule keeps output folder names (model, task)
to one plain path component.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..errors import UserError

_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\- ]*$")


def safe_path(root: Path, rel: object, what: str) -> Path:
    """``root / rel`` resolved, refusing anything that would leave ``root``.

    ``what`` names the entry and field for the error (e.g. "VBVR-Bench.json
    entry 3, field first_frame_path").
    """
    if not isinstance(rel, str) or not rel.strip():
        raise UserError(f"{what}: expected a relative path, got {rel!r}")
    if "\x00" in rel:
        raise UserError(f"{what}: path {rel!r} contains a NUL byte")
    posix = PurePosixPath(rel)
    if posix.is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise UserError(f"{what}: path {rel!r} is absolute; dataset paths must be relative to the dataset root {root}")
    if ".." in posix.parts or ".." in PureWindowsPath(rel).parts:
        raise UserError(f"{what}: path {rel!r} contains '..'; dataset paths must stay inside the dataset root {root}")
    root_resolved = root.resolve()
    full = (root_resolved / posix).resolve()
    if not full.is_relative_to(root_resolved):
        raise UserError(f"{what}: path {rel!r} leads outside the dataset root {root} (through a symlink); copy the file into the dataset")
    return full


def check_inside(root: Path, path: Path, what: str) -> Path:
    """``path`` (found by walking ``root``) resolved, refusing symlinks that lead outside."""
    root_resolved = root.resolve()
    full = path.resolve()
    if not full.is_relative_to(root_resolved):
        raise UserError(f"{what}: {path} leads outside the dataset root {root} (through a symlink); copy the file into the dataset")
    return full


def safe_component(name: object, what: str) -> str:
    """A name used as one output folder/file name: no separators, no '..', not hidden."""
    if not isinstance(name, str) or not _COMPONENT.match(name) or name in (".", ".."):
        raise UserError(
            f"{what} {name!r} cannot be used as a folder name; use letters, digits, '.', '_', '-', '+' or spaces, "
            "starting with a letter or digit"
        )
    return name


def decode_base64_image(data: object, what: str) -> np.ndarray:
    """A base64 image (optionally a ``data:...;base64,`` URL) -> (H, W, 3) uint8 RGB."""
    if not isinstance(data, str) or not data.strip():
        raise UserError(f"{what}: expected a base64-encoded image, got {type(data).__name__}")
    text = data.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[1] if "," in text else ""
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{what}: not valid base64; re-download the dataset file") from None
    return decode_image_bytes(raw, what)


def decode_image_bytes(raw: bytes, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise UserError(f"{what}: the data is not a readable image (PNG/JPEG); re-download the dataset file") from None


def read_image_file(path: Path, what: str) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB, errors naming the dataset entry."""
    if not path.is_file():
        raise UserError(f"{what}: image file {path} not found; is the dataset download complete?")
    return decode_image_bytes(path.read_bytes(), what)
