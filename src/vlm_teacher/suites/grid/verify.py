"""The exact verifier: pixels -> cell classes -> grid states -> rule checks.

It reads only the video's pixels (the task's metadata says what the initial
state and the goal are; nothing the model says is trusted):

1. bring the video to the grid resolution (centre-crop to square, area resize);
2. for every cell of every frame take the median colour of its centre (where an
   agent or box square is drawn) and of its border ring (which always shows the
   background: floor, wall, target or pad) and snap each to the nearest palette
   colour; a colour farther than ``max_distance`` from every palette colour is
   unknown, which is a failure;
3. check the rules in time order and report the first one broken:
   frame 0 equals the initial state; walls and targets never change; exactly
   one agent (and one box in push tasks) in every frame; the agent moves at most
   one 4-adjacent cell per frame and never into a wall; the box moves only when
   pushed (one cell, in the agent's direction, the agent taking its cell) and
   never into a wall; the final frame has the agent on the named target (maze)
   or the box on the pad (push).

Score = 0.25 * initial state right + 0.25 * fraction of legal transitions
+ 0.5 * goal reached; it is 1.0 exactly when every rule holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import UserError
from ...task import Task
from .generate import GridTask
from .render import BACKGROUND_CLASSES, CELL, OBJECT, PALETTE
from .state import Pos, manhattan

MAX_DISTANCE = 60.0  # RGB distance to the nearest palette colour above which a colour is unknown
W_INITIAL, W_TRANSITIONS, W_GOAL = 0.25, 0.25, 0.5

_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[k] for k in _NAMES], dtype=np.float32)
_BG_IDX = np.array([_NAMES.index(k) for k in BACKGROUND_CLASSES])


def _masks() -> tuple[np.ndarray, np.ndarray]:
    """Pixel masks inside one cell: the middle of the object square (2 px in from
    its edge), and the background ring 1-2 px in from the cell edge (the outermost
    pixel and the pixel next to the object are skipped: blur and compression mix
    them with their neighbours)."""
    yy, xx = np.mgrid[0:CELL, 0:CELL]
    edge = np.minimum(np.minimum(yy, xx), np.minimum(CELL - 1 - yy, CELL - 1 - xx))
    margin = (CELL - OBJECT) // 2
    centre = edge >= margin + 2
    ring = (edge >= 1) & (edge <= margin - 2)
    assert centre.any() and ring.any(), "OBJECT leaves no room for the centre or ring samples"
    return centre, ring


_CENTRE, _RING = _masks()


@dataclass
class Verdict:
    score: float
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "passed": self.passed, "reason": self.reason, "details": self.details}


@dataclass
class FrameReading:
    """What one frame shows. ``error`` is the first frame-level problem (unknown
    colour, changed wall/target, wrong object count) or None. ``agent`` is set only
    when exactly one cell shows the agent; ``agents`` lists every such cell."""

    agent: Pos | None
    box: Pos | None
    error: str | None = None
    rule: str | None = None
    agents: tuple[Pos, ...] = ()


def as_grid_task(task_or_metadata: GridTask | Task | dict[str, Any]) -> GridTask:
    if isinstance(task_or_metadata, GridTask):
        return task_or_metadata
    if isinstance(task_or_metadata, Task):
        return GridTask.from_metadata(task_or_metadata.metadata)
    if isinstance(task_or_metadata, dict):
        return GridTask.from_metadata(task_or_metadata)
    raise UserError(f"expected a GridTask, a Task with grid metadata, or a metadata dict; got {type(task_or_metadata).__name__}")


def to_grid_resolution(video: np.ndarray, n: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 16n, 16n, 3): centre-crop to square, then area-resize."""
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise UserError(f"the video must be a (T, H, W, 3) uint8 array with T >= 1, got shape {video.shape} "
                        f"dtype {video.dtype}; convert float frames with vlm_teacher.video.to_uint8")
    side = n * CELL
    _, h, w, _ = video.shape
    if (h, w) == (side, side):
        return video
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    video = video[:, y0:y0 + s, x0:x0 + s]
    if s == side:
        return video
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.BOX)) for f in video])


