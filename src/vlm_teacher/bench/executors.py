"""Executors: how the pending instances of a benchmark get run.

``run_local`` runs them one after another in this process; ``run_ray`` spreads them over
Ray actors (one per GPU, or CPU workers), each loading the models once, while the driver
claims keys and writes every row (see the package docstring for why that is safe)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from ..errors import UserError
from ..store import ClaimRenewer, Key, ResultsStore, default_worker_id
from .plan import BenchConfig, Instance
from .runner import InstanceRunner

log = logging.getLogger("vlm_teacher")

OnRow = Callable[[dict[str, Any]], None]
OnSkip = Callable[[Instance], None]


def run_local(cfg: BenchConfig, instances: Sequence[Instance], store: ResultsStore, on_row: OnRow,
              on_skip: OnSkip | None = None, suite=None) -> None:
    """One process, one instance at a time; claims make parallel bench processes safe."""
    runner = InstanceRunner(cfg, suite)
    worker = default_worker_id()
    for inst in instances:
        if not store.claim(inst.key, worker, retry_failed=cfg.retry_failed):
            if on_skip is not None:  # finished or being run by another live process since the plan was made
                on_skip(inst)
            continue
        try:
            with ClaimRenewer(store, worker, lambda: [inst.key]):  # a slow instance keeps its claim
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


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'vlm-teacher[ray]'") from None
    return ray


def _start_ray(ray, address: str | None, init_kwargs: dict[str, Any] | None) -> bool:
    """Connect to (or start) Ray unless it runs already; True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    kwargs.update(init_kwargs or {})
    ray.init(**kwargs)
    return True


def _actor_class(ray, workers: int | None):
    """(the actor class with its resources, how many actors): one GPU each where the cluster has GPUs."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = int(workers) if workers else max(1, gpus)
    if gpus and n > gpus:
        raise UserError(f"--workers {n} is more than the {gpus} GPUs of the Ray cluster")
    options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_gpus": 0, "num_cpus": 1}
    return ray.remote(_RayWorker).options(**options), n


class _RayPool:
    """The driver's bookkeeping of one Ray run: idle actors, running instances, claims held."""

    def __init__(self, ray, cfg: BenchConfig, store: ResultsStore, actor_cls, n: int, queue: list[Instance],
                 max_retries: int, instance_timeout: float | None, on_dispatch, on_skip: OnSkip | None) -> None:
        self.ray, self.cfg, self.store, self.actor_cls = ray, cfg, store, actor_cls
        self.queue = queue
        self.max_retries, self.instance_timeout = max_retries, instance_timeout
        self.on_dispatch, self.on_skip = on_dispatch, on_skip
        self.worker_id = default_worker_id()
        self.held: dict[Key, Instance] = {}  # claimed by this driver, no row yet
        self.deaths: dict[Key, int] = {}
        self.idle = [actor_cls.remote(cfg) for _ in range(min(n, len(queue)))]
        self.running: dict[Any, tuple[Any, Instance]] = {}
        self.dispatched: dict[Any, float] = {}  # ref -> time.monotonic() at dispatch

    def dispatch(self) -> None:
        """Give queued instances to idle actors, claiming each key first."""
        while self.idle and self.queue:
            inst = self.queue.pop(0)
            if inst.key not in self.held:
                if not self.store.claim(inst.key, self.worker_id, retry_failed=self.cfg.retry_failed):
                    if self.on_skip is not None:
                        self.on_skip(inst)
                    continue
                self.held[inst.key] = inst
            actor = self.idle.pop()
            ref = actor.run.remote(inst)
            self.running[ref] = (actor, inst)
            self.dispatched[ref] = time.monotonic()
            if self.on_dispatch is not None:
                self.on_dispatch(actor, inst)

    def next_row(self) -> tuple[Instance, dict[str, Any] | None]:
        """Wait for one instance to end (or time out); returns it with its row (None: re-queued)."""
        wait_s = None
        if self.instance_timeout is not None:
            oldest = min(self.dispatched[r] for r in self.running)
            wait_s = max(0.0, oldest + self.instance_timeout - time.monotonic())
        done, _ = self.ray.wait(list(self.running), num_returns=1, timeout=wait_s)
        if not done:
            return self._timed_out()
        ref = done[0]
        actor, inst = self.running.pop(ref)
        self.dispatched.pop(ref)
        try:
            row = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            row = self._died(inst, exc)
            actor = self.actor_cls.remote(self.cfg)
        self.idle.append(actor)
        return inst, row

    def _timed_out(self) -> tuple[Instance, dict[str, Any]]:
        """The oldest instance ran out of time: its actor goes, a fresh one takes its place."""
        ref = min(self.running, key=self.dispatched.__getitem__)
        actor, inst = self.running.pop(ref)
        self.dispatched.pop(ref)
        self.ray.kill(actor, no_restart=True)
        log.warning("%s %s seed %s: no result after %.0f s, its Ray worker was stopped", inst.method,
                    inst.task_id, inst.seed, self.instance_timeout)
        self.idle.append(self.actor_cls.remote(self.cfg))
        return inst, _failed_row(inst, f"no result within the instance time limit ({self.instance_timeout:g} s, "
                                       f"--instance-timeout); rerun with --retry-failed to try it again")

    def _died(self, inst: Instance, exc: Exception) -> dict[str, Any] | None:
        """The actor died running ``inst``: run it again on a fresh actor, up to ``max_retries`` times."""
        self.deaths[inst.key] = self.deaths.get(inst.key, 0) + 1
        log.warning("Ray worker died while running %s %s seed %s (%d/%d): %s", inst.method, inst.task_id, inst.seed,
                    self.deaths[inst.key], self.max_retries + 1, " ".join(str(exc).split())[:200])
        if self.deaths[inst.key] > self.max_retries:
            return _failed_row(inst, f"the worker died {self.deaths[inst.key]} times running this instance")
        self.queue.insert(0, inst)  # the claim is still ours
        return None

    def release_claims(self) -> None:
        for key in self.held:
            self.store.release(key, self.worker_id)


