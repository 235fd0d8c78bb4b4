"""Surrogate evaluations, and Agora's fine-tunes of a round, on a Ray cluster (the optional extra bortengine[ray];
`ray` is imported only when a RayExecutor or a RaySettingsRunner is made: bortengine.cluster connects).

One Ray actor per worker slot, each holding the surrogate: a surrogate that trains loads its teacher and data once
per worker, on its first evaluation, so afterwards only architectures go out and Evaluations (a loss, a status,
seconds, the node) come back. Each worker asks for the CPUs its evaluation uses (num_cpus = the surrogate's
threads, 1 when unset) and the workers are spread over the nodes. A worker whose process dies (killed, out of
memory, its node lost) is restarted by Ray and its evaluation run once more there; one that dies twice fails that
evaluation (the search goes on). A node lost when the other nodes have no CPU free for its workers: those workers
are ended (restarted, they would wait for CPUs for ever, and the search with them) and the slots shrink to what the
cluster now holds; their evaluations run again on the others. close(cancel=True) (Ctrl-C, a kill, the time
budget's deadline) kills the workers at once. The process driving the search keeps the surrogate cache, so a run
interrupted on either executor resumes on either.

Agora (RaySettingsRunner, training's SettingsRunner): one Ray task per setting of a round, all of the round at once,
each asking for the CPUs it trains with; the trainer goes out once per run, the round's points once per round, and
only the best setting's model comes back. docs/scale-out.md, "Agora's settings on the cluster".

Connecting: bortengine.cluster.connect (an address, else $RAY_ADDRESS, else a local instance on 127.0.0.1 with this
process's CPUs; a wrong address fails at once with a message).
"""
from __future__ import annotations

import os
import pickle
import time
import warnings
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Hashable, Optional, Sequence

from bortengine.architecture import Architecture
from bortengine.cluster import CONNECT_TIMEOUT, alive_nodes, connect, error_gist
from bortengine.engine import available_cpus
from bortengine.errors import BortEngineError, ClusterError
from bortengine.search.executor import (Evaluation, Executor, check_executor, evaluate, worker_init,
                                        worker_surrogate)
from bortengine.search.surrogates import Surrogate
from bortengine.version import __version__

if TYPE_CHECKING:
    from bortengine.training import RoundWork, SettingResult, SettingRun, SettingsRunner

__all__ = ["RayExecutor", "EvaluationWorker", "RaySettingsRunner", "fit_setting_task", "settings_runner"]

