"""The HTML report in a real browser (headless Chromium from Debian's packages): tables
and plots render, and every gallery video plays. Skipped only where no Chromium is
installed; CI (.ci/run) installs it and makes a missing browser a failure."""

from __future__ import annotations

import json

import numpy as np

from vlm_teacher.bench import open_store
from vlm_teacher.report import write_report
from vlm_teacher.suites import load_suite
from vlm_teacher.suites.grid import corrupt
from vlm_teacher.testing.browser import assert_report_renders
from vlm_teacher.video import write_video


def test_report_renders_and_its_videos_play_in_chromium(tmp_path):
    """Two grid tasks: frozen made a video that jumps, tto the solution; the videos are written
    and scored as bench does. In Chromium: tables, plots and filmstrips show, each video plays."""
    suite = load_suite("grid:test")
    out = tmp_path / "bench"
    with open_store(out) as store:
        for i, task_id in enumerate(suite.ids()[:2]):
            grid_task = suite._tasks[task_id]
            good = grid_task.video()
            for method, video in (("frozen", corrupt(grid_task, good, "jump", np.random.default_rng(i))), ("tto", good)):
                run = out / "runs" / method / task_id
                write_video(run / "video.mp4", video, exact=True)
                (run / "history.json").write_text(json.dumps({"history": [
                    {"step": s, "loss": 1.0 / s, "p_yes": [0.3 * s, 0.2 * s]} for s in range(1, 3 + i)]}))
                scored = suite.score(suite.task(task_id), video, 8, out, method)
                store.put({"suite": suite.name, "task_id": task_id, "method": method, "seed": 0, "config_hash": "h",
                           "status": "done", "score": scored.score, "passed": int(scored.passed), "steps": 2,
                           "seconds": 1.0, "video_path": f"runs/{method}/{task_id}/video.mp4",
                           "history_path": f"runs/{method}/{task_id}/history.json" if method == "tto" else None,
                           "extra": {"group": suite.name, "score_details": scored.details}})
    found = assert_report_renders(write_report(out), videos=4)
    images = [i["src"] for i in found["images"]]
    assert any("loss_per_step" in i for i in images) and any("p_yes_" in i for i in images)
    assert sum("/strips/" in i for i in images) == 4
    assert "jump: frame" in found["text"] and "agent jumped" in found["text"]
