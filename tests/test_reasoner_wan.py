"""WanReasoner over tiny random Wan pipeline folders (real diffusers/transformers/peft classes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_teacher.errors import UserError
from vlm_teacher.reasoner.base import Conditioning
from vlm_teacher.reasoner.wan import WanReasoner, shifted_sigmas
from vlm_teacher.testing.tiny_wan import build_tiny_wan_pipeline

PROMPT = "Move the red agent to the green target."


def _image(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def wan22(tmp_path_factory) -> Path:
    # non-trivial latents_mean/std so a missing (de)normalisation shows up
    rng = np.random.RandomState(7)
    return build_tiny_wan_pipeline(tmp_path_factory.mktemp("wan22") / "model", seed=0,
                                   latents_mean=rng.uniform(-0.5, 0.5, 48).tolist(),
                                   latents_std=rng.uniform(0.5, 2.0, 48).tolist())


@pytest.fixture(scope="module")
def wan21(tmp_path_factory) -> Path:
    return build_tiny_wan_pipeline(tmp_path_factory.mktemp("wan21") / "model", flavour="2.1",
                                   scheduler="euler", flow_shift=3.0, height=32, width=32)


@pytest.fixture()
def reasoner(wan22) -> WanReasoner:
    return WanReasoner.from_pretrained(wan22)


# ---------------------------------------------------------------- loading

def test_load_round_trip(wan22, reasoner):
    r = reasoner
    assert type(r.transformer).__name__ == "WanTransformer3DModel"
    assert type(r.vae).__name__ == "AutoencoderKLWan"
    assert type(r.text_encoder).__name__ == "UMT5EncoderModel"
    assert r.z_dim == 48 and r.size_multiple == 32 and r.flow_shift == 5.0
    assert (r.defaults.num_frames, r.defaults.height, r.defaults.width, r.fps) == (9, 64, 64, 8)
    for module in (r.transformer, r.vae, r.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    again = WanReasoner.from_pretrained(wan22).base_state_dict()
    state = r.base_state_dict()
    assert state.keys() == again.keys() and len(state) > 100
    assert all(torch.equal(state[k], again[k]) for k in state)
    from vlm_teacher.reasoner import load_reasoner

    assert isinstance(load_reasoner(wan22), WanReasoner)


def test_folder_also_loads_in_diffusers_wan_pipeline(wan22):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(wan22, use_safetensors=True)
    assert pipe.config.expand_timesteps is True
    out = pipe(prompt=PROMPT, height=64, width=64, num_frames=9, num_inference_steps=2,
               guidance_scale=1.0, output_type="pt", max_sequence_length=32)
    assert out.frames.shape == (1, 9, 3, 64, 64)


def test_text_noise_and_first_frame_latent_match_diffusers(wan22, reasoner):
    """Our encodings equal what diffusers' Wan pipelines compute (TI2V expand_timesteps path)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    r = reasoner
    pipe = WanPipeline.from_pretrained(wan22, use_safetensors=True)
    ours = r.encode_text(PROMPT)
    theirs, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=32)
    assert torch.allclose(ours, theirs, atol=1e-6)

    img = _image(1)
    cond = r.prepare(PROMPT, img, seed=5)
    i2v = WanImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                                  scheduler=pipe.scheduler, transformer=pipe.transformer, expand_timesteps=True)
    pixels = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    latents, condition, mask = i2v.prepare_latents(pixels, 1, 48, 64, 64, 9, torch.float32, torch.device("cpu"),
                                                   torch.Generator().manual_seed(5))
    assert torch.equal(cond.noise, latents)
    assert torch.allclose(cond.extra["first_latent"], condition, atol=1e-5)
    assert mask[0, 0, 0].sum() == 0 and mask[0, 0, 1:].min() == 1


def _break(folder: Path, how: str) -> None:
    if how == "no_index":
        (folder / "model_index.json").unlink()
    elif how == "wrong_class":
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = "StableDiffusionPipeline"
        (folder / "model_index.json").write_text(json.dumps(index))
    elif how == "no_vae":
        shutil.rmtree(folder / "vae")
    elif how == "no_safetensors":
        for f in (folder / "transformer").glob("*.safetensors"):
            f.unlink()
    elif how == "bad_defaults":
        (folder / "vlm_teacher.json").write_text(json.dumps({"num_frame": 9}))
    elif how == "bad_scheduler":
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    elif how == "corrupt_weights":
        for f in (folder / "vae").glob("*.safetensors"):
            f.write_bytes(b"not a safetensors file")


