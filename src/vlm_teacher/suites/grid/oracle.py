"""An oracle teacher for the grid suite: the test-time loop's upper bound.

It has the Teacher interface the loop uses (``propose_queries``, ``yes_logprob``),
but instead of a VLM's answer its log P("Yes") is a dense, differentiable score of
the previewed frames against the task's ground-truth frames:

    log P(Yes | q) := -scale * mean((frames - ground_truth[frame_indices])^2)

for every question ``q`` (all questions get the same value, so the loss is the same
for every lambda). ``scale`` is set per task so that the loss is 1 on the frozen
reasoner's first-step preview (``calibrated``): tau and the learning rate then mean
the same on every task. The score is 0 (P(Yes) = 1) exactly on the ground truth.

Only the dense MSE is implemented. A soft reading of the verifier's rules (cell
colours read by softmax distances to the palette) was measured in issue 14 and
made the loop worse (preview pass 6% vs 44% for the MSE at lr 5e-4, 16 test tasks),
so it was left out.

The oracle sees the answer; it exists to split the gap frozen -> tto into what the
optimiser can deliver with a perfect reward (frozen -> tto_oracle) and what the
teacher costs (tto_oracle -> tto). It is never a method to ship.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ...errors import UserError
from ...task import Queries
from .generate import GridTask
from .questions import grid_queries


def ground_truth_frames(task: GridTask, frame_indices: Sequence[int]) -> torch.Tensor:
    """The task's solution video at ``frame_indices``: (K, 3, H, W) float32 in [0, 1]."""
    video = task.video()
    idx = [int(i) for i in frame_indices]
    if not idx or min(idx) < 0 or max(idx) >= len(video):
        raise ValueError(f"frame indices must be in [0, {len(video) - 1}], got {idx}")
    frames = torch.from_numpy(np.ascontiguousarray(video[idx])).permute(0, 3, 1, 2)
    return frames.float() / 255.0


class OracleTeacher:
    """A Teacher whose reward is the (scaled, negated) MSE to the ground-truth frames."""

    def __init__(self, task: GridTask, frame_indices: Sequence[int], scale: float = 1.0,
                 device: torch.device | str = "cpu") -> None:
        if not np.isfinite(scale) or scale <= 0:
            raise UserError(f"the oracle's scale must be a positive number, got {scale!r}")
        self.task = task
        self.device = torch.device(device)
        self.frame_indices = [int(i) for i in frame_indices]
        self.target = ground_truth_frames(task, self.frame_indices).to(self.device)
        self.scale = float(scale)

    def mse(self, frames: torch.Tensor) -> torch.Tensor:
        """Mean squared error of (K, 3, H, W) frames in [0, 1] against the ground truth (a scalar)."""
        if tuple(frames.shape) != tuple(self.target.shape):
            raise ValueError(f"the oracle compares frames of shape {tuple(self.target.shape)} "
                             f"(frames {self.frame_indices} of {self.task.id}), got {tuple(frames.shape)}")
        return (frames.float() - self.target.to(frames.device)).pow(2).mean()

    def calibrated(self, frozen_frames: torch.Tensor) -> "OracleTeacher":
        """This oracle with ``scale`` set so the loss is 1 on ``frozen_frames`` (the frozen preview)."""
        with torch.no_grad():
            err = float(self.mse(frozen_frames))
        if err <= 0.0:
            return self  # the frozen preview is the ground truth already: nothing to calibrate
        return OracleTeacher(self.task, self.frame_indices, 1.0 / err, self.device)

    # -- the Teacher interface ------------------------------------------------
    def propose_queries(self, prompt: str, first_frame: np.ndarray | None) -> Queries:
        """The grid suite's own questions for the task (no generation)."""
        return replace(grid_queries(self.task), source="oracle")

    def yes_logprob(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        if not questions:
            raise ValueError("no questions given")
        return (-self.scale * self.mse(frames)).reshape(1).expand(len(questions))

    def generate_text(self, prompt: str, images: Sequence[np.ndarray] = (), max_new_tokens: int = 128) -> str:
        raise UserError("the grid oracle only scores frames; it writes no text (use it with tto_oracle only)")

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        return {}
