"""Lone requests on an idle server, A/B: `bortengine serve` with a short request's forward on the event loop (the
default) against the same server with `--no-forwards-on-loop` (every forward in the engine's worker threads), and
both against the in-process call after the same pause (issue 16: a lone request <= in-process latency + 0.5 ms).

Both servers run side by side on 127.0.0.1. Every round gives each, in turn (the order flipping from round to
round), one wrk connection that pauses --pause-ms after each answer for --seconds: lone requests, the server idle
between them. The in-process reference (serve_inprocess.py: `encode` of one text after the same pause) runs in
its own process before and after the rounds. Per round the two servers' p50 are compared, so both sample the
same machine state; the median over rounds is reported, with how many rounds each side won.

--floor adds three servers that do no work (bench/serve_floor.py) to every round: uvicorn + Starlette answering a
fixed embedding (`stack`), uvicorn with a bare ASGI callable answering it (`asgi`) and a bare uvloop protocol
answering it (`loopback`): what a lone request costs on this machine before any model runs, against the same
target.

    python bench/serve_lone.py [--dtype int8] [--texts queries] [--rounds 7] [--seconds 6] [--pause-ms 50]
        [--floor] [--b NAME=OPTIONS] [--b-src DIR] [--out bench/results/serve_lone]

Needs wrk (`bash bench/setup_serve_load.sh`). Writes serve_lone.json into --out and prints the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from serve_load import WORK_DIR, load_texts, model_id, text_stats, write_bodies  # noqa: E402
from serve_processes import (LoadTestError, ServerProcess, free_port, run_client, run_reference,  # noqa: E402
                             wrk_argv, wrk_version)
from serve_report import level_from_report  # noqa: E402

# A: the server as it is; B: the same with other options (--b NAME=OPTIONS; by default every forward in threads)
DEFAULT_B = "threads-only=--no-forwards-on-loop"
FLOORS = ("stack", "asgi", "loopback")


def start(name: str, args, extra: list[str], src: Optional[str] = None) -> ServerProcess:
    port = free_port()
    if name in FLOORS:
        argv = [sys.executable, str(BENCH_DIR / "serve_floor.py"), name, "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "bortengine", "serve", str(args.model), "--host", "127.0.0.1", "--port",
                str(port), "--threads", str(args.threads), "--dtype", args.dtype, *extra]
    server = ServerProcess(name, argv, port, WORK_DIR / f"server-lone-{name}.log", src=src)
    print(f"started {name} on port {port}, ready in {server.wait_ready(120):.1f} s", flush=True)
    return server


def lone_p50(server: ServerProcess, servers, bodies: Path, args) -> dict:
    argv = wrk_argv(server.base_url + "/v1/embeddings", bodies, 1, args.seconds, 1, 30.0, args.pause_ms)
    run = run_client(argv, server, servers, args.seconds + 90)
    level = level_from_report(run.report, server=server.name, mode="idle", texts_per_request=1, connections=1,
                              offered_rps=None)
    if level.errors:
        raise LoadTestError(f"{server.name}: {level.errors} failed requests")
    return {"p50_ms": level.latency_ms["p50"], "p99_ms": level.latency_ms["p99"], "requests": level.requests,
            "others_cpu_s": run.others_cpu_s}


def inprocess(args, texts_file: Path) -> dict:
    report = run_reference([sys.executable, str(BENCH_DIR / "serve_inprocess.py"), "engine", str(args.model),
                            str(texts_file), "--threads", str(args.threads), "--dtype", args.dtype, "--seconds",
                            str(args.seconds), "--idle-pause", f"{args.pause_ms / 1000:g}"], timeout=900)
    return {"p50_ms": report["single_idle"]["p50_ms"], "back_to_back_p50_ms": report["single"]["p50_ms"]}


def run(args) -> dict:
    import bortengine

    if wrk_version() is None:
        raise LoadTestError("wrk is not installed: bash bench/setup_serve_load.sh")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    tokenizer = bortengine.load(args.model, num_threads=1)
    texts = load_texts(args.texts, tokenizer, args.query_tokens)
    stats = text_stats(tokenizer, texts)
    del tokenizer
    texts_file = WORK_DIR / "texts-lone.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    print(f"{args.texts}: {stats['count']} texts, median {stats['tokens_median']:g} tokens", flush=True)
    refs = [inprocess(args, texts_file)]
    variants = {"on-loop": [], args.b_name: args.b_options}
    servers = [start(name, args, extra, args.b_src if name == args.b_name else None)
               for name, extra in variants.items()]
    if args.floor:
        servers += [start(name, args, []) for name in FLOORS]
    rounds = []
    try:
        bodies = write_bodies(WORK_DIR / "bodies-lone.jsonl", texts, model_id(servers[0], Path(args.model).name), 1)
        for s in servers:  # untimed: every path has run once
            lone_p50(s, servers, bodies, argparse.Namespace(**{**vars(args), "seconds": 2}))
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            row = {s.name: lone_p50(s, servers, bodies, args) for s in order}
            rounds.append(row)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} p50 {v['p50_ms']:.3f} ms" for n, v in row.items()),
                  flush=True)
    finally:
        for s in servers:
            s.stop()
    refs.append(inprocess(args, texts_file))
    a, b = variants
    med = {s.name: statistics.median(row[s.name]["p50_ms"] for row in rounds) for s in servers}
    ref = statistics.median(x["p50_ms"] for x in refs)
    summary = {"median_p50_ms": med, "inprocess_after_pause_p50_ms": ref,
               "served_minus_inprocess_ms": {n: med[n] - ref for n in variants},
               f"rounds_{a}_faster": sum(row[a]["p50_ms"] < row[b]["p50_ms"] for row in rounds),
               "ratio_median": statistics.median(row[b]["p50_ms"] / row[a]["p50_ms"] for row in rounds)}
    summary["b"] = {"name": b, "options": variants[b], "src": args.b_src}
    return {"meta": {"model": str(args.model), "dtype": args.dtype, "threads": args.threads, "texts": args.texts,
                     "text_stats": stats, "pause_ms": args.pause_ms, "seconds": args.seconds, "floor": args.floor,
                     "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())},
            "inprocess": refs, "rounds": rounds, "summary": summary}


def main(argv=None) -> int:
    from bortengine.testing import minilm_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the shipped all-MiniLM-L6-v2)")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", default="queries", help="reviews, queries, or a file with one text a line")
    p.add_argument("--query-tokens", type=int, default=6)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=int, default=6, help="seconds per server and round")
    p.add_argument("--pause-ms", type=float, default=50.0)
    p.add_argument("--floor", action="store_true", help="add servers that do no work (bench/serve_floor.py)")
    p.add_argument("--b", default=DEFAULT_B, metavar="NAME=OPTIONS",
                   help=f"the server compared with the default one: a name and its serve options, space-separated "
                        f"(default {DEFAULT_B!r}; e.g. 'nice0=--worker-nice 0')")
    p.add_argument("--b-src", default=None, metavar="DIR",
                   help="run the B server from another source tree's src directory (e.g. a git worktree of another "
                        "commit, its native module built or copied there): two commits side by side")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "serve_lone")
    args = p.parse_args(argv)
    name, _, options = args.b.partition("=")
    if not name or name in ("on-loop",) + FLOORS:
        p.error(f"--b {args.b!r}: give NAME=OPTIONS with a name other than on-loop, {', '.join(FLOORS)}")
    args.b_name, args.b_options = name, options.split()
    args.model = args.model or str(minilm_path())
    try:
        result = run(args)
    except LoadTestError as e:
        print(f"serve_lone: {e}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_lone.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    s = result["summary"]
    print(f"\nlone requests, {args.dtype}, {args.texts}, {args.rounds} rounds: median p50 "
          + ", ".join(f"{n} {v:.3f} ms" for n, v in s["median_p50_ms"].items())
          + f"; in-process after the same pause {s['inprocess_after_pause_p50_ms']:.3f} ms; served minus in-process "
          + ", ".join(f"{n} {v:+.3f} ms" for n, v in s["served_minus_inprocess_ms"].items())
          + f" (target <= 0.5); on-loop faster in {s['rounds_on-loop_faster']} of {args.rounds} rounds, "
            f"{s['b']['name']} / on-loop {s['ratio_median']:.3f}")
    if args.floor:
        print("servers that do no work (bench/serve_floor.py), median p50: "
              + ", ".join(f"{n} {s['median_p50_ms'][n]:.3f} ms" for n in FLOORS)
              + f"; on-loop minus stack {s['median_p50_ms']['on-loop'] - s['median_p50_ms']['stack']:+.3f} ms")
    print(f"wrote {args.out / 'serve_lone.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
