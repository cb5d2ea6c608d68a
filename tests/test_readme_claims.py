"""README claims, each under a test: safetensors only (also when one component alone is a
pickle), bench's default models, resuming the demo and a TTO bench after kill -9, Ray
actors loading the models once, and the derandomised property tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlm_teacher.errors import UserError
from vlm_teacher.reasoner import load_reasoner

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _done_rows(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM results WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _live_claims(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_when(proc: subprocess.Popen, ready, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# ---------------------------------------------------------------- safetensors only

@pytest.mark.parametrize("component", ["vae", "text_encoder", "transformer"])
def test_one_pickled_component_is_refused_without_unpickling(tiny_wan_dir, tmp_path, monkeypatch, component):
    folder = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, folder)
    for st in list((folder / component).glob("*.safetensors")):
        torch.save(load_file(st), st.with_name("diffusion_pytorch_model.bin" if component != "text_encoder"
                                               else "pytorch_model.bin"))
        st.unlink()

    def refuse(*a, **k):
        raise AssertionError("torch.load was called: a pickle checkpoint was opened")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(UserError) as err:
        load_reasoner(folder)
    assert f"{component}/" in str(err.value) and "safetensors" in str(err.value)


# ---------------------------------------------------------------- bench defaults to the embedded models

def test_bench_defaults_to_the_embedded_models(tmp_path):
    from vlm_teacher.bench import model_id, open_store
    from vlm_teacher.cli import main
    from vlm_teacher.embedded import REASONER_DIR, TEACHER_DIR

    out = tmp_path / "b"
    assert main(["bench", "--suite", "grid:test", "--methods", "frozen", "--limit", "1", "--out", str(out),
                 "--quiet"]) == 0
    with open_store(out) as store:
        (row,) = store.rows()
    assert row["status"] == "done"
    assert row["extra"]["reasoner"] == model_id(REASONER_DIR)
    assert row["extra"]["eval_teacher"] == model_id(TEACHER_DIR)  # the teacher's judgement of the video
    run = json.loads((out / "bench.json").read_text())["runs"][-1]
    assert Path(run["reasoner"]) == REASONER_DIR and Path(run["teacher"]) == TEACHER_DIR


# ---------------------------------------------------------------- kill -9, then resume

@pytest.mark.slow
def test_kill_minus_nine_in_a_tto_instance_then_resume(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    """A TTO bench is killed while an instance is optimising; the re-run finishes exactly the missing
    instances and every stored video reads back."""
    from vlm_teacher.video import read_video

    out = tmp_path / "bench"
    argv = [sys.executable, "-m", "vlm_teacher", "bench", "--suite", "grid:test", "--methods", "tto_generic",
            "--seeds", "0-2", "--limit", "1", "--steps", "6", "--tau", "-1", "--k", "2", "--out", str(out),
            "--reasoner", str(tiny_wan_dir), "--teacher", str(tiny_qwen25_dir), "--no-teacher-eval", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    db = out / "results.sqlite"
    claimed_at: list[float] = []

    def mid_instance() -> bool:  # one row done, the next instance claimed and a moment into its steps
        if _done_rows(db) >= 1 and _live_claims(db) >= 1:
            claimed_at.append(claimed_at[0] if claimed_at else time.monotonic())
            return time.monotonic() - claimed_at[0] > 1.0
        return False

    _kill_when(proc, mid_instance)
    killed_at = _done_rows(db)
    assert 1 <= killed_at < 3
    resumed = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{killed_at} already done, {3 - killed_at} ran now (0 failed)" in resumed.stdout
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seed, status, attempts, steps, video_path FROM results").fetchall()
    assert sorted(r[0] for r in rows) == [0, 1, 2]
    assert all(r[1] == "done" and r[2] == 1 and r[3] == 6 for r in rows)
    for *_, video in rows:
        v = read_video(out / video)
        assert v.shape[0] == 9 and v.shape[-1] == 3 and v.std() > 0
    assert not [p for p in out.rglob(".*") if p.is_file() and p.suffix != ".sqlite-journal"], "temporary files left"


@pytest.mark.slow
def test_demo_resumes_after_kill_minus_nine(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    out = tmp_path / "demo"
    argv = [sys.executable, "-m", "vlm_teacher", "demo", "--out", str(out), "--tasks", "2", "--reasoner",
            str(tiny_wan_dir), "--teacher", str(tiny_qwen25_dir), "--steps", "2", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    db = out / "results.sqlite"
    _kill_when(proc, lambda: _done_rows(db) >= 1)
    killed_at = _done_rows(db)
    assert 1 <= killed_at < 4  # inside the first bench call (frozen + tto on 2 tasks)
    resumed = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"4 instances: {killed_at} already done, {4 - killed_at} ran now (0 failed)" in resumed.stdout
    assert "pass rate" in resumed.stdout and (out / "report.html").is_file()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT method, status, attempts FROM results").fetchall()
    # frozen and tto, then best_of_n and tto_oracle, on 2 tasks; none ran twice
    assert sorted({r[0] for r in rows}) == sorted(["frozen", "tto", "tto_oracle", next(r[0] for r in rows
                                                                                        if r[0].startswith("best_of_n"))])
    assert len(rows) == 8 and all(r[1] == "done" and r[2] == 1 for r in rows)


# ---------------------------------------------------------------- Ray actors load the models once

@pytest.mark.slow
def test_ray_actor_loads_the_models_once(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    import ray

    from vlm_teacher.bench import BenchConfig, run_bench

    cfg = BenchConfig(suite="grid:test", methods=["frozen", "tto_generic"], out=tmp_path / "ray", seeds=[0, 1],
                      limit=1, reasoner=tiny_wan_dir, teacher=tiny_qwen25_dir,
                      tto={"max_steps": 1, "num_frames_shown": 2}, teacher_eval=False)
    seen: list[tuple[int, int, int]] = []

    def models_of(worker):  # runs in the actor, after the instance dispatched before it
        ctx = worker.runner._ctx
        return os.getpid(), id(ctx.reasoner), id(ctx.teacher)

    def probe(actor, inst):  # an actor runs one call at a time: this waits for the instance just sent
        seen.append(ray.get(actor.__ray_call__.remote(models_of)))

    summary = run_bench(cfg, executor="ray", workers=1, progress=False, on_dispatch=probe, ray_init={"num_cpus": 1})
    assert (summary.ran, summary.failed) == (4, 0)
    assert len(seen) == 4 and all(s[1] and s[2] for s in seen)
    assert len(set(seen)) == 1, seen  # one actor process, the same reasoner and teacher objects throughout


# ---------------------------------------------------------------- property tests are derandomised

def test_hypothesis_runs_derandomised_by_default():
    from hypothesis import settings

    if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci":
        assert settings.default.derandomize is True and settings.default.database is None
