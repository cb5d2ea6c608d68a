"""Video and image files <-> arrays.

Conventions used across the package:
- a video array is ``uint8`` of shape (T, H, W, 3), RGB;
- a frame tensor is ``float32`` of shape (T, 3, H, W) with values in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import atomic_path

DEFAULT_FPS = 8


def to_uint8(frames) -> np.ndarray:
    """(T, 3, H, W) float tensor/array in [0, 1] -> (T, H, W, 3) uint8."""
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    arr = np.asarray(frames, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"expected (T, 3, H, W) frames, got {arr.shape}")
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def to_float(video: np.ndarray):
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 torch tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.array(video, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)


BROWSER_PIXEL_FORMAT = "yuv420p"  # H.264 High 4:2:0: what every browser's decoder takes (4:4:4 is not)
EXACT_SUFFIX = ".exact.mkv"
_TAG = "vlm_teacher_mp4_sha256"


def exact_copy_path(path: str | os.PathLike) -> Path:
    """Where ``write_video(path, ..., exact=True)`` puts the lossless copy of ``path``."""
    path = Path(path)
    return path.with_name(path.stem + EXACT_SUFFIX)


def write_video(path: str | os.PathLike, video: np.ndarray, fps: int = DEFAULT_FPS, *, exact: bool = False) -> Path:
    """Write an mp4 atomically: H.264 yuv420p, which browsers play (an odd width or height
    is padded by repeating the last column or row).

    yuv420p keeps colour at half resolution, so where a verifier will read the file
    again, ``exact=True`` also writes the frames losslessly (FFV1, RGB) to
    :func:`exact_copy_path`, tagged with the mp4's hash: :func:`read_video` returns those
    pixels for this mp4, so a verdict from the file is the verdict on what was scored.
    Without ``exact`` an old copy beside ``path`` is removed."""
    import imageio.v3 as iio

    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8, got {video.shape} {video.dtype}")
    path = Path(path)
    copy = exact_copy_path(path)
    copy.unlink(missing_ok=True)
    _, h, w, _ = video.shape
    even = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, even, fps=fps, codec="libx264", plugin="pyav", out_pixel_format=BROWSER_PIXEL_FORMAT)
    if exact:
        _write_lossless(copy, video, fps, _sha256(path))
    return path


def _write_lossless(path: Path, video: np.ndarray, fps: int, mp4_hash: str) -> None:
    import av

    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="matroska") as container:
            container.metadata[_TAG] = mp4_hash
            stream = container.add_stream("ffv1", rate=fps)
            stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "bgr0"
            for frame in video:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _exact_copy_of(path: Path) -> Path | None:
    """The lossless copy written with this very mp4, or None (none there, or the mp4 changed since)."""
    import av

    copy = exact_copy_path(path)
    if path.suffix != ".mp4" or not copy.is_file():
        return None
    try:
        with av.open(str(copy)) as container:
            tag = {k.lower(): v for k, v in container.metadata.items()}.get(_TAG)
    except av.error.FFmpegError:
        return None
    return copy if tag == _sha256(path) else None


def read_video(path: str | os.PathLike) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a video file; for an mp4 written with ``exact=True``,
    the exact frames from its lossless copy."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise UserError(f"video not found: {path}")
    source = _exact_copy_of(path) or path
    try:
        frames = iio.imread(source, plugin="pyav")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user problem
        raise UserError(f"cannot read video {source}: {exc.__class__.__name__}: {exc}. Is it a valid mp4?") from None
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    return frames[..., :3].astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Any PIL-readable image -> (H, W, 3) uint8 RGB; clear errors for missing/corrupt files."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}. Give a PNG or JPEG file.") from None


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format="PNG")
    return path
