"""The benchmark scripts run end to end on small inputs and write their tables (no time is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_full_size_script_runs_at_tiny_size(tmp_path):
    out = tmp_path / "fs"
    _run("full_size.py", "--preset", "tiny", "--teachers", "qwen3-vl-tiny", "--sizes", "64x64", "--steps", "2",
         "--gen-repeats", "1", "--out", str(out))
    md = out.with_suffix(".md").read_text()
    assert "| teacher | size | F | K | Q |" in md and "step MFU" in md and "Command: `python benchmarks/full_size.py" in md
    data = json.loads(out.with_suffix(".json").read_text())
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["steps"] == 2 and len(row["step_all_s"]) == 2
    assert row["instance_s"] > 0 and row["gen_s"] > 0 and row["flops"]["step_total"] > 0
    assert data["switches"]["preview"] == "surrogate" and data["switches"]["share_prefix"] is True


@pytest.mark.slow
def test_analytic_script_reports_the_flop_floor(tmp_path):
    out = tmp_path / "an"
    _run("analytic.py", "--sizes", "832x480", "--teachers", "qwen3-vl-4b", "--out", str(out))
    data = json.loads(out.with_suffix(".json").read_text())
    (flop,) = data["flop_rows"]
    # the transformer alone bounds the ratio from below; the teacher and the preview only add
    assert 1.0 < flop["ratio_floor"] < flop["ratio_surrogate"] < flop["ratio_vae"]
    assert flop["language"] < flop["language_rows"]
    (mem,) = data["memory_rows"]
    assert mem["surrogate"] < mem["vae_ckpt"] < mem["vae_nockpt"]


@pytest.mark.slow
def test_grid_diagnostics_script_writes_its_four_tables(tmp_path):
    out = tmp_path / "diag"
    _run("grid_diagnostics.py", "--tasks", "1", "--seeds", "2", "--shifts", "2", "--steps", "4", "--out", str(out))
    md = out.with_suffix(".md").read_text()
    for heading in ("Oracle pass@2", "Teacher mean P(Yes)", "Sampler sweep", "Fit: tasks seen in training"):
        assert heading in md
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["task"] for r in data["rows"]] == ["maze-test-00000", "push-test-00000"]
    assert all(0 <= r["passed"] <= 2 and 0.0 <= r["best_score"] <= 1.0 for r in data["rows"])
    assert len(data["sampler"]) == 1 and len(data["fit"]) == 4


@pytest.mark.slow  # ~30 s: two test-time runs of up to 40 steps
def test_teacher_alignment_script_counts_against_the_verifier(tmp_path):
    out = tmp_path / "ta"
    _run("teacher_alignment.py", "--tasks", "2", "--lr", "2e-3", "--out", str(out))
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["task"] for r in data["rows"]] == ["maze-test-00000", "push-test-00000"]
    s = data["summary"]
    for r in data["rows"]:
        assert -1.0 <= r["cosine"] <= 1.0 and len(r["line"]) == 11
        assert r["hacked"] == (r["early_stop"] and not r["final_passed"])
        assert all(r["false_yes"].get(k, 0) <= n for k, n in r["verifier_no"].items())
        assert r["previews"] == r["updates"] + 1  # every update's preview is scored, and so is the last
    assert s["reward_hacking"] == sum(r["hacked"] for r in data["rows"]) and s["early_stops"] <= 2
    assert "false-Yes rate on loop previews" in out.with_suffix(".md").read_text()


def test_latent_attack_script_judges_every_point_by_the_verifier(tmp_path):
    from vlm_teacher.optimize import TTOConfig

    out = tmp_path / "la"
    _run("latent_attack.py", "--tasks", "1", "--steps", "2", "--step-size", "0.05", "--loop-updates", "1",
         "--out", str(out))
    data = json.loads(out.with_suffix(".json").read_text())
    rows, s, tau = data["rows"], data["summary"], TTOConfig().tau
    assert [r["task"] for r in rows] == ["maze-train-s7-00000", "push-train-s7-00000"]
    for r in rows:
        assert len(r["losses"]) == len(r["passed"]) == 3 and r["moved_rms"] > 0 and r["loop_rms_1"] > 0
        assert r["fooled"] == any(lo <= tau and not ok for lo, ok in zip(r["losses"], r["passed"]))
    assert s["fooled_within_steps"] == sum(r["fooled"] for r in rows) and s["loop_rms_1"] == [r["loop_rms_1"]
                                                                                               for r in rows]


def test_extra_agent_places_reads_where_a_second_agent_stands():
    """A ground-truth video has no frame with two agents; a copy of the agent square painted on an
    off-path floor cell, or left behind on the previous cell, is named as such."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from grid_diagnostics import extra_agent_places

    from vlm_teacher.suites.grid import grid_tasks
    from vlm_teacher.suites.grid.render import CELL, OBJECT
    from vlm_teacher.video import to_float

    task = grid_tasks("test", n=1, families=("maze",))[0]
    path = [s.agent for s in task.states()]
    state = task.state
    off = next((r, c) for r in range(state.n) for c in range(state.n)
               if state.is_open((r, c)) and (r, c) not in path and state.target_at((r, c)) is None)
    m = (CELL - OBJECT) // 2

    def with_agent_at(cell, frame):
        video = task.video().copy()
        (r0, c0), (r1, c1) = path[frame], cell
        video[frame, r1 * CELL + m:r1 * CELL + m + OBJECT, c1 * CELL + m:c1 * CELL + m + OBJECT] = \
            video[frame, r0 * CELL + m:r0 * CELL + m + OBJECT, c0 * CELL + m:c0 * CELL + m + OBJECT]
        return to_float(video)

    assert extra_agent_places(task, to_float(task.video())) is None
    assert extra_agent_places(task, with_agent_at(off, 2)) == ("right cell", "off the path")
    assert extra_agent_places(task, with_agent_at(path[1], 2)) == ("right cell", "previous cell")
    assert extra_agent_places(task, with_agent_at(path[3], 2)) == ("right cell", "later on the path")


