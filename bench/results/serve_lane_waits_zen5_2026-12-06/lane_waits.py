"""`bortengine serve` with each forward in a worker thread timed: wall, the thread's CPU, its run-queue wait
(/proc/thread-self/schedstat), and the rest (sleeping: the GIL taken back after the forward). Printed at exit.

    python lane_waits.py MODEL_DIR [serve options, e.g. --port 8000 --dtype int8 --threads 2]
"""
import atexit
import sys
import threading
import time

from bortengine.engine import runtime

RECORDS = []          # (wall ns, CPU ns, run-queue ns, texts) per forward led by a worker thread
_forward = runtime.Engine._native_forward


def schedstat() -> tuple[int, int]:
    with open("/proc/thread-self/schedstat") as f:
        cpu, delay, _ = f.read().split()
    return int(cpu), int(delay)


def timed(self, ids, mask, types, threads):
    if threading.current_thread() is threading.main_thread():    # a lone request led on the event loop
        return _forward(self, ids, mask, types, threads)
    cpu, delay = schedstat()
    start = time.perf_counter_ns()
    try:
        return _forward(self, ids, mask, types, threads)
    finally:
        end = time.perf_counter_ns()
        cpu_end, delay_end = schedstat()
        RECORDS.append((end - start, cpu_end - cpu, delay_end - delay, len(ids)))


def report() -> None:
    if not RECORDS:
        return
    n = len(RECORDS)
    wall, cpu, delay = (sum(r[k] for r in RECORDS) for k in range(3))
    sleep = wall - cpu - delay
    per = sorted((r[0] - r[1] - r[2]) / 1e3 for r in RECORDS)
    print(f"GILWAIT forwards {n}, texts/forward {sum(r[3] for r in RECORDS) / n:.1f}; per forward wall "
          f"{wall / n / 1e3:.0f} us, cpu {cpu / n / 1e3:.0f}, run-queue {delay / n / 1e3:.0f}, sleeping "
          f"{sleep / n / 1e3:.0f} us (p50 {per[n // 2]:.0f}, p90 {per[int(n * .9)]:.0f}); sleeping "
          f"{sleep / wall * 100:.1f}% of the forwards' wall time", file=sys.stderr, flush=True)


runtime.Engine._native_forward = timed
atexit.register(report)

if __name__ == "__main__":
    from bortengine.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
