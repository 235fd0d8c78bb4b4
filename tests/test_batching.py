"""Dynamic batching (engine/batching.py): concurrent calls share forwards and get exactly the results of separate
calls; a lone caller runs at once in its own thread; the queue is served oldest first within a token budget;
asyncio callers never block the loop, can cancel queued work and give deadlines."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bortengine
from bortengine.engine import BatchRecord, DEFAULT_MAX_BATCH_TOKENS
from bortengine.engine.batching import IDLE_LEAD_S, LANE_MIN_TOKENS, LOOP_LEAD_TOKENS, ForwardQueue, RowsThen
from bortengine.engine.native import cgroup_cpu_quota
from bortengine.errors import DeadlineExceeded, InvalidInputError
from bortengine.testing import make_random_bert, make_random_encoder, minilm_path

TEXTS = ["a short one", "what is the capital of france?", "ok",
         "a much longer text about the films that we watched yesterday evening in the small cinema downtown",
         "the plot was thin but the actors carried it", "no", "why is the sky blue during the day?",
         "an utterly forgettable sequel"]


@pytest.fixture(scope="module", params=["float32", "int8"])
def minilm(request):
    return bortengine.load(str(minilm_path()), dtype=request.param, num_threads=2)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = make_random_bert(tmp_path_factory.mktemp("clf") / "m", hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=128, head="classifier", num_labels=3)
    return bortengine.load(str(path), num_threads=2)


# -- a queue in front of a forward we control ----------------------------------------------------------------------
class Gate:
    """A forward that records what it ran and, while closed, blocks (so later requests queue behind it)."""

    def __init__(self):
        self.open = threading.Event()
        self.open.set()
        self.calls: list[tuple[list[int], str]] = []     # (first id of each row, thread name)
        self.threads: list[int] = []                      # the threads each forward was given
        self.started = threading.Event()

    def __call__(self, ids, mask, types, threads=1):
        self.calls.append((ids[:, 0].tolist(), threading.current_thread().name))
        self.threads.append(threads)
        self.started.set()
        self.open.wait(10)
        hidden = np.repeat(ids[:, :, None].astype(np.float32), 2, axis=2)
        hidden *= mask[:, :, None] if mask is not None else 1
        return hidden, hidden[:, 0]


def request(first: int, tokens: int = 4) -> np.ndarray:
    return np.full((1, tokens), first, np.int64)


def queue_behind_a_running_forward(queue: ForwardQueue, gate: Gate, firsts, tokens: int = 4):
    """A thread runs request 0 (the gate closed, so it blocks in the forward); then each of firsts queues from its
    own thread, in order. Returns the threads and their results by first id."""
    results, threads = {}, []
    gate.open.clear()

    def call(first):
        results[first] = queue.run(request(first, tokens), None, None)

    leader = threading.Thread(target=call, args=(0,), name="caller-0")
    leader.start()
    assert gate.started.wait(10)
    for first in firsts:
        t = threading.Thread(target=call, args=(first,), name=f"caller-{first}")
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while queue.depth < len(threads) and time.monotonic() < deadline:
            time.sleep(0.001)
    return [leader] + threads, results


def test_a_lone_caller_runs_at_once_in_its_own_thread():
    gate = Gate()
    queue = ForwardQueue(gate)
    hidden, pooled = queue.run(request(7), None, None)
    assert gate.calls == [([7], threading.current_thread().name)]
    assert hidden.shape == (1, 4, 2) and (hidden == 7).all() and queue.depth == 0


def test_requests_queued_behind_a_forward_share_the_next_one_oldest_first_within_the_token_budget():
    gate = Gate()
    queue = ForwardQueue(gate, max_batch_tokens=10)     # two 4-token requests per forward
    records: list[BatchRecord] = []
    queue.add_listener(records.append)
    threads, results = queue_behind_a_running_forward(queue, gate, [1, 2, 3, 4, 5])
    gate.open.set()
    for t in threads:
        t.join(10)
    assert [firsts for firsts, _ in gate.calls] == [[0], [1, 2], [3, 4], [5]]
    # each forward after the first is led by the oldest waiting caller, in its own thread
    assert [name for _, name in gate.calls] == ["caller-0", "caller-1", "caller-3", "caller-5"]
    for first, (hidden, pooled) in results.items():
        assert hidden.shape == (1, 4, 2) and (hidden == first).all() and (pooled == first).all()
    assert [(r.requests, r.sequences, r.tokens) for r in records] == [(1, 1, 4), (2, 2, 8), (2, 2, 8), (1, 1, 4)]
    assert all(q >= 0 for r in records for q in r.queue_s) and records[1].queue_s[0] > 0


def test_without_batching_every_forward_takes_one_request_in_arrival_order():
    gate = Gate()
    queue = ForwardQueue(gate, max_batch_tokens=0)
    threads, _ = queue_behind_a_running_forward(queue, gate, [1, 2, 3])
    gate.open.set()
    for t in threads:
        t.join(10)
    assert [firsts for firsts, _ in gate.calls] == [[0], [1], [2], [3]]


def test_under_load_forwards_run_side_by_side_in_lanes_each_on_a_share_of_the_threads():
    """2 threads: a lone request runs on both; when two or more requests of LANE_MIN_TOKENS tokens in all are queued
    at a forward's start they are shared (half of the tokens each) by two forwards of 1 thread each, which run at
    once (each waits in the forward until the other is in too), each led by the oldest waiting caller of its
    share."""
    both_inside = threading.Barrier(2)
    gate = Gate()

    def forward(ids, mask, types, threads):
        hidden = gate(ids, mask, types, threads)
        if threads == 1:
            both_inside.wait(10)       # BrokenBarrierError if the lanes ran one after the other
        return hidden

    queue = ForwardQueue(forward, threads=2)
    assert (queue.lanes, queue.lane_threads) == (2, 1)
    records: list[BatchRecord] = []
    queue.add_listener(records.append)
    queue.run(request(9), None, None)
    assert gate.threads == [2]                       # a lone request: all threads, no lane
    gate.calls.clear(), gate.threads.clear()
    assert LANE_MIN_TOKENS == 24
    threads, results = queue_behind_a_running_forward(queue, gate, [1, 2, 3, 4, 5], tokens=6)   # 30 tokens queued
    gate.open.set()
    for t in threads:
        t.join(10)
    assert sorted(zip([firsts for firsts, _ in gate.calls], gate.threads)) == [([0], 2), ([1, 2, 3], 1),
                                                                               ([4, 5], 1)]
    assert {name for firsts, name in gate.calls if firsts != [0]} == {"caller-1", "caller-4"}
    for first, (hidden, pooled) in results.items():
        assert (hidden == first).all() and (pooled == first).all()
    assert sorted(r.threads for r in records) == [1, 1, 2, 2]
    assert queue._leaders == 0                        # both lanes closed: idle, the next request runs on all threads
    queue.run(request(8), None, None)
    assert gate.threads[-1] == 2


def test_too_little_queued_for_lanes_runs_on_all_threads():
    """Four 5-token requests (20 tokens, fewer than LANE_MIN_TOKENS): one forward on both threads; one request of
    30 tokens: the same (a request is never cut across lanes)."""
    for firsts, tokens in (([1, 2, 3, 4], 5), ([1], 30)):
        gate = Gate()
        queue = ForwardQueue(gate, threads=2)
        threads, _ = queue_behind_a_running_forward(queue, gate, firsts, tokens=tokens)
        gate.open.set()
        for t in threads:
            t.join(10)
        assert [f for f, _ in gate.calls] == [[0], firsts] and gate.threads == [2, 2]


def test_without_lanes_forwards_run_one_at_a_time_on_all_threads():
    gate = Gate()
    queue = ForwardQueue(gate, threads=2, lanes=1)    # the Engine's queue with batching=False
    threads, _ = queue_behind_a_running_forward(queue, gate, [1, 2, 3, 4, 5])
    gate.open.set()
    for t in threads:
        t.join(10)
    assert [firsts for firsts, _ in gate.calls] == [[0], [1, 2, 3, 4, 5]] and gate.threads == [2, 2]


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_forwards_in_lanes_give_exactly_the_results_of_separate_calls(dtype):
    """16 threads calling one engine: forwards run in lanes of 1 thread (the batch listener says so) and every
    text's embedding is the one it has alone."""
    engine = bortengine.load(str(minilm_path()), dtype=dtype, num_threads=2)
    texts = [f"{t} {i}" for i in range(4) for t in TEXTS]
    alone = [engine.encode(t) for t in texts]
    records: list[BatchRecord] = []
    engine.add_batch_listener(records.append)
    for _ in range(20):                               # until a forward ran in a lane (the queue must fill first)
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(engine.encode, texts))
        for text, a, b in zip(texts, alone, together):
            assert np.array_equal(a, b), text
        if any(r.threads == 1 for r in records):
            break
    assert any(r.threads == 1 for r in records) and any(r.requests > 1 for r in records)


