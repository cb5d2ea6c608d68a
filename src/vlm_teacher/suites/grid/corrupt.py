"""Rule-breaking variants of a grid video: negatives for teacher training data.

``corrupt(task, video, kind, rng)`` reads the agent/box cells of every frame of
``video`` (normally the ground truth) with the verifier's reader, edits that
trajectory so that one specific rule breaks, and redraws only the frames that
changed. Several kinds still reach the goal (through_wall, jump,
box_teleport), so a judge has to look at the process, not just the last frame.

Kinds:
- through_wall: the agent steps into a wall cell (in a maze it cuts through to
  the far side and walks on to the goal when that fits in the video);
- jump: the agent covers two cells in one frame (two moves merged);
- wrong_target: maze - the agent walks to a target of another colour;
  push - the agent itself walks onto the pad instead of pushing the box there
  (or, where the box blocks that, pushes the box to a cell that is not the pad);
- vanish: the agent disappears for one or two frames;
- frozen: every frame is the first frame;
- box_teleport (push only): the box jumps onto the pad (or elsewhere) without
  being pushed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ...errors import UserError
from ...task import Task
from .generate import GridTask
from .render import render_objects
from .solve import bfs
from .state import MOVES, GridState, Pos, add, manhattan
from .verify import as_grid_task, read_states, to_grid_resolution

CORRUPTIONS: dict[str, tuple[str, ...]] = {
    "maze": ("through_wall", "jump", "wrong_target", "vanish", "frozen"),
    "push": ("through_wall", "jump", "wrong_target", "vanish", "frozen", "box_teleport"),
}

Frame = tuple[Pos | None, Pos | None]  # (agent, box); agent None = not drawn


def corrupt(task: GridTask | Task | dict[str, Any], video: np.ndarray, kind: str,
            rng: np.random.Generator | int | None = None) -> np.ndarray:
    """A copy of ``video`` (brought to the grid resolution) that breaks the rule named by ``kind``."""
    g = as_grid_task(task)
    kinds = CORRUPTIONS[g.family]
    if kind not in kinds:
        raise UserError(f"unknown corruption {kind!r} for a {g.family} task; choose from {', '.join(kinds)}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    video = to_grid_resolution(video, g.state.n)
    readings = read_states(g, video)
    bad = next((r.error for r in readings if r.error), None)
    if bad:
        raise ValueError(f"corrupt needs a readable video of {g.id}; {bad}")
    traj: list[Frame] = [(r.agent, r.box) for r in readings]
    T = len(traj)
    if T < 2:
        raise ValueError("corrupt needs a video of at least 2 frames")
    if kind == "frozen":
        return np.repeat(video[:1], T, axis=0)
    new = _EDITS[kind](g, traj, rng)
    new = (new + [new[-1]] * T)[:T]
    out = video.copy()
    for t, (old, cur) in enumerate(zip(traj, new)):
        if old != cur:
            out[t] = render_objects(g.state, *cur)
    return out


def _at(g: GridTask, frame: Frame) -> GridState:
    """The grid state showing ``frame``'s agent and box (for searches from mid-video)."""
    agent, box = frame
    assert agent is not None
    return replace(g.state, agent=agent, box=box)


def _path_frames(states: list[GridState]) -> list[Frame]:
    return [(s.agent, s.box) for s in states]


def _through_wall(g: GridTask, traj: list[Frame], rng: np.random.Generator) -> list[Frame]:
    T, s = len(traj), g.state
    options = [(t, d) for t in range(1, T) for d in MOVES.values()
               if traj[t - 1][0] is not None and add(traj[t - 1][0], d) in s.walls]
    if not options:
        raise ValueError(f"{g.id}: the agent never stands next to a wall, so it cannot walk through one")
    if g.family == "maze":
        # prefer a real shortcut: through the wall to the far side, then on to the goal
        goal = s.target_pos(g.goal_colour)
        shortcuts = []
        for t, d in options:
            wall = add(traj[t - 1][0], d)  # type: ignore[arg-type]
            beyond = add(wall, d)
            if not s.is_open(beyond):
                continue
            rest = bfs(_at(g, (beyond, None)), lambda x: x.agent == goal)
            if rest is not None and t + 2 + len(rest) <= T:
                after = _path_frames(_at(g, (beyond, None)).run(rest))
                shortcuts.append(traj[:t] + [(wall, None)] + after)
        if shortcuts:
            return shortcuts[int(rng.integers(len(shortcuts)))]
    # otherwise: step into the wall and back out, then carry on as before
    t, d = options[int(rng.integers(len(options)))]
    a, b = traj[t - 1]
    return traj[:t] + [(add(a, d), b)] + traj[t - 1:]  # type: ignore[arg-type]


