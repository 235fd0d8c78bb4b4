"""Dynamic batching: the forwards of concurrent callers combined into one.

The kernels are padding-free, so a sequence's outputs do not depend on what else is in its batch (bit for bit, every
dtype): combining requests changes no result, only how many forwards run. What concurrency costs without it is a
forward per call, each paying the per-call overhead, taken in no order from a lock. So (leader/follower, with no
batching thread):

- A request that finds the encoder idle runs at once, in its caller's thread: a lone caller waits for nothing
  (a synchronous one is not even queued: _run_alone).
  (asyncio callers: in a worker thread; asked to, on the event loop for a short request after the encoder was
  idle a while, IDLE_LEAD_S.)
- Requests arriving while a forward runs wait in a queue, oldest first.
- When a forward ends, the queue's next forward is led by the oldest waiting synchronous caller (woken to run it in
  its own thread), or, for asyncio callers, by the engine's worker threads; a leader takes as many queued requests
  as fit max_batch_tokens (at least one), oldest first, so no request waits behind later ones.
- Lanes: under load, forwards run side by side, each on a share of the engine's threads (2 threads: two forwards of
  1 thread each) instead of one after another on all of them. A forward on all threads meets its threads at every
  op's end; on 2 cores shared with a server's event loop one of them is often descheduled while the other waits.
  Measured on MiniLM, 6-token queries, 2 Intel cores: two 1-thread forwards of 16 texts compute 1.1-1.3x the
  texts/s of one 2-thread forward. So: a forward on an idle engine takes all threads (a lone caller's latency is
  the engine's best); when two or more requests of LANE_MIN_TOKENS or more tokens in all are queued at a forward's
  start, they are shared with a second lane (each narrow, half of the tokens each), and while narrow lanes run, a
  free lane opens as soon as that much has queued. A forward on all threads never runs beside another.

asyncio callers submit from a worker thread (tokenizing there too) and get their result through their event loop:
they hold no thread while queued, and cancelling the awaiting task removes a queued request before it is computed.
What they do with a forward's outputs (pooling, a head) runs in the thread that led the forward, not on the loop:
the loop then does no array work, whose NumPy calls release the GIL and wait to get it back from the forward's
thread (measured in the server: ~0.2 ms per request spent waiting in pooling's few microseconds of work).
A request may carry a deadline: still queued when it passes, it is dropped with DeadlineExceeded.

Interrupts (Ctrl-C in a synchronous caller on the main thread: Python raises KeyboardInterrupt at a function's entry
or after any call, anywhere in this module's bookkeeping): every lane a call opens, takes over or hands on is counted
in its _Held in the same run of plain assignments that changes _leaders, before the next call, so the handler of
the interrupted call closes exactly the lanes it still holds and hands the queue on (_release). Requests move into a
forward's batch before they leave the queue, and a waiting caller looks at its request every RECHECK_S as well as
when woken, so that an interrupt between marking a request and signalling it loses no one. Left, each of these
hung the engine for good after a few hundred Ctrl-Cs of a loop of short calls (a new-user trial).
"""
from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from bortengine.errors import DeadlineExceeded, RequestCancelled

__all__ = ["ForwardQueue", "BatchRecord", "RowsThen", "DEFAULT_MAX_BATCH_TOKENS", "LANE_MIN_TOKENS", "IDLE_LEAD_S",
           "LOOP_LEAD_TOKENS"]

