"""The yes/no questions a teacher asks about a grid video, and their true answers.

One place for the question phrasings: the embedded teacher is trained to write
exactly these (``grid_queries`` / ``queries_json``) and to answer them, and the
answers it is trained on come only from the pixel verifier (``answers``).

Question types and the verifier rules whose failure makes the answer "No":

- ``goal``: the agent (maze) / the box (push) ends on the named square; the
  verifier's ``goal_reached``;
- ``moves``: the agent moves at most one cell per frame and never into a wall
  (rules ``jump``, ``wall``);
- ``box`` (push only): the box moves only when pushed, never into a wall
  (rules ``box_unpushed``, ``box_wall``);
- ``intact``: the agent (and box) is visible in every frame and the walls and
  coloured squares never change (rules ``initial``, ``unknown_colour``,
  ``static_changed``, ``agent_count``, ``box_count``).

Together they cover every rule the verifier checks, so "Yes" to all of a task's
questions holds exactly when the verifier passes the video: a teacher that
answers them correctly cannot be satisfied by a video that fails.
"""

from __future__ import annotations

import json
from typing import Any

from ...task import Queries
from .generate import GridTask
from .render import AGENT_WORD, BOX_WORD
from .verify import Verdict

QUESTION_TYPES = ("goal", "moves", "box", "intact")
#: process question types per family, in the order the teacher writes them
PROCESS_TYPES = {"maze": ("moves", "intact"), "push": ("moves", "box", "intact")}
#: verifier rules (``Verdict.details["failures"][i]["rule"]``) that make each process answer "No"
RULES = {
    "moves": frozenset({"jump", "wall"}),
    "box": frozenset({"box_unpushed", "box_wall"}),
    "intact": frozenset({"initial", "unknown_colour", "static_changed", "agent_count", "box_count"}),
}


def goal_question(family: str, colour: str) -> str:
    if family == "maze":
        return f"Does the {AGENT_WORD} agent end on the {colour} square?"
    if family == "push":
        return f"Is the {BOX_WORD} box on the {colour} pad at the end?"
    raise ValueError(f"unknown grid family {family!r}")


def process_question(family: str, kind: str) -> str:
    if kind == "moves":
        return f"Does the {AGENT_WORD} agent move one cell per step without crossing the dark walls?"
    if kind == "box" and family == "push":
        return f"Does the {BOX_WORD} box move only when the {AGENT_WORD} agent pushes it, never into a wall?"
    if kind == "intact":
        if family == "maze":
            return f"Is the {AGENT_WORD} agent visible in every frame, with the walls and squares unchanged?"
        if family == "push":
            return (f"Are the {AGENT_WORD} agent and the {BOX_WORD} box visible in every frame, "
                    "with the walls and pad unchanged?")
    raise ValueError(f"no {kind!r} question for the {family!r} family")


def questions(task: GridTask) -> dict[str, str]:
    """Question type -> question text for this task (goal first, then its process types)."""
    out = {"goal": goal_question(task.family, task.goal_colour)}
    out.update({kind: process_question(task.family, kind) for kind in PROCESS_TYPES[task.family]})
    return out


def grid_queries(task: GridTask) -> Queries:
    """The queries an ideal teacher writes for ``task``."""
    q = questions(task)
    return Queries(goal=q["goal"], process=tuple(q[k] for k in PROCESS_TYPES[task.family]), source="given")


def queries_json(task: GridTask) -> str:
    """The JSON answer to ``teacher.queries.query_prompt(task.prompt)`` the teacher is trained to write."""
    q = grid_queries(task)
    return json.dumps({"goal": q.goal, "process": list(q.process)})


def answers(task: GridTask, verdict: Verdict) -> dict[str, bool]:
    """Question type -> the true answer (True = "Yes") for a video, from the verifier's verdict of it."""
    details: dict[str, Any] = verdict.details
    broken = {f["rule"] for f in details.get("failures", [])}
    out = {"goal": bool(details["goal_reached"])}
    for kind in PROCESS_TYPES[task.family]:
        out[kind] = not (broken & RULES[kind])
    return out


def question_type(family: str, text: str) -> str | None:
    """Which type a question text is (exact phrasing, any goal colour), or None."""
    if text.startswith(goal_question(family, "\0").split("\0")[0]):
        return "goal"
    for kind in PROCESS_TYPES.get(family, ()):
        if text == process_question(family, kind):
            return kind
    return None
