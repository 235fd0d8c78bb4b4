"""The figures of the serving load test (bench/serve_load.py) as pure functions: the clients' reports parsed into
per-level results, latency percentiles, the ratios and targets of issue 16, the summary table and the latency
figure. Nothing here starts a process, so tests/test_serve_load.py checks all of it on its own.

Units: latencies in milliseconds, rates per second, CPU in seconds, unless a key ends in _us (microseconds, as
the clients report them). A request "succeeds" when its answer's status is below 400 (wrk's own rule);
texts/s = successful requests/s x texts per request.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Optional, Sequence

import numpy as np

MARKER = "SERVE_LOAD_JSON "  # wrk_post.lua and open_loop.py print their report as one line after it
PERCENTILES = (50, 90, 95, 99, 99.9)
ENGINE = "bortengine"
PEER = "sentence-transformers"
SERVERS = (ENGINE, PEER)
# modes of a load level: "closed" = N connections, each sends again as soon as its answer came; "idle" = one
# connection pausing between requests, so each finds the server idle; "open" = a fixed offered rate, whatever
# the answers do
MODES = ("closed", "idle", "open")

# issue 16's targets, at TARGET_CONNECTIONS concurrent clients each sending one short text per request
TARGET_CONNECTIONS = 32
LIMIT_SHARE_GOAL = {"float32": 0.75, "int8": 0.50}  # of the engine's own in-process limit (encode, batches of 32)
ST_THREADS_GOAL = 6.0  # x sentence-transformers called from 32 threads in one process
TAIL_GOAL = 3.0  # p99 / p50
LONE_REQUEST_GOAL_MS = 0.5  # lone request on an idle server minus the in-process call


class ClientReportMissing(ValueError):
    """A client's output has no report line: it failed before the end of its run."""


def parse_client_report(output: str) -> dict:
    """The JSON a client printed after MARKER (the last such line: wrk prints its own text around it)."""
    for line in reversed(output.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise ClientReportMissing(f"no {MARKER.strip()} line in the client's output; it ends with:\n{output[-1500:]}")


def latency_summary_us(samples_us: Sequence[float]) -> dict:
    """min/max/mean/stdev and PERCENTILES of latencies in microseconds, keyed as wrk_post.lua keys them.

    Percentiles are nearest-rank (the smallest sample with at least q% of the samples at or below it), as wrk's
    histogram reports them, so both clients' figures mean the same thing.
    """
    a = np.asarray(samples_us, dtype=np.float64)
    if a.size == 0:
        return {k: None for k in ("min", "max", "mean", "stdev", *(f"p{q:g}" for q in PERCENTILES))}
    out = {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()), "stdev": float(a.std())}
    for q in PERCENTILES:
        out[f"p{q:g}"] = float(np.percentile(a, q, method="inverted_cdf"))
    return out


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """a / b, None when either is missing or b is not positive (a level that did not run, or served nothing)."""
    if a is None or b is None or b <= 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _ms(summary_us: Optional[dict]) -> Optional[dict]:
    if summary_us is None:
        return None
    return {k: (None if v is None else v / 1000.0) for k, v in summary_us.items()}


