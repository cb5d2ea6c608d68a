"""Build a tiny, randomly initialised Wan pipeline folder from configs (no downloads).

The folder has exactly the layout of a real diffusers Wan checkpoint
(model_index.json written by ``diffusers.WanPipeline.save_pretrained``,
transformer/, vae/, text_encoder/, tokenizer/, scheduler/, all weights in
safetensors) plus ``vlm_teacher.json`` with generation defaults. So
``WanReasoner.from_pretrained`` and ``diffusers.WanPipeline.from_pretrained``
load it like Wan2.2-TI2V-5B. Tests use it as is; the grid-suite trainer uses it
as the starting point of the small embedded Reasoner, which is why every size
is a parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..files import write_json

#: a small English corpus for the offline BPE tokenizer: the words the grid
#: suite's instructions use, plus general filler so unseen prompts still split
#: into sensible pieces (byte-level BPE never produces <unk>).
DEFAULT_CORPUS = (
    "Move the red agent through the maze to the green target without crossing any wall.",
    "Navigate the blue square to the yellow goal cell, one cell per frame.",
    "Push the box onto the marked target; the agent cannot walk through walls.",
    "Draw a path from the start to the end along the open cells of the grid.",
    "The agent moves up, down, left or right. It stops when it reaches the target.",
    "A white grid with black walls, a red circle, a green square, a blue triangle.",
    "orange purple cyan magenta gray grey brown pink black white red green blue yellow",
    "Keep every object intact, move smoothly, do not teleport, do not pass through obstacles.",
    "The video shows a ball rolling across the table and a person picking up a cup.",
    "Solve the puzzle step by step: first, then, next, finally, the final frame shows the result.",
    "row column cell cells left right up down top bottom corner center start end goal target wall walls",
    "one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
)
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's ids: pad 0, eos 1, unk 2


def build_t5_style_tokenizer(vocab_size: int = 512, corpus: Sequence[str] | None = None):
    """An offline byte-level BPE tokenizer with T5's special tokens (pad=0, eos=1, unk=2)
    that appends ``</s>`` like T5; wrapped in ``PreTrainedTokenizerFast`` so
    ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus or DEFAULT_CORPUS), trainer)
    eos_id = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_vae_config(flavour: str = "2.2", *, base_dim: int = 16, decoder_base_dim: int | None = None,
                    dim_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 1,
                    latents_mean: Sequence[float] | None = None,
                    latents_std: Sequence[float] | None = None) -> dict:
    """AutoencoderKLWan kwargs. "2.2": z_dim 48, residual blocks, 2x2 pixel patchify, 16x spatial
    (TI2V-5B's VAE); "2.1": z_dim 16, 8x spatial. Both 4x temporal (three levels,
    the last two halving time)."""
    if flavour == "2.2":
        cfg = dict(z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                   scale_factor_spatial=16)
    elif flavour == "2.1":
        cfg = dict(z_dim=16, is_residual=False, in_channels=3, out_channels=3, patch_size=None,
                   scale_factor_spatial=8)
    else:
        raise ValueError(f"flavour must be '2.2' or '2.1', got {flavour!r}")
    if len(dim_mult) != 4:
        raise ValueError("dim_mult needs 4 entries (three 2x spatial downsamplings, as in Wan)")
    z = cfg["z_dim"]
    mean = list(latents_mean) if latents_mean is not None else [0.0] * z
    std = list(latents_std) if latents_std is not None else [1.0] * z
    if len(mean) != z or len(std) != z:
        raise ValueError(f"latents_mean/latents_std need {z} values for flavour {flavour}")
    cfg.update(base_dim=base_dim, decoder_base_dim=decoder_base_dim or base_dim, dim_mult=list(dim_mult),
               num_res_blocks=num_res_blocks, attn_scales=[], temperal_downsample=[False, True, True],
               scale_factor_temporal=4, latents_mean=mean, latents_std=std)
    return cfg


