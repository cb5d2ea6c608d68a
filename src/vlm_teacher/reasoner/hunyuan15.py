"""The Reasoner over a diffusers HunyuanVideo-1.5 folder (text-to-video and image-to-video).

As diffusers' ``HunyuanVideo15Pipeline`` / ``HunyuanVideo15ImageToVideoPipeline``
(their static encoders are called as they are):

- text: the Qwen2.5-VL text model's third-to-last hidden states over the chat
  template with the pipeline's system message, its first 108 tokens cropped,
  plus ByT5 states of the quoted (glyph) text, zeros with a zero mask if none;
- latents: 32 channels (the VAE's ``latent_channels``), normalised by
  ``z * scaling_factor`` (no per-channel mean/std), 16x spatial, 4x temporal;
- the transformer's input is [noisy latent, condition latent, mask] on channels:
  zeros for T2V; for I2V the scaled VAE latent of the (bucket-resized, centre-
  cropped) first frame in latent frame 0 with mask 1 there; I2V also feeds the
  SigLIP states of that frame (T2V: 729 zero tokens); nothing is pinned;
- sampler: flow-matching Euler at ``shifted_sigmas(steps, shift)``, the
  pipeline's ``linspace(1, 0, steps + 1)[:-1]`` bent by the scheduler's shift;
  meanflow I2V checkpoints also get the next timestep (``timestep_r``), as the
  I2V pipeline gives them; the conditional prediction only (guidance 1, as
  step-distilled checkpoints are run).

The VAE is causal in time (causal convolutions, causally masked attention) but
decodes the whole clip in one pass, so ``vae_checkpointing`` uses diffusers'
per-block gradient checkpointing of its decoder (there is no per-frame cache
to checkpoint, unlike Wan's). Everything else is ``WanReasoner``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from . import flow
from .base import Conditioning
from .wan import (DEFAULTS_FILE, WanDefaults, WanReasoner, _as_rgb, _has_safetensors, _load_component,
                  _read_flow_shift, read_index)

HUNYUAN_PIPELINE_CLASSES = ("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline")
TEXT_ENCODER_CLASSES = ("Qwen2_5_VLTextModel",)
REQUIRED_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                       "scheduler")
WEIGHT_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")
I2V_COMPONENTS = ("image_encoder", "feature_extractor")

#: LoRA targets in the 54 double-stream blocks: image-stream and text-stream projections
ATTENTION_TARGETS = tuple(f"attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0",
                                                "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"))
FFN_TARGETS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
TARGET_GROUPS = {"attn": ATTENTION_TARGETS, "ffn": FFN_TARGETS, "all": ATTENTION_TARGETS + FFN_TARGETS}
#: the text token refiner has attn/ff modules of the same names; it is left alone
EXCLUDE_TEXT_REFINER = r".*context_embedder\..*"
#: the pipeline's zero image tokens for text-to-video (``vision_num_semantic_tokens``)
T2V_IMAGE_TOKENS = 729
BYT5_LENGTH = 256  # the pipeline's tokenizer_2_max_length
T2V_ASPECT = (9, 16)  # the pipeline's default (height, width) ratio without an image


@dataclass(frozen=True)
class HunyuanDefaults(WanDefaults):
    """HunyuanVideo-1.5's generation defaults (121 frames at 24 fps, 1000 text tokens);
    ``steps`` 8: the step-distilled 480p checkpoints' recommended count (recalled, not read)."""

    num_frames: int = 121
    steps: int = 8
    fps: int = 24
    max_sequence_length: int = 1000


def _read_index(root: Path) -> dict[str, Any]:
    """Validate a HunyuanVideo-1.5 folder before any weight is touched."""
    index = read_index(root, "HunyuanVideo-1.5", HUNYUAN_PIPELINE_CLASSES)
    i2v = index["_class_name"] == HUNYUAN_PIPELINE_CLASSES[1]
    for name in REQUIRED_COMPONENTS + (I2V_COMPONENTS if i2v else ()):
        if not (root / name).is_dir():
            raise UserError(f"{root} is not a complete HunyuanVideo-1.5 pipeline: the {name}/ folder is missing")
    for name in WEIGHT_COMPONENTS + (("image_encoder",) if i2v else ()):
        if not (root / name / "config.json").is_file():
            raise UserError(f"{root}: {name}/config.json is missing")
        if not _has_safetensors(root / name):
            raise UserError(f"{root}: {name}/ has no .safetensors weights (only safetensors are loaded)")
    entry = index.get("text_encoder") or [None, None]
    if not isinstance(entry, list) or entry[-1] not in TEXT_ENCODER_CLASSES:
        raise UserError(f"{root}: text_encoder must be one of {list(TEXT_ENCODER_CLASSES)}, "
                        f"model_index.json says {entry!r}")
    return index


