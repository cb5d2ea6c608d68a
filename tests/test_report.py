"""The report on a store written here: the paper-shaped tables, the per-step curves,
the teacher-accuracy scatter (two teachers) and the gallery."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vlm_teacher.bench import open_store
from vlm_teacher.errors import UserError
from vlm_teacher.report import markdown_report, tables, teacher_points, write_report
from vlm_teacher.video import write_video


def _row(task, method, score, *, teacher=None, hash_="h0", seconds=1.0, steps=0, agree=None, status="done",
         video=None, history=None):
    extra = {"group": "grid:test", "teacher": teacher if method != "frozen" else None,
             "eval_teacher": teacher}
    if agree is not None:
        extra["teacher_eval"] = {"p_yes": 0.7 if agree else 0.2, "agree": agree, "passed": score >= 1}
    return {"suite": "grid:test", "task_id": task, "method": method, "seed": 0, "config_hash": hash_,
            "status": status, "score": score if status == "done" else None,
            "passed": int(score >= 1) if status == "done" else None, "steps": steps, "seconds": seconds,
            "reasoner_calls": 4 + steps, "teacher_calls": steps, "peak_mem_mb": 100.0 + steps,
            "video_path": video, "history_path": history, "extra": extra,
            "error": None if status == "done" else "boom"}


@pytest.fixture
def bench_dir(tmp_path):
    out = tmp_path / "bench"
    video = np.zeros((5, 16, 16, 3), np.uint8)
    rows = []
    for t, task in enumerate(["maze-test-00000", "push-test-00000"]):
        vid = f"runs/{task}.mp4"
        write_video(out / vid, video)
        rows.append(_row(task, "frozen", 0.25, teacher="qwen-a", hash_="fa", video=vid, agree=True))
        rows.append(_row(task, "frozen", 0.25, teacher="qwen-b", hash_="fb", video=vid, agree=False))
        for teacher, h, score, agree in (("qwen-a", "ta", 1.0, True), ("qwen-b", "tb", 0.5, False)):
            hist = f"runs/{task}-{teacher}.json"
            (out / hist).write_text(json.dumps({"history": [
                {"step": 1, "loss": 2.0, "p_yes": [0.1, 0.2, 0.3]},
                {"step": 2, "loss": 1.0 + t, "p_yes": [0.4, 0.5, 0.6]}]}))
            rows.append(_row(task, "tto", score, teacher=teacher, hash_=h, seconds=10.0, steps=2, agree=agree,
                             video=vid, history=hist))
        rows.append(_row(task, "tto_lam1", 0.75, teacher="qwen-a", hash_="l1", seconds=8.0, steps=2, history=hist))
    rows.append(_row("maze-test-00001", "tto_lam1", 0.0, teacher="qwen-a", hash_="l1", status="failed"))
    with open_store(out) as store:
        for r in rows:
            store.put(r)
    return out


def test_tables_group_methods_and_teachers(bench_dir):
    from vlm_teacher.report import load_rows

    t = tables(load_rows(bench_dir))
    assert t["groups"] == ["grid:test"]
    # one method under two configurations is split by teacher, frozen first, ablations last
    assert t["labels"] == ["frozen [qwen-a]", "frozen [qwen-b]", "tto [qwen-a]", "tto [qwen-b]", "tto_lam1"]
    c = t["cells"][("tto [qwen-a]", "grid:test")]
    assert (c["n"], c["score"], c["pass_rate"], c["steps"], c["seconds"], c["reasoner_calls"]) == (2, 1.0, 1.0, 2, 10, 6)
    lam1 = t["cells"][("tto_lam1", "grid:test")]
    assert (lam1["n"], lam1["failed"], lam1["score"]) == (3, 1, 0.75)  # the failed row is counted, not averaged
    # ablations are compared with tto of the same teacher
    delta = {a["label"]: a["cells"]["grid:test"]["delta"] for a in t["ablations"]}
    assert delta["tto_lam1"] == pytest.approx(0.75 - 1.0) and delta["tto [qwen-a]"] is None


def test_ablation_change_is_paired_on_the_tasks_both_ran():
    """An ablation run on a subset is compared with tto on that subset, not with
    tto's mean over every task (which would credit the subset's difficulty)."""
    from vlm_teacher.report import paired_delta

    tto = [_row("a", "tto", 1.0), _row("b", "tto", 0.2), _row("c", "tto", 0.2)]
    lam1 = [_row("a", "tto_lam1", 0.9), _row("d", "tto_lam1", 0.0), _row("b", "tto_lam1", 0.0, status="failed")]
    assert paired_delta(lam1, tto) == pytest.approx(-0.1)  # only task a is shared and finished
    assert paired_delta(lam1, []) is None
    t = tables([*tto, *lam1])
    assert {a["label"]: a["cells"]["grid:test"]["delta"] for a in t["ablations"]}["tto_lam1"] == pytest.approx(-0.1)


def test_teacher_accuracy_against_gain(bench_dir):
    from vlm_teacher.report import label_rows, load_rows

    points = {p["teacher"]: p for p in teacher_points(label_rows(load_rows(bench_dir)))}
    assert points["qwen-a"]["accuracy"] == 1.0 and points["qwen-a"]["gain"] == pytest.approx(0.75)
    assert points["qwen-b"]["accuracy"] == 0.0 and points["qwen-b"]["gain"] == pytest.approx(0.25)


def test_html_report_has_tables_curves_scatter_and_gallery(bench_dir):
    path = write_report(bench_dir)
    text = path.read_text()
    for needle in ("Main table", "cost accounting", "Ablations", "goal query only (lambda = 1)",
                   "Teacher accuracy vs gain", "Video gallery", "1.000 (10.0 s)"):
        assert needle in text, needle
    images = re.findall(r"<img src='([^']+)'", text)
    assert any("loss_per_step" in i for i in images) and any("teacher_accuracy_vs_gain" in i for i in images)
    assert sum("p_yes_" in i for i in images) == 3  # one per TTO variant
    for src in images + re.findall(r"<video src='([^']+)'", text):
        f = bench_dir / src
        assert f.is_file() and f.stat().st_size > 0, src
    assert all((bench_dir / i).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert text.count("<video") == 2 * 4  # 2 tasks x (2 frozen + 2 tto) with videos


def test_markdown_tables(bench_dir):
    md = markdown_report(bench_dir, title="grid")
    assert md.startswith("# grid\n")
    assert "| tto [qwen-a] | 1.000 (10.0 s) |" in md
    assert "| tto_lam1 | goal query only (lambda = 1) | 0.750 (-0.250), 2.0 steps, 8.0 s |" in md
    assert "### Teacher accuracy vs gain" in md


def test_missing_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no results.sqlite"):
        write_report(tmp_path)


def test_report_command_writes_the_markdown_tables(bench_dir, tmp_path, capsys):
    """`vlm-teacher report DIR --markdown FILE` (README): the HTML report and the markdown tables."""
    from vlm_teacher.cli import main

    md = tmp_path / "tables.md"
    assert main(["report", str(bench_dir), "--markdown", str(md)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {md}" in printed and (bench_dir / "report.html").is_file()
    text = md.read_text()
    assert "| tto [qwen-a] | 1.000 (10.0 s) |" in text and "| tto [qwen-b] | 0.500 (10.0 s) |" in text
    assert "### Teacher accuracy vs gain" in text


def _history_store(tmp_path, histories, queries=None, method="tto"):
    """A store of ``method`` rows, one per (task, history entries)."""
    out = tmp_path / "hist"
    with open_store(out) as store:
        for task, hist in histories.items():
            path = f"runs/{task}.json"
            (out / "runs").mkdir(parents=True, exist_ok=True)
            (out / path).write_text(json.dumps({"queries": (queries or {}).get(task), "history": hist}))
            store.put(_row(task, method, 0.5, steps=len(hist), history=path))
    return out


def test_mean_loss_keeps_a_stopped_tasks_last_value(tmp_path):
    """Task a stops at step 2 (loss 0.2), task b runs on with falling losses: the mean falls
    at every step (it jumped up when a dropped out), and n per step says who still runs."""
    from vlm_teacher.report import label_rows, load_rows, step_curves

    out = _history_store(tmp_path, {
        "a": [{"step": 1, "loss": 0.6}, {"step": 2, "loss": 0.2}],
        "b": [{"step": s, "loss": 1.1 - 0.1 * s} for s in (1, 2, 3, 4)]})
    c = step_curves(out, label_rows(load_rows(out)))["tto"]
    assert c["steps"] == [1, 2, 3, 4] and c["running"] == [2, 2, 1, 1] and c["instances"] == 2
    assert c["loss"] == pytest.approx([0.8, 0.55, 0.5, 0.45])
    assert sorted(len(loss) for _, loss in c["per_task"]) == [2, 4]


def test_p_yes_is_averaged_per_question_type_not_per_position(tmp_path):
    """A maze task asks (goal, moves, intact), a push task (goal, moves, box, intact): the
    third P(Yes) is intact for one and box for the other, so positions must not be averaged."""
    from vlm_teacher.report import label_rows, load_rows, step_curves
    from vlm_teacher.suites.grid import grid_tasks
    from vlm_teacher.suites.grid.questions import grid_queries

    maze = next(t for t in grid_tasks("test") if t.family == "maze")
    push = next(t for t in grid_tasks("test") if t.family == "push")
    out = _history_store(tmp_path, {
        maze.id: [{"step": 1, "loss": 1.0, "p_yes": [0.1, 0.2, 0.3]}],
        push.id: [{"step": 1, "loss": 1.0, "p_yes": [0.5, 0.6, 0.7, 0.9]}]},
        queries={t.id: grid_queries(t).to_dict() for t in (maze, push)})
    p_yes = step_curves(out, label_rows(load_rows(out)))["tto"]["p_yes"]
    assert set(p_yes) == {"goal", "moves", "box", "intact"}
    means = {k: (v[1][0], v[2]) for k, v in p_yes.items()}
    assert means["goal"] == (pytest.approx(0.3), 2) and means["moves"] == (pytest.approx(0.4), 2)
    assert means["box"] == (pytest.approx(0.7), 1) and means["intact"] == (pytest.approx(0.6), 2)


def test_a_report_without_curves_says_why(tmp_path):
    out = tmp_path / "frozen_only"
    with open_store(out) as store:
        store.put(_row("maze-test-00000", "frozen", 0.25))
    text = write_report(out).read_text()
    assert "No per-step curves: no tto rows here" in text
    assert "No videos: no finished row points to a video file" in text


def test_grid_score_details_name_the_first_broken_rule_and_its_frame():
    from vlm_teacher.suites import load_suite
    from vlm_teacher.suites.grid import corrupt

    suite = load_suite("grid:test")
    task = suite.task(suite.ids()[0])
    video = corrupt(suite._tasks[task.id], suite._tasks[task.id].video(), "jump", np.random.default_rng(0))
    details = suite.score(task, video, 8, None, "x").details
    assert details["first_failure"]["rule"] == "jump" and details["reason"].startswith(
        f"frame {details['first_failure']['frame']}: agent jumped")


def test_filmstrip_shows_every_frame_and_outlines_the_marked_one():
    from vlm_teacher.report import filmstrip

    video = np.full((9, 48, 48, 3), 255, np.uint8)
    strip = filmstrip(video, marked=3, height=48)
    gap = 6
    assert strip.shape[1] == 9 * (48 + gap) + gap
    red = (strip[..., 0] > 200) & (strip[..., 1] < 80) & (strip[..., 2] < 80)
    cols = np.flatnonzero(red.any(axis=0))
    x3 = gap + 3 * (48 + gap)
    assert cols.min() >= x3 - 4 and cols.max() <= x3 + 48 + 3  # only around frame 3
    long = filmstrip(np.zeros((81, 16, 16, 3), np.uint8), marked=40, height=16, max_frames=8)
    assert long.shape[1] == 9 * (16 + gap) + gap  # 8 spread evenly + the marked one
