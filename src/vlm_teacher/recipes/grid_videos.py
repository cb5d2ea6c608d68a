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
from ..suites.grid.render import draw_object, render_background
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


def _draw(task: GridTask, agent, box) -> np.ndarray:
    img = render_background(task.state)
    if box is not None:
        draw_object(img, box, "box")
    if agent is not None:
        draw_object(img, agent, "agent")
    return img


def random_walk(task: GridTask, rng: np.random.Generator, num_frames: int | None = None) -> np.ndarray:
    """A video from the task's first frame where the agent wanders: mostly legal
    moves, sometimes into walls or two cells at once, sometimes invisible for a
    frame; the box (push tasks) moves when walked into, or now and then on its own."""
    s = task.state
    T = task.num_frames if num_frames is None else num_frames
    agent, box = s.agent, s.box
    frames = [_draw(task, agent, box)]
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
        frames.append(_draw(task, None if hide else agent, box))
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


def crop_cells(video: np.ndarray, cells: int, rng: np.random.Generator, cell_px: int = 16) -> np.ndarray:
    """A random cell-aligned square crop of ``cells`` x ``cells`` cells (the whole frame if smaller)."""
    n = video.shape[1] // cell_px
    if cells >= n:
        return video
    r, c = (int(x) for x in rng.integers(0, n - cells + 1, size=2))
    return video[:, r * cell_px:(r + cells) * cell_px, c * cell_px:(c + cells) * cell_px]
