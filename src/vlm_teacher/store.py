"""The results store: one SQLite row per (suite, task, method, seed, config).

Why SQLite: a benchmark is hundreds of instances x methods x seeds, each
minutes long, and it gets killed (OOM, pre-emption, Ctrl-C, ``kill -9``). Every
result is committed in its own transaction the moment it exists, so a re-run
asks :meth:`ResultsStore.pending` what is left and does only that. SQLite's
write-ahead log (WAL) keeps the file consistent when a writer dies in the middle
of a transaction: the half-written transaction is simply never visible.

Concurrency model
-----------------
* Several processes on the **same machine** may open the same store at once
  (two ``vlm-teacher bench`` runs, or local Ray workers). Writes are serialised
  by SQLite's lock; a writer that finds the lock taken waits up to
  ``busy_timeout_s`` instead of failing.
* To keep two processes from *running* the same instance at the same time, a
  process :meth:`~ResultsStore.claim` s a key before running it. A claim is a
  lease: it names the worker, the host and pid of the claiming process, and
  expires after ``ttl_s`` seconds unless renewed (:meth:`~ResultsStore.renew`; the
  bench's executors renew theirs from a :class:`ClaimRenewer` thread while instances run).
  A claim whose process is gone (same host, pid no longer alive) is stale at
  once; a claim from another host is stale when it expires. :meth:`put` of the
  result drops the claim in the same transaction, so "done" and "claimed" never
  disagree.
* The store must live on a local file system: SQLite's locks (and WAL's shared
  memory) are not reliable over NFS. With Ray across several nodes, workers do
  not open the store; they return the row dict and the driver calls
  :meth:`put`. A ``ResultsStore`` pickles as its path and options, so a
  worker on the driver's own machine may also receive it and write directly.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from .errors import UserError

SCHEMA_VERSION = 1
APPLICATION = "vlm-teacher results store"

STATUSES = ("done", "failed")

#: value columns of ``results`` (besides the key, ``attempts`` and ``created_at``)
VALUE_COLUMNS: dict[str, type] = {
    "status": str,
    "score": float,
    "passed": int,
    "steps": int,
    "stop_reason": str,
    "seconds": float,
    "reasoner_calls": int,
    "teacher_calls": int,
    "peak_mem_mb": float,
    "video_path": str,
    "history_path": str,
    "error": str,
    "extra": dict,
}


class Key(NamedTuple):
    """Identity of one result. ``config_hash`` separates runs of one method
    under different settings (ablations), so they never overwrite each other."""

    suite: str
    task_id: str
    method: str
    seed: int
    config_hash: str = ""

    @classmethod
    def of(cls, key: "Key | Mapping[str, Any] | tuple") -> "Key":
        """Accept a Key, a plain 4/5-tuple, or a mapping with the key fields (a row)."""
        if isinstance(key, Mapping):
            missing = [f for f in ("suite", "task_id", "method", "seed") if f not in key]
            if missing:
                raise ValueError(f"result key is missing {', '.join(missing)}")
            key = (key["suite"], key["task_id"], key["method"], key["seed"], key.get("config_hash", ""))
        k = cls(*key)
        for name in ("suite", "task_id", "method", "config_hash"):
            if not isinstance(getattr(k, name), str):
                raise ValueError(f"result key field {name} must be a string, got {getattr(k, name)!r}")
        if isinstance(k.seed, bool) or not isinstance(k.seed, int):
            raise ValueError(f"result key field seed must be an int, got {k.seed!r}")
        return k


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    suite          TEXT    NOT NULL,
    task_id        TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    seed           INTEGER NOT NULL,
    config_hash    TEXT    NOT NULL DEFAULT '',
    status         TEXT    NOT NULL CHECK (status IN ('done', 'failed')),
    score          REAL,
    passed         INTEGER,
    steps          INTEGER,
    stop_reason    TEXT,
    seconds        REAL,
    reasoner_calls INTEGER,
    teacher_calls  INTEGER,
    peak_mem_mb    REAL,
    video_path     TEXT,
    history_path   TEXT,
    error          TEXT,
    extra          TEXT,
    attempts       INTEGER NOT NULL DEFAULT 1,
    created_at     REAL    NOT NULL,
    UNIQUE (suite, task_id, method, seed, config_hash)
);
CREATE INDEX IF NOT EXISTS results_suite_method ON results (suite, method);
CREATE TABLE IF NOT EXISTS claims (
    suite       TEXT    NOT NULL,
    task_id     TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    seed        INTEGER NOT NULL,
    config_hash TEXT    NOT NULL DEFAULT '',
    worker      TEXT    NOT NULL,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    claimed_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL,
    PRIMARY KEY (suite, task_id, method, seed, config_hash)
);
"""