def _jump(g: GridTask, traj: list[Frame], rng: np.random.Generator) -> list[Frame]:
    T = len(traj)
    # merge two consecutive moves that leave the box alone: the agent skips a cell, still reaches the goal
    merges = [t for t in range(1, T - 1)
              if traj[t - 1][1] == traj[t][1] == traj[t + 1][1]
              and manhattan(traj[t - 1][0], traj[t + 1][0]) == 2]  # type: ignore[arg-type]
    if merges:
        t = merges[int(rng.integers(len(merges)))]
        return traj[:t] + traj[t + 1:]
    # otherwise the agent hops two cells to a free cell and stays there
    s = g.state
    options = []
    for t in range(1, T):
        a, b = traj[t - 1]
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                q = (a[0] + dr, a[1] + dc)  # type: ignore[index]
                if abs(dr) + abs(dc) == 2 and s.is_open(q) and q != b:
                    options.append((t, q))
    if not options:
        raise ValueError(f"{g.id}: no free cell two steps from the agent to jump to")
    t, q = options[int(rng.integers(len(options)))]
    return traj[:t] + [(q, traj[t - 1][1])]


def _wrong_target(g: GridTask, traj: list[Frame], rng: np.random.Generator) -> list[Frame]:
    s, T = g.state, len(traj)
    goal = s.target_pos(g.goal_colour)
    ends = [p for c, p in s.targets if c != g.goal_colour] if g.family == "maze" else [goal]
    paths = [bfs(s, lambda x, p=p: x.agent == p) for p in ends]
    # the walk, cut to the video's length, must not end on the goal (a long walk can pass over it)
    frames = [f for f in (_path_frames(s.run(p))[:T] for p in paths if p is not None)
              if (f[-1][1] if g.family == "push" else f[-1][0]) != goal]
    if g.family == "push" and not frames:
        # the box blocks the way to the pad: push the box somewhere else instead
        path = bfs(s, lambda x: x.box not in (s.box, goal))
        if path is not None and len(path) < T:
            frames = [_path_frames(s.run(path))]
    if not frames:
        raise ValueError(f"{g.id}: no wrong target the agent can walk to")
    fits = [f for f in frames if len(f) <= T] or frames
    return fits[int(rng.integers(len(fits)))]


def _vanish(g: GridTask, traj: list[Frame], rng: np.random.Generator) -> list[Frame]:
    T = len(traj)
    moving = [t for t in range(1, T) if traj[t] != traj[t - 1]] or list(range(1, T))
    t = moving[int(rng.integers(len(moving)))]
    length = int(rng.integers(1, 3))
    out = list(traj)
    for k in range(t, min(T, t + length)):
        out[k] = (None, traj[k][1])
    return out


def _box_teleport(g: GridTask, traj: list[Frame], rng: np.random.Generator) -> list[Frame]:
    s = g.state
    pad = s.target_pos(g.goal_colour)
    on_pad = [t for t, (_, b) in enumerate(traj) if b == pad]
    last = on_pad[0] if on_pad else len(traj) - 1
    t = int(rng.integers(1, max(1, last) + 1))
    a, b = traj[t - 1]
    if pad not in (a, b):
        q = pad
    else:
        cells = [(r, c) for r in range(s.n) for c in range(s.n)
                 if s.is_open((r, c)) and (r, c) != a and manhattan((r, c), b) >= 2]  # type: ignore[arg-type]
        if not cells:
            raise ValueError(f"{g.id}: no free cell to teleport the box to")
        q = cells[int(rng.integers(len(cells)))]
    return traj[:t] + [(a, q)]  # the agent stands still while the box jumps


_EDITS = {
    "through_wall": _through_wall,
    "jump": _jump,
    "wrong_target": _wrong_target,
    "vanish": _vanish,
    "box_teleport": _box_teleport,
}
