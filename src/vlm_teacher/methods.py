"""The methods a benchmark compares, behind one interface with honest cost accounting.

Every method turns one task and one seed into one video::

    method = get_method("best_of_n:5")
    out = method.run(ctx, task, seed)        # MethodOutput
    out.video                                # (T, H, W, 3) uint8
    out.cost                                 # wall_s, reasoner_calls, teacher_calls, peak_mem_mb

Names (parameterised ones are parsed in :func:`parse_method`, the one place that
knows the grammar):

* ``frozen`` - the reasoner as shipped: one few-step sample.
* ``best_of_n[:N]`` - N seeds, the teacher writes its queries once and scores
  each video; the best by teacher score is kept. Candidate 0 is the frozen
  sample of the same seed. The default N = 5 is the paper's Pass@5, which it
  reports at about TTO's wall time (70 s vs 69 s on VBVR).
* ``oracle_pass_at_n[:N]`` - the same N candidates, the best by the suite's
  verifier (an upper bound; only where a verifier exists, i.e. the grid suite).
* ``tto`` - the teacher's test-time optimisation (``optimize.teach``) with the
  context's base ``TTOConfig`` (the paper's defaults unless overridden).
* ablations of docs/method.md: ``tto_generic`` (task-agnostic queries),
  ``tto_lam1`` (goal query only), ``tto_lam0`` (process queries only),
  ``tto_last_step`` / ``tto_all_steps`` (which denoising step gets the
  gradient), ``tto_k<K>`` (K frames shown), ``tto_fixed<S>`` (exactly S updates).
* ``tto_oracle`` - the same loop with the grid oracle as teacher (log P(Yes) = the
  scaled MSE of the preview to the ground-truth frames): the optimiser's upper
  bound, grid suite only.
* ``solver`` - VLM-as-solver: the teacher rewrites the instruction into a plan
  and the reasoner is conditioned on instruction + plan.
* ``videotpo[:R]`` - VideoTPO-style test-time prompt optimisation: R rounds of
  two candidates; the teacher sees frames of both, says which is better and
  rewrites the prompt; the output is the better candidate of the last round.

Cost accounting (the same for every method, measured around ``run``):
``wall_s`` is the whole call (model loading excluded, it happens once per
worker); ``reasoner_calls`` counts transformer forward passes (a 4-step sample
is 4; the text encoder and the VAE are not counted); ``teacher_calls`` counts
calls into the teacher (one generation, one scoring pass, or one optimisation
step's yes/no pass each); ``peak_mem_mb`` is ``runtime.MemoryMeter``'s peak during
the call (the same definition as ``vlm-teacher run``'s history.json; where the CPU
peak cannot be reset, ``peak_mem_scope`` says "process").
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import UserError
from .optimize import TTOConfig, x0_calls
from .reasoner.base import Reasoner, uniform_frame_indices
from .runtime import MemoryMeter
from .task import Queries, Task
from .teacher.base import Teacher

log = logging.getLogger("vlm_teacher")

#: a verifier for the oracle: (task, uint8 video) -> score in [0, 1]
Verifier = Callable[[Task, np.ndarray], float]

DEFAULT_N = 5          # best_of_n / oracle_pass_at_n candidates (the paper's Pass@5)
DEFAULT_TPO_ROUNDS = 2  # videotpo rounds: 2 x 2 candidates = 4 samples (paper: ~4x the frozen cost)
TPO_FRAMES = 4          # frames of each candidate shown to the teacher in a VideoTPO comparison
SEED_STRIDE = 1_000_003  # candidate i of seed s uses seed s + i * SEED_STRIDE (i = 0 is the frozen sample)

SOLVER_PROMPT = (
    "You plan videos for a video generation model that cannot reason. Read the task (and look at its first "
    "frame, if given) and write the plan the video must show: which object moves, in which direction and "
    "order, what must never happen, and what the last frame shows. At most five short, concrete steps, "
    "plain text, no preamble.\n\nTask: {instruction}"
)
SOLVER_VERSION = 1

TPO_PROMPT = (
    "Two videos were generated for the same task. The first {k} images are frames of video A in time order, "
    "the next {k} images are frames of video B in time order.\n"
    "Task: {instruction}\n"
    "Prompt given to the video model: {prompt}\n"
    "1. Which video follows the task and its rules better?\n"
    "2. Rewrite the prompt so the video model avoids the mistakes you saw. Keep the task unchanged; add "
    "concrete guidance about motion, order and the final state.\n"
    "Answer in exactly this form:\nBetter: A or B\nPrompt: <the rewritten prompt>"
)
TPO_VERSION = 1


# ---------------------------------------------------------------- data types
@dataclass
class Cost:
    wall_s: float = 0.0
    reasoner_calls: int = 0
    teacher_calls: int = 0
    peak_mem_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MethodOutput:
    """What one run of a method produced. ``history`` holds per-step records
    (TTO: loss and P(Yes) per question; VideoTPO: one record per round);
    ``extra`` method-specific details (candidate scores, the plan, prompts)."""

    video: np.ndarray                      # (T, H, W, 3) uint8
    steps: int = 0
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    queries: Queries | None = None
    cost: Cost = field(default_factory=Cost)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodContext:
    """The models and settings shared by every method run in one worker.

    ``tto`` is the base optimisation config; ablations change one field of it.
    ``num_frames`` overrides the video length (default: the task's
    ``metadata["num_frames"]`` if it has one, else the reasoner's default).
    ``verifier`` is needed by ``oracle_pass_at_n`` only.
    """

    reasoner: Reasoner
    teacher: Teacher | None = None
    tto: TTOConfig = field(default_factory=TTOConfig)
    num_frames: int | None = None
    verifier: Verifier | None = None
    progress: bool = False

    @property
    def fps(self) -> int:
        return int(self.reasoner.fps)

    def video_shape(self, task: Task) -> dict[str, int]:
        """``num_frames`` / ``height`` / ``width`` for ``reasoner.prepare``: the context's
        frame count, else what the task's metadata asks for (a suite whose scorer reads
        cells at a fixed size, like the grid's 8x8 ood tasks, records its video size);
        what neither sets is left to the reasoner's defaults."""
        meta = task.metadata or {}
        shape = {k: meta.get(k) for k in ("num_frames", "height", "width")}
        if self.num_frames is not None:
            shape["num_frames"] = int(self.num_frames)
        return {k: int(v) for k, v in shape.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}


def candidate_seeds(seed: int, n: int) -> list[int]:
    """Seeds of N candidates; the first is ``seed`` itself (the frozen sample)."""
    return [int(seed) + i * SEED_STRIDE for i in range(n)]


# ---------------------------------------------------------------- base class
class Method:
    """One benchmark method. Subclasses implement ``_run`` and may extend ``config``."""

    name = ""
    uses_teacher = False
    needs_verifier = False
    checks_preview = False  # with a verifier: also judge the first-step preview of the (adapted) reasoner
    description = ""
    #: the version of what this method's code computes: bump it when a change alters the output for
    #: the same settings (it is part of the result key, so the rows of the old code are not reused)
    version = 1

    def config(self) -> dict[str, Any]:
        """The settings that determine this method's output (part of the result key)."""
        return {"method": self.name, "version": self.version}

    def run(self, ctx: MethodContext, task: Task, seed: int) -> MethodOutput:
        """Run on one task and seed; the cost is measured here, the same way for all methods."""
        if self.uses_teacher and ctx.teacher is None:
            raise UserError(f"method {self.name} needs a teacher model")
        if self.needs_verifier and ctx.verifier is None:
            raise UserError(f"method {self.name} needs a suite with a verifier (the grid suite)")
        ctx.reasoner.remove_lora()  # a previous TTO run must never leak its adapter into this one
        counts = {"reasoner": 0, "teacher": 0}
        try:
            with MemoryMeter(ctx.reasoner.device) as meter:
                out = self._run(ctx, task, int(seed), counts)
            if self.checks_preview and ctx.verifier is not None:
                out.extra.update(preview_verdict(ctx, task, int(seed)))  # a measurement, outside the cost
        finally:
            ctx.reasoner.remove_lora()
        out.cost = Cost(wall_s=meter.wall_s, reasoner_calls=counts["reasoner"], teacher_calls=counts["teacher"],
                        peak_mem_mb=meter.peak_mb)
        out.extra.setdefault("peak_mem_scope", meter.scope)
        return out

    def _run(self, ctx: MethodContext, task: Task, seed: int, counts: dict[str, int]) -> MethodOutput:
        raise NotImplementedError

    # helpers shared by the sampling methods
    def _sample(self, ctx: MethodContext, prompt: str, task: Task, seed: int, counts: dict[str, int]):
        """One frozen few-step sample: (F, 3, H, W) float in [0, 1]."""
        cond = ctx.reasoner.prepare(prompt, task.first_frame, seed, **ctx.video_shape(task))
        with torch.no_grad():
            video = ctx.reasoner.generate(cond)
        counts["reasoner"] += cond.steps
        return video

    def _best_of(self, ctx, task, seed, counts, judge):
        """Sample ``self.n`` seeds, score each with ``judge(video) -> (score, record)``, keep the
        first best. Returns (score, seed, video, candidate records)."""
        best, candidates = None, []
        for s in candidate_seeds(seed, self.n):
            video = self._sample(ctx, task.prompt, task, s, counts)
            score, record = judge(video)
            candidates.append({"seed": s, **record})
            if best is None or score > best[0]:
                best = (score, s, video)
        assert best is not None
        return (*best, candidates)

    def __repr__(self) -> str:
        return f"<method {self.name}>"


def preview_verdict(ctx: MethodContext, task: Task, seed: int) -> dict[str, Any]:
    """The verifier's verdict on the first-step prediction, decoded in full, of the reasoner as it
    stands (with a TTO run's adapter still attached): what the teacher was shown, judged as the
    video. Set beside the final video's verdict it says whether the preview is the video."""
    cond = ctx.reasoner.prepare(task.prompt, task.first_frame, seed, **ctx.video_shape(task))
    with torch.no_grad():
        video = ctx.reasoner.decode(ctx.reasoner.predict_x0(cond, mode="first")).cpu()
    score = float(ctx.verifier(task, _to_uint8(video)))
    return {"preview_score": score, "preview_passed": score >= 1.0}


def _to_uint8(video) -> np.ndarray:
    from .video import to_uint8

    return to_uint8(video)


# ---------------------------------------------------------------- methods
class Frozen(Method):
    name = "frozen"
    checks_preview = True
    description = "the reasoner as shipped: one few-step sample"

    def _run(self, ctx, task, seed, counts):
        video = self._sample(ctx, task.prompt, task, seed, counts)
        return MethodOutput(video=_to_uint8(video))


class BestOfN(Method):
    """N samples, the best by the teacher's lambda-weighted -log P(Yes) on its own queries: the
    loss TTO minimises (``teacher_score`` is its negative, higher is better)."""

    uses_teacher = True
    description = "N seeds, the best by the teacher's score"

    def __init__(self, n: int = DEFAULT_N) -> None:
        if n < 1:
            raise UserError(f"best_of_n needs N >= 1, got {n}")
        self.n = int(n)
        self.name = f"best_of_n:{self.n}"

    def config(self):
        return {**super().config(), "n": self.n}

    def _run(self, ctx, task, seed, counts):
        queries = ctx.teacher.propose_queries(task.prompt, task.first_frame)
        counts["teacher"] += 1

        def judge(video):
            idx = uniform_frame_indices(int(video.shape[0]), ctx.tto.num_frames_shown)
            judged = ctx.teacher.score(video[idx], queries, lam=ctx.tto.lam)
            counts["teacher"] += 1
            return -judged["loss"], {"teacher_score": -judged["loss"], "teacher_loss": judged["loss"],
                                     "p_yes": judged["p_yes"]}

        score, s, video, candidates = self._best_of(ctx, task, seed, counts, judge)
        return MethodOutput(video=_to_uint8(video), steps=self.n, stop_reason="best_of_n", queries=queries,
                            extra={"candidates": candidates, "chosen_seed": s, "teacher_score": score})


class OraclePassAtN(Method):
    """N samples, the best by the suite's verifier: the upper bound of best-of-N."""

    needs_verifier = True
    description = "N seeds, the best by the verifier (oracle upper bound)"

    def __init__(self, n: int = DEFAULT_N) -> None:
        if n < 1:
            raise UserError(f"oracle_pass_at_n needs N >= 1, got {n}")
        self.n = int(n)
        self.name = f"oracle_pass_at_n:{self.n}"

    def config(self):
        return {**super().config(), "n": self.n}

    def _run(self, ctx, task, seed, counts):
        def judge(video):
            score = float(ctx.verifier(task, _to_uint8(video)))
            return score, {"verifier_score": score}

        _, s, video, candidates = self._best_of(ctx, task, seed, counts, judge)
        return MethodOutput(video=_to_uint8(video), steps=self.n, stop_reason="oracle_pass_at_n",
                            extra={"candidates": candidates, "chosen_seed": s, "verifier_calls": self.n})


class TTO(Method):
    """The teacher's test-time optimisation; ``changes`` is the ablation applied to the base config."""

    uses_teacher = True
    checks_preview = True

    def __init__(self, name: str = "tto", changes: dict[str, Any] | None = None, description: str = "") -> None:
        self.name = name
        self.changes = dict(changes or {})
        self.description = description or "teacher test-time optimisation (paper defaults)"
        try:
            replace(TTOConfig(), **self.changes)
        except (TypeError, ValueError) as exc:
            raise UserError(f"method {name}: {exc}") from None

    def resolve(self, base: TTOConfig) -> TTOConfig:
        """The base config with this ablation applied."""
        try:
            return replace(base, **self.changes)
        except ValueError as exc:
            raise UserError(f"method {self.name}: {exc}") from None

    def tto_config(self, ctx: MethodContext) -> TTOConfig:
        return self.resolve(ctx.tto)

    def config(self):
        return {**super().config(), "changes": self.changes}

    def _run(self, ctx, task, seed, counts):
        return self._teach(ctx, ctx.teacher, task, seed, counts, self.tto_config(ctx))

    def _teach(self, ctx, teacher, task, seed, counts, cfg, queries=None):
        from .optimize import teach

        result = teach(ctx.reasoner, teacher, task, cfg, seed=seed, queries=queries, **ctx.video_shape(task),
                       progress=ctx.progress)
        counts["reasoner"] += int(result.cost["reasoner_calls"])
        counts["teacher"] += int(result.cost["teacher_calls"])
        return MethodOutput(video=_to_uint8(result.video), steps=result.steps, stop_reason=result.stop_reason,
                            history=result.history, queries=result.queries,
                            extra={"updates": result.updates, "seconds": result.seconds, "config": asdict(cfg)})


class TTOOracle(TTO):
    """TTO with a perfect reward: the grid oracle (``suites/grid/oracle.py``, the scaled MSE of the
    preview to the ground-truth frames) in the teacher's place. Frozen -> tto_oracle is what the loop
    can deliver; tto_oracle -> tto is what the teacher costs."""

    uses_teacher = False
    needs_verifier = True

    def tto_config(self, ctx: MethodContext) -> TTOConfig:
        """The oracle's loss scale is its own (1 on the frozen preview), so tau means nothing to it:
        it spends the whole step budget."""
        cfg = super().tto_config(ctx)
        return cfg if cfg.fixed_steps is not None else replace(cfg, fixed_steps=cfg.max_steps)

    def _run(self, ctx, task, seed, counts):
        from .suites.grid.oracle import OracleTeacher
        from .suites.grid.verify import as_grid_task

        cfg = self.tto_config(ctx)
        cond = ctx.reasoner.prepare(task.prompt, task.first_frame, seed, **ctx.video_shape(task))
        idx = uniform_frame_indices(cond.num_frames, cfg.num_frames_shown)
        with torch.no_grad():
            frozen = ctx.reasoner.preview(ctx.reasoner.predict_x0(cond, mode=cfg.x0_mode), idx)
        counts["reasoner"] += x0_calls(cfg.x0_mode, cond.steps)
        oracle = OracleTeacher(as_grid_task(task), idx, device=frozen.device).calibrated(frozen)
        out = self._teach(ctx, oracle, task, seed, counts, cfg, oracle.propose_queries(task.prompt, None))
        out.extra["oracle_scale"] = oracle.scale
        return out


class Solver(Method):
    """VLM-as-solver: the teacher writes a plan, the reasoner samples once from instruction + plan."""

    uses_teacher = True
    name = "solver"
    description = "the teacher rewrites the instruction into a plan the reasoner is conditioned on"

    def config(self):
        return {**super().config(), "prompt_version": SOLVER_VERSION}

    def _run(self, ctx, task, seed, counts):
        images = [task.first_frame] if task.first_frame is not None else []
        plan = " ".join(ctx.teacher.generate_text(SOLVER_PROMPT.format(instruction=task.prompt.strip()), images,
                                                  max_new_tokens=160).split())
        counts["teacher"] += 1
        prompt = f"{task.prompt.strip()} Plan: {plan}" if plan else task.prompt
        video = self._sample(ctx, prompt, task, seed, counts)
        return MethodOutput(video=_to_uint8(video), steps=1, stop_reason="solver",
                            extra={"plan": plan, "prompt": prompt, "empty_plan": not plan})


_BETTER = re.compile(r"better\s*(?:video)?\s*[:\-]?\s*\**\s*(?:video\s*)?\(?([AB])\b", re.I)
_PROMPT = re.compile(r"(?:new\s+|rewritten\s+)?prompt\s*:\s*(.+)", re.I | re.S)


def parse_comparison(text: str) -> tuple[str | None, str | None]:
    """("A" | "B" | None, rewritten prompt | None) from a VideoTPO comparison reply."""
    m = _BETTER.search(text or "")
    choice = m.group(1).upper() if m else None
    p = _PROMPT.search(text or "")
    prompt = " ".join(p.group(1).split()).strip("\"'<>* ") if p else None
    return choice, (prompt or None)


class VideoTPO(Method):
    """VideoTPO-style prompt optimisation: compare two candidates, rewrite the prompt, iterate."""

    uses_teacher = True
    description = "the teacher compares two candidates and rewrites the prompt, iterating"

    def __init__(self, rounds: int = DEFAULT_TPO_ROUNDS) -> None:
        if rounds < 1:
            raise UserError(f"videotpo needs at least 1 round, got {rounds}")
        self.rounds = int(rounds)
        self.name = f"videotpo:{self.rounds}"

    def config(self):
        return {**super().config(), "rounds": self.rounds, "frames": TPO_FRAMES, "prompt_version": TPO_VERSION}

    def _run(self, ctx, task, seed, counts):
        prompt = task.prompt
        seeds = candidate_seeds(seed, 2)
        history: list[dict[str, Any]] = []
        best = None
        for r in range(1, self.rounds + 1):
            videos = [_to_uint8(self._sample(ctx, prompt, task, s, counts)) for s in seeds]
            frames = [v[i] for v in videos for i in uniform_frame_indices(len(v), TPO_FRAMES)]
            k = len(frames) // 2
            reply = ctx.teacher.generate_text(
                TPO_PROMPT.format(k=k, instruction=task.prompt.strip(), prompt=prompt.strip()), frames,
                max_new_tokens=200)
            counts["teacher"] += 1
            choice, new_prompt = parse_comparison(reply)
            chosen = 1 if choice == "B" else 0
            best = videos[chosen]
            history.append({"step": r, "prompt": prompt, "choice": choice, "chosen": "AB"[chosen],
                            "parsed_prompt": new_prompt is not None, "reply": " ".join(reply.split())[:500]})
            if new_prompt and r < self.rounds:
                prompt = new_prompt
        assert best is not None
        return MethodOutput(video=best, steps=self.rounds, stop_reason="rounds", history=history,
                            extra={"final_prompt": prompt})


# ---------------------------------------------------------------- registry
_TTO_ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "tto": ({}, "teacher test-time optimisation (paper defaults)"),
    "tto_generic": ({"queries": "generic"}, "generic (task-agnostic) queries"),
    "tto_lam1": ({"lam": 1.0}, "goal query only (lambda = 1)"),
    "tto_lam0": ({"lam": 0.0}, "process queries only (lambda = 0)"),
    "tto_last_step": ({"x0_mode": "last"}, "optimise the last denoising step"),
    "tto_all_steps": ({"x0_mode": "all"}, "backprop through all denoising steps"),
}

