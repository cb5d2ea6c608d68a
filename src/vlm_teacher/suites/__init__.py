"""Benchmark suites behind one small interface, chosen by a spec string.

    suite = load_suite("grid:test")                 # the built-in grid suite, scored by its verifier
    suite = load_suite("vbvr:/data/VBVR-Bench")     # writes the official kit's submission layout
    suite = load_suite("ruler:/data/RULER-Bench", judge=JudgeConfig(base_url=..., model=...))

A suite lists task ids, builds a task by id (lazily: first frames are decoded
only when the instance runs) and scores one video:

* ``grid:<split>`` - the exact pixel verifier (score 0-1, pass/fail); ``grid:<folder>`` the same on
  tasks ``vlm-teacher grid make`` wrote there.
* ``vbvr:<root>`` - no local scorer exists (the official rules are not
  public here): the video is written where the official evaluation kit looks
  for it and the score stays empty until its results JSON is imported
  (``Suite.import_scores``, ``bench.import_vbvr_results``).
* ``ruler:<root>`` - the instance's checklist is judged through an
  OpenAI-compatible chat endpoint; Good/Medium/Poor = 2/1/0 per dimension,
  scaled to 0-100 (``suites.ruler.instance_score``). A failed judgement leaves
  the score empty (``Suite.rescore`` re-judges it on the next run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import UserError
from ..task import Task

SUITE_SPECS = ("grid:<train|test|ood|ood8>", "grid:PATH (tasks from `grid make`)", "vbvr:<dataset root>",
               "ruler:<dataset root>")


@dataclass
class Scored:
    """A suite's verdict on one video. ``score`` None means not scored (yet)."""

    score: float | None
    passed: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Suite:
    """Interface (and shared bits) of a suite. ``name`` is the results store's suite column."""

    name = ""
    spec = ""

    def ids(self) -> list[str]:
        raise NotImplementedError

    def task(self, task_id: str) -> Task:
        raise NotImplementedError

    def group(self, task: Task) -> str:
        """The report column this task belongs to (suite, or suite/split)."""
        return self.name

    def verifier(self):
        """A ground-truth scorer ``(task, uint8 video) -> score`` for the oracle, or None."""
        return None

    def score(self, task: Task, video: np.ndarray, fps: int, out_root: Path, run_name: str) -> Scored:
        raise NotImplementedError

    # hooks the benchmark calls; the defaults do nothing
    def rescore(self, store: Any, out_root: Path, keys: Iterable[Any]) -> int:
        """Before a run: score again the stored rows (of ``keys``) whose scoring failed, from their
        videos on disk; returns how many rows got a score. The default has nothing to redo."""
        return 0

    def import_scores(self, store: Any, results: Path) -> int:
        """Fill scores that an external evaluation wrote to ``results``; returns rows updated."""
        raise UserError(f"suite {self.name} has no external scores to import")


# ------------------------------------------------------------------- grid
class GridSuite(Suite):
    """The built-in grid suite; families interleaved so ``--limit`` keeps them balanced."""

    def __init__(self, split: str, n: int | None = None) -> None:
        from .grid import SPLITS, grid_tasks

        if split not in SPLITS:
            raise UserError(f"unknown grid split {split!r}; use grid:{' | grid:'.join(SPLITS)}, or grid:PATH for "
                            "a folder written by `vlm-teacher grid make`")
        self.split = split
        self.name = self.spec = f"grid:{split}"
        self._tasks = _interleaved(grid_tasks(split, n=n))

    def ids(self) -> list[str]:
        return list(self._tasks)

    def task(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id].to_task()
        except KeyError:
            raise UserError(f"grid task {task_id!r} is not in {self.name}") from None

    def verifier(self):
        from .grid import verify

        return lambda task, video: float(verify(task, video).score)

    def score(self, task, video, fps, out_root, run_name):
        from .grid import verify

        v = verify(task, video)
        return Scored(float(v.score), bool(v.passed), {"reason": v.reason, "first_failure": v.details["first_failure"]})


