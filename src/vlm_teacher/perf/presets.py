"""Architectures of the real models, as presets, and builders of random-weight copies.

The GPU benchmarks (``benchmarks/full_size.py``) time the test-time step at the
real models' size without their weights (none can be downloaded here): they
build the published architectures with random weights directly on the device in
bfloat16, so a 5B transformer never passes through host memory. The same
builders make reduced copies (the ``*-tiny`` presets) for CPU checks.

Where the values come from. No network was available when this was written, so
the published ``config.json`` files could not be read; the values below are
recalled from them and marked so. Those the project measured or checked (the
machines' notes on the real models, repeated here) are: the Wan2.2-TI2V-5B
transformer (30 layers, 24 heads x 128, ffn 14336, in/out 48, patch (1, 2, 2),
text_dim 4096) and VAE (base_dim 160, decoder_base_dim 256, z_dim 48, 16x spatial,
4x temporal). Building the recalled Wan config gives 5.00e9 transformer parameters
(``python -c "from vlm_teacher.perf.presets import *; print(count_parameters('wan2.2-ti2v-5b'))"``),
which matches the model's name. Recalled, not checked against a file:

- Wan: ``freq_dim`` 256, ``qk_norm`` rms_norm_across_heads, ``cross_attn_norm`` true,
  ``eps`` 1e-6, ``rope_max_seq_len`` 1024; VAE ``dim_mult`` [1, 2, 4, 4],
  ``num_res_blocks`` 2, ``temperal_downsample`` [false, true, true]. The VAE's
  48 ``latents_mean``/``latents_std`` are set to 0/1 (timing does not depend on them).
- Qwen3-VL-4B-Instruct: text hidden 2560, 36 layers, 32 query / 8 key-value heads
  of 128, MLP 9728, vocab 151936, tied embeddings, rope theta 5e6, mrope [24, 20, 20]
  interleaved; vision depth 24, hidden 1024, MLP 4096, 16 heads, patch 16, temporal
  patch 2, merge 2, 2304 position embeddings, deepstack layers [5, 11, 17].
- Qwen2.5-VL-7B-Instruct: text hidden 3584, 28 layers, 28 query / 4 key-value heads
  (head 128), MLP 18944, vocab 152064, untied, rope theta 1e6, mrope [16, 24, 24];
  vision depth 32, hidden 1280, MLP 3420, 16 heads, patch 14, window 112,
  full-attention blocks [7, 15, 23, 31].

The text encoder (UMT5-XXL, 4.7B parameters, 512 tokens of width 4096) is NOT built:
it runs once per instance, outside the step, so the benchmarks use random prompt
embeddings of its output shape instead (``WanReasoner.prepare(prompt_embeds=...)``).
The teacher's tokenizer is the offline Qwen-style one (``testing.offline_tokenizer``),
its special tokens mapped into the real vocabulary size; prompt lengths therefore
differ from Qwen's by a few tokens, the video tokens (nearly all of them) do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError


@dataclass(frozen=True)
class WanPreset:
    """A Wan TI2V-style reasoner: transformer and VAE kwargs plus pipeline settings."""

    name: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_len: int = 512          # UMT5 tokens (max_sequence_length)
    flow_shift: float = 5.0      # UniPC flow shift of Wan2.2
    steps: int = 4               # step-distilled sampler
    fps: int = 24
    num_frames: int = 89
    height: int = 704
    width: int = 1280
    recalled: tuple[str, ...] = ()  # values not read from a file (see the module docstring)


@dataclass(frozen=True)
class QwenPreset:
    """A Qwen-VL teacher: ``arch`` plus the text and vision config dicts (transformers 5 names)."""

    name: str
    arch: str                    # qwen2_5_vl | qwen3_vl | qwen3_vl_moe
    text: dict[str, Any]
    vision: dict[str, Any]
    min_pixels: int | None = None  # per-frame pixel budget; None: the released processor's
    max_pixels: int | None = None
    tie_word_embeddings: bool = False
    recalled: tuple[str, ...] = field(default_factory=tuple)


def _wan22_vae(base_dim: int, decoder_base_dim: int, dim_mult: list[int], num_res_blocks: int) -> dict[str, Any]:
    return dict(base_dim=base_dim, decoder_base_dim=decoder_base_dim, z_dim=48, dim_mult=dim_mult,
                num_res_blocks=num_res_blocks, attn_scales=[], temperal_downsample=[False, True, True],
                is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                scale_factor_spatial=16, scale_factor_temporal=4,
                latents_mean=[0.0] * 48, latents_std=[1.0] * 48)


def _wan_transformer(layers: int, heads: int, head_dim: int, ffn: int, text_dim: int,
                     freq_dim: int = 256) -> dict[str, Any]:
    return dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                in_channels=48, out_channels=48, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn,
                num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                rope_max_seq_len=1024)


WAN_PRESETS: dict[str, WanPreset] = {
    "wan2.2-ti2v-5b": WanPreset(
        name="wan2.2-ti2v-5b",
        transformer=_wan_transformer(30, 24, 128, 14336, 4096),
        vae=_wan22_vae(160, 256, [1, 2, 4, 4], 2),
        recalled=("freq_dim", "qk_norm", "cross_attn_norm", "eps", "rope_max_seq_len", "vae.dim_mult",
                  "vae.num_res_blocks", "vae.temperal_downsample", "vae.latents_mean/std (0/1)")),
    # The same families, small enough for a CPU check (a few seconds per step).
    "wan-tiny": WanPreset(
        name="wan-tiny",
        transformer=_wan_transformer(2, 2, 24, 128, 64, freq_dim=32),
        vae=_wan22_vae(16, 24, [1, 2, 2, 2], 1),
        text_len=32, fps=8, num_frames=17, height=128, width=128),
    # Big enough on a CPU for the switches' effect on time and memory to show (benchmarks/switches.py).
    "wan-small": WanPreset(
        name="wan-small",
        transformer=_wan_transformer(4, 4, 48, 768, 128, freq_dim=64),
        vae=_wan22_vae(24, 32, [1, 2, 2, 2], 1),
        text_len=64, fps=8, num_frames=13, height=192, width=192),
}


def _qwen3_text(hidden: int, layers: int, heads: int, kv: int, head_dim: int, mlp: int, vocab: int,
                mrope: list[int]) -> dict[str, Any]:
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                max_position_embeddings=262144, rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": mrope,
                                 "mrope_interleaved": True})


def _qwen25_text(hidden: int, layers: int, heads: int, kv: int, mlp: int, vocab: int,
                 mrope: list[int]) -> dict[str, Any]:
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=128000,
                rms_norm_eps=1e-6, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope})


def _qwen3_vision(depth: int, hidden: int, mlp: int, heads: int, out: int, positions: int,
                  deepstack: list[int]) -> dict[str, Any]:
    return dict(depth=depth, hidden_size=hidden, intermediate_size=mlp, num_heads=heads, in_channels=3,
                patch_size=16, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=out,
                num_position_embeddings=positions, deepstack_visual_indexes=deepstack, hidden_act="gelu_pytorch_tanh")


QWEN_PRESETS: dict[str, QwenPreset] = {
    "qwen3-vl-4b": QwenPreset(
        name="qwen3-vl-4b", arch="qwen3_vl",
        text=_qwen3_text(2560, 36, 32, 8, 128, 9728, 151936, [24, 20, 20]),
        vision=_qwen3_vision(24, 1024, 4096, 16, 2560, 2304, [5, 11, 17]),
        tie_word_embeddings=True, recalled=("all values",)),
    "qwen2.5-vl-7b": QwenPreset(
        name="qwen2.5-vl-7b", arch="qwen2_5_vl",
        text=_qwen25_text(3584, 28, 28, 4, 18944, 152064, [16, 24, 24]),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
                    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=3584,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
                    hidden_act="silu"),
        tie_word_embeddings=False, recalled=("all values",)),
    # Qwen3-VL-30B-A3B-Instruct: 48 layers of 128 experts (width 768, 8 per token), 32 / 4 heads of 128,
    # hidden 2048, untied; the vision tower of Qwen3-VL-8B (27 blocks of 1152, MLP 4304, deepstack [8, 16, 24]).
    "qwen3-vl-30b-a3b": QwenPreset(
        name="qwen3-vl-30b-a3b", arch="qwen3_vl_moe",
        text=dict(_qwen3_text(2048, 48, 32, 4, 128, 6144, 151936, [24, 20, 20]), num_experts=128,
                  num_experts_per_tok=8, moe_intermediate_size=768, decoder_sparse_step=1),
        vision=_qwen3_vision(27, 1152, 4304, 16, 2048, 2304, [8, 16, 24]),
        tie_word_embeddings=False, recalled=("all values",)),
    "qwen3-vl-moe-tiny": QwenPreset(
        name="qwen3-vl-moe-tiny", arch="qwen3_vl_moe",
        text=dict(_qwen3_text(64, 2, 4, 2, 16, 128, 2048, [4, 2, 2]), num_experts=4, num_experts_per_tok=2,
                  moe_intermediate_size=32, decoder_sparse_step=1),
        vision=_qwen3_vision(2, 32, 64, 2, 64, 64, [0, 1]),
        min_pixels=32 * 32, max_pixels=256 * 256),
    "qwen3-vl-tiny": QwenPreset(
        name="qwen3-vl-tiny", arch="qwen3_vl",
        text=_qwen3_text(64, 2, 4, 2, 16, 128, 2048, [4, 2, 2]),
        vision=_qwen3_vision(2, 32, 64, 2, 64, 64, [0, 1]),
        min_pixels=32 * 32, max_pixels=256 * 256),
    "qwen3-vl-small": QwenPreset(
        name="qwen3-vl-small", arch="qwen3_vl",
        text=_qwen3_text(256, 4, 4, 2, 64, 768, 4096, [16, 8, 8]),
        vision=_qwen3_vision(4, 128, 512, 4, 256, 256, [0, 1, 2]),
        min_pixels=32 * 32, max_pixels=256 * 256),
    "qwen2.5-vl-tiny": QwenPreset(
        name="qwen2.5-vl-tiny", arch="qwen2_5_vl",
        text=_qwen25_text(64, 2, 4, 2, 128, 2048, [4, 2, 2]),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3,
                    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64,
                    window_size=56, fullatt_block_indexes=[1], tokens_per_second=2, hidden_act="silu"),
        min_pixels=28 * 28, max_pixels=256 * 256),
}


def wan_preset(name: str) -> WanPreset:
    if name not in WAN_PRESETS:
        raise UserError(f"unknown reasoner preset {name!r}; choose one of {sorted(WAN_PRESETS)}")
    return WAN_PRESETS[name]


def qwen_preset(name: str) -> QwenPreset:
    if name not in QWEN_PRESETS:
        raise UserError(f"unknown teacher preset {name!r}; choose one of {sorted(QWEN_PRESETS) + sorted(INTERNVL_PRESETS)}")
    return QWEN_PRESETS[name]


class _defaults:
    """Construct modules directly on ``device`` in ``dtype`` (no host copy of a big model)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype

    def __enter__(self):
        self._old_dtype = torch.get_default_dtype()
        self._dev = torch.device(self.device)
        self._dev.__enter__()
        torch.set_default_dtype(self.dtype)
        return self

    def __exit__(self, *exc):
        torch.set_default_dtype(self._old_dtype)
        self._dev.__exit__(*exc)