#: base name -> factory(argument after ":", "" when none) -> Method, or None when the argument
#: does not fit; add one with ``register_method``
_REGISTRY: dict[str, Callable[[str], Method | None]] = {}
#: every name the registry knows; <N>, <R>, <K>, <S> are integers
METHOD_PATTERNS: tuple[str, ...] = ()


def register_method(name: str, factory: Callable[[str], Method | None], pattern: str | None = None) -> None:
    """Make ``name`` (and ``name:ARG``) a method name: ``factory(arg)`` builds the Method, ``arg``
    being what follows the colon ("" without one), or returns None to refuse it (``no_argument``
    wraps a method that takes none). ``pattern`` is how help texts list it (default ``name``)."""
    global METHOD_PATTERNS
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is registered already")
    _REGISTRY[name] = factory
    METHOD_PATTERNS = (*METHOD_PATTERNS, pattern or name)


def no_argument(make: Callable[[], Method]) -> Callable[[str], Method | None]:
    """The factory of a method that takes no ``:ARG``."""
    return lambda arg: None if arg else make()


def _counted(name: str, what: str, default: int, make: Callable[[int], Method]) -> Callable[[str], Method]:
    """The factory of a method with an optional positive-integer ``:ARG`` (N candidates, R rounds)."""
    def factory(arg: str) -> Method:
        if arg and not arg.isdigit():
            raise UserError(f"method {name + ':' + arg!r}: {what} must be a positive integer, e.g. {name}:{default}")
        return make(int(arg) if arg else default)
    return factory


