"""Procedural grid tasks: seeded generation, splits, and the GridTask record.

Splits (every task is drawn from its own random stream, seeded by
(seed, family, split, index), so a task never depends on how many others were
asked for and the splits never share a stream):

- ``train`` / ``test``: in-domain, 6x6 grids (96 px), solutions of 2-8 moves
  (9 frames). The named goal colour is red, green or yellow. Magenta appears
  only as a distractor target, never as the goal.
- ``ood``: what VBVR's out-of-domain half shifts, at the size the embedded
  reasoner draws (6x6, 96 px, 9 frames): the goal colour is drawn from all four,
  so about a quarter of the tasks name magenta (a colour/role combination never
  seen in-domain); only the longest solutions that fit the 9 frames (7-8 moves;
  in-domain has 2-8); more walls (mazes 15-18 of 36 cells, in-domain 9-14; push
  8-10, in-domain 2-7); and layouts from their own random streams.
- ``ood8``: the earlier ood split (until issue 14 it was ``ood``): 8x8 grids
  (128 px), solutions of 9-16 moves (13 or 17 frames), all four goal colours.
  The embedded reasoner draws 6x6 grids in 9 frames only, so it fails every
  task there from frame 1.

Families: ``maze`` (reach the named target square, BFS shortest path) and
``push`` (push the box onto the named pad, BFS over (agent, box) states).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import numpy as np

from ...errors import UserError
from ...task import Task
from .render import AGENT_WORD, BOX_WORD, CELL, TARGET_COLOURS, render_state, solution_video
from .solve import bfs, distances, solve
from .state import FAMILIES, MOVES, GridState, Pos, manhattan

SCHEMA_VERSION = 1
SPLITS = ("train", "test", "ood", "ood8")
IN_DOMAIN_GOALS = ("red", "green", "yellow")


@dataclass(frozen=True)
class SplitSpec:
    size: int  # grid side in cells
    min_len: int  # solution length range (moves), inclusive
    max_len: int
    goal_colours: tuple[str, ...]
    stream: int  # the split's part of every task's random seed (never reused by another split)
    shift: tuple[str, ...] = ()  # what is out-of-domain about it, for reports
    maze_walls: tuple[float, float] = (0.25, 0.4)  # wall cells, as fractions of the grid, inclusive
    push_walls: tuple[float, float] = (0.08, 0.2)


SPLIT_SPECS: dict[str, SplitSpec] = {
    "train": SplitSpec(6, 2, 8, IN_DOMAIN_GOALS, stream=1),
    "test": SplitSpec(6, 2, 8, IN_DOMAIN_GOALS, stream=2),
    "ood": SplitSpec(6, 7, 8, TARGET_COLOURS, stream=4, maze_walls=(0.42, 0.5), push_walls=(0.23, 0.28),
                     shift=("goal_colour", "solution_length", "walls", "layout")),
    # the stream the ood split had before issue 14, so these are the same tasks as then
    "ood8": SplitSpec(8, 9, 16, TARGET_COLOURS, stream=3, shift=("grid_size", "solution_length", "goal_colour")),
}
# tasks per family when grid_tasks(n=None): 100 in-domain test tasks and 50 out-of-domain
DEFAULT_COUNTS = {"train": 500, "test": 50, "ood": 25, "ood8": 25}
_MAX_ATTEMPTS = 10_000
DETOUR_FRACTION = 0.75  # maze goals whose shortest path must bend around walls


def num_frames_for(solution_length: int) -> int:
    """Smallest 4k+1 >= solution_length + 1, at least 9 (Wan's VAE: 4x in time plus a first frame)."""
    need = max(9, solution_length + 1)
    return (need - 1 + 3) // 4 * 4 + 1


def prompt_for(family: str, colour: str) -> str:
    if family == "maze":
        return (f"Move the {AGENT_WORD} agent through the maze to the {colour} square, "
                "one cell per step, without crossing the dark walls.")
    if family == "push":
        return (f"Push the {BOX_WORD} box onto the {colour} pad. The {AGENT_WORD} agent moves one cell per step, "
                "pushes the box by walking into it, and never crosses the dark walls.")
    raise ValueError(f"unknown grid family {family!r}")


def task_id(family: str, split: str, index: int, seed: int = 0) -> str:
    """E.g. ``maze-test-00017``; a non-default seed is part of the id (``maze-test-s3-00017``)."""
    return f"{family}-{split}-{index:05d}" if seed == 0 else f"{family}-{split}-s{seed}-{index:05d}"


@dataclass(frozen=True)
class GridTask:
    """One grid task: the initial state, the named goal colour, the instruction,
    and the exact shortest solution (a tuple of move names)."""

    id: str
    family: str
    split: str
    index: int
    state: GridState
    goal_colour: str
    prompt: str
    num_frames: int
    solution: tuple[str, ...]
    seed: int = 0

    @property
    def size(self) -> int:
        return self.state.n

    @property
    def resolution(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.state.n * CELL, self.state.n * CELL)

    def video_shape(self) -> dict[str, int]:
        """``num_frames`` / ``height`` / ``width`` for ``reasoner.prepare``: the size the verifier
        reads cells at (16 px per cell), so an 8x8 ood task is 128 px, not a reasoner's default."""
        height, width = self.resolution
        return {"num_frames": self.num_frames, "height": height, "width": width}

    def states(self) -> list[GridState]:
        """Initial state, then one state per move of the solution."""
        return self.state.run(self.solution)

    def first_frame(self) -> np.ndarray:
        return render_state(self.state)

    def video(self) -> np.ndarray:
        """The ground-truth video (num_frames, H, W, 3) uint8."""
        return solution_video(self)

    def with_goal(self, colour: str) -> "GridTask":
        """The same first frame with another named target: a counterfactual instruction.
        Raises ValueError if there is no target of that colour or it cannot be reached."""
        if colour not in self.state.colours:
            raise ValueError(f"{self.id} has no {colour} target (has {', '.join(self.state.colours)})")
        sol = solve(self.family, self.state, colour)
        if sol is None:
            raise ValueError(f"{self.id}: the {colour} target cannot be reached")
        return replace(self, id=f"{self.id}-{colour}", goal_colour=colour, prompt=prompt_for(self.family, colour),
                       num_frames=num_frames_for(len(sol)), solution=tuple(sol))

    def to_metadata(self) -> dict[str, Any]:
        """JSON-serialisable record holding everything the verifier needs."""
        return {
            "suite": "grid",
            "version": SCHEMA_VERSION,
            "id": self.id,
            "family": self.family,
            "split": self.split,
            "index": self.index,
            "seed": self.seed,
            "cell": CELL,
            "state": self.state.to_dict(),
            "goal_colour": self.goal_colour,
            "prompt": self.prompt,
            **self.video_shape(),
            "solution": list(self.solution),
            "solution_length": len(self.solution),
            "ood_shift": list(SPLIT_SPECS[self.split].shift) if self.split in SPLIT_SPECS else [],
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "GridTask":
        """Rebuild from ``to_metadata`` output. Raises UserError naming what is wrong,
        including a solution that does not reach the goal."""
        try:
            return cls._from_metadata(meta)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UserError(f"bad grid task metadata: {exc.__class__.__name__}: {exc}") from None

    @classmethod
    def _from_metadata(cls, meta: dict[str, Any]) -> "GridTask":
        if not isinstance(meta, dict):
            raise UserError(f"grid task metadata must be a JSON object, got {type(meta).__name__}")
        missing = [k for k in ("id", "family", "state", "goal_colour", "num_frames", "solution") if k not in meta]
        if missing:
            raise UserError(f"grid task metadata is missing {', '.join(repr(k) for k in missing)}")
        if meta.get("suite", "grid") != "grid":
            raise UserError(f"metadata is for suite {meta.get('suite')!r}, not the grid suite")
        if int(meta.get("cell", CELL)) != CELL:
            raise UserError(f"metadata cell size {meta.get('cell')} differs from this version's {CELL} px")
        family = meta["family"]
        if family not in FAMILIES:
            raise UserError(f"unknown grid family {family!r}; expected one of {', '.join(FAMILIES)}")
        try:
            state = GridState.from_dict(meta["state"])
        except ValueError as exc:
            raise UserError(f"bad grid state in metadata: {exc}") from None
        except TypeError:
            raise UserError("bad grid state in metadata: 'state' must be an object") from None
        colour = meta["goal_colour"]
        if colour not in state.colours:
            raise UserError(f"goal colour {colour!r} is not a target of the grid (targets: {', '.join(state.colours)})")
        if (family == "push") != (state.box is not None):
            raise UserError(f"a {family} task {'needs' if family == 'push' else 'has no'} box")
        solution = meta["solution"]
        if not isinstance(solution, list) or any(m not in MOVES for m in solution):
            raise UserError(f"'solution' must be a list of moves from {', '.join(MOVES)}")
        try:
            final = state.run(solution)[-1]
        except ValueError as exc:
            raise UserError(f"the stored solution is illegal: {exc}") from None
        goal = state.target_pos(colour)
        if (final.box if family == "push" else final.agent) != goal:
            raise UserError(f"the stored solution does not reach the {colour} {'pad' if family == 'push' else 'target'}")
        num_frames = meta["num_frames"]
        if not isinstance(num_frames, int) or num_frames < len(solution) + 1:
            raise UserError(f"'num_frames' must be an integer >= solution length + 1, got {num_frames!r}")
        return cls(id=str(meta["id"]), family=family, split=str(meta.get("split", "")), index=int(meta.get("index", 0)),
                   state=state, goal_colour=colour, prompt=str(meta.get("prompt") or prompt_for(family, colour)),
                   num_frames=num_frames, solution=tuple(solution), seed=int(meta.get("seed", 0)))

    def to_task(self) -> Task:
        return Task(id=self.id, prompt=self.prompt, first_frame=self.first_frame(), metadata=self.to_metadata())


# -- generation ---------------------------------------------------------------

def _rng(seed: int, family: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, FAMILIES.index(family) + 1, SPLIT_SPECS[split].stream,
                                                         index]))


