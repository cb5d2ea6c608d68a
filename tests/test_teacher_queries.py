"""Query synthesis: the parser on realistic model outputs, the prompt, the fallbacks."""

from __future__ import annotations

import pytest

from vlm_teacher.task import Queries
from vlm_teacher.teacher.queries import (
    QUERY_INSTRUCTION,
    fallback_queries,
    generic_queries,
    parse_queries,
    query_prompt,
)

GOAL = "Does the blue agent reach the green target cell?"
P1 = "Does the agent move exactly one cell per frame?"
P2 = "Does the agent stay out of the black wall cells?"
P3 = "Do the walls stay unchanged throughout the video?"
P4 = "Does the agent keep its blue colour and square shape?"

# (model output, expected goal, expected process questions)
BATTERY = [
    # bare JSON
    (f'{{"goal": "{GOAL}", "process": ["{P1}", "{P2}"]}}', GOAL, [P1, P2]),
    # ```json fence with prose around it
    (f'Sure! Here are the questions:\n```json\n{{\n  "goal": "{GOAL}",\n  "process": [\n    "{P1}",\n'
     f'    "{P2}",\n    "{P3}"\n  ]\n}}\n```\nThese check the goal and the process.', GOAL, [P1, P2, P3]),
    # fence without language tag
    (f'```\n{{"goal": "{GOAL}", "process": ["{P1}"]}}\n```', GOAL, [P1]),
    # prose before and after, no fence
    (f'Based on the task, I propose: {{"goal": "{GOAL}", "process": ["{P2}"]}} Let me know if you need more.',
     GOAL, [P2]),
    # single quotes (Python-dict style)
    (f"{{'goal': '{GOAL}', 'process': ['{P1}', '{P2}']}}", GOAL, [P1, P2]),
    # trailing commas
    (f'{{"goal": "{GOAL}", "process": ["{P1}", "{P2}",],}}', GOAL, [P1, P2]),
    # other key names
    (f'{{"goal_query": "{GOAL}", "process_queries": ["{P1}", "{P3}"]}}', GOAL, [P1, P3]),
    (f'{{"Goal Question": "{GOAL}", "Process Questions": ["{P3}"]}}', GOAL, [P3]),
    # a flat list of questions under "questions": the first is the goal
    (f'{{"questions": ["{GOAL}", "{P1}", "{P2}"]}}', GOAL, [P1, P2]),
    # nested one level
    (f'{{"queries": {{"goal": "{GOAL}", "process": ["{P1}"]}}}}', GOAL, [P1]),
    # process as objects
    (f'{{"goal": "{GOAL}", "process": [{{"question": "{P1}"}}, {{"question": "{P2}"}}]}}', GOAL, [P1, P2]),
    # process as a single string
    (f'{{"goal": "{GOAL}", "process": "{P2}"}}', GOAL, [P2]),
    # more than 3 process questions: trimmed to 3
    (f'{{"goal": "{GOAL}", "process": ["{P1}", "{P2}", "{P3}", "{P4}"]}}', GOAL, [P1, P2, P3]),
    # a JSON list of questions
    (f'["{GOAL}", "{P1}", "{P2}"]', GOAL, [P1, P2]),
    # list of typed objects
    (f'[{{"type": "goal", "question": "{GOAL}"}}, {{"type": "process", "question": "{P1}"}}]', GOAL, [P1]),
    # labelled lines
    (f"Goal: {GOAL}\nProcess 1: {P1}\nProcess 2: {P2}", GOAL, [P1, P2]),
    (f"**Goal question:** {GOAL}\n**Process question 1:** {P3}", GOAL, [P3]),
    (f"1. **Goal:** {GOAL}\n2. **Process:** {P1}\n3. **Process:** {P4}", GOAL, [P1, P4]),
    # a reasoning model's think block before the answer
    (f'<think>\nThe task is a maze; I should check walls.\n</think>\n\n{{"goal": "{GOAL}", "process": ["{P2}"]}}',
     GOAL, [P2]),
    # a plain numbered list
    (f"Here are my questions:\n1. {GOAL}\n2. {P1}\n3. {P2}\n4. {P3}\n5. {P4}", GOAL, [P1, P2, P3]),
    # a bulleted list
    (f"- {GOAL}\n- {P2}", GOAL, [P2]),
    # curly quotes from a chatty model
    (f'{{\u201cgoal\u201d: \u201c{GOAL}\u201d, \u201cprocess\u201d: [\u201c{P1}\u201d]}}', GOAL, [P1]),
    # truncated generation (max_new_tokens hit inside the JSON)
    (f'{{"goal": "{GOAL}", "process": ["{P1}", "{P2}"', GOAL, [P1, P2]),
]


@pytest.mark.parametrize("text,goal,process", BATTERY, ids=[f"case{i}" for i in range(len(BATTERY))])
def test_parse_queries_battery(text, goal, process):
    q = parse_queries(text)
    assert q is not None, text
    assert q.goal == goal
    assert list(q.process) == process
    assert q.source == "teacher"


GARBAGE = [
    "",
    "   ",
    "I cannot help with that.",
    "Bydjacent6ticikebeen part D made question sousolvedBetweenround",
    '{"goal": "", "process": []}',
    '{"goal": "Does it work?"}',  # no process question
    '{"process": ["Does the agent move?"]}',  # no goal, only one question
    "{not json at all",
    "1. ok\n2. fine",  # not questions
    '{"answer": "Yes"}',
    "[1, 2, 3]",
]


@pytest.mark.parametrize("text", GARBAGE)
def test_parse_queries_returns_none_on_garbage(text):
    assert parse_queries(text) is None


def test_query_prompt_carries_the_task_and_the_format():
    p = query_prompt("  Move the red box onto the cross.  ")
    assert p.startswith(QUERY_INSTRUCTION)
    assert p.endswith("Task: Move the red box onto the cross.")
    for word in ("goal", "process", "JSON", "Yes", "collisions", "temporal continuity", "object integrity"):
        assert word in p


def test_fallback_is_task_aware_and_valid():
    q = fallback_queries("Navigate the blue agent through the maze to the green target.")
    assert isinstance(q, Queries) and q.source == "fallback"
    assert "blue agent" in q.goal and "green target" in q.goal
    assert 1 <= len(q.process) <= 3
    assert all(s.endswith("?") for s in q.all)
    long = fallback_queries("word " * 200)
    assert len(long.goal) < 220


def test_generic_queries_ignore_the_task():
    a, b = generic_queries("Push the box."), generic_queries("Draw a path from A to B.")
    assert a == b and a.source == "generic"
    assert "box" not in a.goal
    assert 1 <= len(a.process) <= 3
