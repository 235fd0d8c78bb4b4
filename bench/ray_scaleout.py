"""What the Ray executor buys and costs on the real distillation surrogate: the throughput of evaluations on two
Ray nodes of one CPU each against one node, and the per-evaluation overhead of the Ray executor (and of the local
worker processes, for comparison) against the evaluation itself.

`python bench/ray_scaleout.py [--steps 16] [--evaluations 12] [--overhead-evaluations 6] [--out PATH]` starts a
Ray cluster on 127.0.0.1 (ray.cluster_utils, the nodes' raylets as separate processes talking over loopback) for
each configuration and runs DistillationSurrogate(steps, threads=1) evaluations of MiniLM-space architectures
through search.RayExecutor, as `bortengine extract --executor ray` does:

- throughput: every worker first evaluates one architecture untimed (it loads the teacher, the corpus and torch
  once: afterwards only architectures and losses move); then `--evaluations` others, the same list for both
  configurations, are timed from the first submit to the last result: evaluations per second, and the two-node
  rate over the one-node rate (the target is >= 1.7 with two single-CPU nodes: the extraction is embarrassingly
  parallel, its driver only submits and records);
- overhead: one worker, one evaluation at a time; per evaluation the driver's wall time from submit to result minus
  the seconds the worker measured around the surrogate call: what the executor adds (scheduling, serialising the
  architecture and the Evaluation, the driver's wait). The median, and as a share of the median evaluation (the
  target is <= 5% of a 16-step evaluation). The same for LocalExecutor with two worker processes (which sends the
  surrogate with every evaluation).

Run it on a quiet machine with at least 2 cores (nothing else running: the one-node rate on a busy machine is not
the one-node rate). `--tiny` runs a seconds-long version (2 steps, 8 sentences, 2 evaluations) to check the
harness; its figures mean nothing. Writes bench/results/ray_scaleout.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # before ray is imported: loopback stays loopback

from bortengine import search as S  # noqa: E402
from bortengine.architecture import Architecture  # noqa: E402
from bortengine.search_space import MINILM_SPACE  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent


def architectures(n: int) -> list[Architecture]:
    """n + 2 distinct MiniLM-space architectures spread evenly over its parameter counts (deterministic)."""
    space = sorted(MINILM_SPACE.architectures(), key=lambda a: (a.parameters(), a.tuple))
    count = n + 2
    picks = [space[round(i * (len(space) - 1) / (count - 1))] for i in range(count)]
    return [Architecture(*a.tuple, vocab_size=MINILM_SPACE.vocab_size, max_positions=MINILM_SPACE.max_positions)
            for a in picks]


def start_cluster(nodes: int):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    return cluster


def run_all(executor: S.Executor, archs: list[Architecture]) -> tuple[float, list[S.Evaluation]]:
    """(wall seconds from the first submit to the last result, the evaluations), at most capacity at a time."""
    queue, done = list(enumerate(archs)), {}
    start = time.perf_counter()
    while queue or executor.running:
        while queue and executor.running < executor.capacity:
            ticket, arch = queue.pop(0)
            executor.submit(ticket, arch)
        done.update(executor.wait())
    wall = time.perf_counter() - start
    bad = [e for e in done.values() if e.status != "ok"]
    if bad:
        raise RuntimeError(f"{len(bad)} evaluations did not succeed, e.g. {bad[0]}")
    return wall, [done[i] for i in range(len(archs))]


def throughput(surrogate: S.Surrogate, nodes: int, warm: list[Architecture], timed: list[Architecture]) -> dict:
    cluster = start_cluster(nodes)
    try:
        ex = S.RayExecutor(surrogate, address=cluster.address)
        try:
            places = ex.placement()
            run_all(ex, warm[:ex.capacity])        # each worker loads the teacher and corpus once, untimed
            wall, evaluations = run_all(ex, timed)
        finally:
            ex.close()
    finally:
        cluster.shutdown()
    return {"nodes": nodes, "workers": len(places), "worker_nodes": len({p["node"] for p in places}),
            "evaluations": len(timed), "wall_s": wall, "evaluations_per_s": len(timed) / wall,
            "evaluation_s_median": statistics.median(e.seconds for e in evaluations),
            "per_node": _per_node(evaluations)}


def _per_node(evaluations: list[S.Evaluation]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in evaluations:
        counts[e.node] = counts.get(e.node, 0) + 1
    return counts


def overhead(executor: S.Executor, warm: Architecture, archs: list[Architecture]) -> dict:
    """One evaluation at a time: the driver's wall time per evaluation minus the worker's own measure of it."""
    run_all(executor, [warm])
    extra, seconds = [], []
    for arch in archs:
        wall, (evaluation,) = run_all(executor, [arch])
        extra.append(wall - evaluation.seconds)
        seconds.append(evaluation.seconds)
    median_extra, median_eval = statistics.median(extra), statistics.median(seconds)
    return {"evaluations": len(archs), "overhead_ms_median": 1e3 * median_extra,
            "overhead_ms_max": 1e3 * max(extra), "evaluation_s_median": median_eval,
            "overhead_share": median_extra / median_eval}


def ray_overhead(surrogate: S.Surrogate, warm: Architecture, archs: list[Architecture]) -> dict:
    cluster = start_cluster(1)
    try:
        ex = S.RayExecutor(surrogate, workers=1, address=cluster.address)
        try:
            return overhead(ex, warm, archs)
        finally:
            ex.close()
    finally:
        cluster.shutdown()


def local_overhead(surrogate: S.Surrogate, warm: Architecture, archs: list[Architecture]) -> dict:
    ex = S.LocalExecutor(surrogate, workers=2)
    try:
        return overhead(ex, warm, archs)
    finally:
        ex.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=16, help="the distillation surrogate's steps (default 16)")
    p.add_argument("--evaluations", type=int, default=12, help="timed evaluations per configuration")
    p.add_argument("--overhead-evaluations", type=int, default=6, help="sequential evaluations for the overhead")
    p.add_argument("--tiny", action="store_true", help="a seconds-long check of the harness (figures mean nothing)")
    p.add_argument("--out", default=str(BENCH_DIR / "results" / "ray_scaleout.json"))
    args = p.parse_args()
    settings = dict(steps=args.steps, threads=1)
    if args.tiny:
        settings.update(steps=2, eval_sentences=8, batch_size=2)
        args.evaluations, args.overhead_evaluations = 2, 2
    surrogate = S.DistillationSurrogate(**settings)
    archs = architectures(args.evaluations)
    warm, timed = archs[:2], archs[2:]
    print(f"surrogate {surrogate.describe()}; {len(timed)} timed evaluations per configuration", flush=True)
    rows = [throughput(surrogate, nodes, warm, timed) for nodes in (1, 2)]
    for r in rows:
        print(f"{r['nodes']} node(s), {r['workers']} worker(s): {r['evaluations']} evaluations in {r['wall_s']:.1f} s"
              f" = {r['evaluations_per_s']:.3f}/s (median evaluation {r['evaluation_s_median']:.2f} s; per node "
              f"{sorted(r['per_node'].values())})", flush=True)
    speedup = rows[1]["evaluations_per_s"] / rows[0]["evaluations_per_s"]
    print(f"two nodes / one node: {speedup:.2f}x (target >= 1.7)", flush=True)
    seq = timed[:args.overhead_evaluations]
    costs = {"ray": ray_overhead(surrogate, warm[0], seq), "local": local_overhead(surrogate, warm[0], seq)}
    for name, c in costs.items():
        print(f"overhead, {name}: median {c['overhead_ms_median']:.1f} ms (max {c['overhead_ms_max']:.1f}) per "
              f"evaluation of {c['evaluation_s_median']:.2f} s = {100 * c['overhead_share']:.2f}%"
              + (" (target <= 5%)" if name == "ray" else ""), flush=True)
    import ray

    result = {"surrogate": surrogate.describe(), "tiny": args.tiny, "throughput": rows, "speedup": speedup,
              "overhead": costs, "ray": ray.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
              "loadavg": os.getloadavg(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
