"""The test-time loop of the paper (Algorithm 1, docs/method.md).

    queries  <- teacher.propose_queries(c)                 (once per instance)
    cond     <- reasoner.prepare(c, seed)                  (text, first frame, fixed eps)
    phi      <- fresh LoRA
    repeat up to N times:
        z0_hat  <- reasoner.predict_x0(cond)               (first step from the same eps)
        frames  <- reasoner.preview(z0_hat, K frames)      (differentiable decode)
        logp    <- teacher.yes_logprob(frames, queries)    (one vision pass, all questions)
        L       <- lambda * -logp_goal + (1 - lambda)/M * sum_m -logp_proc_m
        stop if L <= tau
        phi     <- AdamW(phi, clip(grad L))
    L_final  <- L of the last phi, when the budget ran out after an update (no grad)
    video    <- reasoner.generate(cond)                    (adapted few-step model, full decode)

The final video is made with parameters the teacher has scored: when the loop ends by its
budget, the last update is scored once more without a gradient (``TTOResult.final``, counted
in the cost) before the video is generated. ``steps`` and ``updates`` stay the paper's
counts (a fixed budget of S is S updates; S = 0 is the frozen model).

Every setting is a field of ``TTOConfig`` with the paper's value as default; a model folder's
``tto.json`` may set its own (``tto_config``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import UserError
from .objective import weighted_loss
from .reasoner.base import X0_MODES, Reasoner, uniform_frame_indices
from .runtime import MemoryMeter
from .task import Queries, Task
from .teacher.base import Teacher

log = logging.getLogger("vlm_teacher")

STOP_TAU = "loss<=tau"
STOP_MAX = "max_steps"
STOP_BUDGET = "fixed_budget"


class OutOfMemory(UserError):
    """The device ran out of memory during an instance; the message says what to lower."""

    HINT = ("lower the frames shown to the teacher (--k), the video size or length, or turn on "
            "checkpointing (reasoner.grad_checkpointing, reasoner.vae_checkpointing)")


@dataclass
class TTOConfig:
    """Settings of the test-time optimisation; defaults are the paper's (docs/method.md)."""

    lam: float = 0.5              # weight of the goal query; (1 - lam) is shared by the process queries
    tau: float = 0.22             # stop when the loss is at most tau (~0.8 mean P(Yes))
    max_steps: int = 40           # N
    fixed_steps: int | None = None  # ablation: run exactly this many updates, ignore tau
    num_frames_shown: int = 24    # K frames sampled uniformly for the teacher
    lora_rank: int = 16
    lora_alpha: float | None = None  # None: alpha = rank
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lr: float = 5e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    x0_mode: str = "first"        # first | last | all (which denoising step is optimised)
    queries: str = "task"         # task (teacher-written) | generic (ablation)

    def __post_init__(self) -> None:
        """Every field checked here, the one home of the rules (``tto_config`` turns a failure into
        a UserError before any model loads)."""
        def number(name: str, low: float | None = None, *, above: bool = False, high: float | None = None,
                   integer: bool = False, optional: bool = False) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            kind = "an integer" if integer else "a number"
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                raise ValueError(f"{name} must be {kind}, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if low is not None and (value <= low if above else value < low):
                raise ValueError(f"{name} must be {'>' if above else '>='} {low:g}, got {value!r}")
            if high is not None and value > high:
                raise ValueError(f"{name} must be <= {high:g}, got {value!r}")

        number("lam", 0.0, high=1.0)
        number("tau")
        number("max_steps", 0, integer=True)
        number("fixed_steps", 0, integer=True, optional=True)
        number("num_frames_shown", 1, integer=True)
        number("lora_rank", 1, integer=True)
        number("lora_alpha", 0, above=True, optional=True)
        # an AdamW step moves a weight by about lr, and decoupled decay scales it by 1 - lr * weight_decay:
        # above 1 either leaves any sensible range (and overflows for huge values)
        number("lr", 0, above=True, high=1.0)
        number("weight_decay", 0, high=1.0)
        number("grad_clip", 0, above=True)
        if isinstance(self.lora_targets, str) or not all(isinstance(t, str) and t for t in self.lora_targets or ()):
            raise ValueError(f"lora_targets must be a non-empty list of module names, got {self.lora_targets!r}")
        self.lora_targets = tuple(self.lora_targets)
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")
        if self.x0_mode not in X0_MODES:
            raise ValueError(f"x0_mode must be one of {X0_MODES}, got {self.x0_mode!r}")
        if self.queries not in ("task", "generic"):
            raise ValueError(f"queries must be 'task' or 'generic', got {self.queries!r}")

    @property
    def budget(self) -> int:
        return self.max_steps if self.fixed_steps is None else self.fixed_steps


#: a model folder's own TTO settings (fields of TTOConfig), measured for that model
MODEL_TTO_FILE = "tto.json"


def tto_config(changes: dict[str, Any] | None = None, model_folder: str | Path | None = None) -> TTOConfig:
    """The one settings -> TTOConfig mapping (``vlm-teacher run`` and ``bench``): the paper's
    defaults, then what ``model_folder/tto.json`` sets (settings measured for that model: the
    embedded grid reasoner carries its own, real models none), then ``changes`` (the user's
    flags). A bad file or setting is a UserError naming it."""
    from .files import read_settings

    settings: dict[str, Any] = {}
    path = Path(model_folder) / MODEL_TTO_FILE if model_folder is not None else None
    if path is not None and path.is_file():
        settings = read_settings(path, (f.name for f in fields(TTOConfig)))
    if settings:
        try:
            TTOConfig(**settings)
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad optimisation setting in {path}: {exc}") from None
    try:
        return TTOConfig(**{**settings, **(changes or {})})
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad optimisation setting: {exc}") from None


@dataclass
class TTOResult:
    video: torch.Tensor                 # (F, 3, H, W) in [0, 1], the adapted reasoner's video
    queries: Queries
    history: list[dict[str, Any]]       # one entry per evaluated step
    stop_reason: str
    updates: int                        # gradient steps taken
    seconds: dict[str, float]           # queries / optimise / generate / total
    cost: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] | None = None  # loss and P(Yes) of the parameters after the last update

    @property
    def steps(self) -> int:
        """Optimisation steps evaluated (the paper's step count)."""
        return len(self.history)

    @property
    def final_loss(self) -> float | None:
        """The loss of the parameters the final video was made with."""
        if self.final is not None:
            return self.final["loss"]
        return self.history[-1]["loss"] if self.history else None

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "updates": self.updates,
            "stop_reason": self.stop_reason,
            "final_loss": self.final_loss,
            "final": self.final,
            "seconds": self.seconds,
            "cost": self.cost,
            "config": self.config,
        }


