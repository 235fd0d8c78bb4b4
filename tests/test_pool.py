"""The thread pool under the ops (csrc/pool.cc): results do not depend on which threads ran which chunks, a
forked child can use an engine its parent used, and engines on different Python threads share the pool."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import bortengine
from bortengine import _core

pytestmark = pytest.mark.skipif(not hasattr(_core, "gemm_ref"), reason="needs the native core")


def _batch(seed=0, vocab=1000):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(4, 40))
    mask = (np.arange(40)[None, :] < np.array([40, 3, 25, 17])[:, None]).astype(np.int64)
    return ids, mask


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=200,
                      vocab_size=1000, seed=11)


def test_thread_counts_give_identical_results(model):
    """Chunks split work by columns or rows and never change a sum's order: bitwise equal for any count."""
    ids, mask = _batch()
    with warnings.catch_warnings():  # more threads than cores warns; oversubscription is the point here
        warnings.simplefilter("ignore", RuntimeWarning)
        engines = [bortengine.load(model, num_threads=n) for n in (1, 2, 3, 5)]
    outs = [e(ids, mask).last_hidden_state for e in engines]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_results_with_a_busy_cpu(model):
    """A CPU hog beside the engine changes which threads run chunks, not the result."""
    ids, mask = _batch(1)
    engine = bortengine.load(model, num_threads=2)
    want = engine(ids, mask).last_hidden_state
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(20):
            np.testing.assert_array_equal(engine(ids, mask).last_hidden_state, want)
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_runs_the_engine(model):
    ids, mask = _batch(2)
    engine = bortengine.load(model, num_threads=2)
    want = engine(ids, mask).last_hidden_state  # the parent's pool has workers now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only this thread exists; the pool must not wait for the parent's workers
        try:
            got = engine(ids, mask).last_hidden_state
            os.write(w, b"ok" if np.array_equal(got, want) else b"mismatch")
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.read(r, 16) == b"ok" and status == 0


def test_engines_on_many_threads_share_the_pool(model, make_model):
    other = make_model(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96,
                       vocab_size=1000, seed=12)
    ids, mask = _batch(3)
    engines = [bortengine.load(p, num_threads=2) for p in (model, other)]
    wants = [e(ids, mask).last_hidden_state for e in engines]
    errors = []

    def call(i):
        try:
            for _ in range(10):
                if not np.array_equal(engines[i % 2](ids, mask).last_hidden_state, wants[i % 2]):
                    errors.append(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
