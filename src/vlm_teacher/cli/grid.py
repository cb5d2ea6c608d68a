"""`vlm-teacher grid make | verify`: write grid tasks to disk and score videos by pixels."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def cmd_grid_make(args) -> int:
    from ..files import check_output_folder
    from ..suites.grid import grid_tasks, save_tasks

    check_output_folder(args.out)
    tasks = grid_tasks(args.split, n=args.n, families=tuple(args.families.split(",")), seed=args.seed)
    save_tasks(args.out, tasks)
    print(f"wrote {len(tasks)} {args.split} tasks to {Path(args.out) / args.split}; benchmark them with "
          f"`vlm-teacher bench --suite grid:{args.out}`")
    return 0


def cmd_grid_verify(args) -> int:
    from ..suites.grid import load_task, verify
    from ..video import read_video

    task = load_task(args.task)
    video = read_video(args.video)
    if len(video) < task.num_frames:
        raise UserError(f"{args.video} has {len(video)} frame(s); task {task.id} needs a video of "
                        f"{task.num_frames} frames (frame 0 the initial state, then one move per frame)")
    verdict = verify(task, video)
    print(json.dumps({"task": task.id, "score": verdict.score, "passed": verdict.passed, "reason": verdict.reason}))
    return 0 if verdict.passed else 1


def add_grid_commands(sub) -> None:
    from ..suites.grid import SPLITS

    grid = sub.add_parser("grid", help="the built-in grid suite: make tasks, verify videos")
    gsub = grid.add_subparsers(dest="grid_command", required=True)

    p = gsub.add_parser("make", help="generate tasks (first_frame.png, prompt.txt, ground_truth.mp4, metadata.json)",
                        description="Write grid tasks to OUT/<split>/<task id>/; `vlm-teacher bench --suite "
                                    "grid:OUT` benchmarks them.")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="which split's generator: train / test (in-domain), ood / ood8 (out-of-domain) "
                        "(default %(default)s)")
    p.add_argument("--n", type=int, default=None, help="tasks per family (default: the split's size)")
    p.add_argument("--families", default="maze,push", help="comma-separated families (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="generator seed: another seed gives other tasks (ids carry it: maze-test-s3-00000); "
                        "default %(default)s, the built-in suite's tasks")
    p.add_argument("--out", required=True, type=Path, help="folder to write the tasks under (created)")
    p.set_defaults(func=cmd_grid_make)

    p = gsub.add_parser("verify", help="score a video against a task folder by reading its pixels (exit 1 if it fails)")
    p.add_argument("--task", required=True, type=Path, help="a task folder written by `grid make`")
    p.add_argument("--video", required=True, type=Path,
                   help="the video to score (mp4 or any format ffmpeg reads), with at least the task's number of "
                        "frames (metadata.json num_frames); it is centre-cropped to a square and resized to the grid")
    p.set_defaults(func=cmd_grid_verify)