def run_ray(cfg: BenchConfig, instances: Sequence[Instance], store: ResultsStore, on_row: OnRow, *,
            workers: int | None = None, address: str | None = None, init_kwargs: dict[str, Any] | None = None,
            max_retries: int = 2, instance_timeout: float | None = None,
            on_dispatch: Callable[[Any, Instance], None] | None = None, on_skip: OnSkip | None = None) -> None:
    """Spread instances over Ray actors; the driver claims keys and writes every row.

    ``instance_timeout`` (seconds from dispatch, model loading on a fresh actor
    included): an instance still running then has its actor killed and becomes a
    ``failed`` row naming the limit (``--retry-failed`` runs it again), so one hung
    instance or an actor that is never scheduled cannot stall a whole benchmark.
    ``on_dispatch(actor, instance)`` is called when an instance is sent to an actor
    (tests use it to kill an actor mid-run).
    """
    ray = _import_ray()
    import ray.exceptions  # noqa: F401 - RayActorError, read through the module in _RayPool

    started = _start_ray(ray, address, init_kwargs)
    pool = None
    try:
        actor_cls, n = _actor_class(ray, workers)
        pool = _RayPool(ray, cfg, store, actor_cls, n, list(instances), max_retries, instance_timeout, on_dispatch,
                        on_skip)
        with ClaimRenewer(store, pool.worker_id, lambda: list(pool.held)):  # the driver holds every claim
            while pool.queue or pool.running:
                pool.dispatch()
                if not pool.running:
                    break
                inst, row = pool.next_row()
                if row is not None:
                    store.put(row)
                    pool.held.pop(inst.key, None)
                    on_row(row)
    except BaseException:
        if pool is not None:
            pool.release_claims()
        raise
    finally:
        if started:
            ray.shutdown()
