"""Training videos for the embedded Reasoner, made in-process from the grid suite.

Why several sources: the VAE must represent *any* grid video, right or wrong,
because the test-time method shows the teacher decodes of imperfect
predictions and the reasoner's own mistakes must stay visible after the round
trip. So the VAE sees ground-truth videos, counterfactual ground truths (the
same first frame with another named goal, ``GridTask.with_goal``), rule-breaking
corruptions (``suites.grid.corrupt``) and random walks (legal and illegal moves,
a vanishing agent). The transformer learns only from correct videos, including
the counterfactual pairs, so the instruction's goal colour matters.

Everything is drawn from a ``numpy.random.Generator`` passed in by the caller,
so a seed fixes the data stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..suites.grid import CORRUPTIONS, MOVES, GridTask, corrupt, grid_tasks
from ..suites.grid.generate import IN_DOMAIN_GOALS
from ..suites.grid.render import BACKGROUND_CLASSES, CELL, OBJECT, PALETTE, render_objects
from ..suites.grid.state import add

#: VAE batch mix: (source, probability)
VAE_SOURCES = (("ground_truth", 0.35), ("counterfactual", 0.1), ("corrupted", 0.3), ("random_walk", 0.25))
_MOVE_LIST = list(MOVES.values())


def train_tasks(per_family: int, seed: int = 0) -> list[GridTask]:
    """The first ``per_family`` maze and push tasks of the ``train`` split."""
    return grid_tasks("train", n=per_family, seed=seed)


def counterfactuals(task: GridTask, num_frames: int | None = None) -> list[GridTask]:
    """The same first frame with each other in-domain goal colour that can be reached
    within ``num_frames`` (default: the task's own length). Magenta is never a goal
    in-domain (it is the ood split's unseen combination), so it is left out here too."""
    limit = task.num_frames if num_frames is None else num_frames
    out = []
    for colour in task.state.colours:
        if colour == task.goal_colour or colour not in IN_DOMAIN_GOALS:
            continue
        try:
            other = task.with_goal(colour)
        except ValueError:
            continue
        if other.num_frames == limit:
            out.append(other)
    return out


@dataclass(frozen=True)
class Sample:
    """One correct training video for the transformer: the task (prompt, first frame) and its video."""

    task: GridTask
    counterfactual: bool


def transformer_samples(tasks: list[GridTask], num_frames: int = 9) -> list[Sample]:
    """Ground truths of ``tasks`` (those of ``num_frames`` frames) plus their counterfactual pairs."""
    out: list[Sample] = []
    for task in tasks:
        if task.num_frames != num_frames:
            continue
        out.append(Sample(task, False))
        out.extend(Sample(t, True) for t in counterfactuals(task, num_frames))
    return out


def random_walk(task: GridTask, rng: np.random.Generator, num_frames: int | None = None) -> np.ndarray:
    """A video from the task's first frame where the agent wanders: mostly legal
    moves, sometimes into walls or two cells at once, sometimes invisible for a
    frame; the box (push tasks) moves when walked into, or now and then on its own."""
    s = task.state
    T = task.num_frames if num_frames is None else num_frames
    agent, box = s.agent, s.box
    frames = [render_objects(task.state, agent, box)]
    for _ in range(1, T):
        r = rng.random()
        d = _MOVE_LIST[int(rng.integers(4))]
        if r < 0.15:
            pass  # stand still
        elif r < 0.9:
            q = add(agent, d)
            if r > 0.8:
                q = add(q, _MOVE_LIST[int(rng.integers(4))])  # a jump
            illegal_ok = rng.random() < 0.25
            if s.in_bounds(q) and (s.is_open(q) or illegal_ok):
                if box is not None and q == box:
                    b = add(box, d)
                    if s.in_bounds(b) and b != agent:
                        agent, box = q, b
                else:
                    agent = q
        elif box is not None:
            q = add(box, d)
            if s.in_bounds(q) and q != agent:
                box = q
        hide = rng.random() < 0.05
        frames.append(render_objects(task.state, None if hide else agent, box))
    return np.stack(frames)


def corrupted(task: GridTask, rng: np.random.Generator) -> np.ndarray:
    """The ground truth with one rule broken (a random kind that applies), else a random walk."""
    kinds = list(CORRUPTIONS[task.family])
    rng.shuffle(kinds)
    video = task.video()
    for kind in kinds[:3]:
        try:
            return corrupt(task, video, kind, rng)
        except ValueError:
            continue
    return random_walk(task, rng)


def vae_video(tasks: list[GridTask], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One (T, H, W, 3) uint8 video for the VAE, drawn from the VAE_SOURCES mix."""
    names = [n for n, _ in VAE_SOURCES]
    probs = np.array([p for _, p in VAE_SOURCES])
    source = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    task = tasks[int(rng.integers(len(tasks)))]
    if source == "counterfactual":
        others = counterfactuals(task)
        if others:
            return others[int(rng.integers(len(others)))].video(), source
        source = "ground_truth"
    if source == "ground_truth":
        return task.video(), source
    if source == "corrupted":
        return corrupted(task, rng), source
    return random_walk(task, rng), source


#: background class probabilities of random_grid_images (floor, wall, then the four target colours)
_BG_PROBS = np.array([0.45, 0.27, 0.07, 0.07, 0.07, 0.07])


def random_grid_images(rng: np.random.Generator, count: int, cells: int) -> np.ndarray:
    """``count`` single frames of ``cells`` x ``cells`` random cells: every background
    class and object/background combination shows up far more often than in real
    tasks (where targets are 2-3 cells of 36), which is what the VAE's colours need.
    Returns (count, 1, H, W, 3) uint8, i.e. one-frame videos."""
    assert len(_BG_PROBS) == len(BACKGROUND_CLASSES)
    rgb = np.array([PALETTE[k] for k in BACKGROUND_CLASSES], dtype=np.uint8)
    bg = rng.choice(len(BACKGROUND_CLASSES), size=(count, cells, cells), p=_BG_PROBS)
    img = np.repeat(np.repeat(rgb[bg], CELL, axis=1), CELL, axis=2)  # (count, H, W, 3)
    obj = rng.choice(3, size=(count, cells, cells), p=[0.8, 0.12, 0.08])  # none, agent, box
    m = (CELL - OBJECT) // 2
    for i, r, c in zip(*np.nonzero(obj)):
        kind = "agent" if obj[i, r, c] == 1 else "box"
        img[i, r * CELL + m:r * CELL + m + OBJECT, c * CELL + m:c * CELL + m + OBJECT] = PALETTE[kind]
    return img[:, None]


#: per covered frame, the cell code's object one-hot: none, agent, box
CODE_OBJECTS = ("none", "agent", "box")


def code_channels(temporal: int) -> int:
    """Channels of the cell code: 6 background classes + ``temporal`` frames x CODE_OBJECTS."""
    return len(BACKGROUND_CLASSES) + len(CODE_OBJECTS) * temporal


def object_code_channels(temporal: int) -> list[int]:
    """The cell code's agent and box channels, for every pixel frame a latent frame covers."""
    first, k = len(BACKGROUND_CLASSES), len(CODE_OBJECTS)
    return [first + k * f + CODE_OBJECTS.index(o) for f in range(temporal) for o in ("agent", "box")]


def object_classes(video: np.ndarray, cell_px: int = CELL) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, n, n) index into CODE_OBJECTS, read at each cell's centre
    (exact for renders of this suite: flat palette colours)."""
    n = video.shape[1] // cell_px
    centre = video[:, cell_px // 2::cell_px, cell_px // 2::cell_px][:, :n, :n]
    out = np.zeros(centre.shape[:3], dtype=np.int64)
    for i, name in enumerate(CODE_OBJECTS[1:], 1):
        out[(centre == PALETTE[name]).all(-1)] = i
    return out


def cell_codes(video: np.ndarray, temporal: int = 4) -> np.ndarray:
    """The symbolic content of a clean rendered video as a latent-shaped code.

    (T, H, W, 3) uint8 -> (code_channels(temporal), latent frames, n, n) float32 in {-1, 1}:
    per cell, the background class (one-hot over BACKGROUND_CLASSES, read at the
    cell's border) and, for each of the ``temporal`` pixel frames a latent frame
    covers (frame 0 alone for latent frame 0, then 4j-3..4j), whether the cell
    shows nothing, the agent or the box (read at the centre). The VAE is trained
    to put this code in its first latent channels, which makes it
    learn in minutes instead of hours and gives the transformer near-symbolic
    latents. Exact for renders of this suite (flat palette colours)."""
    T, H, _, _ = video.shape
    n = H // CELL
    ring = video[:, 1::CELL, 1::CELL].astype(np.int32)[:, :n, :n]  # (T, n, n, 3)
    bg_rgb = np.array([PALETTE[k] for k in BACKGROUND_CLASSES], dtype=np.int32)
    bg = np.abs(ring[..., None, :] - bg_rgb).sum(-1).argmin(-1)  # (T, n, n)
    obj = object_classes(video)
    latent_frames = (T - 1) // temporal + 1
    out = np.empty((code_channels(temporal), latent_frames, n, n), dtype=np.float32)
    eye_bg, eye_obj = np.eye(len(BACKGROUND_CLASSES), dtype=np.float32), np.eye(len(CODE_OBJECTS), dtype=np.float32)
    for j in range(latent_frames):
        frames = [0] * temporal if j == 0 else list(range(temporal * j - temporal + 1, temporal * j + 1))
        parts = [eye_bg[bg[frames[0]]]] + [eye_obj[obj[f]] for f in frames]  # each (n, n, k)
        out[:, j] = np.concatenate(parts, axis=-1).transpose(2, 0, 1)
    return 2.0 * out - 1.0


def crop_cells(video: np.ndarray, cells: int, rng: np.random.Generator, cell_px: int = 16,
               focus: bool = False) -> np.ndarray:
    """A random cell-aligned square crop of ``cells`` x ``cells`` cells (the whole frame if smaller).

    ``focus``: the crop contains a cell where the agent or box stands in some
    frame, so small crops of videos still show motion (a random 2x2 crop of a
    6x6 maze video often shows no object at all)."""
    n = video.shape[1] // cell_px
    if cells >= n:
        return video
    lo, hi = np.zeros(2, dtype=int), np.full(2, n - cells)
    if focus:
        hits = np.argwhere(object_classes(video, cell_px) > 0)
        if len(hits):
            _, r, c = hits[int(rng.integers(len(hits)))]
            lo = np.maximum(0, np.array([r, c]) - cells + 1)
            hi = np.minimum(np.array([r, c]), n - cells)
    r0, c0 = (int(rng.integers(a, b + 1)) for a, b in zip(lo, hi))
    return video[:, r0 * cell_px:(r0 + cells) * cell_px, c0 * cell_px:(c0 + cells) * cell_px]
