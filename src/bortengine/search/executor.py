"""Where surrogate evaluations run: the Executor interface (submit one candidate's evaluation, take results as
they finish, close or cancel on an interrupt) and its implementation on local worker processes (the one on a Ray
cluster is search.ray_executor).

An executor only runs evaluations and hands back their outcomes; the process driving the search looks up and
writes the surrogate cache, keeps the time budget and records the outcomes on the candidates (search.evaluation),
so another executor (a cluster) needs no more than these four methods.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Hashable, Optional

from bortengine.architecture import Architecture
from bortengine.engine import available_cpus
from bortengine.search.errors import SearchError
from bortengine.search.surrogates import Surrogate

__all__ = ["Evaluation", "evaluate", "Executor", "LocalExecutor", "default_workers", "worker_init",
           "worker_surrogate", "EXECUTORS", "check_executor"]

EXECUTORS = ("local", "ray")


def check_executor(executor: Optional[str], ray_address: Optional[str]) -> str:
    """The executor's name: as given, else "ray" when an address is, else "local"."""
    executor = executor or ("ray" if ray_address else "local")
    if executor not in EXECUTORS:
        raise SearchError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if ray_address and executor != "ray":
        raise SearchError(f"a Ray address ({ray_address}) goes with the ray executor, not {executor!r}")
    return executor


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one surrogate evaluation.

    status: "ok" (value is the error), "nan" (the surrogate returned NaN, a deterministic result), "failed" (it
    raised or returned ±inf; message says what) or "lost" (it did not finish through no fault of its own, e.g.
    its worker went down with another evaluation: submit it again). node: where it ran, "local" (this machine)
    or the id of the Ray node (search.ray_executor); None when not known (a cache entry from before nodes were
    recorded)."""

    status: str
    value: Optional[float]
    message: str
    seconds: float
    node: Optional[str] = "local"


def evaluate(surrogate: Surrogate, arch: Architecture) -> Evaluation:
    """Runs the surrogate on one architecture and never raises (but for an interrupt), so one bad candidate
    cannot stop the search."""
    start = time.perf_counter()
    try:
        value = float(surrogate(arch))
    except Exception as e:  # noqa: BLE001 - recorded and reported per candidate
        return Evaluation("failed", None, f"{type(e).__name__}: {e}", time.perf_counter() - start)
    if math.isnan(value):
        return Evaluation("nan", value, "the surrogate returned NaN", time.perf_counter() - start)
    if math.isinf(value):
        return Evaluation("failed", None, f"the surrogate returned {value}", time.perf_counter() - start)
    return Evaluation("ok", value, "", time.perf_counter() - start)


class Executor(ABC):
    """Runs evaluations of one surrogate, at most `capacity` at a time.

    The driver submits while fewer than `capacity` are running, then waits; results come back under the ticket
    they were submitted with, in the order they finish. close() ends the executor; cancel=True (Ctrl-C or a kill)
    stops what is running without waiting for it. An interrupt may reach the driver from inside wait().
    """

    capacity: int

    @abstractmethod
    def submit(self, ticket: Hashable, arch: Architecture) -> None:
        """Start evaluating arch (or queue it to start at once when a slot frees)."""

    @abstractmethod
    def wait(self, timeout: Optional[float] = None) -> list[tuple[Hashable, Evaluation]]:
        """Blocks until at least one submitted evaluation finishes, or `timeout` seconds have passed (then it may
        return none); returns every finished one."""

    @property
    @abstractmethod
    def running(self) -> int:
        """Evaluations submitted and not yet returned by wait()."""

    @abstractmethod
    def close(self, cancel: bool = False) -> None:
        """Release the workers: wait for them, or with cancel=True stop them at once."""

    @abstractmethod
    def describe(self) -> str:
        """Where the evaluations run, in a line (recorded in the extraction's report)."""


def default_workers(surrogate: Surrogate) -> int:
    """One worker per CPU for an expensive surrogate (one that trains a model), else 1 (this process)."""
    return available_cpus() if surrogate.expensive else 1


def worker_init(threads: int, niceness: int = 0, started: Any = None, parent: Optional[int] = None) -> None:
    """A worker process's set-up, before its first evaluation. started: a shared counter of the workers that got
    here (past importing the main script again). parent: the pid of the process whose death ends this one."""
    if parent is not None:
        _die_with(parent)
    if started is not None:
        with started.get_lock():
            started.value += 1
    if niceness:  # heavy surrogate training yields to other jobs; the parent (which times finalists) does not
        os.nice(niceness)
    # before torch is imported (by the surrogate, if at all): passive OpenMP waits on a shared machine (see
    # docs/training.md) and each worker's share of the CPUs
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _die_with(parent: int) -> None:
    """Linux: this process gets SIGKILL when the one that started it dies. A SIGKILL of the extraction (the OOM
    killer, `docker kill`, a CI timeout) left its workers training for nobody, ~0.7 GB each (a new-user trial);
    a Ctrl-C or SIGTERM already ends them through the pool's shutdown."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:    # it died before the call
        os._exit(1)


def worker_surrogate(surrogate: Surrogate, threads: int) -> Surrogate:
    """The surrogate as a worker with `threads` CPUs runs it: given those threads when its own are unset."""
    if getattr(surrogate, "threads", "absent") is None:
        return replace(surrogate, threads=threads)
    return surrogate


# Why a script that calls the extraction (or the pipeline) at its top level breaks: the workers run it again.
SCRIPT_GUARD = ("the extraction's worker processes are started with 'spawn', which runs the main script again in "
                "each of them: put the script's call under `if __name__ == \"__main__\":`")


STILLBORN_POOLS = 2   # pools in a row whose workers all died while starting: the extraction stops


def in_worker_bootstrap() -> bool:
    """Whether this process is a spawned worker still importing its parent's main script: a call to the extraction
    or the pipeline from there is the parent's script running again, not a run of its own (multiprocessing's own
    check of the same case, spawn._check_not_importing_main, reads the same flag)."""
    import multiprocessing

    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def unguarded_script_call() -> Optional[str]:
    """"FILE:LINE" when the caller was reached from the top level of the main script outside an `if __name__ ==
    "__main__":` block (each spawned worker would run that line again), else None: a guarded call, an interactive
    session, a notebook, `python -c`, a console script, `python -m package`. Read from the script's source (its
    syntax tree), so that a run is refused before it does any work, not after its first workers fail."""
    import ast
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    if getattr(getattr(main, "__spec__", None), "name", "").endswith(".__main__"):
        return None   # `python -m package`: multiprocessing does not run a package's __main__ again in its workers
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and
                                     frame.f_globals.get("__name__") == "__main__"):
        frame = frame.f_back
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        tree = ast.parse(open(frame.f_code.co_filename, encoding="utf-8").read())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _tests_main(node.test) and node.lineno <= line <= (node.end_lineno or line):
            return None
    return f"{frame.f_code.co_filename}:{line}"


def _tests_main(test: Any) -> bool:
    """Whether an if's test is `__name__ == "__main__"` (either way round)."""
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


