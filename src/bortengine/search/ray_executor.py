"""Surrogate evaluations on a Ray cluster (the optional extra bortengine[ray]; `ray` is imported only when a
RayExecutor is made: bortengine.cluster connects).

One Ray actor per worker slot, each holding the surrogate: a surrogate that trains loads its teacher and data once
per worker, on its first evaluation, so afterwards only architectures go out and Evaluations (a loss, a status,
seconds, the node) come back. Each worker asks for the CPUs its evaluation uses (num_cpus = the surrogate's
threads, 1 when unset) and the workers are spread over the nodes. A worker whose process dies (killed, out of
memory, its node lost) is restarted by Ray and its evaluation run once more there; one that dies twice fails that
evaluation (the search goes on). close(cancel=True) (Ctrl-C, a kill, the time budget's deadline) kills the
workers at once. The process driving the search keeps the surrogate cache, so a run interrupted on either executor
resumes on either.

Connecting: bortengine.cluster.connect (an address, else $RAY_ADDRESS, else a local instance on 127.0.0.1 with this
process's CPUs; a wrong address fails at once with a message).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from functools import lru_cache
from typing import Any, Hashable, Optional

from bortengine.architecture import Architecture
from bortengine.cluster import CONNECT_TIMEOUT, connect, error_gist
from bortengine.engine import available_cpus
from bortengine.errors import ClusterError
from bortengine.search.executor import Evaluation, Executor, evaluate, worker_init, worker_surrogate
from bortengine.search.surrogates import Surrogate
from bortengine.version import __version__

__all__ = ["RayExecutor", "EvaluationWorker"]

POLL = 0.5                 # seconds per wait on the cluster: how soon Ctrl-C (or a SIGTERM turned into it) is seen


class EvaluationWorker:
    """One worker slot: the surrogate with its threads, kept for every evaluation sent to this worker. The driver's
    bortengine version must be this node's (a mixed cluster would mix results under one cache key)."""

    def __init__(self, surrogate: Surrogate, threads: int, niceness: int, version: str):
        if version != __version__:
            raise ClusterError(f"this node has bortengine {__version__}, the driver {version}: install the same "
                               f"version on every node")
        worker_init(threads, niceness)
        self.surrogate = worker_surrogate(surrogate, threads)
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def place(self) -> dict[str, Any]:
        """Where this worker runs: its node's id and its process id."""
        return {"node": self.node, "pid": os.getpid()}

    def evaluate(self, arch: Architecture) -> Evaluation:
        return replace(evaluate(self.surrogate, arch), node=self.node)


