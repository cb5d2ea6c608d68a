"""Training and evaluation examples for the embedded teacher.

An example is one video (uint8 frames the teacher will see), the task whose
questions are asked about it, and the true answers. The answers come only from
the pixel verifier (``suites/grid/verify.py`` via ``questions.answers``) applied
to the video that decides them:

- renders: the ground-truth video, a corrupted one (every kind of
  ``corrupt.py``), or either degraded (blur, temporal smear, ghosting towards
  the mean frame, noise: what a small video model's outputs look like), each
  verified AFTER degrading, so a video blurred beyond reading is labelled as
  failing, as the verifier sees it;
- counterfactual questions: the same video asked about another target colour
  (``GridTask.with_goal``), so the goal question gets both answers on one video;
- reasoner videos: the embedded reasoner's final 4-step video (labelled by its
  own verdict) and its first-step preview decoded from x0_hat = eps - v(eps, 1)
  (labelled by the verdict of the final video from the same noise): exactly
  what the teacher is shown during test-time optimisation;
- test-time-optimisation videos: the same pair after some steps of the
  test-time loop run against a teacher (``run_tto``). Where that teacher is
  fooled, its "Yes" on a preview whose final video fails is what the loop
  exploits (reward hacking); labelled by the verifier, these are the
  adversarial examples that teach the next teacher not to be fooled that way;
- latent attacks (``attack_example``): the reasoner's first-step latent pushed
  a few normalised gradient steps down the CURRENT teacher's test-time loss
  (what the loop's LoRA does, without the LoRA), decoded by the reasoner's own
  preview path and labelled by the verifier of the decoded video. Made during
  training, so each one attacks the teacher as it is at that step.

Every draw takes an explicit ``numpy.random.Generator``, so the training stream
is a pure function of (seed, step): that is what makes a resumed run identical
to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..suites.grid import CORRUPTIONS, GridTask, corrupt, verify
from ..suites.grid.generate import IN_DOMAIN_GOALS
from ..suites.grid.questions import answers, questions

#: the frames the teacher is shown during test-time optimisation (optimize.TTOConfig default K)
SHOWN_FRAMES = 24


@dataclass
class Example:
    """One video and its questions with their true answers (True = "Yes")."""

    video: np.ndarray              # (T, H, W, 3) uint8: what the teacher sees
    task: GridTask                 # whose questions are asked (goal colour included)
    labels: dict[str, bool]        # question type -> answer
    source: str                    # gt | counterfactual | corrupt:<kind> | degraded | reasoner_final | reasoner_preview
    paths: dict[str, list] | None = None  # the verifier's reading of THIS video: agent/box cell per frame
    soft: dict[str, float] | None = None  # P(Yes) targets in place of the labels (blends), see blend_example

    @property
    def questions(self) -> dict[str, str]:
        q = questions(self.task)
        return {k: q[k] for k in self.labels}


def goal_variants(task: GridTask, colours: Sequence[str] = IN_DOMAIN_GOALS) -> list[GridTask]:
    """The task and its counterfactual instructions naming another target colour of the
    same first frame (only ``colours``: magenta goals are held out for the ood split)."""
    out = [task]
    for colour in task.state.colours:
        if colour != task.goal_colour and colour in colours:
            try:
                out.append(task.with_goal(colour))
            except ValueError:  # unreachable target
                pass
    return out


def labelled(task: GridTask, video: np.ndarray, source: str, decider: np.ndarray | None = None) -> Example:
    """An example whose answers are the verifier's verdict of ``decider`` (default: the video itself)."""
    verdict = verify(task, video if decider is None else decider)
    paths = None if decider is not None else {"agent": verdict.details["agent_path"],
                                              "box": verdict.details["box_path"]}
    return Example(video=video, task=task, labels=answers(task, verdict), source=source, paths=paths)


# ---------------------------------------------------------------- degradations

def _blur(video: np.ndarray, sigma: float) -> np.ndarray:
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    radius = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x.permute(0, 2, 3, 1).numpy()