@pytest.mark.parametrize("how, words", [
    ("no_index", "model_index.json"), ("wrong_class", "StableDiffusionPipeline"), ("no_vae", "vae/"),
    ("no_safetensors", "transformer/"), ("bad_defaults", "num_frame"), ("bad_scheduler", "DDIMScheduler"),
    ("corrupt_weights", "VAE"),
])
def test_bad_folders_raise_user_error(wan22, tmp_path, how, words):
    folder = tmp_path / "broken"
    shutil.copytree(wan22, folder)
    _break(folder, how)
    with pytest.raises(UserError) as err:
        WanReasoner.from_pretrained(folder)
    assert str(folder) in str(err.value) and words in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_folder_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        WanReasoner.from_pretrained(tmp_path / "nope")


# ---------------------------------------------------------------- conditioning

def test_sampler_sigmas():
    assert shifted_sigmas(4, 1.0) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert shifted_sigmas(4, 5.0) == pytest.approx([1.0, 0.9375, 5 / 6, 0.625, 0.0])
    with pytest.raises(UserError):
        shifted_sigmas(0, 5.0)


def test_prepare_validates_and_resizes(reasoner):
    r = reasoner
    with pytest.raises(UserError, match="4k\\+1"):
        r.prepare(PROMPT, None, seed=0, num_frames=10)
    with pytest.raises(UserError, match="multiple of 32"):
        r.prepare(PROMPT, None, seed=0, height=48, width=64)
    with pytest.raises(UserError, match="RGB"):
        r.prepare(PROMPT, np.zeros((4, 4, 2), np.uint8), seed=0)
    cond = r.prepare(PROMPT, _image(0, 60, 100), seed=0, height=32, width=96, num_frames=5)
    assert (cond.height, cond.width, cond.num_frames) == (32, 96, 5)
    assert cond.noise.shape == (1, 48, 2, 2, 6) and cond.extra["first_latent"].shape == (1, 48, 1, 2, 6)
    # no explicit size and no size in vlm_teacher.json: the first frame's size, rounded to 32
    r.defaults = type(r.defaults)(num_frames=5, height=None, width=None, max_sequence_length=32)
    cond = r.prepare(PROMPT, _image(0, 70, 90), seed=0)
    assert (cond.height, cond.width) == (64, 96)
    assert r.prepare(PROMPT, None, seed=0).width == 1280  # Wan2.2's native size without a frame


def test_noise_is_the_seeded_cpu_generator(reasoner):
    cond = reasoner.prepare(PROMPT, None, seed=123)
    expected = torch.randn((1, 48, 3, 4, 4), generator=torch.Generator().manual_seed(123))
    assert torch.equal(cond.noise, expected)


# ---------------------------------------------------------------- x0, preview, generate

def test_predict_x0_preview_shapes_and_prefix(reasoner):
    r = reasoner
    cond = r.prepare(PROMPT, _image(2), seed=0)
    assert isinstance(cond, Conditioning) and cond.extra["sigmas"][0] == 1.0
    x0 = r.predict_x0(cond, "first")
    assert x0.shape == (1, 48, 3, 4, 4) and x0.dtype == torch.float32
    frames = r.preview(x0, [0, 4, 8])
    assert frames.shape == (3, 3, 64, 64)
    assert frames.min() >= 0.0 and frames.max() <= 1.0 and frames.std() > 0.01
    full = r.decode(x0.detach())
    assert full.shape == (9, 3, 64, 64)
    assert torch.allclose(frames.detach(), full[[0, 4, 8]], atol=1e-5)
    # frames 0..4 need only latent frames 0 and 1: still the prefix of the full decode
    assert torch.allclose(r.preview(x0, [1, 3]).detach(), full[[1, 3]], atol=1e-5)
    r.vae_checkpointing = True
    assert torch.allclose(r.preview(x0, [0, 4, 8]).detach(), frames.detach(), atol=1e-6)
    with pytest.raises(ValueError):
        r.preview(x0, [9])


