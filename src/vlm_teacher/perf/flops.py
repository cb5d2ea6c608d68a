"""Analytic FLOP counts of the test-time step and of a frozen generation (for MFU).

Conventions (the usual ones for model FLOP utilisation):

- one multiply-add = 2 FLOPs; only matrix products count (linear layers,
  convolutions, the two products of attention); norms, activations and
  element-wise work are left out;
- ``Flops`` splits a forward pass into ``grad`` (products on the path from the
  LoRA or the frames to the loss, which need input gradients in backward),
  ``const`` (products whose inputs carry no gradient: the text embedder, the
  cross-attention keys/values of the text, the per-token time embedding, the
  patch embedding of the fixed noise) and ``attention`` (QK^T and PV);
- backward with FROZEN base weights computes input gradients only: the same
  FLOPs as the forward product for every linear/conv on the gradient path, and
  two times the forward for the attention products (dQ, dK, dV, dP); the LoRA
  adds its weight gradients (= its forward FLOPs). Recomputation by gradient
  checkpointing is NOT counted (model FLOPs, not hardware FLOPs);
- causal attention in the teacher's language model counts half of the square
  (``causal_half``; torch's FlopCounterMode counts the whole square, so the tests
  compare with ``causal_half=False``).

The VAE decoder is counted exactly by running it on the ``meta`` device under
``torch.utils.flop_counter.FlopCounterMode`` (shapes only, no memory, no compute);
its backward is its forward again (input gradients of the convolutions).
The Wan transformer and the Qwen-VL formulas are checked against FlopCounterMode
on small real models in tests/test_presets_flops.py.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class Flops:
    """Forward FLOPs of one pass, split by what backward must do with them."""

    grad: float = 0.0       # products on the gradient path (input grads in backward)
    attention: float = 0.0  # attention products on the gradient path (2x in backward)
    const: float = 0.0      # products with no gradient path (forward only)
    lora: float = 0.0       # LoRA products (forward; their weight grads cost the same again)

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.grad + other.grad, self.attention + other.attention,
                     self.const + other.const, self.lora + other.lora)

    def __mul__(self, k: float) -> "Flops":
        return Flops(self.grad * k, self.attention * k, self.const * k, self.lora * k)

    __rmul__ = __mul__

    @property
    def forward(self) -> float:
        return self.grad + self.attention + self.const + self.lora

    @property
    def backward(self) -> float:
        """Input gradients through frozen weights + the LoRA's weight gradients."""
        return self.grad + 2.0 * self.attention + 2.0 * self.lora

    @property
    def forward_backward(self) -> float:
        return self.forward + self.backward


# ----------------------------------------------------------------------------- Wan transformer