def degrade(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random mix of the artefacts of a small video model's previews: spatial blur,
    temporal smear (each frame mixed with its neighbours), ghosting towards the mean
    frame, and noise. The first frame is left alone (the reasoner pins it)."""
    v = video.astype(np.float32)
    if rng.random() < 0.6:
        v = _blur(v, float(rng.uniform(0.4, 2.2)))
    if rng.random() < 0.5 and len(v) > 2:
        a = float(rng.uniform(0.1, 0.6))
        nb = (np.concatenate([v[:1], v[:-1]]) + np.concatenate([v[1:], v[-1:]])) / 2
        v = (1 - a) * v + a * nb
    if rng.random() < 0.4:
        a = float(rng.uniform(0.1, 0.6))
        v = (1 - a) * v + a * v.mean(axis=0, keepdims=True)
    if rng.random() < 0.5:
        v = v + rng.normal(0.0, float(rng.uniform(1.0, 12.0)), size=v.shape)
    out = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    out[0] = video[0]
    return out


# ---------------------------------------------------------------- renders

#: how a rendered training example is made (probabilities)
RENDER_MIX = {"gt": 0.2, "corrupt": 0.45, "degraded": 0.35}


def render_example(task: GridTask, rng: np.random.Generator, mix: dict[str, float] = RENDER_MIX) -> Example:
    """A rendered example of ``task``: ground truth, corrupted, or degraded (either of
    them), asked about the task or one of its counterfactual goals."""
    kinds = list(mix)
    kind = kinds[int(rng.choice(len(kinds), p=np.array([mix[k] for k in kinds]) / sum(mix.values())))]
    video = task.video()
    source = "gt"
    if kind == "corrupt" or (kind == "degraded" and rng.random() < 0.5):
        options = CORRUPTIONS[task.family]
        c = options[int(rng.integers(len(options)))]
        try:
            video = corrupt(task, video, c, rng)
            source = f"corrupt:{c}"
        except ValueError:  # this corruption does not apply to this task
            pass
    if kind == "degraded":
        video = degrade(video, rng)
        source = "degraded"
    variants = goal_variants(task)
    ask = variants[int(rng.integers(len(variants)))]
    if ask is not task and source == "gt":
        source = "counterfactual"
    return labelled(ask, video, source)


#: the P(Yes) target of a question the verifier answers No on a blend a fraction ``a`` of the way to the
#: truth is BLEND_SLOPE * a: below 0.5 (still a No), but rising along the line, so the loss falls all the way
BLEND_SLOPE = 0.45


def blend_example(example: Example, rng: np.random.Generator) -> Example:
    """``example``'s video moved a random fraction ``a`` of the way to the ground truth of its asked
    task (a pixel blend, as on the line the test-time loop should travel), labelled by the verifier of
    the blend itself. Its ``soft`` targets: 1 where the verifier says Yes, ``BLEND_SLOPE * a`` where it
    says No (a graded No: the closer to a legal video, the less sure). Returned unchanged when the
    shapes differ or the video is the ground truth."""
    truth = example.task.video()
    if truth.shape != example.video.shape or np.array_equal(truth, example.video):
        return example
    a = float(rng.uniform(0.0, 1.0))
    video = np.clip(np.rint((1 - a) * example.video.astype(np.float32) + a * truth.astype(np.float32)), 0, 255)
    out = labelled(example.task, video.astype(np.uint8), "blend")
    out.soft = {k: 1.0 if yes else BLEND_SLOPE * a for k, yes in out.labels.items()}
    return out


# ---------------------------------------------------------------- the reasoner

#: what made a ``ReasonerSample``: the frozen reasoner, or the reasoner after test-time updates
SAMPLE_KINDS = ("reasoner", "tto")


@dataclass
class ReasonerSample:
    """What the reasoner made for one (task, seed): its first-step preview and its final video."""

    task: GridTask
    seed: int
    preview: np.ndarray   # (K, H, W, 3) uint8, the K frames shown to the teacher
    final: np.ndarray     # (T, H, W, 3) uint8, the 4-step video, fully decoded
    kind: str = "reasoner"  # one of SAMPLE_KINDS
    steps: int = 0          # test-time updates behind it (tto)

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_KINDS:
            raise ValueError(f"unknown reasoner sample kind {self.kind!r}; expected one of {SAMPLE_KINDS}")

    def examples(self) -> list[Example]:
        """Preview and final video, each asked about the task and its counterfactual goals;
        every answer is the verifier's verdict of the FINAL video. Sources are
        ``<kind>_final`` and ``<kind>_preview``."""
        out = []
        for ask in goal_variants(self.task):
            out.append(labelled(ask, self.final, f"{self.kind}_final"))
            out.append(labelled(ask, self.preview, f"{self.kind}_preview", decider=self.final))
        return out


def is_preview(source: str) -> bool:
    """A preview's answers are decided by another video (its final video)."""
    return source.endswith("_preview")


@torch.no_grad()
def first_step_latent(reasoner: Any, task: GridTask, seed: int) -> tuple[Any, torch.Tensor]:
    """The conditioning of (task, seed) and the reasoner's first-step x0_hat for it, as the
    reasoner is now (LoRA included): the latent the test-time loop previews."""
    cond = reasoner.prepare(task.prompt, task.first_frame(), seed, **task.video_shape())
    return cond, reasoner.predict_x0(cond, mode="first")


def _preview(reasoner: Any, task: GridTask, seed: int, shown: int) -> tuple[Any, np.ndarray]:
    """The conditioning of (task, seed) and the K frames the test-time loop shows the teacher
    for it: ``first_step_latent``, decoded."""
    from ..reasoner.base import uniform_frame_indices
    from ..video import to_uint8

    cond, x0 = first_step_latent(reasoner, task, seed)
    with torch.no_grad():
        preview = reasoner.preview(x0, uniform_frame_indices(cond.num_frames, shown))
    return cond, to_uint8(preview.clamp(0, 1))


def run_reasoner(reasoner: Any, task: GridTask, seed: int, shown: int = SHOWN_FRAMES) -> ReasonerSample:
    """The preview the test-time loop would show the teacher at step 1 (no LoRA) and the
    final video the frozen reasoner makes from the same noise."""
    from ..video import to_uint8

    cond, preview = _preview(reasoner, task, seed, shown)
    with torch.no_grad():
        final = reasoner.generate(cond)
    return ReasonerSample(task=task, seed=seed, preview=preview, final=to_uint8(final))


#: the update counts of the test-time runs behind ``tto`` samples, cycled over the jobs:
#: early, middle and late points of a trajectory (the loop's default budget is 40)
TTO_STEPS = (4, 8, 16, 24)


def run_tto(reasoner: Any, teacher: Any, task: GridTask, seed: int, steps: int, lr: float,
            shown: int = SHOWN_FRAMES) -> ReasonerSample:
    """The preview and final video after ``steps`` updates of the test-time loop against
    ``teacher`` (the suite's own questions, no early stop), from the noise of ``seed``.
    The LoRA is removed afterwards: ``reasoner`` is left frozen."""
    from ..optimize import TTOConfig, teach
    from ..suites.grid.questions import grid_queries
    from ..video import to_uint8

    config = TTOConfig(lr=lr, fixed_steps=steps, num_frames_shown=shown)
    try:
        result = teach(reasoner, teacher, task.to_task(), config, seed=seed, queries=grid_queries(task),
                       progress=False, **task.video_shape())  # result.video: the adapted reasoner's final video
        _, preview = _preview(reasoner, task, seed, shown)
    finally:
        reasoner.remove_lora()
    return ReasonerSample(task=task, seed=seed, preview=preview, final=to_uint8(result.video), kind="tto",
                          steps=steps)


def tto_maker(reasoner: Any, teacher: Any, lr: float) -> Callable[[GridTask, int], ReasonerSample]:
    """``run_tto`` as a (task, seed) job for ``reasoner_samples``; the update count is
    drawn from ``TTO_STEPS`` by the seed (so a cached job is the same job)."""
    def make(task: GridTask, seed: int) -> ReasonerSample:
        return run_tto(reasoner, teacher, task, seed, TTO_STEPS[seed % len(TTO_STEPS)], lr)
    return make


def save_sample(path: Path, sample: ReasonerSample) -> None:
    from ..files import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, preview=sample.preview, final=sample.final, seed=sample.seed,
                                kind=sample.kind, steps=sample.steps)


