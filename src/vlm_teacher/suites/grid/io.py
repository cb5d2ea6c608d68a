"""Grid tasks on disk, laid out like VBVR's data folders:

    <root>/<split>/<task_id>/first_frame.png   the initial state (lossless)
                             prompt.txt        the instruction
                             ground_truth.mp4  the solution video
                             final_frame.png   the last frame of the solution
                             metadata.json     GridTask.to_metadata(): all the verifier needs

Every file is written atomically, metadata.json last, so a folder with a
metadata.json is complete. Loading checks each file and raises a one-line
UserError naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ...errors import UserError
from ...files import write_json, write_text
from ...video import read_image, write_image, write_video
from .generate import GridTask

FILES = ("first_frame.png", "prompt.txt", "ground_truth.mp4", "final_frame.png", "metadata.json")


def task_dir(root: str | os.PathLike, task: GridTask) -> Path:
    return Path(root) / task.split / task.id


def save_task(root: str | os.PathLike, task: GridTask, fps: int = 8) -> Path:
    """Write one task folder (see the module docstring); returns the folder."""
    d = task_dir(root, task)
    video = task.video()
    write_image(d / "first_frame.png", video[0])
    write_text(d / "prompt.txt", task.prompt + "\n")
    write_video(d / "ground_truth.mp4", video, fps=fps)
    write_image(d / "final_frame.png", video[-1])
    write_json(d / "metadata.json", task.to_metadata())
    return d


def save_tasks(root: str | os.PathLike, tasks: Iterable[GridTask], fps: int = 8) -> list[Path]:
    """Write every task under ``root/<split>/<task_id>/``; returns the folders."""
    return [save_task(root, t, fps=fps) for t in tasks]


def load_task(directory: str | os.PathLike) -> GridTask:
    """Read and check one task folder: metadata.json must describe a valid task, and
    prompt.txt and first_frame.png must agree with it; ground_truth.mp4 and
    final_frame.png must exist (they are not decoded here)."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"grid task folder not found: {d}")
    for name in FILES:
        if not (d / name).is_file():
            raise UserError(f"{d / name} is missing; a grid task folder needs {', '.join(FILES)}")
    meta_path = d / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_path} is not valid JSON ({exc}); regenerate the task folder") from None
    try:
        task = GridTask.from_metadata(meta)
    except UserError as exc:
        raise UserError(f"{meta_path}: {exc}") from None
    prompt = (d / "prompt.txt").read_text(encoding="utf-8").strip()
    if prompt != task.prompt.strip():
        raise UserError(f"{d / 'prompt.txt'} does not match the prompt in metadata.json")
    first = read_image(d / "first_frame.png")
    expected = task.first_frame()
    if first.shape != expected.shape:
        raise UserError(f"{d / 'first_frame.png'} is {first.shape[1]}x{first.shape[0]} px, "
                        f"expected {expected.shape[1]}x{expected.shape[0]} for a {task.size}x{task.size} grid")
    if not np.array_equal(first, expected):
        raise UserError(f"{d / 'first_frame.png'} does not show the initial state in metadata.json")
    return task


def load_split(root: str | os.PathLike, split: str) -> list[GridTask]:
    """All task folders under ``root/split`` (sorted by id)."""
    d = Path(root) / split
    if not d.is_dir():
        raise UserError(f"no grid split folder {d}; write one with save_tasks(root, grid_tasks({split!r}))")
    folders = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"grid split folder {d} holds no task folders")
    return [load_task(p) for p in folders]
