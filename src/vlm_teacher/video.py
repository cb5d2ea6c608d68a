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


def write_video(path: str | os.PathLike, video: np.ndarray, fps: int = DEFAULT_FPS) -> Path:
    """Write an mp4 atomically. Lossless-ish (crf 0 would not play everywhere; quality 10)."""
    import imageio.v3 as iio

    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8, got {video.shape} {video.dtype}")
    path = Path(path)
    with atomic_path(path) as tmp:
        # yuv444 keeps the colour of small cells exact enough for the pixel verifier
        iio.imwrite(tmp, video, fps=fps, codec="libx264", plugin="pyav",
                    out_pixel_format="yuv444p")
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise UserError(f"video not found: {path}")
    try:
        frames = iio.imread(path, plugin="pyav")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user problem
        raise UserError(f"cannot read video {path}: {exc.__class__.__name__}: {exc}. Is it a valid mp4?") from None
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
