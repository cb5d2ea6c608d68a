"""WanReasoner's sampler and decoder against diffusers itself (independent oracles).

The sampler is compared with diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline``
run on the same noise (``latents=``) with ``output_type="latent"``, stepped by
diffusers' ``FlowMatchEulerDiscreteScheduler``; the decoder with ``vae.decode`` of
the latent denormalised by hand from the VAE's config.json. No LoRA is attached.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vlm_teacher.reasoner import load_reasoner
from vlm_teacher.testing.tiny_wan import build_tiny_wan_pipeline

PROMPT = "Move the red agent to the green target."
SIZE = dict(height=64, width=64, num_frames=9)


class UniformSigmaEuler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler scheduler on the uniform levels 1, 1 - 1/n, ... that
    step-distilled Wan models are sampled at (the pipelines call ``set_timesteps(n)``
    only); the scheduler's own ``shift`` bends them as it always does."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        n = int(num_inference_steps)
        super().set_timesteps(sigmas=[1.0 - i / n for i in range(n)], device=device)


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> Path:
    # latents_mean/std far from 0/1, so a missing or inverted (de)normalisation is large
    rng = np.random.RandomState(3)
    return build_tiny_wan_pipeline(tmp_path_factory.mktemp("oracle") / "wan", seed=1, num_layers=2,
                                   latents_mean=rng.uniform(-1.0, 1.0, 48).tolist(),
                                   latents_std=rng.uniform(0.3, 3.0, 48).tolist())


@pytest.fixture(scope="module")
def reasoner(wan):
    return load_reasoner(wan)


def _pipeline(wan, cls_name: str, flow_shift: float):
    import diffusers

    base = diffusers.WanPipeline.from_pretrained(wan, use_safetensors=True)
    sched = UniformSigmaEuler(shift=flow_shift, num_train_timesteps=1000)
    if cls_name == "WanPipeline":
        base.scheduler = sched
        return base
    return diffusers.WanImageToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                             scheduler=sched, transformer=base.transformer, expand_timesteps=True)


def _image(seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(64, 64, 3), dtype=np.uint8)


def test_oracle_scheduler_sigmas_are_ours(reasoner):
    sched = UniformSigmaEuler(shift=reasoner.flow_shift, num_train_timesteps=1000)
    sched.set_timesteps(4)
    cond = reasoner.prepare(PROMPT, None, seed=0, **SIZE)
    assert reasoner.flow_shift == 5.0
    assert cond.extra["sigmas"] == pytest.approx(sched.sigmas.tolist(), abs=1e-6)


@pytest.mark.parametrize("steps", [4, 1])
def test_text_to_video_sampler_equals_wan_pipeline(wan, reasoner, steps):
    """sample() (steps=4) and predict_x0("first") (one call at sigma 1) are diffusers' WanPipeline
    on the same noise."""
    cond = reasoner.prepare(PROMPT, None, seed=21, steps=steps, **SIZE)
    pipe = _pipeline(wan, "WanPipeline", reasoner.flow_shift)
    with torch.no_grad():
        theirs = pipe(prompt=PROMPT, num_inference_steps=steps, guidance_scale=1.0, latents=cond.noise.clone(),
                      output_type="latent", max_sequence_length=32, **SIZE).frames
        ours = reasoner.sample(cond) if steps > 1 else reasoner.predict_x0(cond, "first")
    assert theirs.shape == ours.shape == (1, 48, 3, 4, 4)
    assert theirs.abs().mean() > 0.1  # a real latent, not zeros
    torch.testing.assert_close(ours, theirs.float(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [4, 1])
def test_first_frame_sampler_equals_wan_ti2v_pipeline(wan, reasoner, steps):
    """The TI2V path (first frame pinned in latent frame 0, its tokens at timestep 0) is diffusers'
    WanImageToVideoPipeline(expand_timesteps=True) on the same noise."""
    from PIL import Image

    img = _image(4)
    cond = reasoner.prepare(PROMPT, img, seed=22, steps=steps, **SIZE)
    pipe = _pipeline(wan, "WanImageToVideoPipeline", reasoner.flow_shift)
    # the I2V pipeline's own prompt cleaning needs ftfy (not installed): WanPipeline encodes the prompt
    embeds, _ = _pipeline(wan, "WanPipeline", reasoner.flow_shift).encode_prompt(
        PROMPT, do_classifier_free_guidance=False, max_sequence_length=32)
    with torch.no_grad():
        theirs = pipe(image=Image.fromarray(img), prompt_embeds=embeds, num_inference_steps=steps, guidance_scale=1.0,
                      latents=cond.noise.clone(), output_type="latent", max_sequence_length=32, **SIZE).frames
        ours = reasoner.sample(cond) if steps > 1 else reasoner.predict_x0(cond, "first")
    torch.testing.assert_close(ours, theirs.float(), atol=2e-5, rtol=1e-5)


def _vae_stats(wan: Path) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = json.loads((wan / "vae" / "config.json").read_text())
    mean = torch.tensor(cfg["latents_mean"], dtype=torch.float32).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg["latents_std"], dtype=torch.float32).view(1, -1, 1, 1, 1)
    assert (std - 1).abs().max() > 0.5 and mean.abs().max() > 0.5  # the fixture's stats matter
    return mean, std


def test_decode_and_preview_equal_vae_decode_of_the_denormalised_latent(wan, reasoner):
    mean, std = _vae_stats(wan)
    z = torch.randn((1, 48, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        raw = reasoner.vae.decode(z * std + mean, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
    expected = ((raw[0].permute(1, 0, 2, 3) + 1.0) / 2.0).clamp(0.0, 1.0)
    decoded = reasoner.decode(z)
    assert decoded.shape == expected.shape == (9, 3, 64, 64)
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        frames = reasoner.preview(z, [0, 3, 8])
    torch.testing.assert_close(frames.clamp(0, 1), expected[[0, 3, 8]], atol=1e-5, rtol=1e-5)
    # the stats are not a no-op here: decoding the normalised latent as is gives another video
    with torch.no_grad():
        wrong = ((reasoner.vae.decode(z, return_dict=False)[0][0].permute(1, 0, 2, 3) + 1) / 2).clamp(0, 1)
    assert (wrong - expected).abs().max() > 0.05


def test_first_frame_latent_equals_normalised_vae_encoding(wan, reasoner):
    mean, std = _vae_stats(wan)
    img = _image(6)
    pixels = torch.from_numpy(img).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1.0
    with torch.no_grad():
        expected = (reasoner.vae.encode(pixels).latent_dist.mode() - mean) / std
    torch.testing.assert_close(reasoner.encode_image(img, 64, 64), expected, atol=1e-5, rtol=1e-5)


def test_generate_equals_wan_pipeline_video(wan, reasoner):
    """The whole chain (sampler + denormalise + VAE decode) against WanPipeline's video output."""
    cond = reasoner.prepare(PROMPT, None, seed=23, **SIZE)
    pipe = _pipeline(wan, "WanPipeline", reasoner.flow_shift)
    with torch.no_grad():
        theirs = pipe(prompt=PROMPT, num_inference_steps=4, guidance_scale=1.0, latents=cond.noise.clone(),
                      output_type="pt", max_sequence_length=32, **SIZE).frames[0]  # (F, 3, H, W) in [0, 1]
    ours = reasoner.generate(cond)
    assert theirs.shape == ours.shape == (9, 3, 64, 64) and theirs.std() > 0.01
    torch.testing.assert_close(ours, theirs.float(), atol=1e-4, rtol=1e-4)
