"""Pixels of a grid state: one CELL x CELL block per cell, flat palette colours.

Why this layout:
- CELL = 16 matches the 16x spatial compression of the Wan2.2 VAE, so each cell
  is one latent position; an n x n grid is a (16n x 16n) image.
- Each cell has a *background* (floor, wall, or a target/pad colour) that fills
  the whole cell, and an optional *object* (agent or box) drawn as a filled
  centred square of OBJECT px. The ring around the object keeps showing the
  background, so a target under the agent or a pad under the box stays visible
  and the verifier can read both from one cell (centre = object, ring = background).
  (8 px rather than 10: with a 4 px ring the verifier's ring samples stay 2 px
  away from both the object and the neighbouring cell, which measured robust to
  mp4 plus a Gaussian blur of radius 1.5; a 10 px square failed at radius 1.5.)
- Colours are far apart (>= 107 in RGB distance) so they survive video
  compression, VAE round trips and mild blur.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .state import GridState

CELL = 16
OBJECT = 8  # side of the agent/box square, centred in the cell (4 px of background around it)
_MARGIN = (CELL - OBJECT) // 2

# name -> RGB. Target/pad colours are the names used in the instructions.
PALETTE: dict[str, tuple[int, int, int]] = {
    "floor": (235, 235, 230),
    "wall": (55, 55, 65),
    "agent": (40, 90, 235),
    "box": (150, 95, 30),
    "red": (230, 30, 60),
    "green": (40, 170, 60),
    "yellow": (240, 210, 40),
    "magenta": (200, 50, 200),
}
TARGET_COLOURS = ("red", "green", "yellow", "magenta")
BACKGROUND_CLASSES = ("floor", "wall", *TARGET_COLOURS)
OBJECT_CLASSES = ("agent", "box")
# the words the prompts use for the two objects
AGENT_WORD = "blue"
BOX_WORD = "brown"


def render_background(state: GridState) -> np.ndarray:
    """The image without agent and box: walls, floor and targets only."""
    n = state.n
    img = np.empty((n * CELL, n * CELL, 3), dtype=np.uint8)
    img[:] = PALETTE["floor"]
    for r, c in state.walls:
        img[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = PALETTE["wall"]
    for colour, (r, c) in state.targets:
        img[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = PALETTE[colour]
    return img


def draw_object(img: np.ndarray, cell: tuple[int, int], kind: str) -> None:
    """Paint the agent or box square into ``img`` (in place) at ``cell``."""
    r, c = cell
    y, x = r * CELL + _MARGIN, c * CELL + _MARGIN
    img[y:y + OBJECT, x:x + OBJECT] = PALETTE[kind]


def render_state(state: GridState) -> np.ndarray:
    """(16n, 16n, 3) uint8 RGB image of ``state``."""
    return render_objects(state, state.agent, state.box)


def render_objects(state: GridState, agent: tuple[int, int] | None, box: tuple[int, int] | None) -> np.ndarray:
    """``state``'s walls and targets with the agent and box drawn where given
    (None leaves one out: corrupted and synthetic videos draw what the state's rules forbid)."""
    img = render_background(state)
    if box is not None:
        draw_object(img, box, "box")
    if agent is not None:
        draw_object(img, agent, "agent")
    return img


def render_states(states: list[GridState], num_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 video of ``states``; the last state is held up to ``num_frames``."""
    if not states:
        raise ValueError("no states to render")
    frames = [render_state(s) for s in states]
    if num_frames is not None:
        if num_frames < len(frames):
            raise ValueError(f"{len(frames)} states do not fit in {num_frames} frames")
        frames += [frames[-1]] * (num_frames - len(frames))
    return np.stack(frames)


def solution_video(task: Any) -> np.ndarray:
    """The ground-truth video of a GridTask: one move per frame, then the final state held."""
    return render_states(task.states(), task.num_frames)
