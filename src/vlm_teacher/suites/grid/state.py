"""The symbolic state of a grid task and its move rules.

A grid is n x n cells addressed as (row, col) from the top-left; the image edge
is the boundary (there are no border wall cells, so every cell is playable).
One state type serves both families:

- maze: walls, one agent and 2-3 coloured target squares (``box`` is None);
- push: walls, one agent, one box and one coloured goal pad (a single target).

The rules live here (``step``) so that the solver, the corruptions and the
verifier all agree on what a legal move is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

Pos = tuple[int, int]

# Move names in the order the BFS tries them (fixes tie-breaking, so solutions are deterministic).
MOVES: dict[str, Pos] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

FAMILIES = ("maze", "push")


def add(p: Pos, d: Pos) -> Pos:
    return (p[0] + d[0], p[1] + d[1])


def manhattan(a: Pos, b: Pos) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


@dataclass(frozen=True)
class GridState:
    """Everything that is drawn: grid size, walls, agent, targets/pad, box.

    ``targets`` is a tuple of (colour name, cell) pairs sorted by colour, so two
    equal states compare and hash equal.
    """

    n: int
    walls: frozenset[Pos]
    agent: Pos
    targets: tuple[tuple[str, Pos], ...]
    box: Pos | None = None
    _target_at: dict[Pos, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "walls", frozenset((int(r), int(c)) for r, c in self.walls))
        object.__setattr__(self, "agent", (int(self.agent[0]), int(self.agent[1])))
        if self.box is not None:
            object.__setattr__(self, "box", (int(self.box[0]), int(self.box[1])))
        targets = tuple(sorted((str(col), (int(p[0]), int(p[1]))) for col, p in self.targets))
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "_target_at", {p: col for col, p in targets})

    # -- queries -------------------------------------------------------------
    def in_bounds(self, p: Pos) -> bool:
        return 0 <= p[0] < self.n and 0 <= p[1] < self.n

    def is_open(self, p: Pos) -> bool:
        """Inside the grid and not a wall (targets and pads are walkable floor)."""
        return self.in_bounds(p) and p not in self.walls

    def target_at(self, p: Pos) -> str | None:
        return self._target_at.get(p)

    def target_pos(self, colour: str) -> Pos:
        for col, p in self.targets:
            if col == colour:
                return p
        raise KeyError(colour)

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(col for col, _ in self.targets)

    def background(self) -> list[list[str]]:
        """Per-cell background class: "wall", a target colour, or "floor"."""
        grid = [["floor"] * self.n for _ in range(self.n)]
        for r, c in self.walls:
            grid[r][c] = "wall"
        for col, (r, c) in self.targets:
            grid[r][c] = col
        return grid

    # -- rules ---------------------------------------------------------------
    def step(self, move: str) -> "GridState | None":
        """The state after one agent move, or None if the move is illegal.

        The agent moves one cell; it may not leave the grid or enter a wall. If it
        walks into the box, the box is pushed one cell in the same direction, which
        needs the cell behind the box to be open.
        """
        d = MOVES[move]
        a = add(self.agent, d)
        if not self.is_open(a):
            return None
        if self.box is not None and a == self.box:
            b = add(self.box, d)
            if not self.is_open(b):
                return None
            return replace(self, agent=a, box=b)
        return replace(self, agent=a)

    def run(self, moves: Iterable[str]) -> list["GridState"]:
        """All states along ``moves`` (the start state first); raises on an illegal move."""
        states = [self]
        for i, m in enumerate(moves):
            nxt = states[-1].step(m)
            if nxt is None:
                raise ValueError(f"move {i} ({m}) is illegal from agent {states[-1].agent}")
            states.append(nxt)
        return states

    # -- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "walls": sorted([r, c] for r, c in self.walls),
            "agent": list(self.agent),
            "targets": {col: list(p) for col, p in self.targets},
            "box": None if self.box is None else list(self.box),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GridState":
        """Rebuild from ``to_dict`` output; raises ValueError naming a bad field."""
        try:
            n = int(d["n"])
            walls = [_pos(w, "walls") for w in d["walls"]]
            agent = _pos(d["agent"], "agent")
            targets = [(str(col), _pos(p, f"targets.{col}")) for col, p in dict(d["targets"]).items()]
            box = None if d.get("box") is None else _pos(d["box"], "box")
        except KeyError as exc:
            raise ValueError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"bad field type ({exc})") from None
        state = cls(n=n, walls=frozenset(walls), agent=agent, targets=tuple(targets), box=box)
        state.check()
        return state

    def check(self) -> None:
        """Raise ValueError if the state is not drawable (overlaps, out of bounds)."""
        if self.n < 2:
            raise ValueError(f"grid size must be >= 2, got {self.n}")
        cells = [("agent", self.agent)] + [(f"{c} target", p) for c, p in self.targets]
        if self.box is not None:
            cells.append(("box", self.box))
        for name, p in cells + [("wall", w) for w in self.walls]:
            if not self.in_bounds(p):
                raise ValueError(f"{name} at {list(p)} is outside the {self.n}x{self.n} grid")
        for name, p in cells:
            if p in self.walls:
                raise ValueError(f"{name} at {list(p)} is on a wall")
        if len({p for _, p in self.targets}) != len(self.targets):
            raise ValueError("two targets share a cell")
        if self.box is not None and self.box == self.agent:
            raise ValueError("the box and the agent share a cell")


def _pos(v: Any, name: str) -> Pos:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ValueError(f"field {name!r} must be a [row, col] pair of integers, got {v!r}")
    return (v[0], v[1])
