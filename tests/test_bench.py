"""`vlm-teacher bench`: one row per (task, method, seed), resumable (also after kill -9),
failures recorded, the VBVR and RULER suites on fixtures written here (RULER judged by
a real HTTP server on loopback), and Ray workers giving the same rows as local."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_teacher.bench import BenchConfig, import_vbvr_results, model_id, open_store, plan, run_bench
from vlm_teacher.cli import main
from vlm_teacher.errors import UserError

TTO_SMALL = {"max_steps": 1, "num_frames_shown": 2}


def _cfg(out, wan, qwen, **kw) -> BenchConfig:
    base = dict(suite="grid:test", methods=["frozen", "tto_generic"], out=out, seeds=[0], limit=2,
                reasoner=wan, teacher=qwen, tto=dict(TTO_SMALL))
    base.update(kw)
    return BenchConfig(**base)


def _keys(rows):
    return sorted((r["suite"], r["task_id"], r["method"], r["seed"], r["config_hash"]) for r in rows)


# ------------------------------------------------------------------ grid, local
@pytest.fixture(scope="module")
def grid_bench(tmp_path_factory, tiny_wan_dir, tiny_qwen25_dir):
    out = tmp_path_factory.mktemp("bench") / "grid"
    cfg = _cfg(out, tiny_wan_dir, tiny_qwen25_dir)
    summary = run_bench(cfg, progress=False)
    return cfg, summary


def test_local_bench_writes_one_row_per_key(grid_bench):
    cfg, summary = grid_bench
    assert (summary.total, summary.already_done, summary.ran, summary.failed) == (4, 0, 4, 0)
    with open_store(cfg.out) as store:
        rows = store.rows()
    assert _keys(rows) == sorted(tuple(i.key) for i in plan(cfg))
    assert {r["task_id"] for r in rows} == {"maze-test-00000", "push-test-00000"}  # families interleaved
    for r in rows:
        assert r["status"] == "done" and r["attempts"] == 1
        assert r["score"] is not None and 0.0 <= r["score"] <= 1.0 and r["passed"] in (0, 1)
        assert r["seconds"] > 0 and r["reasoner_calls"] >= 4 and r["peak_mem_mb"] > 0
        run_dir = cfg.out / r["extra"]["run_dir"]
        assert (cfg.out / r["video_path"]).is_file() and (cfg.out / r["history_path"]).is_file()
        assert run_dir.parts[-3:-1] == (r["method"], r["task_id"]) and run_dir.name.startswith("seed0-")
        hist = json.loads((cfg.out / r["history_path"]).read_text())
        assert hist["steps"] == r["steps"] and hist["cost"]["reasoner_calls"] == r["reasoner_calls"]
        assert r["extra"]["group"] == "grid:test"
        ev = r["extra"]["teacher_eval"]  # the teacher's judgement of the final video, for teacher accuracy
        assert 0.0 <= ev["p_yes"] <= 1.0 and ev["agree"] == ((ev["p_yes"] > 0.5) == bool(r["passed"]))
    tto = [r for r in rows if r["method"] == "tto_generic"]
    # one step (the random teacher's loss stays above tau), and its update scored before the video
    assert all(r["steps"] == 1 and r["teacher_calls"] == 2 and (Path(cfg.out) / r["extra"]["run_dir"] /
               "queries.json").is_file() for r in tto)
    assert all(r["teacher_calls"] == 0 and r["extra"]["teacher"] is None for r in rows if r["method"] == "frozen")
    # the teacher is named by folder and content hash: retrained weights in the same folder stay apart
    assert all(r["extra"]["teacher"] == model_id(cfg.teacher) and r["extra"]["teacher"].startswith(cfg.teacher.name + "-")
               for r in tto)


def test_second_run_reruns_nothing(grid_bench):
    cfg, _ = grid_bench
    with open_store(cfg.out) as store:
        before = {_k(r): r["created_at"] for r in store.rows()}
    summary = run_bench(cfg, progress=False)
    assert (summary.already_done, summary.ran) == (4, 0)
    with open_store(cfg.out) as store:
        rows = store.rows()
    assert len(rows) == 4 and all(r["attempts"] == 1 for r in rows)
    assert {_k(r): r["created_at"] for r in rows} == before


def _k(r):
    return (r["suite"], r["task_id"], r["method"], r["seed"], r["config_hash"])


def test_other_settings_make_new_rows_not_overwrites(grid_bench, tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    cfg, _ = grid_bench
    other = _cfg(cfg.out, tiny_wan_dir, tiny_qwen25_dir, tto={**TTO_SMALL, "lr": 1e-3})
    old, new = plan(cfg), plan(other)
    # frozen ignores the optimisation settings; the TTO rows get a new config hash
    assert {i.key for i in old if i.method == "frozen"} == {i.key for i in new if i.method == "frozen"}
    tto_old = {i.key.config_hash for i in old if i.method != "frozen"}
    tto_new = {i.key.config_hash for i in new if i.method != "frozen"}
    assert tto_old.isdisjoint(tto_new)
    # another teacher: new TTO rows, while the teacher-free frozen rows are shared
    other_teacher = tmp_path / "qwen-b"
    shutil.copytree(tiny_qwen25_dir, other_teacher)
    cfg_json = other_teacher / "config.json"
    cfg_json.write_text(cfg_json.read_text().replace("\n", "\n "))  # any change to the folder's files
    third = plan(_cfg(cfg.out, tiny_wan_dir, other_teacher))
    assert {i.key for i in old if i.method == "frozen"} == {i.key for i in third if i.method == "frozen"}
    assert tto_old.isdisjoint({i.key.config_hash for i in third if i.method != "frozen"})


def test_bad_input_is_one_line(tmp_path, capsys, tiny_wan_dir, tiny_qwen25_dir):
    common = ["--out", str(tmp_path / "b"), "--reasoner", str(tiny_wan_dir), "--teacher", str(tiny_qwen25_dir)]
    for argv, match in (
        (["--suite", "grid:nope", "--methods", "frozen"], "unknown grid split"),
        (["--suite", "grid:test", "--methods", "frozen,wat"], "unknown method 'wat'"),
        (["--suite", "grid:test", "--methods", "frozen", "--seeds", "a"], "bad --seeds"),
        (["--suite", "vbvr", "--methods", "frozen"], "needs the dataset folder"),
        (["--suite", "nope:x", "--methods", "frozen"], "unknown suite"),
        (["--suite", "grid:test", "--methods", "frozen", "--workers", "2"], "--workers is for --executor ray"),
    ):
        assert main(["bench", *argv, *common, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and match in err and "\n" not in err


# ------------------------------------------------------------------ VBVR (+ a failing instance)
def _png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _write_vbvr(root: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [("In-Domain_50", "G-1_object_trajectory_data-generator", "00000"),
               ("Out-of-Domain_50", "G-47_example_task_data-generator", "00001"),
               ("In-Domain_50", "G-1_object_trajectory_data-generator", "00002")]
    entries = []
    for k, (split, task, idx) in enumerate(samples):
        rel = f"{split}/{task}/{idx}"
        image = "!!! not base64 !!!" if k == 2 else _png_b64(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        entries.append({"id": k, "prompt": f"Move the dot along path {k}.", "first_image": image,
                        "first_frame_path": f"{rel}/first_frame.png", "final_frame_path": f"{rel}/final_frame.png",
                        "ground_truth_video_path": f"{rel}/ground_truth.mp4"})
    root.mkdir(parents=True)
    (root / "VBVR-Bench.json").write_text(json.dumps(entries))


def test_vbvr_submission_layout_a_failing_instance_and_imported_scores(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    data = tmp_path / "vbvr"
    _write_vbvr(data)
    out = tmp_path / "bench"
    cfg = _cfg(out, tiny_wan_dir, tiny_qwen25_dir, suite=f"vbvr:{data}", methods=["frozen"], limit=None)
    with pytest.raises(UserError, match="verifier"):  # no ground-truth scorer for the oracle here
        plan(_cfg(out, tiny_wan_dir, tiny_qwen25_dir, suite=f"vbvr:{data}", methods=["oracle_pass_at_n:2"]))
    summary = run_bench(cfg, progress=False)
    assert (summary.total, summary.ran, summary.failed) == (3, 3, 1)
    with open_store(out) as store:
        rows = {r["task_id"]: r for r in store.rows()}
    bad = rows["In-Domain_50/G-1_object_trajectory_data-generator/00002"]
    assert bad["status"] == "failed" and "base64" in bad["error"] and "\n" not in bad["error"]
    good = [r for k, r in rows.items() if r["status"] == "done"]
    assert len(good) == 2
    for r in good:
        assert r["score"] is None  # scored by the official kit, not here
        split, task, idx = r["task_id"].split("/")
        run = r["extra"]["run_name"]
        assert Path(r["extra"]["score_details"]["submission"]) == out / "vbvr_submission" / run / split / task / f"{idx}.mp4"
        assert (out / "vbvr_submission" / run / split / task / f"{idx}.mp4").is_file()
    assert {r["extra"]["group"] for r in good} == {"vbvr:In_Domain", "vbvr:Out_of_Domain"}
    # the failed row counts as done on resume (deterministic failures are not re-run)...
    assert run_bench(cfg, progress=False).ran == 0
    # ... unless asked; it fails the same way, still one row
    cfg.retry_failed = True
    again = run_bench(cfg, progress=False)
    assert (again.ran, again.failed) == (1, 1)
    with open_store(out) as store:
        assert len(store) == 3 and store.get(bad)["attempts"] == 2
    # the official kit's results come back into the rows
    run = good[0]["extra"]["run_name"]
    samples = [{"folder": r["task_id"].split("/")[0], "task_name": r["task_id"].split("/")[1],
                "video_file": r["task_id"].split("/")[2] + ".mp4", "score": 0.25 + i / 2} for i, r in enumerate(good)]
    results = tmp_path / "eval"
    results.mkdir()
    (results / f"{run}_vbvr_results.json").write_text(json.dumps({"samples": samples}))
    assert import_vbvr_results(out, results) == 2
    with open_store(out) as store:
        assert sorted(r["score"] for r in store.rows(status="done")) == [0.25, 0.75]


# ------------------------------------------------------------------ RULER with a loopback judge
@pytest.fixture
def judge_server():
    state: dict = {"reply": "", "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"] += 1
            state["last"] = body
            data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                     "content": state["reply"]}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield state
    srv.shutdown()
    srv.server_close()


def _write_ruler(root: Path) -> None:
    (root / "media").mkdir(parents=True)
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(root / "media" / "cube.png")
    records = [
        {"task_name": "physics", "index": 0, "category": "science", "prompt": "Drop a ball onto the floor.",
         "checklist": [{"Rule Coherence": "Does the ball fall down?"}, {"Visual Fidelity": "Is it sharp?"}]},
        {"task_name": "color", "index": 3, "category": "vision rule", "prompt": "Paint the cube red.",
         "input_image_path": "media/cube.png",
         "checklist": [{"Visual Consistency": "Same cube?"}, {"Rule Coherence": "Red at the end?"}]},
        {"task_name": "chess", "index": 0, "category": "game", "prompt": "Play e4.",
         "checklist": [{"Rule Coherence": "Legal move?"}]},
    ]
    (root / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_ruler_judged_through_a_loopback_endpoint(tmp_path, judge_server, monkeypatch, tiny_wan_dir, tiny_qwen25_dir):
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-loopback")
    data = tmp_path / "ruler"
    _write_ruler(data)
    out = tmp_path / "bench"
    judge = {"base_url": judge_server["url"], "model": "judge-1", "api_key_env": "TEST_JUDGE_KEY", "retries": 0,
             "retry_wait_s": 0, "timeout_s": 10}
    cfg = _cfg(out, tiny_wan_dir, tiny_qwen25_dir, suite=f"ruler:{data}", methods=["frozen"], limit=None, judge=judge)
    judge_server["reply"] = "no labels here"  # the judge answers garbage: rows stay unscored
    summary = run_bench(cfg, progress=False)
    assert (summary.total, summary.ran, summary.failed) == (2, 2, 0)  # the game task is dropped, as in the paper
    with open_store(out) as store:
        rows = store.rows()
    assert all(r["status"] == "done" and r["score"] is None and "judge_error" in r["extra"]["score_details"]
               for r in rows)
    # a working judge: the next run re-judges the saved videos without generating them again
    judge_server["reply"] = '<think>ok</think><answer>["Good", "Medium"]</answer>'
    summary = run_bench(cfg, progress=False)
    assert (summary.ran, summary.rejudged) == (0, 2)
    with open_store(out) as store:
        rows = {r["task_id"]: r for r in store.rows()}
    # Good/Medium/Poor = 2/1/0, mean per dimension (0 without items), x 50, averaged over the dimensions
    assert rows["physics/0"]["score"] == pytest.approx(50 * (0 + 0 + 1 + 2) / 4)   # IF, VC, VF=Medium, RC=Good
    assert rows["color/3"]["score"] == pytest.approx(50 * (2 + 0 + 1) / 3)          # vision rule: no IF; VC, VF, RC
    for r in rows.values():
        run = r["extra"]["run_name"]
        name, index = r["task_id"].split("/")
        assert (out / "ruler_submission" / run / name / f"{index}.mp4").is_file()
        saved = json.loads((out / "ruler_eval" / run / name / f"{index}.json").read_text())
        assert saved["eval_results"] == ["Good", "Medium"] and saved["judge_model"] == "judge-1"
    assert judge_server["last"]["model"] == "judge-1"


# ------------------------------------------------------------------ kill -9, then resume
def _done_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_kill_minus_nine_then_resume_gives_one_row_per_key(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    out = tmp_path / "bench"
    argv = [sys.executable, "-m", "vlm_teacher", "bench", "--suite", "grid:test", "--methods", "frozen",
            "--seeds", "0-2", "--limit", "3", "--out", str(out), "--reasoner", str(tiny_wan_dir),
            "--teacher", str(tiny_qwen25_dir), "--no-teacher-eval", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    db = out / "results.sqlite"
    deadline = time.monotonic() + 240
    while _done_rows(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _done_rows(db)
    assert 2 <= killed_at < 9
    resumed = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{killed_at} already done, {9 - killed_at} ran now (0 failed)" in resumed.stdout
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT task_id, method, seed, status, attempts FROM results").fetchall()
    assert len(rows) == 9 and len({r[:3] for r in rows}) == 9
    assert all(r[3] == "done" and r[4] == 1 for r in rows)  # nothing ran twice


# ------------------------------------------------------------------ Ray
@pytest.mark.slow
def test_ray_workers_give_the_same_rows_as_local_and_survive_a_dead_worker(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    import ray

    methods = ["frozen", "oracle_pass_at_n:2", "tto_generic"]
    local = _cfg(tmp_path / "local", tiny_wan_dir, tiny_qwen25_dir, methods=methods)
    remote = _cfg(tmp_path / "ray", tiny_wan_dir, tiny_qwen25_dir, methods=methods)
    run_bench(local, progress=False)
    killed = []

    def kill_first(actor, inst):  # the first actor dies while running its instance: it must be retried
        if not killed:
            killed.append(inst.key)
            ray.kill(actor, no_restart=True)

    summary = run_bench(remote, executor="ray", workers=2, progress=False, on_dispatch=kill_first,
                        ray_init={"num_cpus": 2})
    assert (summary.ran, summary.failed) == (6, 0) and killed
    assert not ray.is_initialized()  # the bench shut down the Ray it started

    def table(cfg):
        with open_store(cfg.out) as store:
            return sorted((r["task_id"], r["method"], r["seed"], r["config_hash"], r["status"], r["steps"],
                           round(r["score"], 6)) for r in store.rows())

    assert table(remote) == table(local)
    with open_store(remote.out) as store:
        assert all(r["attempts"] == 1 for r in store.rows())


@pytest.mark.slow
def test_ray_instance_timeout_records_a_failed_row_and_the_run_goes_on(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    """A hung instance must not stall a benchmark: past --instance-timeout its actor is
    stopped and the instance becomes a failed row naming the limit; a later run with a
    generous limit and --retry-failed finishes it."""
    import ray

    cfg = _cfg(tmp_path / "ray", tiny_wan_dir, tiny_qwen25_dir, methods=["frozen"])
    summary = run_bench(cfg, executor="ray", workers=1, progress=False, ray_init={"num_cpus": 1},
                        instance_timeout=0.05)  # less than loading the models on a fresh actor
    assert (summary.ran, summary.failed) == (2, 2) and not ray.is_initialized()
    with open_store(cfg.out) as store:
        rows = list(store.rows())
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("instance time limit (0.05 s, --instance-timeout)" in r["error"] for r in rows)
    retry = replace(cfg, retry_failed=True)
    summary = run_bench(retry, executor="ray", workers=1, progress=False, ray_init={"num_cpus": 1},
                        instance_timeout=600)
    assert (summary.ran, summary.failed) == (2, 0)


def test_instance_timeout_is_refused_for_the_local_executor(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    cfg = _cfg(tmp_path / "b", tiny_wan_dir, tiny_qwen25_dir, methods=["frozen"])
    with pytest.raises(UserError, match="--instance-timeout needs --executor ray"):
        run_bench(cfg, progress=False, instance_timeout=10)
    with pytest.raises(UserError, match="must be > 0"):
        run_bench(cfg, executor="ray", progress=False, instance_timeout=0)
    assert not (cfg.out / "results.sqlite").exists()


def test_report_of_a_real_bench_folder(grid_bench):
    from vlm_teacher.report import write_markdown, write_report

    cfg, _ = grid_bench
    html_path = write_report(cfg.out)
    text = html_path.read_text()
    assert html_path == cfg.out / "report.html"
    assert "Main table" in text and "grid:test" in text and "Ablations" in text and "tto_generic" in text
    assert text.count("<video") == 4  # 2 tasks x 2 methods, side by side
    for src in __import__("re").findall(r"<(?:img|video) src='([^']+)'", text):
        assert (cfg.out / src).is_file(), src
    md = write_markdown(cfg.out, cfg.out / "grid.md").read_text()
    assert "| frozen |" in md and "| tto_generic |" in md and "pass rate" in md
    # where the figures come from: the machine and the models' identities, recorded by every bench run
    assert "Machine: Linux" in md and f"reasoner {Path(cfg.reasoner).name}-" in md


def test_model_id_follows_weights_and_config_not_the_measured_figures(tmp_path):
    """Re-measuring a model card (eval.json / metrics.json) must not orphan the stored rows;
    a changed config or weight file must."""
    from vlm_teacher.bench import MODEL_RECORD_FILES
    from vlm_teacher.recipes.grid_reasoner import METRICS_NAME
    from vlm_teacher.recipes.grid_teacher import EVAL_NAME

    assert {METRICS_NAME, EVAL_NAME} <= MODEL_RECORD_FILES
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "sub" / "model.safetensors").write_bytes(b"weights-a")
    first = model_id(folder)
    for name in (METRICS_NAME, EVAL_NAME):
        (folder / name).write_text('{"pass_rate": 0.5}')
    assert model_id(folder) == first
    (folder / "config.json").write_text('{"hidden_size": 16}')
    assert model_id(folder) != first
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "sub" / "model.safetensors").write_bytes(b"weights-b")
    assert model_id(folder) != first


def test_model_id_covers_every_weight_byte(tmp_path, monkeypatch):
    """A change past the first MiB of a weight file (same size) is a new identity."""
    monkeypatch.setenv("VLM_TEACHER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes())
    weights.write_bytes(bytes(data))
    first = model_id(folder)
    data[(3 << 20) - 5] ^= 0xFF  # one byte near the end
    weights.write_bytes(bytes(data))
    assert model_id(folder) != first


def test_model_id_digests_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    """A file's digest is kept (in the cache folder, for the next process) under its path, size
    and mtime: the same size and mtime are not hashed again; a new mtime is."""
    from vlm_teacher import identity

    monkeypatch.setenv("VLM_TEACHER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    old = time.time() - 3600
    os.utime(weights, (old, old))
    first = model_id(folder)
    cached = json.loads((tmp_path / "cache" / identity.DIGEST_CACHE_FILE).read_text())
    assert any(k.startswith(str(weights.resolve()) + "|1000|") for k in cached)
    monkeypatch.setattr(identity, "_memory", {})  # a new process: only the disk cache is left
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, (old, old))  # size and mtime restored by hand: the cache cannot tell
    assert model_id(folder) == first
    os.utime(weights, (old + 1, old + 1))
    assert model_id(folder) != first
    # a file written just now is hashed every time (a rewrite within one timestamp tick keeps its mtime)
    weights.write_bytes(b"c" * 1000)
    recent = model_id(folder)
    weights.write_bytes(b"d" * 1000)
    assert model_id(folder) != recent


def _stale_doc_hash(monkeypatch, cfg, method_name, change):
    from vlm_teacher.bench.plan import config_hash
    from vlm_teacher.methods import parse_method

    method = parse_method(method_name)
    models = {"reasoner": "r-1", "teacher": "t-1"}
    before = config_hash(method, cfg, models)
    change()
    return before, config_hash(method, cfg, models)


@pytest.mark.parametrize("method_name", ["tto", "tto_lam1", "tto_oracle", "best_of_n:3"])
def test_a_changed_default_is_a_new_key(method_name, tmp_path, monkeypatch, tiny_wan_dir):
    """The key hashes the resolved settings, so a default that changes (here: what the
    settings resolve to without any flag) cannot reuse the rows made under the old one."""
    import importlib

    from vlm_teacher.optimize import TTOConfig

    plan_module = importlib.import_module("vlm_teacher.bench.plan")

    cfg = BenchConfig(suite="grid:test", methods=[method_name], out=tmp_path, reasoner=tiny_wan_dir)
    field = "lam" if method_name.startswith("best_of_n") else "lr"
    changed = {"lam": 0.7} if field == "lam" else {"lr": 1e-3}
    before, after = _stale_doc_hash(monkeypatch, cfg, method_name, lambda: monkeypatch.setattr(
        plan_module, "tto_config", lambda changes, folder: TTOConfig(**{**changed, **changes})))
    assert before != after


def test_explicit_default_and_no_flag_share_a_key(tmp_path, tiny_wan_dir):
    """Settings are hashed resolved: --lr with the default's value is the same run as no --lr."""
    from vlm_teacher.bench.plan import config_hash
    from vlm_teacher.methods import parse_method
    from vlm_teacher.optimize import tto_config

    lr = tto_config({}, tiny_wan_dir).lr
    a = BenchConfig(suite="grid:test", methods=["tto"], out=tmp_path, reasoner=tiny_wan_dir)
    b = BenchConfig(suite="grid:test", methods=["tto"], out=tmp_path, reasoner=tiny_wan_dir, tto={"lr": lr})
    method, models = parse_method("tto"), {"reasoner": "r", "teacher": "t"}
    assert config_hash(method, a, models) == config_hash(method, b, models)