def _keep_fp32(module: torch.nn.Module) -> None:
    """What diffusers' from_pretrained does with ``_keep_in_fp32_modules`` (norms, time embedder, rope)."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, param in module.named_parameters():
        if param.is_floating_point() and any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    for name, buf in module.named_buffers():
        if buf.is_floating_point() and any(k in name.split(".") for k in keep):
            buf.data = buf.data.float()


def build_wan_modules(preset: WanPreset | str, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype | None = None,
                      seed: int = 0):
    """(transformer, vae) of ``preset`` with random weights, built on ``device``."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    preset = wan_preset(preset) if isinstance(preset, str) else preset
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with _defaults(device, dtype):
            transformer = WanTransformer3DModel(**preset.transformer)
        _keep_fp32(transformer)
        with _defaults(device, vae_dtype or dtype):
            vae = AutoencoderKLWan(**preset.vae)
    return transformer, vae


def build_wan_reasoner(preset: WanPreset | str, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype | None = None,
                       seed: int = 0):
    """A ``WanReasoner`` over random-weight modules of ``preset``, without a text encoder:
    give ``prepare`` a ``prompt_embeds`` (``random_prompt_embeds``)."""
    from ..reasoner.wan import WanDefaults, WanReasoner

    preset = wan_preset(preset) if isinstance(preset, str) else preset
    transformer, vae = build_wan_modules(preset, device, dtype, vae_dtype, seed)
    defaults = WanDefaults(num_frames=preset.num_frames, height=preset.height, width=preset.width,
                           steps=preset.steps, fps=preset.fps, max_sequence_length=preset.text_len)
    return WanReasoner(transformer, vae, None, None, flow_shift=preset.flow_shift, defaults=defaults,
                       device=device)


