"""Query synthesis: the prompt that asks the teacher for yes/no questions, the
parser for what models actually answer, and the fallbacks.

The paper does not publish its prompt; its figure shows the instruction
"Propose supervision questions on the processes and final objective of this
task". The prompt below asks for one goal question and 1-3 process questions
(object integrity, valid motion, temporal continuity, collisions, state
consistency) whose answer "Yes" means the requirement is met, as JSON.

Models wrap JSON in many ways (code fences, prose, single quotes, trailing
commas, other key names, or a plain numbered list); ``parse_queries`` accepts
those and returns ``None`` only when no usable questions are there, so the
caller can fall back (``fallback_queries``) and log it.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from ..task import MAX_PROCESS_QUERIES, Queries

QUERY_INSTRUCTION = (
    "Propose supervision questions on the processes and final objective of this task.\n"
    "A video generation model was asked to make a video for the task below. Write yes/no questions "
    "that a judge can answer by watching that video, where the answer \"Yes\" means the requirement is met.\n"
    "- goal: ONE question asking whether the final objective of the task is achieved.\n"
    "- process: 1 to 3 questions about how it happens: object integrity (objects keep their shape, colour "
    "and number), valid motion (only legal moves), temporal continuity (no jumps or teleporting), "
    "collisions (nothing passes through walls or other objects), state consistency (what should stay "
    "fixed stays fixed).\n"
    "Make the questions specific to this task (name its objects, colours and rules).\n"
    "Answer with JSON only, in this form: "
    "{\"goal\": \"...\", \"process\": [\"...\", \"...\"]}"
)


def query_prompt(task_prompt: str) -> str:
    """The user message sent to the teacher (with the first frame, when there is one)."""
    return f"{QUERY_INSTRUCTION}\n\nTask: {task_prompt.strip()}"


# ---------------------------------------------------------------- parsing

_GOAL_KEYS = ("goal", "goal_query", "goal_question", "final", "final_question", "objective", "outcome")
_PROCESS_KEYS = ("process", "process_queries", "process_questions", "processes", "process_query")
_LIST_KEYS = ("questions", "queries", "supervision_questions")
_MIN_QUESTION_CHARS = 8


def _clean(text: Any) -> str | None:
    """A usable question string, or None."""
    if isinstance(text, dict):  # {"question": "..."} items
        for key in ("question", "query", "text", "q"):
            if isinstance(text.get(key), str):
                text = text[key]
                break
        else:
            return None
    if not isinstance(text, str):
        return None
    text = re.sub(r"\s+", " ", text).strip().strip("\"'`").strip()
    text = re.sub(r"^(?:[-*\u2022]+|\d+[.)]|Q\d*[:.)])\s*", "", text).strip().strip("*").strip()
    if len(text) < _MIN_QUESTION_CHARS or not re.search(r"[A-Za-z]{2,}", text):
        return None
    return text


def _norm_key(key: Any) -> str:
    return re.sub(r"[^a-z_]", "", str(key).strip().lower().replace(" ", "_").replace("-", "_"))


def _from_mapping(obj: dict[str, Any]) -> Queries | None:
    keys = {_norm_key(k): v for k, v in obj.items()}
    goal = next((keys[k] for k in _GOAL_KEYS if k in keys), None)
    process = next((keys[k] for k in _PROCESS_KEYS if k in keys), None)
    if isinstance(goal, list):  # {"goal": ["..."]}
        goal = goal[0] if goal else None
    goal = _clean(goal)
    if isinstance(process, (str, dict)):
        process = [process]
    proc = [q for q in (_clean(p) for p in (process or [])) if q]
    if goal is None or not proc:
        listed = next((keys[k] for k in _LIST_KEYS if k in keys), None)
        if isinstance(listed, list):
            items = [q for q in (_clean(p) for p in listed) if q]
            if goal is None and len(items) >= 2:
                goal, proc = items[0], items[1:]
            elif goal is not None and items and not proc:
                proc = items
    if goal is None or not proc:
        return None
    return Queries(goal=goal, process=tuple(proc[:MAX_PROCESS_QUERIES]), source="teacher")


def _from_any(obj: Any) -> Queries | None:
    if isinstance(obj, dict):
        found = _from_mapping(obj)
        if found is not None:
            return found
        for value in obj.values():  # {"queries": {"goal": ..., "process": [...]}}
            if isinstance(value, (dict, list)):
                found = _from_any(value)
                if found is not None:
                    return found
        return None
    if isinstance(obj, list):
        if obj and all(isinstance(x, dict) for x in obj):  # [{"type": "goal", "question": ...}, ...]
            goal, proc = None, []
            for item in obj:
                kind = _norm_key(item.get("type", item.get("kind", item.get("role", ""))))
                text = _clean(item)
                if text and kind.startswith("goal") and goal is None:
                    goal = text
                elif text:
                    proc.append(text)
            if goal is None and len(proc) >= 2:
                goal, proc = proc[0], proc[1:]
            if goal and proc:
                return Queries(goal=goal, process=tuple(proc[:MAX_PROCESS_QUERIES]), source="teacher")
            return None
        items = [q for q in (_clean(x) for x in obj) if q]
        if len(items) >= 2:  # ["goal?", "process?", ...]
            return Queries(goal=items[0], process=tuple(items[1:1 + MAX_PROCESS_QUERIES]), source="teacher")
    return None


def _candidates(text: str) -> list[str]:
    """Substrings that may hold the JSON: fenced blocks first, then balanced {...} / [...] spans."""
    out = [m.group(1) for m in re.finditer(r"```(?:json|JSON|javascript|python)?\s*(.*?)```", text, re.S)]
    for opener, closer in (("{", "}"), ("[", "]")):
        start = text.find(opener)
        while start != -1:
            depth, in_str, quote, esc = 0, False, "", False
            for i in range(start, len(text)):
                ch = text[i]
                if in_str:
                    if esc:
                        esc = False
                    elif ch == "\\":
                        esc = True
                    elif ch == quote:
                        in_str = False
                elif ch in "\"'" and (ch == '"' or not text[i - 1].isalpha()):  # don't open on "don't"
                    in_str, quote = True, ch
                elif ch == opener:
                    depth += 1
                elif ch == closer:
                    depth -= 1
                    if depth == 0:
                        out.append(text[start:i + 1])
                        break
            start = text.find(opener, start + 1)
    if "{" in text:  # a generation cut by max_new_tokens: close what is open
        out.append(_close_truncated(text[text.find("{"):]))
    return out


def _close_truncated(blob: str) -> str:
    """Append the quote and brackets that a truncated JSON text leaves open."""
    stack: list[str] = []
    in_str, esc = False, False
    for ch in blob:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    return blob + ('"' if in_str else "") + "".join(reversed(stack))


def _loads(blob: str) -> Any:
    blob = blob.strip()
    attempts = [blob, re.sub(r",\s*([}\]])", r"\1", blob)]  # trailing commas
    attempts.append(attempts[-1].replace("\u201c", '"').replace("\u201d", '"'))  # curly quotes
    for attempt in attempts:
        try:
            return json.loads(attempt)
        except ValueError:
            pass
        try:  # single quotes, True/None: Python literal syntax
            py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", attempt)))
            return ast.literal_eval(py)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            pass
    return None


_LINE_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\(?\d+[.)]|Q\d+[:.)])\s+(.+?)\s*$")
_LABELLED = re.compile(r"^\s*[-*\d.)\s]*(goal|process(?:\s*\d+)?|final)\s*(?:query|question)?\s*\d*\s*\**\s*[:\-]"
                       r"\s*\**\s*(.+?)\s*$",
                       re.I)


def _from_lines(text: str) -> Queries | None:
    """Plain lists: "Goal: ...?" / "Process 1: ...?" labels, or a numbered / bulleted list of questions."""
    goal, proc, items = None, [], []
    for line in text.splitlines():
        labelled = _LABELLED.match(line)
        if labelled and (q := _clean(labelled.group(2))) and q.endswith("?"):
            if labelled.group(1).lower() in ("goal", "final") and goal is None:
                goal = q
            else:
                proc.append(q)
            continue
        item = _LINE_ITEM.match(line)
        if item and (q := _clean(item.group(1))) and q.endswith("?"):
            items.append(q)
    if goal is not None and (proc or items):
        return Queries(goal=goal, process=tuple((proc or items)[:MAX_PROCESS_QUERIES]), source="teacher")
    items = proc + items if goal is None else items
    if len(items) >= 2:
        return Queries(goal=items[0], process=tuple(items[1:1 + MAX_PROCESS_QUERIES]), source="teacher")
    return None


def parse_queries(text: str) -> Queries | None:
    """Queries from a model's answer, or None when it holds no goal + process questions.

    Accepts: bare JSON; JSON in ```json fences or between prose; single quotes and
    trailing commas; keys such as goal_query / process_queries / questions; a list of
    questions (first = goal); "Goal: ... / Process 1: ..." lines; a numbered or
    bulleted list of questions. Keeps at most 3 process questions.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    for blob in _candidates(text):
        obj = _loads(blob)
        if obj is not None:
            found = _from_any(obj)
            if found is not None:
                return found
    return _from_lines(text)


# ---------------------------------------------------------------- fallbacks

def _task_phrase(prompt: str, limit: int = 160) -> str:
    phrase = re.sub(r"\s+", " ", prompt).strip().rstrip(".!?;:")
    if len(phrase) > limit:
        cut = phrase[:limit].rsplit(" ", 1)[0]
        phrase = cut + "..."
    return phrase or "the task"


def fallback_queries(prompt: str) -> Queries:
    """Task-aware questions built from the instruction alone, for when the teacher's
    output does not parse. The goal quotes the instruction; the process questions are
    the paper's categories phrased generically."""
    task = _task_phrase(prompt)
    return Queries(
        goal=f"Does the video complete this instruction: \"{task}\"?",
        process=(
            "Do all objects keep their shape, colour and number throughout the video?",
            "Does every object move only in ways the instruction allows, without passing through walls or other objects?",
            "Does the video change smoothly from frame to frame, without sudden jumps or objects appearing from nowhere?",
        ),
        source="fallback",
    )


def generic_queries(prompt: str) -> Queries:  # noqa: ARG001 - same signature as the task-aware builders
    """Task-agnostic questions (the paper's "generic queries" ablation): the same for every task."""
    return Queries(
        goal="Does the video successfully complete the task it was asked to show?",
        process=(
            "Are the objects in the video consistent and intact from frame to frame?",
            "Is the motion in the video smooth, continuous and physically plausible?",
        ),
        source="generic",
    )