def _questions_needed(queries: Queries, lam: float) -> list[str]:
    # with lam == 1 the process questions carry no weight: do not pay for them
    return [queries.goal] if lam >= 1.0 else queries.all


def teach(
    reasoner: Reasoner,
    teacher: Teacher,
    task: Task,
    config: TTOConfig | None = None,
    *,
    seed: int = 0,
    queries: Queries | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TTOResult:
    """Run the teacher-guided test-time optimisation on one task and return the final video.

    The fresh LoRA stays attached to ``reasoner`` afterwards so the caller can save it
    (``reasoner.save_lora``); the next call replaces it. Device out-of-memory becomes
    ``OutOfMemory`` (a UserError with a hint), so a benchmark records the instance as
    failed and goes on.
    """
    try:
        with MemoryMeter(reasoner.device) as meter:
            result = _optimise(reasoner, teacher, task, config or TTOConfig(), seed=seed, queries=queries,
                               num_frames=num_frames, height=height, width=width, progress=progress,
                               on_step=on_step)
        result.cost["peak_mem_mb"] = meter.peak_mb
        return result
    except torch.OutOfMemoryError as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        first_line = (str(exc).strip().splitlines() or ["out of memory"])[0]
        raise OutOfMemory(f"out of memory ({first_line}); {OutOfMemory.HINT}") from None


def _optimise(reasoner: Reasoner, teacher: Teacher, task: Task, cfg: TTOConfig, *, seed: int,
              queries: Queries | None, num_frames: int | None, height: int | None, width: int | None, progress: bool,
              on_step: Callable[[dict[str, Any]], None] | None) -> TTOResult:
    from tqdm.auto import tqdm

    from .teacher.queries import generic_queries

    t_start = time.perf_counter()
    teacher_calls = 0
    if queries is None:
        if cfg.queries == "generic":
            queries = generic_queries(task.prompt)
        else:
            queries = teacher.propose_queries(task.prompt, task.first_frame)
            teacher_calls += 1
    t_queries = time.perf_counter()

    cond = reasoner.prepare(task.prompt, task.first_frame, seed, num_frames=num_frames, height=height, width=width)
    frame_idx = uniform_frame_indices(cond.num_frames, cfg.num_frames_shown)
    params = reasoner.add_lora(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets, seed=seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    questions = _questions_needed(queries, cfg.lam)

    def loss_of_current_lora() -> tuple[torch.Tensor, torch.Tensor]:
        latent = reasoner.predict_x0(cond, mode=cfg.x0_mode)
        logp = teacher.yes_logprob(reasoner.preview(latent, frame_idx), questions)
        return weighted_loss(logp, cfg.lam), logp

    history: list[dict[str, Any]] = []
    guard = GradNormGuard(optimizer, params, cfg.grad_clip, sync=reasoner.sync_grad_norm, task_id=task.id,
                          on_step=on_step)
    stop_reason = STOP_BUDGET if cfg.fixed_steps is not None else STOP_MAX
    bar = tqdm(total=cfg.budget, desc=f"teach {task.id}", unit="step", disable=not progress, leave=False)
    for step in range(1, cfg.budget + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, logp = loss_of_current_lora()
        teacher_calls += 1
        loss_value, p_yes = guard.to_host(loss, logp)  # the step's one host-device sync
        entry: dict[str, Any] = {"step": step, "loss": loss_value, "p_yes": p_yes}
        stop = cfg.fixed_steps is None and loss_value <= cfg.tau
        if stop:
            stop_reason = STOP_TAU
        elif not math.isfinite(loss_value):
            entry["skipped"] = "non-finite loss"
        else:
            guard.update(entry, loss)
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        guard.end_step(entry)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        bar.update(1)
        if stop:
            break
    bar.close()
    guard.flush()
    optimizer.zero_grad(set_to_none=True)

    final = None
    if history and "grad_norm" in history[-1] and not history[-1].get("skipped"):
        t0 = time.perf_counter()
        with torch.no_grad():  # the teacher scores the last update before the video is made from it
            loss, logp = loss_of_current_lora()
        teacher_calls += 1
        loss_value, p_yes = guard.to_host(loss, logp)
        final = {"loss": loss_value, "p_yes": p_yes, "seconds": time.perf_counter() - t0}
    t_opt = time.perf_counter()

    with torch.no_grad():
        video = reasoner.generate(cond)
    t_end = time.perf_counter()
    return TTOResult(
        video=video,
        queries=queries,
        history=history,
        stop_reason=stop_reason,
        updates=guard.updates,
        seconds={
            "queries": t_queries - t_start,
            "optimise": t_opt - t_queries,
            "generate": t_end - t_opt,
            "total": t_end - t_start,
        },
        cost={
            "reasoner_calls": count_reasoner_calls(cfg.x0_mode, cond.steps, len(history) + (final is not None)),
            "teacher_calls": teacher_calls,
        },
        config=asdict(cfg),
        final=final,
    )


class GradNormGuard:
    """The gradient-norm bookkeeping of the loop, kept out of its way.

    ``update`` runs backward, clips, and steps AdamW unless the gradient norm is not finite.
    With ``sync=False`` (the default, ``Reasoner.sync_grad_norm``) that decision is made on
    the device (``guarded_step``) and the norm reaches the host in the next step's one
    transfer (``to_host``), so a step's record is complete, and handed to ``on_step``,
    one step late; with ``sync=True`` the norm is read right after backward (a second
    sync per step). ``updates`` counts the steps whose gradient was finite."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], clip: float, *, sync: bool,
                 task_id: str, on_step: Callable[[dict[str, Any]], None] | None) -> None:
        self.optimizer, self.params, self.clip, self.sync = optimizer, params, clip, sync
        self.task_id, self.on_step = task_id, on_step
        self.updates = 0
        self._pending: tuple[dict[str, Any], torch.Tensor] | None = None  # (entry, grad norm on the device)
        self._norm_now: float | None = None

    def to_host(self, loss: torch.Tensor, logp: torch.Tensor) -> tuple[float, list[float]]:
        """(loss, P(Yes) per question) on the host, with the pending gradient norm in the same transfer."""
        parts = [loss.detach().float().reshape(1), logp.detach().float().reshape(-1)]
        if self._pending is not None:
            parts.append(self._pending[1].detach().float().reshape(1).to(loss.device))
        host = torch.cat(parts).cpu().tolist()
        if self._pending is not None:
            self._finish(self._pending[0], host[-1])
            self._pending = None
        return host[0], [math.exp(v) for v in host[1:1 + logp.numel()]]

    def update(self, entry: dict[str, Any], loss: torch.Tensor) -> None:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if self.sync:
            self._norm_now = float(norm)
            if math.isfinite(self._norm_now):
                self.optimizer.step()
        else:
            guarded_step(self.optimizer, self.params, norm)
            self._pending = (entry, norm)

    def end_step(self, entry: dict[str, Any]) -> None:
        """Hand ``entry`` out now unless its gradient norm is still on the device."""
        if self._pending is None or self._pending[0] is not entry:
            self._finish(entry, self._norm_now)
        self._norm_now = None

    def flush(self) -> None:
        """After the last step: read the pending norm (one sync) and hand its entry out."""
        if self._pending is not None:
            self._finish(self._pending[0], float(self._pending[1]))
            self._pending = None

    def _finish(self, entry: dict[str, Any], grad_norm: float | None) -> None:
        if grad_norm is not None:
            entry["grad_norm"] = grad_norm
            if math.isfinite(grad_norm):
                self.updates += 1
            else:
                entry["skipped"] = "non-finite gradient"
        if entry.get("skipped"):
            log.warning("%s step %d: %s, update skipped", self.task_id, entry["step"], entry["skipped"])
        if self.on_step is not None:
            self.on_step(entry)


def guarded_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grad_norm: torch.Tensor) -> None:
    """``optimizer.step()`` that leaves the parameters and the optimiser's moments
    untouched when ``grad_norm`` is not finite, decided on the device (no host sync).

    The gradients are zeroed where the norm is not finite (so no NaN enters the
    moments), the step runs, then parameters and state tensors are put back with
    ``torch.where``. Costs a copy of the LoRA and its two moments per step (a few MB
    to a few hundred MB, microseconds on a GPU)."""
    ok = torch.isfinite(grad_norm.detach())
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.grad.copy_(torch.where(ok, p.grad, torch.zeros((), dtype=p.grad.dtype, device=p.grad.device)))
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for p in params:
            saved.append((p, p.detach().clone()))
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.is_floating_point() and value.shape == p.shape:
                    saved.append((value, value.clone()))
        optimizer.step()
        for tensor, before in saved:
            tensor.copy_(torch.where(ok.to(tensor.device), tensor, before))


def count_reasoner_calls(x0_mode: str, sampler_steps: int, evaluated_steps: int) -> int:
    """Transformer forward passes of a TTO run (the one place that counts them): each evaluated
    step's ``predict_x0`` (one call at ``first``, the whole sampler otherwise) plus the final
    few-step sample; ``sampler_steps`` is the prepared sampler's (``Conditioning.steps``)."""
    return evaluated_steps * x0_calls(x0_mode, sampler_steps) + sampler_steps


def x0_calls(x0_mode: str, sampler_steps: int) -> int:
    """Transformer forward passes of one ``predict_x0``: one at ``first``, the whole sampler otherwise."""
    return 1 if x0_mode == "first" else sampler_steps
