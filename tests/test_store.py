"""ResultsStore: resume semantics, claims, and survival of concurrent and killed writers."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from vlm_teacher.errors import UserError
from vlm_teacher.store import SCHEMA_VERSION, Key, ResultsStore


def _row(task_id: str, method: str = "teacher", seed: int = 0, status: str = "done", **values) -> dict:
    return {"suite": "grid", "task_id": task_id, "method": method, "seed": seed, "config_hash": "c1",
            "status": status, **values}


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(str(path), timeout=10)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


# ------------------------------------------------------------------ resume
def test_put_twice_is_one_row_and_pending_resumes(tmp_path):
    path = tmp_path / "r.sqlite"
    keys = [Key("grid", f"t{i}", "teacher", 0, "c1") for i in range(4)]
    with ResultsStore(path) as store:
        assert store.pending(keys) == keys
        store.put(_row("t0", score=0.2, passed=0, extra={"labels": ["Good"]}))
        store.put(_row("t0", score=0.9, passed=1, steps=12, extra={"labels": ["Poor"]}))
        store.put(_row("t1", status="failed", error="OOM"))
        rows = store.rows()
        assert len(rows) == 2
        t0 = store.get(keys[0])
        assert t0["score"] == 0.9 and t0["passed"] == 1 and t0["steps"] == 12
        assert t0["attempts"] == 2 and t0["extra"] == {"labels": ["Poor"]}
    # reopen: the same answers (what a resumed bench sees after a crash)
    with ResultsStore(path) as store:
        assert store.pending(keys + keys[:1]) == keys[2:]  # failed counts as done, repeats dropped
        assert store.pending(keys, retry_failed=True) == [keys[1], *keys[2:]]
        assert store.pending([("grid", "t0", "teacher", 0, "other-config")]) == [Key("grid", "t0", "teacher", 0, "other-config")]
        store.put(_row("t1", score=0.5))
        assert store.get(keys[1])["status"] == "done" and store.get(keys[1])["error"] is None
        assert store.pending(keys, retry_failed=True) == keys[2:]


def test_rows_filters_summary_and_values(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(_row("a", score=1.0, passed=1, steps=10, seconds=2.0, teacher_calls=10, peak_mem_mb=100))
        store.put(_row("b", score=0.5, passed=0, steps=20, seconds=4.0, teacher_calls=20, peak_mem_mb=300))
        store.put(_row("c", status="failed", error="boom", score=0.0, peak_mem_mb=500))
        store.put(_row("a", method="frozen", score=0.25))
        store.put(_row("d", score=float("nan")))  # a NaN does not lose the row; it is stored as NULL
        assert [r["task_id"] for r in store.rows(method="teacher")] == ["a", "b", "c", "d"]
        assert [r["method"] for r in store.rows(method="frozen")] == ["frozen"]
        assert len(store.rows(suite="other")) == 0 and len(store.rows(status="failed")) == 1
        assert store.get(("grid", "d", "teacher", 0, "c1"))["score"] is None
        summary = {s["method"]: s for s in store.summary()}
        t = summary["teacher"]
        assert (t["n"], t["n_done"], t["n_failed"]) == (4, 3, 1)
        assert t["mean_score"] == pytest.approx(0.75)  # failed and NULL scores left out
        assert t["pass_rate"] == pytest.approx(0.5)
        assert t["mean_steps"] == pytest.approx(15) and t["mean_seconds"] == pytest.approx(3.0)
        assert t["mean_teacher_calls"] == pytest.approx(15) and t["max_peak_mem_mb"] == 500
        assert summary["frozen"]["mean_score"] == pytest.approx(0.25) and summary["frozen"]["mean_steps"] is None
        assert len(store) == 5


def test_bad_rows_are_refused(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ValueError, match="status"):
            store.put(_row("a", status="running"))
        with pytest.raises(ValueError, match="unknown result columns: wat"):
            store.put(_row("a", wat=1))
        with pytest.raises(ValueError, match="seed"):
            store.put({**_row("a"), "seed": "0"})
        with pytest.raises(ValueError, match="missing"):
            store.put({"suite": "grid", "status": "done"})
        assert len(store) == 0


def test_not_a_store_is_a_user_error(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a usable SQLite results store"):
        ResultsStore(junk)
    with pytest.raises(UserError, match="is a folder"):
        ResultsStore(tmp_path)
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(str(foreign))
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match="not a vlm-teacher results store"):
        ResultsStore(foreign)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore(path).close()
    conn = sqlite3.connect(str(path))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        ResultsStore(path)


def test_wal_mode_and_pickle_reopens(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ResultsStore(path)
    assert store._connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    clone = pickle.loads(pickle.dumps(store))  # what a local Ray worker receives
    clone.put(_row("from-clone", score=1.0))
    assert store.get(("grid", "from-clone", "teacher", 0, "c1"))["score"] == 1.0
    clone.close()
    store.close()


# ------------------------------------------------------------------ claims
def test_claims_lease_semantics(tmp_path):
    key = Key("grid", "t0", "teacher", 0, "c1")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.claim(key, "A")
        assert not store.claim(key, "B")  # A holds it
        assert store.claim(key, "A")  # renewal by the holder
        assert store.renew(key, "A") and not store.renew(key, "B")
        assert [c["worker"] for c in store.claims()] == ["A"]
        store.release(key, "B")  # not B's: no effect
        assert not store.claim(key, "B")
        store.release(key, "A")
        assert store.claim(key, "B")
        store.put(_row("t0", score=1.0))  # the result drops the lease ...
        assert store.claims() == []
        assert not store.claim(key, "A")  # ... and a done key cannot be claimed
        store.put(_row("t0", status="failed", error="x"))
        assert not store.claim(key, "A") and store.claim(key, "A", retry_failed=True)


def test_claim_expires_after_its_ttl(tmp_path, monkeypatch):
    """A lease not renewed in time is free for others; the store's clock is driven by the test
    (no sleeping, no race with a loaded machine)."""
    import types

    import vlm_teacher.store as store_module

    now = [1_000_000.0]
    clock = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    clock.time = lambda: now[0]
    monkeypatch.setattr(store_module, "time", clock)
    k2 = Key("grid", "t1", "teacher", 0, "c1")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.claim(k2, "A", ttl_s=10.0)
        now[0] += 9.9
        assert not store.claim(k2, "B")  # still A's
        assert store.renew(k2, "A", ttl_s=10.0)
        now[0] += 9.9
        assert not store.claim(k2, "B")  # renewed: A's for another 10 s
        now[0] += 0.2
        assert store.claim(k2, "B") and not store.renew(k2, "A")


# ------------------------------------------------------ several processes
def _bench_worker(path: str, worker: str, n: int, log_path: str, start) -> None:
    """A miniature bench loop: pending -> claim -> 'run' -> put."""
    start.wait()
    store = ResultsStore(path, busy_timeout_s=30)
    keys = [Key("grid", f"t{i:03d}", "teacher", 0, "c1") for i in range(n)]
    ran = []
    for key in store.pending(keys):
        if not store.claim(key, worker):
            continue
        ran.append(key.task_id)
        time.sleep(0.002)
        store.put({**key._asdict(), "status": "done", "score": 1.0, "extra": {"worker": worker}})
    Path(log_path).write_text("\n".join(ran))
    store.close()


def test_two_processes_share_a_store(tmp_path):
    path = tmp_path / "r.sqlite"  # not created yet: both processes create it at once
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    n = 60
    procs = [ctx.Process(target=_bench_worker, args=(str(path), w, n, str(tmp_path / f"{w}.log"), start))
             for w in ("A", "B")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ran = {w: [t for t in (tmp_path / f"{w}.log").read_text().split("\n") if t] for w in ("A", "B")}
    assert not set(ran["A"]) & set(ran["B"])  # no instance ran twice
    assert len(ran["A"]) + len(ran["B"]) == n
    assert _integrity(path) == "ok"
    with ResultsStore(path) as store:
        rows = store.rows()
        assert len(rows) == n and len({r["task_id"] for r in rows}) == n
        assert all(r["attempts"] == 1 for r in rows)
        assert {r["extra"]["worker"] for r in rows} <= {"A", "B"}
        assert store.claims(live_only=False) == []


def _killed_mid_transaction(path: str, ready) -> None:
    store = ResultsStore(path)
    store.claim(("grid", "held", "teacher", 0, "c1"), "victim")  # committed
    conn = store._connect()
    conn.execute("BEGIN IMMEDIATE")
    for i in range(200):
        conn.execute(
            "INSERT INTO results (suite, task_id, method, seed, config_hash, status, created_at) VALUES (?,?,?,?,?,?,?)",
            ("grid", f"partial{i}", "teacher", 0, "c1", "done", time.time()),
        )
    ready.set()
    time.sleep(60)  # killed here, the transaction still open


def test_sigkill_mid_transaction_leaves_a_readable_store(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.put(_row("before", score=1.0))
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_killed_mid_transaction, args=(str(path), ready))
    p.start()
    assert ready.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    assert _integrity(path) == "ok"
    with ResultsStore(path, busy_timeout_s=5) as store:
        assert [r["task_id"] for r in store.rows()] == ["before"]  # nothing of the open transaction
        # the dead process's lease is stale at once (same host, pid gone), not after its hour
        assert store.claims() == []
        assert store.claim(("grid", "held", "teacher", 0, "c1"), "survivor")
        store.put(_row("after", score=0.5))  # the write lock was released by the kill
        assert len(store) == 2


def _hammer(path: str, ready) -> None:
    store = ResultsStore(path)
    i = 0
    while True:
        store.put(_row(f"h{i}", score=i / 1000, extra={"payload": "x" * 2000}))
        if i == 5:
            ready.set()
        i += 1


def test_sigkill_while_writing_many_rows(tmp_path):
    path = tmp_path / "r.sqlite"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hammer, args=(str(path), ready))
    p.start()
    assert ready.wait(30)
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert _integrity(path) == "ok"
    with ResultsStore(path) as store:
        rows = store.rows()
        ids = sorted(int(r["task_id"][1:]) for r in rows)
        assert ids == list(range(len(ids))) and len(ids) >= 6  # a gap-free prefix: every put is all or nothing
        assert all(math.isclose(r["score"], int(r["task_id"][1:]) / 1000) for r in rows)
        assert all(len(r["extra"]["payload"]) == 2000 for r in rows)


def _put_from_fork(store: ResultsStore) -> None:
    store.put(_row("from-child", score=0.5))  # must reopen, not reuse the parent's connection


def test_forked_child_reopens_its_own_connection(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.put(_row("from-parent", score=1.0))
    p = mp.get_context("fork").Process(target=_put_from_fork, args=(store,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    store.put(_row("parent-again", score=1.0))  # the parent's connection still works
    assert [r["task_id"] for r in store.rows()] == ["from-child", "from-parent", "parent-again"]
    store.close()


def test_the_local_executor_renews_the_claim_of_a_slow_instance(tmp_path, monkeypatch):
    """An instance that runs for three lease lengths keeps its claim: a second process trying to
    take the key meanwhile is refused. The instance's work is a sleep here (what is under test is
    the executor's heartbeat, not the models)."""
    from vlm_teacher.bench import BenchConfig, Instance, run_local
    from vlm_teacher.bench.runner import InstanceRunner

    path = tmp_path / "r.sqlite"
    key = Key("grid:test", "maze-test-00000", "frozen", 0, "c1")
    inst = Instance(key, "frozen", "runs/frozen/maze-test-00000/seed0-c1", "frozen_s0_c1")
    ttl = 1.0
    taken_over: list[bool] = []

    def slow_run(self, instance):
        other = ResultsStore(path)
        deadline = time.monotonic() + 3 * ttl
        while time.monotonic() < deadline:
            time.sleep(ttl / 5)
            taken_over.append(other.claim(instance.key, "other-process"))
        other.close()
        return {**instance.key._asdict(), "status": "done", "score": 1.0}

    monkeypatch.setattr(InstanceRunner, "run", slow_run)
    rows = []
    with ResultsStore(path, claim_ttl_s=ttl) as store:
        run_local(BenchConfig(suite="grid:test", methods=["frozen"], out=tmp_path), [inst], store, rows.append)
        assert store.get(key)["status"] == "done" and store.claims(live_only=False) == []
    assert len(taken_over) >= 10 and not any(taken_over)
    assert [r["status"] for r in rows] == ["done"]


def test_claim_renewer_stops_renewing_on_exit(tmp_path):
    from vlm_teacher.store import ClaimRenewer

    key = Key("grid", "t", "m", 0, "c")
    with ResultsStore(tmp_path / "r.sqlite", claim_ttl_s=0.4) as store:
        assert store.claim(key, "A")
        with ClaimRenewer(store, "A", lambda: [key]) as renewer:
            time.sleep(1.0)
        assert renewer.renewals >= 3
        assert not store.claim(key, "B")  # renewed a moment ago
        time.sleep(0.6)
        assert store.claim(key, "B")  # no heartbeat after the block: the lease ran out