POLL = 0.5                 # seconds per wait on the cluster: how soon Ctrl-C (or a SIGTERM turned into it) is seen
# seconds between a wait's looks at the cluster's nodes (RayExecutor._lost_nodes): how soon a lost node is acted on
NODES_CHECK_S = 5.0
# runs of an Agora fine-tune after the first when its worker dies (killed, out of memory, its node lost): a lost
# setting stops the whole run (there is no fallback as for a candidate), so it gets more than one evaluation does
FIT_RETRIES = 2


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
        self._places: dict[Any, Any] = {}    # worker -> ObjectRef of its place(), asked as it starts
        self._nodes: dict[Any, str] = {}     # worker -> the node it last ran on (its place, its evaluations)
        self._nodes_checked = time.monotonic()
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
        node_cpus = _node_cpus(self._ray)
        self.nodes, self.cpus = len(node_cpus), sum(node_cpus)
        fits = _slots(node_cpus, self.threads, "an evaluation of the surrogate uses (its threads)")
        if workers and workers > fits:
            warnings.warn(f"{workers} workers asked for, but the Ray cluster holds {fits} of {self.threads} CPU(s) "
                          f"each: {fits} used", RuntimeWarning, stacklevel=3)
        return min(workers or fits, fits)

    def describe(self) -> str:
        return (f"ray: {_where(self.address)}, {self.nodes} node(s), {self.cpus} CPU(s); {self.capacity} worker(s) "
                f"of {self.threads} thread(s)")

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
        self._places[worker] = worker.place.remote()     # where it runs, read if its node is lost (_lost_nodes)
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
            if time.monotonic() - self._nodes_checked >= NODES_CHECK_S:
                lost = self._lost_nodes()
                if lost:
                    return lost
        if ready:       # and every other one finished by now
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        return [self._collect(ref) for ref in ready]

    def _collect(self, ref: Any) -> tuple[Hashable, Evaluation]:
        ray = self._ray
        ticket, worker = self._running.pop(ref)
        self._idle.append(worker)
        try:
            result = ray.get(ref)
            if result.node:
                self._nodes[worker] = result.node
            return ticket, result
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

    def _lost_nodes(self) -> list[tuple[Hashable, Evaluation]]:
        """When the nodes alive hold fewer workers than there are (a node lost, its workers restarting with no CPUs
        free anywhere: they would wait for ever, and their evaluations with them): as many workers as are too many
        are ended, those on the lost nodes first, then those never placed; the slots shrink to what the cluster
        holds, and the evaluations they held come back "lost" (the search runs them again on the others). A
        healthy worker ended in place of one that cannot start frees the CPUs that one then starts on."""
        ray = self._ray
        self._nodes_checked = time.monotonic()
        nodes = alive_nodes(ray)
        fits = sum(cpus // self.threads for cpus in nodes.values())
        if fits >= len(self._workers):
            return []
        if fits < 1:
            raise ClusterError(f"the Ray cluster lost its nodes: none left holds the {self.threads} CPU(s) an "
                               f"evaluation uses; run the same command again once the cluster is back (the finished "
                               f"evaluations are cached)")
        where = {w: self._node_of(w) for w in self._workers}
        order = sorted(self._workers, key=lambda w: (where[w] is None or where[w] in nodes,
                                                     where[w] is not None))
        ended = order[:len(self._workers) - fits]
        for worker in ended:
            try:
                ray.kill(worker, no_restart=True)
            except (ray.exceptions.RayError, ValueError):
                pass
            self._places.pop(worker, None)
            self._nodes.pop(worker, None)
        self._workers = [w for w in self._workers if w not in ended]
        self._idle = [w for w in self._idle if w not in ended]
        lost = [(ref, ticket) for ref, (ticket, worker) in self._running.items() if worker in ended]
        for ref, _ in lost:
            del self._running[ref]
        self.capacity = fits
        warnings.warn(f"the Ray cluster lost a node: {len(nodes)} node(s) left hold {fits} worker(s) of "
                      f"{self.threads} CPU(s), so {len(ended)} worker(s) were ended and their evaluations run again "
                      f"on the others", RuntimeWarning, stacklevel=2)
        return [(ticket, Evaluation("lost", None, "", 0.0, None)) for _, ticket in lost]

    def _node_of(self, worker: Any) -> Optional[str]:
        """The node the worker ran on last, as far as the driver knows (None: not placed yet)."""
        if worker in self._nodes:
            return self._nodes[worker]
        ray, ref = self._ray, self._places.get(worker)
        if ref is None or not ray.wait([ref], timeout=0)[0]:
            return None
        try:
            self._nodes[worker] = ray.get(ref)["node"]
        except ray.exceptions.RayError:
            return None
        return self._nodes[worker]

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
        self._workers, self._idle, self._running, self._places, self._nodes = [], [], {}, {}, {}
        if self._owned:
            ray.shutdown()
        self._ray = None


@lru_cache(maxsize=None)
def _remote_worker_class(ray: Any) -> Any:
    return ray.remote(EvaluationWorker)


def _node_cpus(ray: Any) -> list[int]:
    """The CPUs of each node of the cluster that is alive."""
    return list(alive_nodes(ray).values())


def _slots(node_cpus: Sequence[int], threads: int, what: str) -> int:
    """How many pieces of work of `threads` CPUs the nodes hold at once; ClusterError when none fits anywhere (it
    would wait for CPUs forever)."""
    fits = sum(cpus // threads for cpus in node_cpus)
    if fits < 1:
        raise ClusterError(f"no node of the Ray cluster ({len(node_cpus)} node(s), {sum(node_cpus)} CPU(s)) has the "
                           f"{threads} CPU(s) {what}: give it fewer threads, or add a node with more CPUs")
    return fits


def _where(address: Optional[str]) -> str:
    return f"the Ray cluster at {address}" if address else "a local Ray instance"


# -- Agora's fine-tunes ----------------------------------------------------------------------------------------------
class RaySettingsRunner:
    """Agora's fine-tunes of a round on a Ray cluster (training.SettingsRunner): one Ray task per setting, the whole
    round submitted at once and spread over the nodes, each task asking for the CPUs it trains with.

    address: see connect() (a wrong one fails here, within connect_timeout). threads: each fine-tune's CPUs (Ray's
    num_cpus, and the trainer's torch threads on the worker); default the CPUs of the smallest node, so a task fits
    on every node and, while Θ has no more settings than the cluster has nodes, each setting has a node to itself.
    capacity: the fine-tunes the cluster runs at once (Σ ⌊node CPUs / threads⌋); more wait for a free slot.

    What moves: the trainer once per run (pickled; the text trainer sends its student as weights and reads its
    tokenizer and a distillation teacher from their directories, which must be at the same path on every node), the
    round's training points and labels and the selection part of dev once per round, each setting's result back
    (its dev accuracy and class ids, its node, its seconds), and the best setting's model alone, from the object
    store (the others are dropped there). A task whose worker dies is run again, FIT_RETRIES times; Ctrl-C (any
    exception while the round runs) cancels the round's tasks, killing their processes, before it goes on. The
    caller closes the runner (close(), or `with`), which disconnects a connection it opened."""

    def __init__(self, address: Optional[str] = None, threads: Optional[int] = None,
                 connect_timeout: float = CONNECT_TIMEOUT):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._ray, self._owned = connect(self.address, connect_timeout, available_cpus())
        self._trainer: Optional[tuple[Any, Any]] = None     # (the trainer, its ObjectRef): sent once
        try:
            node_cpus = _node_cpus(self._ray)
            self.nodes, self.cpus = len(node_cpus), sum(node_cpus)
            self.threads = threads or min([c for c in node_cpus if c > 0], default=1)
            self.capacity = _slots(node_cpus, self.threads, "a fine-tune is given (--threads)")
        except ClusterError:
            self.close()
            raise

    def describe(self) -> str:
        return (f"ray: {_where(self.address)}, {self.nodes} node(s), {self.cpus} CPU(s); {self.capacity} fine-tune(s) "
                f"at a time of {self.threads} thread(s)")

    def run_round(self, trainer: Any, runs: Sequence["SettingRun"], work: "RoundWork",
                  on_result: Callable[["SettingResult"], None]) -> tuple[list["SettingResult"], Any]:
        from bortengine.training import best_position

        ray = self._ray
        trainer_ref, work_ref = self._sent(trainer), ray.put(work)
        task = _remote_fit_setting(ray).options(num_cpus=self.threads, num_returns=2, max_retries=FIT_RETRIES,
                                                scheduling_strategy="SPREAD")
        pending, models, results = {}, {}, {}
        for run in runs:
            # the trainer inside a list: Ray hands it over unresolved, so the task sets its threads before torch
            # is imported by unpickling it
            result_ref, models[run.index] = task.remote([trainer_ref], work_ref, run, self.threads, __version__)
            pending[result_ref] = run
        try:
            while pending:      # in slices, so an interrupt reaches the driver between them
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL)
                for ref in ready:
                    run = pending.pop(ref)
                    results[run.index] = self._fetched(ref, run)
                    on_result(results[run.index])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        ordered = [results[run.index] for run in runs]
        best = runs[best_position(ordered)]
        return ordered, self._fetched(models[best.index], best)

    def _sent(self, trainer: Any) -> Any:
        """The trainer's ObjectRef, put into the object store on its first round."""
        if self._trainer is None or self._trainer[0] is not trainer:
            try:
                self._trainer = (trainer, self._ray.put(trainer))
            except (TypeError, AttributeError, pickle.PicklingError) as e:
                raise ClusterError(f"the trainer ({type(trainer).__name__}) cannot be sent to the Ray workers: {e}. "
                                   f"On a cluster the trainer, and the models it returns, must pickle "
                                   f"(agora.TextClassifierTrainer does)") from None
        return self._trainer[1]

    def _fetched(self, ref: Any, run: "SettingRun") -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, BortEngineError):    # the fine-tune's own error (a bad setting, ...), as at home
                raise e.cause from None
            raise
        except ray.exceptions.RayError as e:
            raise ClusterError(f"the fine-tune of setting {run.index} {run.setting} did not finish on the Ray "
                               f"cluster: {error_gist(e)} (its worker died {FIT_RETRIES + 1} times: out of memory, "
                               f"killed, or its node lost?); the run resumes after its last finished round") from None

    def close(self) -> None:
        self._trainer = None
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray = None

    def __enter__(self) -> "RaySettingsRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def fit_setting_task(trainer_box: list, work: "RoundWork", run: "SettingRun", threads: int,
                     version: str) -> tuple["SettingResult", Any]:
    """One fine-tune on a Ray worker (RaySettingsRunner's task): (its result, with this node's id; the model).
    trainer_box: [the trainer's ObjectRef]; the trainer's `threads`, if it has them, become the task's."""
    if version != __version__:
        raise ClusterError(f"this node has bortengine {__version__}, the driver {version}: install the same version "
                           f"on every node")
    worker_init(threads)
    import ray

    from bortengine.training import fit_setting

    trainer = ray.get(trainer_box[0])
    if hasattr(trainer, "threads"):
        trainer.threads = threads
    model, result = fit_setting(trainer, run, work)
    return replace(result, node=ray.get_runtime_context().get_node_id()), model


@lru_cache(maxsize=None)
def _remote_fit_setting(ray: Any) -> Any:
    return ray.remote(fit_setting_task)


def settings_runner(executor: Optional[str] = None, address: Optional[str] = None,
                    threads: Optional[int] = None) -> "SettingsRunner":
    """Where Agora's fine-tunes run (finetune_agora's runner): executor "local" (the default) in this process, one
    after another (training.InProcessRunner); "ray", or an address given, on a Ray cluster (RaySettingsRunner,
    connected now: a wrong address fails here, before anything is loaded). The caller closes it (`with`)."""
    if check_executor(executor, address) == "ray":
        return RaySettingsRunner(address, threads)
    from bortengine.training import InProcessRunner

    return InProcessRunner()
