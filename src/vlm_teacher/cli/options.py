"""Command-line options shared by several commands: the models, and the TTO flags (``tto_changes``,
which ``optimize.tto_config`` lays over the model's tto.json and the paper's defaults)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: flag (argparse dest) -> TTOConfig field: the one mapping, for `run` and `bench`
TTO_FLAGS = {"steps": "max_steps", "fixed_steps": "fixed_steps", "tau": "tau", "lam": "lam",
             "k": "num_frames_shown", "rank": "lora_rank", "lr": "lr", "x0_mode": "x0_mode"}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reasoner", required=True, type=Path, help="Wan pipeline folder (diffusers layout)")
    p.add_argument("--teacher", required=True, type=Path, help="Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE / InternVL3 (-hf) folder (transformers layout)")
    add_preview_decoder_arg(p)
    add_device_args(p)


def add_preview_decoder_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preview-decoder", type=Path, default=None, metavar="FILE",
                   help="decode the teacher's preview with this surrogate decoder (.safetensors made by `vlm-teacher "
                        "train surrogate`, e.g. src/vlm_teacher/embedded/grid-wan-surrogate/surrogate_decoder"
                        ".safetensors for the embedded reasoner); the final video always uses the full VAE "
                        "(default: the full VAE for the preview too)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16")


def add_tto_args(p: argparse.ArgumentParser, *, generic_queries: bool = False) -> None:
    """The TTO flags; each defaults to None, meaning the reasoner folder's ``tto.json`` if it sets
    the field, else the paper's value (shown in the help)."""
    from ..optimize import X0_MODES, TTOConfig

    d = TTOConfig()
    g = p.add_argument_group("test-time optimisation (default: the reasoner folder's tto.json, else the paper's values)")
    g.add_argument("--steps", type=int, default=None, help=f"N, the step budget ({d.max_steps})")
    g.add_argument("--fixed-steps", type=int, default=None, help="run exactly this many updates, ignoring tau")
    g.add_argument("--tau", type=float, default=None, help=f"stop when loss <= tau ({d.tau})")
    g.add_argument("--lam", type=float, default=None, help=f"goal-query weight lambda ({d.lam})")
    g.add_argument("--k", type=int, default=None, help=f"frames shown to the teacher ({d.num_frames_shown})")
    g.add_argument("--rank", type=int, default=None, help=f"LoRA rank ({d.lora_rank})")
    g.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate ({d.lr:g})")
    g.add_argument("--x0-mode", choices=X0_MODES, default=None,
                   help=f"which denoising step is optimised ({d.x0_mode})")
    if generic_queries:
        g.add_argument("--generic-queries", action="store_true", help="ablation: task-agnostic questions")


def tto_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The TTOConfig fields the flags set (over the model's tto.json and the paper's defaults)."""
    changes = {field: getattr(args, flag) for flag, field in TTO_FLAGS.items() if getattr(args, flag) is not None}
    if getattr(args, "generic_queries", False):
        changes["queries"] = "generic"
    return changes