def wan_tokens(transformer_cfg: dict[str, Any], latent_shape: Sequence[int]) -> int:
    pt, ph, pw = transformer_cfg["patch_size"]
    _, _, t, h, w = latent_shape
    return (t // pt) * (h // ph) * (w // pw)


def wan_transformer(transformer_cfg: dict[str, Any], latent_shape: Sequence[int], text_len: int,
                    lora_rank: int = 0, lora_targets: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
                    per_token_time: bool = True, image_tokens: int = 0) -> Flops:
    """One forward of diffusers' ``WanTransformer3DModel`` on a latent of ``latent_shape``.

    Per block: self-attention q/k/v/out (8 N d^2) and its products (4 N^2 d);
    cross-attention q/out on the video (4 N d^2), k/v on the text (4 L d^2, no
    gradient) and its products (4 N L d); the GELU MLP (4 N d f). Outside the
    blocks: patch embedding, per-token time embedding (Wan2.2 TI2V gives each
    token its own timestep), text embedder, output projection. LoRA of rank r on
    a linear (in, out) over n tokens: 2 n r (in + out); ``lora_targets`` are
    suffixes matched in both attentions as peft does. ``image_tokens``: Wan2.1-I2V's CLIP
    states (257), embedded once and read by extra cross-attention keys/values in every block."""
    c = transformer_cfg
    d = c["num_attention_heads"] * c["attention_head_dim"]
    f, layers = c["ffn_dim"], c["num_layers"]
    patch = math.prod(c["patch_size"])
    cin, cout = c["in_channels"], c.get("out_channels") or c["in_channels"]
    n, ln = wan_tokens(c, latent_shape), int(text_len)
    freq, text_dim = c.get("freq_dim", 256), c["text_dim"]

    const = 2.0 * n * cin * patch * d                                   # patch embedding of x_t
    time_tokens = n if per_token_time else 1
    const += 2.0 * time_tokens * d * (freq + d + 6 * d)                 # time embedder + time_proj
    const += 2.0 * ln * (text_dim * d + d * d)                          # text embedder
    grad = 2.0 * n * d * cout * patch                                   # proj_out
    li, image_dim = int(image_tokens), c.get("image_dim") or 0
    const += 2.0 * li * (image_dim * image_dim + image_dim * d)         # image embedder
    attention = 0.0
    lora = 0.0
    for _ in range(layers):
        grad += 8.0 * n * d * d + 4.0 * n * d * d + 4.0 * n * d * f
        const += 4.0 * ln * d * d + 4.0 * li * d * d
        attention += 4.0 * n * n * d + 4.0 * n * ln * d + 4.0 * n * li * d
        if lora_rank:
            for target in ("to_q", "to_k", "to_v", "to_out.0"):
                if target not in lora_targets:
                    continue
                lora += 2.0 * n * lora_rank * 2 * d                     # attn1 (video tokens)
                tokens = ln if target in ("to_k", "to_v") else n        # attn2 k/v read the text
                lora += 2.0 * tokens * lora_rank * 2 * d
    return Flops(grad=grad, attention=attention, const=const, lora=lora)


# ----------------------------------------------------------------------------- VAE / any module on meta

def module_flops_on_meta(build, run) -> float:
    """FLOPs counted by FlopCounterMode while ``run(module)`` executes on a module that
    ``build()`` creates under ``torch.device('meta')`` (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        module = build()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        run(module)
    return float(counter.get_total_flops())


@functools.lru_cache(maxsize=64)
def _vae_decode_cached(cfg_items: tuple, latent_frames: int, h: int, w: int) -> float:
    from diffusers import AutoencoderKLHunyuanVideo15, AutoencoderKLWan

    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg_items}
    cls = AutoencoderKLHunyuanVideo15 if "latent_channels" in cfg else AutoencoderKLWan

    def run(vae):
        z = torch.zeros(1, cfg.get("z_dim") or cfg["latent_channels"], latent_frames, h, w, device="meta")
        vae.decode(z, return_dict=False)

    return module_flops_on_meta(lambda: cls(**{k: v for k, v in cfg.items() if not k.startswith("_")}), run)


def vae_decode(vae_cfg: dict[str, Any], latent_frames: int, latent_h: int, latent_w: int) -> Flops:
    """A decode of ``latent_frames`` latent frames by diffusers' ``AutoencoderKLWan`` (or
    ``AutoencoderKLHunyuanVideo15``, told by its ``latent_channels``), counted on the meta
    device; all of it is on the gradient path of the preview."""
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in vae_cfg.items()))
    return Flops(grad=_vae_decode_cached(items, int(latent_frames), int(latent_h), int(latent_w)))


# ----------------------------------------------------------------------------- Qwen-VL

def _qwen25_window_sizes(gh: int, gw: int, merge: int, window_size: int, patch: int) -> list[int]:
    """Patch counts of Qwen2.5-VL's attention windows over one temporal group."""
    side = window_size // merge // patch                   # merged units per window side
    mh, mw = gh // merge, gw // merge
    rows = [min(side, mh - i) for i in range(0, mh, side)]
    cols = [min(side, mw - j) for j in range(0, mw, side)]
    return [r * c * merge * merge for r in rows for c in cols]