# Real tokens per combined forward. A bigger forward makes everyone in it wait longer, and buys nothing once the
# time per text stops falling: with MiniLM on 2 Zen 4 cores (bench/batch_tokens.py) that is at about 100-200 tokens
# for 26-token reviews and about 200 for 6-token queries, float32 and int8 alike; a CPU with twice the FMA rate
# stays weight-bound up to about twice the tokens. 1024 holds that with margin, and 32 concurrent reviews (~870).
DEFAULT_MAX_BATCH_TOKENS = 1024
# Real tokens queued (in two requests or more) at which a forward shares them with another lane, or a free lane
# opens: four 6-token queries, where lanes were measured to pay (docs/serving.md). Less is computed on all threads
# at once, the shortest wait.
LANE_MIN_TOKENS = 24
# arun(lead_on_loop=True) (the server's lone requests): a request that finds the encoder idle for IDLE_LEAD_S or
# longer, of at most LOOP_LEAD_TOKENS real tokens, has its forward run on the event loop, with no thread hop there and
# back (the worker's wake-up, then the loop's through call_soon_threadsafe): on an idle machine that hop costs
# ~0.1-0.25 ms of a lone 6-token query's ~1.5-2 ms (MiniLM int8, 2 Intel cores, 50 ms pauses; the server's ASGI path
# in-process 2.21 -> 1.96 ms, over HTTP 1.60 -> 1.46 ms, medians of 7 interleaved rounds). The loop is held for
# that one short forward. Requests arriving meanwhile wait for it as they would in the queue; having been idle a
# while is what keeps this from serialising a burst: after a forward the encoder is busy, or idle for less than
# IDLE_LEAD_S, so the burst's requests are queued and batched by the worker threads as before.
IDLE_LEAD_S = 0.005
LOOP_LEAD_TOKENS = 32
# How often a waiting synchronous caller looks at its request without being woken (see the module's docstring).
RECHECK_S = 0.1
_ENDED = ("done", "failed", "cancelled")


@dataclass
class BatchRecord:
    """One forward, as batch listeners see it (Engine.add_batch_listener): the sequences and real tokens it ran, the
    requests it combined, its seconds, per request the seconds it queued and spent tokenizing, and the threads it
    ran on (all of the engine's, or a lane's share)."""

    sequences: int
    tokens: int
    requests: int
    forward_s: float
    queue_s: list[float] = field(default_factory=list)
    tokenize_s: list[float] = field(default_factory=list)
    threads: int = 1


class _Request:
    """One call's padded inputs [b, t] and what becomes of them."""

    __slots__ = ("ids", "mask", "types", "tokens", "enqueued", "deadline", "tokenize_s", "state", "result",
                 "error", "gate", "lead", "on_done", "then", "finished")

    def __init__(self, ids: np.ndarray, mask: Optional[np.ndarray], types: Optional[np.ndarray],
                 deadline: Optional[float], tokenize_s: float, on_done: Optional[Callable[["_Request"], None]],
                 then: Optional[Callable[[Any], Any]] = None):
        self.ids, self.mask, self.types = ids, mask, types
        self.tokens = _real_tokens(ids, mask)
        self.enqueued = time.monotonic()
        self.deadline = deadline                   # time.monotonic() value, or None
        self.tokenize_s = tokenize_s
        self.state = "queued"                      # queued -> running -> done | failed | cancelled
        self.result: Any = None
        self.error: Optional[BaseException] = None
        # synchronous callers wait on it: a raw lock, locked until signal() (threading.Event is not safe to interrupt:
        # a Ctrl-C inside its wait can leave its Condition's lock held, and the next set() then blocks for good)
        self.gate = None if on_done else _locked()
        self.lead = False                          # woken to lead the next forward
        self.on_done = on_done                     # asyncio callers: called (any thread) when finished
        self.then = then                           # applied to the forward's rows in the leading thread
        self.finished = False                      # its caller was given its outcome

    def finish(self) -> None:
        self.finished = True
        if self.on_done is not None:
            self.on_done(self)
        else:
            self.signal()

    def signal(self) -> None:
        """Wake the synchronous caller (once more is harmless: it was woken, or will see why when it looks)."""
        try:
            self.gate.release()
        except RuntimeError:
            pass


class _Held:
    """The lanes one call (or one worker's lead) holds, and whether its forward is the wide one: changed only next to
    the change of ForwardQueue._leaders / _wide it stands for, with no call between (see the module's docstring)."""

    __slots__ = ("n", "wide", "handed")

    def __init__(self, n: int = 0):
        self.n, self.wide = n, False
        self.handed: Optional[str] = None   # a worker's ticket (_submit_lead): "claimed" by it, or "cancelled"


