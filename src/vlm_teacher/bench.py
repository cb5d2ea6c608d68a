"""Benchmarks: suite x method x seed -> one row each in a resumable SQLite store.

    cfg = BenchConfig(suite="grid:test", methods=["frozen", "tto"], seeds=[0], out="bench/grid")
    run_bench(cfg)                        # local, one process
    run_bench(cfg, executor="ray", workers=4)

Layout of ``out``::

    results.sqlite                                  the store (store.ResultsStore)
    bench.json                                      every invocation (argv, models, settings)
    runs/<method>/<task id>/seed<k>-<hash>/         video.mp4, history.json, queries.json
    vbvr_submission/<run>/... ruler_submission/<run>/... ruler_eval/<run>/...   official layouts

Why it is safe to kill: an instance's files are written atomically and its row
is committed in one transaction after them; ``ResultsStore.pending`` says what
is left, and a key is *claimed* before it runs so that two bench processes on
one store never run the same instance (a claim of a dead process is stale at
once). So ``kill -9`` loses at most the instances that were running, and a
re-run does exactly those; ``put`` replaces by key, so a row is never
duplicated.

The result key's ``config_hash`` covers the method's settings, the models'
identities and the video length, so ablations, other teachers or other
settings land in new rows instead of overwriting old ones.

Executors: ``local`` runs the instances one after another in this process (run
several bench processes on one store to use several devices by hand); ``ray``
starts one actor per worker (``num_gpus=1`` each when the cluster has GPUs, one
CPU each otherwise), each loading the models once. Actors return rows and the
driver writes the store (SQLite must not be shared over a network file system;
the run folders must be visible to the driver, e.g. one machine or a shared
``out``). An instance whose actor dies is re-queued on a fresh actor (up to
``max_retries`` times, then recorded as failed); nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .errors import UserError
from .files import write_json
from .store import Key, ResultsStore, default_worker_id

log = logging.getLogger("vlm_teacher")

STORE_NAME = "results.sqlite"
RECORD_NAME = "bench.json"
RUNS_DIR = "runs"
EXECUTORS = ("local", "ray")


@dataclass
class BenchConfig:
    """Everything an instance needs, picklable (Ray actors rebuild their context from it).

    ``reasoner`` / ``teacher`` None mean the embedded models. ``tto`` overrides
    fields of ``TTOConfig`` for every TTO-family method (for example a smaller
    step budget). ``judge`` holds ``JudgeConfig`` fields (RULER only).
    """

    suite: str
    methods: list[str]
    out: Path
    seeds: list[int] = field(default_factory=lambda: [0])
    limit: int | None = None
    reasoner: Path | None = None
    teacher: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    tto: dict[str, Any] = field(default_factory=dict)
    num_frames: int | None = None
    judge: dict[str, Any] = field(default_factory=dict)
    retry_failed: bool = False
    teacher_eval: bool = True  # grid: the teacher's goal judgement of every final video (teacher accuracy)
    quiet_libraries: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.methods = [m.strip() for m in (self.methods.split(",") if isinstance(self.methods, str) else self.methods)
                        if m and m.strip()]
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise UserError("no seeds given; e.g. --seeds 0 or --seeds 0,1,2")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")
        if self.num_frames is not None and (self.num_frames < 1 or (self.num_frames - 1) % 4):
            raise UserError(f"--frames must be 4k+1 (e.g. 9, 17, 89), got {self.num_frames}")
        self.reasoner = Path(self.reasoner) if self.reasoner is not None else None
        self.teacher = Path(self.teacher) if self.teacher is not None else None

    def reasoner_path(self) -> Path:
        from .embedded import reasoner_path

        return self.reasoner if self.reasoner is not None else reasoner_path()

    def teacher_path(self) -> Path:
        from .embedded import teacher_path

        return self.teacher if self.teacher is not None else teacher_path()

    def tto_config(self):
        from .optimize import model_tto_config

        return model_tto_config(self.reasoner_path(), self.tto)

    def load_suite(self):
        from .suites import load_suite

        judge = None
        if self.suite.strip().lower().startswith("ruler"):
            from .suites.judge import JudgeConfig

            try:
                judge = JudgeConfig(**self.judge)
            except TypeError as exc:
                raise UserError(f"bad judge setting: {exc}") from None
        return load_suite(self.suite, judge=judge)


@dataclass(frozen=True)
class Instance:
    """One (task, method, seed) to run, with where its files go."""

    key: Key
    method: str
    run_dir: str   # relative to the bench folder
    run_name: str  # the "model" folder name in official submission layouts

    @property
    def task_id(self) -> str:
        return self.key.task_id

    @property
    def seed(self) -> int:
        return self.key.seed


# ------------------------------------------------------------------ identity
#: what the recipes write beside the weights about a model (its measured figures): re-measuring a
#: card rewrites them without changing what the model computes, so they are not part of its identity
MODEL_RECORD_FILES = frozenset({"eval.json", "metrics.json"})


def model_id(path: str | os.PathLike) -> str:
    """``<folder name>-<hash>``: the hash covers every config file and the size and first
    MiB of every weight file, so a retrained model in the same folder gets new rows
    (the recipes' figure files, ``MODEL_RECORD_FILES``, are left out)."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt")
                   and p.name not in MODEL_RECORD_FILES)
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 20))
    return f"{root.name}-{h.hexdigest()[:8]}"


