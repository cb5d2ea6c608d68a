"""The test-time loop of the paper (Algorithm 1).

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
    video    <- reasoner.generate(cond)                    (adapted few-step model, full decode)

Every setting is a field of ``TTOConfig`` with the paper's value as default.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import UserError
from .reasoner.base import X0_MODES, Reasoner, uniform_frame_indices
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
    """Settings of the test-time optimisation; defaults are the paper's (METHOD.md)."""

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
    # Performance: False keeps ONE host-device sync per step (the loss, for the stop rule):
    # the gradient norm is read at the next step's sync and a non-finite gradient is
    # neutralised on the device (LoRA and AdamW moments restored; only AdamW's step counter
    # advances). True reads the norm right after backward and skips on the host (two syncs).
    sync_grad_norm: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        if self.max_steps < 0 or (self.fixed_steps is not None and self.fixed_steps < 0):
            raise ValueError("step budgets must be >= 0")
        if self.num_frames_shown < 1:
            raise ValueError("num_frames_shown (K) must be >= 1")
        if self.x0_mode not in X0_MODES:
            raise ValueError(f"x0_mode must be one of {X0_MODES}, got {self.x0_mode!r}")
        if self.queries not in ("task", "generic"):
            raise ValueError(f"queries must be 'task' or 'generic', got {self.queries!r}")
        self.lora_targets = tuple(self.lora_targets)

    @property
    def budget(self) -> int:
        return self.max_steps if self.fixed_steps is None else self.fixed_steps


#: a model folder's own TTO settings (fields of TTOConfig), measured for that model
MODEL_TTO_FILE = "tto.json"


def model_tto_config(model_folder: str | Path | None, overrides: dict[str, Any] | None = None) -> TTOConfig:
    """The paper's defaults, then what ``model_folder/tto.json`` sets (settings measured for that
    model: the embedded grid reasoner carries its own, real models carry none), then ``overrides``
    (the user's flags). Raises UserError naming a bad file or setting."""
    from .files import read_settings

    settings: dict[str, Any] = {}
    path = Path(model_folder) / MODEL_TTO_FILE if model_folder is not None else None
    if path is not None and path.is_file():
        settings = read_settings(path, (f.name for f in fields(TTOConfig)))
    try:
        return TTOConfig(**{**settings, **(overrides or {})})
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad optimisation setting{f' (with {path})' if settings else ''}: {exc}") from None


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

    @property
    def steps(self) -> int:
        """Optimisation steps evaluated (the paper's step count)."""
        return len(self.history)

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "updates": self.updates,
            "stop_reason": self.stop_reason,
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "seconds": self.seconds,
            "cost": self.cost,
            "config": self.config,
        }


def weighted_loss(logp_yes: torch.Tensor, lam: float) -> torch.Tensor:
    """L = lam * L_goal + (1 - lam)/M * sum_m L_proc_m, with L_q = -log P(Yes | q).
    ``logp_yes`` is ordered goal first (``Queries.all``)."""
    nll = -logp_yes
    if nll.numel() == 1:
        return nll[0]
    return lam * nll[0] + (1.0 - lam) * nll[1:].mean()


def _questions_needed(queries: Queries, lam: float) -> list[str]:
    # with lam == 1 the process questions carry no weight: do not pay for them
    return [queries.goal] if lam >= 1.0 else queries.all


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS; process-wide high-water mark
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


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
        return _optimise(reasoner, teacher, task, config or TTOConfig(), seed=seed, queries=queries,
                         num_frames=num_frames, height=height, width=width, progress=progress, on_step=on_step)
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

    device = getattr(reasoner, "device", torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
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

    history: list[dict[str, Any]] = []
    updates = 0
    reasoner_calls = 0
    pending: tuple[dict[str, Any], torch.Tensor] | None = None  # (entry, grad norm on the device)

    def finish(entry: dict[str, Any], grad_norm: float | None) -> None:
        """Complete a step's record once its gradient norm is on the host, then hand it out."""
        nonlocal updates
        if grad_norm is not None:
            entry["grad_norm"] = grad_norm
            if math.isfinite(grad_norm):
                updates += 1
            else:
                entry["skipped"] = "non-finite gradient"
        if entry.get("skipped"):
            log.warning("%s step %d: %s, update skipped", task.id, entry["step"], entry["skipped"])
        if on_step is not None:
            on_step(entry)

    stop_reason = STOP_BUDGET if cfg.fixed_steps is not None else STOP_MAX
    bar = tqdm(total=cfg.budget, desc=f"teach {task.id}", unit="step", disable=not progress, leave=False)
    for step in range(1, cfg.budget + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        latent = reasoner.predict_x0(cond, mode=cfg.x0_mode)
        reasoner_calls += 1
        frames = reasoner.preview(latent, frame_idx)
        logp = teacher.yes_logprob(frames, questions)
        teacher_calls += 1
        loss = weighted_loss(logp, cfg.lam)
        # The stop rule needs the loss on the host: the ONE host-device sync of the step. The
        # P(Yes) values and the previous step's gradient norm come in the same transfer.
        parts = [loss.detach().float().reshape(1), logp.detach().float().reshape(-1)]
        if pending is not None:
            parts.append(pending[1].detach().float().reshape(1).to(loss.device))
        host = torch.cat(parts).cpu().tolist()
        loss_value = host[0]
        if pending is not None:
            finish(pending[0], host[-1])
            pending = None
        entry: dict[str, Any] = {
            "step": step,
            "loss": loss_value,
            "p_yes": [math.exp(v) for v in host[1:1 + logp.numel()]],
        }
        stop = cfg.fixed_steps is None and loss_value <= cfg.tau
        grad_norm: float | None = None
        if stop:
            stop_reason = STOP_TAU
        elif not math.isfinite(loss_value):
            entry["skipped"] = "non-finite loss"
        else:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if cfg.sync_grad_norm:
                grad_norm = float(norm)
                if math.isfinite(grad_norm):
                    optimizer.step()
            else:
                guarded_step(optimizer, params, norm)
                pending = (entry, norm)
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        if pending is None or pending[0] is not entry:
            finish(entry, grad_norm)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        bar.update(1)
        if stop:
            break
    bar.close()
    if pending is not None:
        finish(pending[0], float(pending[1]))
    optimizer.zero_grad(set_to_none=True)
    t_opt = time.perf_counter()

    with torch.no_grad():
        video = reasoner.generate(cond)
    t_end = time.perf_counter()
    sampler_steps = int(getattr(reasoner, "steps", 4))
    return TTOResult(
        video=video,
        queries=queries,
        history=history,
        stop_reason=stop_reason,
        updates=updates,
        seconds={
            "queries": t_queries - t_start,
            "optimise": t_opt - t_queries,
            "generate": t_end - t_opt,
            "total": t_end - t_start,
        },
        cost={
            "reasoner_calls": reasoner_calls * _calls_per_x0(cfg.x0_mode, sampler_steps) + sampler_steps,
            "teacher_calls": teacher_calls,
            "peak_mem_mb": peak_memory_mb(device),
        },
        config=asdict(cfg),
    )


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


def _calls_per_x0(mode: str, sampler_steps: int) -> int:
    """Transformer forward passes behind one ``predict_x0``."""
    return 1 if mode == "first" else sampler_steps