class ForwardQueue:
    """Combines the forwards of concurrent callers (see the module's docstring).

    forward(ids, mask, types, threads) -> (hidden [B,T,H], pooled [B,H] or None): the encoder's forward on
    `threads` of its `threads`; concurrent calls must be safe (they run in different lanes). lanes: forwards that
    may run side by side under load, each on threads // lanes threads (default: 2 when there are 2 threads or
    more, else 1; 1 turns lanes off). worker_nice: the niceness added to the worker threads (Linux; 0: none): a
    server's event loop then gets its share of the cores before the forwards they lead (measured: int8 queries
    0.92x with lanes at nice 0, 1.07x at nice 5, against no lanes).
    """

    def __init__(self, forward: Callable[..., tuple[Any, Any]], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 workers: int = 4, threads: int = 1, lanes: Optional[int] = None, worker_nice: int = 0):
        self._forward = forward
        self.max_batch_tokens = int(max_batch_tokens)
        self._lanes_asked = lanes
        self.worker_nice = int(worker_nice)
        self._lock = threading.Lock()
        self.set_threads(threads)
        self._queue: deque[_Request] = deque()
        self._queued_tokens = 0                    # real tokens of the queued requests
        self._leaders = 0                          # threads leading forwards (each holds a lane), 0: idle
        self._idle_since = time.monotonic()        # when the last lane closed (while _leaders == 0)
        self._wide = False                         # a forward on all threads runs: no other may run beside it
        self._listeners: list[Callable[[BatchRecord], None]] = []
        self._notifying = threading.local()     # .active: this thread runs batch listeners
        self._workers = workers
        self._pool: Optional[ThreadPoolExecutor] = None
        _QUEUES.add(self)

    def _after_fork(self) -> None:
        """In a child process forked while the parent's threads were queued or leading forwards: none of those
        threads exists here, so their requests, lanes and worker threads are forgotten (the native pool resets
        itself the same way); the child's first call found a leader that would never hand over, and waited."""
        self._lock = threading.Lock()
        self._queue.clear()
        self._queued_tokens, self._leaders, self._wide = 0, 0, False
        self._idle_since = time.monotonic()
        self._pool = None

    def set_threads(self, threads: int) -> None:
        """The engine's threads (Engine.num_threads): a forward on all of them, or lanes of a share each."""
        with self._lock:
            self.threads = int(threads)
            self.lanes = max(1, min(self.threads, 2 if self._lanes_asked is None else int(self._lanes_asked)))
            self.lane_threads = max(1, self.threads // self.lanes)

    @property
    def depth(self) -> int:
        """Requests waiting for a forward now."""
        return len(self._queue)

    def add_listener(self, listener: Callable[[BatchRecord], None]) -> None:
        self._listeners.append(listener)

    # ---------------------------------------------------------------------------------------- synchronous callers
    def run(self, ids: np.ndarray, mask: Optional[np.ndarray], types: Optional[np.ndarray],
            deadline: Optional[float] = None, tokenize_s: float = 0.0):
        """(hidden [b,t,H], pooled [b,H] or None) of one request, computed alone or with others'."""
        self._check_not_notifying()
        held, request = _Held(), None
        try:
            if deadline is None:
                with self._lock:
                    if self._leaders == 0:          # idle (the queue is then empty)
                        self._leaders, self._wide, held.n, held.wide = 1, True, 1, True
                if held.n:
                    return self._run_alone(ids, mask, types, tokenize_s, held)
            request = _Request(ids, mask, types, deadline, tokenize_s, None)
            if self._enqueue(request, held) is not None:
                self._lead(own=request, held=held)
            while True:
                self._wait(request)
                with self._lock:
                    lead = request.lead
                    if lead:
                        request.lead, held.n = False, held.n + 1
                if not lead:
                    return self._outcome(request)
                self._lead(request, own=request, held=held)
        except BaseException:   # Ctrl-C (or a signal handler's exception) while it waited or led; or its outcome
            if request is not None:
                self._abandon(request, held)
            self._release(held)
            raise

    def _wait(self, request: _Request) -> None:
        """Until the request is signalled, or (RECHECK_S at a time) it is marked to lead or has ended: an interrupt of
        the thread that marked it may have come before it signalled. At its deadline a request still queued is
        dropped (DeadlineExceeded), not when a forward reaches it."""
        while True:
            timeout = RECHECK_S
            if request.deadline is not None and request.deadline > time.monotonic():   # (past it: taken, running)
                timeout = min(timeout, request.deadline - time.monotonic() + 1e-4)
            if request.gate.acquire(timeout=timeout):
                return
            if request.lead or request.finished or request.state in _ENDED:
                return
            if request.deadline is not None and time.monotonic() >= request.deadline:
                self.cancel(request, _deadline_passed(time.monotonic() - request.enqueued))

    def _abandon(self, request: _Request, held: _Held) -> None:
        """A synchronous caller interrupted while it waited or led: its request leaves the queue; a lane passed to
        it (woken to lead, not started) becomes the caller's, for _release to hand on. Nothing for a request that
        has its outcome."""
        with self._lock:
            if request.state == "queued":
                request.state = "cancelled"
                self._off_queue(request)     # (not there: woken to lead, and took itself off)
                return
            if request.lead:
                request.lead, held.n = False, held.n + 1

    def _release(self, held: _Held) -> None:
        """After an interrupt: the lanes the call still holds close (the wide forward with them), and if nobody leads
        the queue then, it is handed on as after a forward."""
        if not held.n and not held.wide:
            return
        with self._lock:
            if held.wide:
                self._wide, held.wide = False, False
            self._leaders, held.n = self._leaders - held.n, 0
            if self._leaders < 0:   # (defensive: every lane is counted once, in one _Held)
                self._leaders = 0
            orphaned = bool(self._queue) and self._leaders == 0
            if orphaned:
                self._leaders, held.n = 1, 1
            elif self._leaders == 0:
                self._idle_since = time.monotonic()
        if orphaned:
            self._hand_over(False, held, lead_here=False)

    def _check_not_notifying(self) -> None:
        if getattr(self._notifying, "active", False):
            raise RuntimeError("an engine call from inside a batch listener: the listener runs in the thread that "
                               "leads the forward, before it hands the queue on, so the call would wait for itself; "
                               "hand the work to another thread (e.g. a queue.Queue a thread of yours reads)")

    def _run_alone(self, ids: np.ndarray, mask: Optional[np.ndarray], types: Optional[np.ndarray],
                   tokenize_s: float, held: _Held):
        """The forward of a synchronous caller that found the encoder idle (it holds the only lane, wide): straight
        on all threads, as _lead would run it, without a queued request, its event and the queue's hand-offs: tens
        of microseconds of Python a call, which on a small model's short text are a fifth of its time. Requests
        that arrive meanwhile queue as they would behind any forward and are handed on after it, to a thread
        other than this caller's, which returns at once (a worker thread making this call included: leading here
        would hold its answer for as long as requests keep coming)."""
        start = time.monotonic()
        try:
            result = self._forward(ids, mask, types, self.threads)
            if self._listeners:
                self._notify(BatchRecord(len(ids), _real_tokens(ids, mask), 1, time.monotonic() - start, [0.0],
                                         [tokenize_s], self.threads))
        finally:
            self._hand_over(True, held, lead_here=False)
        return result

    # -------------------------------------------------------------------------------------------- asyncio callers
    def executor(self) -> ThreadPoolExecutor:
        """The worker threads that tokenize asyncio requests and lead forwards for them (at worker_nice)."""
        with self._lock:
            if self._pool is None:
                init = functools.partial(_lower_priority, self.worker_nice) if self.worker_nice else None
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="bortengine-batch", initializer=init)
            return self._pool

    def _submit(self, work: Callable[[], None]) -> None:
        """work() in a worker thread; in this one when the workers are shut down (the interpreter is exiting: an
        asyncio call from an atexit handler met concurrent.futures' "cannot schedule new futures after
        shutdown")."""
        try:
            self.executor().submit(work)
        except RuntimeError:
            work()

    async def arun(self, prepare: Callable[[], tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]],
                   deadline: Optional[float] = None, inline: bool = False, then: Optional[Callable[[Any], Any]] = None,
                   lead_on_loop: bool = False):
        """The asyncio form of run(): prepare() (tokenization) runs in a worker thread, which also leads the
        forward if the encoder is idle; the result, then(result) if given (computed in the thread that led the
        forward), comes back through this event loop. inline: prepare() is cheap enough to run on the loop, which
        then queues the request itself (no thread hop while the encoder is busy; a worker leads when it is idle,
        or with lead_on_loop, the loop itself for a short request after the encoder was idle a while: IDLE_LEAD_S).
        Cancelling the awaiting task removes the request if it is still queued."""
        self._check_not_notifying()
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        holder: list[_Request] = []
        # set when the awaiting task is cancelled: read by a worker tokenizing the request (not inline), which then
        # does not queue it; an inline request is queued before anyone awaits it (and an Event costs the loop ~3 us)
        abandoned = None if inline else threading.Event()

        loop_thread = threading.get_ident()

        def done(request: _Request) -> None:
            if threading.get_ident() == loop_thread:     # led on the loop (lead_on_loop)
                _settle(future, request)
            else:
                _call_on(loop, _settle, future, request)

        if inline:
            start = time.perf_counter()
            ids, mask, types = prepare()
            request = _Request(ids, mask, types, deadline, time.perf_counter() - start, done, then)
            holder.append(request)
            held = _Held()
            try:
                idle_for = self._enqueue(request, held)
                if idle_for is not None:
                    if lead_on_loop and request.tokens <= LOOP_LEAD_TOKENS and idle_for >= IDLE_LEAD_S:
                        self._lead(held=held)   # on the loop; a request queued meanwhile goes to a worker after it
                    else:
                        self._submit_lead(held)
            except BaseException:           # the loop's thread interrupted (Ctrl-C under asyncio.run)
                future.cancel()             # (nobody will await it)
                self.cancel(request)
                self._release(held)
                raise
            return await self._settled(future, holder, abandoned, deadline)

        def submit() -> None:
            start = time.perf_counter()
            try:
                ids, mask, types = prepare()
            except BaseException as e:     # bad input: the caller's exception, raised where it awaits
                _call_on(loop, _fail, future, e)
                return
            request = _Request(ids, mask, types, deadline, time.perf_counter() - start, done, then)
            holder.append(request)
            if abandoned.is_set():         # cancelled while it was tokenized: never queued
                return
            held = _Held()
            if self._enqueue(request, held) is not None:
                self._lead(held=held)      # this worker may go on leading forwards for later requests

        # The result is awaited, not submit()'s end: a worker that leads goes on leading while requests keep coming
        # (under load, for seconds), and this request's answer must not wait for that.
        self._submit(submit)
        return await self._settled(future, holder, abandoned, deadline)

    async def _settled(self, future: asyncio.Future, holder: list[_Request], abandoned: Optional[threading.Event],
                       deadline: Optional[float] = None):
        """The request's result; if the awaiting task is cancelled, the request is dropped from the queue; if its
        deadline passes while it is queued (or still being tokenized), it is dropped then with DeadlineExceeded."""
        timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, future, holder, abandoned)
        try:
            return await future
        except asyncio.CancelledError:
            if abandoned is not None:
                abandoned.set()
            future.cancel()                # so a late result or the cancellation below settles nothing
            if holder:
                self.cancel(holder[0])
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, future: asyncio.Future, holder: list[_Request], abandoned: Optional[threading.Event]) -> None:
        """On the loop, at the request's deadline: dropped if it is still queued or being tokenized (a request a
        forward has taken is finished)."""
        if future.done():
            return
        error = _deadline_passed(None)
        if holder:
            self.cancel(holder[0], error)
        else:
            if abandoned is not None:
                abandoned.set()            # the worker tokenizing it will not queue it
            _fail(future, error)

    def cancel(self, request: _Request, error: Optional[BaseException] = None) -> bool:
        """Drop a request still queued (True), failing it with error (RequestCancelled by default); one already
        running or finished is left alone (False)."""
        with self._lock:
            if request.state != "queued" or not self._off_queue(request):
                return False
            request.state = "cancelled" if error is None else "failed"
            request.error = error or RequestCancelled("the request was cancelled while queued")
        request.finish()
        return True

    # ------------------------------------------------------------------------------------------------- the queue
    def _off_queue(self, request: _Request) -> bool:
        """Under the lock: request taken off the queue, if it is there."""
        try:
            self._queue.remove(request)
        except ValueError:
            return False
        self._queued_tokens -= request.tokens
        return True

    def _enqueue(self, request: _Request, held: _Held) -> Optional[float]:
        """Queue the request. Not None if the caller leads a forward now (a lane counted in held): the seconds the
        encoder had been idle, or 0 when narrow lanes run, one is free and enough is queued (_enough_for_lanes)."""
        with self._lock:
            self._queued_tokens += request.tokens
            self._queue.append(request)
            if self._leaders == 0:
                self._leaders, held.n = 1, held.n + 1
                return time.monotonic() - self._idle_since
            if not self._wide and self._leaders < self.lanes and self._enough_for_lanes(len(self._queue),
                                                                                         self._queued_tokens):
                self._leaders, held.n = self._leaders + 1, held.n + 1
                return 0.0
            return None

    def _lead(self, first: Optional[_Request] = None, own: Optional[_Request] = None,
              held: Optional[_Held] = None) -> None:
        """Run forwards of queued requests until the queue is empty or the next is led by a woken caller. first: the
        request of the caller woken to lead (_pass_lead), taken off the queue for it. own: the leading caller's
        request; an interrupt of this thread (Ctrl-C) fails that call alone: the other requests of its forward go
        back to the queue, and the lane is handed on (it was kept, and every later call waited for it). held: the
        caller's lanes, of which this lead holds one (None: a worker's lead of the lane handed to it)."""
        if held is None:
            held = _Held(1)
        try:
            while True:
                batch: list[_Request] = []
                try:
                    threads, wide = self._take(first, held, batch)
                    first = None
                    if batch:
                        self._compute(batch, threads)
                except BaseException:      # not the forward's error (each request's): this thread's interrupt
                    self._requeue([r for r in batch if r is not own and r.state == "running"])
                    for request in batch:  # computed, but interrupted before its caller was told
                        if request is not own and request.state in _ENDED and not request.finished:
                            request.finish()
                    raise
                if not self._hand_over(wide, held):
                    return
        except BaseException:
            self._release(held)
            raise

    def _requeue(self, requests: list[_Request]) -> None:
        """Put requests back at the queue's front, in their order, to be computed by another forward (those an
        interrupt left in the queue as they were being taken are there already)."""
        with self._lock:
            for request in reversed(requests):
                if request in self._queue:
                    request.state = "queued"
                    continue
                request.state, request.result, request.error = "queued", None, None
                self._queued_tokens += request.tokens
                self._queue.appendleft(request)

    def _take(self, first: Optional[_Request], held: _Held, batch: list[_Request]) -> tuple[int, bool]:
        """The oldest queued requests that fit max_batch_tokens (at least one; expired ones are failed), and the
        threads to run them on: all, when this is the only lane and too little is queued for lanes; else a lane's
        share, the queue then shared (half of its tokens each) with a lane opened now if one is free (led by the next
        request's caller or a worker), and whether the forward is on all threads (wide: nothing runs beside it). The
        requests go into `batch` (the caller's, so that an interrupt here leaves none of them unaccounted for)."""
        if first is not None:
            batch.append(first)
        tokens, expired = (first.tokens if first else 0), []
        now = time.monotonic()
        with self._lock:
            queued = self._queued_tokens + tokens
            enough = self._enough_for_lanes(len(self._queue) + len(batch), queued)
            narrow = self.lanes > 1 and (self._leaders > 1 or enough)
            open_lane = narrow and self._leaders < self.lanes and enough
            share = (queued + 1) // 2 if open_lane else queued
            threads = self.lane_threads if narrow else self.threads
            self._wide, held.wide = not narrow, not narrow
            while self._queue and tokens < share:
                request = self._queue[0]
                if request.deadline is not None and now > request.deadline:
                    request.state, request.error = "failed", _deadline_passed(now - request.enqueued)
                    self._queued_tokens -= request.tokens
                    self._queue.popleft()
                    expired.append(request)
                    continue
                if batch and tokens + request.tokens > self.max_batch_tokens:
                    break
                request.state = "running"
                batch.append(request)         # before it leaves the queue (an interrupt may come after each call)
                self._queued_tokens -= request.tokens
                self._queue.popleft()
                tokens += request.tokens
            spawn = False
            if open_lane and self._queue:
                self._leaders, held.n = self._leaders + 1, held.n + 1   # this call's until passed on or submitted
                spawn = not self._pass_lead(held)
        if spawn:
            self._submit_lead(held)
        for request in expired:
            request.finish()
        return threads, not narrow

    @staticmethod
    def _enough_for_lanes(requests: int, tokens: int) -> bool:
        """Whether queued work is worth two forwards side by side rather than one on all threads."""
        return requests >= 2 and tokens >= LANE_MIN_TOKENS

    def _hand_over(self, wide: bool, held: _Held, lead_here: bool = True) -> bool:
        """After a forward (on all threads if wide): True if this thread leads the next one (the lane stays in held).
        The oldest waiting synchronous caller is woken to lead it in its own thread (so this caller returns now);
        asyncio requests are led by a worker thread (this one if it is a worker and lead_here). With an empty queue
        this lane closes (the encoder is idle when it was the last)."""
        in_worker = lead_here and threading.current_thread().name.startswith("bortengine-batch")
        with self._lock:
            if wide:
                self._wide, held.wide = False, False
            if not self._queue:
                self._leaders, held.n = self._leaders - 1, held.n - 1
                if not self._leaders:
                    self._idle_since = time.monotonic()
                return False
            if self._pass_lead(held):
                return False
        if in_worker:
            return True
        self._submit_lead(held)
        return False

    def _submit_lead(self, held: _Held) -> None:
        """A lane of held handed to a worker thread, which leads the queue with it. Handed as a ticket the worker
        claims under the lock: a submission interrupted before or after the pool took it is then undone exactly once
        (the lane back in held, for _release), never counted by both."""
        ticket = _Held()
        ticket.n, held.n = 1, held.n - 1
        try:
            self._submit(functools.partial(self._lead_ticket, ticket))
        except BaseException:
            with self._lock:
                if ticket.handed is None:
                    ticket.handed, ticket.n, held.n = "cancelled", 0, held.n + 1
            raise

    def _lead_ticket(self, ticket: _Held) -> None:
        with self._lock:
            if ticket.handed == "cancelled":
                return
            ticket.handed = "claimed"
        self._lead(held=ticket)

    def _pass_lead(self, held: _Held) -> bool:
        """With the lock held and requests queued: True if the oldest is a synchronous caller's, now woken to lead
        (a lane of held passes to its thread). Its request leaves the queue with it: another lane taking it meanwhile
        would finish it before its caller wakes, which would then wait for an answer already given."""
        head = self._queue[0]
        if head.on_done is not None:
            return False
        head.state, head.lead, held.n = "running", True, held.n - 1
        self._queued_tokens -= head.tokens
        self._queue.popleft()
        head.signal()
        return True

    def _compute(self, batch: list[_Request], threads: int) -> None:
        """One forward over the batch's requests (padded to the longest) on `threads` threads, each request given
        its rows."""
        start = time.monotonic()
        together = _shared_rows(batch)
        try:
            if len(batch) == 1:
                only = batch[0]
                results = [self._forward(only.ids, only.mask, only.types, threads)]
            else:
                combined = _combine(batch)
                outputs = self._forward(*combined, threads)
                results = self._split(batch, outputs)
        except Exception as e:               # the forward's error is each caller's (an interrupt is this thread's)
            for request in batch:
                request.state, request.error = "failed", e
                request.finish()
            return
        forward_s = time.monotonic() - start
        if together is not None:
            try:   # one call for every request's rows (each request's own then() if it fails)
                rows, row = together(*outputs, combined[1]), 0
                for request in batch:
                    request.result, request.state = rows[row:row + len(request.ids)], "done"
                    row += len(request.ids)
            except Exception:
                together = None
        for request, result in zip(batch, results):
            if together is None:
                try:
                    if request.then is not None:
                        request.result = request.then(result)
                    else:   # its own rows, not a view that would keep the combined forward's outputs alive
                        request.result = result if len(batch) == 1 else tuple(
                            None if a is None else a.copy() for a in result)
                    request.state = "done"
                except Exception as e:           # the caller's own work on its rows failed: its error alone
                    request.state, request.error = "failed", e
            request.finish()
        if self._listeners:
            self._notify(BatchRecord(sum(len(r.ids) for r in batch), sum(r.tokens for r in batch), len(batch),
                                     forward_s, [start - r.enqueued for r in batch], [r.tokenize_s for r in batch],
                                     threads))

    def _notify(self, record: BatchRecord) -> None:
        self._notifying.active = True
        try:
            for listener in list(self._listeners):
                try:
                    listener(record)
                except Exception as e:   # raised here, it would end the lane's leader and leave the queue unled
                    warnings.warn(f"batch listener {listener!r} raised {type(e).__name__}: {e}; the forward's results "
                                  f"were given, the other listeners still run", RuntimeWarning, stacklevel=3)
        finally:
            self._notifying.active = False

    @staticmethod
    def _split(batch: list[_Request], outputs) -> list[tuple[Any, Any]]:
        hidden, pooled = outputs
        results, row = [], 0
        for request in batch:
            b, t = request.ids.shape
            results.append((hidden[row:row + b, :t], None if pooled is None else pooled[row:row + b]))
            row += b
        return results

    @staticmethod
    def _outcome(request: _Request):
        if request.error is not None:
            raise request.error
        return request.result


