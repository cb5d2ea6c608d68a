"""The presets of the added reasoners (issue 18): parameter counts against the model cards, the
analytic FLOPs against torch's FlopCounterMode (tiny real models, and full size on the meta device),
and benchmarks/full_size.py at each tiny preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_teacher.perf import flops as F
from vlm_teacher.perf.presets import VIDEO_PRESETS, build_video_reasoner, count_video_parameters, random_prompt_embeds

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.mark.parametrize("name, module, low, high", [
    ("hunyuan15-480p-t2v", "transformer", 8.2e9, 8.4e9),        # model card: 8.3B
    ("wan2.1-t2v-14b", "transformer", 14.0e9, 14.5e9),           # model card: 14B
    ("wan2.1-i2v-14b-480p", "transformer", 16.0e9, 16.6e9),      # "14B" + image cross-attention k/v
    ("wan2.2-t2v-a14b", "transformer", 14.0e9, 14.5e9),          # 14B active per step
    ("wan2.2-t2v-a14b", "transformer_2", 14.0e9, 14.5e9),        # the second expert, same size
    ("wan2.2-i2v-a14b", "transformer", 14.0e9, 14.5e9),
])
def test_parameter_counts_match_the_model_cards(name, module, low, high):
    assert low < count_video_parameters(name)[module] < high


@pytest.mark.parametrize("name", [n for n in VIDEO_PRESETS if n.endswith("-tiny")])
def test_analytic_flops_equal_flop_counter_on_tiny_real_models(name):
    r = build_video_reasoner(name)
    r.set_prompt_embeds("p", random_prompt_embeds(r, 8))
    cond = r.prepare("p", np.zeros((64, 64, 3), np.uint8), 0)
    for rank in (0, 2):
        if rank:
            r.add_lora(rank=rank, targets=TARGETS)
        counter = F.flop_counter()
        with counter, torch.no_grad():
            r._velocity(cond.noise, 1.0, cond)
        analytic = F.reasoner_transformer(r, cond.noise.shape, r.defaults.max_sequence_length, rank, TARGETS)
        assert counter.get_total_flops() == pytest.approx(analytic.forward, rel=1e-9)
        assert analytic.lora > 0 if rank else analytic.lora == 0


def test_hunyuan15_flops_with_the_real_context_widths():
    """The released text/ByT5/SigLIP widths and context lengths (1000 + 256 + 729 tokens), two blocks
    and two refiner blocks, narrow heads (this transformer cannot run on the meta device: it reads
    its image embeddings to tell T2V from I2V)."""
    from diffusers import HunyuanVideo15Transformer3DModel

    cfg = dict(VIDEO_PRESETS["hunyuan15-480p-t2v"].transformer, num_layers=2, num_attention_heads=2,
               attention_head_dim=64, rope_axes_dim=(16, 24, 24))
    shape = (1, 32, 2, 4, 6)
    model = HunyuanVideo15Transformer3DModel(**cfg).eval()
    counter = F.flop_counter()
    with counter, torch.no_grad():
        model(hidden_states=torch.zeros(1, 65, *shape[2:]), timestep=torch.zeros(1),
              encoder_hidden_states=torch.zeros(1, 1000, 3584), encoder_attention_mask=torch.ones(1, 1000),
              encoder_hidden_states_2=torch.zeros(1, 256, 1472), encoder_attention_mask_2=torch.ones(1, 256),
              image_embeds=torch.ones(1, 729, 1152), return_dict=False)
    assert counter.get_total_flops() == pytest.approx(F.hunyuan15_transformer(cfg, shape, 1000).forward, rel=1e-9)
    full = F.hunyuan15_transformer(VIDEO_PRESETS["hunyuan15-480p-t2v"].transformer, (1, 32, 31, 30, 53), 1000)
    # 121 frames at 848x480: 49290 + 1985 tokens, 54 blocks of 2048; attention 4 (N + L)^2 d per block dominates
    assert full.attention == pytest.approx(54 * 4.0 * 51275 ** 2 * 2048) and 1.4e15 < full.forward < 1.5e15


@pytest.mark.parametrize("name", [n for n in VIDEO_PRESETS if not n.endswith("-tiny")])
def test_full_size_presets_build_on_meta_and_give_step_flops(name):
    from vlm_teacher.perf.presets import build_qwen_teacher

    r = build_video_reasoner(name, device="meta")
    assert r.takes_first_frame == VIDEO_PRESETS[name].i2v
    shape = r.latent_shape(r.defaults.num_frames, r.defaults.height, r.defaults.width)
    teacher = build_qwen_teacher("qwen3-vl-4b", device="meta")
    fl = F.tto_flops(r, teacher, shape, list(range(0, r.defaults.num_frames, 4)), ["Is it right?"], 16, TARGETS)
    assert fl["step"]["transformer"].lora > 0 and fl["generate_frozen"] > fl["step"]["transformer"].forward
    assert fl["preview_latent_frames"] == shape[2]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in VIDEO_PRESETS if n.endswith("-tiny")])
def test_full_size_script_runs_each_tiny_preset(tmp_path, name):
    out = tmp_path / "fs"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "full_size.py"), "--preset", name,
                           "--steps", "2", "--gen-repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["status"] == "ok" and len(row["step_all_s"]) == 2 and row["flops"]["step_total"] > 0


def _transformer_calls(reasoner, run) -> int:
    """Forward passes of the reasoner's transformer(s) while ``run()`` runs."""
    calls = []
    experts = [reasoner.transformer] + ([reasoner.transformer_2] if hasattr(reasoner, "transformer_2") else [])
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in experts]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