def test_requests_of_different_lengths_and_masks_are_padded_together_and_given_back_their_own_shape():
    gate = Gate()
    queue = ForwardQueue(gate)
    gate.open.clear()
    out = {}
    first = threading.Thread(target=lambda: out.setdefault("a", queue.run(request(1, 3), None, None)))
    first.start()
    assert gate.started.wait(10)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    second = threading.Thread(target=lambda: out.setdefault("b", queue.run(np.full((2, 5), 2), mask, None)))
    third = threading.Thread(target=lambda: out.setdefault("c", queue.run(request(3, 2), None, None)))
    second.start()
    while queue.depth < 1:
        time.sleep(0.001)
    third.start()
    while queue.depth < 2:
        time.sleep(0.001)
    gate.open.set()
    for t in (first, second, third):
        t.join(10)
    assert out["b"][0].shape == (2, 5, 2) and (out["b"][0][0, 2:] == 0).all() and (out["b"][0][1] == 2).all()
    assert out["c"][0].shape == (1, 2, 2) and (out["c"][0] == 3).all()
    assert [firsts for firsts, _ in gate.calls] == [[1], [2, 2, 3]]


def test_an_async_request_gets_its_answer_while_its_worker_goes_on_leading_under_load():
    """The worker that led a request's forward may go on leading later ones for as long as requests keep coming;
    the request's answer must not wait for that (it waited for seconds under a 16-connection load once)."""
    def slow(ids, mask, types, threads):
        time.sleep(0.01)
        return Gate()(ids, mask, types)

    queue = ForwardQueue(slow, max_batch_tokens=4)       # one request per forward: the queue stays long

    async def main():
        arrivals = []

        async def keep_coming(until: float):
            while time.monotonic() < until:
                arrivals.append(asyncio.ensure_future(queue.arun(lambda: (request(2), None, None))))
                await asyncio.sleep(0.004)

        start = time.monotonic()
        stream = asyncio.ensure_future(keep_coming(start + 0.6))
        await queue.arun(lambda: (request(1), None, None))
        first = time.monotonic() - start
        await stream
        await asyncio.gather(*arrivals)
        return first, time.monotonic() - start

    first, total = asyncio.run(main())
    assert total > 0.6 and first < 0.2, (first, total)