class GridFolderSuite(GridSuite):
    """Grid tasks read from disk (``grid:PATH``): what ``vlm-teacher grid make --out PATH`` wrote (every
    split folder under PATH), or one split folder of it (``PATH/<split>``), any ``--seed``. Each task
    folder is checked on loading (``suites.grid.load_task``). The store's suite column is
    ``grid:<absolute path>``; rows are keyed by task id, which ``grid make`` derives from family,
    split, index and seed, the values that determine a task."""

    def __init__(self, folder: str | os.PathLike) -> None:
        from .grid import SPLITS, load_split

        root = Path(folder).expanduser()
        if not root.is_dir():
            raise UserError(f"unknown grid split {str(folder)!r} and no such folder: use "
                            f"grid:{' | grid:'.join(SPLITS)}, or grid:PATH for a folder written by "
                            "`vlm-teacher grid make --out PATH`")
        if (root / "metadata.json").is_file():
            raise UserError(f"{root} is one task folder; give the folder that holds the task folders "
                            f"({root.parent})")
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subdirs and all((p / "metadata.json").is_file() for p in subdirs):
            tasks = load_split(root.parent, root.name)
        else:
            splits = [p for p in subdirs if any((q / "metadata.json").is_file() for q in p.iterdir() if q.is_dir())]
            if not splits:
                raise UserError(f"{root} holds no grid task folders (each with a metadata.json); write them "
                                f"with `vlm-teacher grid make --out {root}`")
            tasks = [t for p in splits for t in load_split(root, p.name)]
        self.split = "+".join(sorted({t.split for t in tasks}))
        self.spec = f"grid:{folder}"
        self.name = f"grid:{root.resolve()}"
        ids = [t.id for t in tasks]
        if len(set(ids)) != len(ids):
            raise UserError(f"{root}: two task folders hold the same task id; keep one of each")
        self._tasks = _interleaved(tasks)

    def group(self, task: Task) -> str:
        return f"grid:{Path(self.name[len('grid:'):]).name}"


def _interleaved(tasks) -> dict[str, Any]:
    """id -> task with the families interleaved (task i of every family, then task i + 1, ...)."""
    by_family: dict[str, list] = {}
    for t in tasks:
        by_family.setdefault(t.family, []).append(t)
    ordered = []
    for i in range(max((len(v) for v in by_family.values()), default=0)):
        ordered += [v[i] for v in by_family.values() if i < len(v)]
    return {t.id: t for t in ordered}


# ------------------------------------------------------------------- VBVR
class VbvrSuite(Suite):
    name = "vbvr"

    def __init__(self, root: str | os.PathLike) -> None:
        from .vbvr import load_vbvr

        self.root = Path(root)
        self.spec = f"vbvr:{root}"
        self.data = load_vbvr(root)

    def ids(self) -> list[str]:
        return self.data.ids()

    def task(self, task_id: str) -> Task:
        return self.data.task(task_id)

    def group(self, task: Task) -> str:
        split = task.metadata.get("split")
        return f"vbvr:{split}" if split else "vbvr"

    def import_scores(self, store, results):
        from .vbvr import import_vbvr_scores

        return import_vbvr_scores(store, results)

    def score(self, task, video, fps, out_root, run_name):
        from .vbvr import write_vbvr_submission

        path = write_vbvr_submission(Path(out_root) / "vbvr_submission", run_name, task, video, fps)
        return Scored(None, None, {"submission": str(path), "vbvr_model": run_name})


