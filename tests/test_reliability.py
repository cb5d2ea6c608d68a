"""Numerical faults and bad input in the test-time loop: a NaN loss or gradient skips
that step (recorded) and the instance still finishes; out-of-memory becomes a clear
error with a hint. Faults are injected into the REAL tiny teacher's output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlm_teacher.errors import UserError
from vlm_teacher.optimize import OutOfMemory, TTOConfig, teach
from vlm_teacher.reasoner import load_reasoner
from vlm_teacher.task import MAX_PROMPT_CHARS, Queries, Task
from vlm_teacher.teacher import load_teacher

QUERIES = Queries(goal="Is the goal reached?", process=("Is the motion valid?",))


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class FaultyTeacher:
    """The real teacher with one fault injected at chosen calls of yes_logprob."""

    def __init__(self, teacher, fault: str, at_calls: set[int]):
        self.teacher, self.fault, self.at_calls, self.calls = teacher, fault, at_calls, 0

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def yes_logprob(self, frames, questions):
        self.calls += 1
        if self.calls in self.at_calls:
            if self.fault == "nan_loss":
                return self.teacher.yes_logprob(frames, questions) * float("nan")
            if self.fault == "nan_grad":
                return self.teacher.yes_logprob(_NanGradient.apply(frames), questions)
            if self.fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.teacher.yes_logprob(frames, questions)


@pytest.fixture(scope="module")
def models(tiny_wan_dir, tiny_qwen25_dir):
    return load_reasoner(tiny_wan_dir), load_teacher(tiny_qwen25_dir)


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(1)
    return Task(id="faulty", prompt="Move the agent to the red square.",
                first_frame=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("fault,reason", [("nan_loss", "non-finite loss"), ("nan_grad", "non-finite gradient")])
def test_non_finite_step_is_skipped_and_recorded(models, task, fault, reason):
    reasoner, teacher = models
    cfg = TTOConfig(tau=-1.0, max_steps=3, num_frames_shown=3, lr=1e-2)
    res = teach(reasoner, FaultyTeacher(teacher, fault, {2}), task, cfg, queries=QUERIES, progress=False)
    assert res.steps == 3 and res.updates == 2
    assert res.history[1]["skipped"] == reason
    assert "skipped" not in res.history[0] and "skipped" not in res.history[2]
    assert math.isfinite(res.history[2]["loss"])
    assert torch.isfinite(res.video).all()
    lora = [p for n, p in reasoner.transformer.named_parameters() if "lora_" in n]
    assert lora and all(torch.isfinite(p).all() for p in lora), "a NaN reached the LoRA weights"


def test_out_of_memory_becomes_a_hint(models, task):
    reasoner, teacher = models
    with pytest.raises(OutOfMemory) as err:
        teach(reasoner, FaultyTeacher(teacher, "oom", {1}), task, TTOConfig(max_steps=2, num_frames_shown=3),
              queries=QUERIES, progress=False)
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    assert "out of memory" in msg and "--k" in msg and "checkpointing" in msg


@pytest.mark.parametrize("prompt,frame,fragment", [
    ("", None, "prompt is empty"),
    ("   ", None, "prompt is empty"),
    ("x" * (MAX_PROMPT_CHARS + 1), None, "characters"),
    ("ok", np.zeros((0, 8, 3), np.uint8), "empty"),
    ("ok", np.zeros((32, 32), np.uint8), "H x W x 3"),
    ("ok", np.zeros((32, 32, 3), np.float32), "uint8"),
])
def test_bad_task_input_names_the_problem(prompt, frame, fragment):
    with pytest.raises(UserError, match=fragment):
        Task(id="bad", prompt=prompt, first_frame=frame)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "CMYK", "1"])
def test_images_of_any_mode_and_odd_size_reach_the_reasoner(tmp_path, mode, models):
    """A first frame in any PIL mode and an odd size is read as RGB and resized by the reasoner."""
    from PIL import Image

    from vlm_teacher.video import read_image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))
    path = tmp_path / f"odd.{'tiff' if mode in ('I;16', 'CMYK') else 'png'}"
    rgb.convert(mode).save(path)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (23, 37, 3)
    reasoner, _ = models
    cond = reasoner.prepare("Move the agent to the red square.", image, 0)
    assert (cond.height, cond.width) == (64, 64)  # the tiny pipeline's size (vlm_teacher.json)
