"""Measurements that need a fresh process, run by the benchmarks as `python bench/probe.py <what> ...`.

memory: peak RSS of a process that imports bortengine, loads a model and runs one forward. The peak is VmHWM of
/proc/self/status (the high-water mark of this process image). ru_maxrss is printed too but is NOT used: Linux
carries it over from the forked parent across exec, so a child of a big pytest process reports the parent's size.

CpuShare, the contention measure of every timed row, lives here too: this file imports nothing beyond the
standard library, so the memory child stays lean.

numpy-gemm: numpy's matmul GFLOP/s on a square fp32 GEMM. In a child because numpy's BLAS fixes its thread count
when it loads (OPENBLAS_NUM_THREADS etc.), and the parent's numpy was loaded long before the option was read.

Each prints one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


class CpuShare:
    """CPU time that other processes took while a row was timed, as a fraction of the machine (all cores).

    busy time of /proc/stat (including the hypervisor's steal) minus this process's own CPU time: with 2 cores
    and 2 threads, anything above a few percent means the row's threads waited for a core, and its time is
    inflated by an amount the median cannot remove when the other load lasts the whole row.
    """

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                cpu = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own = int(fields[11]) + int(fields[12])  # utime + stime of all threads, in clock ticks
        except (OSError, ValueError, IndexError):
            return None
        idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)  # idle + iowait
        total = sum(cpu[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
        return total, total - idle, own

    def others(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        total, busy, own = (e - s for e, s in zip(end, self.start))
        return max(0.0, (busy - own) / total)


def memory(args) -> dict:
    start = _status_bytes("VmRSS")
    import numpy as np

    import bortengine

    after_import = _status_bytes("VmRSS")
    engine = bortengine.load(args.model_dir, num_threads=args.threads)
    after_load = _status_bytes("VmRSS")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab_size, size=(args.batch, args.tokens), dtype=np.int64)
    mask = np.ones_like(ids)
    types = np.zeros_like(ids)
    out = engine(ids, attention_mask=mask, token_type_ids=types)
    checksum = float(np.asarray(out.last_hidden_state, dtype=np.float64).sum())
    return {
        "rss_start": start, "rss_after_import": after_import, "rss_after_load": after_load,
        "rss_after_forward": _status_bytes("VmRSS"), "peak_rss": _status_bytes("VmHWM"),
        "ru_maxrss_inherited": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch_imported": "torch" in sys.modules, "checksum": checksum,
    }


def numpy_gemm(args) -> dict:
    import numpy as np

    n = args.size
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    share = CpuShare()
    times = []
    deadline = time.perf_counter() + args.seconds
    for i in range(args.max_rounds + 2):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        dt = time.perf_counter() - t0
        if i >= 2:  # two warm-up calls
            times.append(dt)
        if len(times) >= args.min_rounds and time.perf_counter() > deadline:
            break
    times.sort()
    median = times[len(times) // 2]
    return {"median_s": median, "min_s": times[0], "rounds": len(times), "gflops": 2 * n**3 / median / 1e9,
            "blas": _blas_name(np), "others_cpu": share.others()}


def _blas_name(np) -> str:
    try:
        config = np.show_config(mode="dicts")
        return config["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--model-dir", required=True)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--batch", type=int, default=1)
    m.add_argument("--tokens", type=int, default=128)
    m.add_argument("--vocab-size", type=int, default=30522)
    g = sub.add_parser("numpy-gemm")
    g.add_argument("--size", type=int, default=2048)
    g.add_argument("--seconds", type=float, default=2.0)
    g.add_argument("--min-rounds", type=int, default=5)
    g.add_argument("--max-rounds", type=int, default=100)
    args = parser.parse_args(argv)
    result = memory(args) if args.what == "memory" else numpy_gemm(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