# ------------------------------------------------------------------ RULER
class RulerSuite(Suite):
    name = "ruler"

    def __init__(self, root: str | os.PathLike, judge: Any = None, *, drop_game: bool = True) -> None:
        from .judge import JudgeConfig, RulerJudge
        from .ruler import load_ruler

        self.root = Path(root)
        self.spec = f"ruler:{root}"
        self.data = load_ruler(root, drop_game=drop_game)
        if judge is None or not isinstance(judge, RulerJudge):
            judge = RulerJudge(judge if judge is not None else JudgeConfig())
        self.judge = judge

    def ids(self) -> list[str]:
        return self.data.ids()

    def task(self, task_id: str) -> Task:
        return self.data.task(task_id)

    def group(self, task: Task) -> str:
        return "ruler"

    def score(self, task, video, fps, out_root, run_name):
        return self.judge_video(task, video, fps, out_root, run_name, write=True)

    def rescore(self, store, out_root, keys) -> int:
        """Rows whose judgement failed (score empty, video on disk): judge them again."""
        from ..files import safe_name
        from ..store import Key
        from ..video import read_video
        from .judge import video_fps

        wanted = set(keys)
        n = 0
        for row in store.rows(suite=self.name, status="done"):
            if Key.of(row) not in wanted or row.get("score") is not None or not row.get("video_path"):
                continue
            video_file = Path(out_root) / row["video_path"]
            if not video_file.is_file():
                continue
            task = self.task(row["task_id"])
            run_name = (row.get("extra") or {}).get("run_name") or safe_name(row["method"])
            scored = self.judge_video(task, read_video(video_file), video_fps(video_file), out_root, run_name,
                                      write=False)
            if scored.score is None:
                continue
            extra = dict(row.get("extra") or {})
            extra["score_details"] = {**(extra.get("score_details") or {}), **scored.details}
            extra["score_details"].pop("judge_error", None)
            new = {k: v for k, v in row.items() if k not in ("attempts", "created_at")}
            new.update(score=scored.score, extra=extra)
            store.put(new)
            n += 1
        return n

    def judge_video(self, task, video, fps, out_root, run_name, *, write: bool) -> Scored:
        """Write the submission video (unless it is there already) and judge it."""
        from .judge import save_judgement
        from .ruler import Judged, instance_score, parse_checklist, write_ruler_submission

        details: dict[str, Any] = {"category": task.metadata.get("category")}
        if write:
            details["submission"] = str(write_ruler_submission(Path(out_root) / "ruler_submission", run_name, task,
                                                               video, fps))
        result = self.judge.judge(task, video, fps)
        details["judge_model"] = self.judge.config.model
        if not result.ok or result.labels is None:
            details["judge_error"] = result.error or "judge failed"
            return Scored(None, None, details)
        checklist = parse_checklist(task.metadata.get("checklist"), f"task {task.id} checklist")
        judged = Judged(str(task.metadata.get("category")), tuple(d for d, _ in checklist), tuple(result.labels))
        details["labels"] = list(result.labels)
        details["judgement"] = str(save_judgement(Path(out_root) / "ruler_eval", run_name, task, result,
                                                  self.judge.config.model))
        return Scored(instance_score(judged), None, details)


# ------------------------------------------------------------------- spec
def load_suite(spec: str, *, judge: Any = None, drop_game: bool = True) -> Suite:
    """``grid:test`` | ``grid:ood`` | ``grid:train`` | ``vbvr:/path`` | ``ruler:/path``.

    ``judge`` (a ``JudgeConfig`` or ``RulerJudge``) is used by RULER only.
    """
    text = str(spec).strip()
    kind, sep, arg = text.partition(":")
    kind = kind.lower()
    if kind == "grid":
        from .grid import SPLITS

        return GridSuite(arg or "test") if (arg or "test") in SPLITS else GridFolderSuite(arg)
    if kind in ("vbvr", "ruler"):
        if not sep or not arg.strip():
            raise UserError(f"suite {text!r} needs the dataset folder: {kind}:/path/to/dataset")
        root = Path(arg).expanduser()
        if kind == "vbvr":
            return VbvrSuite(root)
        return RulerSuite(root, judge, drop_game=drop_game)
    raise UserError(f"unknown suite {text!r}; use one of {', '.join(SUITE_SPECS)}")
