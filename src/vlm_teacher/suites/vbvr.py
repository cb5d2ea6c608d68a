"""VBVR-Bench (arXiv 2602.20159) from a local copy: tasks in, submission out.

Input: the ground-truth release (HF ``Video-Reason/VBVR-Bench-Data``) at a
local root. ``VBVR-Bench.json`` is preferred (prompts and base64 first frames
in one file); without it the folder layout
``<split>/<task>/<idx>/first_frame.png + prompt.txt`` is walked.

Output: ``<out>/<model>/<split folder>/<task>/<idx>.mp4``, the layout the
official evaluation kit reads. Scoring is **not** done here: the official
scorer is a set of hand-written OpenCV rules per task that is not available
to this package. Run the official kit on the submission folder, e.g.::

    python run_evaluation.py --model_path <out>/<model> --gt_base <root> --output_dir <eval>

and read its ``<model>_vbvr_results.json`` back with :func:`read_vbvr_results`
(it reports the ``task_specific`` dimension, the paper's number).

The dataset is parsed and validated eagerly (ids, paths, prompts), but the
images are decoded only when a task is built, so the 500 first frames are
never all in memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from ..errors import UserError
from ..task import Task
from ..video import write_video
from ._local import check_inside, decode_base64_image, read_image_file, safe_component, safe_path

SUITE = "vbvr"
JSON_NAME = "VBVR-Bench.json"

#: split folder -> split label used in the official results
SPLIT_LABELS = {"In-Domain_50": "In_Domain", "Out-of-Domain_50": "Out_of_Domain"}
SPLIT_FOLDERS = {v: k for k, v in SPLIT_LABELS.items()}

#: Out-of-Domain tasks by generator family and number (BENCHMARK_FORMATS.md 1.1); the rest are In-Domain.
OOD_NUMBERS: dict[str, frozenset[int]] = {
    "G": frozenset({24, 47, 54, 135, 136, 140, 147, 160, 161, 167, 168, 169, 174, 189, 193, 202, 206, 212,
                    217, 218, 219, 221, 222, 223, 240, 247, 248, 250, 273}),
    "O": frozenset({2, 5, 6, 9, 11, 22, 27, 39, 43, 46, 49, 54, 56, 58, 59, 60, 61, 62, 64, 65, 85}),
}

CATEGORIES = ("Abstraction", "Knowledge", "Perception", "Spatiality", "Transformation")

_TASK_NAME = re.compile(r"^(?P<family>[GO])-(?P<number>\d+)_")
_IDX = re.compile(r"^\d{5}$")
_VIDEO_FILE = re.compile(r"^\d{5}\.mp4$")


def task_number(task: str) -> tuple[str, int] | None:
    """``"O-47_sliding_puzzle_data-generator"`` -> ``("O", 47)``; None if the name has no number."""
    m = _TASK_NAME.match(task)
    return (m["family"], int(m["number"])) if m else None


def domain_of(task: str) -> str | None:
    """``In_Domain`` / ``Out_of_Domain`` from the task number and the spec's OOD list; None if unnumbered."""
    num = task_number(task)
    if num is None:
        return None
    return "Out_of_Domain" if num[1] in OOD_NUMBERS[num[0]] else "In_Domain"


@dataclass(frozen=True)
class VBVREntry:
    """One sample, validated, image not yet decoded."""

    id: str  # "<split folder>/<task>/<idx>"
    split_folder: str
    task: str
    idx: str
    prompt: str
    image_b64: str | None  # from the JSON
    image_path: Path | None  # first_frame.png (used when there is no base64)
    final_frame_path: Path | None = None
    ground_truth_video_path: Path | None = None
    json_id: Any = None
    source: str = ""  # where it came from, for error messages

    @property
    def split(self) -> str:
        """The results label of the split: the folder's, else from the task number."""
        return SPLIT_LABELS.get(self.split_folder) or domain_of(self.task) or self.split_folder


