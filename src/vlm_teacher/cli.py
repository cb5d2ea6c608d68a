"""Command line: ``vlm-teacher run | grid ...``.

User mistakes (missing files, wrong model folders, bad arguments) end with one line
on stderr naming the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import UserError

log = logging.getLogger("vlm_teacher")


def _quiet_libraries() -> None:
    """diffusers/transformers print loading bars and info logs; ours are the useful ones."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


def _check_frames(frames: int | None) -> None:
    if frames is not None and (frames < 1 or (frames - 1) % 4):
        raise UserError(f"--frames must be 4k+1 (e.g. 9, 17, 89): the Wan VAE compresses time 4x after the first frame; got {frames}")


def _device_and_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    try:
        return torch.device(device), getattr(torch, dtype)
    except (RuntimeError, AttributeError):
        raise UserError(f"unknown --device {device!r} or --dtype {dtype!r} (try cpu/cuda and float32/bfloat16)") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reasoner", required=True, type=Path, help="Wan pipeline folder (diffusers layout)")
    p.add_argument("--teacher", required=True, type=Path, help="Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE / InternVL3 (-hf) folder (transformers layout)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16")


def _add_tto_args(p: argparse.ArgumentParser) -> None:
    from .optimize import TTOConfig

    d = TTOConfig()
    g = p.add_argument_group("test-time optimisation (paper defaults)")
    g.add_argument("--steps", type=int, default=d.max_steps, help="N, the step budget (default %(default)s)")
    g.add_argument("--fixed-steps", type=int, default=None, help="run exactly this many updates, ignoring tau")
    g.add_argument("--tau", type=float, default=d.tau, help="stop when loss <= tau (default %(default)s)")
    g.add_argument("--lam", type=float, default=d.lam, help="goal-query weight lambda (default %(default)s)")
    g.add_argument("--k", type=int, default=d.num_frames_shown, help="frames shown to the teacher (default %(default)s)")
    g.add_argument("--rank", type=int, default=d.lora_rank, help="LoRA rank (default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default %(default)s)")
    g.add_argument("--x0-mode", choices=["first", "last", "all"], default=d.x0_mode,
                   help="which denoising step is optimised (default %(default)s)")
    g.add_argument("--generic-queries", action="store_true", help="ablation: task-agnostic questions")


def _tto_config(args):
    from .optimize import TTOConfig

    try:
        return TTOConfig(lam=args.lam, tau=args.tau, max_steps=args.steps, fixed_steps=args.fixed_steps,
                         num_frames_shown=args.k, lora_rank=args.rank, lr=args.lr, x0_mode=args.x0_mode,
                         queries="generic" if args.generic_queries else "task")
    except ValueError as exc:
        raise UserError(f"bad optimisation setting: {exc}") from None


def cmd_run(args) -> int:
    from .files import write_json
    from .outputs import write_result
    from .reasoner import load_reasoner
    from .task import Queries, Task
    from .teacher import load_teacher
    from .video import read_image

    prompt = (args.prompt or "").strip()
    if not prompt:
        raise UserError("the prompt is empty: give the task instruction with --prompt TEXT")
    image = read_image(args.image) if args.image is not None else None
    task = Task(id="run", prompt=prompt, first_frame=image)  # validates before any model loads
    queries = None
    if args.queries is not None:
        import json

        try:
            queries = Queries.from_dict(json.loads(Path(args.queries).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"cannot use --queries {args.queries}: {exc}. Expected JSON {{\"goal\": str, \"process\": [str, ...]}}") from None
    _check_frames(args.frames)
    config = _tto_config(args)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    if not args.verbose:
        _quiet_libraries()
    reasoner = load_reasoner(args.reasoner, device=device, dtype=dtype)
    teacher = load_teacher(args.teacher, device=device, dtype=dtype)

    from .optimize import teach

    result = teach(reasoner, teacher, task, config, seed=args.seed, queries=queries,
                   num_frames=args.frames, progress=not args.quiet)
    paths = write_result(args.out, result, fps=reasoner.fps, reasoner=reasoner)
    write_json(Path(args.out) / "task.json", {"prompt": prompt, "image": str(args.image) if args.image else None,
                                              "seed": args.seed, "reasoner": str(args.reasoner),
                                              "teacher": str(args.teacher)})
    print(f"{result.steps} steps ({result.stop_reason}), final loss {result.history[-1]['loss']:.3f}, "
          f"{result.seconds['total']:.1f} s -> {paths['video']}" if result.history else
          f"0 steps -> {paths['video']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="vlm-teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vlm-teacher {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="teach one task: adapt a fresh LoRA with the teacher, write the video")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="the task instruction")
    p.add_argument("--image", type=Path, default=None, help="first frame (PNG/JPEG); omit for text-to-video")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="noise seed (the same eps is reused at every step)")
    p.add_argument("--frames", type=int, default=None, help="video length 4k+1 (default: the model's)")
    p.add_argument("--queries", type=Path, default=None, help="use these questions (JSON) instead of the teacher's")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_tto_args(p)
    p.set_defaults(func=cmd_run)

    from .cli_bench import add_bench_commands
    from .cli_demo import add_demo_command
    from .cli_grid import add_grid_commands
    from .cli_train import add_train_commands

    add_grid_commands(sub)
    add_train_commands(sub)
    add_bench_commands(sub)
    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
