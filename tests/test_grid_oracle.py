"""The grid oracle teacher (tto_oracle's reward): zero loss on the ground truth, a gradient
in the frames, calibration to 1 on the frozen preview, and real LoRA updates on a tiny
random reasoner that bring the preview closer to the ground truth."""

from __future__ import annotations

import pytest
import torch

from vlm_teacher.errors import UserError
from vlm_teacher.optimize import TTOConfig, teach, weighted_loss
from vlm_teacher.reasoner import load_reasoner
from vlm_teacher.reasoner.base import uniform_frame_indices
from vlm_teacher.suites.grid import grid_tasks
from vlm_teacher.suites.grid.oracle import OracleTeacher, ground_truth_frames


@pytest.fixture(scope="module")
def grid_task():
    return grid_tasks("test", n=1)[0]


def test_loss_is_zero_on_the_ground_truth_and_positive_elsewhere(grid_task):
    idx = [0, 3, 8]
    oracle = OracleTeacher(grid_task, idx, scale=5.0)
    queries = oracle.propose_queries(grid_task.prompt, None)
    truth = ground_truth_frames(grid_task, idx)
    assert truth.shape == (3, 3, 96, 96) and float(truth.max()) <= 1.0
    logp = oracle.yes_logprob(truth, queries.all)
    assert logp.shape == (len(queries.all),) and torch.all(logp == 0)
    noisy = (truth + 0.1 * torch.randn_like(truth)).clamp(0, 1)
    assert float(weighted_loss(oracle.yes_logprob(noisy, queries.all), 0.5)) > 0.01


def test_the_oracle_is_differentiable_and_calibrates_to_one(grid_task):
    idx = uniform_frame_indices(grid_task.num_frames, 24)
    truth = ground_truth_frames(grid_task, idx)
    frozen = (truth * 0.5 + 0.25).requires_grad_(True)
    oracle = OracleTeacher(grid_task, idx).calibrated(frozen.detach())
    loss = -oracle.yes_logprob(frozen, ["q"])[0]
    assert float(loss.detach()) == pytest.approx(1.0, rel=1e-5)
    loss.backward()
    assert frozen.grad is not None and float(frozen.grad.abs().sum()) > 0
    # the gradient points towards the ground truth: a small step along -grad lowers the loss
    stepped = (frozen - 1e3 * frozen.grad).detach()
    assert float(-oracle.yes_logprob(stepped, ["q"])[0]) < 1.0


def test_bad_use_is_refused(grid_task):
    oracle = OracleTeacher(grid_task, [0, 1])
    with pytest.raises(ValueError, match="shape"):
        oracle.yes_logprob(torch.zeros(3, 3, 96, 96), ["q"])
    with pytest.raises(UserError, match="scale"):
        OracleTeacher(grid_task, [0], scale=0.0)
    with pytest.raises(UserError, match="writes no text"):
        oracle.generate_text("plan this")


def test_oracle_updates_bring_a_tiny_reasoner_closer_to_the_ground_truth(tiny_wan_dir, grid_task):
    reasoner = load_reasoner(tiny_wan_dir)
    task = grid_task.to_task()
    shape = grid_task.video_shape()
    cond = reasoner.prepare(task.prompt, task.first_frame, 0, **shape)
    idx = uniform_frame_indices(cond.num_frames, 24)
    with torch.no_grad():
        frozen = reasoner.preview(reasoner.predict_x0(cond), idx)
    oracle = OracleTeacher(grid_task, idx).calibrated(frozen)
    try:
        result = teach(reasoner, oracle, task, TTOConfig(lr=3e-2, fixed_steps=6, lam=1.0), seed=0,
                       queries=oracle.propose_queries(task.prompt, None), progress=False, **shape)
        losses = [h["loss"] for h in result.history]
        assert losses[0] == pytest.approx(1.0, rel=1e-4)  # a fresh LoRA is the frozen reasoner
        with torch.no_grad():
            adapted = reasoner.preview(reasoner.predict_x0(cond), idx)
        assert float(oracle.mse(adapted)) < 0.99 * float(oracle.mse(frozen))
        assert losses[-1] < losses[0]
        assert result.updates == 6
    finally:
        reasoner.remove_lora()
