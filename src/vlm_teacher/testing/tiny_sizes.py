"""The sizes every tiny random VLM builder takes (``tiny_qwen``, ``tiny_internvl``), with their defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinyVlmSize:
    """Language-model and vision-tower widths of a tiny VLM (the vision depth is each builder's own
    option: the two families name it differently). Unknown names are a TypeError, as for any keyword."""
    vocab_size: int = 1536
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vision_hidden_size: int = 32
    vision_num_heads: int = 2
    vision_intermediate_size: int = 64