_FORK_ORPHANS: list[sqlite3.Connection] = []

_KEY_WHERE = "suite = ? AND task_id = ? AND method = ? AND seed = ? AND config_hash = ?"


class ResultsStore:
    """A benchmark's results in one SQLite file (created on first use).

    ``put`` is idempotent per key: a retried instance replaces its row (the
    ``attempts`` column counts the puts), it never adds a second one.
    """

    def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = 60.0, claim_ttl_s: float = 3600.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.claim_ttl_s = float(claim_ttl_s)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connect()

    # ------------------------------------------------------------------ setup
    def _connect(self) -> sqlite3.Connection:
        """(Re)open the connection; also after a fork, where the parent's must not be used."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            # Forked: the parent's connection must be neither used nor closed here
            # (closing it could checkpoint or unlock on the parent's behalf); keep it alive, unused.
            _FORK_ORPHANS.append(self._conn)
            self._conn = None
        if self.path.is_dir():
            raise UserError(f"results store {self.path} is a folder; give a file path such as {self.path / 'results.sqlite'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise UserError(f"cannot open results store {self.path}: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._enable_wal(conn)
            # FULL: a committed result survives even a power cut, not only kill -9.
            conn.execute("PRAGMA synchronous = FULL")
            self._init_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(
                f"{self.path} is not a usable SQLite results store ({exc}); give a new file name or the store a previous bench run wrote"
            ) from None
        except UserError:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching the journal mode needs a moment without other writers; the busy
        # handler is not always consulted for it, so retry briefly.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if str(mode).lower() != "wal":
            raise UserError(f"results store {self.path}: SQLite refused WAL mode (got {mode!r}); put the store on a local disk")

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        with self._write(conn):
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise UserError(
                    f"{self.path} is an SQLite file but not a vlm-teacher results store (tables: {', '.join(sorted(tables))}); give another path"
                )
            if "meta" in tables:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("application") != APPLICATION:
                    raise UserError(f"{self.path} is an SQLite file but not a vlm-teacher results store; give another path")
                try:
                    version = int(meta.get("schema_version", "0"))
                except ValueError:
                    raise UserError(f"results store {self.path} has a corrupt schema version; use another store") from None
                if version > SCHEMA_VERSION:
                    raise UserError(
                        f"results store {self.path} has schema version {version}, newer than this vlm-teacher understands "
                        f"({SCHEMA_VERSION}); upgrade vlm-teacher or use another store"
                    )
                if version == SCHEMA_VERSION:
                    return
                # Older versions would be migrated here; version 1 is the first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('application', ?)", (APPLICATION,))
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    class _write:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error): take the write lock
        up front, so a read-then-write (claim, schema check) cannot be raced."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")

    def _tx(self) -> "ResultsStore._write":
        return ResultsStore._write(self._connect())

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            conn = self._connect()
            cur = conn.execute(sql, tuple(params))
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "busy_timeout_s": self.busy_timeout_s, "claim_ttl_s": self.claim_ttl_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], busy_timeout_s=state["busy_timeout_s"], claim_ttl_s=state["claim_ttl_s"])  # type: ignore[misc]

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        with self._lock:
            if self._conn is not None:
                if self._pid == os.getpid():
                    self._conn.close()
                else:
                    _FORK_ORPHANS.append(self._conn)
            self._conn = None

    # ---------------------------------------------------------------- results
    def pending(self, keys: Iterable[Key | tuple | Mapping[str, Any]], *, retry_failed: bool = False) -> list[Key]:
        """The keys (in the given order, without repeats) that still have to run.

        A ``failed`` row counts as done unless ``retry_failed``: a deterministic
        failure (bad input, OOM at this size) should not be re-run on every resume.
        """
        wanted = list(dict.fromkeys(Key.of(k) for k in keys))
        if not wanted:
            return []
        suites = sorted({k.suite for k in wanted})
        marks = ",".join("?" * len(suites))
        done: set[Key] = set()
        for r in self._read(
            f"SELECT suite, task_id, method, seed, config_hash, status FROM results WHERE suite IN ({marks})", suites
        ):
            if r["status"] == "done" or not retry_failed:
                done.add(Key(r["suite"], r["task_id"], r["method"], r["seed"], r["config_hash"]))
        return [k for k in wanted if k not in done]

    def put(self, row: Mapping[str, Any]) -> None:
        """Insert or replace the row of ``row``'s key, and drop its claim, in one transaction."""
        key = Key.of(row)
        values = _validate_row(row)
        cols = list(values)
        params = [*key, *values.values(), time.time()]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols)
        sql = (
            f"INSERT INTO results (suite, task_id, method, seed, config_hash, {', '.join(cols)}, created_at) "
            f"VALUES ({', '.join('?' * (len(params)))}) "
            f"ON CONFLICT (suite, task_id, method, seed, config_hash) DO UPDATE SET "
            f"{updates}, created_at = excluded.created_at, attempts = results.attempts + 1"
        )
        with self._lock, self._tx() as conn:
            conn.execute(sql, params)
            conn.execute(f"DELETE FROM claims WHERE {_KEY_WHERE}", tuple(key))

    def get(self, key: Key | tuple | Mapping[str, Any]) -> dict[str, Any] | None:
        """The row of one key, or None."""
        rows = self._read(f"SELECT * FROM results WHERE {_KEY_WHERE}", tuple(Key.of(key)))
        return _decode(rows[0]) if rows else None

    def rows(self, suite: str | None = None, method: str | None = None, *, status: str | None = None) -> list[dict[str, Any]]:
        """All rows (optionally of one suite / method / status), ``extra`` decoded, in a stable order."""
        where, params = [], []
        for col, val in (("suite", suite), ("method", method), ("status", status)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = "SELECT * FROM results" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY suite, method, config_hash, task_id, seed"
        return [_decode(r) for r in self._read(sql, params)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())

    def __len__(self) -> int:
        return int(self._read("SELECT COUNT(*) AS n FROM results")[0]["n"])

    def summary(self, suite: str | None = None) -> list[dict[str, Any]]:
        """Means per (suite, method, config_hash).

        ``n`` rows, ``n_done`` / ``n_failed``; ``mean_score``, ``pass_rate``,
        ``mean_steps``, ``mean_seconds``, ``mean_reasoner_calls``,
        ``mean_teacher_calls`` over the ``done`` rows that have the value (NULLs
        are left out, like a missing video in the official kits, not counted as
        0); ``max_peak_mem_mb``. A mean with no values is None.
        """
        sql = """
            SELECT suite, method, config_hash,
                   COUNT(*) AS n,
                   SUM(status = 'done') AS n_done,
                   SUM(status = 'failed') AS n_failed,
                   AVG(CASE WHEN status = 'done' THEN score END) AS mean_score,
                   AVG(CASE WHEN status = 'done' THEN passed END) AS pass_rate,
                   AVG(CASE WHEN status = 'done' THEN steps END) AS mean_steps,
                   AVG(CASE WHEN status = 'done' THEN seconds END) AS mean_seconds,
                   AVG(CASE WHEN status = 'done' THEN reasoner_calls END) AS mean_reasoner_calls,
                   AVG(CASE WHEN status = 'done' THEN teacher_calls END) AS mean_teacher_calls,
                   MAX(peak_mem_mb) AS max_peak_mem_mb
            FROM results {where}
            GROUP BY suite, method, config_hash
            ORDER BY suite, method, config_hash
        """
        if suite is None:
            return self._read(sql.format(where=""))
        return self._read(sql.format(where="WHERE suite = ?"), (suite,))

    # ----------------------------------------------------------------- claims
    def claim(self, key: Key | tuple | Mapping[str, Any], worker: str, *, ttl_s: float | None = None,
              retry_failed: bool = False) -> bool:
        """Try to take the lease on ``key`` for ``worker``; True if this worker now holds it.

        False when another live worker holds it, or when the key already has a
        result that counts as done (see :meth:`pending`): another process may
        have finished it since this one computed its pending list. A worker that
        already holds the lease gets it renewed.
        """
        k = Key.of(key)
        ttl = self.claim_ttl_s if ttl_s is None else float(ttl_s)
        now = time.time()
        host, pid = socket.gethostname(), os.getpid()
        with self._lock, self._tx() as conn:
            row = conn.execute(f"SELECT status FROM results WHERE {_KEY_WHERE}", tuple(k)).fetchone()
            if row is not None and (row[0] == "done" or not retry_failed):
                return False
            held = conn.execute(f"SELECT worker, host, pid, expires_at FROM claims WHERE {_KEY_WHERE}", tuple(k)).fetchone()
            if held is not None and held[0] != worker and not _stale(held[1], held[2], held[3], now):
                return False
            conn.execute(
                "INSERT OR REPLACE INTO claims (suite, task_id, method, seed, config_hash, worker, host, pid, claimed_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*k, worker, host, pid, now, now + ttl),
            )
            return True

    def renew(self, key: Key | tuple | Mapping[str, Any], worker: str, *, ttl_s: float | None = None) -> bool:
        """Extend ``worker``'s lease (a heartbeat for long instances); False if it lost it."""
        k = Key.of(key)
        ttl = self.claim_ttl_s if ttl_s is None else float(ttl_s)
        with self._lock, self._tx() as conn:
            cur = conn.execute(
                f"UPDATE claims SET expires_at = ?, host = ?, pid = ? WHERE {_KEY_WHERE} AND worker = ?",
                (time.time() + ttl, socket.gethostname(), os.getpid(), *k, worker),
            )
            return cur.rowcount == 1

    def release(self, key: Key | tuple | Mapping[str, Any], worker: str) -> None:
        """Give up ``worker``'s lease without a result (for example on Ctrl-C)."""
        with self._lock, self._tx() as conn:
            conn.execute(f"DELETE FROM claims WHERE {_KEY_WHERE} AND worker = ?", (*Key.of(key), worker))

    def claims(self, *, live_only: bool = True) -> list[dict[str, Any]]:
        """The current leases (by default only those not stale)."""
        rows = self._read("SELECT * FROM claims ORDER BY claimed_at")
        now = time.time()
        return [r for r in rows if not live_only or not _stale(r["host"], r["pid"], r["expires_at"], now)]


class ClaimRenewer:
    """A heartbeat: while open, a daemon thread renews ``worker``'s claims on ``keys()`` every
    ``store.claim_ttl_s / 4`` seconds, so an instance that runs longer than the lease keeps it.

        with ClaimRenewer(store, worker, lambda: [key]):
            row = run(instance)

    ``keys`` is called on the thread; it must return a snapshot (a new list)."""

    def __init__(self, store: "ResultsStore", worker: str, keys, every_s: float | None = None) -> None:
        self.store, self.worker, self.keys = store, worker, keys
        self.every_s = store.claim_ttl_s / 4 if every_s is None else float(every_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            for key in self.keys():
                try:
                    self.renewals += self.store.renew(key, self.worker)
                except sqlite3.Error:  # a busy or briefly unavailable store: the next beat tries again
                    pass

    def __enter__(self) -> "ClaimRenewer":
        self._thread = threading.Thread(target=self._beat, name="claim-renewer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ----------------------------------------------------------------- helpers
def default_worker_id() -> str:
    """A worker name unique to this process: ``host:pid``. Claims by the same
    worker name are renewed, not refused, so two processes must not share one."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _stale(host: str, pid: int, expires_at: float, now: float) -> bool:
    if expires_at <= now:
        return True
    return host == socket.gethostname() and not _pid_alive(int(pid))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _validate_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Check and convert the value columns; unknown names are a programming error."""
    key_fields = set(Key._fields)
    unknown = [c for c in row if c not in VALUE_COLUMNS and c not in key_fields and c not in ("created_at", "attempts")]
    if unknown:
        raise ValueError(f"unknown result columns: {', '.join(sorted(unknown))}; put extra data in 'extra'")
    status = row.get("status")
    if status not in STATUSES:
        raise ValueError(f"result status must be one of {STATUSES}, got {status!r}")
    out: dict[str, Any] = {}
    for col, typ in VALUE_COLUMNS.items():
        val = row.get(col)
        if val is None:
            out[col] = None
        elif col == "extra":
            if not isinstance(val, Mapping):
                raise ValueError(f"result column extra must be a dict, got {type(val).__name__}")
            out[col] = json.dumps(dict(val), sort_keys=True, default=_json_default)
        elif typ is str:
            out[col] = str(val)
        elif typ is int:
            out[col] = int(val)
        else:
            f = float(val)
            # NaN/inf (a diverged loss, say) is stored as NULL rather than losing the row
            out[col] = f if math.isfinite(f) else None
    return out


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["extra"] = json.loads(out["extra"]) if out.get("extra") else {}
    return out