def _random_walls(rng: np.random.Generator, n: int, count: int) -> frozenset[Pos] | None:
    """``count`` random wall cells whose complement is one connected region (no sealed pockets)."""
    cells = [(r, c) for r in range(n) for c in range(n)]
    pick = rng.choice(len(cells), size=count, replace=False)
    walls = frozenset(cells[i] for i in pick)
    free = [p for p in cells if p not in walls]
    probe = GridState(n=n, walls=walls, agent=free[0], targets=())
    return walls if len(distances(probe)) == len(free) else None


def _wall_count(rng: np.random.Generator, n: int, fractions: tuple[float, float]) -> int:
    return int(rng.integers(int(fractions[0] * n * n), int(fractions[1] * n * n) + 1))


def _near_wall(state: GridState, cells: Iterable[Pos]) -> bool:
    """True if some cell has a wall neighbour. Every solution passes a wall before its
    last move, so the walls matter and the through_wall corruption always applies."""
    return any((p[0] + d[0], p[1] + d[1]) in state.walls for p in cells for d in MOVES.values())


def _gen_maze(rng: np.random.Generator, spec: SplitSpec) -> tuple[GridState, str, list[str]] | None:
    n = spec.size
    walls = _random_walls(rng, n, _wall_count(rng, n, spec.maze_walls))
    if walls is None:
        return None
    free = sorted({(r, c) for r in range(n) for c in range(n)} - walls)
    agent = free[int(rng.integers(len(free)))]
    dist = distances(GridState(n=n, walls=walls, agent=agent, targets=()))
    # most goals sit behind walls (the shortest path is longer than the straight
    # Manhattan route), so the walls matter; a quarter are plain walks
    detour = rng.random() < DETOUR_FRACTION
    goal_cells = [p for p, d in sorted(dist.items())
                  if spec.min_len <= d <= spec.max_len and (not detour or d > manhattan(agent, p))]
    if not goal_cells:
        return None
    goal_colour = str(rng.choice(spec.goal_colours))
    goal = goal_cells[int(rng.integers(len(goal_cells)))]
    others = [p for p in sorted(dist) if p not in (agent, goal)]
    n_targets = int(rng.integers(2, 4))
    if len(others) < n_targets - 1:
        return None
    other_colours = rng.choice([c for c in TARGET_COLOURS if c != goal_colour], size=n_targets - 1, replace=False)
    other_cells = rng.choice(len(others), size=n_targets - 1, replace=False)
    targets = [(goal_colour, goal)] + [(str(c), others[i]) for c, i in zip(other_colours, other_cells)]
    state = GridState(n=n, walls=walls, agent=agent, targets=tuple(targets))
    sol = solve("maze", state, goal_colour)
    assert sol is not None and len(sol) == dist[goal]
    # some wrong target must be reachable within the video (wrong_target corruption, counterfactual prompts)
    if min(dist[p] for _, p in targets[1:]) > num_frames_for(len(sol)) - 1:
        return None
    if not _near_wall(state, [s.agent for s in state.run(sol)[:-1]]):
        return None
    return state, goal_colour, sol


