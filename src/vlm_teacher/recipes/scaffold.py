"""What the recipes share: the JSONL log, safetensors files written atomically, the
learning-rate schedule, the time-budget planner, the command record, the run's config record and
its resume check, the export of a finished folder and the settings picker."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ..errors import UserError
from ..files import atomic_path


class JsonlLog:
    """Append-only JSONL log of losses and events (one flush per line, survives a kill)."""

    def __init__(self, path: Path, *, stamp: bool = True) -> None:
        self.path = path
        self.stamp = stamp
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: Any) -> None:
        if self.stamp:
            record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def keep_until(self, step: int, stage: str | None = None) -> None:
        """Drop the records of steps after ``step`` (written after the checkpoint a run resumes from);
        with ``stage``, only that stage's (earlier stages count their steps from 1 again)."""
        if self.path.is_file():
            keep = [r for r in self.records() if r.get("step", 0) <= step or stage not in (None, r.get("stage"))]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written through the atomic writer (a kill leaves the old file or the new one)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def warmup_cosine(step: int, progress: float, base: float, warmup: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``base`` down to ``floor * base``
    as ``progress`` (the fraction of the schedule done after warm-up) goes from 0 to 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, max(0.0, progress))
    return base * (floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


class StepPlan:
    """How many steps of a time-limited stage fit its budget, from its measured speed.

    After ``calibration`` steps ``update`` fixes ``planned = min(steps, what fits in budget_s)``
    and re-checks it every ``replan_every`` steps against the average speed so far; a
    stage that is done in time keeps ``steps``. ``planned`` is None until calibrated."""

    def __init__(self, steps: int, budget_s: float, planned: int | None, *, calibration: int,
                 replan_every: int) -> None:
        self.steps, self.budget_s, self.planned = steps, budget_s, planned
        self.calibration, self.replan_every = calibration, replan_every

    @property
    def total(self) -> int:
        return self.planned or self.steps

    def update(self, step: int, elapsed_s: float) -> bool:
        """Re-plan when it is time to; True when the plan was (re)made."""
        due = (self.planned is None and step >= min(self.calibration, self.steps)) or \
            (self.planned is not None and self.planned < self.steps and step % self.replan_every == 0)
        if due:
            self.planned = min(self.steps, max(step, int(self.budget_s * step / elapsed_s)))
        return due

    def cut_by_time(self, step: int) -> bool:
        return step >= self.total and self.planned is not None and self.planned < self.steps

    def expected_total(self, step: int, elapsed_s: float) -> int:
        """The step count to show on a progress bar: the plan, or before it is made the steps that
        the speed so far fits in the budget (so the bar's ETA follows the budget, not the step cap)."""
        if self.planned is not None or step == 0 or elapsed_s <= 0:
            return self.total
        return min(self.steps, max(step, int(self.budget_s * step / elapsed_s)))


class WorkLock:
    """One trainer per work folder: an exclusive ``flock`` on ``<folder>/.lock``, held while the
    recipe runs and released by the kernel when the process ends (a kill leaves no stale lock)."""

    def __init__(self, folder: Path, what: str) -> None:
        self.path = Path(folder) / ".lock"
        self.what = what
        self._fh = None

    def __enter__(self) -> "WorkLock":
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UserError(f"{self.path.parent} is in use by another {self.what} ({holder}); wait for it to "
                            "finish (or stop it), or choose another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def command_record(words: str, args: argparse.Namespace, add_arguments: Callable[[argparse.ArgumentParser], None],
                   required: dict[str, str], leave_out: Iterable[str] = ()) -> str:
    """The command line that reproduces a run: ``words``, the required arguments, then every
    argument that differs from its default (``leave_out``: run-control flags such as --resume)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    skip = {*required, *leave_out, "help"}
    parts = [words, *(x for k in required for x in (f"--{k.replace('_', '-')}", str(getattr(args, k))))]
    for action in parser._actions:
        if action.dest in skip or not action.option_strings:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            parts.append(flag)
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def config_record(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as a run's ``config.json`` stores them (paths as text), so a resume compares like with like."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def changed_settings(saved: dict[str, Any], current: dict[str, Any], keys: Iterable[str],
                     added_later: dict[str, Any] | None = None) -> list[str]:
    """The model-shaping ``keys`` whose value differs between a saved run's config and this one.
    ``added_later``: options that did not exist when older runs were saved, with the value such a run used."""
    added_later = added_later or {}
    return [k for k in keys if saved.get(k, added_later.get(k)) != current.get(k)]


def export_folder(folder: Path, export: Path) -> None:
    """Replace ``export`` with a copy of the finished model ``folder`` (e.g. into src/vlm_teacher/embedded)."""
    if export.exists():
        shutil.rmtree(export)
    shutil.copytree(folder, export)
    print(f"exported the model to {export}")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """An optimiser's state as safetensors-ready tensors (``optim.<param>.<key>``) and its param groups."""
    sd = optimizer.state_dict()
    tensors = {f"optim.{idx}.{key}": (value if torch.is_tensor(value) else torch.tensor(value)).cpu()
               for idx, st in sd["state"].items() for key, value in st.items()}
    return tensors, sd["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    """The inverse of ``optimizer_tensors`` (other keys in ``tensors`` are ignored)."""
    per: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per, "param_groups": groups})


def apply_update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params, clip: float = 1.0) -> float:
    """One optimiser step on ``loss`` with the gradient norm clipped to ``clip``; returns that norm."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return float(norm)


class ModuleCheckpoint:
    """One safetensors file with a module's weights, its optimiser's state and the run's state
    (JSON in the file's metadata): written atomically, so a kill leaves the old checkpoint or the
    new one, never weights of one step beside the state of another."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any]) -> None:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        groups = None
        if optimizer is not None:
            optim, groups = optimizer_tensors(optimizer)
            tensors.update(optim)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(tensors, self.path, metadata={"state": json.dumps({**state, "optimizer_param_groups": groups})})

    def state(self) -> dict[str, Any]:
        """The run state saved with the weights."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as fh:
            return json.loads((fh.metadata() or {})["state"])

    def load(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        """Put the weights (and the optimiser state) in place; return the run state."""
        from safetensors.torch import load_file

        state = self.state()
        tensors = load_file(str(self.path))
        module.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        groups = state.pop("optimizer_param_groups", None)
        if optimizer is not None and groups:
            load_optimizer(optimizer, tensors, groups)
        return state


def pick(cls, args: argparse.Namespace, prefix: str = "", **given):
    """The settings dataclass ``cls`` filled from the options ``prefix + field`` of a recipe's
    parsed arguments (called by the recipe's ``run`` only: its stages take the settings, never
    the Namespace); ``given`` fields as passed."""
    return cls(**given, **{f.name: getattr(args, prefix + f.name) for f in fields(cls) if f.name not in given})
