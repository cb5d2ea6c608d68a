"""Command line: ``vlm-teacher run | grid | train | bench | report | demo``.

This package is the top of the import arrows (cli -> bench -> methods -> optimize -> adapters):
nothing below imports it. One module per command group (``bench``, ``demo``, ``grid``,
``train``), the shared flags in ``options``; ``run`` lives here.

User mistakes (missing files, wrong model folders, bad arguments) end with one line
on stderr naming the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import UserError
from .options import add_model_args, add_tto_args, tto_changes

log = logging.getLogger("vlm_teacher")


def cmd_run(args) -> int:
    from ..files import check_output_folder, remove_temporaries, write_json
    from ..optimize import teach, tto_config
    from ..outputs import write_result
    from ..bench.plan import check_preview_decoder
    from ..reasoner.base import check_num_frames
    from ..runtime import device_and_dtype, quiet_libraries
    from ..reasoner import load_reasoner
    from ..task import Queries, Task
    from ..teacher import load_teacher
    from ..video import read_image

    prompt = (args.prompt or "").strip()
    if not prompt:
        raise UserError("the prompt is empty: give the task instruction with --prompt TEXT")
    check_output_folder(args.out)
    image = read_image(args.image) if args.image is not None else None
    task = Task(id="run", prompt=prompt, first_frame=image)  # validates before any model loads
    queries = None
    if args.queries is not None:
        import json

        try:
            queries = Queries.from_dict(json.loads(Path(args.queries).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"cannot use --queries {args.queries}: {exc}. Expected JSON {{\"goal\": str, \"process\": [str, ...]}}") from None
    check_num_frames(args.frames)
    preview_decoder = check_preview_decoder(args.preview_decoder)
    config = tto_config(tto_changes(args), args.reasoner)  # every setting validated before any model loads
    device, dtype = device_and_dtype(args.device, args.dtype)
    if not args.verbose:
        quiet_libraries()
    reasoner = load_reasoner(args.reasoner, device=device, dtype=dtype)
    if preview_decoder is not None:
        reasoner.load_preview_decoder(preview_decoder)
    teacher = load_teacher(args.teacher, device=device, dtype=dtype)

    result = teach(reasoner, teacher, task, config, seed=args.seed, queries=queries,
                   num_frames=args.frames, progress=not args.quiet)
    remove_temporaries(args.out)  # what an earlier, killed run into this folder left half-written
    paths = write_result(args.out, result, fps=reasoner.fps, reasoner=reasoner)
    write_json(Path(args.out) / "task.json", {"prompt": prompt, "image": str(args.image) if args.image else None,
                                              "seed": args.seed, "reasoner": str(args.reasoner),
                                              "preview_decoder": str(preview_decoder) if preview_decoder else None,
                                              "teacher": str(args.teacher)})
    print(f"{result.steps} steps ({result.stop_reason}), final loss {result.final_loss:.3f}, "
          f"{result.seconds['total']:.1f} s -> {paths['video']}" if result.history else
          f"0 steps -> {paths['video']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="vlm-teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vlm-teacher {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="teach one task: adapt a fresh LoRA with the teacher, write the video")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="the task instruction")
    p.add_argument("--image", type=Path, default=None, help="first frame (PNG/JPEG); omit for text-to-video")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="noise seed (the same eps is reused at every step)")
    p.add_argument("--frames", type=int, default=None, help="video length 4k+1 (default: the model's)")
    p.add_argument("--queries", type=Path, default=None, help="use these questions (JSON) instead of the teacher's")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tto_args(p, generic_queries=True)
    p.set_defaults(func=cmd_run)

    from .bench import add_bench_commands
    from .demo import add_demo_command
    from .grid import add_grid_commands
    from .train import add_train_commands

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
