"""The grid suite: procedurally generated image-to-video reasoning tasks with an
exact pixel verifier (the embedded benchmark and the training data of the small
default models).

    from vlm_teacher.suites.grid import grid_tasks, verify
    task = grid_tasks("test", n=1)[0]            # a GridTask
    verdict = verify(task, task.video())          # Verdict(score=1.0, passed=True, ...)

Families: ``maze`` (walk to the named target), ``push`` (push the box onto the
named pad). Splits: ``train``, ``test`` (in-domain), ``ood`` (an unseen goal
colour, the longest solutions, more walls, new layouts, at the in-domain size)
and ``ood8`` (the former ood split: 8x8 grids, 9-16 moves).
"""

from .corrupt import CORRUPTIONS, corrupt
from .generate import (
    DEFAULT_COUNTS,
    SPLIT_SPECS,
    SPLITS,
    GridTask,
    SplitSpec,
    grid_tasks,
    make_task,
    num_frames_for,
    prompt_for,
)
from .io import load_split, load_task, save_task, save_tasks
from .render import CELL, OBJECT, PALETTE, TARGET_COLOURS, render_state, render_states, solution_video
from .solve import bfs, solve, solve_maze, solve_push
from .state import FAMILIES, MOVES, GridState
from .verify import MAX_DISTANCE, FrameReading, Verdict, read_states, verify

__all__ = [
    "CELL", "CORRUPTIONS", "DEFAULT_COUNTS", "FAMILIES", "MAX_DISTANCE", "MOVES", "OBJECT", "PALETTE",
    "SPLITS", "SPLIT_SPECS", "TARGET_COLOURS",
    "FrameReading", "GridState", "GridTask", "SplitSpec", "Verdict",
    "bfs", "corrupt", "grid_tasks", "load_split", "load_task", "make_task", "num_frames_for", "prompt_for",
    "read_states", "render_state", "render_states", "save_task", "save_tasks", "solution_video", "solve",
    "solve_maze", "solve_push", "verify",
]