def qwen_vision(arch: str, vision_cfg: dict[str, Any], grid_thw: Sequence[int]) -> Flops:
    """One forward of the vision tower on a video of grid (t, h, w) patches.

    Patch embedding 2 P (3 tp p^2) D; per block qkv + proj 8 P D^2, MLP 4 P D F
    (Qwen3-VL, GELU) or 6 P D F (Qwen2.5-VL, gated SiLU); attention 4 sum S^2 D over
    its sequences (Qwen3-VL: one per temporal group; Qwen2.5-VL: windows, and whole
    temporal groups in ``fullatt_block_indexes``); the patch merger 2 (P/m^2)((m^2 D)^2
    + m^2 D O), and Qwen3-VL's deepstack mergers of the same size."""
    c = vision_cfg
    t, gh, gw = (int(v) for v in grid_thw)
    p_total = t * gh * gw
    dv, fv, depth = c["hidden_size"], c["intermediate_size"], c["depth"]
    patch, tp, merge = c["patch_size"], c["temporal_patch_size"], c["spatial_merge_size"]
    out = c["out_hidden_size"]
    grad = 2.0 * p_total * c.get("in_channels", 3) * tp * patch * patch * dv
    qwen3 = arch != "qwen2_5_vl"  # Qwen3-VL and Qwen3-VL-MoE share the tower
    mlp = (4.0 if qwen3 else 6.0) * p_total * dv * fv
    full = float(t * (gh * gw) ** 2)
    if arch == "qwen2_5_vl":
        windowed = float(t * sum(s * s for s in _qwen25_window_sizes(gh, gw, merge, c["window_size"], patch)))
        full_blocks = set(c.get("fullatt_block_indexes") or [])
    attention = 0.0
    for i in range(depth):
        grad += 8.0 * p_total * dv * dv + mlp
        seqsq = full if qwen3 or i in full_blocks else windowed
        attention += 4.0 * seqsq * dv
    hm = dv * merge * merge
    mergers = 1 + (len(c.get("deepstack_visual_indexes") or []) if qwen3 else 0)
    grad += mergers * 2.0 * (p_total / (merge * merge)) * (hm * hm + hm * out)
    return Flops(grad=grad, attention=attention)


def internvl_vision(vision_cfg: dict[str, Any], downsample_ratio: float, text_hidden: int, tiles: int) -> Flops:
    """One forward of InternVL's vision side on ``tiles`` tiles (one per frame shown).

    Per tile: P = (image / patch)^2 patches plus the CLS token, S = P + 1; patch embedding
    2 P (3 p^2) D; per layer q/k/v/out 8 S D^2, MLP 4 S D F, attention 4 S^2 D; after the
    pixel shuffle, the projector on n = P r^2 tokens of width D / r^2: 2 n (D / r^2) H + 2 n H^2."""
    c = vision_cfg
    size, patch = (v[0] if isinstance(v, (list, tuple)) else v for v in (c["image_size"], c["patch_size"]))
    patches = (int(size) // int(patch)) ** 2
    seq = patches + 1
    d, f, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    grad = 2.0 * patches * c.get("num_channels", 3) * patch * patch * d
    grad += layers * (8.0 * seq * d * d + 4.0 * seq * d * f)
    tokens, wide = patches * downsample_ratio ** 2, d / downsample_ratio ** 2
    grad += 2.0 * tokens * wide * text_hidden + 2.0 * tokens * text_hidden * text_hidden
    return Flops(grad=grad * tiles, attention=layers * 4.0 * seq * seq * d * tiles)


def qwen_language_shared(text_cfg: dict[str, Any], prefix: int, suffixes: Sequence[int], answer_tokens: int,
                         causal_half: bool = True) -> Flops:
    """The language model over ONE sequence: a prefix shared by all questions, then each
    question's suffix attending to the prefix and itself (``QwenVLTeacher.share_prefix``).
    Linear layers see prefix + sum(suffixes) tokens; the attention products cover the
    visible pairs (prefix^2 / 2 + sum s (prefix + s / 2) with ``causal_half``; the whole
    square of the packed sequence without it, as an unmasked kernel computes it)."""
    total = prefix + sum(suffixes)
    if not causal_half:
        return qwen_language(text_cfg, [total], answer_tokens, causal_half=False) + Flops(
            grad=2.0 * (len(suffixes) - 1) * answer_tokens * text_cfg["hidden_size"] * text_cfg["vocab_size"])
    base = qwen_language(text_cfg, [total], 0, causal_half=False)
    c = text_cfg
    heads = c["num_attention_heads"]
    hd = c.get("head_dim") or c["hidden_size"] // heads
    pairs = prefix * prefix / 2.0 + sum(s * (prefix + s / 2.0) for s in suffixes)
    head = 2.0 * len(suffixes) * answer_tokens * c["hidden_size"] * c["vocab_size"]
    return Flops(grad=base.grad + head, attention=c["num_hidden_layers"] * 4.0 * pairs * heads * hd)


def qwen_language(text_cfg: dict[str, Any], seq_lens: Sequence[int], answer_tokens: int,
                  causal_half: bool = True) -> Flops:
    """One forward of the language model over rows of ``seq_lens`` tokens (padding
    excluded) and the LM head at the ``answer_tokens`` positions of each row.

    Per layer and token: q/o 4 d (H h), k/v 4 d (K h), gated MLP 6 d f; a sparse MoE layer
    (Qwen3-VL-MoE) instead: its router 2 d E and ``num_experts_per_tok`` gated experts
    of width ``moe_intermediate_size``; attention 4 n^2 (H h) per row (half of it with
    ``causal_half``)."""
    c = text_cfg
    d, f, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or d // heads
    tokens = float(sum(seq_lens))
    experts = c.get("num_experts") or c.get("num_local_experts") or 0  # config.to_dict() says num_local_experts
    step = c.get("decoder_sparse_step") or 1
    dense = set(c.get("mlp_only_layers") or [])
    mlp = sum(2.0 * d * experts + c["num_experts_per_tok"] * 6.0 * d * c["moe_intermediate_size"]
              if experts and i not in dense and (i + 1) % step == 0 else 6.0 * d * f for i in range(layers))
    per_token = layers * (4.0 * d * heads * hd + 4.0 * d * kv * hd) + mlp
    sq = float(sum(n * n for n in seq_lens)) * (0.5 if causal_half else 1.0)
    grad = per_token * tokens + 2.0 * len(seq_lens) * answer_tokens * d * c["vocab_size"]
    attention = layers * 4.0 * sq * heads * hd
    return Flops(grad=grad, attention=attention)


# ----------------------------------------------------------------------------- the step

def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s over the device's peak."""
    if seconds <= 0 or peak_tflops <= 0:
        return float("nan")
    return flops / seconds / (peak_tflops * 1e12)


#: dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4,
    "H200": 989.4, "A100": 312.0, "L40S": 362.05, "B200": 2250.0,
}