def config_hash(method, cfg: BenchConfig, models: dict[str, str]) -> str:
    """Hash of everything that determines a method's output besides task and seed."""
    from .methods import TTO, BestOfN

    # the teacher is part of the key only where it shapes the video (not for frozen / oracle)
    used = {k: v for k, v in models.items() if k == "reasoner" or method.uses_teacher}
    doc: dict[str, Any] = {"method": method.config(), "models": used, "frames": cfg.num_frames}
    # Only the settings the user changed from the paper's defaults (the defaults live in the
    # code): a new TTOConfig field with a default must not orphan the rows already stored.
    if isinstance(method, TTO):
        doc["tto"] = {**cfg.tto, **method.changes}
    elif isinstance(method, BestOfN):  # it scores with the teacher on K frames, lambda-weighted
        doc["tto"] = {k: v for k, v in cfg.tto.items() if k in ("num_frames_shown", "lam")}
    blob = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)


# ------------------------------------------------------------------ planning
def plan(cfg: BenchConfig, suite=None) -> list[Instance]:
    """Every (task, method, seed) of the run, in run order (task-major, so a partial
    run has all methods on its first tasks)."""
    from .methods import parse_methods

    suite = suite if suite is not None else cfg.load_suite()
    methods = parse_methods(cfg.methods)
    if suite.verifier() is None:
        bad = [m.name for m in methods if m.needs_verifier]
        if bad:
            raise UserError(f"{', '.join(bad)} need a suite with a verifier (grid:...); {suite.name} has none")
    cfg.tto_config()  # validate early
    models = {"reasoner": model_id(cfg.reasoner_path())}
    if any(m.uses_teacher for m in methods) or cfg.teacher_eval:
        try:
            models["teacher"] = model_id(cfg.teacher_path())
        except UserError:
            if any(m.uses_teacher for m in methods):
                raise
    ids = suite.ids()
    if cfg.limit is not None:
        ids = ids[: cfg.limit]
    if not ids:
        raise UserError(f"suite {suite.spec} has no tasks")
    hashes = {m.name: config_hash(m, cfg, models) for m in methods}
    out: list[Instance] = []
    for task_id in ids:
        for m in methods:
            for seed in cfg.seeds:
                h = hashes[m.name]
                key = Key(suite.name, task_id, m.name, int(seed), h)
                run_dir = f"{RUNS_DIR}/{_slug(m.name)}/{task_id}/seed{seed}-{h[:8]}"
                out.append(Instance(key, m.name, run_dir, f"{_slug(m.name)}_s{seed}_{h[:8]}"))
    return out