def test_a_synchronous_call_from_a_worker_thread_returns_without_leading_what_queued_behind_it():
    """A worker thread (bortengine-batch) that makes a synchronous call on an idle queue runs it unqueued
    (_run_alone); an asyncio request that queues meanwhile is led by another thread, so the call returns, its
    forward's record already given to the listeners, while that request's forward still runs."""
    first_in, first_done, second_in, second_done = (threading.Event() for _ in range(4))

    def forward(ids, mask, types, threads):
        if ids[0, 0] == 1:
            first_in.set()
            first_done.wait(10)
        else:
            second_in.set()
            second_done.wait(10)
        return Gate()(ids, mask, types)

    queue = ForwardQueue(forward)
    records: list[BatchRecord] = []
    queue.add_listener(records.append)
    call = queue.executor().submit(queue.run, request(1), None, None)
    assert first_in.wait(10)
    asker = ThreadPoolExecutor(1)      # an event loop of its own that queues an asyncio request
    queued = asker.submit(asyncio.run, queue.arun(lambda: (request(2), None, None), inline=True))
    deadline = time.monotonic() + 10
    while queue.depth < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert queue.depth == 1
    first_done.set()
    try:
        hidden, _ = call.result(5)      # before: the worker led the queued forward first, blocked until it ended
        assert (hidden == 1).all() and second_in.wait(10) and not second_done.is_set()
        assert [r.sequences for r in records] == [1]
    finally:
        second_done.set()
    hidden, _ = queued.result(10)
    asker.shutdown()
    assert (hidden == 2).all() and len(records) == 2


def test_an_async_requests_own_work_on_its_rows_runs_off_the_loop_and_fails_alone():
    """then(rows) runs in the thread that led the forward, never on the event loop; its error is its request's
    alone, and the other requests of the same forward get their results."""
    gate = Gate()
    queue = ForwardQueue(gate)

    async def main():
        loop_thread = threading.current_thread().name
        where = []

        def pooled(rows):
            where.append(threading.current_thread().name)
            return rows[0].sum()

        def broken(rows):
            raise ValueError("a head that fails")

        gate.open.clear()
        first = asyncio.ensure_future(queue.arun(lambda: (request(1), None, None), then=pooled))
        while not gate.started.is_set():
            await asyncio.sleep(0.001)
        others = [asyncio.ensure_future(queue.arun(lambda: (request(2), None, None), then=then))
                  for then in (pooled, broken, pooled)]
        while queue.depth < 3:
            await asyncio.sleep(0.001)
        gate.open.set()
        results = await asyncio.gather(first, *others, return_exceptions=True)
        return loop_thread, where, results

    loop_thread, where, results = asyncio.run(main())
    assert where and loop_thread not in where
    assert all(name.startswith("bortengine-batch") for name in where)
    assert results[0] == 2 * 4 * 1 and results[1] == results[3] == 2 * 4 * 2
    assert isinstance(results[2], ValueError)
    assert [firsts for firsts, _ in gate.calls] == [[1], [2, 2, 2]]


def test_requests_sharing_a_row_function_get_their_rows_of_one_call_over_the_combined_forward():
    """RowsThen: the requests of a combined forward whose then() is the same function of each row (equal keys) get
    their rows of one call over the forward's outputs and mask; a request with another key or a plain then() makes
    each request run its own; a failing shared call falls back to each request's own then()."""
    gate = Gate()
    queue = ForwardQueue(gate)
    shared_calls = []

    def rows(hidden, pooled, mask):
        shared_calls.append((hidden.shape, mask.shape))
        if fail_shared:
            raise RuntimeError("the shared call fails")
        return (hidden * mask[:, :, None]).sum(axis=1)

    def alone(result):
        hidden, _ = result
        return hidden.sum(axis=1)      # the request's rows are [b, t]: no padding to mask

    def rows_then(key):
        return RowsThen(key, rows, alone)

    async def run(thens, lengths):
        gate.open.clear()
        first = asyncio.ensure_future(queue.arun(lambda: (request(1), None, None), then=rows_then("k")))
        while not gate.started.is_set():
            await asyncio.sleep(0.001)
        others = [asyncio.ensure_future(queue.arun(lambda n=n, t=t: (request(10 + n, t), None, None), then=then))
                  for n, (then, t) in enumerate(zip(thens, lengths))]
        while queue.depth < len(thens):
            await asyncio.sleep(0.001)
        gate.open.set()
        results = await asyncio.gather(first, *others)
        gate.started.clear()
        return results[1:]

    lengths = [3, 6, 2]
    expected = [np.full((1, 2), (10 + n) * t, np.float32) for n, t in enumerate(lengths)]
    for thens, calls, fail_shared in (([rows_then("k")] * 3, 1, False),
                                      ([rows_then("k"), rows_then("other"), rows_then("k")], 0, False),
                                      ([rows_then("k"), alone, rows_then("k")], 0, False),
                                      ([rows_then("k")] * 3, 1, True)):
        shared_calls.clear()
        results = asyncio.run(run(thens, lengths))
        assert all(np.array_equal(got, want) for got, want in zip(results, expected)), (thens, results)
        assert len(shared_calls) == calls
        if calls:   # the three queued requests in one forward, padded to the longest
            assert shared_calls[0] == ((3, 6, 2), (3, 6))