def device_peak_tflops(name: str) -> float | None:
    """Peak bf16 TFLOP/s for a CUDA device name (``torch.cuda.get_device_name``), if known."""
    upper = name.upper()
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        parts = key.upper().split()
        if all(p in upper for p in parts):
            return PEAK_BF16_TFLOPS[key]
    return None


def flop_counter():
    """torch's FlopCounterMode that also counts the CPU flash-attention kernel
    (torch registers formulas for the CUDA attention kernels only)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = cpu_sdpa
    return FlopCounterMode(display=False, custom_mapping=mapping)


# ----------------------------------------------------------------------------- one instance of the loop

def _cfg_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def teacher_grid(teacher, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(t, h, w) patch grid the teacher's pixel path makes of ``num_frames`` frames of this size."""
    from ..teacher.pixels import smart_resize

    spec = teacher.spec
    if teacher.arch == "internvl":  # one tile per frame, whatever the size
        side = spec.tile // int(teacher.model.config.vision_config.patch_size[0])
        return (num_frames, side, side)
    h, w = smart_resize(height, width, spec.factor, spec.min_pixels, spec.max_pixels)
    return (-(-num_frames // spec.temporal_patch_size), h // spec.patch_size, w // spec.patch_size)


def teacher_rows(teacher, questions: Sequence[str], grid: Sequence[int], num_frames: int) -> list[list[int]]:
    """Token ids of each question's row (prompt with the video placeholders + the answer),
    built on the host (works for a model on any device, ``meta`` included)."""
    grid_tensor = torch.tensor([list(grid)], dtype=torch.long)
    args = (num_frames,) if teacher.arch == "internvl" else (grid_tensor, num_frames)
    return [teacher._encode(teacher.question_text(q, *args)) + list(teacher.answer_ids) for q in questions]


def teacher_lengths(teacher, questions: Sequence[str], grid: Sequence[int], num_frames: int) -> list[int]:
    return [len(r) for r in teacher_rows(teacher, questions, grid, num_frames)]


def tto_flops(reasoner, teacher, latent_shape: Sequence[int], frame_indices: Sequence[int],
              questions: Sequence[str], lora_rank: int, lora_targets: Sequence[str],
              sampler_steps: int | None = None) -> dict[str, Any]:
    """FLOPs of one test-time step and of one generation for a ``WanReasoner`` and a
    ``QwenVLTeacher`` or ``InternVLTeacher`` (real or random weights; only their configs are read).

    Returns ``{"step": {component: Flops}, "step_total": float (forward + backward),
    "generate_frozen": float, "generate_adapted": float, "teacher_tokens": [...]}``."""
    tcfg = _cfg_dict(reasoner.transformer.config)
    vcfg = _cfg_dict(reasoner.vae.config)
    text_len = int(reasoner.defaults.max_sequence_length)
    steps = int(sampler_steps or reasoner.defaults.steps)
    _, _, t_lat, h_lat, w_lat = (int(v) for v in latent_shape)
    scale_t, scale_s = int(reasoner.scale_temporal), int(reasoner.scale_spatial)
    needed = math.ceil(max(frame_indices) / scale_t) + 1
    if not getattr(reasoner, "preview_needed_only", True):
        needed = t_lat

    wan_lora = reasoner_transformer(reasoner, latent_shape, text_len, lora_rank, lora_targets)
    wan_plain = reasoner_transformer(reasoner, latent_shape, text_len)
    decoder = getattr(reasoner, "preview_decoder", None)
    if decoder is not None:
        from ..reasoner.surrogate import TinyWanDecoder

        args = (decoder.latent_channels, decoder.patch, decoder.widths, decoder.time_upscale)
        idx = list(frame_indices)
        preview = Flops(grad=module_flops_on_meta(
            lambda: TinyWanDecoder(*args),
            lambda m: m.decode(torch.zeros(1, args[0], needed, h_lat, w_lat, device="meta"), idx)))
    else:
        preview = vae_decode(vcfg, needed, h_lat, w_lat)

    height, width = h_lat * scale_s, w_lat * scale_s
    k = len(frame_indices)
    grid = teacher_grid(teacher, k, height, width)
    rows = teacher_rows(teacher, questions, grid, k)
    lens = [len(r) for r in rows]
    mcfg = teacher.model.config
    vision_cfg = _cfg_dict(mcfg.vision_config)
    text_cfg = _cfg_dict(mcfg.text_config)
    if teacher.arch == "internvl":
        vision = internvl_vision(vision_cfg, float(mcfg.downsample_ratio), text_cfg["hidden_size"], k)
    else:
        vision = qwen_vision(teacher.arch, vision_cfg, grid)
    if not getattr(teacher, "batch_questions", True):  # the naive path runs the vision tower per question
        vision = vision * len(rows)
    n_ans = len(teacher.answer_ids)
    if getattr(teacher, "share_prefix", False) and len(rows) > 1 and getattr(teacher, "batch_questions", True):
        from ..teacher.qwen import shared_prefix_length

        prefix = shared_prefix_length(rows, n_ans)
        language = qwen_language_shared(text_cfg, prefix, [n - prefix for n in lens], n_ans)
    else:
        language = qwen_language(text_cfg, lens, n_ans)
    step = {"transformer": wan_lora, "preview_decode": preview, "teacher_vision": vision,
            "teacher_language": language}
    full_decode = vae_decode(vcfg, t_lat, h_lat, w_lat).forward
    return {
        "step": step,
        "step_total": sum(f.forward_backward for f in step.values()),
        "generate_frozen": steps * wan_plain.forward + full_decode,
        "generate_adapted": steps * wan_lora.forward + full_decode,
        "teacher_tokens": lens,
        "teacher_grid": list(grid),
        "preview_latent_frames": needed,
    }


# ----------------------------------------------------------------------------- other reasoners (issue 18)

def hunyuan15_transformer(cfg: dict[str, Any], latent_shape: Sequence[int], text_len: int, lora_rank: int = 0,
                          lora_targets: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
                          byt5_tokens: int = 256, image_tokens: int = 729, timestep_r: bool = False) -> Flops:
    """One forward of diffusers' ``HunyuanVideo15Transformer3DModel``.

    Outside the blocks (no gradient path): patch embedding of [x_t, condition, mask], time
    embedding (twice with meanflow's ``timestep_r``), the text refiner (input projection, its
    pooled-text/time embedding, ``num_refiner_layers`` self-attention blocks over the
    ``text_len`` Qwen tokens), the ByT5 and image projections. Per double-stream block, on the
    gradient path (the text stream mixes with the video through the joint attention): video
    and text projections (8 N d^2 + 8 L d^2), joint attention over N + L tokens (4 (N + L)^2 d),
    both MLPs (4 N d f + 4 L d f), with L = text + ByT5 + image tokens (padding included, as
    the model computes it); the two AdaLayerNormZero projections of the time embedding (one
    token each). LoRA on attention targets: video-side names read N tokens, ``add_*`` and
    ``to_add_out`` read L."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f = int(d * cfg.get("mlp_ratio", 4.0))
    patch = cfg.get("patch_size_t", 1) * cfg.get("patch_size", 1) ** 2
    _, _, t, h, w = latent_shape
    n = (t // cfg.get("patch_size_t", 1)) * (h // cfg.get("patch_size", 1)) * (w // cfg.get("patch_size", 1))
    lt, lb, li = int(text_len), int(byt5_tokens), int(image_tokens)
    big_l = lt + lb + li
    tdim, bdim, idim = cfg["text_embed_dim"], cfg["text_embed_2_dim"], cfg["image_embed_dim"]
    time = 2.0 * (256 * d + d * d)
    const = 2.0 * n * cfg["in_channels"] * patch * d + time * (2 if timestep_r else 1)
    const += time + 2.0 * (tdim * d + d * d) + 2.0 * lt * tdim * d           # refiner embeddings, proj_in
    for _ in range(cfg.get("num_refiner_layers", 2)):
        const += 8.0 * lt * d * d + 4.0 * lt * lt * d + 4.0 * lt * d * f + 2.0 * d * 2 * d
    const += 2.0 * lb * (bdim * 2048 + 2048 * 2048 + 2048 * d) + 2.0 * li * (idim * idim + idim * d)
    const += 2.0 * d * 2 * d                                                   # norm_out
    grad = 2.0 * n * d * cfg["out_channels"] * patch                           # proj_out
    attention = lora = 0.0
    for _ in range(cfg["num_layers"]):
        const += 2 * 2.0 * d * 6 * d
        grad += 8.0 * (n + big_l) * d * d + 4.0 * (n + big_l) * d * f
        attention += 4.0 * (n + big_l) ** 2 * d
        if lora_rank:
            for target in lora_targets:
                leaf = target.split("attn.")[-1]
                if target.startswith(("ff.", "ff_context.")):
                    lora += 2.0 * (big_l if target.startswith("ff_context.") else n) * lora_rank * (d + f)
                elif leaf in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
                    lora += 2.0 * big_l * lora_rank * 2 * d
                elif leaf in ("to_q", "to_k", "to_v", "to_out.0"):
                    lora += 2.0 * n * lora_rank * 2 * d
    return Flops(grad=grad, attention=attention, const=const, lora=lora)


def reasoner_transformer(reasoner, latent_shape: Sequence[int], text_len: int, lora_rank: int = 0,
                         lora_targets: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0")) -> Flops:
    """One denoiser call of any adapter (Wan, Wan2.1-I2V, one Wan2.2-A14B expert, HunyuanVideo-1.5)."""
    tcfg = _cfg_dict(reasoner.transformer.config)
    if hasattr(reasoner, "tokenizer_2"):
        meanflow = bool(reasoner.image_to_video and tcfg.get("use_meanflow"))
        image_tokens = 729  # text-to-video: the pipeline's zero tokens; image-to-video: SigLIP's patches
        if reasoner.image_to_video:
            vc = reasoner.image_encoder.config
            image_tokens = (vc.image_size // vc.patch_size) ** 2
        return hunyuan15_transformer(tcfg, latent_shape, text_len, lora_rank, lora_targets,
                                     image_tokens=image_tokens, timestep_r=meanflow)
    embeds = getattr(reasoner, "image_encoder", None)
    image_tokens = 0
    if embeds is not None and tcfg.get("image_dim"):
        vc = embeds.config
        image_tokens = (vc.image_size // vc.patch_size) ** 2 + 1                  # CLIP: patches + class token
    from ..reasoner.wan21 import Wan21Reasoner  # Wan2.1 / A14B: one timestep, not TI2V's per-token ones

    return wan_transformer(tcfg, latent_shape, text_len, lora_rank, lora_targets,
                           per_token_time=not isinstance(reasoner, Wan21Reasoner), image_tokens=image_tokens)
