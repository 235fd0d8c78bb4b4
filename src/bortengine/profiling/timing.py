"""Timing a callable: how hard to measure (Settings), which clock, a block of timed calls and its statistics
(BlockStats), and the retries of a block that other processes or the host disturbed.

A block: warm-up, then as many timed calls as fit in the budget (within the repeat bounds), garbage collection
off. Its statistics: median, quartiles, min, max and outliers (samples above Q3 + 3 IQR). Of an op's blocks the
estimate is the median of the least-disturbed one (others only ever add time).
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from bortengine.profiling.disturbance import CpuMeter, HostProbe, disturbed
from bortengine.profiling.errors import ProfileError
from bortengine.profiling.workload import Workload


@dataclass
class Settings:
    """How hard to measure. quick() fits the whole Bort space in well under a minute."""

    mode: str = "full"
    blocks: int = 3                 # passes over the op list; the least-disturbed block is kept
    warmup_s: float = 0.03          # warm-up time per block (at least min_warmup calls)
    min_warmup: int = 3
    budget_s: float = 0.25          # timed calls per block: as many as fit, within [min_repeats, max_repeats]
    min_repeats: int = 15
    max_repeats: int = 3000
    rotation_factor: float = 2.0    # GEMM weight copies total rotation_factor × L3
    clock: str = "wall"             # see CLOCKS
    retries: int = 2                # extra blocks of an op when other processes disturbed one
    # A block of an op of >= 0.2 ms wider than this (IQR / median) counts as disturbed. Off for single ops, whose
    # timings can be bimodal on a quiet machine (the engine's workers join an op when they are awake); forwards of a
    # quiet machine repeat within 1-2 %, so validation uses 4 %.
    max_spread: float = math.inf
    retry_pause_s: float = 0.5      # × the retry number: lets a burst of load pass
    retry_budget_s: float = 60.0    # at most this long spent on retries per run
    host_probe: bool = True         # time HostProbe around every block (interference /proc/stat cannot see)

    @classmethod
    def quick(cls, clock: str = "wall") -> "Settings":
        return cls(mode="quick", blocks=1, warmup_s=0.01, min_warmup=2, budget_s=0.06, min_repeats=7,
                   max_repeats=500, clock=clock, retries=1, retry_pause_s=0.2, retry_budget_s=10.0)


# wall: elapsed time (perf_counter), what a caller waits. cpu: CPU time of the calling thread (thread_time), which
# excludes the time other processes hold the CPU; it equals the wall time of a quiet machine only for one thread
# (the op runs on the calling thread), so it is allowed only with num_threads = 1.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def check_clock(clock: str, workload: Workload) -> None:
    if clock not in CLOCKS:
        raise ProfileError(f"unknown clock {clock!r}; expected one of {sorted(CLOCKS)}")
    if clock == "cpu" and workload.num_threads != 1:
        raise ProfileError(f"the cpu clock times the calling thread only, so it needs num_threads=1 (got "
                           f"{workload.num_threads}); use the wall clock on a quiet machine for more threads")


# ================================================================================================ a block's stats
@dataclass
class BlockStats:
    """One block of timed calls, in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    n: int
    outliers: int  # samples above Q3 + 3 IQR (Tukey's far-out fence; IQR at least 1% of the median)
    foreign_cpus: Optional[float] = None  # CPUs other processes (and the hypervisor) used during the block
    own_cpus: Optional[float] = None      # CPUs this process used: about num_threads when its team is whole
    disturbed: bool = False               # others took CPU the workload needed, or its team collapsed onto fewer
    host_slowdown: Optional[float] = None  # the host probe's time around the block over its fastest (HostProbe)

    @property
    def spread(self) -> float:
        """IQR / median: the relative width of the middle half of the samples."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "BlockStats":
        if not seconds:
            raise ProfileError("no samples")
        ms = sorted(s * 1e3 for s in seconds)
        n = len(ms)
        q1, med, q3 = quantile(ms, 0.25), quantile(ms, 0.5), quantile(ms, 0.75)
        fence = q3 + 3.0 * max(q3 - q1, 0.01 * med)  # the floor keeps normal jitter of a very tight block in
        return cls(median_ms=med, q1_ms=q1, q3_ms=q3, min_ms=ms[0], max_ms=ms[-1], n=n,
                   outliers=sum(1 for x in ms if x > fence))

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BlockStats":
        """A stored block, its times checked: finite and not negative (a file edited by hand, or another tool's,
        would otherwise fail in arithmetic far from here, or predict negative latencies)."""
        if not isinstance(d, Mapping):
            raise ProfileError(f"a measurement block is {type(d).__name__}, not an object")
        for name in ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms"):
            value = d.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ProfileError(f"a measurement block's {name} is {value!r}; it must be a number of milliseconds "
                                   f"(0 or more)")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (NumPy's default method)."""
    n = len(sorted_values)
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