class RowsThen:
    """A request's then() that works row by row, so that it can run once over a combined forward's outputs for every
    request that shares it: `key` equal for requests whose then() is the same function of their rows (e.g. an
    encode's pooling with the same normalisation), `rows(hidden [B,T,H], pooled [B,H] or None, mask [B,T])` the
    result of every row of the forward, in order (each request's then() gives its own rows of it). Pooling per
    request held the GIL that the event loop needs about 11 us each, ~80 us for a forward of 7 short queries, where
    one call over all takes ~19 us (served int8 6-token queries: ~7% more requests/s with pooling made free)."""

    __slots__ = ("key", "rows", "then")

    def __init__(self, key: Any, rows: Callable[[np.ndarray, Optional[np.ndarray], np.ndarray], Any],
                 then: Callable[[Any], Any]):
        self.key, self.rows, self.then = key, rows, then

    def __call__(self, result: Any) -> Any:
        return self.then(result)


def _shared_rows(batch: list[_Request]) -> Optional[Callable[..., Any]]:
    """The rows() that every request of a combined forward shares (RowsThen with equal keys), or None."""
    if len(batch) < 2:
        return None
    first = batch[0].then
    if not isinstance(first, RowsThen) or first.key is None:
        return None
    for request in batch:
        then = request.then
        if not isinstance(then, RowsThen) or then.key != first.key:
            return None
    return first.rows


