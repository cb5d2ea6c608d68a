"""RULER-Bench (arXiv 2512.02622) from a local copy: tasks, submission layout, scores.

Input: ``data.jsonl`` at the dataset root (one record per line; media paths
relative to the root). By default the 10 ``game`` tasks are dropped, as
VLM-as-Teacher does (30 tasks remain). An instance with ``input_image_path``
is image-to-video (the image is the first frame), otherwise text-to-video.

Output: ``<videos_root>/<model>/<task_name>/<index>.mp4`` (index unpadded).
The judge (``suites/judge.py``) rates each video against the instance's
checklist; :func:`score_ruler` turns the labels into the paper's table
(BENCHMARK_FORMATS.md 2.4): Good/Medium/Poor = 2/1/0, per-instance means per
dimension (0 for a dimension without items), category x dimension = mean x 50,
Instruction Following dropped for ``vision rule``, overall per dimension = the
unweighted mean over categories, Overall Avg = mean of the 4 overall scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..task import Task
from ..video import write_video
from ._local import check_inside, read_image_file, safe_component, safe_path

SUITE = "ruler"
DATA_NAME = "data.jsonl"

DIMENSIONS = ("Instruction Following", "Visual Consistency", "Visual Fidelity", "Rule Coherence")
DIM_ABBR = {"Instruction Following": "IF", "Visual Consistency": "VC", "Visual Fidelity": "VF", "Rule Coherence": "RC"}
LABEL_VALUES = {"Good": 2, "Medium": 1, "Poor": 0}
VISION_RULE = "vision rule"

TASKS_BY_CATEGORY: dict[str, tuple[str, ...]] = {
    "science": ("chemistry", "physics", "biology", "earth", "math", "medicine", "life"),
    "game": ("chess", "puzzle", "gomoku", "sudoku", "maze", "minesweeper", "number_sliding_puzzle", "sticks",
             "xiangqi", "Go"),
    "semantic": ("idioms", "metaphors", "definition"),
    "hypothetical": ("subjective_change", "objective_change"),
    "humanity": ("transportation", "sport", "social", "safety", "festival", "dress", "food", "emotion"),
    VISION_RULE: ("anomaly", "color", "count", "direction", "position", "shape", "size", "style", "view", "motion"),
}
CATEGORIES = tuple(TASKS_BY_CATEGORY)
GAME_TASKS = frozenset(TASKS_BY_CATEGORY["game"])

_OPTIONAL_PATHS = ("input_image_path", "input_video_path", "gt_image_path")


@dataclass(frozen=True)
class RulerEntry:
    """One validated instance (media not loaded)."""

    task_name: str
    index: int
    category: str
    prompt: str
    checklist: tuple[tuple[str, str], ...]  # (dimension, question), in order
    input_image: Path | None = None
    input_video: Path | None = None
    gt_image: Path | None = None
    implicit_explanation: str = ""
    record: Mapping[str, Any] = field(default_factory=dict)  # the line as read, for the saved judgement
    line: int = 0

    @property
    def id(self) -> str:
        return f"{self.task_name}/{self.index}"


@dataclass
class RulerSuite:
    """The parsed benchmark: ``len()``, ``ids()``, ``task(id)``, iteration yields Tasks."""

    root: Path
    entries: list[RulerEntry]
    _by_id: dict[str, RulerEntry] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {e.id: e for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def entry(self, task_id: str) -> RulerEntry:
        try:
            return self._by_id[task_id]
        except KeyError:
            raise UserError(f"RULER instance {task_id!r} is not in {self.root} (ids are <task_name>/<index>)") from None

    def task(self, task_id: str) -> Task:
        return entry_task(self.entry(task_id))

    def __iter__(self) -> Iterator[Task]:
        for e in self.entries:
            yield entry_task(e)


def entry_task(e: RulerEntry) -> Task:
    """The Task of an entry; I2V entries get their input image as first frame."""
    frame = read_image_file(e.input_image, f"{DATA_NAME} line {e.line}, field input_image_path") if e.input_image else None
    return Task(id=e.id, prompt=e.prompt, first_frame=frame, metadata={
        "suite": SUITE,
        "task_name": e.task_name,
        "index": e.index,
        "category": e.category,
        "mode": "i2v" if e.input_image else "t2v",
        "checklist": [[d, q] for d, q in e.checklist],
        "implicit_explanation": e.implicit_explanation,
        "input_image_path": str(e.input_image) if e.input_image else None,
        "input_video_path": str(e.input_video) if e.input_video else None,
        "gt_image_path": str(e.gt_image) if e.gt_image else None,
        "record": dict(e.record),
    })


def load_ruler(root: str | os.PathLike, *, drop_game: bool = True, tasks: Iterable[str] | None = None,
               categories: Iterable[str] | None = None) -> RulerSuite:
    """Parse ``<root>/data.jsonl``; ``drop_game`` (default, as in the paper) leaves 30 tasks.

    ``tasks`` / ``categories`` keep only those task names / categories.
    """
    root = Path(root)
    path = root / DATA_NAME
    if not path.is_file():
        raise UserError(f"no {DATA_NAME} in {root}; download RULER-Bench there (the folder holding {DATA_NAME} and its media)")
    path = check_inside(root, path, DATA_NAME)
    entries: list[RulerEntry] = []
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc}); re-download it") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        entry = parse_record(root, line, n)
        if entry.id in seen:
            raise UserError(f"{DATA_NAME} line {n}: duplicate instance {entry.id} (also line {seen[entry.id]})")
        seen[entry.id] = n
        entries.append(entry)
    if not entries:
        raise UserError(f"{path} holds no records")
    if drop_game:
        entries = [e for e in entries if e.category != "game" and e.task_name not in GAME_TASKS]
    if categories is not None:
        cats = set(categories)
        bad = sorted(cats - set(CATEGORIES))
        if bad:
            raise UserError(f"unknown RULER categories {bad}; use {', '.join(CATEGORIES)}")
        entries = [e for e in entries if e.category in cats]
    if tasks is not None:
        wanted = set(tasks)
        unknown = sorted(wanted - {e.task_name for e in entries})
        if unknown:
            raise UserError(f"RULER tasks not found in {path} (after filters): {', '.join(unknown)}")
        entries = [e for e in entries if e.task_name in wanted]
    return RulerSuite(root=root, entries=entries)


def parse_record(root: Path, line: str, n: int) -> RulerEntry:
    """One ``data.jsonl`` line -> entry; every problem is a UserError naming the line and field."""
    where = f"{DATA_NAME} line {n}"
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    task_name = safe_component(rec.get("task_name"), f"{where}, field task_name")
    index = rec.get("index")
    if isinstance(index, str) and index.strip().isdigit():
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise UserError(f"{where}, field index: expected a non-negative integer, got {rec.get('index')!r}")
    category = rec.get("category")
    if category not in CATEGORIES:
        raise UserError(f"{where}, field category: {category!r} is not one of {', '.join(CATEGORIES)}")
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}, field prompt: expected a non-empty string")
    checklist = parse_checklist(rec.get("checklist"), f"{where}, field checklist")
    paths: dict[str, Path | None] = {}
    for name in _OPTIONAL_PATHS:
        value = rec.get(name)
        paths[name] = None if value in (None, "") else safe_path(root, value, f"{where}, field {name}")
    explanation = rec.get("implicit_explanation") or ""
    if not isinstance(explanation, str):
        raise UserError(f"{where}, field implicit_explanation: expected a string")
    return RulerEntry(
        task_name=task_name, index=index, category=category, prompt=prompt.strip(), checklist=checklist,
        input_image=paths["input_image_path"], input_video=paths["input_video_path"], gt_image=paths["gt_image_path"],
        implicit_explanation=explanation, record=rec, line=n,
    )


def parse_checklist(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    """A list of one-key ``{dimension: question}`` objects, or that list as a JSON string.

    ``[dimension, question]`` pairs (the form kept in ``Task.metadata``) are accepted too.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"{where}: a string checklist must be a JSON list of {{dimension: question}} objects") from None
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: expected a non-empty list of {{dimension: question}} objects")
    out = []
    for k, item in enumerate(value):
        if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
            item = {item[0]: item[1]}
        if not isinstance(item, dict) or len(item) != 1:
            raise UserError(f"{where}, item {k}: expected an object with exactly one key (the dimension)")
        (dim, question), = item.items()
        if dim not in DIMENSIONS:
            raise UserError(f"{where}, item {k}: dimension {dim!r} is not one of {', '.join(DIMENSIONS)}")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}, item {k}: the question is empty")
        out.append((dim, question.strip()))
    return tuple(out)