NOISY_SPREAD = 0.10    # IQR above 10% of the median
NOISY_OUTLIERS = 0.10  # or more than 10% of samples beyond the far-out fence (or the block was disturbed)


def is_noisy(b: BlockStats) -> bool:
    return b.disturbed or b.spread > NOISY_SPREAD or b.outliers > NOISY_OUTLIERS * b.n


def best_block(blocks: Sequence[BlockStats]) -> BlockStats:
    """The block with the lowest median among those no other process disturbed (among all if none)."""
    clean = [b for b in blocks if not b.disturbed]
    return min(clean or blocks, key=lambda b: b.median_ms)


# ===================================================================================================== timing
def time_block(fn: Callable[[], Any], s: Settings) -> list[float]:
    """Warm up, then time calls of fn until the budget is spent (within the repeat bounds)."""
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside a timed call would be noise
    try:
        k, t_end = 0, time.perf_counter() + s.warmup_s
        while k < s.min_warmup or time.perf_counter() < t_end:
            fn()
            k += 1
        samples: list[float] = []
        wall, clock = time.perf_counter, CLOCKS[s.clock]
        start = wall()
        while len(samples) < s.max_repeats and (len(samples) < s.min_repeats or wall() - start < s.budget_s):
            t0 = clock()
            fn()
            samples.append(clock() - t0)
        return samples
    finally:
        if gc_was:
            gc.enable()


def measure_block(fn: Callable[[], Any], s: Settings, threads: int, cpus: int,
                  probe: Optional[HostProbe] = None) -> BlockStats:
    """One block of timed calls, with the CPU time other processes took meanwhile (and the host probe around it)."""
    before = probe.slowdown() if probe else None
    meter = CpuMeter()
    samples = time_block(fn, s)
    cond = meter.result()
    block = BlockStats.of(samples)
    if probe:
        block.host_slowdown = round(max(before, probe.slowdown()), 3)
    if "foreign_cpus" in cond and cond["seconds"] >= 0.05:  # shorter blocks are below the accounting's resolution
        block.foreign_cpus = round(cond["foreign_cpus"] + cond.get("steal_cpus", 0.0), 3)
        block.own_cpus = cond["own_cpus"]
        block.disturbed = disturbed(cond, threads, cpus)
        # The engine's worker threads spin between ops, so a whole team keeps `threads` CPUs busy. About one CPU
        # means the team shares a core (the scheduler placed a worker on the caller's core): ops then run at
        # one-thread speed, with a tight spread, for as long as the placement lasts.
        if threads > 1 and block.own_cpus < threads - 0.5:
            block.disturbed = True
    # Interference /proc/stat cannot see (another tenant of the host hammering memory or the shared cache) still
    # widens the distribution: a quiet machine times ops of a fraction of a millisecond or more within a few %.
    if block.median_ms >= 0.2 and block.spread > s.max_spread:
        block.disturbed = True
    if block.host_slowdown is not None and block.host_slowdown > probe.tolerance:
        block.disturbed = True
    return block


def measure_with_retries(fn: Callable[[], Any], s: Settings, threads: int, cpus: int, retry_clock: list[float],
                         probe: Optional[HostProbe] = None) -> list[BlockStats]:
    """A block, and up to s.retries more while other processes (or the host) disturb it (pausing between tries,
    within the run's retry budget, whose spent seconds retry_clock[0] carries across calls)."""
    blocks = [measure_block(fn, s, threads, cpus, probe)]
    while blocks[-1].disturbed and len(blocks) <= s.retries and retry_clock[0] < s.retry_budget_s:
        start = time.monotonic()
        time.sleep(s.retry_pause_s * len(blocks))
        blocks.append(measure_block(fn, s, threads, cpus, probe))
        retry_clock[0] += time.monotonic() - start
    return blocks
