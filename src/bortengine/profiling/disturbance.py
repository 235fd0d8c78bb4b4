"""What else ran while we measured: other processes' CPU time from /proc/stat (CpuMeter), the verdict whether
they took CPU the workload's threads needed (disturbed), and a probe of the host's speed (HostProbe) for the
interference /proc/stat cannot see. Timings are only ever slowed by others, so a disturbed block is retried and
not used while a clean one exists."""
from __future__ import annotations

import math
import os
import time
import warnings
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from bortengine.engine import core
from bortengine.profiling.workload import Workload


def now() -> str:
    """This moment in UTC, to the second, as profile files record it."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class CpuMeter:
    """CPU time other processes used while we measured (from /proc/stat), in CPUs: the noise we could not avoid."""

    def __init__(self):
        self.started = now()
        self.t0 = time.monotonic()
        self.stat0 = self._stat()
        self.self0 = self._self()
        try:
            self.load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            self.load = None

    @staticmethod
    def _stat() -> Optional[list[int]]:
        try:
            with open("/proc/stat") as f:
                return [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    @staticmethod
    def _self() -> float:
        t = os.times()
        return t.user + t.system

    def result(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.t0, 1e-9)
        out: dict[str, Any] = {"started": self.started, "loadavg_start": self.load, "seconds": round(wall, 2)}
        stat1 = self._stat()
        if self.stat0 and stat1:
            d = [b - a for a, b in zip(self.stat0, stat1)]
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy = (sum(d) - d[3] - (d[4] if len(d) > 4 else 0)) / hz  # all but idle and iowait
            steal = (d[7] if len(d) > 7 else 0) / hz
            mine = self._self() - self.self0
            out["foreign_cpus"] = round(max(0.0, busy - steal - mine) / wall, 3)
            out["steal_cpus"] = round(steal / wall, 3)
            out["own_cpus"] = round(mine / wall, 3)
        return out


def disturbed(cond: Mapping[str, Any], threads: int, cpus: int) -> bool:
    """Did other processes (or the hypervisor) take CPU time the workload's threads needed? The tolerance covers
    the 10 ms tick of the kernel's accounting over short blocks."""
    foreign = cond.get("foreign_cpus", 0.0) + cond.get("steal_cpus", 0.0)
    return foreign > (cpus - threads) + max(0.25, 0.03 / max(cond.get("seconds", 1.0), 1e-3))


def foreign_now(seconds: float = 0.3) -> dict[str, Any]:
    """Other processes' CPU use right now, sampled over `seconds` (we are idle meanwhile)."""
    meter = CpuMeter()
    time.sleep(seconds)
    return meter.result()


def noise_note(cond: Mapping[str, Any], threads: int, cpus: int) -> Optional[str]:
    """A warning text when other processes used enough CPU to disturb a `threads`-thread measurement."""
    foreign = cond.get("foreign_cpus", 0.0) + cond.get("steal_cpus", 0.0)
    spare = cpus - threads
    if foreign > spare + 0.2:
        return (f"other processes used {foreign:.2f} CPU(s) on average while {threads} of the {cpus} CPUs were "
                f"timed: the measurements are likely inflated; re-run when the machine is quiet")
    return None


def warn_if_busy(workload: Workload, cpus: int, stacklevel: int = 2) -> None:
    """Warn (RuntimeWarning; stacklevel as warnings.warn's, counted from the caller) when the machine is busy
    right now."""
    sample = foreign_now()
    if "foreign_cpus" in sample and disturbed({**sample, "seconds": 1.0}, workload.num_threads, cpus):
        load = sample["loadavg_start"][0] if sample.get("loadavg_start") else "?"
        warnings.warn(f"the machine is busy (other processes are using {sample['foreign_cpus']:.2f} of {cpus} "
                      f"CPU(s), 1-minute load average {load}): timings will be inflated; measure when it is quiet "
                      "(disturbed blocks are retried and flagged)", RuntimeWarning, stacklevel=stacklevel + 1)


class HostProbe:
    """A fixed GEMM on the workload's threads, timed before and after every block: it catches interference that
    /proc/stat cannot see. On a VM the other tenants of the host are invisible, yet they can halve this machine's
    speed for seconds to minutes (seen here: forwards at exactly twice their time with both threads at 100% CPU on
    two vCPUs, as when the two share one physical core; an FMA loop at 86-109 instead of 116 GFLOP/s per core).
    The probe slows with the op, so a block whose probe ran `tolerance` x slower than the fastest probe of the run
    counts as disturbed and is retried like one that other processes disturbed.

    About 0.6 ms of work on two threads (a 448 x 256 x 512 product); a probe is the median of `repeats`
    back-to-back calls (the first wakes the pool), compared with the fastest probe of the run so far. On the quiet
    machine probes lie within 1.2x of the fastest 99% of the time and reach 1.33x at most (300 probes on 2
    threads, 300 on 1, and a tiny profile), hence the tolerance of 1.5: it catches the halvings, not the jitter."""

    def __init__(self, threads: int, isa: str, repeats: int = 5, tolerance: float = 1.5, calibrate: int = 5):
        import numpy as np

        rng = np.random.default_rng(0)
        self._linear = core().PackedLinear(rng.standard_normal((512, 256)).astype(np.float32), None, isa)
        self._a = rng.standard_normal((448, 256)).astype(np.float32)
        self.threads, self.repeats, self.tolerance = threads, repeats, tolerance
        self.fastest = math.inf
        for _ in range(calibrate):
            self.slowdown()

    def _probe(self) -> float:
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            self._linear(self._a, num_threads=self.threads)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    def slowdown(self) -> float:
        """This moment's probe over the fastest of the run (1.0 on a host as quiet as at its quietest moment)."""
        t = self._probe()
        self.fastest = min(self.fastest, t)
        return t / self.fastest