def random_prompt_embeds(reasoner, prompt_tokens: int = 64, seed: int = 0) -> torch.Tensor:
    """A stand-in for the UMT5 output: (1, max_sequence_length, text_dim), ``prompt_tokens``
    unit-variance rows then zeros (WanPipeline zeroes the padding the same way).
    HunyuanVideo-1.5 gets its dict: Qwen2.5-VL states with ``prompt_tokens`` valid, no glyph text."""
    if hasattr(reasoner, "tokenizer_2"):
        return _hunyuan15_prompt_embeds(reasoner, prompt_tokens, seed)
    length = reasoner.defaults.max_sequence_length
    dim = int(reasoner.transformer.config.text_dim)
    g = torch.Generator().manual_seed(seed)
    emb = torch.zeros(1, length, dim)
    emb[:, :min(prompt_tokens, length)] = torch.randn(1, min(prompt_tokens, length), dim, generator=g)
    return emb.to(reasoner.device, reasoner.dtype)


def qwen_config(preset: QwenPreset | str, tokenizer):
    """The transformers config of ``preset`` with the special-token ids of ``tokenizer``."""
    preset = qwen_preset(preset) if isinstance(preset, str) else preset
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    if len(tokenizer) > preset.text["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the preset's vocabulary")
    text = dict(preset.text, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=preset.tie_word_embeddings)
    from ..teacher.qwen import _model_class

    Config = _model_class(preset.arch).config_class
    return Config(text_config=text, vision_config=dict(preset.vision), image_token_id=ids["<|image_pad|>"],
                  video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                  vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=preset.tie_word_embeddings)


