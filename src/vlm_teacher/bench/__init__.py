"""Benchmarks: suite x method x seed -> one row each in a resumable SQLite store.

Modules (imports go one way: executors -> runner -> plan): ``plan`` (settings, instances,
result keys), ``runner`` (one instance -> one row), ``executors`` (local, Ray); this
package runs the whole benchmark.

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

The result key's ``config_hash`` covers the method's settings and code version, the
whole resolved optimisation config, the models' identities (every weight byte) and the
video length, so ablations, other teachers, other settings, changed defaults or changed
method code land in new rows instead of reusing or overwriting old ones
(``plan.KEY_VERSION`` says what a store written by an older version holds). A running
instance's claim is renewed by its worker (``store.ClaimRenewer``), so a slow instance is
never taken over by a second bench process.

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

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from tqdm.auto import tqdm

from ..errors import UserError
from ..files import check_output_folder, write_json
from ..identity import MODEL_RECORD_FILES, model_id
from ..runtime import device_and_dtype, machine_info
from ..store import ResultsStore
from ..suites.vbvr import import_vbvr_scores
from .executors import run_local, run_ray
from .plan import RECORD_NAME, RUNS_DIR, STORE_NAME, BenchConfig, Instance, config_hash, plan
from .runner import InstanceRunner, teacher_judgement

__all__ = ["BenchConfig", "BenchSummary", "EXECUTORS", "Instance", "InstanceRunner", "MODEL_RECORD_FILES",
           "RECORD_NAME", "RUNS_DIR", "STORE_NAME", "config_hash", "import_vbvr_results", "model_id", "open_store",
           "plan", "run_bench", "run_local", "run_ray", "teacher_judgement"]

EXECUTORS = ("local", "ray")


@dataclass
class BenchSummary:
    total: int
    already_done: int
    ran: int = 0
    failed: int = 0
    rejudged: int = 0
    skipped: int = 0  # claimed by another live bench process (or finished by it meanwhile)
    errors: list[str] = field(default_factory=list)  # "method task seed N: message" of the first failures

    #: failures named in ``errors`` (the rest are counted)
    MAX_ERRORS: ClassVar[int] = 3

    def line(self) -> str:
        text = f"{self.total} instances: {self.already_done} already done, {self.ran} ran now ({self.failed} failed)"
        if self.rejudged:
            text += f", {self.rejudged} re-judged"
        if self.skipped:
            text += f", {self.skipped} left to other bench processes running on this folder"
        return text

    def failure_report(self) -> str:
        """What failed in this invocation: how many of the instances it ran, and the first errors."""
        lines = [f"{self.failed} of the {self.ran} instances run now failed ({self.ran - self.failed} done):"]
        lines += [f"  {e}" for e in self.errors]
        if self.failed > len(self.errors):
            lines.append(f"  ... and {self.failed - len(self.errors)} more (the error column of the store's "
                         "failed rows)")
        return "\n".join(lines)


def open_store(out: str | os.PathLike) -> ResultsStore:
    return ResultsStore(Path(out) / STORE_NAME)


def run_bench(cfg: BenchConfig, *, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, ray_init: dict[str, Any] | None = None, progress: bool = True,
              argv: Sequence[str] | None = None, on_dispatch=None,
              instance_timeout: float | None = None) -> BenchSummary:
    """Plan, skip what is done, run the rest with ``executor``; returns counts."""
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
    check_output_folder(cfg.out)
    if executor == "local":  # Ray's workers check theirs (the driver may have no GPU)
        device_and_dtype(cfg.device, cfg.dtype)
    suite = cfg.load_suite()
    instances = plan(cfg, suite)
    cfg.out.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg.out)
    _record_invocation(cfg, argv, executor, workers)
    summary = BenchSummary(total=len(instances), already_done=0)
    summary.rejudged = suite.rescore(store, cfg.out, [i.key for i in instances])
    pending_keys = set(store.pending([i.key for i in instances], retry_failed=cfg.retry_failed))
    todo = [i for i in instances if i.key in pending_keys]
    summary.already_done = len(instances) - len(todo)
    bar = tqdm(total=len(instances), initial=summary.already_done, desc=f"bench {suite.name}", unit="run",
               disable=not progress, dynamic_ncols=True)

    def on_row(row: dict[str, Any]) -> None:
        summary.ran += 1
        if row.get("status") == "failed":
            summary.failed += 1
            if len(summary.errors) < summary.MAX_ERRORS:
                summary.errors.append(f"{row['method']} {row['task_id']} seed {row['seed']}: {row.get('error')}")
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


def import_vbvr_results(out: str | os.PathLike, results: str | os.PathLike) -> int:
    """Fill the scores of ``vbvr`` rows from the official kit's ``<run>_vbvr_results.json``
    files (``results`` is one such file or the folder holding them). Returns rows updated."""
    store = open_store(out)
    try:
        return import_vbvr_scores(store, results, out)
    finally:
        store.close()
