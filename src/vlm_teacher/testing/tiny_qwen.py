"""Tiny random Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE folders, built from config in about a second.

They are real ``transformers`` models saved the way the released checkpoints are
(config.json, model.safetensors, tokenizer files, preprocessor_config.json,
generation_config.json), so tests load them through exactly the code path that
loads Qwen3-VL-4B. The sizes are parameters: a later step trains this
architecture on the grid suite and ships it as the embedded default teacher.

Constraints the configs respect (transformers refuses or misbehaves otherwise):
the text rope ``mrope_section`` sums to head_dim / 2; Qwen3-VL's vision
``num_position_embeddings`` is a perfect square and its ``deepstack_visual_indexes``
are below the vision depth (and no more than the text layers); the special-token
ids in the config are the tokenizer's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

from ..files import write_json
from .offline_tokenizer import build_offline_tokenizer
from .tiny_sizes import TinyVlmSize

ARCHS = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def mrope_section(head_dim: int, arch: str) -> list[int]:
    """(t, h, w) rotary split summing to head_dim / 2, in the released models' proportions
    (Qwen2.5-VL [16, 24, 24] for 128, Qwen3-VL [24, 20, 20] for 128)."""
    half = head_dim // 2
    hw = round(half * (3 / 8 if arch == "qwen2_5_vl" else 5 / 16))
    hw = max(1, min(hw, (half - 1) // 2))
    return [half - 2 * hw, hw, hw]


def build_tiny_qwen_vl(
    out_dir: str | os.PathLike,
    *,
    arch: str = "qwen2_5_vl",
    seed: int = 0,
    vision_depth: int = 2,
    patch_size: int | None = None,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    num_position_embeddings: int = 64,
    deepstack_visual_indexes: tuple[int, ...] | None = None,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 32768,
    initializer_range: float = 0.02,
    tokenizer_corpus: Iterable[str] = (),
    num_experts: int = 4,
    num_experts_per_tok: int = 2,
    **sizes: int,
) -> Path:
    """Write a tiny random ``arch`` model folder to ``out_dir`` and return its path.

    ``patch_size`` defaults to the real model's (14 for Qwen2.5-VL, 16 for Qwen3-VL).
    ``min_pixels`` defaults to one merged token (so small frames are not upscaled) and
    ``max_pixels`` to 256 x 256 per frame. ``initializer_range`` is the std of the random
    weights (the released models' 0.02; tests use larger values so that wrong positions
    or features change the outputs visibly). ``tokenizer_corpus``: extra lines for the
    offline BPE (the teacher recipe passes its prompts and questions, so they encode compactly).
    ``qwen3_vl_moe``: every text layer is a sparse MoE of ``num_experts`` experts (width
    ``intermediate_size``), ``num_experts_per_tok`` per token. ``sizes``: the ``TinyVlmSize`` fields.
    """
    import torch

    size = TinyVlmSize(**sizes)
    hidden_size, num_hidden_layers = size.hidden_size, size.num_hidden_layers
    num_attention_heads, num_key_value_heads = size.num_attention_heads, size.num_key_value_heads
    vision_hidden_size, vision_num_heads = size.vision_hidden_size, size.vision_num_heads

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError("hidden_size must divide by num_attention_heads, and heads by key/value heads")
    if vision_hidden_size % vision_num_heads:
        raise ValueError("vision_hidden_size must divide by vision_num_heads")
    side = math.isqrt(num_position_embeddings)
    if side * side != num_position_embeddings:
        raise ValueError(f"num_position_embeddings must be a perfect square, got {num_position_embeddings}")
    if deepstack_visual_indexes is None:
        deepstack_visual_indexes = tuple(range(min(vision_depth, num_hidden_layers, 3)))  # real: 3 layers
    if any(not 0 <= i < vision_depth for i in deepstack_visual_indexes) or len(deepstack_visual_indexes) > num_hidden_layers:
        raise ValueError(f"deepstack_visual_indexes {deepstack_visual_indexes} must lie in [0, {vision_depth}) "
                         f"and be no more than the {num_hidden_layers} text layers")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_offline_tokenizer(size.vocab_size, extra_corpus=tokenizer_corpus)
    tok_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
               ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    vocab = len(tokenizer)
    head_dim = hidden_size // num_attention_heads
    patch = patch_size or (14 if arch == "qwen2_5_vl" else 16)
    factor = patch * merge_size

    text: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden_size,
        "intermediate_size": size.intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "bos_token_id": tok_ids["<|endoftext|>"],
        "eos_token_id": tok_ids["<|im_end|>"],
        "pad_token_id": tok_ids["<|endoftext|>"],
        "tie_word_embeddings": tie_word_embeddings,
        "initializer_range": initializer_range,
    }
    vision: dict[str, Any] = {
        "depth": vision_depth,
        "hidden_size": vision_hidden_size,
        "intermediate_size": size.vision_intermediate_size,
        "num_heads": vision_num_heads,
        "in_channels": 3,
        "patch_size": patch,
        "temporal_patch_size": temporal_patch_size,
        "spatial_merge_size": merge_size,
        "out_hidden_size": hidden_size,
        "initializer_range": initializer_range,
    }
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as ConfigClass
        from transformers import Qwen2_5_VLForConditionalGeneration as ModelClass

        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0,
                                   "mrope_section": mrope_section(head_dim, arch)}
        vision.update({"hidden_act": "silu", "window_size": factor * 2, "tokens_per_second": 2,
                       "fullatt_block_indexes": [vision_depth - 1]})
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    else:
        if arch == "qwen3_vl_moe":
            from transformers import Qwen3VLMoeConfig as ConfigClass
            from transformers import Qwen3VLMoeForConditionalGeneration as ModelClass

            text.update(num_experts=num_experts, num_experts_per_tok=num_experts_per_tok,
                        moe_intermediate_size=size.intermediate_size, decoder_sparse_step=1)
        else:
            from transformers import Qwen3VLConfig as ConfigClass
            from transformers import Qwen3VLForConditionalGeneration as ModelClass

        text["head_dim"] = head_dim
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5000000.0,
                                   "mrope_section": mrope_section(head_dim, arch), "mrope_interleaved": True}
        vision.update({"hidden_act": "gelu_pytorch_tanh", "num_position_embeddings": num_position_embeddings,
                       "deepstack_visual_indexes": list(deepstack_visual_indexes)})
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    config = ConfigClass(
        text_config=text,
        vision_config=vision,
        image_token_id=tok_ids["<|image_pad|>"],
        video_token_id=tok_ids["<|video_pad|>"],
        vision_start_token_id=tok_ids["<|vision_start|>"],
        vision_end_token_id=tok_ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = ModelClass(config).eval()
    model.generation_config.eos_token_id = [tok_ids["<|im_end|>"], tok_ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = tok_ids["<|endoftext|>"]
    model.generation_config.bos_token_id = tok_ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    min_px = min_pixels if min_pixels is not None else factor * factor
    max_px = max_pixels if max_pixels is not None else 256 * 256
    write_json(out / "preprocessor_config.json", {
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "resample": 3,
        "image_mean": list(mean), "image_std": list(std),
        "patch_size": patch, "temporal_patch_size": temporal_patch_size, "merge_size": merge_size,
        "min_pixels": min_px, "max_pixels": max_px,
        "size": {"shortest_edge": min_px, "longest_edge": max_px},
    })
    return out
