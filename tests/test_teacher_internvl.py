"""The InternVL teacher on a tiny random InternVL3-style folder, against the reference code.

``InternVLProcessor`` cannot be constructed here as shipped: its video processor needs
torchvision, and the constructor checks that class even when none is given. The
``processor`` fixture builds the real processor with only that check skipped for the
missing video processor; everything it runs is transformers' code (the PIL image
processor, the tokenizer, its image-token expansion). For video, the reference takes
the frame expansion from the processor's own ``replace_video_token`` and the pixels
from the image processor with ``crop_to_patches=False`` (the video processor's steps:
resize to the tile, rescale, normalise).

The model is built with weight std 0.1 so that a wrong placeholder, position or
frame order moves log P(Yes) far beyond the tolerances used here.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vlm_teacher.errors import UserError
from vlm_teacher.teacher import load_teacher, tiles
from vlm_teacher.teacher.internvl import InternVLTeacher
from vlm_teacher.testing.tiny_internvl import build_tiny_internvl

QUESTIONS = [
    "Does the blue agent reach the green target?",
    "Is it ok?",
    "Does every object keep its shape and colour in every frame, and does nothing pass through the black walls?",
]
TOL = 2e-5
TILE = 56  # the tiny model's tile (InternVL3: 448)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_internvl(tmp_path_factory.mktemp("internvl") / "internvl", seed=0, initializer_range=0.1,
                               layer_scale_init_value=1.0)


@pytest.fixture(scope="module")
def teacher(tiny_dir):
    return InternVLTeacher.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def image_processor(tiny_dir):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def processor(tiny_dir, teacher, image_processor):
    from transformers import InternVLProcessor
    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ProcessorMixin, "check_argument_for_proper_class",
                   lambda self, name, arg: None if arg is None else check(self, name, arg))
        cfg = json.loads((tiny_dir / "processor_config.json").read_text())
        return InternVLProcessor(image_processor=image_processor, tokenizer=teacher.tokenizer, video_processor=None,
                                 image_seq_length=cfg["image_seq_length"])


def _uint8_frames(k=3, h=TILE, w=TILE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, h, w, 3), dtype=np.uint8)


def _as_float(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def _reference_logprob(teacher, processor, image_processor, frames_u8: np.ndarray, question: str) -> torch.Tensor:
    """A plain transformers forward, inputs built by the reference code: the chat template,
    the processor's frame expansion, the image processor's pixels (one tile per frame)."""
    messages = [{"role": "user", "content": [
        {"type": "video"}, {"type": "text", "text": f"{question}\nAnswer with Yes or No."}]}]
    text = teacher.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pixel_values = image_processor(list(frames_u8), crop_to_patches=False, return_tensors="pt")["pixel_values"]
    video = processor.replace_video_token({"pixel_values_videos": [pixel_values]}, 0)
    text = text.replace(processor.video_token, video, 1) + teacher.answer
    ids = teacher.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    logits = teacher.model(input_ids=ids, pixel_values=pixel_values).logits[0].float()
    n = len(teacher.answer_ids)
    assert ids[0, -n:].tolist() == teacher.answer_ids
    logp = torch.log_softmax(logits[-n - 1:-1], dim=-1)
    return logp[torch.arange(n), torch.tensor(teacher.answer_ids)].sum()


# ------------------------------------------------------------------ loading


def test_load_round_trip_and_special_tokens(tiny_dir, teacher):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["model_type"] == "internvl" and cfg["architectures"] == ["InternVLForConditionalGeneration"]
    tok = teacher.tokenizer
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == cfg["image_token_id"] == teacher.video_token_id
    assert (tok.start_image_token, tok.end_image_token, tok.context_image_token, tok.video_token) == (
        "<img>", "</img>", "<IMG_CONTEXT>", "<video>")
    assert len({tok.start_image_token_id, tok.end_image_token_id, tok.context_image_token_id}) == 3
    assert teacher.spec == tiles.TileSpec(tile=TILE, tokens_per_tile=4, min_tiles=1, max_tiles=12)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    again = load_teacher(tiny_dir)
    assert isinstance(again, InternVLTeacher)
    for (name, a), b in zip(teacher.base_state_dict().items(), again.base_state_dict().values()):
        assert torch.equal(a, b), name


def test_wrong_folders_raise_user_error(tmp_path, tiny_dir):
    with pytest.raises(UserError, match="not found"):
        InternVLTeacher.from_pretrained(tmp_path / "missing")
    chat = tmp_path / "chat"
    shutil.copytree(tiny_dir, chat)
    cfg = json.loads((chat / "config.json").read_text())
    (chat / "config.json").write_text(json.dumps(dict(cfg, model_type="internvl_chat")))
    with pytest.raises(UserError, match="internvl_chat.*-hf"):
        InternVLTeacher.from_pretrained(chat)
    with pytest.raises(UserError, match="internvl_chat.*not supported"):  # load_teacher: unknown -> the Qwen adapter's message
        load_teacher(chat)

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        load_teacher(pickled)

    wrong_token = tmp_path / "wrong_token"
    shutil.copytree(tiny_dir, wrong_token)
    (wrong_token / "config.json").write_text(json.dumps(dict(cfg, image_token_id=cfg["image_token_id"] - 1)))
    with pytest.raises(UserError, match="IMG_CONTEXT.*does not belong"):
        InternVLTeacher.from_pretrained(wrong_token)

    wrong_len = tmp_path / "wrong_len"
    shutil.copytree(tiny_dir, wrong_len)
    (wrong_len / "processor_config.json").write_text(json.dumps({"image_seq_length": 16}))
    with pytest.raises(UserError, match="image_seq_length 16"):
        InternVLTeacher.from_pretrained(wrong_len)


def test_chat_template_beside_the_processor_is_used(tmp_path, tiny_dir, teacher):
    folder = tmp_path / "template_apart"
    shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    template = cfg.pop("chat_template", None) or (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    loaded = InternVLTeacher.from_pretrained(folder)
    assert loaded.question_text("Is it ok?", 2) == teacher.question_text("Is it ok?", 2)


# ------------------------------------------------------------------ pixels


def test_video_frames_of_tile_size_equal_the_image_processor(image_processor):
    frames = _uint8_frames(4)
    ref = image_processor(list(frames), crop_to_patches=False, return_tensors="pt")["pixel_values"]
    ours = tiles.frames_to_tiles(_as_float(frames), tiles.TileSpec(tile=TILE, tokens_per_tile=4))
    assert ours.shape == ref.shape == (4, 3, TILE, TILE)
    assert (ours - ref).abs().max().item() < 1e-6


def _levels(ours: torch.Tensor, ref: torch.Tensor, spec: tiles.TileSpec) -> torch.Tensor:
    """|ours - ref| in uint8 levels (the normalisation undone, per channel)."""
    return (ours - ref).abs() * torch.tensor(spec.image_std).view(1, 3, 1, 1) * 255


def test_resized_video_frames_are_within_one_uint8_level(image_processor):
    """PIL rounds to uint8 between its two passes and at the end; the torch path does not.
    Measured: max 0.8-1.07 levels, mean 0.21-0.32 over these sizes."""
    spec = tiles.TileSpec(tile=TILE, tokens_per_tile=4)
    for h, w in ((64, 96), (40, 120), (112, 112), (200, 300)):  # shrink both, grow one, 2x, shrink more
        for blocky in (True, False):
            frames = _uint8_frames(2, h, w, seed=h)
            if blocky:  # hard edges
                frames = np.ascontiguousarray(np.kron(_uint8_frames(2, -(-h // 8), -(-w // 8), seed=w),
                                                      np.ones((1, 8, 8, 1), np.uint8))[:, :h, :w])
            ref = image_processor(list(frames), crop_to_patches=False, return_tensors="pt")["pixel_values"]
            levels = _levels(tiles.frames_to_tiles(_as_float(frames), spec), ref, spec)
            assert levels.max().item() <= 1.15 and levels.mean().item() <= 0.35, (h, w, blocky)


@pytest.mark.parametrize("h,w", [(TILE, TILE), (TILE, 2 * TILE), (3 * TILE, TILE), (70, 150)])
def test_image_tiles_follow_the_image_processor(image_processor, h, w):
    """The processor's tiling (crop_to_patches=True, as InternVLProcessor sets): same grid,
    same tile order, the thumbnail last; tiles exact where the image is the canvas size."""
    spec = tiles.TileSpec(tile=TILE, tokens_per_tile=4)
    rng = np.random.default_rng(h * w)
    image = np.kron(rng.integers(0, 256, (-(-h // 7), -(-w // 7), 3), dtype=np.uint8), np.ones((7, 7, 1), np.uint8))
    image = np.ascontiguousarray(image[:h, :w])
    ref = image_processor([image], crop_to_patches=True, return_tensors="pt")
    ours = tiles.image_to_tiles(image, spec)
    assert ours.shape[0] == int(ref["num_patches"][0]) == image_processor.get_number_of_image_patches(
        h, w, {"crop_to_patches": True})
    diff = (ours - ref["pixel_values"]).abs().amax(dim=(1, 2, 3))  # per tile
    cols, rows = tiles.image_grid(h, w, spec)
    if (rows * TILE, cols * TILE) == (h, w):
        assert diff[:rows * cols].max().item() < 1e-6
    assert _levels(ours, ref["pixel_values"], spec).max().item() <= 1.15


def test_pixel_path_is_differentiable():
    spec = tiles.TileSpec(tile=TILE, tokens_per_tile=4)
    frames = torch.rand(2, 3, 64, 96, requires_grad=True)
    tiles.frames_to_tiles(frames, spec).square().sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0 and torch.isfinite(frames.grad).all()


# ------------------------------------------------------------------ prompts and the reward


def test_prompts_follow_the_processor(teacher, processor):
    text = teacher.question_text("Is it ok?", 3)
    assert text.count("<img>") == 3 and text.count("<IMG_CONTEXT>") == 3 * teacher.spec.tokens_per_tile
    assert "Frame1: <img>" in text and "</img>\nFrame2: <img>" in text and "Frame3: <img>" in text
    assert text.endswith("Is it ok?\nAnswer with Yes or No.<|im_end|>\n<|im_start|>assistant\n")

    image = np.random.default_rng(1).integers(0, 256, (TILE, 2 * TILE, 3), dtype=np.uint8)
    ours = teacher.prompt_inputs("Describe the grid.", [image])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the grid."}]}]
    chat = teacher.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ref = processor(images=[image], text=[chat], return_tensors="pt")
    assert ours["input_ids"].tolist() == ref["input_ids"].tolist()
    assert ours["pixel_values"].shape == ref["pixel_values"].shape == (3, 3, TILE, TILE)  # 2 tiles + thumbnail
    assert (ours["pixel_values"][:2] - ref["pixel_values"][:2]).abs().max().item() < 1e-6


def test_yes_logprob_equals_a_plain_forward_through_the_processor(teacher, processor, image_processor):
    frames_u8 = _uint8_frames(3, seed=2)
    ref = torch.stack([_reference_logprob(teacher, processor, image_processor, frames_u8, q) for q in QUESTIONS])
    frames = _as_float(frames_u8)
    for batch_questions, share_prefix in ((True, True), (True, False), (False, False)):
        teacher.batch_questions, teacher.share_prefix = batch_questions, share_prefix
        try:
            got = teacher.yes_logprob(frames, QUESTIONS)
        finally:
            teacher.batch_questions, teacher.share_prefix = True, True
        assert got.shape == (3,) and got.dtype == torch.float32
        assert torch.allclose(got, ref, atol=TOL, rtol=0), (batch_questions, share_prefix, got, ref)
    assert (ref.max() - ref.min()).item() > 1e-3  # the questions are told apart


def test_the_answer_depends_on_each_frame_and_its_order(teacher):
    frames = _as_float(_uint8_frames(3, seed=3))
    base = teacher.yes_logprob(frames, QUESTIONS)
    swapped = teacher.yes_logprob(frames[[1, 0, 2]], QUESTIONS)
    changed = frames.clone()
    changed[2] = 1.0 - changed[2]
    assert (base - swapped).abs().max().item() > 1e-3
    assert (base - teacher.yes_logprob(changed, QUESTIONS)).abs().max().item() > 1e-3


def test_gradient_reaches_the_frames_only(teacher):
    grads = []
    for share_prefix in (True, False):
        teacher.share_prefix = share_prefix
        frames = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(4), requires_grad=True)
        try:
            teacher.yes_logprob(frames, QUESTIONS).sum().backward()
        finally:
            teacher.share_prefix = True
        grads.append(frames.grad)
    assert grads[0].abs().sum() > 0 and torch.isfinite(grads[0]).all()
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())


def test_grad_checkpointing_gives_the_same_values_and_gradient(teacher):
    frames = torch.rand(2, 3, TILE, TILE, generator=torch.Generator().manual_seed(5), requires_grad=True)
    plain = teacher.yes_logprob(frames, QUESTIONS[:2])
    (g_plain,) = torch.autograd.grad(plain.sum(), frames)
    teacher.grad_checkpointing = True
    try:
        ckpt = teacher.yes_logprob(frames, QUESTIONS[:2])
        (g_ckpt,) = torch.autograd.grad(ckpt.sum(), frames)
    finally:
        teacher.grad_checkpointing = False
    assert torch.allclose(plain, ckpt, atol=1e-6) and torch.allclose(g_plain, g_ckpt, atol=1e-6)


def test_score_and_no_grad_probabilities(teacher):
    from vlm_teacher.task import Queries

    frames = _as_float(_uint8_frames(2, seed=6))
    queries = Queries(goal=QUESTIONS[0], process=tuple(QUESTIONS[1:]))
    p = teacher.yes_prob_no_grad(frames, queries.all)
    assert not p.requires_grad and torch.allclose(p, teacher.yes_logprob(frames, queries.all).exp(), atol=1e-6)
    s = teacher.score(_uint8_frames(2, seed=6), queries, lam=0.5)
    assert s["p_yes"] == pytest.approx(p.tolist(), abs=1e-6)
    assert s["score"] == pytest.approx(0.5 * s["goal"] + 0.5 * sum(s["process"]) / 2)


# ------------------------------------------------------------------ generation


def test_generation_equals_model_generate_on_processor_inputs(teacher, processor):
    image = np.random.default_rng(7).integers(0, 256, (TILE, 2 * TILE, 3), dtype=np.uint8)
    prompt = "Propose questions."
    ours = teacher.generate_ids(prompt, [image], max_new_tokens=6)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    chat = teacher.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[chat], return_tensors="pt")
    with torch.no_grad():
        out = teacher.model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=teacher.pad_id,
                                     eos_token_id=[teacher.tokenizer.convert_tokens_to_ids("<|im_end|>")])
    assert ours == out[0, inputs["input_ids"].shape[1]:].tolist() and 1 <= len(ours) <= 6
    # the image matters to what is written
    other = teacher.generate_ids(prompt, [255 - image], max_new_tokens=6)
    assert other != ours or teacher.generate_ids(prompt, [], max_new_tokens=6) != ours


def test_propose_queries_uses_the_shared_prompt_and_falls_back(teacher, caplog, monkeypatch):
    import logging

    from vlm_teacher.teacher import common

    seen = []
    real = teacher.generate_text

    def spy(prompt, images=(), max_new_tokens=128):
        seen.append((prompt, len(images)))
        return real(prompt, images, max_new_tokens)

    monkeypatch.setattr(teacher, "generate_text", spy)
    with caplog.at_level(logging.WARNING, logger="vlm_teacher"):
        q = teacher.propose_queries("Move the agent.", _uint8_frames(1)[0], max_new_tokens=12)
    assert seen == [(common.query_prompt("Move the agent."), 1)]
    assert q.source == "fallback" and "did not parse" in caplog.text  # a random model writes no questions


# ------------------------------------------------------------------ sizes and cost


def test_internvl3_8b_preset_has_the_published_size():
    from vlm_teacher.perf.presets import count_parameters

    # InternViT-300M (304.0M) + projector (27.5M) + Qwen2.5-7B with InternVL's 151674-token vocabulary (7.61B)
    assert count_parameters("internvl3-8b") == pytest.approx(7.94e9, rel=0.01)


@pytest.mark.parametrize("shared", [False, True])
def test_flops_equal_torch_flop_counter(shared):
    from vlm_teacher.perf import flops as F
    from vlm_teacher.perf.presets import build_teacher
    from vlm_teacher.teacher.common import shared_prefix_length

    teacher = build_teacher("internvl3-tiny", seed=0)
    frames = torch.rand(5, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    teacher.share_prefix = shared
    counter = F.flop_counter()
    with counter, torch.no_grad():
        teacher.answer_logprob(frames, QUESTIONS)
    cfg = teacher.model.config
    grid = F.teacher_grid(teacher, 5, 64, 96)
    assert grid == (5, TILE // 14, TILE // 14)
    rows = F.teacher_rows(teacher, QUESTIONS, grid, 5)
    assert [len(r) for r in rows] == teacher.build_inputs(QUESTIONS, 5)["attention_mask"].sum(dim=1).tolist()
    vision = F.internvl_vision(cfg.vision_config.to_dict(), cfg.downsample_ratio, cfg.text_config.hidden_size, 5)
    n_ans = len(teacher.answer_ids)
    text = cfg.text_config.to_dict()
    if shared:  # an explicit mask makes the kernel compute the whole square: count it that way here
        prefix = shared_prefix_length(rows, n_ans)
        lm = F.qwen_language_shared(text, prefix, [len(r) - prefix for r in rows], n_ans, causal_half=False)
    else:
        lm = F.qwen_language(text, [max(len(r) for r in rows)] * len(rows), n_ans, causal_half=False)
    assert counter.get_total_flops() == pytest.approx((vision + lm).forward, rel=1e-9)


def test_tto_flops_and_a_meta_build_at_full_size():
    from vlm_teacher.perf import flops as F
    from vlm_teacher.perf.presets import build_teacher, build_wan_reasoner, random_prompt_embeds

    r = build_wan_reasoner("wan-tiny", seed=0)
    first = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    cond = r.prepare("a prompt", first, 0, num_frames=9, height=64, width=96, prompt_embeds=random_prompt_embeds(r))
    fl = F.tto_flops(r, build_teacher("internvl3-tiny"), cond.noise.shape, [0, 4, 8], QUESTIONS, 16, ("to_q",))
    assert fl["teacher_grid"] == [3, 4, 4] and fl["step"]["teacher_vision"].forward > 0
    big = build_teacher("internvl3-8b", "meta", torch.bfloat16)  # what analytic.py builds; no memory
    lens = F.teacher_lengths(big, QUESTIONS, F.teacher_grid(big, 24, 480, 832), 24)
    assert min(lens) > 24 * (256 + 2)  # 24 frames of 256 context tokens between <img> and </img>
    vision = F.internvl_vision(big.model.config.vision_config.to_dict(), 0.5, 3584, 24)
    # ~2 FLOPs per weight and token: the tower's 304.0M weights on 1025 tokens, the projector's 27.5M on 256
    assert vision.grad == pytest.approx(24 * 2 * (304.0e6 * 1025 + 27.5e6 * 256), rel=0.01)
    assert vision.attention == 24 * 24 * 4.0 * 1025 ** 2 * 1024
    with pytest.raises(UserError, match="one tile"):
        build_teacher("internvl3-tiny", max_pixels=4096)


# ------------------------------------------------------------------ the loop


def test_run_end_to_end_with_the_internvl_teacher(tiny_wan_dir, tiny_dir, first_frame_png, tmp_path):
    """`vlm-teacher run` with an InternVL folder as --teacher: queries written, steps taken, the
    teacher's P(Yes) in the history, the video written."""
    from vlm_teacher.cli import main
    from vlm_teacher.video import read_video

    out = tmp_path / "out"
    assert main(["run", "--reasoner", str(tiny_wan_dir), "--teacher", str(tiny_dir), "--prompt",
                 "Move the blue agent to the green square.", "--image", str(first_frame_png), "--out", str(out),
                 "--steps", "2", "--k", "3", "--quiet", "--tau", "-1"]) == 0
    hist = json.loads((out / "history.json").read_text())
    queries = json.loads((out / "queries.json").read_text())
    assert hist["steps"] == 2 and len(hist["history"][0]["p_yes"]) == 1 + len(queries["process"])
    assert all(0.0 < p < 1.0 for p in hist["history"][0]["p_yes"])
    assert read_video(out / "video.mp4").shape[-1] == 3
