"""The differentiable pixel path of InternVL (InternVL3): fixed-size square tiles.

InternVL's vision tower sees ``tile x tile`` pixel squares (448 for InternVL3) and
gives ``tokens_per_tile`` features for each (256: 32 x 32 patches of 14, pixel
shuffle 0.5). Its processors, redone in torch with their arithmetic so the teacher
can backpropagate into the frames:

- **video frames** (``InternVLVideoProcessor``): every frame is resized to
  ``tile x tile`` (aspect ratio not kept), rescaled and normalised: ONE tile per
  frame, no thumbnail. That processor needs torchvision (not installed here); the
  image processor with ``crop_to_patches=False`` runs the same steps through PIL,
  so the tests compare with that one.
- **images** (the first frame shown for query synthesis; ``InternVLProcessor`` sets
  ``crop_to_patches=True``): the (columns, rows) grid of ``min_tiles..max_tiles``
  tiles closest to the image's aspect ratio (transformers' own
  ``get_optimal_tiled_canvas``), the image resized to that canvas and cut row by
  row, then a thumbnail (the whole image at ``tile x tile``) when there is more
  than one tile.

Resizing is ``pixels.resize_to`` (PIL's bicubic, two passes); normalisation uses the
ImageNet mean / std of the released checkpoints. Measured (tests/test_teacher_internvl.py):
identical to the PIL image processor where no resize happens, within one uint8 level
where it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from .pixels import _check_frames, image_tensor, normalize_frames, resize_to

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TileSpec:
    """Vision preprocessing settings of one InternVL checkpoint."""

    tile: int
    tokens_per_tile: int
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    min_tiles: int = 1
    max_tiles: int = 12

    def __post_init__(self) -> None:
        for name in ("tile", "tokens_per_tile", "min_tiles", "max_tiles"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_tiles > self.max_tiles:
            raise ValueError(f"min_tiles {self.min_tiles} > max_tiles {self.max_tiles}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")


def spec_from_configs(model_config: Mapping[str, Any], processor_configs: list[Mapping[str, Any]]) -> TileSpec:
    """The first processor config that has a key wins (preprocessor, video preprocessor,
    processor), then the model's config (tile = the vision tower's ``image_size``,
    tokens per tile = its ``image_seq_length``), then InternVL3's defaults."""
    vision = dict(model_config.get("vision_config") or {})
    image_size = vision.get("image_size", 448)
    tile_default = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)

    def pick(key: str, default: Any) -> Any:
        for cfg in processor_configs:
            if cfg.get(key) is not None:
                return cfg[key]
        return default

    size = pick("size", {"height": tile_default, "width": tile_default})
    if not isinstance(size, Mapping) or int(size.get("height", 0)) != int(size.get("width", -1)):
        raise ValueError(f"size must be a square {{'height': n, 'width': n}}, got {size!r}")
    return TileSpec(
        tile=int(size["height"]),
        tokens_per_tile=int(pick("image_seq_length", model_config.get("image_seq_length", 256))),
        image_mean=tuple(float(v) for v in pick("image_mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        image_std=tuple(float(v) for v in pick("image_std", IMAGENET_STD)),  # type: ignore[arg-type]
        min_tiles=int(pick("min_patches", 1)),
        max_tiles=int(pick("max_patches", 12)),
    )


def frames_to_tiles(frames: torch.Tensor, spec: TileSpec) -> torch.Tensor:
    """(K, 3, H, W) in [0, 1] -> normalised (K, 3, tile, tile): one tile per frame, as the
    video processor. Differentiable in ``frames``; float32 whatever the input dtype."""
    frames = _check_frames(frames).float()
    return normalize_frames(resize_to(frames, spec.tile, spec.tile), spec)


def image_grid(height: int, width: int, spec: TileSpec) -> tuple[int, int]:
    """(columns, rows) of tiles the image processor cuts an image of this size into."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    return get_optimal_tiled_canvas((int(height), int(width)), (spec.tile, spec.tile), spec.min_tiles,
                                    spec.max_tiles)


def image_to_tiles(image: np.ndarray | torch.Tensor, spec: TileSpec,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """One image (uint8 H x W x 3, or float (3, H, W) in [0, 1]) -> normalised (N, 3, tile, tile):
    the grid's tiles row by row, then the thumbnail when N > 1 (the processor's order)."""
    frame = image_tensor(image, device)[None]
    cols, rows = image_grid(frame.shape[-2], frame.shape[-1], spec)
    t = spec.tile
    canvas = resize_to(frame, rows * t, cols * t)
    # (1, 3, rows*t, cols*t) -> (rows*cols, 3, t, t), row-major like the processor's crop boxes
    tiles = canvas.reshape(3, rows, t, cols, t).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, t, t)
    if rows * cols > 1:
        tiles = torch.cat([tiles, resize_to(frame, t, t)])
    return normalize_frames(tiles, spec)