def _deadline_passed(waited: Optional[float]) -> DeadlineExceeded:
    """A request dropped at its deadline, having waited `waited` seconds in the queue (None: not queued yet)."""
    where = "while it waited" if waited is None else f"after {waited:.3f} s"
    return DeadlineExceeded(f"the request's deadline passed {where} in the queue, before a forward could take it; "
                            f"give a longer deadline, or lower the load")


def _locked() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


def _real_tokens(ids: np.ndarray, mask: Optional[np.ndarray]) -> int:
    """The tokens a forward computes for these inputs: those with mask 1 (all of them without a mask)."""
    return int(mask.sum()) if mask is not None else ids.size


def _combine(batch: list[_Request]) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The requests' rows in one [B, T] batch, each padded at its end to the longest (mask 0 there)."""
    rows = sum(len(r.ids) for r in batch)
    width = max(r.ids.shape[1] for r in batch)
    ids = np.zeros((rows, width), np.int64)
    mask = np.zeros((rows, width), np.int64)
    types = np.zeros((rows, width), np.int64) if any(r.types is not None for r in batch) else None
    row = 0
    for r in batch:
        b, t = r.ids.shape
        ids[row:row + b, :t] = r.ids
        mask[row:row + b, :t] = 1 if r.mask is None else r.mask
        if types is not None and r.types is not None:
            types[row:row + b, :t] = r.types
        row += b
    return ids, mask, types


def _lower_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness (Linux keeps one per thread; elsewhere it would be the whole
    process's, so nothing is done)."""
    if sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)


_QUEUES: "weakref.WeakSet[ForwardQueue]" = weakref.WeakSet()


def _reset_queues_in_child() -> None:
    for queue in list(_QUEUES):
        queue._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_queues_in_child)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """callback(*args) on the request's event loop. A loop closed meanwhile (asyncio.run() returned, its task
    abandoned: a timeout around it, a fire-and-forget call, Ctrl-C) has nobody awaiting: the result is dropped.
    Raised here, it ended the leading thread before the next forward was handed on, and the engine waited for a
    leader that no longer existed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:   # "Event loop is closed"
        pass


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _settle(future: asyncio.Future, request: _Request) -> None:
    if future.done():                  # the awaiting task was cancelled meanwhile
        return
    if request.error is not None:
        future.set_exception(request.error)
    else:
        future.set_result(request.result)