def build_qwen_teacher(preset: QwenPreset | str, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, seed: int = 0, *,
                       max_pixels: int | None = None, attn_implementation: str | None = None):
    """A ``QwenVLTeacher`` over a random-weight model of ``preset``, built on ``device``.
    ``max_pixels`` lowers the per-frame pixel budget (fewer video tokens)."""
    from ..teacher import pixels
    from ..teacher.qwen import QwenVLTeacher, _model_class
    from ..testing.offline_tokenizer import build_offline_tokenizer

    preset = qwen_preset(preset) if isinstance(preset, str) else preset
    device = torch.device(device)
    tokenizer = build_offline_tokenizer(1536)
    config = qwen_config(preset, tokenizer)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    Model = _model_class(preset.arch)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with _defaults(device, dtype):
            model = Model(config)
    model.eval()  # built in ``dtype`` already; no .to(dtype): it would also cast the fp32 rotary buffers
    spec = pixels.DEFAULT_SPECS[preset.arch].with_pixels(preset.min_pixels, preset.max_pixels)
    if max_pixels is not None:
        spec = spec.with_pixels(None, max_pixels)
    return QwenVLTeacher(model, tokenizer, spec, preset.arch)


def count_parameters(name: str) -> int:
    """Parameters of a preset's main network (Wan transformer, Qwen-VL or InternVL), counted on the meta device."""
    if name in WAN_PRESETS:
        from diffusers import WanTransformer3DModel

        with torch.device("meta"):
            module = WanTransformer3DModel(**WAN_PRESETS[name].transformer)
    elif name in INTERNVL_PRESETS:
        module, _ = _internvl_model(INTERNVL_PRESETS[name], torch.device("meta"), torch.float32)
    else:
        from ..teacher.qwen import _model_class
        from ..testing.offline_tokenizer import build_offline_tokenizer

        preset = qwen_preset(name)
        config = qwen_config(preset, build_offline_tokenizer(1536))
        with torch.device("meta"):
            module = _model_class(preset.arch)(config)
    seen: set[int] = set()
    total = 0
    for p in module.parameters():  # tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# ----------------------------------------------------------------------------- InternVL teachers

