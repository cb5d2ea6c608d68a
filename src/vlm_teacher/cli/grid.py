"""`vlm-teacher grid make | verify`: write grid tasks to disk and score videos by pixels."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_grid_make(args) -> int:
    from ..suites.grid import grid_tasks, save_tasks

    tasks = grid_tasks(args.split, n=args.n, families=tuple(args.families.split(",")), seed=args.seed)
    save_tasks(args.out, tasks)
    print(f"wrote {len(tasks)} {args.split} tasks to {Path(args.out) / args.split}")
    return 0


def cmd_grid_verify(args) -> int:
    from ..suites.grid import load_task, verify
    from ..video import read_video

    task = load_task(args.task)
    verdict = verify(task, read_video(args.video))
    print(json.dumps({"task": task.id, "score": verdict.score, "passed": verdict.passed, "reason": verdict.reason}))
    return 0 if verdict.passed else 1


def add_grid_commands(sub) -> None:
    from ..suites.grid import SPLITS

    grid = sub.add_parser("grid", help="the built-in grid suite: make tasks, verify videos")
    gsub = grid.add_subparsers(dest="grid_command", required=True)

    p = gsub.add_parser("make", help="generate tasks (first_frame.png, prompt.txt, ground_truth.mp4, metadata.json)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--n", type=int, default=None, help="tasks per family (default: the split's size)")
    p.add_argument("--families", default="maze,push", help="comma-separated families (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_grid_make)

    p = gsub.add_parser("verify", help="score a video against a task folder by reading its pixels (exit 1 if it fails)")
    p.add_argument("--task", required=True, type=Path, help="a task folder written by `grid make`")
    p.add_argument("--video", required=True, type=Path)
    p.set_defaults(func=cmd_grid_verify)