def test_first_mode_is_one_call_at_sigma_one(reasoner):
    """x0_hat = eps - v(eps, t=1000), with the first-frame tokens at t=0 and latent frame 0 kept."""
    r = reasoner
    cond = r.prepare(PROMPT, _image(3), seed=1)
    first = cond.extra["first_latent"]
    x_in = torch.cat([first, cond.noise[:, :, 1:]], dim=2)
    t = torch.full((1, 3 * 4), 1000.0)
    t[:, :4] = 0.0  # 2x2 tokens per latent frame
    with torch.no_grad():
        v = r.transformer(hidden_states=x_in, timestep=t, encoder_hidden_states=cond.extra["prompt_embeds"],
                          return_dict=False)[0]
        x0 = r.predict_x0(cond, "first")
    assert torch.allclose(x0[:, :, 1:], (x_in - v)[:, :, 1:], atol=1e-6)
    assert torch.equal(x0[:, :, :1], first)


def test_modes_agree_and_carry_gradients(reasoner):
    r = reasoner
    params = r.add_lora(rank=4, seed=0)
    cond = r.prepare(PROMPT, _image(4), seed=2)
    final = r.sample(cond)
    for mode in ("last", "all"):
        for p in params:
            p.grad = None
        x0 = r.predict_x0(cond, mode)
        assert torch.allclose(x0.detach(), final, atol=1e-5), mode
        x0.pow(2).mean().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), mode
    with pytest.raises(ValueError):
        r.predict_x0(cond, "middle")


def test_gradient_reaches_lora_b_and_no_base_weight(reasoner):
    r = reasoner
    params = r.add_lora(rank=4, seed=0)
    names = {id(p): n for n, p in r.transformer.named_parameters()}
    assert params and all("lora_A" in names[id(p)] or "lora_B" in names[id(p)] for p in params)
    cond = r.prepare(PROMPT, _image(5), seed=3)
    loss = r.preview(r.predict_x0(cond), [0, 4, 8]).mean()
    loss.backward()
    b_grads = [p.grad for p in params if "lora_B" in names[id(p)]]
    assert b_grads and all(g is not None for g in b_grads) and sum(g.abs().sum() for g in b_grads) > 0
    for module in (r.transformer, r.vae, r.text_encoder):
        for n, p in module.named_parameters():
            if "lora_" not in n:
                assert p.grad is None and not p.requires_grad, n
    # the same gradients with both checkpointing switches on
    plain = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    r.vae_checkpointing = True
    r.grad_checkpointing = True
    assert r.grad_checkpointing
    r.preview(r.predict_x0(cond), [0, 4, 8]).mean().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4) for a, p in zip(plain, params))


def test_same_seed_same_video_different_seed_differs(reasoner):
    r = reasoner
    v1 = r.generate(r.prepare(PROMPT, _image(6), seed=11))
    v2 = r.generate(r.prepare(PROMPT, _image(6), seed=11))
    v3 = r.generate(r.prepare(PROMPT, _image(6), seed=12))
    assert v1.shape == (9, 3, 64, 64) and v1.min() >= 0 and v1.max() <= 1
    assert torch.equal(v1, v2)
    assert (v1[1:] - v3[1:]).abs().max() > 1e-3


def test_first_frame_conditioning(reasoner):
    """Random weights: latent frame 0 is the encoded first frame, so generated frame 0 is
    exactly the first frame's VAE round trip; text-to-video differs there."""
    r = reasoner
    img = _image(8)
    cond = r.prepare(PROMPT, img, seed=4)
    latent = r.sample(cond)
    assert torch.equal(latent[:, :, :1], r.encode_image(img, 64, 64))
    video = r.generate(cond)
    round_trip = r.decode(cond.extra["first_latent"])[0]
    assert torch.allclose(video[0], round_trip, atol=1e-5)
    t2v = r.generate(r.prepare(PROMPT, None, seed=4))
    assert (t2v[0] - video[0]).abs().max() > 1e-3


# ---------------------------------------------------------------- LoRA