def test_async_encodes_combined_in_one_forward_equal_separate_calls_bit_for_bit(minilm, tmp_path_factory):
    """aencode's pooling runs once over a combined forward (RowsThen): each text's embedding is still exactly
    encode's of it alone, texts of different lengths and normalisations mixed; RoBERTa's layout (its own key-less
    path) too."""
    roberta = bortengine.load(str(make_random_encoder(tmp_path_factory.mktemp("rob") / "m", model_type="roberta",
                                                      head="model", hidden_size=64, num_hidden_layers=2,
                                                      num_attention_heads=4, intermediate_size=128, seed=0)),
                              num_threads=2)
    for engine in (minilm, roberta):
        records = []
        engine.add_batch_listener(records.append)

        async def main():
            return await asyncio.gather(*(engine.aencode(t, normalize=i % 3 != 0) for i, t in enumerate(TEXTS * 4)))

        got = asyncio.run(main())
        for i, (text, embedding) in enumerate(zip(TEXTS * 4, got)):
            assert np.array_equal(embedding, engine.encode(text, normalize=i % 3 != 0)), (engine.path, i)
        assert max(r.requests for r in records) > 1      # some forwards were combined


def test_asked_to_a_short_request_after_the_encoder_idled_is_led_on_the_loop_and_a_burst_still_batches():
    """lead_on_loop: a short request that finds the encoder idle for IDLE_LEAD_S runs on the event loop; a longer one,
    one that comes right after a forward, and one not asking run in a worker; a burst that arrives while the loop
    leads is queued meanwhile and batched by the workers."""
    gate = Gate()
    queue = ForwardQueue(gate)

    def ask(first: int, tokens: int = 4, lead: bool = True):
        return queue.arun(lambda: (request(first, tokens), None, None), inline=True, lead_on_loop=lead)

    async def main():
        loop_thread = threading.current_thread().name
        await asyncio.sleep(IDLE_LEAD_S)
        await ask(1)                                      # idle since the queue was made: on the loop
        await ask(2)                                      # right after a forward: in a worker
        await asyncio.sleep(IDLE_LEAD_S)
        await ask(3, tokens=LOOP_LEAD_TOKENS + 1)         # too long for the loop
        await asyncio.sleep(IDLE_LEAD_S)
        await ask(4, lead=False)                          # not asked
        await asyncio.sleep(IDLE_LEAD_S)
        burst = [asyncio.ensure_future(ask(10 + i)) for i in range(6)]
        results = await asyncio.gather(*burst)
        return loop_thread, results

    loop_thread, results = asyncio.run(main())
    where = {firsts[0]: thread for firsts, thread in gate.calls}
    assert where[1] == loop_thread
    assert all(where[k].startswith("bortengine-batch") for k in (2, 3, 4)), where
    assert [hidden[0, 0, 0] for hidden, _ in results] == [10 + i for i in range(6)]
    burst = [(firsts, thread) for firsts, thread in gate.calls if firsts[0] >= 10]
    assert burst[0] == ([10], loop_thread)            # the burst's first finds the encoder idle
    assert len(burst) == 2 and burst[1][0] == [11, 12, 13, 14, 15] and burst[1][1].startswith("bortengine-batch")


# -- the engine: results of concurrent calls equal separate calls, bit for bit -------------------------------------
def test_concurrent_calls_equal_separate_calls_bit_for_bit(minilm):
    alone = [minilm.encode(t) for t in TEXTS]
    records: list[BatchRecord] = []
    minilm.add_batch_listener(records.append)
    results: dict[tuple[int, int], np.ndarray] = {}
    barrier = threading.Barrier(16)

    def worker(w: int):
        barrier.wait()
        for r in range(6):
            i = (w + r) % len(TEXTS)
            results[w, r] = minilm.encode(TEXTS[i])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for (w, r), embedding in results.items():
        assert np.array_equal(embedding, alone[(w + r) % len(TEXTS)]), (w, r)
    assert len(results) == 96
    assert max(r.requests for r in records) > 1     # 16 threads on 2 cores: forwards were shared
    assert sum(r.requests for r in records) >= 96


def test_concurrent_classify_and_ids_calls_equal_separate_calls(classifier):
    alone = classifier.classify(TEXTS, batch_size=1)
    ids = classifier.tokenize(TEXTS[:3])
    alone_hidden = classifier(ids).last_hidden_state
    out: dict = {}

    def worker(w: int):
        for r in range(5):
            out["clf", w, r] = classifier.classify(TEXTS[(w + r) % len(TEXTS)])
            out["ids", w, r] = classifier(ids).last_hidden_state

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for key, value in out.items():
        if key[0] == "clf":
            i = (key[1] + key[2]) % len(TEXTS)
            assert value[0] == alone.labels[i] and np.array_equal(value[1], alone.probabilities[i])
        else:
            assert np.array_equal(value, alone_hidden)


