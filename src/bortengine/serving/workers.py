"""`bortengine serve --workers N`: N server processes on one port. For short texts on a few cores the limit is one
process's Python (HTTP, JSON, tokenizing, handing results back) under one GIL, not the forward: two processes of one
thread each served int8 6-token queries ~1.35x as fast as one of two threads on 2 cores (docs/serving.md).

The parent process binds one listening socket a worker to the port, with SO_REUSEPORT, so that the kernel spreads new
connections over the workers: on one shared socket whichever worker woke first would accept a burst of connections
all at once, and keep-alive clients stay where they landed. It starts the workers (spawned: fresh interpreters,
none of the parent's threads or locks). A worker accepts connections only once it has loaded and warmed up the
model (until then the kernel queues those it is given: no client meets a 503 "loading" from one worker while the
others serve); the parent says "ready" once every worker is. It starts another worker in place of one that dies after
that (the connections that arrive at its socket meanwhile wait in the kernel's queue), and stops every worker,
raising the error, when one cannot load the model. SIGTERM or SIGINT: every worker drains, as a lone server does
(--graceful-timeout), then serve_workers returns (SIGINT: KeyboardInterrupt); a second SIGINT stops them without
draining, as a second Ctrl-C stops uvicorn.

Each worker is a lone server (serving.process.run_server) with its own engine of --threads threads (by default the
CPUs this process may run on, shared out) and its share of --max-queue; a scrape of /metrics, which reaches one of
them, sums every worker's figures (serving.siblings).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from bortengine.engine import available_cpus
from bortengine.errors import ModelLoadError, UsageError
from bortengine.serving.options import ServeOptions
from bortengine.serving.process import STOPPING_SIGNALS, describe, listening_socket, run_server, url
from bortengine.serving.siblings import Siblings

__all__ = ["serve_workers", "worker_options"]

_SPAWN = multiprocessing.get_context("spawn")


def worker_options(options: ServeOptions) -> list[ServeOptions]:
    """Each worker's options: --threads, by default the CPUs this process may run on over the workers (at least 1
    each), and its share of --max-queue (the shares add up to it)."""
    n = options.workers
    threads = options.threads or max(1, available_cpus() // n)
    share, extra = divmod(options.max_queue, n)
    return [dataclasses.replace(options, workers=1, threads=threads, max_queue=share + (i < extra))
            for i in range(n)]


def serve_workers(model_dir: str | Path, options: ServeOptions, announce: Callable[[str], None]) -> None:
    """serving.serve with options.workers processes; see the module's docstring."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):   # (multiprocessing's own test for it)
        # a worker starts in a fresh interpreter, which imports the program's main module first: a script that calls
        # serve() at its top level would call it again in every worker
        raise UsageError("serve() with workers was called again while a worker process imported the program's main "
                         "module: call it under `if __name__ == \"__main__\":` in your script (the workers are "
                         "started as new Python processes, which import the main module)")
    supervisor = _Supervisor(model_dir, worker_options(options), announce)
    with supervisor.handling_signals():   # from before the port is bound: a SIGTERM at once still drains and exits 0
        # The port is taken by a socket without SO_REUSEPORT first: a port held by another server is refused as it
        # is for a lone server (sockets that all set SO_REUSEPORT would share the port with another of the user's
        # servers still on it), and port 0 gives the free port the workers' sockets then share.
        probe = listening_socket(options.host, options.port)
        port = probe.getsockname()[1]
        probe.close()
        supervisor.sockets = [listening_socket(options.host, port, reuse_port=True) for _ in range(options.workers)]
        try:
            with _private_directory() as directory:
                supervisor.run(directory)
        finally:
            for sock in supervisor.sockets:
                sock.close()
    if supervisor.failure is not None:
        raise supervisor.failure
    if supervisor.stopping == signal.SIGINT:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _private_directory() -> Iterator[str]:
    """A new directory (mode 0700) where the workers answer each other (serving.siblings), removed after them."""
    try:
        made = tempfile.TemporaryDirectory(prefix="bortengine-serve-")
    except OSError as e:    # (a read-only root filesystem: no usable directory among $TMPDIR, /tmp, /var/tmp, ...)
        raise UsageError(f"--workers needs a writable directory for the workers' sockets, and the temporary "
                         f"directory cannot be used ({e.strerror or e}): set TMPDIR to a writable directory (in a "
                         f"container with a read-only root filesystem, mount one, e.g. an emptyDir at /tmp)") from None
    with made as directory:
        yield directory


