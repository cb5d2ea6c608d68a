"""Wan2.1 T2V/I2V and Wan2.2 A14B adapters against diffusers' WanPipeline / WanImageToVideoPipeline,
over tiny random folders (16-channel 8x VAE, 1-layer transformers, 9 frames at 32x32, 4 steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_teacher.errors import UserError
from vlm_teacher.reasoner import load_reasoner
from vlm_teacher.reasoner.wan import WanReasoner
from vlm_teacher.reasoner.wan_a14b import WanA14BReasoner
from vlm_teacher.reasoner.wan21 import Wan21Reasoner
from vlm_teacher.testing.tiny_wan import build_tiny_wan_pipeline

PROMPT = "Move the red agent to the green target."
SIZE = 32
LAYOUTS = {
    "wan21-t2v": dict(),
    # 512 text tokens: diffusers' Wan image cross-attention takes the last 512 context tokens as the text
    "wan21-i2v": dict(image_to_video=True, clip_dim=32, max_sequence_length=512),
    "a14b-t2v": dict(boundary_ratio=0.875),
    "a14b-i2v": dict(boundary_ratio=0.9, image_to_video=True),
}
CLASSES = {"wan21-t2v": Wan21Reasoner, "wan21-i2v": Wan21Reasoner, "a14b-t2v": WanA14BReasoner,
           "a14b-i2v": WanA14BReasoner}


def _image(seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    rng = np.random.RandomState(5)
    stats = dict(latents_mean=rng.uniform(-0.5, 0.5, 16).tolist(), latents_std=rng.uniform(0.5, 2.0, 16).tolist())
    root = tmp_path_factory.mktemp("wan_variants")
    return {name: build_tiny_wan_pipeline(root / name, flavour="2.1", scheduler="euler", height=SIZE, width=SIZE,
                                          steps=4, **stats, **kw) for name, kw in LAYOUTS.items()}


def _pipeline_run(folder, reasoner, cond, image, output_type):
    """diffusers' own pipeline on the same noise, text states, steps and sigmas (guidance 1)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    cls = WanImageToVideoPipeline if image is not None else WanPipeline
    pipe = cls.from_pretrained(folder)
    steps = len(cond.extra["sigmas"]) - 1
    set_timesteps = pipe.scheduler.set_timesteps
    # WanPipeline takes no sigmas argument: hand its scheduler the uniform levels the distilled
    # samplers use (FlowMatchEuler then applies its own shift, as it does for any sigmas)
    pipe.scheduler.set_timesteps = lambda n, device=None: set_timesteps(
        sigmas=[1.0 - i / steps for i in range(steps)], device=device)
    extra = {"image": Image.fromarray(image)} if image is not None else {}
    # prompt_embeds: the pipeline's own text path needs ftfy (not installed); test_reasoner_wan checks
    # that encode_text equals it
    out = pipe(prompt_embeds=cond.extra["prompt_embeds"], height=cond.height, width=cond.width,
               num_frames=cond.num_frames, num_inference_steps=steps, guidance_scale=1.0,
               latents=cond.noise.clone(), output_type=output_type, **extra).frames
    assert torch.allclose(pipe.scheduler.sigmas.double(), torch.tensor(cond.extra["sigmas"], dtype=torch.float64),
                          atol=1e-6)
    return out


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_sampler_and_decode_equal_the_diffusers_pipeline(folders, name):
    r = load_reasoner(folders[name])
    assert type(r) is CLASSES[name]
    image = _image() if "i2v" in name else None
    cond = r.prepare(PROMPT, image, seed=3)
    latent = r.sample(cond)
    ref = _pipeline_run(folders[name], r, cond, image, "latent")
    assert latent.shape == ref.shape == (1, 16, 3, 4, 4)
    assert torch.allclose(latent, ref, atol=1e-5), (latent - ref).abs().max()
    video = r.decode(latent).permute(0, 2, 3, 1).numpy()
    ref_video = _pipeline_run(folders[name], r, cond, image, "np")[0]
    assert video.shape == ref_video.shape == (9, SIZE, SIZE, 3)
    assert np.abs(video - ref_video).max() < 1e-5
    # the check can fail: another seed's noise gives another video
    other = r.sample(r.prepare(PROMPT, image, seed=4))
    assert not torch.allclose(other, ref, atol=1e-3)