@dataclass
class VBVRSuite:
    """The parsed benchmark: ``len()``, ``ids()``, ``task(id)``, iteration yields Tasks."""

    root: Path
    entries: list[VBVREntry]
    categories: Mapping[str, str] = field(default_factory=dict)  # task name -> category, if the user has the map
    _by_id: dict[str, VBVREntry] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {e.id: e for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def __iter__(self) -> Iterator[Task]:
        for e in self.entries:
            yield self._build(e)

    def task(self, task_id: str) -> Task:
        try:
            return self._build(self._by_id[task_id])
        except KeyError:
            raise UserError(f"VBVR task {task_id!r} is not in {self.root}; ids look like In-Domain_50/<task>/00000") from None

    def _build(self, e: VBVREntry) -> Task:
        if e.image_b64 is not None:
            frame = decode_base64_image(e.image_b64, f"{e.source}, field first_image")
        else:
            assert e.image_path is not None
            frame = read_image_file(e.image_path, f"{e.source}, first frame")
        return Task(id=e.id, prompt=e.prompt, first_frame=frame, metadata=self._metadata(e))

    def _metadata(self, e: VBVREntry) -> dict[str, Any]:
        return {
            "suite": SUITE,
            "split": e.split,
            "split_folder": e.split_folder,
            "task": e.task,
            "idx": e.idx,
            "domain": domain_of(e.task),  # from the task number; None if the name carries none
            "category": self.categories.get(e.task),  # the 5-way taxonomy is not in the data: None unless given
            "gt_final_frame": str(e.final_frame_path) if e.final_frame_path else None,
            "gt_video": str(e.ground_truth_video_path) if e.ground_truth_video_path else None,
            "first_frame_path": str(e.image_path) if e.image_path else None,
            "json_id": e.json_id,
        }


def load_vbvr(
    root: str | os.PathLike,
    *,
    splits: Iterable[str] | None = None,
    tasks: Iterable[str] | None = None,
    categories: Mapping[str, str] | None = None,
) -> VBVRSuite:
    """Parse VBVR-Bench at ``root`` (JSON if present, else folders).

    ``splits`` keeps only these split folders or labels (``In-Domain_50`` or
    ``In_Domain``); ``tasks`` only these task (generator) names. ``categories``
    maps task name -> one of :data:`CATEGORIES` (the data does not carry it).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"VBVR-Bench root {root} is not a folder; download Video-Reason/VBVR-Bench-Data there")
    if categories:
        bad = sorted({c for c in categories.values() if c not in CATEGORIES})
        if bad:
            raise UserError(f"unknown VBVR categories {bad}; use {', '.join(CATEGORIES)}")
    json_path = root / JSON_NAME
    entries = _from_json(root, json_path) if json_path.exists() else _from_folders(root)
    if splits is not None:
        wanted = {SPLIT_FOLDERS.get(s, s) for s in splits}
        entries = [e for e in entries if e.split_folder in wanted]
    if tasks is not None:
        wanted_tasks = set(tasks)
        unknown = sorted(wanted_tasks - {e.task for e in entries})
        if unknown:
            raise UserError(f"VBVR tasks not found in {root}: {', '.join(unknown)}")
        entries = [e for e in entries if e.task in wanted_tasks]
    return VBVRSuite(root=root, entries=entries, categories=dict(categories or {}))


def _from_json(root: Path, json_path: Path) -> list[VBVREntry]:
    json_path = check_inside(root, json_path, JSON_NAME)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{json_path} is not valid JSON ({exc}); re-download it") from None
    if not isinstance(data, list):
        raise UserError(f"{json_path} must hold a JSON array of samples, got {type(data).__name__}")
    if not data:
        raise UserError(f"{json_path} holds no samples; re-download it")
    entries: list[VBVREntry] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(data):
        where = f"{JSON_NAME} entry {i}"
        if not isinstance(item, dict):
            raise UserError(f"{where}: expected an object, got {type(item).__name__}")
        first_rel = item.get("first_frame_path")
        first_path = safe_path(root, first_rel, f"{where}, field first_frame_path")
        parts = Path(str(first_rel)).parts
        if len(parts) < 4:
            raise UserError(f"{where}, field first_frame_path: {first_rel!r} must look like <split>/<task>/<idx>/first_frame.png")
        split_folder, task, idx = parts[0], parts[1], parts[2]
        _check_ids(split_folder, task, idx, where)
        paths = {}
        for name in ("final_frame_path", "prompt_path", "ground_truth_video_path"):
            value = item.get(name)
            paths[name] = None if value in (None, "") else safe_path(root, value, f"{where}, field {name}")
        prompt = item.get("prompt")
        if prompt is None and paths["prompt_path"] is not None:
            prompt = _read_prompt(paths["prompt_path"], f"{where}, field prompt_path")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}, field prompt: expected a non-empty string")
        b64 = item.get("first_image")
        if b64 in (None, ""):
            b64 = None
            if not first_path.is_file():
                raise UserError(f"{where}: no field first_image and no file {first_rel}; re-download the dataset")
        elif not isinstance(b64, str):
            raise UserError(f"{where}, field first_image: expected a base64 string, got {type(b64).__name__}")
        entry_id = f"{split_folder}/{task}/{idx}"
        if entry_id in seen:
            raise UserError(f"{where}: duplicate sample {entry_id} (also entry {seen[entry_id]})")
        seen[entry_id] = i
        entries.append(VBVREntry(
            id=entry_id, split_folder=split_folder, task=task, idx=idx, prompt=prompt.strip(),
            image_b64=b64, image_path=first_path, final_frame_path=paths["final_frame_path"],
            ground_truth_video_path=paths["ground_truth_video_path"], json_id=item.get("id"), source=where,
        ))
    return entries


def _from_folders(root: Path) -> list[VBVREntry]:
    entries: list[VBVREntry] = []
    for first in sorted(root.glob("*/*/*/first_frame.png")):
        sample_dir = first.parent
        split_folder, task, idx = sample_dir.relative_to(root).parts
        where = f"VBVR sample {split_folder}/{task}/{idx}"
        _check_ids(split_folder, task, idx, where)
        check_inside(root, sample_dir, where)
        first_path = check_inside(root, first, where)
        prompt_file = sample_dir / "prompt.txt"
        if not prompt_file.is_file():
            raise UserError(f"{where}: prompt.txt is missing; is the dataset download complete?")
        prompt = _read_prompt(check_inside(root, prompt_file, where), where)
        final = sample_dir / "final_frame.png"
        gt = sample_dir / "ground_truth.mp4"
        entries.append(VBVREntry(
            id=f"{split_folder}/{task}/{idx}", split_folder=split_folder, task=task, idx=idx, prompt=prompt,
            image_b64=None, image_path=first_path,
            final_frame_path=check_inside(root, final, where) if final.exists() else None,
            ground_truth_video_path=check_inside(root, gt, where) if gt.exists() else None,
            source=where,
        ))
    if not entries:
        raise UserError(
            f"no VBVR-Bench data in {root}: expected {JSON_NAME} or folders <split>/<task>/<idx>/first_frame.png"
        )
    return entries


def _check_ids(split_folder: str, task: str, idx: str, where: str) -> None:
    safe_component(split_folder, f"{where}: split folder")
    safe_component(task, f"{where}: task name")
    if not _IDX.match(idx):
        raise UserError(f"{where}: sample folder {idx!r} must be five digits (00000-00004)")


def _read_prompt(path: Path, where: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read prompt {path}: {exc}") from None
    if not text:
        raise UserError(f"{where}: prompt {path} is empty")
    return text


# --------------------------------------------------------------- submission
def vbvr_submission_path(out_root: str | os.PathLike, model_name: str, task: Task) -> Path:
    """``<out_root>/<model>/<split folder>/<task>/<idx>.mp4`` for a task from :func:`load_vbvr`."""
    md = task.metadata
    missing = [k for k in ("split_folder", "task", "idx") if not md.get(k)]
    if missing:
        raise UserError(f"task {task.id!r} has no VBVR {', '.join(missing)}; load it with load_vbvr")
    safe_component(model_name, "model name")
    split_folder = safe_component(md["split_folder"], "VBVR split folder")
    name = safe_component(md["task"], "VBVR task name")
    file_name = f"{md['idx']}.mp4"
    if not _VIDEO_FILE.match(file_name):
        raise UserError(f"task {task.id!r}: sample index {md['idx']!r} must be five digits for the VBVR evaluator")
    return Path(out_root) / model_name / split_folder / name / file_name


def write_vbvr_submission(out_root: str | os.PathLike, model_name: str, task: Task, video_uint8: np.ndarray, fps: int) -> Path:
    """Write the video (atomically) where the official VBVR evaluator looks for it."""
    path = vbvr_submission_path(out_root, model_name, task)
    return write_video(path, video_uint8, fps=int(fps))


def read_vbvr_results(path: str | os.PathLike) -> dict[str, float]:
    """Scores from the official ``<model>_vbvr_results.json``: ``{task id: score}``.

    Ids are ``<folder>/<task_name>/<idx>`` as produced by :func:`load_vbvr`, so
    they join with the results store.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"VBVR results file {path} not found; run the official evaluation kit first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, list):
        raise UserError(f"{path} has no 'samples' list; is it a <model>_vbvr_results.json from the official kit?")
    out: dict[str, float] = {}
    for i, s in enumerate(samples):
        try:
            folder, task, video_file, score = s["folder"], s["task_name"], s["video_file"], s["score"]
        except (KeyError, TypeError):
            raise UserError(f"{path}: sample {i} lacks folder/task_name/video_file/score") from None
        if not _VIDEO_FILE.match(str(video_file)):
            raise UserError(f"{path}: sample {i} video_file {video_file!r} is not NNNNN.mp4")
        out[f"{folder}/{task}/{str(video_file)[:-4]}"] = float(score)
    return out


def import_vbvr_scores(store, results: str | os.PathLike, submission_root: str | os.PathLike | None = None) -> int:
    """Fill the scores of ``vbvr`` rows in ``store`` from the official kit's
    ``<run>_vbvr_results.json`` files (``results`` is one such file or the folder holding
    them). Returns rows updated; refuses results that match no run of the store."""
    suffix = "_vbvr_results.json"
    results = Path(results)
    if results.is_file():
        files = [results]
    elif results.is_dir():
        files = sorted(results.glob(f"*{suffix}"))
    else:
        raise UserError(f"VBVR results {results} not found; give the official kit's output folder or one "
                        f"<run>{suffix} file")
    scores = {f.name[: -len(suffix)]: read_vbvr_results(f) for f in files if f.name.endswith(suffix)}
    n = 0
    runs = set()
    for row in store.rows(suite="vbvr", status="done"):
        run = (row.get("extra") or {}).get("run_name")
        runs.add(run)
        if run not in scores or row["task_id"] not in scores[run]:
            continue
        new = {k: v for k, v in row.items() if k not in ("attempts", "created_at")}
        new["score"] = scores[run][row["task_id"]]
        store.put(new)
        n += 1
    if not runs & set(scores):
        where = Path(submission_root) / "vbvr_submission" if submission_root is not None else "vbvr_submission"
        raise UserError(f"no <run>{suffix} in {results} matches a run of this bench (runs: "
                        f"{', '.join(sorted(r for r in runs if r)) or 'none'}); run the official kit on "
                        f"{where} first")
    return n