def _worker_evaluate(surrogate: Surrogate, arch: Architecture, threads: int) -> Evaluation:
    return evaluate(worker_surrogate(surrogate, threads), arch)


class LocalExecutor(Executor):
    """Evaluations on this machine: with workers ≤ 1 one at a time in this process (inside wait()), else in a pool
    of `workers` spawned processes, each at niceness `niceness` with available_cpus() // workers threads (given
    to a surrogate whose threads are unset, and as OMP_NUM_THREADS). The pool starts at the first submit and
    lasts until close(). When a worker dies (killed, out of memory) the pool breaks: the evaluation first seen
    broken fails, the others that were running in it come back "lost", and a new pool takes the submissions."""

    def __init__(self, surrogate: Surrogate, workers: int, niceness: int = 0):
        self.surrogate, self.workers, self.niceness = surrogate, workers, niceness
        self.capacity = max(1, workers)
        self.threads = max(1, available_cpus() // max(1, workers))
        self.pool = None
        self._running: dict[Any, tuple[Hashable, Any]] = {}  # future -> (ticket, the pool it runs in)
        self._here: dict[Hashable, Architecture] = {}         # workers <= 1: ticket -> what wait() evaluates
        self._started: dict[Any, Any] = {}                    # pool -> its count of workers that got to start
        self._stillborn = 0                                   # pools in a row that broke with none started

    @property
    def running(self) -> int:
        return len(self._running) + len(self._here)

    def describe(self) -> str:
        if self.workers <= 1:
            return "local: in the searching process"
        return f"local: {self.workers} worker processes of {self.threads} thread(s)"

    def submit(self, ticket: Hashable, arch: Architecture) -> None:
        if self.workers <= 1:
            self._here[ticket] = arch
            return
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            self.pool = self._start_pool()
        try:
            fut = self.pool.submit(_worker_evaluate, self.surrogate, arch, self.threads)
        except BrokenProcessPool:  # broke since the last wait(): its evaluations come back from the next one
            self.pool = self._start_pool()
            fut = self.pool.submit(_worker_evaluate, self.surrogate, arch, self.threads)
        self._running[fut] = (ticket, self.pool)

    def _start_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if in_worker_bootstrap():
            raise SearchError(f"the extraction was started inside one of its own worker processes; {SCRIPT_GUARD}")

        context = multiprocessing.get_context("spawn")
        started = context.Value("i", 0)
        pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=worker_init,
                                   initargs=(self.threads, self.niceness, started, os.getpid()))
        self._started[pool] = started
        return pool

    def wait(self, timeout: Optional[float] = None) -> list[tuple[Hashable, Evaluation]]:
        if self._here:   # in this process: the evaluation runs to its end, whatever the timeout
            ticket = next(iter(self._here))
            return [(ticket, evaluate(self.surrogate, self._here.pop(ticket)))]
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures

        done, _ = wait_futures(list(self._running), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for fut in done:
            if fut in self._running:  # (not already returned with its broken pool)
                out += self._collect(fut)
        return out

    def _collect(self, fut) -> list[tuple[Hashable, Evaluation]]:
        """The finished future's result; when its pool broke, also the others of that pool (finished or lost)."""
        from concurrent.futures.process import BrokenProcessPool

        ticket, pool = self._running.pop(fut)
        if not isinstance(fut.exception(), BrokenProcessPool):
            return [(ticket, fut.result())]
        # A pool none of whose workers got to its initializer died while starting: most often the main script run
        # again in each of them (its refusal is in the workers' stderr, out of the parent's sight); a new pool
        # would die the same way, until the budget is spent
        started = self._started.pop(pool, None)
        self._stillborn = self._stillborn + 1 if started is not None and started.value == 0 else 0
        if self._stillborn >= STILLBORN_POOLS:
            self.close(cancel=True)
            raise SearchError(f"the extraction's worker processes died as they started, {STILLBORN_POOLS} pools in "
                              f"a row: if a script started the run, {SCRIPT_GUARD}; otherwise see their error above "
                              f"(out of memory?)")
        out = [(ticket, Evaluation("failed", None, "the worker process died (out of memory, killed, or a script "
                                                   "without `if __name__ == \"__main__\":` that ran again in it?)",
                                   0.0))]
        for other in [f for f, (_, p) in self._running.items() if p is pool]:
            t, _ = self._running.pop(other)
            finished = other.done() and other.exception() is None
            out.append((t, other.result() if finished else Evaluation("lost", None, "", 0.0)))
        if self.pool is pool:
            self.pool = None  # a new pool for the rest
        return out

    def close(self, cancel: bool = False) -> None:
        self._running.clear()
        self._here.clear()
        self._started.clear()
        if self.pool is not None:
            if cancel:
                for proc in list(getattr(self.pool, "_processes", {}).values()):
                    proc.terminate()
            self.pool.shutdown(wait=not cancel, cancel_futures=True)
            self.pool = None
