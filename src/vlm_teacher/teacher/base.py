"""What the test-time loop, the methods and the benchmark need from a vision-language model (the Teacher)."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
import torch

from ..task import Queries


class Teacher(Protocol):
    """The whole contract between the callers and a VLM: an adapter implements every member.

    ``device`` is where the model runs. Frames are always (K, 3, H, W) float in [0, 1]
    (``score`` also takes uint8 (K, H, W, 3)); questions are ordered goal first
    (``Queries.all``)."""

    device: torch.device

    def propose_queries(self, prompt: str, first_frame: np.ndarray | None) -> Queries:
        """Write one goal and 1-3 process yes/no questions for the task (by generation).
        Falls back (logged, ``source="fallback"``) when the output does not parse."""

    def yes_logprob(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """log P("Yes") for each question about the same frames, differentiable in the
        frames. ``frames``: (K, 3, H, W) in [0, 1]. Returns shape (len(questions),).
        The vision tower runs once and its features are shared by all questions."""

    def yes_prob_no_grad(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """P("Yes") per question, shape (len(questions),), without building a graph."""

    def score(self, frames: torch.Tensor | np.ndarray, queries: Queries, lam: float = 0.5) -> dict[str, Any]:
        """The teacher's judgement of the K given frames (no grad): ``{"questions", "p_yes",
        "goal", "process", "score", "loss"}``; ``loss`` is the lambda-weighted -log P(Yes)
        that TTO minimises (``objective.weighted_loss``; best-of-N ranks by it), ``score``
        the lambda-weighted mean P(Yes) (for reading)."""

    def generate_text(self, prompt: str, images: Sequence[np.ndarray] = (),
                      max_new_tokens: int = 128) -> str:
        """Greedy text generation with optional images (uint8 H x W x 3): the solver's plan,
        VideoTPO's comparisons."""

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Every frozen weight, for integrity checks."""