def load_sample(path: Path, task: GridTask) -> ReasonerSample:
    with np.load(path, allow_pickle=False) as data:
        kind = str(data["kind"]) if "kind" in data else "reasoner"  # caches written before tto samples
        steps = int(data["steps"]) if "steps" in data else 0
        return ReasonerSample(task=task, seed=int(data["seed"]), preview=data["preview"], final=data["final"],
                              kind=kind, steps=steps)


def reasoner_samples(make: Callable[[GridTask, int], ReasonerSample] | None, jobs: Sequence[tuple[GridTask, int]],
                     cache: Path, *, deadline: float | None = None, desc: str = "reasoner videos",
                     clock: Callable[[], float] | None = None) -> list[ReasonerSample]:
    """Run ``make`` (e.g. ``functools.partial(run_reasoner, reasoner)`` or ``tto_maker``) on
    each (task, seed), caching each result as it is made (a killed run resumes from the
    cache; ``make=None`` reads the cache only). Stops starting new jobs after ``deadline``
    (clock seconds)."""
    import time

    from tqdm.auto import tqdm

    clock = clock or time.monotonic
    cache.mkdir(parents=True, exist_ok=True)
    out: list[ReasonerSample] = []
    for task, seed in tqdm(jobs, desc=desc, unit="video", leave=False):
        path = cache / f"{task.id}-s{seed}.npz"
        if path.is_file():
            out.append(load_sample(path, task))
            continue
        if make is None or (deadline is not None and clock() > deadline):
            continue
        sample = make(task, seed)
        save_sample(path, sample)
        out.append(sample)
    return out


