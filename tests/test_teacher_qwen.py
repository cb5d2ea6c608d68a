"""The Qwen-VL teacher on tiny random Qwen2.5-VL / Qwen3-VL folders loaded from disk.

The models are built with a larger weight std (0.1) than the released ones so that a
wrong rotary position, a missing deepstack feature or a row mix-up changes the
answers far beyond the tolerances used here.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from vlm_teacher.errors import UserError
from vlm_teacher.task import Queries
from vlm_teacher.teacher import load_teacher
from vlm_teacher.teacher.qwen import QwenVLTeacher
from vlm_teacher.testing.tiny_qwen import build_tiny_qwen_vl

ARCHS = ["qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"]
QUESTIONS = [
    "Does the blue agent reach the green target?",
    "Is it ok?",
    "Does every object keep its shape and colour in every frame, and does nothing pass through the black walls?",
]
TOL = 2e-5


@pytest.fixture(scope="module", params=ARCHS)
def tiny_dir(request, tmp_path_factory):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("teacher") / request.param, arch=request.param,
                              seed=0, initializer_range=0.1)


@pytest.fixture(scope="module")
def teacher(tiny_dir):
    return QwenVLTeacher.from_pretrained(tiny_dir)


def _frames(k=3, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, 3, h, w, generator=g)


def _naive_logprob(t: QwenVLTeacher, frames: torch.Tensor, question: str) -> torch.Tensor:
    """The model's own full forward for ONE question, with pixel_values_videos (vision tower inside)."""
    pv, grid = t.pixel_values(frames)
    batch = t.build_inputs([question], grid, frames.shape[0])
    kwargs = dict(batch, pixel_values_videos=pv, video_grid_thw=grid)
    if t.arch == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([t.second_per_grid()])
    logits = t.model(**kwargs).logits[0].float()
    n = len(t.answer_ids)
    logp = torch.log_softmax(logits[-n - 1:-1], dim=-1)
    return logp[torch.arange(n), torch.tensor(t.answer_ids)].sum()


class _CallCounter:
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ------------------------------------------------------------------ loading


def test_load_round_trip(tiny_dir, teacher):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert teacher.arch == cfg["model_type"]
    assert type(teacher.model).__name__ == {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                            "qwen3_vl": "Qwen3VLForConditionalGeneration",
                                            "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration"}[teacher.arch]
    assert list(tiny_dir.glob("*.safetensors")) and not list(tiny_dir.glob("*.bin"))
    # the pixel settings come from preprocessor_config.json, the patch size is the real model's
    pre = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    assert (teacher.spec.min_pixels, teacher.spec.max_pixels) == (pre["min_pixels"], pre["max_pixels"])
    assert teacher.spec.patch_size == (14 if teacher.arch == "qwen2_5_vl" else 16)
    assert teacher.spec.image_mean[0] == pytest.approx(0.48145466 if teacher.arch == "qwen2_5_vl" else 0.5)
    # frozen and in eval mode
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    # tokenizer <-> config special ids agree; Yes is one token
    tok = teacher.tokenizer
    assert tok.convert_tokens_to_ids("<|video_pad|>") == cfg["video_token_id"]
    assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg["vision_start_token_id"]
    assert len(teacher.answer_ids) == 1
    # loading again gives the same weights; a different seed gives different ones
    again = load_teacher(tiny_dir)
    a, b = teacher.base_state_dict(), again.base_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_build_is_seeded(tmp_path):
    a = build_tiny_qwen_vl(tmp_path / "a", arch="qwen3_vl", seed=1)
    b = build_tiny_qwen_vl(tmp_path / "b", arch="qwen3_vl", seed=1)
    c = build_tiny_qwen_vl(tmp_path / "c", arch="qwen3_vl", seed=2)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_prompt_layout_follows_the_processor(teacher):
    frames = _frames(k=5)
    _, grid = teacher.pixel_values(frames)
    t, h, w = grid[0].tolist()
    assert t == 3  # 5 frames -> padded to 6 -> 3 temporal patches
    text = teacher.question_text(QUESTIONS[0], grid, 5)
    n_pad = t * h * w // 4
    assert text.count("<|video_pad|>") == n_pad
    assert text.rstrip().endswith("assistant")  # the next token is the answer
    assert QUESTIONS[0] in text and "Yes or No" in text
    if teacher.arch != "qwen2_5_vl":  # Qwen3-VL (and its MoE): one timestamped block per temporal patch: frames (0,1) (2,3) (4,4) at 2 fps
        assert text.count("<|vision_start|>") == t
        assert [f"<{s} seconds><|vision_start|>" in text for s in ("0.2", "1.2", "2.0")] == [True] * 3
    else:
        assert text.count("<|vision_start|>") == 1
    batch = teacher.build_inputs(QUESTIONS, grid, 5)
    mm, ids, mask = batch["mm_token_type_ids"], batch["input_ids"], batch["attention_mask"]
    assert torch.equal(mm == 2, ids == teacher.video_token_id)
    assert (mm == 2).sum(1).tolist() == [n_pad] * len(QUESTIONS)
    assert (mask[:, -1] == 1).all() and (ids[:, -1] == teacher.answer_ids[-1]).all()  # left padding


