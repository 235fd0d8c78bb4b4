"""Concurrency: one Engine called from 8 Python threads gives exactly what sequential calls give; encode() too.
The Engine takes no lock (its thread-safety rests on the native encoder, which gives each concurrent forward a
workspace of its own), so the native encoder is also called directly from 8 threads, with every thread count a
forward may take (batching's lanes run forwards of 1 thread side by side), on every kernel path: a core that
shared scratch memory unguarded would fail here."""
from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bortengine
from bortengine import _core

THREADS = 8


def _inputs(vocab, n=24, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b, t = int(rng.integers(1, 5)), int(rng.integers(1, 70))
        ids = rng.integers(0, vocab, size=(b, t), dtype=np.int64)
        mask = (np.arange(t)[None, :] < rng.integers(1, t + 1, size=b)[:, None]).astype(np.int64)
        out.append((ids, mask))
    return out


@pytest.fixture(scope="module")
def engine(make_model):
    path = make_model(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=200, seed=21)
    return bortengine.load(path, num_threads=min(2, bortengine.available_cpus()))


def test_engine_calls_from_threads(engine):
    inputs = _inputs(engine.config.vocab_size)
    sequential = [engine(ids, mask) for ids, mask in inputs]
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in range(3):
            concurrent = list(pool.map(lambda x: engine(*x), inputs))
            for a, b in zip(sequential, concurrent):
                np.testing.assert_array_equal(a.last_hidden_state, b.last_hidden_state)
                np.testing.assert_array_equal(a.pooler_output, b.pooler_output)


def test_encode_from_threads(minilm):
    engine = bortengine.load(minilm)
    texts = [f"sentence number {i} " + "word " * (i % 17) for i in range(40)]
    chunks = [texts[i::THREADS] for i in range(THREADS)]
    sequential = [engine.encode(c, batch_size=3) for c in chunks]
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda c: engine.encode(c, batch_size=3, max_length=64 + len(c[0]) % 3), chunks))
    for a, b in zip(sequential, concurrent):
        assert np.abs(a - b).max() <= 1e-6  # identical inputs except the (ineffective) truncation length


def test_native_encoder_is_reentrant(engine):
    """Concurrent forward() calls on one native Encoder must not corrupt each other."""
    encoder = engine._encoder
    inputs = _inputs(engine.config.vocab_size, seed=1)
    sequential = [encoder.forward(ids, mask, None, pooler=True) for ids, mask in inputs]
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda x: encoder.forward(x[0], x[1], None, pooler=True), inputs * 2))
    for (h_a, p_a), (h_b, p_b) in zip(sequential * 2, concurrent):
        np.testing.assert_array_equal(h_a, h_b)
        np.testing.assert_array_equal(p_a, p_b)


@pytest.mark.parametrize("isa", bortengine.available_isas())
def test_native_forwards_side_by_side_on_any_threads_equal_sequential_ones(make_model, isa):
    """Forwards of 1 and 2 threads at once (lanes beside a caller's own forward): each in its own workspace, each
    bit for bit what a forward alone gives, on every kernel path."""
    path = make_model(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=200, seed=22)
    engine = bortengine.load(path, num_threads=2, isa=isa)
    encoder = engine._encoder
    inputs = _inputs(engine.config.vocab_size, seed=2)
    sequential = [encoder.forward(ids, mask, None, pooler=True) for ids, mask in inputs]
    jobs = [(i, threads) for i in range(len(inputs)) for threads in (1, 1, 2, 0)]
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda job: encoder.forward(*inputs[job[0]], None, pooler=True,
                                                               threads=job[1]), jobs))
    for (i, threads), (hidden, pooled) in zip(jobs, concurrent):
        np.testing.assert_array_equal(hidden, sequential[i][0], err_msg=f"input {i}, {threads} thread(s)")
        np.testing.assert_array_equal(pooled, sequential[i][1])
    with pytest.raises(ValueError, match="threads must be >= 0"):
        encoder.forward(*inputs[0], None, threads=-1)


def test_a_large_linear_gives_the_gil_away():
    """PackedLinear (also the heads' GEMM) releases the GIL while it runs, so other Python threads run meanwhile."""
    rng = np.random.default_rng(0)
    big = _core.PackedLinear(rng.standard_normal((1024, 1024)).astype(np.float32))
    rows = rng.standard_normal((256, 1024)).astype(np.float32)
    ticks, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1

    # a switch interval far longer than the GEMM: a thread that keeps the GIL through it is never made to yield
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    thread = threading.Thread(target=spin)
    thread.start()
    try:
        during = []
        for _ in range(3):
            before = ticks[0]
            out = big(rows)              # 268M multiply-adds: milliseconds
            during.append(ticks[0] - before)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert max(during) > 0, "the spinning thread never ran while a large GEMM ran: the GIL was kept"
    assert np.array_equal(out[:2], big(np.ascontiguousarray(rows[:2])))


DAEMONS_AT_EXIT = """
import sys, threading, time
import bortengine
engine = bortengine.load(sys.argv[1])
text = " ".join(["word"] * 250)
def work():
    while True:
        engine.encode(text)
for _ in range(3):
    threading.Thread(target=work, daemon=True).start()
time.sleep(1)
"""


def test_the_interpreter_exits_cleanly_with_daemon_threads_inside_forwards():
    """A service's daemon worker threads in forwards when Python exits: the process aborted (exit code 134,
    "terminate called without an active exception") at most exits, a new-user trial."""
    import subprocess
    import sys

    from bortengine.testing import minilm_path

    for _ in range(4):
        run = subprocess.run([sys.executable, "-c", DAEMONS_AT_EXIT, str(minilm_path())], capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