# ---------------------------------------------------------------- latent attacks

@dataclass(frozen=True)
class AttackSettings:
    """How ``attack_example`` moves a latent: 1..``steps`` steps, each of root-mean-square size
    drawn from [``step_size`` / 4, ``step_size``] (the frozen latents have unit RMS), from the
    frozen latent plus Gaussian noise of a standard deviation drawn from [0, ``noise``]."""
    steps: int = 4
    step_size: float = 0.05
    noise: float = 0.1
    lam: float = 0.5


def whole_preview(reasoner: Any, z: torch.Tensor) -> torch.Tensor:
    """Every frame of the latent ``z`` through the reasoner's (differentiable) preview path."""
    return reasoner.preview(z, range(reasoner.pixel_frames(z.shape[2])))


def attack_loss(reasoner: Any, teacher: Any, z: torch.Tensor, queries,
                lam: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's test-time loss (``objective.weighted_loss`` of ``queries``) at the latent ``z``,
    decoded whole, and the decoded frames."""
    from ..objective import weighted_loss

    frames = whole_preview(reasoner, z)
    return weighted_loss(teacher.yes_logprob(frames, queries), lam), frames


def attack_step(reasoner: Any, teacher: Any, z: torch.Tensor, queries, size: float,
                lam: float = 0.5) -> tuple[torch.Tensor, float, torch.Tensor]:
    """One normalised gradient step of root-mean-square ``size`` down ``attack_loss`` at the latent
    ``z``; the first latent frame (the reasoner pins it) is never moved. Returns the next latent, the
    loss at ``z`` and the frames decoded at ``z`` (detached)."""
    z = z.detach().float().requires_grad_(True)
    loss, frames = attack_loss(reasoner, teacher, z, queries, lam)
    (grad,) = torch.autograd.grad(loss, z)
    grad[:, :, 0] = 0.0
    step = size * grad / grad.pow(2).mean().sqrt().clamp_min(1e-12)
    return (z - step).detach(), float(loss.detach()), frames.detach()


def attack_example(reasoner: Any, teacher: Any, task: GridTask, seed: int, rng: np.random.Generator,
                   settings: AttackSettings = AttackSettings()) -> Example:
    """One latent attack on ``teacher`` (see the module docstring): ``attack_step`` from
    ``first_step_latent`` plus noise, as an Example labelled by the verifier of the decoded video;
    source ``attack``. The answers are those of ``task``'s own questions, the ones the attack pushed
    towards Yes."""
    from ..suites.grid.questions import grid_queries
    from ..video import to_uint8

    _, z0 = first_step_latent(reasoner, task, seed)
    queries = grid_queries(task).all
    noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32))
    noise[:, :, 0] = 0.0
    z = z0.float() + float(rng.uniform(0.0, settings.noise)) * noise
    for _ in range(int(rng.integers(1, settings.steps + 1))):
        size = float(rng.uniform(settings.step_size / 4, settings.step_size))
        z, _, _ = attack_step(reasoner, teacher, z, queries, size, settings.lam)
    with torch.no_grad():
        video = to_uint8(whole_preview(reasoner, z).clamp(0, 1))
    return labelled(task, video, "attack")