# -- asyncio --------------------------------------------------------------------------------------------------------
def test_async_calls_equal_the_synchronous_ones(minilm, classifier):
    async def main():
        embeddings = await asyncio.gather(*(minilm.aencode(t) for t in TEXTS))
        many = await minilm.aencode(TEXTS, batch_size=3)
        labels = await classifier.aclassify(TEXTS)
        hidden = await classifier.acall(classifier.tokenize(TEXTS[:2]))
        return embeddings, many, labels, hidden

    embeddings, many, labels, hidden = asyncio.run(main())
    reference = minilm.encode(TEXTS)
    assert all(np.array_equal(e, minilm.encode(t)) for e, t in zip(embeddings, TEXTS))
    assert np.array_equal(many, reference)
    assert labels.labels == classifier.classify(TEXTS).labels
    assert np.array_equal(hidden.last_hidden_state, classifier(classifier.tokenize(TEXTS[:2])).last_hidden_state)


def test_the_event_loop_keeps_running_while_requests_are_computed(minilm):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(minilm.aencode(TEXTS) for _ in range(20)))
        tick.cancel()
        return ticks

    assert asyncio.run(main()) > 20


def test_async_calls_led_on_the_loop_when_idle_equal_the_synchronous_ones(minilm, classifier):
    async def lone(call, texts):
        await asyncio.sleep(2 * IDLE_LEAD_S)
        return await call(texts, lead_when_idle=True)

    for text in TEXTS[:3]:
        assert np.array_equal(asyncio.run(lone(minilm.aencode, [text])), minilm.encode([text]))
        result = asyncio.run(lone(classifier.aclassify, [text]))
        assert np.array_equal(result.probabilities, classifier.classify([text]).probabilities)


@pytest.fixture
def gated(classifier):
    """The classifier with its forward behind a closed Gate: (gate, queue), the first request started and blocked
    in its forward (so later requests stay queued as long as the test likes); restored afterwards."""
    gate = Gate()
    real = classifier._queue._forward
    queue = ForwardQueue(lambda ids, mask, types, threads: (gate(ids, mask, types), real(ids, mask, types))[1])
    classifier._queue, saved = queue, classifier._queue
    yield gate, queue
    classifier._queue = saved


async def _first_request_blocked(classifier, gate):
    gate.open.clear()
    first = asyncio.create_task(classifier.aclassify("first text"))
    while not gate.started.is_set():
        await asyncio.sleep(0.001)
    return first


def test_cancelling_an_awaiting_task_drops_its_queued_request(classifier, gated):
    gate, queue = gated

    async def main():
        first = await _first_request_blocked(classifier, gate)
        doomed = asyncio.create_task(classifier.aclassify("cancelled text"))
        kept = asyncio.create_task(classifier.aclassify("kept text"))
        while queue.depth < 2:
            await asyncio.sleep(0.001)
        doomed.cancel()
        await asyncio.sleep(0.01)
        depth = queue.depth
        gate.open.set()
        results = await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return depth, results

    depth, results = asyncio.run(main())
    assert depth == 1                           # the cancelled request left the queue
    assert len(gate.calls) == 2 and len(gate.calls[1][0]) == 1       # the second forward ran only "kept text"
    assert results[1][0] == classifier.classify("kept text")[0]


def test_a_request_still_queued_at_its_deadline_is_dropped_with_a_clear_error(classifier, gated):
    gate, queue = gated

    async def main():
        first = await _first_request_blocked(classifier, gate)
        late = asyncio.create_task(classifier.aclassify("late text", deadline=0.05))
        await asyncio.sleep(0.15)
        assert late.done()     # at its deadline, not once the forward before it ends (a new-user trial: 1.9 s late)
        gate.open.set()
        await first
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await late

    asyncio.run(main())
    assert len(gate.calls) == 1                 # the expired request was never computed



def test_a_synchronous_callers_request_is_dropped_at_its_deadline():
    gate = Gate()
    queue = ForwardQueue(gate, lanes=1)
    threads, _ = queue_behind_a_running_forward(queue, gate, [])
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        queue.run(request(1), None, None, deadline=time.monotonic() + 0.05)
    assert time.monotonic() - start < 5 and queue.depth == 0 and gate.open.is_set() is False
    gate.open.set()
    for t in threads:
        t.join(10)
    assert [ids for ids, _ in gate.calls] == [[0]]


def test_a_deadline_drops_no_part_of_a_request_a_forward_has_taken(classifier):
    """Only a request nobody has started is dropped at its deadline: the later batches of a long request queue
    behind its own first ones on an idle engine, and dropping them would throw away work for nothing."""
    real = classifier._queue._forward
    slow = ForwardQueue(lambda ids, mask, types, threads: (time.sleep(0.04), real(ids, mask, types))[1])
    classifier._queue, saved = slow, classifier._queue
    texts = [f"text number {i}" for i in range(6)]
    try:
        result = asyncio.run(classifier.aclassify(texts, batch_size=2, deadline=0.05))   # 3 forwards of 40 ms
    finally:
        classifier._queue = saved
    np.testing.assert_array_equal(result.logits, classifier.classify(texts).logits)

# -- options --------------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=3), st.booleans()))
def test_bad_max_batch_tokens_is_refused(value):
    with pytest.raises(InvalidInputError, match="max_batch_tokens"):
        bortengine.load(str(minilm_path()), max_batch_tokens=value)


@pytest.mark.parametrize("deadline", [0, -1.0, "soon", True, float("nan")])
def test_bad_deadlines_are_refused(classifier, deadline):
    with pytest.raises(InvalidInputError, match="deadline"):
        asyncio.run(classifier.aclassify("text", deadline=deadline))


