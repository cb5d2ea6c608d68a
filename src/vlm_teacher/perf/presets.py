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
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, in_channels=3,
                    patch_size=16, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=2560,
                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17],
                    hidden_act="gelu_pytorch_tanh"),
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
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3,
                    patch_size=16, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64,
                    num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
                    hidden_act="gelu_pytorch_tanh"),
        min_pixels=32 * 32, max_pixels=256 * 256),
    "qwen3-vl-small": QwenPreset(
        name="qwen3-vl-small", arch="qwen3_vl",
        text=_qwen3_text(256, 4, 4, 2, 64, 768, 4096, [16, 8, 8]),
        vision=dict(depth=4, hidden_size=128, intermediate_size=512, num_heads=4, in_channels=3,
                    patch_size=16, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=256,
                    num_position_embeddings=256, deepstack_visual_indexes=[0, 1, 2],
                    hidden_act="gelu_pytorch_tanh"),
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
    unit-variance rows then zeros (WanPipeline zeroes the padding the same way)."""
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
