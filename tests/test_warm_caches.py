"""Engine.warm_caches: an engine idle a while has its weights read back into the caches on another CPU while a
call's text is tokenized (csrc/warmer.h). The reads change no result, start only after WARM_AFTER_IDLE_S without a
forward, are stopped by a forward that starts, keep off the caller's CPU, never run on a process allowed one CPU,
and survive fork() and an engine dropped while they run."""
from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

import bortengine
from bortengine.engine import runtime

from conftest import NATIVE

pytestmark = pytest.mark.skipif(not NATIVE, reason="the NumPy stand-in packs no weights to read")


def _idle(engine) -> None:
    """Long enough after the last forward (or reads) for warm_caches to start."""
    time.sleep(runtime.WARM_AFTER_IDLE_S * 3)


def _until_done(engine, timeout: float = 5.0) -> dict:
    end = time.monotonic() + timeout
    while engine._encoder.warm_stats["running"]:
        assert time.monotonic() < end, "the reads did not end"
        time.sleep(0.001)
    return engine._encoder.warm_stats


@pytest.fixture(scope="module")
def model(minilm):
    return minilm      # big enough that its reads take a while (11 MB of int8 weights, 43 MB of float32)


@pytest.fixture(params=["float32", "int8"])
def engine(request, model):
    if bortengine.available_cpus() < 2:
        pytest.skip("warm_caches does nothing on one CPU")
    return bortengine.load(model, dtype=request.param, num_threads=2)


def test_starts_only_when_idle_and_finishes(engine):
    engine.encode("a first call")
    assert not engine.warm_caches(), "started right after a forward"
    _idle(engine)
    before = engine._encoder.warm_stats["started"]
    assert engine.warm_caches()
    stats = _until_done(engine)
    assert stats["started"] == before + 1
    assert not engine.warm_caches(), "started again right after reads that found nothing to stop them"


def test_a_forward_stops_the_reads_and_results_do_not_change(engine, isa):
    texts = [f"text number {i} " * (1 + i % 7) for i in range(24)]
    cold = bortengine.load(engine.path, dtype=engine.dtype, num_threads=2, isa=isa)
    cold._warms = False
    expected = cold.encode(texts)
    warming = bortengine.load(engine.path, dtype=engine.dtype, num_threads=2, isa=isa)
    stopped = 0
    for i, text in enumerate(texts):
        _idle(warming)
        before = warming._encoder.warm_stats
        got = warming.encode(text)          # starts the reads itself, then its forward stops them
        np.testing.assert_array_equal(got, expected[i])
        after = _until_done(warming)
        assert after["started"] == before["started"] + 1
        stopped += after["stopped"] - before["stopped"]
    assert stopped > 0, "no forward stopped the reads: they were always done before it started"
    # forwards while reads run, from many calls at once
    _idle(warming)
    warming.warm_caches()
    np.testing.assert_array_equal(warming.encode(texts), expected)


def test_keeps_off_the_callers_cpu(engine):
    """On the caller's CPU the reads would wait for the call, or take its place."""
    allowed = os.sched_getaffinity(0)
    engine._warms = False
    engine.encode("a call")       # the pool's threads made, not yet the warmer's (the first reads make it)
    engine._warms = True
    _idle(engine)
    threads = set(os.listdir(f"/proc/{os.getpid()}/task"))
    assert engine.warm_caches()
    _until_done(engine)
    new = set(os.listdir(f"/proc/{os.getpid()}/task")) - threads
    assert len(new) == 1, "the reads made no thread, or more than one"
    cpus = os.sched_getaffinity(int(new.pop()))
    assert len(cpus) == len(allowed) - 1 and cpus < allowed


def _one_cpu(path: str, queue) -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    engine = bortengine.load(path, num_threads=1)
    engine.encode("a call")
    time.sleep(0.05)
    engine._warms = True          # as if available_cpus() had said more: the native side refuses too
    queue.put((bortengine.available_cpus(), engine.warm_caches(), engine._encoder.warm_stats["started"]))


def test_never_on_one_cpu(model):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_one_cpu, args=(str(model), queue))
    child.start()
    cpus, started, reads = queue.get(timeout=120)
    child.join(30)
    assert child.exitcode == 0
    assert (cpus, started, reads) == (1, False, 0)


def _forked(engine, queue) -> None:
    time.sleep(0.02)
    started = engine.warm_caches()
    vectors = engine.encode(["after fork", "another text"])
    _until_done(engine)
    del engine                    # the Warmer's destructor: the parent's thread is not this process's
    import gc
    gc.collect()
    queue.put((started, vectors))


def test_fork_while_reading(engine):
    expected = engine.encode(["after fork", "another text"])
    _idle(engine)
    assert engine.warm_caches()   # (may still run when the child is forked)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forked, args=(engine, queue))
    child.start()
    started, vectors = queue.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0, "the forked child did not end cleanly"
    assert started
    np.testing.assert_array_equal(vectors, expected)


def test_engine_dropped_while_reading(model):
    if bortengine.available_cpus() < 2:
        pytest.skip("warm_caches does nothing on one CPU")
    for _ in range(20):
        engine = bortengine.load(model, num_threads=2)
        engine.encode("x")
        _idle(engine)
        assert engine.warm_caches()
        del engine                # joins the reading thread before the weights go