# --------------------------------------------------------------- submission
def ruler_submission_path(videos_root: str | os.PathLike, model_name: str, task: Task) -> Path:
    """``<videos_root>/<model>/<task_name>/<index>.mp4`` for a task from :func:`load_ruler`."""
    md = task.metadata
    if "task_name" not in md or "index" not in md:
        raise UserError(f"task {task.id!r} has no RULER task_name/index; load it with load_ruler")
    safe_component(model_name, "model name")
    name = safe_component(md["task_name"], "RULER task name")
    index = md["index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise UserError(f"task {task.id!r}: RULER index must be a non-negative integer, got {index!r}")
    return Path(videos_root) / model_name / name / f"{index}.mp4"


def write_ruler_submission(videos_root: str | os.PathLike, model_name: str, task: Task, video_uint8: np.ndarray,
                           fps: int) -> Path:
    """Write the video (atomically) where the RULER judge looks for it."""
    return write_video(ruler_submission_path(videos_root, model_name, task), video_uint8, fps=int(fps))


# ------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class Judged:
    """One judged instance: its category, the dimension of each checklist item, the labels."""

    category: str
    dimensions: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown RULER category {self.category!r}")
        if len(self.dimensions) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels for {len(self.dimensions)} checklist items")
        for d in self.dimensions:
            if d not in DIMENSIONS:
                raise ValueError(f"unknown RULER dimension {d!r}")
        for lab in self.labels:
            if lab not in LABEL_VALUES:
                raise ValueError(f"unknown label {lab!r}; expected Good, Medium or Poor")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Judged":
        """From a saved judgement (the data record + ``eval_results``)."""
        checklist = parse_checklist(record.get("checklist"), "judgement checklist")
        labels = record.get("eval_results")
        if not isinstance(labels, list):
            raise ValueError("judgement has no eval_results list")
        return cls(str(record.get("category")), tuple(d for d, _ in checklist), tuple(labels))


def instance_dimension_scores(dimensions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Mean label value (0-2) per dimension over that dimension's items; 0 when it has none."""
    out = {}
    for dim in DIMENSIONS:
        vals = [LABEL_VALUES[lab] for d, lab in zip(dimensions, labels) if d == dim]
        out[dim] = sum(vals) / len(vals) if vals else 0.0
    return out


def instance_score(judged: Judged) -> float:
    """One instance's Avg on 0-100: the mean of its 4 dimensions (3 for vision rule) x 50."""
    per = instance_dimension_scores(judged.dimensions, judged.labels)
    dims = _dims_of(judged.category)
    return 50.0 * sum(per[d] for d in dims) / len(dims)


def _dims_of(category: str) -> tuple[str, ...]:
    return DIMENSIONS[1:] if category == VISION_RULE else DIMENSIONS


@dataclass
class RulerScores:
    """The score table. ``table[category][abbr]`` with abbr in IF/VC/VF/RC/Avg (0-100, IF
    absent for vision rule); ``overall`` likewise; ``counts[category]`` instances."""

    table: dict[str, dict[str, float]]
    overall: dict[str, float]
    counts: dict[str, int]

    @property
    def overall_avg(self) -> float:
        return self.overall["Avg"]

    def rows(self) -> list[tuple[str, str, float]]:
        """Long format ``(Category, Dimension, Score)``, Score rounded to 2 dp; ``Overall`` last."""
        out = []
        for cat, scores in [*self.table.items(), ("Overall", self.overall)]:
            for abbr in ("IF", "VC", "VF", "RC", "Avg"):
                if abbr in scores:
                    out.append((cat, abbr, round(scores[abbr], 2)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "overall": self.overall, "counts": self.counts}

    def to_markdown(self) -> str:
        cols = ("IF", "VC", "VF", "RC", "Avg")
        lines = ["| Category | n | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
        for cat, scores in [*self.table.items(), ("**Overall**", self.overall)]:
            n = self.counts.get(cat, sum(self.counts.values()))
            cells = [f"{scores[c]:.2f}" if c in scores else "-" for c in cols]
            lines.append(f"| {cat} | {n} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def score_ruler(judged: Iterable[Judged]) -> RulerScores:
    """The paper's table from judged instances (BENCHMARK_FORMATS.md 2.4).

    Only categories with at least one judged instance appear; the overall
    score of a dimension averages the categories that have it (IF: all but
    vision rule). Overall Avg is the mean of the overall dimension scores.
    """
    by_cat: dict[str, list[Judged]] = {}
    for j in judged:
        by_cat.setdefault(j.category, []).append(j)
    if not by_cat:
        raise UserError("no judged RULER instances to score; run the judge first")
    table: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for cat in CATEGORIES:
        items = by_cat.get(cat)
        if not items:
            continue
        per = [instance_dimension_scores(j.dimensions, j.labels) for j in items]
        dims = _dims_of(cat)
        row = {DIM_ABBR[d]: 50.0 * float(np.mean([p[d] for p in per])) for d in dims}
        row["Avg"] = float(np.mean([instance_score(j) for j in items]))
        table[cat] = row
        counts[cat] = len(items)
    overall: dict[str, float] = {}
    for dim in DIMENSIONS:
        vals = [row[DIM_ABBR[dim]] for row in table.values() if DIM_ABBR[dim] in row]
        if vals:
            overall[DIM_ABBR[dim]] = float(np.mean(vals))
    overall["Avg"] = float(np.mean(list(overall.values())))
    return RulerScores(table=table, overall=overall, counts=counts)
