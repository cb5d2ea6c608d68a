"""What the test-time loop needs from a video generation model (the Reasoner)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from ..errors import UserError

#: how the latent that the teacher sees is produced (docs/method.md, ablations)
X0_MODES = ("first", "last", "all")


@dataclass
class Conditioning:
    """Everything fixed for one instance: text embedding, first-frame latent and
    the noise ``eps`` that is reused at every optimisation step and for the final
    video. ``extra`` holds adapter-specific tensors."""

    prompt: str
    seed: int
    num_frames: int
    height: int
    width: int
    noise: torch.Tensor
    extra: dict[str, Any]
    #: transformer calls of one few-step sample from this conditioning (``prepare(steps=...)``
    #: or the model's default): what every cost count reads
    steps: int


class Reasoner(Protocol):
    """The whole contract between the loop, the methods, the benchmark and a video model.

    Attributes and properties every adapter provides:

    * ``device`` - where the models run;
    * ``fps`` - frames per second of the videos it makes (written into video files);
    * ``sampler_steps`` - transformer calls of one default few-step sample
      (``prepare`` without ``steps``); the prepared value is ``Conditioning.steps``;
    * ``lora_config`` - ``{"rank", "alpha", "targets", "seed"}`` of the attached LoRA, None
      when none is attached;
    * ``sync_grad_norm`` - a speed switch beside the adapter's others (see
      ``optimize.GradNormGuard``): False (default) keeps one host-device sync per
      optimisation step, True reads the gradient norm right after backward (two syncs).
    """

    device: torch.device
    sync_grad_norm: bool

    @property
    def fps(self) -> int: ...

    @property
    def sampler_steps(self) -> int: ...

    @property
    def lora_config(self) -> dict[str, Any] | None: ...

    def prepare(self, prompt: str, first_frame: np.ndarray | None, seed: int, *,
                num_frames: int | None = None, height: int | None = None,
                width: int | None = None) -> Conditioning:
        """Encode text and first frame once and draw the fixed noise; ``num_frames`` must be
        4k+1 (``check_num_frames``). The returned ``Conditioning.steps`` is the sampler's."""

    def predict_x0(self, cond: Conditioning, mode: str = "first") -> torch.Tensor:
        """The clean latent the teacher judges, with gradients to the LoRA only.
        ``first``: one model call at sigma=1 from the fixed noise (the paper);
        ``last``: run the sampler without grad up to the last step, grad there;
        ``all``: the whole few-step sampler with grad (memory heavy)."""

    def preview(self, latent: torch.Tensor, frame_indices: Sequence[int]) -> torch.Tensor:
        """Differentiable decode of only the requested frames: (K, 3, H, W) in [0, 1]."""

    def generate(self, cond: Conditioning) -> torch.Tensor:
        """The final video (few-step sampler + full decode, no grad): (F, 3, H, W) in [0, 1]."""

    def add_lora(self, rank: int = 16, alpha: float | None = None,
                 targets: Sequence[str] | None = None, seed: int = 0) -> list[torch.nn.Parameter]:
        """Attach a fresh LoRA (replacing any previous one); return its trainable parameters."""

    def remove_lora(self) -> None:
        """Drop the adapter (a no-op without one): the model computes exactly the base model."""

    def save_lora(self, path: str | Path) -> Path: ...

    def load_lora(self, path: str | Path) -> None: ...

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Every frozen (non-LoRA) weight, for integrity checks."""


#: the longest video any adapter takes: Wan's rotary table covers 1024 latent frames (4x time
#: compression); a model may allow fewer (``WanReasoner.prepare`` checks its own table)
MAX_NUM_FRAMES = 4 * 1023 + 1


def check_num_frames(num_frames: int | None, temporal: int = 4, what: str = "--frames") -> None:
    """The one video-length rule: ``temporal``k+1 frames (the causal video VAEs compress time
    ``temporal``x after the first frame), at most ``MAX_NUM_FRAMES``. None (the model's default) passes."""
    if num_frames is not None and (num_frames < 1 or (num_frames - 1) % temporal):
        raise UserError(f"{what} must be {temporal}k+1 (e.g. 9, 17, 89): the video VAE compresses time "
                        f"{temporal}x after the first frame; got {num_frames}")
    if num_frames is not None and num_frames > MAX_NUM_FRAMES:
        raise UserError(f"{what} {num_frames} is more than the {MAX_NUM_FRAMES} frames the supported video "
                        f"models can place in time; give a shorter video")


def uniform_frame_indices(num_frames: int, k: int) -> list[int]:
    """K frame indices spread uniformly over [0, num_frames - 1], first and last included.
    K >= num_frames gives every frame once."""
    if num_frames <= 0:
        raise ValueError("num_frames must be positive")
    if k >= num_frames:
        return list(range(num_frames))
    if k == 1:
        return [num_frames - 1]
    return sorted({round(i * (num_frames - 1) / (k - 1)) for i in range(k)})


@functools.lru_cache(maxsize=256)
def _device_index(indices: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(indices, dtype=torch.long, device=device)


def device_index(indices: Sequence[int], device: torch.device) -> torch.Tensor:
    """Frame indices as a long tensor on ``device``, made once per (indices, device): indexing a
    GPU tensor with a Python list copies the list to the device, a host-device sync, every step."""
    return _device_index(tuple(int(i) for i in indices), torch.device(device))