@dataclass(frozen=True)
class InternVLPreset:
    """An InternVL teacher: Qwen2 text and InternViT vision kwargs (``testing.tiny_internvl``'s builders)."""

    name: str
    text: dict[str, Any]
    vision: dict[str, Any]
    recalled: tuple[str, ...] = ()


def _internvl_presets() -> dict[str, InternVLPreset]:
    from ..testing.tiny_internvl import internvl_vision, qwen2_text

    return {
        # InternVL3-8B(-hf): InternViT-300M-448px-V2.5 (24 layers, 1024 wide, MLP 4096, 16 heads, patch 14,
        # qkv bias, LayerNorm) + MLP projector + Qwen2.5-7B (3584, 28 layers, 28 / 4 heads, MLP 18944,
        # vocabulary 151674 with InternVL's added tokens, untied); tile 448, 256 tokens per tile.
        "internvl3-8b": InternVLPreset("internvl3-8b", qwen2_text(3584, 28, 28, 4, 18944, 151674),
                                       internvl_vision(24, 1024, 16, 4096, 448, 14), recalled=("all values",)),
        "internvl3-tiny": InternVLPreset("internvl3-tiny", qwen2_text(64, 2, 4, 2, 128, 2048),
                                         internvl_vision(2, 32, 2, 64, 56, 14)),
    }


INTERNVL_PRESETS: dict[str, InternVLPreset] = _internvl_presets()


def _internvl_model(preset: InternVLPreset, device: torch.device, dtype: torch.dtype, seed: int = 0,
                    attn_implementation: str | None = None):
    """(model, tokenizer) of ``preset``, random weights, built on ``device`` in ``dtype``."""
    import tempfile

    from transformers import InternVLForConditionalGeneration

    from ..testing.tiny_internvl import internvl_config, save_internvl_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = save_internvl_tokenizer(tmp, 1536)
    config = internvl_config(preset.text, preset.vision, tokenizer)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with _defaults(device, dtype):
            model = InternVLForConditionalGeneration(config)
    return model.eval(), tokenizer


def build_teacher(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                  *, max_pixels: int | None = None, attn_implementation: str | None = None):
    """The teacher of any preset (Qwen-VL or InternVL), random weights, built on ``device``.
    ``max_pixels`` is a Qwen-VL setting (InternVL's frames are always one tile)."""
    if name not in INTERNVL_PRESETS:
        return build_qwen_teacher(name, device, dtype, seed, max_pixels=max_pixels,
                                  attn_implementation=attn_implementation)
    from ..teacher.internvl import InternVLTeacher
    from ..teacher.tiles import TileSpec

    if max_pixels is not None:
        raise UserError(f"--teacher-max-pixels does not apply to {name}: InternVL shows each frame as one tile")
    model, tokenizer = _internvl_model(INTERNVL_PRESETS[name], torch.device(device), dtype, seed,
                                       attn_implementation)
    vision = model.config.vision_config
    return InternVLTeacher(model, tokenizer, TileSpec(tile=int(vision.image_size[0]),
                                                      tokens_per_tile=int(model.config.image_seq_length)))