@pytest.mark.parametrize("name", ["wan21-i2v", "a14b-i2v", "a14b-t2v"])
def test_preview_and_gradient_reach_only_the_lora(folders, name):
    r = load_reasoner(folders[name])
    image = _image() if "i2v" in name else None
    cond = r.prepare(PROMPT, image, seed=1)
    params = r.add_lora(rank=2, seed=0)
    with torch.no_grad():  # a non-zero LoRA, so lora_A gets gradients too
        for p in params:
            if "lora_B" in next(n for n, q in r.transformer.named_parameters() if q is p):
                p.normal_(0, 0.05)
    x0 = r.predict_x0(cond)
    frames = r.preview(x0, [0, 4, 8])
    assert frames.shape == (3, 3, SIZE, SIZE)
    assert torch.allclose(frames.detach(), r.decode(x0.detach())[[0, 4, 8]], atol=1e-5)
    if name == "wan21-i2v":  # WanReasoner's per-frame checkpointed decode, once
        r.vae_checkpointing = True
        again = r.preview(x0, [0, 4, 8])
        assert torch.allclose(again, frames, atol=1e-5)
    (frames - 0.5).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert not any(t.grad is not None for t in r.base_state_dict().values())
    assert all(not p.requires_grad for n, p in r.transformer.named_parameters() if "lora_" not in n)


def test_a14b_lora_sits_on_the_high_noise_expert_and_the_video_uses_both(folders):
    r = load_reasoner(folders["a14b-t2v"])
    cond = r.prepare(PROMPT, None, seed=2)
    # 4 steps, shift 5: sigmas 1, .9375, .833, .625 -> timesteps 1000, 937.5 >= 875 > 833, 625
    assert r.experts(cond) == ["high", "high", "low", "low"]
    r.add_lora(rank=2, seed=0)
    assert any("lora_" in n for n, _ in r.transformer.named_parameters())
    assert not any("lora_" in n for n, _ in r.transformer_2.named_parameters())
    with pytest.raises(UserError, match="low-noise expert"):
        r.predict_x0(cond, mode="last")
    r.remove_lora()
    both = r.sample(cond)
    r.boundary_ratio = 0.0  # the high-noise expert alone
    assert not torch.allclose(r.sample(cond), both, atol=1e-3)
    assert any(k.startswith("transformer_2.") for k in r.base_state_dict())


def test_wan21_i2v_uses_clip_states_and_the_concat_condition(folders):
    r = load_reasoner(folders["wan21-i2v"])
    cond = r.prepare(PROMPT, _image(0), seed=0)
    assert cond.extra["condition"].shape == (1, 20, 3, 4, 4)
    assert torch.equal(cond.extra["condition"][:, :4, 0], torch.ones(1, 4, 4, 4))
    assert not cond.extra["condition"][:, :4, 1:].any()
    assert cond.extra["image_embeds"].shape == (1, 17, 32)  # CLIP: (32 / 8)^2 patches + the class token
    assert cond.extra["prompt_embeds"].shape == (1, 512, 32)
    # another first frame changes the video, and so do the CLIP states alone
    video = r.sample(cond)
    assert not torch.allclose(video, r.sample(r.prepare(PROMPT, _image(1), seed=0)), atol=1e-3)
    cond.extra["image_embeds"] = torch.zeros_like(cond.extra["image_embeds"])
    assert not torch.allclose(video, r.sample(cond), atol=1e-4)


def test_i2v_and_t2v_folders_refuse_the_wrong_input(folders):
    with pytest.raises(UserError, match="image-to-video checkpoint: give a first frame"):
        load_reasoner(folders["wan21-i2v"]).prepare(PROMPT, None, seed=0)
    for name in ("a14b-t2v", "wan21-t2v"):
        with pytest.raises(UserError, match="text-to-video checkpoint"):
            load_reasoner(folders[name]).prepare(PROMPT, _image(), seed=0)


def test_broken_two_expert_folder_is_a_user_error(folders, tmp_path):
    import json
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(folders["a14b-t2v"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["boundary_ratio"] = None
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="boundary_ratio"):
        load_reasoner(folder)
    # the plain Wan adapter still refuses a two-expert folder with a clear message
    with pytest.raises(UserError, match="two-expert"):
        WanReasoner.from_pretrained(folders["a14b-t2v"])