def build_tiny_wan_pipeline(
    out_dir: str | Path,
    *,
    flavour: str = "2.2",
    seed: int = 0,
    num_layers: int = 1,
    num_heads: int = 2,
    head_dim: int = 16,
    ffn_dim: int = 64,
    text_dim: int = 32,
    text_layers: int = 1,
    text_heads: int = 2,
    text_ffn_dim: int = 64,
    vocab_size: int = 512,
    corpus: Sequence[str] | None = None,
    vae_base_dim: int = 16,
    vae_decoder_base_dim: int | None = None,
    vae_dim_mult: Sequence[int] = (1, 2, 2, 2),
    vae_num_res_blocks: int = 1,
    latents_mean: Sequence[float] | None = None,
    latents_std: Sequence[float] | None = None,
    scheduler: str = "unipc",
    flow_shift: float = 5.0,
    num_frames: int = 9,
    height: int | None = 64,
    width: int | None = 64,
    steps: int = 4,
    fps: int = 8,
    max_sequence_length: int = 32,
    image_to_video: bool = False,
    clip_dim: int | None = None,
    boundary_ratio: float | None = None,
) -> Path:
    """Write a random tiny Wan pipeline folder to ``out_dir`` and return its path.

    Defaults build in well under a second. ``head_dim`` must split into Wan's
    3-axis rotary embedding (a multiple of 6 plus an even rest; 16 works).
    ``height``/``width`` None leaves the size to the first frame at generation time.
    ``scheduler``: "unipc" (UniPCMultistepScheduler, flow_shift, as Wan2.2 ships)
    or "euler" (FlowMatchEulerDiscreteScheduler, shift).

    The other Wan layouts: ``image_to_video`` builds a concat-style I2V folder
    (``WanImageToVideoPipeline``, transformer in_channels 2 z_dim + 4, as Wan2.1-I2V);
    ``clip_dim`` adds a tiny CLIP vision encoder of that width whose penultimate states
    the transformer attends to (Wan2.1-I2V's ``image_dim``); ``boundary_ratio`` adds a
    second, low-noise expert ``transformer_2`` (Wan2.2 A14B)."""
    from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                           WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vae_cfg = tiny_vae_config(flavour, base_dim=vae_base_dim, decoder_base_dim=vae_decoder_base_dim,
                              dim_mult=vae_dim_mult, num_res_blocks=vae_num_res_blocks,
                              latents_mean=latents_mean, latents_std=latents_std)
    tokenizer = build_t5_style_tokenizer(vocab_size, corpus)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**vae_cfg)
        z = vae_cfg["z_dim"]
        experts = [WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=num_heads, attention_head_dim=head_dim,
            in_channels=2 * z + 4 if image_to_video else z, out_channels=z, text_dim=text_dim,
            freq_dim=32, ffn_dim=ffn_dim, num_layers=num_layers, rope_max_seq_len=1024,
            image_dim=clip_dim, added_kv_proj_dim=num_heads * head_dim if clip_dim else None)
            for _ in range(2 if boundary_ratio is not None else 1)]
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=clip_dim, intermediate_size=2 * clip_dim, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8)) if clip_dim else None
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=text_dim, d_kv=max(1, text_dim // text_heads), d_ff=text_ffn_dim,
            num_layers=text_layers, num_heads=text_heads, relative_attention_num_buckets=8,
            dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id))
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=flow_shift, num_train_timesteps=1000)
    elif scheduler == "euler":
        sched = FlowMatchEulerDiscreteScheduler(shift=flow_shift, num_train_timesteps=1000)
    else:
        raise ValueError(f"scheduler must be 'unipc' or 'euler', got {scheduler!r}")
    parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sched, transformer=experts[0],
                 transformer_2=experts[1] if len(experts) > 1 else None, boundary_ratio=boundary_ratio)
    if image_to_video:
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) \
            if clip_dim else None
        pipe = WanImageToVideoPipeline(image_encoder=image_encoder, image_processor=processor, **parts)
    else:
        pipe = WanPipeline(expand_timesteps=(flavour == "2.2") and boundary_ratio is None, **parts)
    pipe.save_pretrained(out, safe_serialization=True)
    defaults = {"num_frames": num_frames, "height": height, "width": width, "steps": steps, "fps": fps,
                "max_sequence_length": max_sequence_length}
    write_json(out / "vlm_teacher.json", {k: v for k, v in defaults.items() if v is not None})
    return out