# ----------------------------------------------------------------------------- more reasoners (issue 18)
# Recalled from the published diffusers config.json files (not read here, no network):
# Wan2.1-T2V/I2V-14B and each Wan2.2-A14B expert: 40 layers, 40 heads x 128 (dim 5120), ffn 13824,
# text_dim 4096, freq_dim 256, patch (1, 2, 2); T2V in 16, I2V in 36; Wan2.1-I2V also image_dim 1280
# (CLIP ViT-H/14: 32 layers, width 1280, 16 heads, MLP 5120, 224 px, patch 14 -> 257 tokens) and
# added_kv_proj_dim 5120; A14B boundary_ratio 0.875 (T2V) / 0.9 (I2V). Wan2.1 VAE: base_dim 96,
# z_dim 16, dim_mult [1, 2, 4, 4], 2 res blocks, 8x spatial. HunyuanVideo-1.5: the diffusers class
# defaults (54 double-stream blocks, 16 heads x 128, MLP ratio 4, 2 refiner blocks, in 65 / out 32,
# patch 1, text 3584 (Qwen2.5-VL-7B) + ByT5 1472 + SigLIP 1152 (so400m: 27 layers, MLP 4304, 16 heads,
# 384 px, patch 14 -> 729 tokens)); its VAE 32 channels, widths (128, 256, 512, 1024, 1024), 16x / 4x.
# Model cards: Wan2.1 "14B", Wan2.2 A14B "27B total, 14B active", HunyuanVideo-1.5 "8.3B".

@dataclass(frozen=True)
class VideoPreset(WanPreset):
    """A reasoner other than the Wan TI2V family: ``family`` picks the adapter
    (wan-t2v / wan-i2v: ``Wan21Reasoner``, wan-a14b: ``WanA14BReasoner``, hunyuan15:
    ``HunyuanVideo15Reasoner``); ``image_encoder`` is the
    CLIP/SigLIP vision config (built at the real size: it is small), ``i2v`` whether a first
    frame conditions the video."""

    family: str = "wan-t2v"
    i2v: bool = False
    boundary_ratio: float | None = None
    image_encoder: dict[str, Any] | None = None


def _wan21_vae(base_dim: int = 96, dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2) -> dict[str, Any]:
    return dict(base_dim=base_dim, z_dim=16, dim_mult=list(dim_mult), num_res_blocks=num_res_blocks,
                attn_scales=[], temperal_downsample=[False, True, True], latents_mean=[0.0] * 16,
                latents_std=[1.0] * 16)


def _wan14b(in_channels: int, image_dim: int | None = None, **small) -> dict[str, Any]:
    cfg = _wan_transformer(40, 40, 128, 13824, 4096)
    cfg.update(in_channels=in_channels, out_channels=16, image_dim=image_dim, **small)
    cfg["added_kv_proj_dim"] = cfg["num_attention_heads"] * cfg["attention_head_dim"] if image_dim else None
    return cfg


def _hunyuan15_transformer(**small) -> dict[str, Any]:
    return dict(dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128,
                     num_layers=54, num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1,
                     qk_norm="rms_norm", text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152,
                     rope_theta=256.0, rope_axes_dim=(16, 56, 56), target_size=640, use_meanflow=False), **small)


CLIP_VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  image_size=224, patch_size=14, projection_dim=1024)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14)
HUNYUAN15_VAE = dict(latent_channels=32, block_out_channels=[128, 256, 512, 1024, 1024], layers_per_block=2,
                     spatial_compression_ratio=16, temporal_compression_ratio=4, scaling_factor=1.03682)
_WAN14B = dict(num_frames=81, fps=16, height=480, width=832)
_TINY_WAN = dict(num_layers=2, num_attention_heads=2, attention_head_dim=24, ffn_dim=128, text_dim=64, freq_dim=32)
_TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
_TINY_RUN = dict(text_len=32, fps=8, num_frames=9, height=64, width=64)
_RECALLED = ("every transformer/VAE/image-encoder value (see the comment above VideoPreset)",
             "latents_mean/std (0/1)", "flow_shift", "steps (step-distilled samplers)")