# ------------------------------------------------------------------ the reward


def test_yes_logprob_shape_values_and_gradient(teacher):
    frames = _frames(k=3).requires_grad_(True)
    logp = teacher.yes_logprob(frames, QUESTIONS)
    assert logp.shape == (len(QUESTIONS),) and logp.dtype == torch.float32
    assert torch.isfinite(logp).all() and (logp <= 0).all()
    logp.sum().backward()
    assert frames.grad is not None and torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.model.parameters())


def test_shared_vision_batch_equals_naive_per_question_forward(teacher):
    frames = _frames(k=5, seed=1)
    with _CallCounter(teacher.model.model.visual) as counter:
        fast = teacher.yes_logprob(frames, QUESTIONS)
    assert counter.calls == 1
    with _CallCounter(teacher.model.model.visual) as counter:
        naive = torch.stack([_naive_logprob(teacher, frames, q) for q in QUESTIONS])
    assert counter.calls == len(QUESTIONS)
    assert torch.allclose(fast, naive, atol=TOL, rtol=0), (fast, naive)
    # the comparison can fail: the questions' answers differ by far more than the tolerance
    assert (fast[:, None] - fast[None, :]).abs().max() > 100 * TOL


def test_gradient_equals_naive_gradient(teacher):
    frames = _frames(k=4, seed=2)
    f1 = frames.clone().requires_grad_(True)
    teacher.yes_logprob(f1, QUESTIONS[:2]).sum().backward()
    f2 = frames.clone().requires_grad_(True)
    sum(_naive_logprob(teacher, f2, q) for q in QUESTIONS[:2]).backward()
    assert torch.allclose(f1.grad, f2.grad, atol=1e-6, rtol=1e-3)
    assert f1.grad.abs().max() > 1e-5


def test_positions_and_deepstack_matter(teacher):
    """The naive comparison above proves something only if what the fast path rebuilds
    matters: Qwen2.5-VL's 3-D positions (without mm_token_type_ids it silently uses 1-D
    ones) and Qwen3-VL's deepstack features."""
    frames = _frames(k=3)
    right = teacher.yes_logprob(frames, [QUESTIONS[0]])[0]
    if teacher.arch == "qwen2_5_vl":
        pv, grid = teacher.pixel_values(frames)
        batch = teacher.build_inputs([QUESTIONS[0]], grid, 3)
        logits = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               pixel_values_videos=pv, video_grid_thw=grid).logits[0, -2].float()
        wrong = torch.log_softmax(logits, -1)[teacher.answer_ids[0]]
    else:
        visual = teacher.model.model.visual
        saved = visual.deepstack_visual_indexes
        visual.deepstack_visual_indexes = []
        try:
            wrong = teacher.yes_logprob(frames, [QUESTIONS[0]])[0]
        finally:
            visual.deepstack_visual_indexes = saved
        assert torch.equal(teacher.yes_logprob(frames, [QUESTIONS[0]])[0], right)
    assert (wrong - right).abs() > 100 * TOL


def test_padding_and_order_do_not_change_results(teacher):
    frames = _frames(k=3, seed=3)
    batched = teacher.yes_logprob(frames, QUESTIONS)
    alone = torch.stack([teacher.yes_logprob(frames, [q])[0] for q in QUESTIONS])
    reversed_ = teacher.yes_logprob(frames, QUESTIONS[::-1]).flip(0)
    assert torch.allclose(batched, alone, atol=TOL, rtol=0)
    assert torch.allclose(batched, reversed_, atol=TOL, rtol=0)


def test_frames_matter(teacher):
    a = teacher.yes_logprob(_frames(seed=4), QUESTIONS[:1])
    b = teacher.yes_logprob(_frames(seed=5), QUESTIONS[:1])
    assert (a - b).abs().max() > 100 * TOL


def test_multi_token_answer_is_teacher_forced(teacher):
    multi = QwenVLTeacher(teacher.model, teacher.tokenizer, teacher.spec, teacher.arch, answer="Yes, it does.")
    assert len(multi.answer_ids) > 1
    frames = _frames(k=3, seed=6)
    fast = multi.answer_logprob(frames, QUESTIONS[:2])
    naive = torch.stack([_naive_logprob(multi, frames, q) for q in QUESTIONS[:2]])
    assert torch.allclose(fast, naive, atol=TOL, rtol=0)
    assert (fast < teacher.yes_logprob(frames, QUESTIONS[:2])).all()  # more tokens, lower probability