# ------------------------------------------------------------------ running one instance
class InstanceRunner:
    """Loads the suite and the models once; runs instances and returns store rows.

    ``run`` never raises for a failing instance: the error becomes a ``failed``
    row (with a one-line message and the traceback in ``extra``) and the
    benchmark goes on. Only KeyboardInterrupt / SystemExit propagate.
    """

    def __init__(self, cfg: BenchConfig, suite=None) -> None:
        self.cfg = cfg
        self._suite = suite  # the driver's, when it runs in the same process
        self._ctx = None
        self._methods: dict[str, Any] = {}
        self.model_ids: dict[str, str] = {}

    @property
    def suite(self):
        if self._suite is None:
            self._suite = self.cfg.load_suite()
        return self._suite

    def context(self):
        if self._ctx is None:
            from .cli import _device_and_dtype, _quiet_libraries
            from .methods import MethodContext, parse_methods
            from .reasoner import load_reasoner
            from .teacher import load_teacher

            if self.cfg.quiet_libraries:
                _quiet_libraries()
            methods = parse_methods(self.cfg.methods)
            device, dtype = _device_and_dtype(self.cfg.device, self.cfg.dtype)
            reasoner = load_reasoner(self.cfg.reasoner_path(), device=device, dtype=dtype)
            teacher = None
            if any(m.uses_teacher for m in methods) or (self.cfg.teacher_eval and self.suite.verifier() is not None):
                try:
                    teacher = load_teacher(self.cfg.teacher_path(), device=device, dtype=dtype)
                except UserError:
                    if any(m.uses_teacher for m in methods):
                        raise
            # names in the rows: folder name + content hash, so two versions of one folder stay apart
            self.model_ids = {"reasoner": model_id(self.cfg.reasoner_path())}
            if teacher is not None:
                self.model_ids["teacher"] = model_id(self.cfg.teacher_path())
            self._ctx = MethodContext(reasoner=reasoner, teacher=teacher, tto=self.cfg.tto_config(),
                                      num_frames=self.cfg.num_frames, verifier=self.suite.verifier())
            self._methods = {m.name: m for m in methods}
        return self._ctx

    def run(self, inst: Instance) -> dict[str, Any]:
        base = dict(inst.key._asdict())
        t0 = time.perf_counter()
        try:
            return self._run(inst)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure of one instance is recorded, the run goes on
            message = " ".join(str(exc).split()) or exc.__class__.__name__
            if not isinstance(exc, UserError):
                message = f"{exc.__class__.__name__}: {message}"
            log.warning("%s %s seed %s failed: %s", inst.method, inst.task_id, inst.seed, message)
            return {**base, "status": "failed", "error": message[:2000], "seconds": time.perf_counter() - t0,
                    "extra": {"traceback": traceback.format_exc()[-4000:], "run_dir": inst.run_dir}}

    def _run(self, inst: Instance) -> dict[str, Any]:
        from .video import write_video

        ctx = self.context()
        suite = self.suite
        method = self._methods[inst.method]
        task = suite.task(inst.task_id)
        out = method.run(ctx, task, inst.seed)
        run_dir = self.cfg.out / inst.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        video_path = write_video(run_dir / "video.mp4", out.video, fps=ctx.fps)
        if out.queries is not None:
            write_json(run_dir / "queries.json", out.queries.to_dict())
        cost = out.cost.to_dict()
        write_json(run_dir / "history.json", {"method": inst.method, "task": inst.task_id, "seed": inst.seed,
                                       "steps": out.steps, "stop_reason": out.stop_reason, "cost": cost,
                                       "queries": out.queries.to_dict() if out.queries else None,
                                       "extra": out.extra, "history": out.history})
        scored = suite.score(task, out.video, ctx.fps, self.cfg.out, inst.run_name)
        extra: dict[str, Any] = {
            "group": suite.group(task),
            "reasoner": self.model_ids["reasoner"],
            "teacher": self.model_ids.get("teacher") if (method.uses_teacher and ctx.teacher is not None) else None,
            "eval_teacher": None,
            "run_dir": inst.run_dir,
            "run_name": inst.run_name,
            "queries": out.queries.to_dict() if out.queries else None,
            "score_details": scored.details,
            "method_extra": {k: v for k, v in out.extra.items() if k not in ("config", "seconds")},
        }
        if ctx.teacher is not None and self.cfg.teacher_eval and scored.passed is not None:
            extra["teacher_eval"] = teacher_judgement(ctx.teacher, task, out.video, ctx.tto.num_frames_shown,
                                                      scored.passed)
            extra["eval_teacher"] = self.model_ids.get("teacher")
        rel = lambda p: str(Path(p).relative_to(self.cfg.out))  # noqa: E731
        return {
            **inst.key._asdict(), "status": "done", "score": scored.score,
            "passed": None if scored.passed is None else int(scored.passed),
            "steps": out.steps, "stop_reason": out.stop_reason, "seconds": cost["wall_s"],
            "reasoner_calls": cost["reasoner_calls"], "teacher_calls": cost["teacher_calls"],
            "peak_mem_mb": cost["peak_mem_mb"], "video_path": rel(video_path),
            "history_path": rel(run_dir / "history.json"), "extra": extra,
        }