class RayExecutor(Executor):
    """Evaluations of one surrogate on a Ray cluster, one actor (EvaluationWorker) per slot.

    address: see connect(). workers: the slots (default and at most: as many as the nodes hold, each node's CPUs //
    the evaluation's threads). The workers start at the first submit (or placement()) and end at close(); a
    connection this executor opened is closed then too."""

    def __init__(self, surrogate: Surrogate, workers: Optional[int] = None, address: Optional[str] = None,
                 niceness: int = 0, connect_timeout: float = CONNECT_TIMEOUT):
        self.surrogate, self.niceness, self.connect_timeout = surrogate, niceness, connect_timeout
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.threads = getattr(surrogate, "threads", None) or 1
        self._workers: list[Any] = []                        # actor handles, at most capacity
        self._idle: list[Any] = []
        self._running: dict[Any, tuple[Hashable, Any]] = {}  # ObjectRef -> (ticket, the worker running it)
        self._ray, self._owned = connect(self.address, connect_timeout, available_cpus())
        try:
            self.capacity = self._size_up(workers)
        except ClusterError:
            self.close()
            raise

    @property
    def running(self) -> int:
        return len(self._running)

    def _size_up(self, workers: Optional[int]) -> int:
        """The worker slots the cluster holds: `workers`, at most as many as fit (a slot that fits nowhere would wait
        for CPUs forever, and its evaluation with it; an autoscaling cluster is sized by its own means)."""
        alive = [n for n in self._ray.nodes() if n.get("Alive")]
        self.nodes = len(alive)
        self.cpus = sum(int(n.get("Resources", {}).get("CPU", 0)) for n in alive)
        fits = sum(int(n.get("Resources", {}).get("CPU", 0)) // self.threads for n in alive)
        if fits < 1:
            raise ClusterError(f"no node of the Ray cluster ({self.nodes} node(s), {self.cpus} CPU(s)) has the "
                               f"{self.threads} CPU(s) an evaluation of the surrogate uses (its threads): give it "
                               f"fewer threads, or add a node with more CPUs")
        if workers and workers > fits:
            warnings.warn(f"{workers} workers asked for, but the Ray cluster holds {fits} of {self.threads} CPU(s) "
                          f"each: {fits} used", RuntimeWarning, stacklevel=3)
        return min(workers or fits, fits)

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        return (f"ray: {where}, {self.nodes} node(s), {self.cpus} CPU(s); {self.capacity} worker(s) of "
                f"{self.threads} thread(s)")

    def placement(self) -> list[dict[str, Any]]:
        """Every worker slot started (when not yet) and where it runs: [{"node", "pid"}, ...]. Ask before
        submitting: a worker answers after the evaluation it runs."""
        while len(self._workers) < self.capacity:
            self._idle.append(self._start_worker())
        return self._ray.get([w.place.remote() for w in self._workers])

    def submit(self, ticket: Hashable, arch: Architecture) -> None:
        if self._ray is None:       # closed (a deadline stopped the workers): a new connection and new workers
            self._ray, self._owned = connect(self.address, self.connect_timeout, available_cpus())
        if self._idle:
            worker = self._idle.pop()
        elif len(self._workers) < self.capacity:
            worker = self._start_worker()
        else:                       # more than capacity submitted: queued behind a running one
            worker = self._workers[len(self._running) % len(self._workers)]
        self._running[worker.evaluate.remote(arch)] = (ticket, worker)

    def _start_worker(self) -> Any:
        # a worker killed (or its node lost) is restarted, as often as it happens, and the evaluation it ran is run
        # once more: a second death fails that evaluation alone
        cls = _remote_worker_class(self._ray).options(num_cpus=self.threads, max_restarts=-1, max_task_retries=1,
                                                      scheduling_strategy="SPREAD")
        worker = cls.remote(self.surrogate, self.threads, self.niceness, __version__)
        self._workers.append(worker)
        return worker

    def wait(self, timeout: Optional[float] = None) -> list[tuple[Hashable, Evaluation]]:
        if not self._running:
            return []
        ray = self._ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:     # in slices, so an interrupt reaches the driver between them
            left = POLL if deadline is None else max(0.0, min(POLL, deadline - time.monotonic()))
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=left)
            if ready or (deadline is not None and time.monotonic() >= deadline):
                break
        if ready:       # and every other one finished by now
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        return [self._collect(ref) for ref in ready]

    def _collect(self, ref: Any) -> tuple[Hashable, Evaluation]:
        ray = self._ray
        ticket, worker = self._running.pop(ref)
        self._idle.append(worker)
        try:
            return ticket, ray.get(ref)
        except ray.exceptions.ActorUnavailableError:    # restarting, its task not run: submit it again
            return ticket, Evaluation("lost", None, "", 0.0, None)
        except ray.exceptions.RayActorError as e:
            if e.actor_init_failed:
                raise ClusterError(f"a Ray worker could not start: {error_gist(e)}. Every node needs bortengine "
                                   f"{__version__} and the surrogate's packages (bortengine[train]) installed, and "
                                   f"the files the surrogate reads (teacher, data) at the same paths") from None
            return ticket, Evaluation("failed", None, f"its Ray worker died twice running it (out of memory, killed, "
                                                      f"or its node lost?): {error_gist(e)}", 0.0, None)
        except ray.exceptions.RayError as e:
            return ticket, Evaluation("failed", None, f"{type(e).__name__}: {error_gist(e)}", 0.0, None)

    def close(self, cancel: bool = False) -> None:
        if self._ray is None:
            return
        ray = self._ray
        if self._running and not cancel:
            ray.wait(list(self._running), num_returns=len(self._running))
        for worker in self._workers:    # ends its process (and what it runs) and frees its CPUs for others
            try:
                ray.kill(worker)
            except (ray.exceptions.RayError, ValueError):   # already gone
                pass
        self._workers, self._idle, self._running = [], [], {}
        if self._owned:
            ray.shutdown()
        self._ray = None


@lru_cache(maxsize=None)
def _remote_worker_class(ray: Any) -> Any:
    return ray.remote(EvaluationWorker)


@lru_cache(maxsize=None)
def _remote_worker_class(ray: Any) -> Any:
    return ray.remote(EvaluationWorker)
