"""The differentiable pixel path against the real transformers processors.

Qwen2_5_VLProcessor and the torchvision image processor cannot run here (no
torchvision); the PIL image processor (Qwen2VLImageProcessorPil, used by both
Qwen2.5-VL and Qwen3-VL) can, and the Qwen3-VL video processor's own ``patchify``
runs on torch tensors. Both are compared with this package's path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm_teacher.teacher import pixels
from vlm_teacher.teacher.pixels import DEFAULT_SPECS, PixelSpec

pil_mod = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")


def _pil_processor(spec: PixelSpec):
    return pil_mod.Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size, temporal_patch_size=spec.temporal_patch_size, merge_size=spec.merge_size,
        image_mean=list(spec.image_mean), image_std=list(spec.image_std),
        min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)


SPECS = {
    "qwen2_5_vl": DEFAULT_SPECS["qwen2_5_vl"],
    "qwen3_vl": DEFAULT_SPECS["qwen3_vl"].with_pixels(min_pixels=32 * 32),  # the released min would upscale
}


@pytest.mark.parametrize("arch", list(SPECS))
def test_image_of_valid_size_equals_the_real_processor(arch):
    spec = SPECS[arch]
    rng = np.random.default_rng(1)
    h, w = 2 * spec.factor, 3 * spec.factor
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    ref = _pil_processor(spec)(images=[image], return_tensors="pt")
    pv, grid = pixels.image_to_pixel_values(image, spec)
    assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, h // spec.patch_size, w // spec.patch_size]]
    assert pv.shape == ref["pixel_values"].shape
    assert torch.allclose(pv, ref["pixel_values"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", list(SPECS))
def test_downscaled_image_is_within_one_uint8_level(arch):
    """Frames bigger than the pixel budget are shrunk as PIL does (two separable bicubic
    passes, width first, clipped in between); PIL also rounds to uint8 between its passes,
    which a differentiable path does not, hence the one-level tolerance."""
    spec = SPECS[arch].with_pixels(max_pixels=(2 * SPECS[arch].factor) * (3 * SPECS[arch].factor))
    rng = np.random.default_rng(2)
    image = np.kron(rng.integers(0, 256, size=(7, 10, 3)), np.ones((13, 13, 1))).astype(np.uint8)  # 91 x 130 cells
    ref = _pil_processor(spec)(images=[image], return_tensors="pt")
    pv, grid = pixels.image_to_pixel_values(image, spec)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    _, gh, gw = grid[0].tolist()
    assert gh * spec.patch_size < 91 and gw * spec.patch_size < 130  # both sides shrink
    std = torch.tensor(spec.image_std).repeat_interleave(pv.shape[1] // 3)
    levels = (pv - ref["pixel_values"]).abs() * std * 255
    assert levels.mean() < 0.25 and levels.max() < 1.05


def test_smart_resize_equals_transformers():
    for h, w in [(64, 64), (70, 100), (33, 200), (720, 1280), (704, 1280), (20, 3000), (1080, 1920)]:
        for factor, lo, hi in [(28, 56 * 56, 28 * 28 * 1280), (32, 65536, 16777216), (32, 1024, 65536)]:
            assert pixels.smart_resize(h, w, factor, lo, hi) == pil_mod.smart_resize(h, w, factor, lo, hi)


def test_video_patch_order_equals_the_video_processors_patchify():
    vp_mod = pytest.importorskip("transformers.models.qwen3_vl.video_processing_qwen3_vl")
    spec = SPECS["qwen3_vl"]
    torch.manual_seed(0)
    frames = torch.rand(5, 3, 64, 96)  # odd K: the last frame is repeated to fill the temporal patch
    ref, gt, gh, gw = vp_mod.Qwen3VLVideoProcessor().patchify(
        pixels.normalize_frames(frames, spec)[None], patch_size=spec.patch_size, merge_size=spec.merge_size,
        temporal_patch_size=spec.temporal_patch_size)
    pv, grid = pixels.frames_to_pixel_values(frames, spec)
    assert grid.tolist() == [[gt, gh, gw]] == [[3, 4, 6]]
    assert torch.equal(pv, ref[0])


def test_video_patch_order_against_an_explicit_loop():
    """Independent of transformers: row (t, bh, bw, mh, mw), column (c, tp, ph, pw)."""
    spec = PixelSpec(4, 2, 2, (0.0,) * 3, (1.0,) * 3, 16, 10**6)
    torch.manual_seed(0)
    frames = torch.rand(3, 3, 8, 16)
    pv, grid = pixels.frames_to_pixel_values(frames, spec)
    padded = torch.cat([frames, frames[-1:]])
    gt, gh, gw = grid[0].tolist()
    row = 0
    for t in range(gt):
        for bh in range(gh // 2):
            for bw in range(gw // 2):
                for mh in range(2):
                    for mw in range(2):
                        y, x = (bh * 2 + mh) * 4, (bw * 2 + mw) * 4
                        patch = padded[2 * t:2 * t + 2, :, y:y + 4, x:x + 4]  # (tp, c, ph, pw)
                        assert torch.equal(pv[row], patch.permute(1, 0, 2, 3).reshape(-1))
                        row += 1
    assert row == pv.shape[0]


def test_one_frame_video_equals_the_image_layout():
    spec = SPECS["qwen2_5_vl"]
    image = np.random.default_rng(3).integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
    ref = _pil_processor(spec)(images=[image], return_tensors="pt")["pixel_values"]
    frames = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    pv, grid = pixels.frames_to_pixel_values(frames, spec)
    assert grid.tolist() == [[1, 4, 6]]
    assert torch.allclose(pv, ref, atol=1e-6, rtol=0)


def test_path_is_differentiable_including_resize():
    spec = SPECS["qwen2_5_vl"]
    frames = torch.rand(4, 3, 50, 90, requires_grad=True)
    pv, grid = pixels.frames_to_pixel_values(frames, spec)
    assert grid.tolist() == [[2, 4, 6]]  # 50x90 -> 56x84
    pv.square().sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0


def test_max_pixels_bounds_each_frame():
    spec = SPECS["qwen3_vl"].with_pixels(max_pixels=64 * 64)
    pv, grid = pixels.frames_to_pixel_values(torch.rand(2, 3, 360, 640), spec)
    _, gh, gw = grid[0].tolist()
    assert gh * gw * spec.patch_size ** 2 <= 64 * 64


def test_bad_frames_are_rejected():
    spec = SPECS["qwen2_5_vl"]
    with pytest.raises(ValueError, match="K, 3, H, W"):
        pixels.frames_to_pixel_values(torch.rand(3, 64, 64), spec)
    with pytest.raises(ValueError, match="float"):
        pixels.frames_to_pixel_values(torch.zeros(2, 3, 56, 56, dtype=torch.uint8), spec)
    with pytest.raises(ValueError, match="uint8"):
        pixels.image_to_pixel_values(np.zeros((56, 56, 3), dtype=np.float32), spec)


def test_spec_from_configs_precedence():
    model_cfg = {"vision_config": {"patch_size": 16, "temporal_patch_size": 2, "spatial_merge_size": 2}}
    spec = pixels.spec_from_configs("qwen3_vl", model_cfg, [])
    assert spec == DEFAULT_SPECS["qwen3_vl"]
    spec = pixels.spec_from_configs("qwen2_5_vl", {"vision_config": {"patch_size": 14}}, [
        {"size": {"shortest_edge": 100, "longest_edge": 5000}, "image_mean": [0.1, 0.2, 0.3]},
        {"min_pixels": 7, "image_std": 0.5},
    ])
    assert (spec.min_pixels, spec.max_pixels) == (100, 5000)
    assert spec.image_mean == (0.1, 0.2, 0.3) and spec.image_std == (0.5, 0.5, 0.5)
    legacy = pixels.spec_from_configs("qwen2_5_vl", {}, [{"min_pixels": 10, "max_pixels": 20,
                                                           "size": {"shortest_edge": 1, "longest_edge": 2}}])
    assert (legacy.min_pixels, legacy.max_pixels) == (10, 20)