def _gen_push(rng: np.random.Generator, spec: SplitSpec) -> tuple[GridState, str, list[str]] | None:
    n = spec.size
    walls = _random_walls(rng, n, _wall_count(rng, n, spec.push_walls))
    if walls is None:
        return None
    free = sorted({(r, c) for r in range(n) for c in range(n)} - walls)
    a, b, p = (free[i] for i in rng.choice(len(free), size=3, replace=False))
    if manhattan(b, p) > spec.max_len:
        return None
    colour = str(rng.choice(spec.goal_colours))
    state = GridState(n=n, walls=walls, agent=a, targets=((colour, p),), box=b)
    sol = bfs(state, lambda s: s.box == p, max_depth=spec.max_len)
    if sol is None or not spec.min_len <= len(sol) <= spec.max_len:
        return None
    if not _near_wall(state, [s.agent for s in state.run(sol)[:-1]]):
        return None
    # a wrong ending must fit in the video: the agent on the pad, or the box on another cell
    # (fails when, say, the box can only ever slide onto a corner pad)
    if bfs(state, lambda s: s.agent == p or s.box not in (b, p), max_depth=num_frames_for(len(sol)) - 1) is None:
        return None
    return state, colour, sol


def make_task(family: str, split: str, index: int, seed: int = 0) -> GridTask:
    """The task ``index`` of ``family`` in ``split`` (deterministic in all four arguments)."""
    if family not in FAMILIES:
        raise UserError(f"unknown grid family {family!r}; choose from {', '.join(FAMILIES)}")
    if split not in SPLIT_SPECS:
        raise UserError(f"unknown grid split {split!r}; choose from {', '.join(SPLITS)}")
    if index < 0:
        raise UserError(f"task index must be >= 0, got {index}")
    spec = SPLIT_SPECS[split]
    rng = _rng(seed, family, split, index)
    gen = _gen_maze if family == "maze" else _gen_push
    for _ in range(_MAX_ATTEMPTS):
        out = gen(rng, spec)
        if out is not None:
            state, colour, sol = out
            return GridTask(id=task_id(family, split, index, seed), family=family, split=split, index=index,
                            state=state, goal_colour=colour, prompt=prompt_for(family, colour),
                            num_frames=num_frames_for(len(sol)), solution=tuple(sol), seed=seed)
    raise RuntimeError(f"could not generate {family} task {index} of {split} in {_MAX_ATTEMPTS} attempts")


def grid_tasks(split: str, n: int | None = None, families: Sequence[str] = FAMILIES, seed: int = 0) -> list[GridTask]:
    """The first ``n`` tasks of each family in ``split`` (family-major order).

    ``n=None`` gives the default count of the split (``DEFAULT_COUNTS``: train 500,
    test 50, ood 25, ood8 25 per family). Deterministic: the same arguments always give the same tasks,
    and task i is the same whatever ``n`` is.
    """
    if isinstance(families, str):
        families = (families,)
    if split not in SPLIT_SPECS:
        raise UserError(f"unknown grid split {split!r}; choose from {', '.join(SPLITS)}")
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise UserError(f"unknown grid famil{'ies' if len(bad) > 1 else 'y'} {', '.join(map(repr, bad))}; "
                        f"choose from {', '.join(FAMILIES)}")
    count = DEFAULT_COUNTS[split] if n is None else int(n)
    if count < 0:
        raise UserError(f"number of tasks must be >= 0, got {count}")
    return [make_task(f, split, i, seed) for f in families for i in range(count)]