def teacher_judgement(teacher, task, video, k: int, passed: bool) -> dict[str, Any]:
    """The teacher's P("Yes") to one fixed, task-phrased goal question about the final
    video, and whether it agrees with the verifier (p > 0.5 iff passed). It measures
    the teacher's accuracy for the report's scatter; it is not part of any method's cost."""
    from .reasoner.base import uniform_frame_indices
    from .teacher.queries import fallback_queries
    from .video import to_float

    question = fallback_queries(task.prompt).goal
    frames = to_float(video[uniform_frame_indices(len(video), k)])
    p = float(teacher.yes_prob_no_grad(frames, [question])[0])
    return {"question": question, "p_yes": p, "passed": bool(passed), "agree": (p > 0.5) == bool(passed)}


# ------------------------------------------------------------------ executors
def run_local(cfg: BenchConfig, instances: Sequence[Instance], store: ResultsStore,
              on_row: Callable[[dict[str, Any]], None], on_skip: Callable[[Instance], None] | None = None,
              suite=None) -> None:
    """One process, one instance at a time; claims make parallel bench processes safe."""
    runner = InstanceRunner(cfg, suite)
    worker = default_worker_id()
    for inst in instances:
        if not store.claim(inst.key, worker, retry_failed=cfg.retry_failed):
            if on_skip is not None:  # finished or being run by another live process since the plan was made
                on_skip(inst)
            continue
        try:
            row = runner.run(inst)
        except BaseException:
            store.release(inst.key, worker)
            raise
        store.put(row)
        on_row(row)


