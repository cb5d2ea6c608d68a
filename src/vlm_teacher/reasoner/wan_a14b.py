"""The Reasoner over a two-expert Wan2.2 folder (Wan2.2-T2V-A14B, Wan2.2-I2V-A14B).

As diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline`` with ``boundary_ratio``:
``transformer`` (the high-noise expert) denoises the steps whose timestep
``sigma * num_train_timesteps`` is at least ``boundary_ratio * num_train_timesteps``,
``transformer_2`` (low-noise) the rest. The paper's optimised step is the first
one (sigma = 1), which the high-noise expert runs, so the LoRA sits on
``transformer``; the final video runs both experts, the low-noise one unadapted.
The I2V-A14B folder uses Wan2.1's concat conditioning without a CLIP encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .base import Conditioning
from .wan import _has_safetensors, _load_component
from .wan21 import Wan21Reasoner


def json_value(value: Any) -> Any:
    """A config value as JSON would store it (tuples and lists compare equal)."""
    return list(value) if isinstance(value, (list, tuple)) else value


class WanA14BReasoner(Wan21Reasoner):
    """``Wan21Reasoner`` with the second, low-noise expert ``transformer_2``."""

    TWO_EXPERTS = True

    def __init__(self, transformer, vae, text_encoder, tokenizer, *, transformer_2, boundary_ratio: float,
                 **kwargs) -> None:
        self.transformer_2 = transformer_2
        self.boundary_ratio = float(boundary_ratio)
        super().__init__(transformer, vae, text_encoder, tokenizer, **kwargs)
        first, second = transformer.config, transformer_2.config
        mismatched = [k for k in ("in_channels", "out_channels", "patch_size", "text_dim")
                      if json_value(first[k]) != json_value(second[k])]
        if mismatched:
            raise UserError(f"{self.path or 'model'}: transformer and transformer_2 differ in {mismatched}")
        if not 0.0 < self.boundary_ratio <= 1.0:
            raise UserError(f"{self.path or 'model'}: boundary_ratio must be in (0, 1], got {boundary_ratio}")

    def _frozen_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return super()._frozen_modules() + [("transformer_2", self.transformer_2)]

    @classmethod
    def _load_extra(cls, root: Path, index: dict[str, Any], device: torch.device,
                    dtype: torch.dtype) -> dict[str, Any]:
        from diffusers import WanTransformer3DModel

        extra = super()._load_extra(root, index, device, dtype)
        ratio = index.get("boundary_ratio")
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool):
            raise UserError(f"{root}: a two-expert Wan folder needs a numeric boundary_ratio in model_index.json, "
                            f"got {ratio!r}")
        folder = root / "transformer_2"
        if not (folder / "config.json").is_file() or not _has_safetensors(folder):
            raise UserError(f"{root}: transformer_2/ needs config.json and .safetensors weights")
        second = _load_component("low-noise transformer", WanTransformer3DModel.from_pretrained, folder,
                                 torch_dtype=dtype)
        extra.update(transformer_2=second.to(device), boundary_ratio=float(ratio))
        return extra

    def _expert(self, sigma: float) -> torch.nn.Module:
        high = sigma * self.num_train_timesteps >= self.boundary_ratio * self.num_train_timesteps
        return self.transformer if high else self.transformer_2

    def experts(self, cond: Conditioning) -> list[str]:
        """Which expert runs each sampler step: "high" or "low"."""
        return ["high" if self._expert(s) is self.transformer else "low" for s in cond.extra["sigmas"][:-1]]

    def predict_x0(self, cond: Conditioning, mode: str = "first") -> torch.Tensor:
        """``WanReasoner.predict_x0``; "last" is refused when the last step runs the
        low-noise expert, which carries no LoRA (no gradient would reach it)."""
        if mode == "last" and self.lora_config is not None and self.experts(cond)[-1] == "low":
            raise UserError("x0 mode 'last': the last sampler step runs the low-noise expert (transformer_2), "
                            "which carries no LoRA; use mode 'first' or 'all'")
        return super().predict_x0(cond, mode)
