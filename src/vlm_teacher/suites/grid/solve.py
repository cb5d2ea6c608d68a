"""Exact shortest solutions by breadth-first search over (agent, box) states.

One search serves both families: in a maze the box is None, so the state is
just the agent's cell; in a push task it is the (agent, box) pair, the classic
sokoban search. Moves are tried in ``MOVES`` order, so ties always break the
same way and the ground truth is deterministic.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from .state import MOVES, GridState


def bfs(start: GridState, is_goal: Callable[[GridState], bool], max_depth: int | None = None) -> list[str] | None:
    """Shortest list of moves from ``start`` to a state where ``is_goal`` holds, or None."""
    if is_goal(start):
        return []
    key = lambda s: (s.agent, s.box)  # noqa: E731 - the only parts of a state a move changes
    parent: dict[tuple, tuple[tuple, str] | None] = {key(start): None}
    frontier: deque[tuple[GridState, int]] = deque([(start, 0)])
    while frontier:
        s, depth = frontier.popleft()
        if max_depth is not None and depth >= max_depth:
            continue
        for m in MOVES:
            nxt = s.step(m)
            if nxt is None or key(nxt) in parent:
                continue
            parent[key(nxt)] = (key(s), m)
            if is_goal(nxt):
                moves = []
                k = key(nxt)
                while parent[k] is not None:
                    k, mv = parent[k]
                    moves.append(mv)
                return moves[::-1]
            frontier.append((nxt, depth + 1))
    return None


def solve_maze(state: GridState, colour: str) -> list[str] | None:
    """Shortest agent path to the target of ``colour`` (other targets are walkable)."""
    goal = state.target_pos(colour)
    return bfs(state, lambda s: s.agent == goal)


def solve_push(state: GridState, colour: str | None = None) -> list[str] | None:
    """Shortest legal move sequence that leaves the box on the pad of ``colour``."""
    if state.box is None:
        raise ValueError("solve_push needs a state with a box")
    pad = state.target_pos(colour) if colour is not None else state.targets[0][1]
    return bfs(state, lambda s: s.box == pad)


def solve(family: str, state: GridState, colour: str) -> list[str] | None:
    if family == "maze":
        return solve_maze(state, colour)
    if family == "push":
        return solve_push(state, colour)
    raise ValueError(f"unknown grid family {family!r}")


def distances(state: GridState) -> dict[tuple[int, int], int]:
    """BFS distance from the agent to every reachable open cell (box ignored)."""
    dist = {state.agent: 0}
    frontier = deque([state.agent])
    while frontier:
        p = frontier.popleft()
        for d in MOVES.values():
            q = (p[0] + d[0], p[1] + d[1])
            if state.is_open(q) and q not in dist:
                dist[q] = dist[p] + 1
                frontier.append(q)
    return dist
