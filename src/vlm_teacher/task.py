"""The two nouns of the method: a Task (condition c = prompt + first frame) and
the Queries a teacher writes for it (one goal question, 1-3 process questions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UserError

MAX_PROCESS_QUERIES = 3
#: Instructions of VBVR-Bench and RULER-Bench are a few hundred characters. Far longer
#: ones overflow the teacher's context and the text encoder's 512 tokens silently, so
#: they are refused with a clear error instead.
MAX_PROMPT_CHARS = 8000


@dataclass(frozen=True)
class Queries:
    """Yes/no questions whose answer "Yes" means the requirement is met."""

    goal: str
    process: tuple[str, ...]
    source: str = "teacher"  # teacher | fallback | generic | given

    def __post_init__(self) -> None:
        if not self.goal.strip():
            raise ValueError("the goal query is empty")
        if not 1 <= len(self.process) <= MAX_PROCESS_QUERIES:
            raise ValueError(f"need 1-{MAX_PROCESS_QUERIES} process queries, got {len(self.process)}")
        object.__setattr__(self, "process", tuple(self.process))

    @property
    def all(self) -> list[str]:
        """Goal first, then the process queries: the order of every per-question list."""
        return [self.goal, *self.process]

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "process": list(self.process), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Queries":
        return cls(goal=str(d["goal"]), process=tuple(str(p) for p in d["process"]), source=str(d.get("source", "given")))


@dataclass
class Task:
    """One instance: an instruction and an optional first frame (H x W x 3 uint8 RGB)."""

    id: str
    prompt: str
    first_frame: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UserError(f"task {self.id}: the prompt is empty; give the task instruction")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise UserError(f"task {self.id}: the prompt has {len(self.prompt)} characters, more than the "
                            f"{MAX_PROMPT_CHARS} allowed; shorten the instruction")
        if self.first_frame is not None:
            f = np.asarray(self.first_frame)
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise UserError(f"task {self.id}: the first frame must be H x W x 3 uint8 RGB, "
                                f"got shape {f.shape} dtype {f.dtype}")
            if 0 in f.shape:
                raise UserError(f"task {self.id}: the first frame is empty ({f.shape[1]}x{f.shape[0]} px)")
            self.first_frame = f