def test_batching_options_are_reported(tmp_path):
    engine = bortengine.load(str(minilm_path()), batching=False)
    assert not engine.batching and engine.max_batch_tokens == 0
    engine = bortengine.load(str(minilm_path()), max_batch_tokens=512)
    assert engine.batching and engine.max_batch_tokens == 512 and engine.queue_depth == 0
    assert bortengine.load(str(minilm_path())).max_batch_tokens == DEFAULT_MAX_BATCH_TOKENS


def test_count_tokens_sees_whole_texts(minilm):
    long = "word " * 600
    counts = minilm.count_tokens(["hello world", long])
    assert counts[0] == int(minilm.tokenize("hello world")["attention_mask"].sum())
    assert counts[1] == 602 > minilm.max_length


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=6),
       max_length=st.integers(min_value=4, max_value=80), paired=st.booleans())
def test_texts_tokenized_once_are_the_ids_encode_reads_with_their_whole_counts(minilm, texts, max_length, paired):
    pairs = [t[::-1] for t in texts] if paired else None
    tokenized = minilm.tokenized(texts, pairs, max_length=max_length)
    assert tokenized.ids == minilm.tokenizer.token_ids(texts, max_length, pairs=pairs)
    assert tokenized.counts == minilm.count_tokens(texts, pairs)
    assert tokenized.truncated == [i for i, n in enumerate(tokenized.counts) if n > max_length]
    assert tokenized.tokens == sum(min(n, max_length) for n in tokenized.counts)


def test_tokenized_texts_compute_as_the_texts_do(minilm, classifier):
    texts = ["a short one", "word " * 300, "and a third, somewhat longer text"]
    tokenized = minilm.tokenized(texts, max_length=64)
    assert np.array_equal(minilm.encode(tokenized), minilm.encode(texts, max_length=64))
    assert np.array_equal(asyncio.run(minilm.aencode(tokenized)), minilm.encode(texts, max_length=64))
    assert tokenized.truncated == [1]
    one = minilm.tokenized("one text")
    assert np.array_equal(minilm.encode(one), minilm.encode("one text"))
    pairs = classifier.tokenized(["q one", "q two"], ["an answer", "another answer"])
    assert np.array_equal(classifier.classify(pairs).logits,
                          classifier.classify(["q one", "q two"], ["an answer", "another answer"]).logits)
    assert np.array_equal(asyncio.run(classifier.aclassify(pairs)).logits, classifier.classify(pairs).logits)
    # what they were cut to, and their pairs, are theirs: another max_length or pairs again are refused
    with pytest.raises(InvalidInputError, match="cut to 64 tokens.*engine.tokenized"):
        minilm.encode(tokenized, max_length=32)
    with pytest.raises(InvalidInputError, match="text_pairs to engine.tokenized"):
        classifier.classify(pairs, ["x", "y"])


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_a_cgroup_cpu_quota_is_read_from_either_cgroup_version(tmp_path, files, quota):
    write_files(tmp_path, files)
    assert cgroup_cpu_quota(str(tmp_path), membership=str(tmp_path / "no-such-file")) == quota