@dataclass
class Level:
    """One server at one load level: what its client saw, and the CPU the client, the servers and the rest of
    the machine took meanwhile."""

    server: str
    mode: str
    connections: Optional[int]  # closed and idle modes
    offered_rps: Optional[float]  # open mode
    texts_per_request: int
    duration_s: float
    requests: int  # answers received, any status
    status_errors: int  # answers with status >= 400
    socket_errors: int  # connect, read and write errors
    timeouts: int  # no answer within the client's timeout
    latency_ms: dict  # min max mean stdev p50 p90 p95 p99 p99.9
    client: str = "wrk"
    not_sent: int = 0  # open mode: arrivals the client could not send (every connection busy, none could open)
    lag_ms: Optional[dict] = None  # open mode: send time minus scheduled time (the client keeping up, or not)
    client_cpu_s: Optional[float] = None
    server_cpu_s: Optional[float] = None  # the server under load
    others_cpu_s: Optional[float] = None  # every other process of the machine, the idle server included

    @property
    def ok(self) -> int:
        return self.requests - self.status_errors

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors + self.timeouts + self.not_sent

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def texts_per_s(self) -> float:
        return self.rps * self.texts_per_request

    @property
    def tail_ratio(self) -> Optional[float]:
        return ratio(self.latency_ms.get("p99"), self.latency_ms.get("p50"))

    @property
    def client_share(self) -> Optional[float]:
        """The client's CPU over the client's and the server's together: what the load generator took."""
        if self.client_cpu_s is None or self.server_cpu_s is None:
            return None
        return ratio(self.client_cpu_s, self.client_cpu_s + self.server_cpu_s)

    @property
    def load(self) -> str:
        if self.mode == "open":
            return f"{self.offered_rps:.0f}/s"
        return f"c={self.connections}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(ok=self.ok, errors=self.errors, rps=self.rps, texts_per_s=self.texts_per_s,
                   p99_over_p50=self.tail_ratio, client_share=self.client_share)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Level":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def level_from_report(report: dict, *, server: str, mode: str, texts_per_request: int,
                      connections: Optional[int] = None, offered_rps: Optional[float] = None) -> Level:
    """A Level from a client's JSON report (wrk_post.lua's or open_loop.py's; both use the same keys)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    e = report["errors"]
    return Level(server=server, mode=mode, connections=connections, offered_rps=offered_rps,
                 texts_per_request=texts_per_request, duration_s=report["duration_us"] / 1e6,
                 requests=int(report["requests"]), status_errors=int(e.get("status", 0)),
                 socket_errors=int(e.get("connect", 0) + e.get("read", 0) + e.get("write", 0)),
                 timeouts=int(e.get("timeout", 0)), latency_ms=_ms(report["latency_us"]),
                 client=report.get("client", "wrk"), not_sent=int(report.get("not_sent", 0)),
                 lag_ms=_ms(report.get("lag_us")))


def find_level(levels: Iterable[Level], server: str, mode: str, connections: Optional[int] = None) -> Optional[Level]:
    for level in levels:
        if level.server == server and level.mode == mode and (connections is None or level.connections == connections):
            return level
    return None


# -- ratios and targets ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    name: str
    value: Optional[float]
    goal: float
    higher_is_better: bool

    @property
    def met(self) -> Optional[bool]:
        if self.value is None:
            return None
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        value = "not measured" if self.value is None else f"{self.value:.3g}"
        verdict = {None: "?", True: "ok", False: "MISSED"}[self.met]
        return f"{self.name}: {value} (target {sign} {self.goal:g}) {verdict}"


def comparisons(levels: Sequence[Level], inprocess: dict, target_connections: int = TARGET_CONNECTIONS) -> dict:
    """The issue's ratios for one configuration, from its levels and its in-process measurements.

    inprocess: {"engine": {"limit": {"texts_per_s"}, "single": {"p50_ms"}, "single_idle": {"p50_ms"}},
                "st": {"threads": {"texts_per_s"}, ...}} (serve_inprocess.py's reports; any part may be missing).
    """
    engine_at = find_level(levels, ENGINE, "closed", target_connections)
    peer_at = find_level(levels, PEER, "closed", target_connections)
    engine_1 = find_level(levels, ENGINE, "closed", 1)
    engine_idle = find_level(levels, ENGINE, "idle")

    def get(*keys):
        d = inprocess
        for k in keys:
            if not isinstance(d, dict) or d.get(k) is None:
                return None
            d = d[k]
        return d

    def minus(a, b):
        return None if a is None or b is None else a - b

    texts_at = engine_at.texts_per_s if engine_at else None
    peer_texts_at = peer_at.texts_per_s if peer_at else None
    return {
        "connections": target_connections,
        "server_texts_per_s": texts_at,
        "st_served_texts_per_s": peer_texts_at,
        "server_over_inprocess_limit": ratio(texts_at, get("engine", "limit", "texts_per_s")),
        "server_over_inprocess_lanes": ratio(texts_at, get("engine", "limit_lanes", "texts_per_s")),
        "server_over_st_threads": ratio(texts_at, get("st", "threads", "texts_per_s")),
        "server_over_st_served": ratio(texts_at, peer_texts_at),
        "st_served_over_st_threads": ratio(peer_texts_at, get("st", "threads", "texts_per_s")),
        "p99_over_p50": engine_at.tail_ratio if engine_at else None,
        "st_served_p99_over_p50": peer_at.tail_ratio if peer_at else None,
        "failed_requests": engine_at.errors if engine_at else None,
        "failed_requests_all_levels": sum(lv.errors for lv in levels if lv.server == ENGINE),
        "lone_request_minus_inprocess_ms": minus(engine_idle and engine_idle.latency_ms["p50"],
                                                 get("engine", "single_idle", "p50_ms")),
        "back_to_back_minus_inprocess_ms": minus(engine_1 and engine_1.latency_ms["p50"],
                                                 get("engine", "single", "p50_ms")),
        "max_client_share": max((lv.client_share for lv in levels if lv.client_share is not None), default=None),
        **_busiest_client(levels),
    }


def _busiest_client(levels: Sequence[Level]) -> dict:
    """The level whose client took the most CPU, in cores (CPU seconds per second): what the load generator took
    from the machine at its worst."""
    measured = [lv for lv in levels if lv.client_cpu_s is not None and lv.duration_s > 0]
    if not measured:
        return {"max_client_cores": None, "max_client_level": None}
    top = max(measured, key=lambda lv: lv.client_cpu_s / lv.duration_s)
    return {"max_client_cores": top.client_cpu_s / top.duration_s,
            "max_client_level": f"{top.server} {top.mode} {top.load}"}


def targets(comp: dict, dtype: str) -> list[Target]:
    c = comp["connections"]
    return [
        Target(f"{c} clients: throughput / in-process limit", comp["server_over_inprocess_limit"],
               LIMIT_SHARE_GOAL.get(dtype, LIMIT_SHARE_GOAL["float32"]), True),
        Target(f"{c} clients: throughput / sentence-transformers from {c} threads", comp["server_over_st_threads"],
               ST_THREADS_GOAL, True),
        Target(f"{c} clients: failed requests", comp["failed_requests"], 0, False),
        Target(f"{c} clients: p99 / p50", comp["p99_over_p50"], TAIL_GOAL, False),
        Target("lone request on an idle server minus in-process call, ms", comp["lone_request_minus_inprocess_ms"],
               LONE_REQUEST_GOAL_MS, False),
    ]


# -- the table ---------------------------------------------------------------------------------------------------
def _f(value: Optional[float], spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _x(value: Optional[float]) -> str:
    return _fmt(value, ".2f", "x")


def level_pairs(levels: Sequence[Level]) -> list[tuple[str, Level, Level]]:
    """(mode, engine level, peer level) of the closed and idle levels both servers ran at the same connections."""
    out = []
    for e in levels:
        if e.server == ENGINE and e.mode != "open":
            p = find_level(levels, PEER, e.mode, e.connections)
            if p is not None:
                out.append((e.mode, e, p))
    return out


def level_table(levels: Sequence[Level]) -> str:
    """One row per (level, server), in the order run; client cpu = the client's share of client + server CPU."""
    head = (f"{'mode':<6} {'load':>7} {'server':<21} {'req/s':>8} {'texts/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'p99/p50':>7} {'errors':>6} {'client':>6} {'others':>6}")
    rows = [head, "-" * len(head)]
    for lv in levels:
        lat = lv.latency_ms
        others = ratio(lv.others_cpu_s, lv.duration_s)  # in cores: 1.0 = one core busy the whole level
        rows.append(f"{lv.mode:<6} {lv.load:>7} {lv.server:<21} {lv.rps:>8.1f} {lv.texts_per_s:>8.1f} "
                    f"{_f(lat.get('p50'), '.2f', 8)} {_f(lat.get('p95'), '.2f', 8)} {_f(lat.get('p99'), '.2f', 8)} "
                    f"{_f(lv.tail_ratio, '.2f', 7)} {lv.errors:>6d} {_f(lv.client_share, '.0%', 6)} "
                    f"{_f(others, '.2f', 6)}")
    return "\n".join(rows)


def inprocess_lines(inprocess: dict) -> list[str]:
    out = []
    engine, st = inprocess.get("engine") or {}, inprocess.get("st") or {}
    if "limit" in engine:
        out.append(f"in-process engine: encode in batches of 32 {engine['limit']['texts_per_s']:.1f} texts/s; "
                   f"one text per call p50 {engine['single']['p50_ms']:.3f} ms back to back, "
                   f"{engine['single_idle']['p50_ms']:.3f} ms after a pause")
    if "limit_lanes" in engine:
        lanes = engine["limit_lanes"]
        out.append(f"in-process engine, {lanes['callers']} threads each encoding batches of 32 (forwards side by side "
                   f"in lanes): {lanes['texts_per_s']:.1f} texts/s")
    if "threads" in st:
        t = st["threads"]
        out.append(f"in-process sentence-transformers: {t['callers']} threads, one text per call "
                   f"{t['texts_per_s']:.1f} texts/s (p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms); batches "
                   f"of 32 {st['limit']['texts_per_s']:.1f} texts/s; one call p50 {st['single']['p50_ms']:.2f} ms")
    return out


def config_summary(config: dict) -> str:
    """Everything measured for one (dtype, text set): header, in-process figures, the levels, ratios, targets."""
    levels = [Level.from_dict(d) for d in config["levels"]]
    stats = config.get("text_stats", {})
    head = (f"== {config['dtype']}, texts '{config['texts']}' ({stats.get('count', '?')} texts, median "
            f"{stats.get('tokens_median', '?')} tokens), {config.get('threads', '?')} thread(s)")
    lines = [head, *inprocess_lines(config.get("inprocess", {})), level_table(levels)]
    comp = comparisons(levels, config.get("inprocess", {}))  # recomputed: a saved run reads with today's ratios
    lines.append(f"{ENGINE} / {PEER}, texts/s: " + (", ".join(
        f"{mode} {e.load} {_x(ratio(e.texts_per_s, p.texts_per_s))}" for mode, e, p in level_pairs(levels)) or "n/a"))
    callers = (((config.get("inprocess") or {}).get("st") or {}).get("threads") or {}).get("callers", "?")
    lines.append(f"served {PEER} / its {callers} in-process threads: "
                 f"{_x(comp['st_served_over_st_threads'])}; back-to-back request minus in-process call: "
                 f"{_fmt(comp['back_to_back_minus_inprocess_ms'], '.3f', ' ms')}")
    lines.append(f"served / in-process from 2 threads (lanes): {_x(comp['server_over_inprocess_lanes'])}")
    lines.append(f"load generator: at most {_fmt(comp.get('max_client_cores'), '.3f')} cores "
                 f"({comp.get('max_client_level') or 'n/a'}), at most {_fmt(comp['max_client_share'], '.1%')} of "
                 f"client + server CPU")
    lines += ["target " + t.line() for t in targets(comp, config["dtype"])]
    return "\n".join(lines)


# -- the figure --------------------------------------------------------------------------------------------------
COLORS = {ENGINE: "tab:blue", PEER: "tab:orange"}


def _reference_lines(ax, inprocess: dict) -> None:
    """The in-process figures the servers are held against: the engine's limit and sentence-transformers from
    many threads (throughput, vertical), the engine's one-text call (latency, horizontal)."""
    engine, st = inprocess.get("engine") or {}, inprocess.get("st") or {}
    if engine.get("limit"):
        ax.axvline(engine["limit"]["texts_per_s"], color=COLORS[ENGINE], lw=0.8, ls=":",
                   label="engine in-process limit (batches of 32)")
    if engine.get("single"):
        ax.axhline(engine["single"]["p50_ms"], color=COLORS[ENGINE], lw=0.8, ls="-.",
                   label="engine in-process, one text, p50")
    if st.get("threads"):
        ax.axvline(st["threads"]["texts_per_s"], color=COLORS[PEER], lw=0.8, ls=":",
                   label=f"{PEER} in-process, {st['threads']['callers']} threads")


def plot_latency(configs: Sequence[dict], path) -> None:
    """Per configuration: p50 (solid) and p99 (dashed) latency against throughput (closed loop, points labelled
    with the connections) and against the offered rate (open loop), both servers, log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter, LogLocator

    from bortengine.files import save_figure

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    fig, axes = plt.subplots(len(configs), 2, figsize=(12, 4.2 * len(configs)), squeeze=False)
    for row, config in zip(axes, configs):
        levels = [Level.from_dict(d) for d in config["levels"]]
        title = f"{config['dtype']}, texts '{config['texts']}'"
        for ax, mode, xlabel in ((row[0], "closed", "throughput, texts/s (closed loop)"),
                                 (row[1], "open", "offered load, requests/s (open loop)")):
            for server in SERVERS:
                pts = [lv for lv in levels if lv.server == server and lv.mode == mode and lv.ok > 0]
                if not pts:
                    continue
                x = [lv.texts_per_s if mode == "closed" else lv.offered_rps for lv in pts]
                for q, style in (("p50", "-o"), ("p99", "--x")):
                    ax.plot(x, [lv.latency_ms[q] for lv in pts], style, color=COLORS[server], label=f"{server} {q}")
                if mode == "closed":
                    for xi, lv in zip(x, pts):
                        ax.annotate(str(lv.connections), (xi, lv.latency_ms["p50"]), fontsize=7,
                                    textcoords="offset points", xytext=(3, -9))
            if mode == "closed":
                _reference_lines(ax, config.get("inprocess") or {})
            ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="latency, ms", title=title)
            for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1-2-5 steps: 2x10^1 reads slower than 20
                axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(plain)
            ax.grid(True, which="both", alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
    save_figure(fig, path)