VIDEO_PRESETS: dict[str, VideoPreset] = {p.name: p for p in (
    VideoPreset("wan2.1-t2v-14b", _wan14b(16), _wan21_vae(), flow_shift=5.0, recalled=_RECALLED, **_WAN14B),
    VideoPreset("wan2.1-i2v-14b-480p", _wan14b(36, 1280), _wan21_vae(), flow_shift=3.0, family="wan-i2v", i2v=True,
                image_encoder=CLIP_VIT_H, recalled=_RECALLED, **_WAN14B),
    VideoPreset("wan2.2-t2v-a14b", _wan14b(16), _wan21_vae(), flow_shift=12.0, family="wan-a14b",
                boundary_ratio=0.875, recalled=_RECALLED, **dict(_WAN14B, height=720, width=1280)),
    VideoPreset("wan2.2-i2v-a14b", _wan14b(36), _wan21_vae(), flow_shift=5.0, family="wan-a14b", i2v=True,
                boundary_ratio=0.9, recalled=_RECALLED, **dict(_WAN14B, height=720, width=1280)),
    VideoPreset("hunyuan15-480p-t2v", _hunyuan15_transformer(), HUNYUAN15_VAE, text_len=1000, flow_shift=5.0,
                steps=8, fps=24, num_frames=121, height=480, width=848, family="hunyuan15", recalled=_RECALLED),
    VideoPreset("hunyuan15-480p-i2v", _hunyuan15_transformer(), HUNYUAN15_VAE, text_len=1000, flow_shift=5.0,
                steps=8, fps=24, num_frames=121, height=480, width=848, family="hunyuan15", i2v=True,
                image_encoder=SIGLIP_SO400M, recalled=_RECALLED),
    # the same code paths, small enough for a CPU check
    VideoPreset("wan2.1-i2v-tiny", _wan14b(36, 32, **_TINY_WAN), _wan21_vae(16, (1, 2, 2, 2), 1), family="wan-i2v",
                i2v=True, image_encoder=_TINY_CLIP, **dict(_TINY_RUN, text_len=512)),
    VideoPreset("wan2.2-a14b-tiny", _wan14b(36, **_TINY_WAN), _wan21_vae(16, (1, 2, 2, 2), 1), family="wan-a14b",
                i2v=True, boundary_ratio=0.9, **_TINY_RUN),
    VideoPreset("hunyuan15-tiny", _hunyuan15_transformer(
        in_channels=17, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=32, image_embed_dim=32, rope_axes_dim=(4, 6, 6),
        target_size=64), dict(HUNYUAN15_VAE, latent_channels=8, block_out_channels=[16, 32, 32, 64, 64],
                              layers_per_block=1),
        family="hunyuan15", i2v=True, image_encoder=dict(_TINY_CLIP, num_hidden_layers=1), steps=3, **_TINY_RUN),
)}


def any_preset(name: str) -> WanPreset:
    """A reasoner preset of either table."""
    if name in VIDEO_PRESETS:
        return VIDEO_PRESETS[name]
    if name in WAN_PRESETS:
        return WAN_PRESETS[name]
    raise UserError(f"unknown reasoner preset {name!r}; choose one of {sorted(WAN_PRESETS) + sorted(VIDEO_PRESETS)}")


def _video_modules(preset: VideoPreset, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype):
    """name -> random-weight module of ``preset`` built on ``device`` (``meta`` for counting)."""
    from diffusers import (AutoencoderKLHunyuanVideo15, AutoencoderKLWan, HunyuanVideo15Transformer3DModel,
                           WanTransformer3DModel)
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    hunyuan = preset.family == "hunyuan15"
    transformer_cls = HunyuanVideo15Transformer3DModel if hunyuan else WanTransformer3DModel
    modules: dict[str, torch.nn.Module] = {}
    with _defaults(device, dtype):
        modules["transformer"] = transformer_cls(**preset.transformer)
        if preset.boundary_ratio is not None:
            modules["transformer_2"] = transformer_cls(**preset.transformer)
        if preset.image_encoder is not None and (hunyuan or preset.transformer.get("image_dim")):
            vision = (SiglipVisionModel(SiglipVisionConfig(**preset.image_encoder)) if hunyuan
                      else CLIPVisionModel(CLIPVisionConfig(**preset.image_encoder)))
            modules["image_encoder"] = vision.eval()
    for name in ("transformer", "transformer_2"):
        if name in modules:
            _keep_fp32(modules[name])
    with _defaults(device, vae_dtype):
        modules["vae"] = (AutoencoderKLHunyuanVideo15 if hunyuan else AutoencoderKLWan)(**preset.vae)
    return modules


