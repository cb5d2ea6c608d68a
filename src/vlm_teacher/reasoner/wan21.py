"""The Reasoner over a Wan2.1 folder: text-to-video, or concat-style image-to-video (Wan2.1-I2V-14B).

Text-to-video is ``WanPipeline`` with ``expand_timesteps`` off: no first frame (the
TI2V-style first-frame conditioning of ``WanReasoner`` is Wan2.2-TI2V-5B's, not Wan2.1's).
Image-to-video is ``WanImageToVideoPipeline`` with ``expand_timesteps`` off: the
transformer's input is 2 z_dim + 4 channels, the noisy latent, then a 4-channel
mask (1 on latent frame 0, the given frame), then the normalised VAE latent of
the pixel video [first frame, black, black, ...]. Wan2.1's transformer also
attends to the penultimate hidden states of a CLIP vision encoder over the first
frame (transformer config ``image_dim``; Wan2.2-I2V-A14B has none). Nothing is
pinned: latent frame 0 is predicted like the others. Sampler, preview, LoRA and
everything else are ``WanReasoner``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from . import flow
from .base import Conditioning
from .wan import DEFAULTS_FILE, WanReasoner, _as_rgb, _has_safetensors, _load_component

IMAGE_ENCODER_CLASSES = ("CLIPVisionModel", "CLIPVisionModelWithProjection")
#: WanAttnProcessor splits [CLIP states, text] assuming exactly this many text tokens
CLIP_TEXT_LENGTH = 512


class Wan21Reasoner(WanReasoner):
    """``WanReasoner`` without first-frame pinning: text-to-video when the transformer takes
    z_dim channels (no first frame), else Wan2.1's concat image conditioning (and its CLIP
    image encoder). The two-expert subclass reuses both for Wan2.2-T2V/I2V-A14B."""

    def __init__(self, transformer, vae, text_encoder, tokenizer, *, image_encoder=None,
                 image_processor=None, **kwargs) -> None:
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        super().__init__(transformer, vae, text_encoder, tokenizer, **kwargs)
        self.concat = int(transformer.config.in_channels) == self._concat_channels
        if transformer.config.image_dim is not None and (image_encoder is None or image_processor is None):
            raise UserError(f"{self.path or 'model'}: the transformer takes CLIP image states (image_dim "
                            f"{transformer.config.image_dim}) but the folder has no image_encoder/image_processor")
        if transformer.config.image_dim is not None and self.defaults.max_sequence_length != CLIP_TEXT_LENGTH:
            raise UserError(f"{self.path or 'model'}: max_sequence_length is {self.defaults.max_sequence_length}, "
                            f"but diffusers' Wan image cross-attention takes the last {CLIP_TEXT_LENGTH} context "
                            f"tokens as the text; set max_sequence_length {CLIP_TEXT_LENGTH} in {DEFAULTS_FILE}")

    @property
    def takes_first_frame(self) -> bool:
        """An image-to-video folder needs one, a text-to-video folder refuses it."""
        return self.concat

    @property
    def _concat_channels(self) -> int:
        return 2 * self.z_dim + self.scale_temporal

    def _check_channels(self, tcfg, path: Path | None) -> None:
        if (tcfg.out_channels or self.z_dim) != self.z_dim or tcfg.in_channels not in (self.z_dim,
                                                                                       self._concat_channels):
            raise UserError(f"{path or 'model'}: transformer in/out channels {tcfg.in_channels}/{tcfg.out_channels}; "
                            f"a Wan image-to-video model takes {self._concat_channels} in and gives "
                            f"{self.z_dim} out (VAE z_dim {self.z_dim})")

    def _frozen_modules(self) -> list[tuple[str, torch.nn.Module]]:
        extra = [("image_encoder", self.image_encoder)] if self.image_encoder is not None else []
        return super()._frozen_modules() + extra

    @classmethod
    def _load_extra(cls, root: Path, index: dict[str, Any], device: torch.device,
                    dtype: torch.dtype) -> dict[str, Any]:
        extra = super()._load_extra(root, index, device, dtype)
        entry = index.get("image_encoder")
        if not (isinstance(entry, list) and any(entry)):
            return extra
        import transformers

        name = entry[1] if len(entry) == 2 else None
        if name not in IMAGE_ENCODER_CLASSES:
            raise UserError(f"{root}: image_encoder must be one of {list(IMAGE_ENCODER_CLASSES)}, "
                            f"model_index.json says {entry!r}")
        folder = root / "image_encoder"
        if not (folder / "config.json").is_file() or not _has_safetensors(folder):
            raise UserError(f"{root}: image_encoder/ needs config.json and .safetensors weights")
        if not (root / "image_processor" / "preprocessor_config.json").is_file():
            raise UserError(f"{root}: image_processor/preprocessor_config.json is missing")
        encoder = _load_component("image encoder", getattr(transformers, name).from_pretrained, folder, dtype=dtype)
        try:
            processor = transformers.CLIPImageProcessor.from_pretrained(root / "image_processor")
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot load the image processor from {root / 'image_processor'}: "
                            f"{type(exc).__name__}: {exc}") from None
        extra.update(image_encoder=encoder.to(device), image_processor=processor)
        return extra

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_clip(self, rgb: np.ndarray) -> torch.Tensor:
        """CLIP's penultimate hidden states of the first frame, as the pipeline's ``encode_image``."""
        from PIL import Image

        inputs = self.image_processor(images=Image.fromarray(rgb), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.image_encoder.dtype)
        return self.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].to(self._dtype)

    @torch.no_grad()
    def encode_condition(self, rgb: np.ndarray, num_frames: int, height: int, width: int) -> torch.Tensor:
        """(1, 4 + z_dim, T, h, w): the first-frame mask, then the normalised latent of
        [first frame, num_frames - 1 black frames]."""
        pixels = self.image_pixels(rgb, height, width)
        video = torch.cat([pixels, pixels.new_zeros(1, 3, num_frames - 1, height, width)], dim=2)
        z = self._normalise(self.vae.encode(video).latent_dist.mode().float())
        mask = torch.zeros(1, self.scale_temporal, *z.shape[2:], device=z.device)
        mask[:, :, 0] = 1.0
        return torch.cat([mask, z], dim=1)

    def prepare(self, prompt: str, first_frame: np.ndarray | None, seed: int, *,
                num_frames: int | None = None, height: int | None = None, width: int | None = None,
                steps: int | None = None, prompt_embeds: torch.Tensor | None = None) -> Conditioning:
        """``WanReasoner.prepare`` plus the concat condition and CLIP states of ``first_frame``
        (required by an image-to-video folder, refused by a text-to-video one)."""
        what = self.path or "this model"
        if not self.concat:
            if first_frame is not None:
                raise UserError(f"{what} is a text-to-video checkpoint: it takes no first frame")
            return super().prepare(prompt, None, seed, num_frames=num_frames, height=height, width=width,
                                   steps=steps, prompt_embeds=prompt_embeds)
        if first_frame is None:
            raise UserError(f"{what} is an image-to-video checkpoint: give a first frame")
        rgb = _as_rgb(first_frame)
        height, width = self._resolve_size(rgb, height, width)
        cond = super().prepare(prompt, None, seed, num_frames=num_frames, height=height, width=width,
                               steps=steps, prompt_embeds=prompt_embeds)
        cond.extra["condition"] = self.encode_condition(rgb, cond.num_frames, height, width).to(self._dtype)
        cond.extra["image_embeds"] = self.encode_clip(rgb) if self.image_encoder is not None else None
        return cond

    # ------------------------------------------------------------------ denoising
    def _expert(self, sigma: float) -> torch.nn.Module:
        """The transformer that denoises at ``sigma`` (one here; two for Wan2.2 A14B)."""
        return self.transformer

    def _velocity(self, x_t: torch.Tensor, sigma: float, cond: Conditioning) -> torch.Tensor:
        x_in = x_t.to(self._dtype)
        kwargs = {}
        if self.concat:
            x_in = torch.cat([x_in, cond.extra["condition"]], dim=1)
            kwargs["encoder_hidden_states_image"] = cond.extra["image_embeds"]
        t = flow.timesteps(sigma, self.num_train_timesteps, None, device=self.device)
        return self._expert(sigma)(hidden_states=x_in, timestep=t,
                                   encoder_hidden_states=cond.extra["prompt_embeds"], return_dict=False,
                                   **kwargs)[0]