def test_lora_init_is_seeded_and_fresh(reasoner):
    r = reasoner
    a = [p.detach().clone() for p in r.add_lora(rank=4, seed=3)]
    b = [p.detach().clone() for p in r.add_lora(rank=4, seed=3)]
    c = [p.detach().clone() for p in r.add_lora(rank=4, seed=4)]
    assert len(a) == 16  # q/k/v/out of attn1 and attn2, A and B, one block
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    assert len(r.add_lora(rank=2, targets=["ffn"])) == 4
    assert len(r.add_lora(rank=2, targets=["all"])) == 20
    with pytest.raises(UserError, match="matches no module"):
        r.add_lora(rank=2, targets=["to_nothing"])


def test_add_replaces_remove_restores_and_base_is_untouched(reasoner):
    r = reasoner
    before = {k: v.clone() for k, v in r.base_state_dict().items()}
    cond = r.prepare(PROMPT, _image(9), seed=6)
    base_x0 = r.predict_x0(cond).detach()
    params = r.add_lora(rank=4, seed=0)
    assert torch.equal(r.predict_x0(cond).detach(), base_x0)  # lora_B starts at zero
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        r.preview(r.predict_x0(cond), [0, 8]).mean().backward()
        opt.step()
    assert not torch.equal(r.predict_x0(cond).detach(), base_x0)
    after = r.base_state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    r.add_lora(rank=4, seed=0)  # fresh again: back to the base output
    assert torch.equal(r.predict_x0(cond).detach(), base_x0)
    r.remove_lora()
    assert r.lora_parameters() == [] and torch.equal(r.predict_x0(cond).detach(), base_x0)


def test_save_load_lora_round_trip(wan22, reasoner, tmp_path):
    r = reasoner
    params = r.add_lora(rank=4, alpha=8, seed=1)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    cond = r.prepare(PROMPT, _image(10), seed=7)
    video = r.generate(cond)
    path = r.save_lora(tmp_path / "adapter")
    assert path == tmp_path / "adapter" / "lora.safetensors" and path.is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["rank"] == 4 and meta["alpha"] == 8 and "attn1.to_q" in meta["targets"]

    other = WanReasoner.from_pretrained(wan22)
    assert not torch.equal(other.generate(other.prepare(PROMPT, _image(10), seed=7)), video)
    other.load_lora(tmp_path / "adapter")
    assert torch.equal(other.generate(other.prepare(PROMPT, _image(10), seed=7)), video)
    assert other.lora_config["alpha"] == 8.0
    with pytest.raises(UserError, match="LoRA not found"):
        other.load_lora(tmp_path / "missing.safetensors")


def test_bfloat16_base_keeps_a_float32_lora(wan22):
    r = WanReasoner.from_pretrained(wan22, dtype=torch.bfloat16)
    assert r.dtype == torch.bfloat16 and r.text_encoder.dtype == torch.bfloat16
    assert r.vae.dtype == torch.float32  # as in diffusers' Wan examples
    params = r.add_lora(rank=4, seed=0)
    assert {p.dtype for p in params} == {torch.float32}
    cond = r.prepare(PROMPT, _image(12), seed=0)
    x0 = r.predict_x0(cond)
    assert x0.dtype == torch.float32
    r.preview(x0, [0, 8]).mean().backward()
    assert sum(p.grad.abs().sum() for p in params if p.grad is not None) > 0


# ---------------------------------------------------------------- Wan2.1-flavour VAE

def test_wan21_flavour_vae(wan21):
    r = WanReasoner.from_pretrained(wan21)
    assert r.z_dim == 16 and r.size_multiple == 16 and r.flow_shift == 3.0
    img = _image(11, 32, 32)
    cond = r.prepare(PROMPT, img, seed=0)
    assert cond.noise.shape == (1, 16, 3, 4, 4)
    params = r.add_lora(rank=2, seed=0)
    x0 = r.predict_x0(cond)
    frames = r.preview(x0, [0, 4, 8])
    assert frames.shape == (3, 3, 32, 32)
    assert torch.allclose(frames.detach(), r.decode(x0.detach())[[0, 4, 8]], atol=1e-5)
    frames.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    video = r.generate(cond)
    assert video.shape == (9, 3, 32, 32)
    assert torch.equal(r.sample(cond)[:, :, :1], cond.extra["first_latent"])

# The VAE checkpointing's memory saving is measured in benchmarks/unit_figures.py (a ratio of
# peak RSS is a figure, not a unit test); its gradients are checked equal to the plain decode's
# in test_gradient_reaches_lora_b_and_no_base_weight.
