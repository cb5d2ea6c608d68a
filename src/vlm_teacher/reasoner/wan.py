"""The Reasoner adapter over a diffusers Wan pipeline folder.

One class, ``WanReasoner``, serves Wan2.2-TI2V-5B (48-channel, 16x VAE) and the
small Wan folders this project trains and ships, and also works with the
Wan2.1-flavour 16-channel 8x VAE. It uses diffusers' own classes
(``WanTransformer3DModel``, ``AutoencoderKLWan``) and transformers' T5 encoder,
but not ``WanPipeline``: the test-time loop needs pieces the pipeline does not
expose (one differentiable model call, a decode of only some frames, a fixed
noise tensor reused across steps).

Conventions: those of diffusers' Wan pipelines, written once in ``reasoner/flow.py``
(normalised latents, flow matching, TI2V first-frame pinning with per-token
timesteps); latents are denormalised only right before the VAE decoder.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_path, read_settings, write_json
from . import flow
from .base import X0_MODES, Conditioning, check_num_frames, device_index
from .flow import shifted_sigmas

#: model_index.json ``_class_name`` values this adapter accepts. Concat-style
#: image-to-video checkpoints (Wan2.1 I2V, in_channels 36) are refused later by a
#: channel check, because their conditioning is not the TI2V one implemented here.
WAN_PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline")
TEXT_ENCODER_CLASSES = ("UMT5EncoderModel", "T5EncoderModel")
#: scheduler class -> the config key that holds its flow shift
SCHEDULER_SHIFT_KEYS = {
    "UniPCMultistepScheduler": "flow_shift",
    "DPMSolverMultistepScheduler": "flow_shift",
    "FlowMatchEulerDiscreteScheduler": "shift",
}
REQUIRED_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_COMPONENTS = ("transformer", "vae", "text_encoder")
DEFAULTS_FILE = "vlm_teacher.json"
DEFAULT_SIZE = (704, 1280)  # Wan2.2-TI2V-5B native (height, width)

#: LoRA target groups; any other string is used as a module-name suffix as peft does.
ATTENTION_TARGETS = tuple(f"{attn}.{proj}" for attn in ("attn1", "attn2")
                          for proj in ("to_q", "to_k", "to_v", "to_out.0"))
FFN_TARGETS = ("ffn.net.0.proj", "ffn.net.2")
TARGET_GROUPS = {"attn": ATTENTION_TARGETS, "ffn": FFN_TARGETS, "all": ATTENTION_TARGETS + FFN_TARGETS}
LORA_ADAPTER_NAME = "vlm_teacher_tto"
LORA_WEIGHTS_NAME = "lora.safetensors"
TEXT_CACHE_SIZE = 8  # prompts whose text-encoder states are kept (a few MB each at full size)


@dataclass(frozen=True)
class WanDefaults:
    """Generation defaults; a model folder may override them in ``vlm_teacher.json``.

    ``height``/``width`` None means: take the first frame's size (rounded to the
    model's grid), or 704x1280 without a first frame."""

    num_frames: int = 89  # the paper's setting for open-source models
    height: int | None = None
    width: int | None = None
    steps: int = 4  # step-distilled sampler
    fps: int = 24
    max_sequence_length: int = 512  # WanPipeline's default

    @classmethod
    def from_file(cls, path: Path) -> "WanDefaults":
        if not path.is_file():
            return cls()
        raw = read_settings(path, (f.name for f in fields(cls)))
        for key, value in raw.items():
            if value is None and key in ("height", "width"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"{path}: {key} must be a positive integer, got {value!r}")
        return cls(**raw)


