"""The differentiable pixel path of Qwen2.5-VL / Qwen3-VL.

The transformers processors work on uint8 images through PIL or torchvision and
cut every gradient. The teacher must backpropagate from log P("Yes") into the
frames a video model predicted, so this module re-implements the processor's
steps in torch, with the processor's exact arithmetic and patch order:

1. resize each frame to multiples of ``patch_size * merge_size``, with the
   processor's ``smart_resize`` rounding inside ``[min_pixels, max_pixels]``
   (bicubic with antialias, width then height, clipped to [0, 1] after each pass
   as PIL clips to the uint8 range);
2. normalise with the model's mean / std;
3. pad the frames to a multiple of ``temporal_patch_size`` by repeating the last
   frame (what the video processor does) and flatten into patches in the order
   (t, h-block, w-block, h-in-block, w-in-block) x (C, t-in-patch, ph, pw).

``K`` frames form ONE video input of grid (K / temporal_patch, H / patch, W / patch).
An image is a one-frame video (the processor repeats it over the temporal patch).
Measured (tests/test_teacher_pixels.py): identical to the real processor's output
on inputs of valid size (no resize); within one uint8 level when shrinking (PIL
also rounds to uint8 between its passes). Where one side grows and the other
shrinks, recent Pillow may run the vertical pass first and hard edges can then
differ by a few levels (irrelevant to a VLM's judgement).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PixelSpec:
    """Vision preprocessing settings of one Qwen-VL checkpoint.

    ``min_pixels`` / ``max_pixels`` bound the area of EACH frame after resizing
    (the image processor's meaning). Frames of a valid size inside the bounds are
    not resized at all, which keeps the path exact and cheap.
    """

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    min_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")

    @property
    def factor(self) -> int:
        """Frame sides are multiples of this (one merged token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size

    def with_pixels(self, min_pixels: int | None = None, max_pixels: int | None = None) -> "PixelSpec":
        """Override the per-frame budget. Lowering only ``max_pixels`` below the current
        ``min_pixels`` lowers ``min_pixels`` with it (the user asked for smaller frames)."""
        new_max = self.max_pixels if max_pixels is None else int(max_pixels)
        new_min = self.min_pixels if min_pixels is None else int(min_pixels)
        if min_pixels is None:
            new_min = min(new_min, new_max)
        return replace(self, min_pixels=new_min, max_pixels=new_max)

    def to_dict(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
                "merge_size": self.merge_size, "image_mean": list(self.image_mean),
                "image_std": list(self.image_std), "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}


#: The known defaults when a folder has no preprocessor config (values of the released checkpoints).
DEFAULT_SPECS: dict[str, PixelSpec] = {
    "qwen2_5_vl": PixelSpec(14, 2, 2, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 56 * 56, 28 * 28 * 1280),
    "qwen3_vl": PixelSpec(16, 2, 2, HALF_MEAN_STD, HALF_MEAN_STD, 65536, 16777216),
    "qwen3_vl_moe": PixelSpec(16, 2, 2, HALF_MEAN_STD, HALF_MEAN_STD, 65536, 16777216),
}


def spec_from_configs(arch: str, model_config: Mapping[str, Any],
                      processor_configs: list[Mapping[str, Any]]) -> PixelSpec:
    """Merge the settings: the first processor config that has a key wins, then the
    model's ``vision_config`` (patch / temporal patch / merge), then the known defaults."""
    base = DEFAULT_SPECS[arch]
    vision = dict(model_config.get("vision_config") or {})

    def pick(*keys: str, default: Any) -> Any:
        for cfg in processor_configs:
            for key in keys:
                if cfg.get(key) is not None:
                    return cfg[key]
        return default

    def size_pick(edge: str, legacy: str, default: int) -> int:
        # processors accept both the v5 "size" dict and the legacy min_pixels/max_pixels keys;
        # the legacy keys override "size" (as in the processor's __init__)
        for cfg in processor_configs:
            if cfg.get(legacy) is not None:
                return int(cfg[legacy])
            size = cfg.get("size")
            if isinstance(size, Mapping) and size.get(edge) is not None:
                return int(size[edge])
        return default

    def triple(value: Any) -> tuple[float, float, float]:
        if isinstance(value, (int, float)):
            return (float(value),) * 3
        return tuple(float(v) for v in value)  # type: ignore[return-value]

    return PixelSpec(
        patch_size=int(pick("patch_size", default=vision.get("patch_size", base.patch_size))),
        temporal_patch_size=int(pick("temporal_patch_size",
                                     default=vision.get("temporal_patch_size", base.temporal_patch_size))),
        merge_size=int(pick("merge_size", default=vision.get("spatial_merge_size", base.merge_size))),
        image_mean=triple(pick("image_mean", default=base.image_mean)),
        image_std=triple(pick("image_std", default=base.image_std)),
        min_pixels=size_pick("shortest_edge", "min_pixels", base.min_pixels),
        max_pixels=size_pick("longest_edge", "max_pixels", base.max_pixels),
    )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The processor's target size: sides rounded to multiples of ``factor``, area kept
    within [min_pixels, max_pixels], aspect ratio kept as closely as possible."""
    if min(height, width) <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _check_frames(frames: torch.Tensor) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch tensor (K, 3, H, W), got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must have shape (K, 3, H, W) with K >= 1, got {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise ValueError(f"frames must be float in [0, 1], got dtype {frames.dtype}")
    return frames


def resize_frames(frames: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
    """(K, 3, H, W) in [0, 1] -> (K, 3, H', W') with H', W' from ``smart_resize``.
    No-op (same tensor) when the size is already valid."""
    frames = _check_frames(frames)
    height, width = frames.shape[-2:]
    return resize_to(frames, *smart_resize(height, width, spec.factor, spec.min_pixels, spec.max_pixels))


def resize_to(frames: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """(K, 3, H, W) in [0, 1] -> (K, 3, new_h, new_w) the way PIL's bicubic resize does it
    (also InternVL's tiles). No-op (same tensor) when the size is already that."""
    height, width = frames.shape[-2:]
    if (new_h, new_w) == (height, width):
        return frames
    # Two separable passes, width first, each clipped to [0, 1]: PIL's order and its clipping
    # of bicubic overshoot between passes (one 2-D pass differs by several levels at hard edges).
    out = frames.float()
    if new_w != width:
        out = F.interpolate(out, size=(height, new_w), mode="bicubic", align_corners=False, antialias=True)
        out = out.clamp(0.0, 1.0)
    if new_h != height:
        out = F.interpolate(out, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        out = out.clamp(0.0, 1.0)
    return out


@functools.lru_cache(maxsize=64)
def _device_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor copied to ``device`` once: a host-to-device copy on every
    call would synchronise the host with the GPU inside the test-time loop. Callers
    must not modify it in place."""
    return torch.tensor(values, dtype=dtype, device=device)


def normalize_frames(frames: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
    mean = _device_constant(tuple(spec.image_mean), torch.float32, frames.device).view(1, 3, 1, 1)
    std = _device_constant(tuple(spec.image_std), torch.float32, frames.device).view(1, 3, 1, 1)
    return (frames.float() - mean) / std


def patchify(frames: torch.Tensor, spec: PixelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (K, 3, H, W) -> (pixel_values (N, 3 * tp * p * p), grid_thw (1, 3) long).

    H and W must be multiples of ``spec.factor``. The order is the processor's:
    rows ordered by (t, h-block, w-block, h-in-block, w-in-block), each row
    flattened as (channel, t-in-patch, patch row, patch column).
    """
    k, c, h, w = frames.shape
    p, m, tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    if h % spec.factor or w % spec.factor:
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch*merge = {spec.factor}")
    if pad := -k % tp:  # repeat the last frame, as the video processor does
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)], dim=0)
        k += pad
    gt, gh, gw = k // tp, h // p, w // p
    x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # (gt, gh/m, gw/m, m_h, m_w, c, tp, p_h, p_w)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(gt * gh * gw, c * tp * p * p)
    grid_thw = _device_constant(((gt, gh, gw),), torch.long, frames.device)
    return pixel_values, grid_thw


def frames_to_pixel_values(frames: torch.Tensor, spec: PixelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole path for K frames forming one video: resize -> normalise -> patchify.
    Differentiable in ``frames``; computed in float32 whatever the input dtype."""
    frames = _check_frames(frames).float()
    return patchify(normalize_frames(resize_frames(frames, spec), spec), spec)


def image_to_pixel_values(image: np.ndarray | torch.Tensor, spec: PixelSpec,
                          device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (uint8 H x W x 3, or float (3, H, W) in [0, 1]) -> (pixel_values, grid_thw)
    with grid_t = 1, the frame repeated over the temporal patch (the image processor's layout)."""
    return frames_to_pixel_values(image_tensor(image, device)[None], spec)


def image_tensor(image: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """One image (uint8 H x W x 3, or float (3, H, W) in [0, 1]) as float (3, H, W) in [0, 1] on ``device``."""
    if isinstance(image, np.ndarray):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image must be H x W x 3 uint8 RGB, got shape {arr.shape} dtype {arr.dtype}")
        tensor = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div(255.0)
    else:
        tensor = image.float()
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(tensor.shape)}")
    return tensor if device is None else tensor.to(device)


def num_merged_tokens(grid_thw: torch.Tensor, spec: PixelSpec) -> int:
    """How many placeholder tokens the language model sees for one grid."""
    t, h, w = (int(v) for v in grid_thw.reshape(-1, 3)[0])
    return t * h * w // (spec.merge_size ** 2)