class HunyuanVideo15Reasoner(WanReasoner):
    """The Reasoner protocol over a HunyuanVideo-1.5 T2V or I2V folder (see the module docstring).

    ``image_to_video`` is True for an I2V folder: ``prepare`` then needs a first frame."""

    LORA_TARGET_GROUPS = TARGET_GROUPS
    LORA_EXCLUDE = EXCLUDE_TEXT_REFINER

    def __init__(self, transformer, vae, text_encoder, tokenizer, *, text_encoder_2, tokenizer_2,
                 image_encoder=None, feature_extractor=None, image_to_video: bool = False, **kwargs) -> None:
        from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.image_to_video = bool(image_to_video)
        if self.image_to_video and (image_encoder is None or feature_extractor is None):
            raise UserError("a HunyuanVideo-1.5 image-to-video reasoner needs image_encoder and feature_extractor")
        kwargs.setdefault("defaults", HunyuanDefaults())
        super().__init__(transformer, vae, text_encoder, tokenizer, **kwargs)
        self.image_processor = HunyuanVideo15ImageProcessor(vae_scale_factor=self.scale_spatial,
                                                            do_resize=False, do_convert_rgb=True)

    @property
    def takes_first_frame(self) -> bool:
        return self.image_to_video

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _latent_layout(vae, transformer):
        vcfg, tcfg = vae.config, transformer.config
        z = int(vcfg.latent_channels)
        return (z, int(vcfg.spatial_compression_ratio), int(vcfg.temporal_compression_ratio),
                (int(tcfg.patch_size_t), int(tcfg.patch_size), int(tcfg.patch_size)),
                [0.0] * z, [1.0 / float(vcfg.scaling_factor)] * z)

    def _check_channels(self, tcfg, path: Path | None) -> None:
        if tcfg.in_channels != 2 * self.z_dim + 1 or tcfg.out_channels != self.z_dim:
            raise UserError(f"{path or 'model'}: transformer in/out channels {tcfg.in_channels}/{tcfg.out_channels}; "
                            f"HunyuanVideo-1.5 takes {2 * self.z_dim + 1} in and gives {self.z_dim} out "
                            f"(VAE latent_channels {self.z_dim})")

    def _frozen_modules(self) -> list[tuple[str, torch.nn.Module]]:
        extra = [("text_encoder_2", self.text_encoder_2), ("image_encoder", self.image_encoder)]
        return super()._frozen_modules() + [(n, m) for n, m in extra if m is not None]

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None,
                        vae_dtype: torch.dtype | None = None) -> "HunyuanVideo15Reasoner":
        """Load a diffusers HunyuanVideo-1.5 folder (safetensors only, nothing downloaded);
        dtypes as ``WanReasoner.from_pretrained``."""
        from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel
        from transformers import AutoTokenizer, Qwen2_5_VLTextModel, T5EncoderModel
        import transformers

        root = Path(path).expanduser()
        index = _read_index(root)
        flow_shift, num_train_timesteps = _read_flow_shift(root)
        defaults = HunyuanDefaults.from_file(root / DEFAULTS_FILE)
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        i2v = index["_class_name"] == HUNYUAN_PIPELINE_CLASSES[1]
        modules = {
            "transformer": _load_component("transformer", HunyuanVideo15Transformer3DModel.from_pretrained,
                                           root / "transformer", torch_dtype=dtype),
            "vae": _load_component("VAE", AutoencoderKLHunyuanVideo15.from_pretrained, root / "vae",
                                   torch_dtype=vae_dtype or torch.float32),
            "text_encoder": _load_component("text encoder", Qwen2_5_VLTextModel.from_pretrained,
                                            root / "text_encoder", dtype=dtype),
            "text_encoder_2": _load_component("glyph text encoder (ByT5)", T5EncoderModel.from_pretrained,
                                              root / "text_encoder_2", dtype=dtype),
        }
        if i2v:
            modules["image_encoder"] = _load_component("image encoder (SigLIP)",
                                                       transformers.SiglipVisionModel.from_pretrained,
                                                       root / "image_encoder", dtype=dtype)
        tokenizers = {}
        for name, loader in (("tokenizer", AutoTokenizer.from_pretrained),
                             ("tokenizer_2", AutoTokenizer.from_pretrained),
                             ("feature_extractor", transformers.SiglipImageProcessor.from_pretrained)):
            if name == "feature_extractor" and not i2v:
                continue
            try:
                tokenizers[name] = loader(root / name)
            except Exception as exc:  # noqa: BLE001
                raise UserError(f"cannot load the {name} from {root / name}: {type(exc).__name__}: {exc}") from None
        for module in modules.values():
            module.to(device)
        return cls(**modules, **tokenizers, image_to_video=i2v, flow_shift=flow_shift,
                   num_train_timesteps=num_train_timesteps, defaults=defaults, device=device, path=root)

    # ------------------------------------------------------------------ conditioning
    def _resolve_size(self, first_frame: np.ndarray | None, height: int | None,
                      width: int | None) -> tuple[int, int]:
        """Given sizes (or the folder's defaults) win; else the pipeline's bucket of
        ``target_size`` closest to the first frame's aspect ratio (9:16 without one)."""
        if height is None and width is None and self.defaults.height is None and self.defaults.width is None:
            h, w = first_frame.shape[:2] if first_frame is not None else T2V_ASPECT
            h, w = self.image_processor.calculate_default_height_width(h, w, self.transformer.config.target_size)
            return int(h), int(w)
        return super()._resolve_size(first_frame, height, width)

    def _encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        """The pipeline's ``encode_prompt``: Qwen2.5-VL states and mask, ByT5 glyph states and mask
        (``encode_text`` caches it as ``WanReasoner``'s)."""
        from diffusers import HunyuanVideo15Pipeline as Pipe

        embeds, mask = Pipe._get_mllm_prompt_embeds(self.text_encoder, self.tokenizer, [prompt], self.device,
                                                    tokenizer_max_length=self.defaults.max_sequence_length)
        embeds_2, mask_2 = Pipe._get_byt5_prompt_embeds(self.tokenizer_2, self.text_encoder_2, [prompt],
                                                        self.device, tokenizer_max_length=BYT5_LENGTH)
        return self._check_embeds({"embeds": embeds, "mask": mask, "embeds_2": embeds_2, "mask_2": mask_2})

    def _check_embeds(self, embeds: Any) -> dict[str, torch.Tensor]:
        """``prompt_embeds`` for HunyuanVideo-1.5: a dict of embeds (1, L, text_embed_dim), mask (1, L),
        embeds_2 (1, L2, text_embed_2_dim), mask_2 (1, L2)."""
        cfg = self.transformer.config
        dims = {"embeds": cfg.text_embed_dim, "embeds_2": cfg.text_embed_2_dim}
        ok = isinstance(embeds, dict) and set(embeds) == {"embeds", "mask", "embeds_2", "mask_2"} and all(
            isinstance(v, torch.Tensor) and v.shape[0] == 1 for v in embeds.values()) and all(
            embeds[k].ndim == 3 and embeds[k].shape[2] == d and embeds[k.replace("embeds", "mask")].shape
            == embeds[k].shape[:2] for k, d in dims.items())
        if not ok:
            raise UserError(f"prompt_embeds must be a dict of embeds (1, L, {dims['embeds']}), mask (1, L), "
                            f"embeds_2 (1, L2, {dims['embeds_2']}) and mask_2 (1, L2) tensors")
        return {k: v.to(self.device, self._dtype) for k, v in embeds.items()}

    def _cropped_image(self, rgb: np.ndarray, height: int, width: int):
        """The first frame resized and centre-cropped to (height, width), as the I2V pipeline does."""
        from PIL import Image

        return self.image_processor.resize(Image.fromarray(rgb), height=height, width=width, resize_mode="crop")

    def prepare(self, prompt: str, first_frame: np.ndarray | None, seed: int, *,
                num_frames: int | None = None, height: int | None = None, width: int | None = None,
                steps: int | None = None, prompt_embeds: dict[str, torch.Tensor] | None = None) -> Conditioning:
        """Encode text (and, for I2V, the first frame) once; draw the fixed noise from a CPU
        ``torch.Generator(seed)``. ``prompt_embeds``: see ``_check_embeds``."""
        from diffusers import HunyuanVideo15ImageToVideoPipeline as Pipe

        what = self.path or "this model"
        if self.image_to_video and first_frame is None:
            raise UserError(f"{what} is an image-to-video checkpoint: give a first frame")
        if not self.image_to_video and first_frame is not None:
            raise UserError(f"{what} is a text-to-video checkpoint: it takes no first frame")
        rgb = _as_rgb(first_frame) if first_frame is not None else None
        height, width = self._resolve_size(rgb, height, width)
        cond = super().prepare(prompt, None, seed, num_frames=num_frames, height=height, width=width,
                               steps=steps, prompt_embeds=prompt_embeds)
        _, _, frames, h, w = cond.noise.shape
        cond_latents = torch.zeros(1, self.z_dim, frames, h, w, device=self.device, dtype=self._dtype)
        mask = torch.zeros(1, 1, frames, h, w, device=self.device, dtype=self._dtype)
        if rgb is None:
            image_embeds = torch.zeros(1, T2V_IMAGE_TOKENS, self.transformer.config.image_embed_dim,
                                       device=self.device, dtype=self._dtype)
        else:
            image = self._cropped_image(rgb, height, width)
            with torch.no_grad():
                latent = Pipe._get_image_latents(self.vae, self.image_processor, image, height, width, self.device)
                image_embeds = Pipe._get_image_embeds(self.image_encoder, self.feature_extractor, image, self.device)
            cond_latents[:, :, :1] = latent.to(self._dtype)
            mask[:, :, 0] = 1.0
            image_embeds = image_embeds.to(self._dtype)
        cond.extra.update(cond_latents=cond_latents, cond_mask=mask, image_embeds=image_embeds)
        return cond

    # ------------------------------------------------------------------ denoising
    def _velocity(self, x_t: torch.Tensor, sigma: float, cond: Conditioning) -> torch.Tensor:
        text, extra = cond.extra["prompt_embeds"], cond.extra
        x_in = torch.cat([x_t.to(self._dtype), extra["cond_latents"], extra["cond_mask"]], dim=1)
        t = flow.timesteps(sigma, self.num_train_timesteps, None, device=self.device)
        timestep_r = None
        if self.image_to_video and self.transformer.config.use_meanflow:
            sigmas = extra["sigmas"]
            nxt = sigmas[sigmas.index(sigma) + 1]
            timestep_r = flow.timesteps(nxt, self.num_train_timesteps, None, device=self.device).to(self._dtype)
        return self.transformer(hidden_states=x_in, timestep=t.to(self._dtype), encoder_hidden_states=text["embeds"],
                                encoder_attention_mask=text["mask"], encoder_hidden_states_2=text["embeds_2"],
                                encoder_attention_mask_2=text["mask_2"], image_embeds=extra["image_embeds"],
                                timestep_r=timestep_r, return_dict=False)[0]

    # ------------------------------------------------------------------ decoding
    def preview(self, latent: torch.Tensor, frame_indices) -> torch.Tensor:
        """``WanReasoner.preview`` clamped to [0, 1] as the full decode is (this VAE, unlike Wan's,
        does not clamp its output), so the preview equals those frames of ``decode``."""
        return super().preview(latent, frame_indices).clamp(0.0, 1.0)

    def _decode_checkpointed(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE decode with diffusers' gradient checkpointing of each decoder block."""
        self.vae.enable_gradient_checkpointing()
        try:
            return self.vae.decode(z, return_dict=False)[0]
        finally:
            self.vae.disable_gradient_checkpointing()
