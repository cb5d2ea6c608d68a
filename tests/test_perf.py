"""Performance engineering: presets of the real architectures, the analytic FLOP counts,
the surrogate preview decoder and the switches of the adapters and the loop.

Every switch must leave the numbers unchanged (same log-probabilities, same gradients)
while changing how they are computed; the FLOP formulas must equal torch's own
FlopCounterMode on real (small) models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlm_teacher.perf import flops as F
from vlm_teacher.errors import UserError
from vlm_teacher.perf.presets import (QWEN_PRESETS, WAN_PRESETS, build_qwen_teacher, build_wan_reasoner,
                                 count_parameters, random_prompt_embeds)
from vlm_teacher.reasoner.surrogate import TinyWanDecoder
from vlm_teacher.task import Queries

QUESTIONS = ["Does the blue agent reach the green target?", "Is it ok?", "Do the walls stay where they are?"]


@pytest.fixture(scope="module")
def wan():
    r = build_wan_reasoner("wan-tiny", seed=0)
    first = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    cond = r.prepare("a prompt", first, 0, num_frames=9, height=64, width=96, prompt_embeds=random_prompt_embeds(r))
    return r, cond


@pytest.fixture(scope="module", params=["qwen3-vl-tiny", "qwen2.5-vl-tiny", "qwen3-vl-moe-tiny"])
def teacher(request):
    return build_qwen_teacher(request.param, seed=0)


def _frames(k=4, h=64, w=96, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, 3, h, w, generator=g).requires_grad_(grad)


# ----------------------------------------------------------------------------- presets

def test_published_architectures_have_their_published_sizes():
    # parameter counts of the released checkpoints: 5.0B, 4.44B, 8.29B
    assert count_parameters("wan2.2-ti2v-5b") == pytest.approx(5.00e9, rel=0.01)
    assert count_parameters("qwen3-vl-4b") == pytest.approx(4.44e9, rel=0.01)
    assert count_parameters("qwen2.5-vl-7b") == pytest.approx(8.29e9, rel=0.01)
    assert count_parameters("qwen3-vl-30b-a3b") == pytest.approx(31.1e9, rel=0.01)


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="unknown reasoner preset"):
        build_wan_reasoner("wan-huge")
    with pytest.raises(UserError, match="unknown teacher preset"):
        build_qwen_teacher("qwen-huge")


def test_builders_give_working_adapters_in_the_requested_dtype(wan):
    r, cond = wan
    assert r.text_encoder is None and r.transformer.dtype == torch.float32
    x0 = r.predict_x0(cond)
    assert x0.shape == cond.noise.shape and torch.isfinite(x0).all()
    rb = build_wan_reasoner("wan-tiny", dtype=torch.bfloat16)
    blocks = rb.transformer.blocks[0]
    assert blocks.attn1.to_q.weight.dtype == torch.bfloat16
    assert blocks.norm2.weight.dtype == torch.float32 if blocks.norm2.weight is not None else True
    assert rb.transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # kept fp32


def test_prompt_embeds_replace_the_text_encoder(wan):
    r, _ = wan
    with pytest.raises(UserError, match="no text encoder"):
        r.prepare("unseen prompt", None, 0, num_frames=5, height=64, width=64)
    emb = random_prompt_embeds(r, seed=3)
    r.set_prompt_embeds("unseen prompt", emb)
    cond = r.prepare("unseen prompt", None, 0, num_frames=5, height=64, width=64)
    assert torch.equal(cond.extra["prompt_embeds"], emb)
    r.set_prompt_embeds("unseen prompt", None)
    with pytest.raises(UserError, match="prompt_embeds must be"):
        r.prepare("x", None, 0, num_frames=5, height=64, width=64, prompt_embeds=torch.zeros(1, 4, 7))


# ----------------------------------------------------------------------------- FLOPs

def test_wan_and_vae_flops_equal_torch_flop_counter(wan):
    r, cond = wan
    preset = WAN_PRESETS["wan-tiny"]
    for rank in (0, 4):
        r.remove_lora()
        if rank:
            r.add_lora(rank=rank)
        counter = F.flop_counter()
        with counter, torch.no_grad():
            r.predict_x0(cond)
        analytic = F.wan_transformer(preset.transformer, cond.noise.shape, preset.text_len, lora_rank=rank)
        assert counter.get_total_flops() == pytest.approx(analytic.forward, rel=1e-9)
    r.remove_lora()
    x0 = r.predict_x0(cond)
    counter = F.flop_counter()
    with counter, torch.no_grad():
        r.preview(x0, [0, 4, 8])
    assert counter.get_total_flops() == pytest.approx(F.vae_decode(preset.vae, *cond.noise.shape[2:]).forward,
                                                      rel=1e-9)


@pytest.mark.parametrize("shared", [False, True])
def test_teacher_flops_equal_torch_flop_counter(teacher, shared):
    from vlm_teacher.teacher.qwen import shared_prefix_length

    frames = _frames(6, 128, 224)
    _, grid = teacher.pixel_values(frames)
    assert tuple(grid[0].tolist()) == F.teacher_grid(teacher, 6, 128, 224)
    batch = teacher.build_inputs(QUESTIONS, grid, 6)
    teacher.share_prefix = shared
    text_cfg = teacher.model.config.text_config
    experts = getattr(text_cfg, "_experts_implementation", None)
    if experts is not None:  # MoE: count the eager expert loop (the grouped kernels are opaque to the counter)
        text_cfg._experts_implementation = "eager"
    try:
        counter = F.flop_counter()
        with counter, torch.no_grad():
            teacher.answer_logprob(frames, QUESTIONS)
    finally:
        teacher.share_prefix = True
        if experts is not None:
            text_cfg._experts_implementation = experts
    cfg = teacher.model.config
    vision = F.qwen_vision(teacher.arch, cfg.vision_config.to_dict(), grid[0].tolist())
    n_ans = len(teacher.answer_ids)
    rows = F.teacher_rows(teacher, QUESTIONS, grid[0].tolist(), 6)
    assert [len(r) for r in rows] == batch["attention_mask"].sum(dim=1).tolist()
    # an explicit mask makes the kernel compute the whole square: count it that way here
    if shared:
        prefix = shared_prefix_length(rows, n_ans)
        assert prefix > 0.5 * min(len(r) for r in rows)  # the video is in the shared prefix
        lm = F.qwen_language_shared(cfg.text_config.to_dict(), prefix, [len(r) - prefix for r in rows], n_ans,
                                    causal_half=False)
    else:  # left-padded rows of one length
        lm = F.qwen_language(cfg.text_config.to_dict(), [batch["input_ids"].shape[1]] * len(QUESTIONS), n_ans,
                             causal_half=False)
    assert counter.get_total_flops() == pytest.approx((vision + lm).forward, rel=1e-9)


def test_shared_prefix_gives_the_same_answers_and_gradients(teacher):
    frames = _frames()
    shared, grad_s = _logp_and_grad(teacher, frames)
    teacher.share_prefix = False
    try:
        rows, grad_r = _logp_and_grad(teacher, frames)
    finally:
        teacher.share_prefix = True
    assert torch.allclose(shared, rows, atol=1e-5)
    assert torch.allclose(grad_s, grad_r, atol=1e-6, rtol=1e-4)
    (key, prep), = [(k, v) for k, v in teacher._prepared_cache.items() if k[0] == tuple(QUESTIONS) and k[-1]][:1]
    assert prep["input_ids"].shape[0] == 1 and prep["answer_index"].shape == (len(QUESTIONS), len(teacher.answer_ids))


def test_full_size_transformer_flops_match_a_meta_device_count():
    from diffusers import WanTransformer3DModel

    preset = WAN_PRESETS["wan2.2-ti2v-5b"]
    shape = (1, 48, 23, 44, 80)  # 89 frames at 1280x704

    def run(model):
        tokens = 23 * 22 * 40
        model(hidden_states=torch.zeros(shape, device="meta"), timestep=torch.zeros(1, tokens, device="meta"),
              encoder_hidden_states=torch.zeros(1, 512, 4096, device="meta"), return_dict=False)

    counted = F.module_flops_on_meta(lambda: WanTransformer3DModel(**preset.transformer), run)
    analytic = F.wan_transformer(preset.transformer, shape, 512)
    assert F.wan_tokens(preset.transformer, shape) == 20240
    assert counted == pytest.approx(analytic.forward, rel=1e-9)
    assert 3.0e14 < analytic.forward < 3.7e14


def test_backward_convention_and_mfu():
    f = F.Flops(grad=10.0, attention=3.0, const=5.0, lora=1.0)
    assert f.forward == 19.0 and f.backward == 10.0 + 6.0 + 2.0
    assert (f + f).forward == 38.0 and (2 * f).backward == 36.0
    assert F.mfu(1e15, 2.0, 1000.0) == pytest.approx(0.5)
    assert F.device_peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert F.device_peak_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert F.device_peak_tflops("Some GPU") is None


def test_tto_flops_of_one_instance(wan, teacher):
    r, cond = wan
    fl = F.tto_flops(r, teacher, cond.noise.shape, [0, 4, 8], QUESTIONS, 16, ("to_q", "to_k", "to_v", "to_out.0"))
    assert set(fl["step"]) == {"transformer", "preview_decode", "teacher_vision", "teacher_language"}
    # the generations against torch's FlopCounterMode on the real model, without and with the LoRA
    from torch.utils.flop_counter import FlopCounterMode

    def counted() -> float:
        with FlopCounterMode(display=False) as fc:
            r.generate(cond)
        return float(fc.get_total_flops())

    frozen = counted()
    r.add_lora(rank=16, targets=["to_q", "to_k", "to_v", "to_out.0"])
    try:
        adapted = counted()
    finally:
        r.remove_lora()
    assert fl["generate_frozen"] == pytest.approx(frozen, rel=2e-3)  # measured 3e-4 (small elementwise ops)
    assert fl["generate_adapted"] - fl["generate_frozen"] == pytest.approx(adapted - frozen, rel=1e-6)
    assert len(fl["teacher_tokens"]) == len(QUESTIONS)


# ----------------------------------------------------------------------------- surrogate decoder

@pytest.fixture(scope="module")
def surrogate():
    torch.manual_seed(0)
    return TinyWanDecoder(widths=(16, 12, 8, 8)).eval().requires_grad_(False)


def test_surrogate_selected_frames_equal_the_full_decode(surrogate):
    z = torch.randn(2, 48, 4, 3, 5)
    full = surrogate.decode(z)
    assert full.shape == (2, 13, 3, 48, 80) and 0.0 <= float(full.min()) and float(full.max()) <= 1.0  # noqa
    assert float(full.std()) > 1e-3 and float(((full > 0) & (full < 1)).float().mean()) > 0.2
    idx = [0, 1, 5, 9, 12]
    assert torch.equal(surrogate.decode(z, idx), full[:, idx])
    assert torch.equal(surrogate.decode(z[:, :, :2]), full[:, :5])  # causal: a prefix decodes to a prefix
    with pytest.raises(ValueError, match="frame indices"):
        surrogate.decode(z, [13])


def test_surrogate_file_round_trip_and_bad_files(surrogate, tmp_path):
    path = surrogate.save(tmp_path / "tiny.safetensors")
    loaded = TinyWanDecoder.from_file(path)
    assert loaded.widths == (16, 12, 8, 8) and loaded.patch == 2
    z = torch.randn(1, 48, 2, 2, 2)
    assert torch.equal(loaded.decode(z), surrogate.decode(z))
    with pytest.raises(UserError, match="only .safetensors"):
        TinyWanDecoder.from_file(tmp_path / "tiny.pth")
    from safetensors.torch import save_file

    save_file({"encoder.0.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not a TAEHV-style decoder"):
        TinyWanDecoder.from_file(tmp_path / "other.safetensors")


def test_reasoner_preview_through_the_surrogate_reaches_the_lora(wan, surrogate):
    r, cond = wan
    r.use_preview_decoder(surrogate)
    try:
        params = r.add_lora(rank=4, seed=0)
        with torch.no_grad():
            for p in params:
                p.add_(0.01 * torch.randn_like(p))  # lora_B away from zero so lora_A gets a gradient too
        frames = r.preview(r.predict_x0(cond), [0, 3, 8])
        assert frames.shape == (3, 3, cond.height, cond.width) and frames.dtype == torch.float32
        frames.mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        assert any(float(p.grad.abs().sum()) > 0 for p in params)
        bad = TinyWanDecoder(latent_channels=16)
        with pytest.raises(UserError, match="latent channels"):
            r.use_preview_decoder(bad)
    finally:
        r.preview_decoder = None
        r.remove_lora()


def test_preview_needed_only_is_exact(wan):
    r, cond = wan
    x0 = r.predict_x0(cond).detach()
    a = r.preview(x0, [0, 2, 4])
    r.preview_needed_only = False
    try:
        b = r.preview(x0, [0, 2, 4])
    finally:
        r.preview_needed_only = True
    assert torch.allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- teacher switches

def _logp_and_grad(teacher, frames):
    frames = frames.clone().requires_grad_(True)
    logp = teacher.yes_logprob(frames, QUESTIONS)
    logp.sum().backward()
    return logp.detach(), frames.grad


def test_teacher_checkpointing_same_numbers_fewer_saved_tensors(teacher):
    frames = _frames()
    base, base_grad = _logp_and_grad(teacher, frames)

    def saved(model_on: bool) -> int:
        teacher.grad_checkpointing = model_on
        count = 0

        def pack(t):
            nonlocal count
            count += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            teacher.yes_logprob(frames.clone().requires_grad_(True), QUESTIONS)
        return count

    try:
        assert saved(True) < saved(False)
        teacher.grad_checkpointing = True
        teacher.model.eval()  # a later eval() must not silently drop checkpointing
        ck, ck_grad = _logp_and_grad(teacher, frames)
        assert saved(True) < saved(False)
    finally:
        teacher.grad_checkpointing = False
    assert torch.allclose(ck, base, atol=1e-5)
    assert torch.allclose(ck_grad, base_grad, atol=1e-6, rtol=1e-4)


def test_unbatched_questions_give_the_same_answers(teacher):
    frames = _frames()
    batched, grad_b = _logp_and_grad(teacher, frames)
    teacher.batch_questions = False
    try:
        naive, grad_n = _logp_and_grad(teacher, frames)
    finally:
        teacher.batch_questions = True
    assert torch.allclose(naive, batched, atol=1e-4)
    assert torch.allclose(grad_n, grad_b, atol=1e-5, rtol=1e-3)


def test_prepared_inputs_are_built_once_per_question_set_and_size(teacher):
    teacher._prepared_cache.clear()
    a = teacher.yes_logprob(_frames(seed=1), QUESTIONS)
    assert len(teacher._prepared_cache) == 1
    b = teacher.yes_logprob(_frames(seed=2), QUESTIONS)
    assert len(teacher._prepared_cache) == 1 and not torch.allclose(a, b)
    teacher.yes_logprob(_frames(seed=1), QUESTIONS[:2])
    teacher.yes_logprob(_frames(seed=1, h=96), QUESTIONS)
    assert len(teacher._prepared_cache) == 3
    again = teacher.yes_logprob(_frames(seed=1), QUESTIONS)
    assert torch.allclose(again, a, atol=1e-6)


# ----------------------------------------------------------------------------- the loop

def _adam(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]
    return params, torch.optim.AdamW(params, lr=0.1)


def test_guarded_step_is_a_step_when_finite_and_a_no_op_when_not():
    from vlm_teacher.optimize import guarded_step

    p1, o1 = _adam()
    p2, o2 = _adam()
    for _ in range(2):  # two finite steps: identical to a plain step
        for ps in (p1, p2):
            for p in ps:
                p.grad = torch.full_like(p, 0.5)
        o1.step()
        guarded_step(o2, p2, torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    before = [p.detach().clone() for p in p2]
    moments = [(o2.state[p]["exp_avg"].clone(), o2.state[p]["exp_avg_sq"].clone()) for p in p2]
    for p in p2:
        p.grad = torch.full_like(p, float("nan"))
    guarded_step(o2, p2, torch.tensor(float("nan")))
    assert all(torch.equal(a, b) for a, b in zip(p2, before))
    for p, (m, v) in zip(p2, moments):
        assert torch.equal(o2.state[p]["exp_avg"], m) and torch.equal(o2.state[p]["exp_avg_sq"], v)


@pytest.mark.slow
def test_lazy_and_synced_grad_norm_give_the_same_run(tiny_wan_dir, tiny_qwen25_dir):
    from vlm_teacher.optimize import TTOConfig, teach
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.task import Task
    from vlm_teacher.teacher import load_teacher

    reasoner, teacher = load_reasoner(tiny_wan_dir), load_teacher(tiny_qwen25_dir)
    task = Task(id="lazy", prompt="Move the agent to the red square.",
                first_frame=np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    queries = Queries(goal="Is the goal reached?", process=("Is the motion valid?",))
    runs = {}
    for sync in (True, False):
        seen = []
        reasoner.sync_grad_norm = sync
        cfg = TTOConfig(fixed_steps=3, num_frames_shown=2, lr=1e-2)
        res = teach(reasoner, teacher, task, cfg, queries=queries, progress=False, on_step=seen.append)
        assert [e["step"] for e in seen] == [1, 2, 3] and all("grad_norm" in e for e in seen)
        runs[sync] = res
    a, b = runs[True], runs[False]
    assert a.updates == b.updates == 3
    for ea, eb in zip(a.history, b.history):
        assert ea["loss"] == pytest.approx(eb["loss"], rel=1e-6)
        assert ea["grad_norm"] == pytest.approx(eb["grad_norm"], rel=1e-5)
        assert math.isfinite(eb["grad_norm"])
    assert torch.allclose(a.video, b.video, atol=1e-6)


@pytest.mark.slow
def test_compiled_transformer_gives_the_same_x0(wan):
    r = build_wan_reasoner("wan-tiny", seed=0)
    _, cond = wan
    expected = r.predict_x0(cond).detach()
    r.compile = True
    assert r.compile
    assert torch.allclose(r.predict_x0(cond).detach(), expected, atol=1e-4)
    with pytest.raises(UserError, match="cannot be turned off"):
        r.compile = False
