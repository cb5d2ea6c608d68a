"""The embedded default: a small Wan pipeline and a small Qwen-VL trained by this
project's recipes (``vlm_teacher.recipes``) on the grid suite, shipped as
safetensors folders beside this file and loaded with the same adapters as the
real models."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

ROOT = Path(__file__).resolve().parent
REASONER_DIR = ROOT / "grid-wan"
TEACHER_DIR = ROOT / "grid-qwen"


def _require(path: Path, what: str, recipe: str) -> Path:
    if not (path / ("model_index.json" if what == "reasoner" else "config.json")).is_file():
        raise UserError(f"the embedded {what} is missing at {path}; rebuild it with `vlm-teacher train {recipe}`")
    return path


def reasoner_path() -> Path:
    return _require(REASONER_DIR, "reasoner", "reasoner")


def teacher_path() -> Path:
    return _require(TEACHER_DIR, "teacher", "teacher")