register_method("frozen", no_argument(Frozen))
register_method("best_of_n", _counted("best_of_n", "N", DEFAULT_N, BestOfN), "best_of_n[:N]")
register_method("oracle_pass_at_n", _counted("oracle_pass_at_n", "N", DEFAULT_N, OraclePassAtN),
                "oracle_pass_at_n[:N]")
for _name, (_changes, _desc) in _TTO_ABLATIONS.items():
    register_method(_name, no_argument(lambda n=_name, c=_changes, d=_desc: TTO(n, c, d)))
register_method("tto_oracle", no_argument(lambda: TTOOracle(
    "tto_oracle", {}, "TTO with the grid oracle's reward (MSE to the ground truth): the loop's upper bound")))
METHOD_PATTERNS = (*METHOD_PATTERNS, "tto_k<K>", "tto_fixed<S>")
register_method("solver", no_argument(Solver))
register_method("videotpo", _counted("videotpo", "R", DEFAULT_TPO_ROUNDS, VideoTPO), "videotpo[:R]")


def _tto_family(base: str) -> Method | None:
    """``tto_k<K>`` and ``tto_fixed<S>``: names that carry their number without a colon."""
    m = re.fullmatch(r"tto_k(\d+)", base)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise UserError(f"method {base!r}: K must be >= 1")
        return TTO(base, {"num_frames_shown": k}, f"K = {k} frames shown to the teacher")
    m = re.fullmatch(r"tto_fixed(\d+)", base)
    if m:
        return TTO(base, {"fixed_steps": int(m.group(1))}, f"fixed budget of {int(m.group(1))} updates")
    return None