@pytest.mark.parametrize("method_name", ["frozen", "tto", "best_of_n:2", "solver", "videotpo:1",
                                         "oracle_pass_at_n:2"])
def test_a_new_method_code_version_is_a_new_key(method_name, tmp_path, monkeypatch, tiny_wan_dir):
    from vlm_teacher.methods import parse_method

    cfg = BenchConfig(suite="grid:test", methods=[method_name], out=tmp_path, reasoner=tiny_wan_dir)
    cls = type(parse_method(method_name))
    before, after = _stale_doc_hash(monkeypatch, cfg, method_name,
                                    lambda: monkeypatch.setattr(cls, "version", cls.version + 1))
    assert before != after


# ------------------------------------------------------------------ failures visible to scripts
def test_bench_exits_non_zero_with_a_summary_when_instances_fail(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    argv = ["bench", "--suite", "grid:test", "--methods", "frozen", "--limit", "2", "--out", str(tmp_path / "b"),
            "--reasoner", str(missing), "--quiet", "--no-teacher-eval"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "2 of the 2 instances run now failed (0 done)" in err
    assert "frozen maze-test-00000 seed 0: Wan model folder not found" in err
    assert "--allow-failures" in err and "Traceback" not in err
    # a resume with nothing left to run: the old failures are not this invocation's
    assert main(argv) == 0
    # accepted failures: exit 0, the summary still printed
    assert main([*argv, "--retry-failed", "--allow-failures"]) == 0
    assert "2 of the 2 instances run now failed" in capsys.readouterr().err


# ------------------------------------------------------------------ suites from disk
@pytest.mark.parametrize("given", ["root", "split"])
def test_bench_runs_a_folder_written_by_grid_make(given, tmp_path, tiny_wan_dir, capsys):
    from vlm_teacher.suites import load_suite
    from vlm_teacher.suites.grid import grid_tasks

    root = tmp_path / "heldout"
    assert main(["grid", "make", "--split", "test", "--n", "1", "--seed", "3", "--out", str(root)]) == 0
    path = root if given == "root" else root / "test"
    suite = load_suite(f"grid:{path}")
    assert set(suite.ids()) == {t.id for t in grid_tasks("test", n=1, seed=3)} == {"maze-test-s3-00000",
                                                                                   "push-test-s3-00000"}
    out = tmp_path / "b"
    assert main(["bench", "--suite", f"grid:{path}", "--methods", "frozen", "--out", str(out), "--reasoner",
                 str(tiny_wan_dir), "--quiet", "--no-teacher-eval"]) == 0
    with open_store(out) as store:
        rows = store.rows()
    assert {r["task_id"] for r in rows} == set(suite.ids()) and all(r["status"] == "done" for r in rows)
    assert {r["suite"] for r in rows} == {f"grid:{path.resolve()}"}
    assert all(r["score"] is not None for r in rows)
    # the verdict is the task's: the disk task and the generated one score alike
    task = suite.task("maze-test-s3-00000")
    assert task.metadata == grid_tasks("test", n=1, seed=3)[0].to_task().metadata


def test_a_grid_folder_that_is_not_one_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for spec, match in ((f"grid:{tmp_path / 'nowhere'}", "no such folder"),
                        (f"grid:{tmp_path / 'empty'}", "holds no grid task folders")):
        assert main(["bench", "--suite", spec, "--methods", "frozen", "--out", str(tmp_path / "b"),
                     "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and match in err and "\n" not in err


def test_every_grid_option_has_help_text():
    from vlm_teacher.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["grid"]
    gsub = next(a for a in sub._actions if a.dest == "grid_command")
    for name in ("make", "verify"):
        for action in gsub.choices[name]._actions:
            if action.dest != "help":
                assert action.help, f"grid {name} {action.option_strings} has no help text"
