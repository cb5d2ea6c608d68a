"""Planning a benchmark: its settings (``BenchConfig``), its instances and their result keys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import safe_name
from ..identity import model_id
from ..methods import TTO, BestOfN, parse_methods
from ..optimize import TTOConfig, tto_config
from ..reasoner.base import check_num_frames
from ..store import Key

STORE_NAME = "results.sqlite"
#: what ``config_hash`` covers. 2: the whole resolved TTOConfig and each method's code version (1
#: hashed only the settings changed from the defaults): rows of a store written under 1 keep their
#: keys, are not reused by a resume (it runs every instance again, into new rows) and stay readable
KEY_VERSION = 2
RECORD_NAME = "bench.json"
RUNS_DIR = "runs"


@dataclass
class BenchConfig:
    """Everything an instance needs, picklable (Ray actors rebuild their context from it).

    ``reasoner`` / ``teacher`` None mean the embedded models. ``tto`` overrides
    fields of ``TTOConfig`` (over the reasoner folder's ``tto.json``) for every
    TTO-family method (for example a smaller step budget). ``judge`` holds ``JudgeConfig`` fields (RULER only).
    """

    suite: str
    methods: list[str]
    out: Path
    seeds: list[int] = field(default_factory=lambda: [0])
    limit: int | None = None
    reasoner: Path | None = None
    teacher: Path | None = None
    preview_decoder: Path | None = None  # a surrogate for the TTO preview (None: the full VAE)
    device: str = "auto"
    dtype: str = "auto"
    tto: dict[str, Any] = field(default_factory=dict)
    num_frames: int | None = None
    judge: dict[str, Any] = field(default_factory=dict)
    retry_failed: bool = False
    teacher_eval: bool = True  # grid: the teacher's goal judgement of every final video (teacher accuracy)
    quiet_libraries: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.methods = [m.strip() for m in (self.methods.split(",") if isinstance(self.methods, str) else self.methods)
                        if m and m.strip()]
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise UserError("no seeds given; e.g. --seeds 0 or --seeds 0,1,2")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")
        check_num_frames(self.num_frames)
        self.reasoner = Path(self.reasoner) if self.reasoner is not None else None
        self.teacher = Path(self.teacher) if self.teacher is not None else None
        self.preview_decoder = check_preview_decoder(self.preview_decoder)

    def reasoner_path(self) -> Path:
        from ..embedded import reasoner_path

        return self.reasoner if self.reasoner is not None else reasoner_path()

    def teacher_path(self) -> Path:
        from ..embedded import teacher_path

        return self.teacher if self.teacher is not None else teacher_path()

    def tto_config(self) -> TTOConfig:
        """The base TTOConfig: the paper's, then the reasoner folder's tto.json, then ``tto``."""
        return tto_config(self.tto, self.reasoner_path())

    def load_suite(self):
        from ..suites import load_suite

        judge = None
        if self.suite.strip().lower().startswith("ruler"):
            from ..suites.judge import JudgeConfig

            try:
                judge = JudgeConfig(**self.judge)
            except TypeError as exc:
                raise UserError(f"bad judge setting: {exc}") from None
        return load_suite(self.suite, judge=judge)


@dataclass(frozen=True)
class Instance:
    """One (task, method, seed) to run, with where its files go."""

    key: Key
    method: str
    run_dir: str   # relative to the bench folder
    run_name: str  # the "model" folder name in official submission layouts

    @property
    def task_id(self) -> str:
        return self.key.task_id

    @property
    def seed(self) -> int:
        return self.key.seed


def check_preview_decoder(path) -> Path | None:
    """``--preview-decoder`` as a Path, refused before any model loads when it is not a file."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--preview-decoder {path} is not a file; give a .safetensors made by `vlm-teacher train "
                        "surrogate`, or leave the flag out to preview through the full VAE")
    return path


def model_ids_of(cfg: BenchConfig) -> dict[str, str]:
    """The reasoner's id, and the preview decoder's (file stem + content hash) when one is set."""
    from ..identity import file_digest

    ids = {"reasoner": model_id(cfg.reasoner_path())}
    if cfg.preview_decoder is not None:
        ids["preview_decoder"] = f"{cfg.preview_decoder.stem}-{file_digest(cfg.preview_decoder)[:8]}"
    return ids


def config_hash(method, cfg: BenchConfig, models: dict[str, str]) -> str:
    """Hash of everything that determines a method's output besides task and seed: the method's
    settings and code version (``Method.config``), the models' identities, the video length and
    the whole resolved optimisation config (defaults included, so a changed default is a new key)."""
    # the teacher is part of the key only where it shapes the video (not for frozen / oracle), the
    # preview decoder only for the test-time loop (the only user of the preview)
    used = {k: v for k, v in models.items()
            if k == "reasoner" or (k == "teacher" and method.uses_teacher)
            or (k == "preview_decoder" and isinstance(method, TTO))}
    doc: dict[str, Any] = {"key_version": KEY_VERSION, "method": method.config(), "models": used,
                           "frames": cfg.num_frames}
    base = cfg.tto_config()
    if isinstance(method, TTO):
        doc["tto"] = asdict(method.resolve(base))
    elif isinstance(method, BestOfN):  # it scores with the teacher on K frames, lambda-weighted
        doc["tto"] = {"num_frames_shown": base.num_frames_shown, "lam": base.lam}
    blob = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def plan(cfg: BenchConfig, suite=None) -> list[Instance]:
    """Every (task, method, seed) of the run, in run order (task-major, so a partial
    run has all methods on its first tasks)."""
    suite = suite if suite is not None else cfg.load_suite()
    methods = parse_methods(cfg.methods)
    if suite.verifier() is None:
        bad = [m.name for m in methods if m.needs_verifier]
        if bad:
            raise UserError(f"{', '.join(bad)} need a suite with a verifier (grid:...); {suite.name} has none")
    cfg.tto_config()  # validate early
    models = model_ids_of(cfg)
    if any(m.uses_teacher for m in methods) or cfg.teacher_eval:
        try:
            models["teacher"] = model_id(cfg.teacher_path())
        except UserError:
            if any(m.uses_teacher for m in methods):
                raise
    ids = suite.ids()
    if cfg.limit is not None:
        ids = ids[: cfg.limit]
    if not ids:
        raise UserError(f"suite {suite.spec} has no tasks")
    hashes = {m.name: config_hash(m, cfg, models) for m in methods}
    out: list[Instance] = []
    for task_id in ids:
        for m in methods:
            for seed in cfg.seeds:
                h = hashes[m.name]
                key = Key(suite.name, task_id, m.name, int(seed), h)
                run_dir = f"{RUNS_DIR}/{safe_name(m.name)}/{task_id}/seed{seed}-{h[:8]}"
                out.append(Instance(key, m.name, run_dir, f"{safe_name(m.name)}_s{seed}_{h[:8]}"))
    return out