@pytest.mark.parametrize("name", [n for n in VIDEO_PRESETS if n.endswith("-tiny")])
def test_protocol_members_of_the_added_adapters(name):
    """sampler_steps / Conditioning.steps are the sampler's transformer calls (A14B: one expert
    per step), fps the preset's, lora_config follows add_lora, the grad-norm switch starts off."""
    preset = VIDEO_PRESETS[name]
    r = build_video_reasoner(name)
    r.set_prompt_embeds("p", random_prompt_embeds(r, 8))
    cond = r.prepare("p", np.zeros((64, 64, 3), np.uint8), 0)
    assert r.sampler_steps == cond.steps == preset.steps
    assert _transformer_calls(r, lambda: r.sample(cond)) == preset.steps
    few = r.prepare("p", np.zeros((64, 64, 3), np.uint8), 0, steps=2)
    assert few.steps == 2 and _transformer_calls(r, lambda: r.sample(few)) == 2
    assert r.fps == preset.fps and r.sync_grad_norm is False
    assert r.lora_config is None
    r.add_lora(rank=2, targets=TARGETS)
    assert r.lora_config["rank"] == 2


def test_hunyuan15_defaults_to_its_eight_step_sampler():
    """Without a vlm_teacher.json HunyuanVideo-1.5 samples 8 steps at 24 fps."""
    from vlm_teacher.reasoner.hunyuan15 import HunyuanVideo15Reasoner

    tiny = build_video_reasoner("hunyuan15-tiny")
    r = HunyuanVideo15Reasoner(tiny.transformer, tiny.vae, None, None, text_encoder_2=None, tokenizer_2=None,
                               image_encoder=tiny.image_encoder, feature_extractor=tiny.feature_extractor,
                               image_to_video=True, flow_shift=tiny.flow_shift)
    assert (r.sampler_steps, r.fps) == (8, 24)
    r.set_prompt_embeds("p", random_prompt_embeds(r, 8))
    cond = r.prepare("p", np.zeros((64, 64, 3), np.uint8), 0, num_frames=5, height=32, width=32)
    assert cond.steps == 8 and _transformer_calls(r, lambda: r.sample(cond)) == 8
