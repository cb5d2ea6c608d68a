"""What the test-time loop needs from a vision-language model (the Teacher)."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

from ..task import Queries


class Teacher(Protocol):
    device: torch.device

    def propose_queries(self, prompt: str, first_frame: np.ndarray | None) -> Queries:
        """Write one goal and 1-3 process yes/no questions for the task (by generation).
        Falls back (logged, ``source="fallback"``) when the output does not parse."""

    def yes_logprob(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """log P("Yes") for each question about the same frames, differentiable in the
        frames. ``frames``: (K, 3, H, W) in [0, 1]. Returns shape (len(questions),).
        The vision tower runs once and its features are shared by all questions."""

    def generate_text(self, prompt: str, images: Sequence[np.ndarray] = (),
                      max_new_tokens: int = 128) -> str:
        """Greedy text generation with optional images (uint8 H x W x 3)."""

    def base_state_dict(self) -> dict[str, torch.Tensor]: ...