def parse_method(name: str) -> Method:
    """The one place that turns a method name (``best_of_n:8``, ``tto_k12``, ...) into a Method."""
    raw = str(name).strip()
    base, _, arg = raw.partition(":")
    factory = _REGISTRY.get(base)
    method = factory(arg) if factory is not None else (_tto_family(base) if not arg else None)
    if method is None:
        raise UserError(f"unknown method {raw!r}; known: {', '.join(METHOD_PATTERNS)}")
    return method


def get_method(name: str) -> Method:
    return parse_method(name)


def parse_methods(spec: str | Sequence[str]) -> list[Method]:
    """A comma-separated list (or a sequence) of names -> Methods, duplicates refused."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n and n.strip()]
    if not names:
        raise UserError("no methods given; e.g. --methods frozen,best_of_n,tto")
    methods = [parse_method(n) for n in names]
    seen: dict[str, str] = {}
    for given, m in zip(names, methods):
        if m.name in seen:
            raise UserError(f"method {given!r} repeats {seen[m.name]!r}")
        seen[m.name] = given
    return methods


#: the methods and ablations of the paper's tables, for ``--methods all``
def all_methods(k_values: Sequence[int] = (12, 48), fixed_budgets: Sequence[int] = (0, 5, 10, 16, 20, 40)) -> list[str]:
    return ["frozen", f"best_of_n:{DEFAULT_N}", f"oracle_pass_at_n:{DEFAULT_N}", "tto", "solver",
            f"videotpo:{DEFAULT_TPO_ROUNDS}", "tto_generic", "tto_lam1", "tto_lam0", "tto_last_step", "tto_all_steps",
            *(f"tto_k{k}" for k in k_values), *(f"tto_fixed{s}" for s in fixed_budgets)]
