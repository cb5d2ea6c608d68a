"""Build a tiny, randomly initialised HunyuanVideo-1.5 pipeline folder from configs (no downloads).

The layout is what ``HunyuanVideo15Pipeline.save_pretrained`` (text-to-video) or
``HunyuanVideo15ImageToVideoPipeline.save_pretrained`` (image-to-video) writes:
transformer/, vae/, text_encoder/ (a Qwen2.5-VL text model), tokenizer/ (the
offline Qwen-style BPE with its chat template), text_encoder_2/ (a ByT5-style T5
encoder), tokenizer_2/ (ByT5's byte tokenizer, which needs no vocabulary file),
scheduler/, guider/ and, for I2V, image_encoder/ (SigLIP) and feature_extractor/;
all weights in safetensors; plus ``vlm_teacher.json`` with generation defaults.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..files import write_json


def tiny_hunyuan15_vae_config(latent_channels: int = 8, block_out_channels=(16, 32, 32, 64, 64),
                              layers_per_block: int = 1) -> dict:
    """AutoencoderKLHunyuanVideo15 kwargs: 16x spatial, 4x temporal (the released ratios), small widths."""
    return dict(latent_channels=latent_channels, block_out_channels=list(block_out_channels),
                layers_per_block=layers_per_block, spatial_compression_ratio=16, temporal_compression_ratio=4,
                scaling_factor=1.03682)


def build_tiny_hunyuan15_pipeline(
    out_dir: str | Path,
    *,
    image_to_video: bool = False,
    seed: int = 0,
    latent_channels: int = 8,
    num_layers: int = 1,
    num_heads: int = 2,
    head_dim: int = 16,
    rope_axes_dim: tuple[int, int, int] = (4, 6, 6),
    text_dim: int = 32,
    byt5_dim: int = 32,
    image_dim: int = 32,
    use_meanflow: bool = False,
    target_size: int = 64,
    flow_shift: float = 5.0,
    num_frames: int = 9,
    height: int | None = None,
    width: int | None = None,
    steps: int = 3,
    fps: int = 8,
    max_sequence_length: int = 32,
) -> Path:
    """Write a random tiny HunyuanVideo-1.5 folder to ``out_dir`` and return its path.

    ``rope_axes_dim`` must sum to ``head_dim``. ``target_size`` is the transformer's
    pixel bucket size (the pipeline picks the video size from it); 64 gives 64x64
    videos for square inputs. ``height``/``width`` None leaves the size to that rule."""
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline,
                           HunyuanVideo15Transformer3DModel)
    from transformers import (ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, SiglipImageProcessor,
                              SiglipVisionConfig, SiglipVisionModel, T5Config, T5EncoderModel)

    from .offline_tokenizer import build_offline_tokenizer

    if sum(rope_axes_dim) != head_dim:
        raise ValueError(f"rope_axes_dim {rope_axes_dim} must sum to head_dim {head_dim}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_offline_tokenizer()
    tokenizer_2 = ByT5Tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLHunyuanVideo15(**tiny_hunyuan15_vae_config(latent_channels))
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=2 * latent_channels + 1, out_channels=latent_channels, num_attention_heads=num_heads,
            attention_head_dim=head_dim, num_layers=num_layers, num_refiner_layers=1, text_embed_dim=text_dim,
            text_embed_2_dim=byt5_dim, image_embed_dim=image_dim, rope_axes_dim=tuple(rope_axes_dim),
            target_size=target_size, task_type="i2v" if image_to_video else "t2v", use_meanflow=use_meanflow)
        half = head_dim // 2
        text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=3,
            num_attention_heads=text_dim // head_dim, num_key_value_heads=1, head_dim=head_dim,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [half - 2 * (half // 3), half // 3, half // 3]},
            max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id))
        text_encoder_2 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=byt5_dim, d_kv=byt5_dim // 2, d_ff=2 * byt5_dim, num_layers=1,
            num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0))
        image_encoder = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=image_dim, intermediate_size=2 * image_dim, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8)) if image_to_video else None
    parts = dict(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=flow_shift, num_train_timesteps=1000),
                 text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                 guider=ClassifierFreeGuidance(guidance_scale=1.0))
    if image_to_video:
        pipe = HunyuanVideo15ImageToVideoPipeline(
            image_encoder=image_encoder, feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
            **parts)
    else:
        pipe = HunyuanVideo15Pipeline(**parts)
    pipe.save_pretrained(out, safe_serialization=True)
    defaults = {"num_frames": num_frames, "height": height, "width": width, "steps": steps, "fps": fps,
                "max_sequence_length": max_sequence_length}
    write_json(out / "vlm_teacher.json", {k: v for k, v in defaults.items() if v is not None})
    return out