def build_video_reasoner(preset: VideoPreset | str, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype | None = None, seed: int = 0):
    """The adapter of ``preset`` over random-weight modules, without text encoders:
    give ``prepare`` a ``prompt_embeds`` (``random_prompt_embeds``)."""
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    from ..reasoner.hunyuan15 import HunyuanDefaults, HunyuanVideo15Reasoner
    from ..reasoner.wan import WanDefaults
    from ..reasoner.wan_a14b import WanA14BReasoner
    from ..reasoner.wan21 import Wan21Reasoner

    preset = VIDEO_PRESETS[preset] if isinstance(preset, str) else preset
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        m = _video_modules(preset, device, dtype, vae_dtype or dtype)
    size = dict(num_frames=preset.num_frames, height=preset.height, width=preset.width, steps=preset.steps,
                fps=preset.fps, max_sequence_length=preset.text_len)
    common = dict(flow_shift=preset.flow_shift, device=device)
    if preset.family == "hunyuan15":
        px = (preset.image_encoder or {}).get("image_size", 384)
        extra = dict(image_encoder=m["image_encoder"], feature_extractor=SiglipImageProcessor(
            size={"height": px, "width": px})) if preset.i2v else {}
        return HunyuanVideo15Reasoner(m["transformer"], m["vae"], None, None, text_encoder_2=None, tokenizer_2=None,
                                      image_to_video=preset.i2v, defaults=HunyuanDefaults(**size), **extra, **common)
    defaults = WanDefaults(**size)
    extra = {}
    if "image_encoder" in m:
        px = preset.image_encoder["image_size"]
        extra = dict(image_encoder=m["image_encoder"], image_processor=CLIPImageProcessor(
            size={"shortest_edge": px}, crop_size={"height": px, "width": px}))
    if preset.family == "wan-a14b":
        return WanA14BReasoner(m["transformer"], m["vae"], None, None, transformer_2=m["transformer_2"],
                               boundary_ratio=preset.boundary_ratio, defaults=defaults, **extra, **common)
    return Wan21Reasoner(m["transformer"], m["vae"], None, None, defaults=defaults, **extra, **common)


def count_video_parameters(name: str) -> dict[str, int]:
    """Parameters per module of a ``VIDEO_PRESETS`` entry, counted on the meta device."""
    preset = VIDEO_PRESETS[name]
    modules = _video_modules(preset, torch.device("meta"), torch.float32, torch.float32)
    return {k: sum(p.numel() for p in v.parameters()) for k, v in modules.items()}


def _hunyuan15_prompt_embeds(reasoner, prompt_tokens: int, seed: int) -> dict[str, torch.Tensor]:
    from ..reasoner.hunyuan15 import BYT5_LENGTH

    cfg, length = reasoner.transformer.config, reasoner.defaults.max_sequence_length
    g = torch.Generator().manual_seed(seed)
    valid = min(prompt_tokens, length)
    embeds = torch.zeros(1, length, cfg.text_embed_dim)
    embeds[:, :valid] = torch.randn(1, valid, cfg.text_embed_dim, generator=g)
    mask = torch.zeros(1, length)
    mask[:, :valid] = 1.0
    return {"embeds": embeds, "mask": mask, "embeds_2": torch.zeros(1, BYT5_LENGTH, cfg.text_embed_2_dim),
            "mask_2": torch.zeros(1, BYT5_LENGTH)}