def write_files(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize("membership, files, quota", [
    # a systemd service with CPUQuota=300% (no cgroup namespace: the root has no quota, the service's cgroup has)
    ("0::/system.slice/app.service\n", {"cpu.max": "max 100000\n", "system.slice/cpu.max": "max 100000\n",
                                        "system.slice/app.service/cpu.max": "300000 100000\n"}, 3.0),
    # a parent's quota binds its children: the smallest on the way up
    ("0::/pod/box\n", {"pod/cpu.max": "100000 100000\n", "pod/box/cpu.max": "400000 100000\n"}, 1.0),
    # cgroup v1 in a container: its path (/docker/ID) is not under the mount, which is its own cgroup
    ("12:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
     {"cpu,cpuacct/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1.5),
    ("12:cpu,cpuacct:/batch/job\n", {"cpu,cpuacct/batch/job/cpu.cfs_quota_us": "50000\n",
                                     "cpu,cpuacct/batch/job/cpu.cfs_period_us": "100000\n"}, 0.5),
    ("0::/a\n", {"a/cpu.max": "max 100000\n"}, None),
])
def test_the_cpu_quota_is_the_processs_own_cgroups_or_a_parents(tmp_path, membership, files, quota):
    write_files(tmp_path / "fs", files)
    (tmp_path / "cgroup").write_text(membership)
    assert cgroup_cpu_quota(str(tmp_path / "fs"), membership=str(tmp_path / "cgroup")) == quota


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_worker_nice_lowers_the_priority_of_the_threads_that_lead_forwards_and_nothing_else():
    """`bortengine serve` loads with worker_nice=5: its event loop runs first when a forward's thread wants the same
    core. The caller's thread keeps its niceness; bad values are refused."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    engine = bortengine.load(str(minilm_path()), num_threads=2, worker_nice=5)

    def niceness():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    assert engine._queue.executor().submit(niceness).result() == min(19, base + 5)
    assert niceness() == base
    assert asyncio.run(engine.aencode(TEXTS)).shape == (len(TEXTS), 384)
    assert bortengine.load(str(minilm_path()), num_threads=2)._queue.executor().submit(niceness).result() == base
    for bad in (-1, 20, True, "5", 2.0):
        with pytest.raises(InvalidInputError, match="worker_nice must be an integer from 0"):
            bortengine.load(str(minilm_path()), worker_nice=bad)


def test_a_listener_that_raises_is_warned_about_and_the_queue_goes_on():
    """It ended the leading thread's loop: the queue was left busy with nobody leading, and every later call hung."""
    gate = Gate()
    queue = ForwardQueue(gate, threads=2)
    seen: list[BatchRecord] = []

    def broken(record):
        raise ValueError("a bug in the caller's metrics")

    queue.add_listener(broken)
    queue.add_listener(seen.append)
    with pytest.warns(RuntimeWarning, match="batch listener .* raised ValueError: a bug in the caller's metrics"):
        hidden, _ = queue.run(request(3), None, None)
    assert (hidden == 3).all() and len(seen) == 1
    with pytest.warns(RuntimeWarning):
        threads, results = queue_behind_a_running_forward(queue, gate, [1, 2, 3, 4, 5], tokens=6)
        gate.open.set()
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads) and sorted(results) == [0, 1, 2, 3, 4, 5]
    assert queue._leaders == 0 and sum(r.requests for r in seen) == 7   # each request computed once


def test_a_lone_callers_failing_forward_raises_to_it_and_leaves_the_queue_idle():
    """A caller that finds the encoder idle runs its forward directly (not queued); its error is its own, and the
    lane it held is handed back, so the next call runs (it hung when the lane stayed taken)."""
    gate = Gate()
    queue = ForwardQueue(gate, threads=2)
    records: list[BatchRecord] = []
    queue.add_listener(records.append)

    def failing(ids, mask, types, threads=1):
        raise MemoryError("the forward's workspace")

    queue._forward = failing
    with pytest.raises(MemoryError, match="workspace"):
        queue.run(request(1), None, None)
    assert queue._leaders == 0 and queue.depth == 0 and records == []
    queue._forward = gate
    hidden, _ = queue.run(request(2, tokens=5), None, None, tokenize_s=0.25)
    assert (hidden == 2).all() and gate.threads == [2]
    assert [(r.requests, r.sequences, r.tokens, r.threads, r.tokenize_s) for r in records] == [(1, 1, 5, 2, [0.25])]


# -- callers that go away: a closed event loop, an interrupted thread, a forked child (from a new-user trial) ------
def _answered(queue: ForwardQueue, first: int, timeout: float = 10.0):
    """queue.run of one request from a thread, or None if it did not return within timeout (the queue wedged)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(queue.run(request(first), None, None)), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else None


def test_an_async_request_whose_loop_closed_before_its_answer_leaves_the_queue_working():
    """asyncio.run(wait_for(aencode(...), timeout)) that times out while the forward runs: the answer met a closed
    loop (RuntimeError in the leading worker, before it handed the next forward on), and every later call of the
    engine waited for a leader that no longer existed."""
    gate = Gate()
    queue = ForwardQueue(gate, threads=2)
    gate.open.clear()

    async def times_out():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(queue.arun(lambda: (request(1), None, None)), 0.2)

    asyncio.run(times_out())          # the forward is still running in a worker; its loop is closed now
    assert gate.started.wait(10)
    gate.open.set()
    hidden, _ = _answered(queue, 2)
    assert (hidden == 2).all()
    deadline = time.monotonic() + 10
    while queue._leaders and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue._leaders == 0 and queue.depth == 0


def test_an_interrupt_of_the_leading_thread_fails_its_own_call_alone():
    """Ctrl-C reaches the main thread while it leads a forward combined with other threads' requests: it was given
    to every request of the forward (other threads raised the main thread's KeyboardInterrupt) and the lane was
    never handed on (every later call hung). Now the leader's call alone raises; the others' requests are computed
    by a later forward."""
    gate = Gate()
    queue = ForwardQueue(gate, threads=2, lanes=1)
    plain = gate.__call__

    def interrupted_once(ids, mask, types, threads=1):
        if threading.current_thread().name == "caller-1" and not getattr(gate, "interrupted", False):
            gate.interrupted = True
            raise KeyboardInterrupt
        return plain(ids, mask, types, threads)

    queue._forward = interrupted_once
    results, raised = {}, {}

    def call(first):
        try:
            results[first] = queue.run(request(first), None, None)
        except BaseException as e:    # noqa: BLE001 - what each caller got is the test's
            raised[first] = e

    gate.open.clear()
    threads = [threading.Thread(target=call, args=(0,), name="caller-0")]
    threads[0].start()
    assert gate.started.wait(10)
    for first in (1, 2, 3):            # queued behind caller-0's forward; caller-1 leads the next one, with 2 and 3
        threads.append(threading.Thread(target=call, args=(first,), name=f"caller-{first}"))
        threads[-1].start()
        while queue.depth < first and threads[-1].is_alive():
            time.sleep(0.001)
    gate.open.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert set(raised) == {1} and isinstance(raised[1], KeyboardInterrupt)
    assert sorted(results) == [0, 2, 3] and all((results[f][0] == f).all() for f in results)
    hidden, _ = _answered(queue, 4)
    assert (hidden == 4).all() and queue._leaders == 0 and queue.depth == 0


def test_a_combined_forwards_results_are_each_requests_own_rows():
    """Each was a view of the combined outputs [rows, widest, H]: one kept alive a whole forward's (a 4.6 KB result
    held 33 MB, a new-user trial)."""
    gate = Gate()
    queue = ForwardQueue(gate, lanes=1)
    threads, results = queue_behind_a_running_forward(queue, gate, [1, 2, 3], tokens=4)
    gate.open.set()
    for t in threads:
        t.join(10)
    assert [ids for ids, _ in gate.calls] == [[0], [1, 2, 3]]      # 1, 2 and 3 in one forward
    for first in (1, 2, 3):
        hidden, pooled = results[first]
        assert (hidden == first).all() and hidden.base is None and pooled.base is None


@pytest.mark.parametrize("texts, on_loop", [(["ok"] * 8, True), ([""] * 100, False), (["a"] * 65, False)])
def test_many_texts_are_tokenized_off_the_event_loop_however_short(classifier, monkeypatch, texts, on_loop):
    """Few characters but many texts were tokenized on the loop (100,000 empty strings held it ~0.5 s): the tokenizer
    costs per text too."""
    where = []
    batches = classifier._batches

    def watched(*args, **kwargs):
        for batch in batches(*args, **kwargs):
            where.append(threading.current_thread() is threading.main_thread())
            yield batch

    monkeypatch.setattr(classifier, "_batches", watched)
    vectors = asyncio.run(classifier.aencode(texts))
    assert len(vectors) == len(texts) and where and all(w == on_loop for w in where), where


def test_an_engine_call_from_a_batch_listener_is_refused_not_a_deadlock():
    """The listener runs in the thread leading the forward, before it hands the queue on: a call from it waited for
    itself, and every later call for it."""
    queue = ForwardQueue(Gate(), threads=2)
    queue.add_listener(lambda record: queue.run(request(9), None, None))
    with pytest.warns(RuntimeWarning, match="raised RuntimeError: an engine call from inside a batch listener"):
        hidden, _ = ThreadPoolExecutor(1).submit(queue.run, request(3), None, None).result(timeout=10)
    assert (hidden == 3).all() and queue._leaders == 0 and queue.depth == 0


CTRL_C_AT_RANDOM = """
import signal, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from bortengine.engine.batching import ForwardQueue

def echo(ids, mask, types, threads=1):
    hidden = np.repeat(ids[:, :, None].astype(np.float32), 2, axis=2)
    return hidden, hidden[:, 0]

def request(first):
    return np.full((1, 4), first, np.int64)

queue = ForwardQueue(echo, threads=2)
stop, wrong = threading.Event(), []

def other(first):
    while not stop.is_set():
        if not (queue.run(request(first), None, None)[0] == first).all():
            wrong.append(first)

callers = [threading.Thread(target=other, args=(10 + k,), daemon=True) for k in range(int(sys.argv[1]))]
for t in callers:
    t.start()

def ctrl_c(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, ctrl_c)
rng, interrupts, end = np.random.default_rng(0), 0, time.monotonic() + 6
checker = ThreadPoolExecutor(1)
while time.monotonic() < end:
    try:
        signal.setitimer(signal.ITIMER_REAL, float(rng.uniform(0, 0.002)))
        while True:
            assert (queue.run(request(7), None, None)[0] == 7).all()
    except KeyboardInterrupt:
        interrupts += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert (checker.submit(queue.run, request(5), None, None).result(timeout=10)[0] == 5).all()
stop.set()
for t in callers:
    t.join(10)
assert not wrong and not any(t.is_alive() for t in callers), wrong
assert queue._leaders == 0 and queue.depth == 0, (queue._leaders, queue.depth)
print("interrupts", interrupts)
"""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timer (SIGALRM) on this platform")
@pytest.mark.parametrize("others", [0, 3])
def test_ctrl_c_at_any_moment_of_a_call_never_leaves_the_engine_stuck(others):
    """A notebook's loop of short calls, interrupted at random moments (SIGALRM raising KeyboardInterrupt, as Ctrl-C
    does, anywhere in the queue's Python), with or without other threads calling: after each interrupt a call from
    another thread completes with its own answer, and once all stop the queue is idle. A lane taken before the
    interrupt was never handed on (the engine waited for it for good after 27 to 2,126 interrupts, a new-user
    trial), and an interrupted Event.wait could leave the Event's lock held, so that the thread finishing that
    request blocked for good. In a process of its own, whose main thread takes the signals: a stuck queue is a
    timeout, not a hung test run."""
    import subprocess

    run = subprocess.run([sys.executable, "-c", CTRL_C_AT_RANDOM, str(others)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split()[-1]) > 100, run.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_child_forked_while_a_forward_runs_computes_its_own_calls():
    """gunicorn --preload forks workers from a process whose threads may be mid-forward: the child's queue had a
    leader that did not exist there, and its first call waited forever."""
    gate = Gate()
    queue = ForwardQueue(gate, threads=2)
    gate.open.clear()
    busy = threading.Thread(target=lambda: queue.run(request(1), None, None), daemon=True)
    busy.start()
    assert gate.started.wait(10)
    pid = os.fork()
    if pid == 0:                       # the child: no thread of the parent's is here
        code = 1
        try:
            gate.open.set()
            answer = _answered(queue, 5, timeout=20)
            code = 0 if answer is not None and (answer[0] == 5).all() else 3
        finally:
            os._exit(code)
    gate.open.set()
    busy.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_an_engine_is_not_pickled_and_says_how_to_share_a_model(classifier):
    """A spawn pool's argument or a deepcopy: TypeError named the private bortengine._core.Encoder, and no way on."""
    import copy
    import pickle

    for attempt in (pickle.dumps, copy.deepcopy, copy.copy):
        with pytest.raises(TypeError, match=r"an Engine cannot be pickled or copied .*bortengine.load\("):
            attempt(classifier)
