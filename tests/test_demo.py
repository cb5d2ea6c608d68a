"""`vlm-teacher demo` end to end on tiny random models (the embedded ones are tested by
the recipes' tests): four methods on held-out grid tasks, a table, a report, resumable."""

from __future__ import annotations

import json

import pytest

from vlm_teacher.cli import main
from vlm_teacher.cli.demo import matched_n, matching_note
from vlm_teacher.testing.browser import assert_report_renders


def test_matched_n_follows_the_wall_time_ratio():
    rows = [{"method": "frozen", "status": "done", "seconds": 2.0}, {"method": "tto", "status": "done", "seconds": 9.0}]
    assert matched_n(rows) == 4  # round(9 / 2) = 4 (banker's rounding of 4.5)
    rows[1]["seconds"] = 1.0
    assert matched_n(rows) == 2  # at least two candidates
    rows[1]["seconds"] = 1000.0
    assert matched_n(rows) == 16  # capped


def test_the_demo_says_when_best_of_n_could_not_match_tto():
    rows = [{"method": "frozen", "status": "done", "seconds": 2.0}, {"method": "tto", "status": "done", "seconds": 9.0}]
    assert "matched to TTO's wall time (4.5x" in matching_note(rows, matched_n(rows))
    rows[1]["seconds"] = 140.0
    assert "capped at 16; TTO took 70x" in matching_note(rows, matched_n(rows))
    rows[1]["seconds"] = 1.0
    assert "at least 2 candidates" in matching_note(rows, matched_n(rows))


@pytest.mark.slow
def test_demo_runs_and_resumes(tmp_path, capsys, tiny_wan_dir, tiny_qwen25_dir):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--tasks", "2", "--reasoner", str(tiny_wan_dir), "--teacher",
            str(tiny_qwen25_dir), "--steps", "2", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    n = json.loads((out / "demo.json").read_text())["best_of_n"]
    table = text[text.index("pass rate"):]
    for method in ("frozen", f"best_of_n:{n}", "tto", "tto_oracle"):
        assert method in table
    assert (out / "report.html").is_file()
    videos = sorted((out / "runs").rglob("video.mp4"))
    assert len(videos) == 2 * 4
    assert_report_renders(out / "report.html", videos=2 * 4)  # real outputs in a real browser
    mtimes = [v.stat().st_mtime_ns for v in videos]
    # a second call finds everything done: nothing re-runs, the same table is printed
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "8 already done, 0 ran now" in again
    assert again[again.index("pass rate"):] == table
    assert [v.stat().st_mtime_ns for v in sorted((out / "runs").rglob("video.mp4"))] == mtimes
