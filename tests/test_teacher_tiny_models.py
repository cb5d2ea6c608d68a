"""The offline Qwen-style tokenizer and the tiny random Qwen-VL folders."""

from __future__ import annotations

import json
import math

import pytest

from vlm_teacher.testing.offline_tokenizer import QWEN_SPECIAL_TOKENS, build_offline_tokenizer, save_offline_tokenizer
from vlm_teacher.testing.tiny_qwen import build_tiny_qwen_vl, mrope_section


@pytest.fixture(scope="module")
def tokenizer():
    return build_offline_tokenizer(1024)


def test_tokenizer_basics(tokenizer):
    assert len(tokenizer) == 1024
    for word in ("Yes", "No"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1
    for token in QWEN_SPECIAL_TOKENS:  # atomic, never split
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    for text in ("Move the blue agent 3 cells left.", '{"goal": "x?", "process": ["y?",]}', "héllo wörld ✓ 12"):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    # grid-task words are compact
    assert len(tokenizer.encode(" maze agent box push wall target", add_special_tokens=False)) <= 8


def test_chat_template_renders_vision_items(tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "video"},
                                             {"type": "text", "text": "Is it done?"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                    "<|vision_start|><|video_pad|><|vision_end|>Is it done?<|im_end|>\n<|im_start|>assistant\n")
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert plain == "<|im_start|>user\nhi<|im_end|>\n"


def test_tokenizer_round_trips_through_autotokenizer(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    save_offline_tokenizer(tmp_path, vocab_size=1024)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text",
                                          "text": "Does the agent push the box?"}]}], tokenize=False,
                                         add_generation_prompt=True)
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.chat_template == tokenizer.chat_template


def test_vocab_size_is_a_parameter():
    assert len(build_offline_tokenizer(600)) == 600
    assert 600 < len(build_offline_tokenizer(1536)) <= 1536
    with pytest.raises(ValueError, match="vocab_size"):
        build_offline_tokenizer(100)


def test_mrope_section_matches_the_released_models():
    assert mrope_section(128, "qwen2_5_vl") == [16, 24, 24]
    assert mrope_section(128, "qwen3_vl") == [24, 20, 20]
    for head_dim in (8, 16, 32, 64):
        for arch in ("qwen2_5_vl", "qwen3_vl"):
            sec = mrope_section(head_dim, arch)
            assert sum(sec) == head_dim // 2 and min(sec) >= 1


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_tiny_folder_is_consistent(tmp_path, arch):
    out = build_tiny_qwen_vl(tmp_path / arch, arch=arch, hidden_size=96, num_attention_heads=6,
                             num_key_value_heads=2, num_hidden_layers=3, vision_depth=3, vocab_size=800)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "generation_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    cfg = json.loads((out / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert cfg["model_type"] == arch and text["vocab_size"] == 800
    assert sum(text["rope_parameters"]["mrope_section"]) == (96 // 6) // 2
    tok = json.loads((out / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert cfg["video_token_id"] == ids["<|video_pad|>"] and cfg["image_token_id"] == ids["<|image_pad|>"]
    assert cfg["vision_start_token_id"] == ids["<|vision_start|>"]
    assert cfg["vision_end_token_id"] == ids["<|vision_end|>"]
    if arch == "qwen3_vl":
        side = math.isqrt(vision["num_position_embeddings"])
        assert side * side == vision["num_position_embeddings"]
        assert vision["deepstack_visual_indexes"] and all(0 <= i < vision["depth"]
                                                          for i in vision["deepstack_visual_indexes"])
    else:
        assert vision["fullatt_block_indexes"] == [vision["depth"] - 1]


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="perfect square"):
        build_tiny_qwen_vl(tmp_path / "a", arch="qwen3_vl", num_position_embeddings=50)
    with pytest.raises(ValueError, match="deepstack"):
        build_tiny_qwen_vl(tmp_path / "b", arch="qwen3_vl", vision_depth=2, deepstack_visual_indexes=(2,))
    with pytest.raises(ValueError, match="arch"):
        build_tiny_qwen_vl(tmp_path / "c", arch="llava")