class _Supervisor:
    def __init__(self, model_dir: str | Path, options: list[ServeOptions], announce: Callable[[str], None]):
        self.model_dir = str(model_dir)
        self.options = options
        self.announce = announce
        self.sockets: list[socket.socket] = []       # one per worker, on the port
        self.directory = ""                          # where the workers answer each other (serving.siblings)
        self.processes: dict[int, Any] = {}          # worker index -> its live process (SpawnProcess)
        self.channels: dict[int, Connection] = {}    # worker index -> what its process tells the parent
        self.ready: set[int] = set()                 # workers whose current process has loaded the model
        self.announced = False
        self.stopping: Optional[int] = None          # the signal that stops the server
        self.failure: Optional[BaseException] = None
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop the server, even where SIGINT came ignored (a shell's background job): each worker's
        uvicorn handles both whatever it inherits, and a worker that drained on a SIGINT to the process group would
        otherwise be replaced by a parent that ignored it. SIGHUP stops it as SIGTERM does, unless ignored (nohup):
        it ended the parent, and the workers drained only as orphans."""
        previous = {sig: signal.signal(sig, self._signalled) for sig in (signal.SIGTERM, signal.SIGINT)}
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._signalled)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self, directory: str) -> None:
        """Start the workers and look after them until every one has exited."""
        self.directory = directory
        # multiprocessing starts its resource tracker with the first worker, and unblocks SIGTERM and SIGINT after it:
        # started first, it leaves the mask _start sets alone
        resource_tracker.ensure_running()
        try:
            for i in range(len(self.options)):
                self._start(i)
            # said once the workers have their sockets: a signal from here on leaves none of the connections the
            # kernel queues on them unanswered (before, nothing served the port yet, and it was closed)
            if self.stopping is None:
                self.announce(f"listening on {url(self.sockets[0])} with {len(self.options)} worker processes "
                              f"(loading {self.model_dir}; each worker accepts connections once it has loaded it)")
            while self.processes:
                self._step()
        finally:
            for process in self.processes.values():   # only when the loop above raised: no worker is left behind
                process.kill()

    def _start(self, i: int) -> None:
        if self.stopping is not None:
            return
        reader, writer = _SPAWN.Pipe(duplex=False)
        process = _SPAWN.Process(target=_worker, name=f"bortengine-serve-worker-{i}",
                                 args=(i, self.model_dir, self.options[i], self.sockets[i], writer, self.directory,
                                       len(self.options), os.getpid()))
        # A signal to the worker before it can handle one (starting Python, importing) ended it, which reset the
        # connections the kernel had queued on its socket: it starts with SIGTERM, SIGINT and SIGHUP blocked (the
        # mask is inherited), and serving.process unblocks them once it handles them, as it does in a loading worker.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
        try:
            process.start()
        except (OSError, ValueError):
            reader.close()
            if self.stopping is None:
                raise
            return   # a signal closed the sockets while the worker started: it was not going to serve
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            writer.close()   # the worker's end: the parent's reader sees the end of the pipe once the worker is gone
        self.processes[i], self.channels[i] = process, reader
        if self.stopping is not None:   # a signal came while it started
            os.kill(process.pid, signal.SIGTERM)

    def _step(self) -> None:
        """Wait for a worker to say something or to exit, and act on it (what a worker said before it exited is read
        by _exited first)."""
        sentinels = {p.sentinel: i for i, p in self.processes.items()}
        readers = {id(r): i for i, r in self.channels.items()}
        ready = wait(list(sentinels) + list(self.channels.values()))
        for channel in (r for r in ready if isinstance(r, Connection)):
            self._read(readers[id(channel)])
        for sentinel in (r for r in ready if not isinstance(r, Connection)):
            i = sentinels[sentinel]
            process = self.processes.pop(i)
            process.join()
            self._exited(i, process)

    def _read(self, i: int) -> None:
        channel = self.channels.get(i)
        try:
            while channel is not None and channel.poll():
                kind, payload = channel.recv()
                self._message(i, kind, payload)
        except (EOFError, OSError):   # the worker is gone; its sentinel says so
            channel.close()
            del self.channels[i]

    def _message(self, i: int, kind: str, payload: Any) -> None:
        if kind == "failed":
            if self.failure is None:
                self.failure = payload
            self._signal_workers(signal.SIGTERM)
            return
        self.ready.add(i)
        if self.announced:
            self.announce(f"worker {i} ready again (pid {self.processes[i].pid})")
        elif len(self.ready) == len(self.options):
            self.announced = True
            self.announce(f"ready: {payload} in each of {len(self.options)} workers, in "
                          f"{time.perf_counter() - self.started:.1f} s")

    def _exited(self, i: int, process: Any) -> None:
        self._read(i)   # what it said before it went
        channel = self.channels.pop(i, None)
        if channel is not None:
            channel.close()
        was_ready = i in self.ready
        self.ready.discard(i)
        if self.stopping is not None or self.failure is not None:
            return
        how = _exit_status(process.exitcode)
        if not was_ready:   # it could not get as far as serving: another would fare no better
            self.failure = ModelLoadError(f"worker {i} (pid {process.pid}) {how} before it had loaded "
                                          f"{self.model_dir}; the server's log above says why")
            self._signal_workers(signal.SIGTERM)
            return
        self.announce(f"worker {i} (pid {process.pid}) {how}; starting another in its place")
        self._start(i)

    def _signalled(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            signum = signal.SIGTERM
        if self.stopping is None:
            self.stopping = signum
            self._signal_workers(signal.SIGTERM)
        elif signum == signal.SIGINT:   # a second Ctrl-C: stop without draining, as uvicorn does
            self._signal_workers(signal.SIGINT)

    def _signal_workers(self, signum: int) -> None:
        # The parent's copies of the sockets close: a worker that drains closes its own, and the kernel then refuses
        # new connections instead of queueing them for a worker that will not come (nor will another: stopping).
        for sock in self.sockets:
            sock.close()
        for process in list(self.processes.values()):
            try:
                os.kill(process.pid, signum)
            except ProcessLookupError:
                pass


def _exit_status(code: Optional[int]) -> str:
    if code is not None and code < 0:
        return f"was ended by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _worker(index: int, model_dir: str, options: ServeOptions, sock: socket.socket, channel: Connection,
            directory: str, workers: int, parent: int) -> None:
    """A worker process: a lone server on its socket, telling the parent when it is ready or why it failed."""
    _end_with_parent(parent)
    # The parent stops the workers by SIGTERM; a Ctrl-C reaches every process of the terminal's group, which uvicorn
    # handles while it runs (it drains; a second one stops at once). Ignored around that, so that a worker does not
    # end in a KeyboardInterrupt's traceback when uvicorn raises the signal again after draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_server(model_dir, options, lambda: sock, lambda sock: None,
                   lambda service: _tell(channel, ("ready", describe(service))), Siblings(directory, index, workers))
    except Exception as e:
        _tell(channel, ("failed", _picklable(e)))
        sys.exit(1)


def _tell(channel: Connection, message: tuple) -> None:
    """A message to the parent, which may be gone (SIGKILL): then the parent-death SIGTERM is on its way to this
    worker, which drains (answers the connections queued for it) instead of failing its start-up over the closed
    pipe."""
    try:
        channel.send(message)
    except OSError:   # BrokenPipeError
        pass


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return ModelLoadError(f"{type(error).__name__}: {error}")


def _end_with_parent(parent: int) -> None:
    """SIGTERM to this worker when the parent process ends, however it ends (Linux's PR_SET_PDEATHSIG), so that a
    killed parent leaves no worker serving on its own."""
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):   # not Linux
        return
    if os.getppid() != parent:   # the parent ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