class _RayWorker:
    """The body of a Ray actor: one InstanceRunner, models loaded on first use."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.runner = InstanceRunner(cfg)

    def run(self, inst: Instance) -> dict[str, Any]:
        return self.runner.run(inst)


def _failed_row(inst: Instance, error: str) -> dict[str, Any]:
    """The row of an instance that ended without a result of its own (its worker died or hung)."""
    return {**inst.key._asdict(), "status": "failed", "error": error, "extra": {"run_dir": inst.run_dir}}


def run_ray(cfg: BenchConfig, instances: Sequence[Instance], store: ResultsStore,
            on_row: Callable[[dict[str, Any]], None], *, workers: int | None = None, address: str | None = None,
            init_kwargs: dict[str, Any] | None = None, max_retries: int = 2,
            instance_timeout: float | None = None,
            on_dispatch: Callable[[Any, Instance], None] | None = None,
            on_skip: Callable[[Instance], None] | None = None) -> None:
    """Spread instances over Ray actors; the driver claims keys and writes every row.

    ``instance_timeout`` (seconds from dispatch, model loading on a fresh actor
    included): an instance still running then has its actor killed and becomes a
    ``failed`` row naming the limit (``--retry-failed`` runs it again), so one hung
    instance or an actor that is never scheduled cannot stall a whole benchmark.
    ``on_dispatch(actor, instance)`` is called when an instance is sent to an actor
    (tests use it to kill an actor mid-run).
    """
    try:
        import ray
        from ray.exceptions import RayActorError
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'vlm-teacher[ray]'") from None

    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        kwargs.update(init_kwargs or {})
        ray.init(**kwargs)
        started = True
    worker_id = default_worker_id()
    held: dict[Key, Instance] = {}  # claimed by this driver, no row yet
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = int(workers) if workers else max(1, gpus)
        if gpus and n > gpus:
            raise UserError(f"--workers {n} is more than the {gpus} GPUs of the Ray cluster")
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_gpus": 0, "num_cpus": 1}
        actor_cls = ray.remote(_RayWorker).options(**options)
        queue = list(instances)
        deaths: dict[Key, int] = {}
        idle = [actor_cls.remote(cfg) for _ in range(min(n, len(queue)))]
        running: dict[Any, tuple[Any, Instance]] = {}
        dispatched: dict[Any, float] = {}  # ref -> time.monotonic() at dispatch
        while queue or running:
            while idle and queue:
                inst = queue.pop(0)
                if inst.key not in held:
                    if not store.claim(inst.key, worker_id, retry_failed=cfg.retry_failed):
                        if on_skip is not None:
                            on_skip(inst)
                        continue
                    held[inst.key] = inst
                actor = idle.pop()
                ref = actor.run.remote(inst)
                running[ref] = (actor, inst)
                dispatched[ref] = time.monotonic()
                if on_dispatch is not None:
                    on_dispatch(actor, inst)
            if not running:
                break
            wait_s = None
            if instance_timeout is not None:
                wait_s = max(0.0, min(dispatched[r] for r in running) + instance_timeout - time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            if not done:  # the oldest instance ran out of time: its actor goes, a fresh one takes its place
                ref = min(running, key=dispatched.__getitem__)
                actor, inst = running.pop(ref)
                dispatched.pop(ref)
                ray.kill(actor, no_restart=True)
                log.warning("%s %s seed %s: no result after %.0f s, its Ray worker was stopped", inst.method,
                            inst.task_id, inst.seed, instance_timeout)
                row = _failed_row(inst, f"no result within the instance time limit ({instance_timeout:g} s, "
                                        f"--instance-timeout); rerun with --retry-failed to try it again")
                actor = actor_cls.remote(cfg)
            else:
                actor, inst = running.pop(done[0])
                dispatched.pop(done[0])
                try:
                    row = ray.get(done[0])
                except RayActorError as exc:
                    deaths[inst.key] = deaths.get(inst.key, 0) + 1
                    log.warning("Ray worker died while running %s %s seed %s (%d/%d): %s", inst.method,
                                inst.task_id, inst.seed, deaths[inst.key], max_retries + 1,
                                " ".join(str(exc).split())[:200])
                    if deaths[inst.key] > max_retries:
                        row = _failed_row(inst, f"the worker died {deaths[inst.key]} times running this instance")
                    else:
                        queue.insert(0, inst)  # the claim is still ours: run it again, on a fresh actor
                        row = None
                    actor = actor_cls.remote(cfg)
            if row is not None:
                store.put(row)
                held.pop(inst.key, None)
                on_row(row)
            idle.append(actor)
    except BaseException:
        for key in held:
            store.release(key, worker_id)
        raise
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------ the whole run
@dataclass
class BenchSummary:
    total: int
    already_done: int
    ran: int = 0
    failed: int = 0
    rejudged: int = 0
    skipped: int = 0  # claimed by another live bench process (or finished by it meanwhile)

    def line(self) -> str:
        text = f"{self.total} instances: {self.already_done} already done, {self.ran} ran now ({self.failed} failed)"
        if self.rejudged:
            text += f", {self.rejudged} re-judged"
        if self.skipped:
            text += f", {self.skipped} left to other bench processes running on this folder"
        return text


def open_store(out: str | os.PathLike) -> ResultsStore:
    return ResultsStore(Path(out) / STORE_NAME)


def run_bench(cfg: BenchConfig, *, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, ray_init: dict[str, Any] | None = None, progress: bool = True,
              argv: Sequence[str] | None = None, on_dispatch=None,
              instance_timeout: float | None = None) -> BenchSummary:
    """Plan, skip what is done, run the rest with ``executor``; returns counts."""
    from tqdm.auto import tqdm

    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; use {' or '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if instance_timeout is not None and instance_timeout <= 0:
        raise UserError(f"--instance-timeout must be > 0 seconds, got {instance_timeout:g}")
    if executor == "local" and instance_timeout is not None:
        raise UserError("--instance-timeout needs --executor ray (the local executor runs instances in its own "
                        "process and cannot stop one; stop the process and resume instead)")
    if executor == "local" and workers not in (None, 1):
        raise UserError("--workers is for --executor ray; with the local executor start several bench processes "
                        "on the same --out instead (they share the work through claims)")
    suite = cfg.load_suite()
    instances = plan(cfg, suite)
    cfg.out.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg.out)
    _record_invocation(cfg, argv, executor, workers)
    summary = BenchSummary(total=len(instances), already_done=0)
    if suite.name == "ruler":
        summary.rejudged = rejudge_missing(cfg, suite, store, [i.key for i in instances])
    pending_keys = set(store.pending([i.key for i in instances], retry_failed=cfg.retry_failed))
    todo = [i for i in instances if i.key in pending_keys]
    summary.already_done = len(instances) - len(todo)
    bar = tqdm(total=len(instances), initial=summary.already_done, desc=f"bench {suite.name}", unit="run",
               disable=not progress, dynamic_ncols=True)

    def on_row(row: dict[str, Any]) -> None:
        summary.ran += 1
        summary.failed += row.get("status") == "failed"
        bar.set_postfix_str(f"{row['method']} {row['task_id']} {row['status']}", refresh=False)
        bar.update(1)

    def on_skip(inst: Instance) -> None:
        summary.skipped += 1

    try:
        if todo:
            if executor == "local":
                run_local(cfg, todo, store, on_row, on_skip, suite=suite)
            else:
                run_ray(cfg, todo, store, on_row, workers=workers, address=ray_address, init_kwargs=ray_init,
                        instance_timeout=instance_timeout, on_dispatch=on_dispatch, on_skip=on_skip)
    finally:
        bar.close()
        store.close()
    return summary


def _record_invocation(cfg: BenchConfig, argv: Sequence[str] | None, executor: str, workers: int | None) -> None:
    path = cfg.out / RECORD_NAME
    try:
        runs = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    except (OSError, ValueError):
        runs = []
    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": list(argv) if argv is not None else None,
             "executor": executor, "workers": workers, "suite": cfg.suite, "methods": cfg.methods,
             "seeds": cfg.seeds, "limit": cfg.limit, "tto": cfg.tto, "frames": cfg.num_frames,
             "reasoner": str(cfg.reasoner_path()), "machine": machine_info()}
    entry["models"] = {"reasoner": model_id(cfg.reasoner_path())}
    try:
        entry["teacher"] = str(cfg.teacher_path())
        entry["models"]["teacher"] = model_id(cfg.teacher_path())
    except UserError:
        entry["teacher"] = None
    runs.append(entry)
    write_json(path, {"runs": runs})


def machine_info() -> dict[str, Any]:
    """Where the figures come from: OS, CPUs, library versions, GPU, load at the start."""
    import platform

    import torch

    info: dict[str, Any] = {"platform": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(),
                            "python": sys.version.split()[0], "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(),
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def rejudge_missing(cfg: BenchConfig, suite, store: ResultsStore, keys: Iterable[Key]) -> int:
    """RULER rows whose judgement failed (score NULL, video on disk): judge them again."""
    wanted = set(keys)
    n = 0
    from .video import read_video
    from .suites.judge import video_fps

    for row in store.rows(suite=suite.name, status="done"):
        key = Key.of(row)
        if key not in wanted or row.get("score") is not None or not row.get("video_path"):
            continue
        video_file = cfg.out / row["video_path"]
        if not video_file.is_file():
            continue
        task = suite.task(row["task_id"])
        run_name = (row.get("extra") or {}).get("run_name") or _slug(row["method"])
        scored = suite.judge_video(task, read_video(video_file), video_fps(video_file), cfg.out, run_name, write=False)
        if scored.score is None:
            continue
        extra = dict(row.get("extra") or {})
        extra["score_details"] = {**(extra.get("score_details") or {}), **scored.details}
        extra["score_details"].pop("judge_error", None)
        new = {k: v for k, v in row.items() if k not in ("attempts", "created_at")}
        new.update(score=scored.score, extra=extra)
        store.put(new)
        n += 1
    return n


def import_vbvr_results(out: str | os.PathLike, results: str | os.PathLike) -> int:
    """Fill the scores of ``vbvr`` rows from the official kit's ``<run>_vbvr_results.json``
    files (``results`` is one such file or the folder holding them). Returns rows updated."""
    from .suites.vbvr import read_vbvr_results

    suffix = "_vbvr_results.json"
    results = Path(results)
    if results.is_file():
        files = [results]
    elif results.is_dir():
        files = sorted(results.glob(f"*{suffix}"))
    else:
        raise UserError(f"VBVR results {results} not found; give the official kit's output folder or one "
                        f"<run>{suffix} file")
    scores = {f.name[: -len(suffix)]: read_vbvr_results(f) for f in files if f.name.endswith(suffix)}
    store = open_store(out)
    try:
        n = 0
        runs = set()
        for row in store.rows(suite="vbvr", status="done"):
            run = (row.get("extra") or {}).get("run_name")
            runs.add(run)
            if run not in scores or row["task_id"] not in scores[run]:
                continue
            new = {k: v for k, v in row.items() if k not in ("attempts", "created_at")}
            new["score"] = scores[run][row["task_id"]]
            store.put(new)
            n += 1
        if not runs & set(scores):
            raise UserError(f"no <run>{suffix} in {results} matches a run of this bench (runs: "
                            f"{', '.join(sorted(r for r in runs if r)) or 'none'}); run the official kit on "
                            f"{Path(out) / 'vbvr_submission'} first")
        return n
    finally:
        store.close()