def test_grid_vae_roundtrip_writes_its_table(tmp_path, tiny_wan_dir):
    _run("grid_vae_roundtrip.py", "--reasoner", str(tiny_wan_dir), "--splits", "test", "--tasks", "1",
         "--out-dir", str(tmp_path))
    md = (tmp_path / "grid_vae_roundtrip.md").read_text()
    assert "| test | 2 |" in md and "Command: `python benchmarks/grid_vae_roundtrip.py --reasoner" in md
    rows = json.loads((tmp_path / "grid_vae_roundtrip.json").read_text())["rows"]
    assert rows[0]["tasks"] == 2 and 0.0 <= rows[0]["pass"] <= 1.0


def test_grid_validation_script_uses_tasks_the_recipe_never_trains_on(tmp_path, tiny_wan_dir):
    """Its tasks start at the recipe's --train-tasks (800 by default), so choosing between runs with it
    never looks at grid:test or at a training task; it counts every task and names the broken rules."""
    import argparse

    from vlm_teacher.recipes.grid_reasoner import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--out", "x"]).train_tasks == 800
    _run("grid_validation.py", str(tiny_wan_dir), "--tasks", "1", "--out", str(tmp_path / "val"))
    rows = json.loads((tmp_path / "val.json").read_text())["rows"]
    assert rows[0]["tasks"] == 2 and 0.0 <= rows[0]["pass_rate"] <= 1.0
    assert json.loads((tmp_path / "val.json").read_text())["start"] == 800
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from grid_validation import first_rule

    assert first_rule("frame 1: 2 agents visible (expected exactly 1)") == "2 agents visible"
    assert first_rule("frame 3: cell (4,5) centre has an unknown colour rgb(1,2,3)") == "unknown colour"


def test_grid_preview_table_counts_only_tasks_every_method_covers():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from grid_preview_table import table

    def row(task, method, passed, preview):
        return {"status": "done", "suite": "grid:test", "task_id": task, "method": method, "seed": 0,
                "passed": passed, "score": 1.0 if passed else 0.5, "steps": 0, "seconds": 1.0,
                "extra": {"method_extra": {"preview_passed": preview, "preview_score": 1.0 if preview else 0.5}}}

    rows = [row("a", "frozen", 0, 0), row("b", "frozen", 1, 0), row("c", "frozen", 0, 0),
            row("a", "tto", 1, 1), row("b", "tto", 1, 1)]
    got = {r["method"]: r for r in table(rows, ["frozen", "tto"])}
    assert got["frozen"]["tasks"] == got["tto"]["tasks"] == 2  # task c has no tto row
    assert got["frozen"]["final_pass"] == 0.5 and got["frozen"]["preview_pass"] == 0.0
    assert got["frozen"]["agree"] == 0.5 and got["tto"]["agree"] == 1.0


@pytest.mark.slow
def test_video_encoding_script_compares_verdicts_after_an_mp4_round_trip(tmp_path):
    _run("video_encoding.py", "--tasks", "1", "--out-dir", str(tmp_path))
    rows = {r["kind"]: r for r in json.loads((tmp_path / "video_encoding.json").read_text())["rows"]}
    assert rows["ground truth"]["videos"] == 2 and rows["ground truth"]["passed"] == 2
    assert rows["corrupt: jump"]["passed"] == 0 and "yuv420p flips" in rows["ground truth"]
