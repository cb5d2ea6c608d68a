"""The baselines on their interesting branches, driven by a scripted teacher (a small real
class implementing the Teacher protocol whose answers the test decides), and bench rows
whose stored score is re-derived from the stored video."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch

from vlm_teacher.methods import BestOfN, MethodContext, VideoTPO, candidate_seeds, parse_method
from vlm_teacher.objective import weighted_loss
from vlm_teacher.optimize import TTOConfig
from vlm_teacher.reasoner import load_reasoner
from vlm_teacher.task import Queries


class ScriptedTeacher:
    """The Teacher protocol with answers read from a script: ``scores`` for successive
    ``score`` calls, ``replies`` for successive ``generate_text`` calls. Records every call."""

    def __init__(self, scores: Sequence[float] = (), replies: Sequence[str] = ()) -> None:
        self.device = torch.device("cpu")
        self.scores = list(scores)
        self.replies = list(replies)
        self.calls: list[tuple[str, object]] = []

    def propose_queries(self, prompt: str, first_frame: np.ndarray | None) -> Queries:
        self.calls.append(("propose_queries", prompt))
        return Queries(goal="Is the target reached?", process=("Is every move legal?",), source="teacher")

    def yes_logprob(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        self.calls.append(("yes_logprob", len(questions)))
        return torch.log(frames.mean().clamp(1e-4, 1.0)).expand(len(questions))

    def score(self, frames, queries: Queries, lam: float = 0.5) -> dict:
        self.calls.append(("score", np.asarray(frames).copy()))
        s = self.scores.pop(0)
        p_yes = [s] * len(queries.all)
        # the loss best-of-N ranks by is the TTO objective of these P(Yes) (Teacher.score's contract)
        loss = float(weighted_loss(torch.log(torch.tensor(p_yes)), lam))
        return {"score": s, "p_yes": p_yes, "loss": loss}

    def generate_text(self, prompt: str, images: Sequence[np.ndarray] = (), max_new_tokens: int = 128) -> str:
        self.calls.append(("generate_text", (prompt, [np.asarray(i).copy() for i in images])))
        return self.replies.pop(0)

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        return {}


@pytest.fixture(scope="module")
def reasoner(tiny_wan_dir):
    return load_reasoner(tiny_wan_dir)


def _frozen(reasoner, task, seed: int, prompt: str | None = None) -> np.ndarray:
    """The frozen sample, through the frozen method (prompt: a Task with another instruction)."""
    from dataclasses import replace

    t = task if prompt is None else replace(task, prompt=prompt)
    return parse_method("frozen").run(MethodContext(reasoner=reasoner), t, seed).video


def test_best_of_n_keeps_the_frozen_video_of_the_best_scored_seed(reasoner, task):
    teacher = ScriptedTeacher(scores=[0.2, 0.9, 0.4])
    ctx = MethodContext(reasoner=reasoner, teacher=teacher, tto=TTOConfig(num_frames_shown=3))
    out = BestOfN(3).run(ctx, task, seed=5)
    seeds = candidate_seeds(5, 3)
    assert out.extra["chosen_seed"] == seeds[1]
    # ranked by the TTO loss of its P(Yes): -log 0.9 for every question (methods.BestOfN)
    assert out.extra["teacher_score"] == pytest.approx(np.log(0.9))
    assert out.extra["candidates"][1]["teacher_loss"] == pytest.approx(-np.log(0.9))
    assert np.array_equal(out.video, _frozen(reasoner, task, seeds[1]))
    assert not np.array_equal(out.video, _frozen(reasoner, task, seeds[0]))
    # the teacher scored K = 3 frames of each candidate, in candidate order
    scored = [c[1] for c in teacher.calls if c[0] == "score"]
    assert len(scored) == 3 and all(len(f) == 3 for f in scored)


def test_best_of_n_keeps_the_first_of_equal_scores(reasoner, task):
    ctx = MethodContext(reasoner=reasoner, teacher=ScriptedTeacher(scores=[0.5, 0.5]))
    out = BestOfN(2).run(ctx, task, seed=5)
    assert out.extra["chosen_seed"] == 5
    assert np.array_equal(out.video, _frozen(reasoner, task, 5))


def test_videotpo_follows_the_teachers_choice_and_its_rewritten_prompt(reasoner, task):
    teacher = ScriptedTeacher(replies=["Better: B\nPrompt: Move the red agent right, then down.",
                                       "Better: B\nPrompt: never used (last round)"])
    ctx = MethodContext(reasoner=reasoner, teacher=teacher)
    out = VideoTPO(2).run(ctx, task, seed=3)
    rewritten = "Move the red agent right, then down."
    assert [h["chosen"] for h in out.history] == ["B", "B"]
    assert [h["prompt"] for h in out.history] == [task.prompt, rewritten]
    assert out.extra["final_prompt"] == rewritten
    # the output is candidate B (the second seed) of round 2, sampled from the rewritten prompt
    seed_b = candidate_seeds(3, 2)[1]
    expected = _frozen(reasoner, task, seed_b, prompt=rewritten)
    assert np.array_equal(out.video, expected)
    assert not np.array_equal(out.video, _frozen(reasoner, task, seed_b))  # the prompt mattered
    # round 2's comparison showed the teacher the rewritten prompt and frames of both candidates
    (_, (prompt1, images1)), (_, (prompt2, images2)) = [c for c in teacher.calls if c[0] == "generate_text"]
    assert f"Prompt given to the video model: {rewritten}" in prompt2
    assert f"Prompt given to the video model: {task.prompt}" in prompt1
    assert len(images2) == 8 and np.array_equal(images2[-1], expected[-1])


def test_videotpo_keeps_a_and_the_prompt_when_the_reply_does_not_parse(reasoner, task):
    ctx = MethodContext(reasoner=reasoner, teacher=ScriptedTeacher(replies=["I cannot tell.", "Better: A"]))
    out = VideoTPO(2).run(ctx, task, seed=3)
    assert [h["choice"] for h in out.history] == [None, "A"]
    assert [h["prompt"] for h in out.history] == [task.prompt, task.prompt]
    assert np.array_equal(out.video, _frozen(reasoner, task, 3))


@pytest.mark.slow  # four shipped-reasoner videos through a real bench
def test_bench_rows_score_is_the_verifiers_score_of_the_stored_video(tmp_path, tiny_wan_dir, suite):
    """The shipped reasoner (bench's default) on two grid tasks: each row's score and passed are what
    the grid verifier says about the mp4 the row points to."""
    from vlm_teacher.bench import BenchConfig, open_store, run_bench
    from vlm_teacher.suites.grid import verify
    from vlm_teacher.video import exact_copy_path, read_video

    cfg = BenchConfig(suite="grid:test", methods=["frozen"], out=tmp_path / "b", seeds=[0, 1], limit=2,
                      teacher_eval=False)
    assert run_bench(cfg, progress=False).failed == 0
    with open_store(cfg.out) as store:
        rows = store.rows()
    assert len(rows) == 4
    for r in rows:
        assert exact_copy_path(cfg.out / r["video_path"]).is_file()  # the grid verifier reads the exact pixels
        verdict = verify(suite.task(r["task_id"]), read_video(cfg.out / r["video_path"]))
        assert r["score"] == pytest.approx(verdict.score, abs=1e-9), r["task_id"]
        assert r["passed"] == int(verdict.passed)
    assert len({r["score"] for r in rows}) > 1  # the scores differ, so the check compares something