def test_no_grad_helpers_and_score(teacher):
    frames = _frames(k=3, seed=7)
    p = teacher.yes_prob_no_grad(frames.requires_grad_(True), QUESTIONS)
    assert not p.requires_grad and ((p > 0) & (p < 1)).all()
    assert torch.allclose(p, teacher.yes_logprob(frames.detach(), QUESTIONS).exp(), atol=1e-6)
    q = Queries(goal=QUESTIONS[0], process=tuple(QUESTIONS[1:]))
    s = teacher.score(frames.detach(), q)
    assert s["questions"] == q.all and len(s["p_yes"]) == 3
    assert s["score"] == pytest.approx(0.5 * s["goal"] + 0.25 * (s["process"][0] + s["process"][1]))
    video = (frames.detach().permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    assert teacher.score(video, q)["p_yes"] == pytest.approx(s["p_yes"], abs=1e-3)


def test_bfloat16_weights_still_give_fp32_logprobs(tiny_dir):
    t = QwenVLTeacher.from_pretrained(tiny_dir, dtype="bfloat16")
    assert t.dtype == torch.bfloat16
    frames = _frames(k=2).requires_grad_(True)
    logp = t.yes_logprob(frames, QUESTIONS[:2])
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    logp.sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


# ------------------------------------------------------------------ generation and queries


def test_generate_text_is_greedy_and_bounded(teacher):
    image = (np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)
    short = teacher.generate_ids("Describe the image.", [image], max_new_tokens=4)
    long = teacher.generate_ids("Describe the image.", [image], max_new_tokens=12)
    assert 1 <= len(short) <= 4 and len(long) <= 12
    assert long[:len(short)] == short  # greedy: a longer budget extends the same answer
    other = teacher.generate_ids("Describe the image.", [image[::-1].copy()], max_new_tokens=12)
    assert other != long  # the image reaches the model
    text = teacher.generate_text("Describe the image.", [image], max_new_tokens=12)
    assert text == teacher.tokenizer.decode(long, skip_special_tokens=True).strip()
    # two images, and none: the text is the decoded greedy ids, and the second image reaches the model
    pair = teacher.generate_ids("Compare.", [image, image[::-1].copy()], max_new_tokens=12)
    assert teacher.generate_text("Compare.", [image, image[::-1].copy()], max_new_tokens=12) == \
        teacher.tokenizer.decode(pair, skip_special_tokens=True).strip()
    assert pair != teacher.generate_ids("Compare.", [image, image], max_new_tokens=12)
    plain = teacher.generate_ids("Say hi.", max_new_tokens=3)
    assert 1 <= len(plain) <= 3
    assert teacher.generate_text("Say hi.", max_new_tokens=3) == teacher.tokenizer.decode(plain, skip_special_tokens=True).strip()


def test_propose_queries_falls_back_with_a_warning(teacher, caplog):
    first = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="vlm_teacher"):
        q = teacher.propose_queries("Move the blue agent to the green target.", first, max_new_tokens=24)
    assert q.source == "fallback" and "green target" in q.goal
    assert any(r.name == "vlm_teacher" and "fallback" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ wrong folders


def test_wrong_folders_raise_user_error(tmp_path, tiny_dir):
    with pytest.raises(UserError, match="not found"):
        QwenVLTeacher.from_pretrained(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        QwenVLTeacher.from_pretrained(empty)

    llama = tmp_path / "llama"
    shutil.copytree(tiny_dir, llama)
    cfg = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps(dict(cfg, model_type="llama")))
    with pytest.raises(UserError, match=r"llama.*qwen2_5_vl, qwen3_vl") as info:
        QwenVLTeacher.from_pretrained(llama)
    assert str(llama) in str(info.value) and "\n" not in str(info.value)

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        QwenVLTeacher.from_pretrained(pickled)

    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_dir, no_tok)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / name).unlink()
    with pytest.raises(UserError, match="tokenizer"):
        QwenVLTeacher.from_pretrained(no_tok)

    mismatch = tmp_path / "mismatch"
    shutil.copytree(tiny_dir, mismatch)
    pre = json.loads((mismatch / "preprocessor_config.json").read_text())
    (mismatch / "preprocessor_config.json").write_text(json.dumps(dict(pre, patch_size=8)))
    with pytest.raises(UserError, match="patch_size"):
        QwenVLTeacher.from_pretrained(mismatch)

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        QwenVLTeacher.from_pretrained(broken)


def test_defaults_without_preprocessor_config(tmp_path, tiny_dir):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    (bare / "preprocessor_config.json").unlink()
    t = QwenVLTeacher.from_pretrained(bare, max_pixels=128 * 128)
    expected_mean = 0.48145466 if t.arch == "qwen2_5_vl" else 0.5
    assert t.spec.image_mean[0] == pytest.approx(expected_mean) and t.spec.max_pixels == 128 * 128
    assert t.spec.patch_size == (14 if t.arch == "qwen2_5_vl" else 16)
