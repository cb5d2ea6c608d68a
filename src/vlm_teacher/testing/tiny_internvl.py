"""Tiny random InternVL (InternVL3-style, transformers ``InternVLForConditionalGeneration``) folders.

Saved the way the ``-hf`` checkpoints are: config.json (model_type ``internvl``, a
Qwen2 text config, an InternViT vision config), model.safetensors, the tokenizer
with InternVL's named tokens (``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ``<video>``
in tokenizer_config.json, the config's ``image_token_id`` = ``<IMG_CONTEXT>``) and
an InternVL-style chat template, preprocessor_config.json (GotOcr2ImageProcessor),
video_preprocessor_config.json and processor_config.json (``image_seq_length``).

Constraints: the tile (vision ``image_size``) is a multiple of the patch, the
patch grid side is even (pixel shuffle 0.5), and ``image_seq_length`` =
(tile / patch / 2)^2; a 56 px tile with 14 px patches gives 4 tokens per tile.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..files import write_json
from ..teacher.internvl import TOKEN_NAMES
from ..teacher.tiles import IMAGENET_MEAN, IMAGENET_STD
from .offline_tokenizer import build_offline_tokenizer
from .tiny_sizes import TinyVlmSize

#: InternVL-hf style: an image item renders as <IMG_CONTEXT>, a video item as <video>
#: (the processor expands both), each followed by a newline.
INTERNVL_STYLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif item['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def save_internvl_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 1536,
                            extra_corpus: Iterable[str] = ()):
    """The offline Qwen-style tokenizer plus InternVL's named multimodal tokens and chat
    template, saved to ``out_dir`` (tokenizer_config.json names the tokens as the -hf
    checkpoints do). Returns the tokenizer as ``AutoTokenizer`` loads it back."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_offline_tokenizer(vocab_size, extra_corpus=extra_corpus)
    tokenizer.add_special_tokens({"extra_special_tokens": list(TOKEN_NAMES.values())},
                                 replace_extra_special_tokens=False)
    tokenizer.chat_template = INTERNVL_STYLE_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(TOKEN_NAMES)
    cfg["model_specific_special_tokens"] = dict(TOKEN_NAMES)
    write_json(cfg_path, cfg)
    return AutoTokenizer.from_pretrained(out)


def internvl_config(text: dict[str, Any], vision: dict[str, Any], tokenizer, *, downsample_ratio: float = 0.5,
                    tie_word_embeddings: bool = False):
    """An ``InternVLConfig`` from Qwen2 text / InternViT vision kwargs, with the token ids of
    ``tokenizer`` and ``image_seq_length`` derived from the tile and patch sizes."""
    from transformers import InternVLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", TOKEN_NAMES["context_image_token"])}
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the vocabulary {text['vocab_size']}")
    tile, patch = int(vision["image_size"]), int(vision["patch_size"])
    side = tile // patch
    if tile % patch or (side * downsample_ratio) % 1:
        raise ValueError(f"image_size {tile} must be a multiple of patch_size {patch} with an even patch grid side")
    text = dict(text, model_type="qwen2", bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=tie_word_embeddings)
    vision = dict(vision, image_size=[tile, tile], patch_size=[patch, patch])
    return InternVLConfig(text_config=text, vision_config=vision, image_token_id=ids[TOKEN_NAMES["context_image_token"]],
                          image_seq_length=int(side * downsample_ratio) ** 2, downsample_ratio=downsample_ratio,
                          projector_hidden_act="gelu", vision_feature_layer=-1,
                          vision_feature_select_strategy="default", tie_word_embeddings=tie_word_embeddings)


def internvl_vision(layers: int, hidden: int, heads: int, mlp: int, image_size: int = 448, patch_size: int = 14,
                    initializer_range: float = 0.02, layer_scale_init_value: float = 0.1) -> dict[str, Any]:
    """InternViT kwargs (InternViT-300M-448px's choices: qkv bias, LayerNorm, mean pooling, no QK norm)."""
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
                image_size=image_size, patch_size=patch_size, attention_bias=True, use_qk_norm=False,
                hidden_act="gelu", norm_type="layer_norm", layer_norm_eps=1e-6, use_mean_pooling=True,
                use_absolute_position_embeddings=True, layer_scale_init_value=layer_scale_init_value,
                initializer_range=initializer_range, num_channels=3)


def qwen2_text(hidden: int, layers: int, heads: int, kv: int, mlp: int, vocab: int,
               max_positions: int = 32768, initializer_range: float = 0.02) -> dict[str, Any]:
    """Qwen2 / Qwen2.5 language-model kwargs (rope theta 1e6, as Qwen2.5)."""
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=max_positions,
                rms_norm_eps=1e-6, hidden_act="silu", initializer_range=initializer_range,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def build_tiny_internvl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    vision_layers: int = 2,
    tile: int = 56,
    patch_size: int = 14,
    max_tiles: int = 12,
    initializer_range: float = 0.02,
    layer_scale_init_value: float = 0.1,
    tokenizer_corpus: Iterable[str] = (),
    **sizes: int,
) -> Path:
    """Write a tiny random InternVL folder to ``out_dir`` and return its path.

    ``tile`` is the vision tower's image size (InternVL3: 448; here 56, 4 tokens per tile).
    ``initializer_range`` is the std of the random weights (tests use a larger one so
    that wrong positions or features change the outputs visibly). ``sizes``: the ``TinyVlmSize`` fields."""
    import torch
    from transformers import InternVLForConditionalGeneration

    size = TinyVlmSize(**sizes)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = save_internvl_tokenizer(out, size.vocab_size, tokenizer_corpus)
    text = qwen2_text(size.hidden_size, size.num_hidden_layers, size.num_attention_heads, size.num_key_value_heads,
                      size.intermediate_size, len(tokenizer), initializer_range=initializer_range)
    vision = internvl_vision(vision_layers, size.vision_hidden_size, size.vision_num_heads,
                             size.vision_intermediate_size, tile, patch_size, initializer_range, layer_scale_init_value)
    config = internvl_config(text, vision, tokenizer)
    config.initializer_range = initializer_range
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():  # the vision tower's position embeddings and CLS start at zero: make them matter
        emb = model.model.vision_tower.embeddings
        emb.position_embeddings.normal_(0.0, initializer_range)
        emb.cls_token.normal_(0.0, initializer_range)
    gen = model.generation_config
    gen.eos_token_id = [config.text_config.eos_token_id, config.text_config.bos_token_id]
    gen.pad_token_id = gen.bos_token_id = config.text_config.bos_token_id
    gen.do_sample = False
    model.save_pretrained(out, safe_serialization=True)

    common = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "do_convert_rgb": True, "resample": 3, "image_mean": list(IMAGENET_MEAN),
              "image_std": list(IMAGENET_STD), "size": {"height": tile, "width": tile}}
    write_json(out / "preprocessor_config.json", {
        "image_processor_type": "GotOcr2ImageProcessor", "processor_class": "InternVLProcessor", **common,
        "crop_to_patches": False, "min_patches": 1, "max_patches": max_tiles})
    write_json(out / "video_preprocessor_config.json", {
        "video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor", **common,
        "initial_shift": True})
    write_json(out / "processor_config.json", {"processor_class": "InternVLProcessor",
                                               "image_seq_length": config.image_seq_length})
    return out