def _prompt_clean(text: str) -> str:
    """diffusers' Wan prompt cleaning without the optional ftfy dependency."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json"))


def read_index(root: Path, family: str, classes: Sequence[str]) -> dict[str, Any]:
    """The model_index.json of a diffusers folder whose ``_class_name`` is one of ``classes``
    (one-line errors naming ``family``)."""
    if not root.is_dir():
        raise UserError(f"{family} model folder not found: {root}")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise UserError(f"{root} is not a {family} (diffusers) pipeline folder: model_index.json is missing")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{index_path} is not valid JSON: {exc}") from None
    cls = index.get("_class_name") if isinstance(index, dict) else None
    if cls not in classes:
        raise UserError(f"{root} is not a {family} pipeline: model_index.json _class_name is {cls!r}, "
                        f"expected one of {list(classes)}")
    return index


def _read_model_index(root: Path, two_experts: bool = False) -> dict[str, Any]:
    """Validate the folder layout before any weight is touched (clear errors, no half-loads).
    ``two_experts``: accept a second transformer (Wan2.2 A14B's transformer_2)."""
    index = read_index(root, "Wan", WAN_PIPELINE_CLASSES)
    second = index.get("transformer_2")
    if isinstance(second, list) and any(second) and not two_experts:
        raise UserError(f"{root}: two-expert Wan2.2 models (transformer_2) are not supported; "
                        "use a single-transformer Wan folder such as Wan2.2-TI2V-5B")
    for name in REQUIRED_COMPONENTS:
        folder = root / name
        if not folder.is_dir():
            raise UserError(f"{root} is not a complete Wan pipeline: the {name}/ folder is missing")
    for name in WEIGHT_COMPONENTS:
        folder = root / name
        if not (folder / "config.json").is_file():
            raise UserError(f"{root}: {name}/config.json is missing")
        if not _has_safetensors(folder):
            raise UserError(f"{root}: {name}/ has no .safetensors weights (only safetensors are loaded)")
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        raise UserError(f"{root}: scheduler/scheduler_config.json is missing")
    return index


def _read_flow_shift(root: Path) -> tuple[float, int]:
    """(flow shift, num_train_timesteps) from the scheduler config; no scheduler object is needed."""
    path = root / "scheduler" / "scheduler_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    cls = cfg.get("_class_name")
    key = SCHEDULER_SHIFT_KEYS.get(cls)
    if key is None:
        raise UserError(f"{path}: scheduler {cls!r} is not supported; expected one of "
                        f"{sorted(SCHEDULER_SHIFT_KEYS)} (a flow-matching Wan scheduler)")
    if cls != "FlowMatchEulerDiscreteScheduler" and not cfg.get("use_flow_sigmas", False) \
            and cfg.get("prediction_type") != "flow_prediction":
        raise UserError(f"{path}: {cls} is not configured for flow matching "
                        "(use_flow_sigmas / prediction_type flow_prediction)")
    return float(cfg.get(key, 1.0) or 1.0), int(cfg.get("num_train_timesteps", 1000))


def _load_component(what: str, loader, folder: Path, **kwargs):
    from ..weights import check_weight_folder

    try:
        check_weight_folder(folder)  # a damaged file is named as such, not as a loader's error
    except UserError as exc:
        raise UserError(f"cannot load the {what}: {exc}") from None
    try:
        return loader(folder, use_safetensors=True, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is the same user problem
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot load the {what} from {folder}: {type(exc).__name__}: {msg}") from None


def _as_rgb(image: Any) -> np.ndarray:
    """(H, W, 3|4) or (H, W) uint8 / float-in-[0,1] array -> (H, W, 3) uint8."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise UserError(f"first frame must be an (H, W, 3) RGB image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise UserError(f"first frame must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


class WanReasoner:
    """The Reasoner protocol (``reasoner/base.py``) over a diffusers Wan pipeline folder.

    Attributes worth knowing: ``defaults`` (WanDefaults), ``fps``, ``flow_shift``,
    and the performance switches (each measured in benchmarks/README.md):

    - ``grad_checkpointing``: the transformer's per-block checkpointing (less
      activation memory, one more transformer forward in backward);
    - ``vae_checkpointing``: checkpoint the preview decode per latent frame (less
      memory, one extra decoder forward in backward);
    - ``preview_needed_only`` (default on): the preview decodes only the latent
      frames its pixel frames need (a prefix; the causal VAE makes it exact);
    - ``compile``: ``torch.compile`` of the transformer's repeated blocks (off by default);
    - ``sync_grad_norm`` (default off): the loop reads the gradient norm on the host right
      after backward (two host-device syncs per step) instead of at the next step's one sync;
    - ``preview_decoder``: a lightweight surrogate decoder for the preview (the paper's
      choice; ``load_preview_decoder``), None = the full VAE (default). The final video
      is always decoded by the full VAE.

    ``text_encoder`` may be None (benchmarks at the real size skip the 4.7B UMT5
    encoder): then ``prepare`` needs ``prompt_embeds``."""

    def __init__(self, transformer, vae, text_encoder, tokenizer, *, flow_shift: float,
                 num_train_timesteps: int = 1000, defaults: WanDefaults | None = None,
                 device: str | torch.device = "cpu", path: Path | None = None) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.flow_shift = float(flow_shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.defaults = defaults or WanDefaults()
        self.device = torch.device(device)
        self.path = path
        self.vae_checkpointing = False
        self.preview_needed_only = True
        self.sync_grad_norm = False
        self.preview_decoder: torch.nn.Module | None = None
        self._text_cache: dict[str, torch.Tensor] = {}  # set_prompt_embeds
        self._encoded: OrderedDict[str, torch.Tensor] = OrderedDict()  # encode_text, most recent last
        self._compiled = False
        self._dtype = transformer.dtype  # cached: diffusers' .dtype walks every module
        self._lora: dict[str, Any] | None = None

        (self.z_dim, self.scale_spatial, self.scale_temporal, self.patch_size,
         latents_mean, latents_std) = self._latent_layout(vae, transformer)
        self._check_channels(transformer.config, path)
        #: height and width must be multiples of this (VAE downsampling x transformer patch)
        self.size_multiple = self.scale_spatial * max(self.patch_size[1], self.patch_size[2])
        for _, module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()
        self._latents_mean = torch.tensor(latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._latents_std = torch.tensor(latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._latent_stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in ("height", "width"):
            value = getattr(self.defaults, name)
            if value is not None and value % self.size_multiple:
                raise UserError(f"{path or 'model'}/{DEFAULTS_FILE}: {name} {value} is not a multiple "
                                f"of {self.size_multiple}")
        if (self.defaults.num_frames - 1) % self.scale_temporal:
            raise UserError(f"{path or 'model'}/{DEFAULTS_FILE}: num_frames {self.defaults.num_frames} "
                            f"is not {self.scale_temporal}k+1")

    # ------------------------------------------------------------------ hooks for the other adapters
    @staticmethod
    def _latent_layout(vae, transformer) -> tuple[int, int, int, tuple[int, ...], list[float], list[float]]:
        """(z_dim, spatial x, temporal x, transformer patch, latents_mean, latents_std) of the VAE:
        latents live in the space (z - mean) / std."""
        vcfg = vae.config
        return (int(vcfg.z_dim), int(vcfg.scale_factor_spatial or 8), int(vcfg.scale_factor_temporal or 4),
                tuple(int(p) for p in transformer.config.patch_size), list(vcfg.latents_mean),
                list(vcfg.latents_std))

    def _check_channels(self, tcfg, path: Path | None) -> None:
        if tcfg.in_channels != self.z_dim or (tcfg.out_channels or tcfg.in_channels) != self.z_dim:
            raise UserError(
                f"{path or 'model'}: transformer in/out channels {tcfg.in_channels}/{tcfg.out_channels} "
                f"do not match the VAE z_dim {self.z_dim}; only T2V/TI2V-style Wan models are supported "
                "(not concat-style image-to-video checkpoints)")

    def _frozen_modules(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, module) of every frozen model component, for freezing and ``base_state_dict``."""
        return [(name, m) for name, m in (("transformer", self.transformer), ("vae", self.vae),
                                          ("text_encoder", self.text_encoder)) if m is not None]

    @classmethod
    def _load_extra(cls, root: Path, index: dict[str, Any], device: torch.device,
                    dtype: torch.dtype) -> dict[str, Any]:
        """Components beyond transformer/VAE/text encoder, as keyword arguments of ``__init__``."""
        return {}

    #: LoRA target groups of this architecture and the default group
    LORA_TARGET_GROUPS = TARGET_GROUPS
    LORA_DEFAULT_TARGETS = ("attn",)
    #: a regex of module names never adapted (peft's exclude_modules), None: none excluded
    LORA_EXCLUDE: str | None = None
    #: model_index.json may hold a second transformer (transformer_2)
    TWO_EXPERTS = False

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None,
                        vae_dtype: torch.dtype | None = None) -> "WanReasoner":
        """Load a diffusers Wan pipeline folder (safetensors only, nothing downloaded).

        ``dtype`` is for the transformer and text encoder (default: bfloat16 on
        CUDA, float32 elsewhere); the VAE stays float32 unless ``vae_dtype`` says
        otherwise, as in diffusers' Wan examples."""
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer
        import transformers

        root = Path(path).expanduser()
        index = _read_model_index(root, two_experts=cls.TWO_EXPERTS)
        flow_shift, num_train_timesteps = _read_flow_shift(root)
        defaults = WanDefaults.from_file(root / DEFAULTS_FILE)
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        vae_dtype = vae_dtype or torch.float32

        te_entry = index.get("text_encoder") or [None, None]
        te_name = te_entry[1] if isinstance(te_entry, list) and len(te_entry) == 2 else None
        if te_name not in TEXT_ENCODER_CLASSES:
            try:
                archs = json.loads((root / "text_encoder" / "config.json").read_text()).get("architectures") or []
            except (OSError, ValueError):
                archs = []
            te_name = next((a for a in archs if a in TEXT_ENCODER_CLASSES), None)
        if te_name is None:
            raise UserError(f"{root}: text_encoder must be one of {list(TEXT_ENCODER_CLASSES)} "
                            f"(model_index.json says {te_entry!r})")
        te_cls = getattr(transformers, te_name)

        transformer = _load_component("transformer", WanTransformer3DModel.from_pretrained,
                                      root / "transformer", torch_dtype=dtype)
        vae = _load_component("VAE", AutoencoderKLWan.from_pretrained, root / "vae", torch_dtype=vae_dtype)
        text_encoder = _load_component("text encoder", te_cls.from_pretrained, root / "text_encoder", dtype=dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot load the tokenizer from {root / 'tokenizer'}: {type(exc).__name__}: {exc}") from None
        for module in (transformer, vae, text_encoder):
            module.to(device)
        extra = cls._load_extra(root, index, device, dtype)
        return cls(transformer, vae, text_encoder, tokenizer, flow_shift=flow_shift,
                   num_train_timesteps=num_train_timesteps, defaults=defaults, device=device, path=root,
                   **extra)

    @property
    def fps(self) -> int:
        return self.defaults.fps

    @property
    def sampler_steps(self) -> int:
        """Transformer calls of one default few-step sample (``prepare`` without ``steps``)."""
        return self.defaults.steps

    @property
    def takes_first_frame(self) -> bool:
        """Whether ``prepare`` accepts a first frame (TI2V-style conditioning here)."""
        return True

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype (LoRA weights may be float32 beside bf16 base weights)."""
        return self._dtype

    # ------------------------------------------------------------------ switches
    @property
    def grad_checkpointing(self) -> bool:
        return bool(getattr(self.transformer, "gradient_checkpointing", False))

    @grad_checkpointing.setter
    def grad_checkpointing(self, on: bool) -> None:
        if on:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    @property
    def compile(self) -> bool:
        """``torch.compile`` of the transformer's repeated blocks (regional compilation:
        one compiled block serves all 30). Off by default; the first steps pay the
        compilation. It cannot be undone on this object (set it on a fresh reasoner)."""
        return self._compiled

    @compile.setter
    def compile(self, on: bool) -> None:
        if on and not self._compiled:
            self.transformer.compile_repeated_blocks(dynamic=False)
            self._compiled = True
        elif not on and self._compiled:
            raise UserError("torch.compile cannot be turned off on a compiled reasoner; load a fresh one")

    # ------------------------------------------------------------------ conditioning
    def _resolve_size(self, first_frame: np.ndarray | None, height: int | None,
                      width: int | None) -> tuple[int, int]:
        m = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            if value is not None and (value <= 0 or value % m):
                raise UserError(f"{name} {value} must be a positive multiple of {m} for this model "
                                f"(VAE x{self.scale_spatial}, patch {self.patch_size[1]})")
        if height is not None and width is not None:
            return height, width
        h, w = self.defaults.height, self.defaults.width
        if (h is None or w is None) and first_frame is not None:
            fh, fw = first_frame.shape[:2]
            h = h if h is not None else max(m, round(fh / m) * m)
            w = w if w is not None else max(m, round(fw / m) * m)
        h = h if h is not None else DEFAULT_SIZE[0]
        w = w if w is not None else DEFAULT_SIZE[1]
        return (height if height is not None else h), (width if width is not None else w)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """(1, C, latent frames, latent height, latent width) of a video of this size."""
        return (1, self.z_dim, (num_frames - 1) // self.scale_temporal + 1,
                height // self.scale_spatial, width // self.scale_spatial)

    @torch.no_grad()
    def encode_text(self, prompt: str) -> torch.Tensor:
        """The text encoding of ``prompt`` (``_encode_prompt``, or what ``set_prompt_embeds`` gave).
        The last ``TEXT_CACHE_SIZE`` prompts are kept (best-of-N and TTO's final sample encode
        one prompt once); embeddings given to ``set_prompt_embeds`` are kept until forgotten."""
        if prompt in self._text_cache:
            return self._text_cache[prompt]
        if prompt in self._encoded:
            self._encoded.move_to_end(prompt)
            return self._encoded[prompt]
        if self.text_encoder is None or self.tokenizer is None:
            raise UserError("this reasoner has no text encoder; pass prompt_embeds to prepare() "
                            "or register them with set_prompt_embeds()")
        hidden = self._encode_prompt(prompt)
        self._encoded[prompt] = hidden
        while len(self._encoded) > TEXT_CACHE_SIZE:
            self._encoded.popitem(last=False)
        return hidden

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """UMT5 hidden states, zero after the prompt's length, as WanPipeline does: (1, L, D)."""
        length = self.defaults.max_sequence_length
        inputs = self.tokenizer([_prompt_clean(prompt)], padding="max_length", max_length=length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        ids, mask = inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)
        hidden = self.text_encoder(ids, mask).last_hidden_state
        return (hidden * mask[..., None].to(hidden.dtype)).to(self._dtype)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """latents mean/std on ``device``, copied once (a host-to-device copy per step
        would be a host-device synchronisation inside the loop)."""
        stats = self._latent_stats.get(device)
        if stats is None:
            stats = (self._latents_mean.to(device), self._latents_std.to(device))
            self._latent_stats[device] = stats
        return stats

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        return flow.normalise(z, *self._stats(z.device))

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return flow.denormalise(z, *self._stats(z.device))

    def image_pixels(self, image: np.ndarray, height: int, width: int) -> torch.Tensor:
        """An RGB image as the VAE's input (1, 3, 1, H, W) in [-1, 1]; resized (Lanczos) if needed."""
        from PIL import Image

        rgb = _as_rgb(image)
        if rgb.shape[:2] != (height, width):
            rgb = np.array(Image.fromarray(rgb).resize((width, height), Image.LANCZOS))
        pixels = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float() / 127.5 - 1.0
        return pixels[None, :, None].to(self.device, self.vae.dtype)

    @torch.no_grad()
    def encode_image(self, image: np.ndarray, height: int, width: int) -> torch.Tensor:
        """An RGB image -> its normalised latent (1, C, 1, h, w); resized (Lanczos) if needed."""
        z = self.vae.encode(self.image_pixels(image, height, width)).latent_dist.mode()
        return self._normalise(z.float())

    def prepare(self, prompt: str, first_frame: np.ndarray | None, seed: int, *,
                num_frames: int | None = None, height: int | None = None, width: int | None = None,
                steps: int | None = None, prompt_embeds: torch.Tensor | None = None) -> Conditioning:
        """Encode the text and the first frame once, draw the fixed noise ``eps``.

        The noise comes from a CPU ``torch.Generator(seed)`` and is then moved to
        the device, so a seed means the same noise on every machine.
        ``prompt_embeds`` (1, L, text_dim): use these text-encoder states instead of
        encoding ``prompt`` (precomputed embeddings, or benchmarks without UMT5)."""
        num_frames = self.defaults.num_frames if num_frames is None else int(num_frames)
        check_num_frames(num_frames, self.scale_temporal, "num_frames")
        steps = self.defaults.steps if steps is None else int(steps)
        if first_frame is not None:
            first_frame = _as_rgb(first_frame)
        height, width = self._resolve_size(first_frame, height, width)
        shape = self.latent_shape(num_frames, height, width)
        self._check_rope(shape, num_frames, height, width)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        first_latent = self.encode_image(first_frame, height, width) if first_frame is not None else None
        tokens_per_frame, num_tokens = flow.token_counts(shape, self.patch_size)
        extra = {
            "prompt_embeds": (self.encode_text(prompt) if prompt_embeds is None
                              else self._check_embeds(prompt_embeds)),
            "first_latent": first_latent,
            "sigmas": shifted_sigmas(steps, self.flow_shift),
            "tokens_per_frame": tokens_per_frame,
            "num_tokens": num_tokens,
        }
        return Conditioning(prompt=prompt, seed=int(seed), num_frames=num_frames, height=height,
                            width=width, noise=noise, extra=extra, steps=steps)

    def _check_rope(self, shape: tuple[int, ...], num_frames: int, height: int, width: int) -> None:
        """The transformer's rotary table covers ``rope_max_seq_len`` patches along each axis."""
        limit = getattr(self.transformer.config, "rope_max_seq_len", None)
        if not limit:
            return
        for what, value, latent, patch in (("num_frames", num_frames, shape[2], self.patch_size[0]),
                                           ("height", height, shape[3], self.patch_size[1]),
                                           ("width", width, shape[4], self.patch_size[2])):
            if latent // patch > limit:
                raise UserError(f"{what} {value} is too large for this model: {latent // patch} positions "
                                f"along that axis, its rotary table (rope_max_seq_len) covers {limit}")

    def set_prompt_embeds(self, prompt: str, embeds: torch.Tensor | None) -> None:
        """Use ``embeds`` (1, L, text_dim) as the text encoding of ``prompt`` from now on
        (None forgets it): precomputed UMT5 states, or stand-ins when benchmarking
        without the text encoder."""
        if embeds is None:
            self._text_cache.pop(prompt, None)
        else:
            self._text_cache[prompt] = self._check_embeds(embeds)

    def load_preview_decoder(self, path: str | Path | None, dtype: torch.dtype | None = None) -> None:
        """Decode the teacher's preview with the tiny surrogate decoder saved at ``path``
        (a TAEHV-style ``.safetensors``, see ``reasoner/surrogate.py``); None: back to the VAE."""
        if path is None:
            self.preview_decoder = None
            return
        from .surrogate import TinyWanDecoder

        decoder = TinyWanDecoder.from_file(path)
        self.use_preview_decoder(decoder, dtype)

    def use_preview_decoder(self, decoder: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
        """Attach a surrogate decoder module (frozen, on this device)."""
        if getattr(decoder, "latent_channels", self.z_dim) != self.z_dim:
            raise UserError(f"the surrogate decoder takes {decoder.latent_channels} latent channels, "
                            f"this model has {self.z_dim}")
        scale = getattr(decoder, "temporal_scale", self.scale_temporal)
        if scale != self.scale_temporal:
            raise UserError(f"the surrogate decoder upsamples time {scale}x, this VAE {self.scale_temporal}x")
        decoder = decoder.to(self.device, dtype or self.vae.dtype).eval().requires_grad_(False)
        self.preview_decoder = decoder

    def _check_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        dim = int(self.transformer.config.text_dim)
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[0] != 1 \
                or embeds.shape[2] != dim:
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise UserError(f"prompt_embeds must be a (1, L, {dim}) tensor, got {shape}")
        return embeds.to(self.device, self._dtype)

    # ------------------------------------------------------------------ denoising
    def _x0(self, x_t: torch.Tensor, sigma: float, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """One transformer call: (x0_hat, the composed x_t), both float32, frame 0 pinned."""
        first = cond.extra["first_latent"]
        x_t = flow.pin_first_frame(x_t, first)
        v = self._velocity(x_t, sigma, cond)
        return flow.pin_first_frame(flow.x0_from_velocity(x_t, v.float(), sigma), first), x_t

    def _velocity(self, x_t: torch.Tensor, sigma: float, cond: Conditioning) -> torch.Tensor:
        """The transformer's flow prediction v at noise level ``sigma`` (first frame's tokens at t = 0)."""
        tokens = (None if cond.extra["first_latent"] is None
                  else (cond.extra["tokens_per_frame"], cond.extra["num_tokens"]))
        t = flow.timesteps(sigma, self.num_train_timesteps, tokens, device=self.device)
        return self.transformer(hidden_states=x_t.to(self._dtype), timestep=t,
                                encoder_hidden_states=cond.extra["prompt_embeds"], return_dict=False)[0]

    def predict_x0(self, cond: Conditioning, mode: str = "first") -> torch.Tensor:
        """The clean latent (normalised, float32) the teacher judges; see ``Reasoner.predict_x0``."""
        if mode not in X0_MODES:
            raise ValueError(f"mode must be one of {X0_MODES}, got {mode!r}")
        sigmas = cond.extra["sigmas"]
        if mode == "first":
            return self._x0(cond.noise, sigmas[0], cond)[0]
        x = cond.noise
        start = 0
        if mode == "last":
            with torch.no_grad():
                for i in range(len(sigmas) - 2):
                    x0, x_t = self._x0(x, sigmas[i], cond)
                    x = flow.euler_step(x0, x_t, sigmas[i], sigmas[i + 1])
            start = len(sigmas) - 2
        x0 = x
        for i in range(start, len(sigmas) - 1):
            x0, x_t = self._x0(x, sigmas[i], cond)
            x = flow.euler_step(x0, x_t, sigmas[i], sigmas[i + 1])
        return x0

    @torch.no_grad()
    def sample(self, cond: Conditioning) -> torch.Tensor:
        """The few-step sampler's final latent (no grad)."""
        return self.predict_x0(cond, mode="all")

    @torch.no_grad()
    def generate(self, cond: Conditioning) -> torch.Tensor:
        """Full sampler + full VAE decode: (F, 3, H, W) float32 in [0, 1], on the CPU."""
        return self.decode(self.sample(cond)).cpu()

    # ------------------------------------------------------------------ decoding
    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames of a decode of ``latent_frames`` latent frames (causal VAE: 1 + 4(n - 1))."""
        return 1 + self.scale_temporal * (latent_frames - 1)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """diffusers' full VAE decode of a normalised latent: (F, 3, H, W) float32 in [0, 1]."""
        z = self._denormalise(latent.float()).to(self.vae.dtype)
        video = self.vae.decode(z, return_dict=False)[0]
        return ((video[0].transpose(0, 1).float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def preview(self, latent: torch.Tensor, frame_indices: Sequence[int]) -> torch.Tensor:
        """Differentiable decode of only the latent frames the requested pixel frames need.

        The Wan VAE is causal in time: latent frame 0 gives pixel frame 0 and
        latent frame j >= 1 gives pixel frames 4j-3..4j, and decoding a prefix of
        the latent frames gives the prefix of the full decode. So frame f needs
        latents 0..ceil(f/4) only. Returns (K, 3, H, W) float32 in [0, 1]."""
        if latent.ndim != 5 or latent.shape[0] != 1:
            raise ValueError(f"expected a (1, C, T, h, w) latent, got {tuple(latent.shape)}")
        indices = [int(i) for i in frame_indices]
        total = self.pixel_frames(latent.shape[2])
        if not indices or min(indices) < 0 or max(indices) >= total:
            raise ValueError(f"frame indices must be in [0, {total - 1}], got {indices}")
        needed = math.ceil(max(indices) / self.scale_temporal) + 1
        if not self.preview_needed_only:
            needed = latent.shape[2]
        if self.preview_decoder is not None:
            dec = self.preview_decoder
            dtype = next(dec.parameters()).dtype
            z = self._denormalise(latent[:, :, :needed].float()).to(dtype)
            return dec.decode(z, indices)[0].float()
        z = self._denormalise(latent[:, :, :needed].float()).to(self.vae.dtype)
        if self.vae_checkpointing:
            video = self._decode_checkpointed(z)
        else:
            video = self.vae.decode(z, return_dict=False)[0]
        frames = video[0].transpose(0, 1).index_select(0, device_index(indices, video.device))  # (K, 3, H, W)
        return (frames.float() + 1.0) / 2.0

    def _decode_checkpointed(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE decode of ``AutoencoderKLWan._decode``, one torch.utils.checkpoint per latent frame.

        diffusers refuses ``enable_gradient_checkpointing`` on this VAE and
        checkpointing the whole decode saves nothing. The decoder runs one latent
        frame at a time with a causal cache (the last two time steps at every
        causal conv); here each frame is a pure function (frame, cache) ->
        (pixels, new cache), so autograd keeps only those small tensors per frame
        and re-runs one frame's decoder during backward."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
        from torch.utils.checkpoint import checkpoint

        vae = self.vae
        x = vae.post_quant_conv(z)
        cache: list[Any] = [None] * vae._cached_conv_counts["decoder"]
        outputs = []
        for i in range(x.shape[2]):
            is_tensor = [torch.is_tensor(c) for c in cache]
            fixed = [None if t else c for c, t in zip(cache, is_tensor)]
            layout: dict[str, list] = {}

            def run(chunk, *cached, _is_tensor=is_tensor, _fixed=fixed, _first=(i == 0), _layout=layout):
                it = iter(cached)
                feat = [next(it) if t else c for c, t in zip(_fixed, _is_tensor)]
                out = vae.decoder(chunk, feat_cache=feat, feat_idx=[0], first_chunk=_first)
                _layout["is_tensor"] = [torch.is_tensor(c) for c in feat]
                _layout["fixed"] = [None if torch.is_tensor(c) else c for c in feat]
                return (out, *[c for c in feat if torch.is_tensor(c)])

            result = checkpoint(run, x[:, :, i:i + 1], *[c for c in cache if torch.is_tensor(c)],
                                use_reentrant=False)
            outputs.append(result[0])
            it = iter(result[1:])
            cache = [next(it) if t else c for c, t in zip(layout["fixed"], layout["is_tensor"])]
        out = torch.cat(outputs, dim=2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return torch.clamp(out, min=-1.0, max=1.0)

    # ------------------------------------------------------------------ LoRA
    def _resolve_targets(self, targets: Sequence[str] | None) -> list[str]:
        names = [n for n, _ in self.transformer.named_modules()]
        resolved: list[str] = []
        groups = self.LORA_TARGET_GROUPS
        for target in (targets if targets is not None else self.LORA_DEFAULT_TARGETS):
            for t in groups.get(target, (target,)):
                if t not in resolved:
                    resolved.append(t)
        for t in resolved:
            if not any(n == t or n.endswith("." + t) for n in names):
                raise UserError(f"LoRA target {t!r} matches no module of the transformer; use "
                                f"{sorted(groups)} or module names such as {list(groups['attn'][:2])}")
        if not resolved:
            raise UserError("LoRA targets are empty")
        return resolved

    def add_lora(self, rank: int = 16, alpha: float | None = None,
                 targets: Sequence[str] | None = None, seed: int = 0) -> list[torch.nn.Parameter]:
        """Attach a fresh LoRA (any previous one is removed); return its trainable parameters.

        peft's default init (lora_A Kaiming-uniform, lora_B zero) so the adapted
        model starts exactly at the base model; lora_A is drawn under ``seed``
        on the CPU generator, so the same seed gives the same adapter anywhere.
        ``targets``: None = attention q/k/v/out of attn1 and attn2; group names
        "attn", "ffn", "all", or module-name suffixes."""
        from peft import LoraConfig
        from peft.tuners.tuners_utils import cast_adapter_dtype

        if rank < 1:
            raise UserError(f"LoRA rank must be >= 1, got {rank}")
        resolved = self._resolve_targets(targets)
        self.remove_lora()
        alpha = float(rank if alpha is None else alpha)
        config = LoraConfig(r=int(rank), lora_alpha=alpha, target_modules=resolved,
                            exclude_modules=self.LORA_EXCLUDE, init_lora_weights=True, lora_dropout=0.0)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            self.transformer.add_adapter(config, adapter_name=LORA_ADAPTER_NAME)
        # train the adapter in float32 even beside a bf16 base: tiny AdamW steps would round away
        cast_adapter_dtype(self.transformer, LORA_ADAPTER_NAME, autocast_adapter_dtype=True)
        self._lora = {"rank": int(rank), "alpha": alpha, "targets": resolved, "seed": int(seed)}
        params = []
        for name, param in self.transformer.named_parameters():
            is_lora = ("lora_A" in name or "lora_B" in name) and LORA_ADAPTER_NAME in name
            param.requires_grad_(is_lora)
            if is_lora:
                params.append(param)
        return params

    def remove_lora(self) -> None:
        """Drop the adapter; the transformer computes exactly the base model again."""
        if self._lora is not None or LORA_ADAPTER_NAME in (getattr(self.transformer, "peft_config", None) or {}):
            self.transformer.delete_adapters(LORA_ADAPTER_NAME)
        self._lora = None

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.transformer.named_parameters()
                if ("lora_A" in n or "lora_B" in n) and LORA_ADAPTER_NAME in n]

    @staticmethod
    def _lora_files(path: str | Path) -> tuple[Path, Path]:
        path = Path(path)
        weights = path if path.suffix == ".safetensors" else path / LORA_WEIGHTS_NAME
        return weights, weights.with_suffix(".json")

    def save_lora(self, path: str | Path) -> Path:
        """Write the adapter: ``<path>`` if it ends in .safetensors, else ``<path>/lora.safetensors``,
        plus a JSON beside it with rank, alpha and targets. Returns the weights path."""
        from safetensors.torch import save_file

        if self._lora is None:
            raise UserError("no LoRA to save: call add_lora first")
        weights, meta = self._lora_files(path)
        tag = f".{LORA_ADAPTER_NAME}"
        state = {n.replace(tag, ""): p.detach().to("cpu", torch.float32).contiguous()
                 for n, p in self.transformer.named_parameters()
                 if ("lora_A" in n or "lora_B" in n) and LORA_ADAPTER_NAME in n}
        with atomic_path(weights) as tmp:
            save_file(state, str(tmp), metadata={"format": "vlm_teacher_wan_lora"})
        write_json(meta, self._lora)
        return weights

    def load_lora(self, path: str | Path) -> None:
        """Replace the adapter with the one saved at ``path`` (file or folder of ``save_lora``)."""
        from safetensors.torch import load_file

        weights, meta = self._lora_files(path)
        if not weights.is_file() or not meta.is_file():
            raise UserError(f"LoRA not found: need {weights} and {meta} (written by save_lora)")
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            state = load_file(str(weights))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot read LoRA {weights}: {type(exc).__name__}: {exc}") from None
        self.add_lora(rank=info["rank"], alpha=info["alpha"], targets=info["targets"], seed=info.get("seed", 0))
        tag = f".{LORA_ADAPTER_NAME}"
        params = {n.replace(tag, ""): p for n, p in self.transformer.named_parameters()
                  if ("lora_A" in n or "lora_B" in n) and LORA_ADAPTER_NAME in n}
        if set(params) != set(state):
            missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise UserError(f"LoRA {weights} does not fit this model: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, param in params.items():
                if param.shape != state[name].shape:
                    raise UserError(f"LoRA {weights}: {name} has shape {tuple(state[name].shape)}, "
                                    f"this model needs {tuple(param.shape)}")
                param.copy_(state[name].to(param.device, param.dtype))

    @property
    def lora_config(self) -> dict[str, Any] | None:
        return None if self._lora is None else dict(self._lora)

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Every non-LoRA weight of transformer, VAE and text encoder, under names that do
        not change when a LoRA is attached. The tensors share storage with the model
        (clone them to keep a snapshot)."""
        out: dict[str, torch.Tensor] = {}
        for prefix, module in self._frozen_modules():
            for name, tensor in module.state_dict(keep_vars=False).items():
                if "lora_" in name:
                    continue
                out[f"{prefix}.{name.replace('.base_layer.', '.')}"] = tensor
        return out