def read_cells(video: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per cell and frame: palette index and distance of the centre and ring colours,
    and the measured colours themselves. Arrays of shape (T, n, n[, 3])."""
    v = to_grid_resolution(video, n).astype(np.float32)
    t = v.shape[0]
    cells = v.reshape(t, n, CELL, n, CELL, 3).transpose(0, 1, 3, 2, 4, 5)  # T, n, n, CELL, CELL, 3
    centre = np.median(cells[:, :, :, _CENTRE], axis=3)
    ring = np.median(cells[:, :, :, _RING], axis=3)
    d_centre = np.linalg.norm(centre[..., None, :] - _RGB, axis=-1)  # T, n, n, K
    d_ring = np.linalg.norm(ring[..., None, :] - _RGB[_BG_IDX], axis=-1)
    ring_idx = _BG_IDX[d_ring.argmin(-1)]
    return {
        "centre_idx": d_centre.argmin(-1), "centre_dist": d_centre.min(-1), "centre_rgb": centre,
        "ring_idx": ring_idx, "ring_dist": d_ring.min(-1), "ring_rgb": ring,
    }


def _cell(p: tuple[int, int]) -> str:
    return f"({int(p[0])},{int(p[1])})"


def _rgb(c: np.ndarray) -> str:
    return "rgb(" + ",".join(str(int(round(x))) for x in c) + ")"


def read_states(task: GridTask, video: np.ndarray, max_distance: float = MAX_DISTANCE) -> list[FrameReading]:
    """The agent and box cell of every frame, with the first frame-level problem if any."""
    n = task.state.n
    cells = read_cells(video, n)
    bg = task.state.background()
    expect_box = task.family == "push"
    out: list[FrameReading] = []
    for t in range(cells["centre_idx"].shape[0]):
        error = rule = None
        agents: list[Pos] = []
        boxes: list[Pos] = []
        for r in range(n):
            for c in range(n):
                ring_name = _NAMES[cells["ring_idx"][t, r, c]]
                if cells["ring_dist"][t, r, c] > max_distance:
                    error = error or f"frame {t}: cell {_cell((r, c))} border has an unknown colour {_rgb(cells['ring_rgb'][t, r, c])}"
                    rule = rule or "unknown_colour"
                    continue
                if ring_name != bg[r][c]:
                    error = error or f"frame {t}: cell {_cell((r, c))} changed from {bg[r][c]} to {ring_name} (walls and targets must not change)"
                    rule = rule or "static_changed"
                centre_name = _NAMES[cells["centre_idx"][t, r, c]]
                if cells["centre_dist"][t, r, c] > max_distance:
                    error = error or f"frame {t}: cell {_cell((r, c))} centre has an unknown colour {_rgb(cells['centre_rgb'][t, r, c])}"
                    rule = rule or "unknown_colour"
                elif centre_name == "agent":
                    agents.append((r, c))
                elif centre_name == "box":
                    boxes.append((r, c))
                elif centre_name != ring_name:
                    error = error or f"frame {t}: cell {_cell((r, c))} shows {centre_name} inside {ring_name} (not a known object)"
                    rule = rule or "unknown_colour"
        if error is None and len(agents) != 1:
            error, rule = f"frame {t}: {len(agents)} agents visible (expected exactly 1)", "agent_count"
        if error is None and len(boxes) != int(expect_box):
            error, rule = f"frame {t}: {len(boxes)} boxes visible (expected {int(expect_box)})", "box_count"
        out.append(FrameReading(agent=agents[0] if len(agents) == 1 else None,
                                box=boxes[0] if len(boxes) == 1 else None, error=error, rule=rule,
                                agents=tuple(agents)))
    return out


def check_transition(task: GridTask, prev: FrameReading, cur: FrameReading, t: int) -> tuple[str, str] | None:
    """(rule, message) for the first rule broken going from frame t-1 to frame t, or None."""
    walls = task.state.walls
    a0, a1 = prev.agent, cur.agent
    assert a0 is not None and a1 is not None
    dist = manhattan(a0, a1)
    if dist > 1:
        return "jump", f"frame {t}: agent jumped {dist} cells from {_cell(a0)} to {_cell(a1)} (at most 1 per frame)"
    if a1 in walls:
        return "wall", f"frame {t}: agent moved into the wall at {_cell(a1)}"
    if task.family == "push":
        b0, b1 = prev.box, cur.box
        assert b0 is not None and b1 is not None
        if b1 != b0:
            d_agent = (a1[0] - a0[0], a1[1] - a0[1])
            d_box = (b1[0] - b0[0], b1[1] - b0[1])
            if manhattan(b0, b1) != 1 or a1 != b0 or d_box != d_agent:
                return "box_unpushed", f"frame {t}: box moved from {_cell(b0)} to {_cell(b1)} without being pushed there by the agent"
            if b1 in walls:
                return "box_wall", f"frame {t}: box pushed into the wall at {_cell(b1)}"
    return None


def verify(task_or_metadata: GridTask | Task | dict[str, Any], video: np.ndarray | str,
           max_distance: float = MAX_DISTANCE) -> Verdict:
    """Score a video of a grid task from its pixels alone (see the module docstring)."""
    task = as_grid_task(task_or_metadata)
    if isinstance(video, (str, bytes)) or hasattr(video, "__fspath__"):
        from ...video import read_video

        video = read_video(video)  # type: ignore[arg-type]
    frames = read_states(task, np.asarray(video), max_distance)
    T = len(frames)
    s0 = task.state
    failures: list[tuple[int, str, str]] = []  # (frame, rule, message) in time order

    f0 = frames[0]
    if f0.error is not None:
        failures.append((0, "initial", f0.error + " (frame 0 must show the initial state)"))
    elif f0.agent != s0.agent or f0.box != s0.box:
        what = f"agent at {_cell(f0.agent)}" + (f", box at {_cell(f0.box)}" if f0.box else "")
        want = f"agent at {_cell(s0.agent)}" + (f", box at {_cell(s0.box)}" if s0.box else "")
        failures.append((0, "initial", f"frame 0: {what}, but the initial state has {want}"))
    initial_ok = not failures

    legal = 0
    for t in range(1, T):
        prev, cur = frames[t - 1], frames[t]
        if cur.error is not None:
            failures.append((t, cur.rule or "frame", cur.error))
            continue
        if prev.error is not None:
            continue  # the broken previous frame is already reported
        bad = check_transition(task, prev, cur, t)
        if bad is None:
            legal += 1
        else:
            failures.append((t, bad[0], bad[1]))
    frac_legal = legal / (T - 1) if T > 1 else 1.0

    last = frames[-1]
    goal = s0.target_pos(task.goal_colour)
    thing = "box" if task.family == "push" else "agent"
    where = last.box if task.family == "push" else last.agent
    goal_ok = last.error is None and where == goal
    goal_msg = None
    if not goal_ok:
        target = f"the {task.goal_colour} {'pad' if task.family == 'push' else 'target'} at {_cell(goal)}"
        if last.error is not None:
            goal_msg = f"final frame {T - 1} is unreadable, so the {thing} is not shown on {target}"
        else:
            on = s0.target_at(where) if where else None
            extra = f" (on the {on} target)" if on and on != task.goal_colour else ""
            if task.family == "push" and last.agent == goal:
                extra = " (the agent stands on the pad instead)"
            goal_msg = f"final frame {T - 1}: {thing} at {_cell(where)}{extra}, not on {target}"

    passed = initial_ok and legal == T - 1 and goal_ok
    score = 1.0 if passed else W_INITIAL * initial_ok + W_TRANSITIONS * frac_legal + W_GOAL * goal_ok
    if passed:
        reason = f"passed: the {thing} reaches the {task.goal_colour} {'pad' if task.family == 'push' else 'target'} with legal moves"
    elif failures:
        reason = failures[0][2]
    else:
        reason = goal_msg or "failed"
    details = {
        "task_id": task.id,
        "family": task.family,
        "num_frames": T,
        "initial_ok": initial_ok,
        "legal_transitions": legal,
        "transitions": T - 1,
        "goal_reached": goal_ok,
        "first_failure": ({"frame": failures[0][0], "rule": failures[0][1]} if failures else
                          (None if goal_ok else {"frame": T - 1, "rule": "goal"})),
        "failures": [{"frame": f, "rule": r, "message": m} for f, r, m in failures[:20]],
        "goal_message": goal_msg,
        "agent_path": [None if f.agent is None else list(f.agent) for f in frames],
        "box_path": [None if f.box is None else list(f.box) for f in frames] if task.family == "push" else None,
    }
    return Verdict(score=float(score), passed=bool(passed), reason=reason, details=details)
