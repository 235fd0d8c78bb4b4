"""Collects what the benchmarks measured and turns it into the end-of-session table and bench/results/*.json.

Times are medians over the rounds of one pytest-benchmark run (the minimum and the interquartile range go to the
JSON too, to judge how noisy a row was). Ratios are other runtime / bortengine: above 1 means the engine is faster.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cases import (BUSY_SHARE, ENGINE, ENGINE_BF16, ENGINE_INT8, FAMILY_GEOMEAN_RATIO, FAMILY_MIN_RATIO, FLAG_ATOL,
                   GEMM_TARGET, LOW_PRECISION, ORT, ORT_INT8, RUNTIMES, TORCH_BF16, TORCH_EAGER, TORCH_SDPA)


@dataclass
class EncoderTiming:
    model: str
    shape: str
    runtime: str
    median_ms: float
    min_ms: float
    iqr_ms: float
    rounds: int
    batch: int
    tokens: int  # padded length T
    real_tokens: int  # sum of the attention mask
    max_abs_diff: float | None  # vs PyTorch eager at unmasked positions (None for the reference itself)
    rerun_max_abs_diff: float | None = None  # last timed call vs the first (checked) one
    others_cpu: float | None = None  # share of the machine's CPU time other processes used while timing
    masked_rows_zero: bool | None = None  # engine only: rows of masked positions are exactly 0
    min_cosine: float | None = None  # int8 and bf16 runtimes: smallest per-token cosine to PyTorch float32
    smoke: bool = False
    flops: int | None = None  # cases.encoder_flops: the forward's GEMM and attention work over the real tokens
    family: str = "bert"  # the model's config.json model_type: BERT rows and each other family aggregate apart


@dataclass
class GemmTiming:
    label: str  # e.g. "bortengine PackedLinear" / "numpy matmul"
    m: int
    k: int
    n: int
    median_ms: float
    gflops: float
    peak_candidate: bool  # a large square GEMM whose best is "the machine's peak"
    max_rel_err: float | None = None
    smoke: bool = False
    others_cpu: float | None = None


@dataclass
class Report:
    threads: int
    started: float = field(default_factory=time.time)
    load_start: tuple = field(default_factory=lambda: os.getloadavg())
    encoder: list = field(default_factory=list)
    gemm: list = field(default_factory=list)
    memory: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)  # runtime -> reason
    fusion: dict = field(default_factory=dict)  # model -> fused op counts of the ORT graph
    engine: dict = field(default_factory=dict)
    fma: dict = field(default_factory=dict)  # fma_peak.ceiling(): the machine's independent-FMA GFLOP/s

    # --- aggregation -------------------------------------------------------------------------------------------

    def table_rows(self, smoke: bool) -> list[dict]:
        """One dict per (model, shape): each runtime's median ms and the ratios to the engine."""
        rows: dict[tuple, dict] = {}
        for t in self.encoder:
            if t.smoke != smoke:
                continue
            row = rows.setdefault((t.model, t.shape), {"model": t.model, "shape": t.shape, "family": t.family,
                                                       "ms": {}, "min_ms": {}, "diff": {}, "others_cpu": {}})
            row["ms"][t.runtime] = t.median_ms
            row["min_ms"][t.runtime] = t.min_ms
            row["diff"][t.runtime] = t.max_abs_diff
            row["others_cpu"][t.runtime] = t.others_cpu
            row.setdefault("cosine", {})[t.runtime] = t.min_cosine
            if t.runtime == ENGINE:
                row["masked_rows_zero"] = t.masked_rows_zero
            if t.flops is not None:
                row["gflop"] = t.flops / 1e9
        peaks = {"ceiling": self.gemm_summary(smoke)["peak_gflops"], "ceiling_fma": self.fma.get("gflops")}
        for row in rows.values():
            if not row.get("gflop"):
                continue
            row["gflops"] = {r: row["gflop"] / row["ms"][r] * 1e3 for r in row["ms"]}
            # The fastest any runtime could go if every FLOP of the forward ran at the run's best GEMM rate (or at
            # the FMA probe's rate) and nothing else cost time; per peer, its ms over that floor: the highest
            # ratio to that peer an engine could show on this machine.
            for key, peak in peaks.items():
                if peak:
                    floor_ms = row["gflop"] / peak * 1e3
                    row[key] = {r: row["ms"][r] / floor_ms for r in row["ms"] if r != ENGINE}
            for stat, key in (("ms", "ratio"), ("min_ms", "ratio_of_min")):
                eng = row[stat].get(ENGINE)
                row[key] = {r: row[stat][r] / eng for r in row[stat] if eng and r != ENGINE}
                # int8 ("8") and bf16 ("16"): peers over the engine's path of that precision (a peer in the same
                # precision, and the engine's own float32 path)
                for low, (suffix, peers) in LOW_PRECISION.items():
                    base = row[stat].get(low)
                    row[key + suffix] = {r: row[stat][r] / base for r in peers if base and r in row[stat]}
            shares = [x for x in row["others_cpu"].values() if x is not None]
            row["max_others_cpu"] = max(shares) if shares else None
            row["busy"] = bool(shares) and max(shares) > BUSY_SHARE
        return list(rows.values())

    def aggregates(self) -> dict:
        """Per other runtime: geometric mean and minimum of its ratio to the engine over the non-smoke BERT rows
        (MiniLM, BERT-base, Bort: the rows the BERT speed targets are about; the other families' are
        family_aggregates').

        Also the same from the rounds' minimum times ("of_min"): on a quiet machine the two agree; when they do
        not, the machine was busy and the median-based ratios carry the other load's noise.
        """
        rows = [r for r in self.table_rows(smoke=False) if r["family"] == "bert"]
        out = {}
        pairs = [(ORT, ENGINE, ""), (TORCH_EAGER, ENGINE, ""), (TORCH_SDPA, ENGINE, "")]
        pairs += [(peer, low, suffix) for low, (suffix, peers) in LOW_PRECISION.items() for peer in peers]
        for runtime, base, suffix in pairs:
            key, key_min = "ratio" + suffix, "ratio_of_min" + suffix
            ratios = [(r[key][runtime], f'{r["model"]} {r["shape"]}') for r in rows if runtime in r[key]]
            if ratios:
                worst = min(ratios)
                of_min = [r[key_min][runtime] for r in rows if runtime in r[key_min]]
                out[f"{runtime}/{base}"] = {
                    "geomean": _geomean([x for x, _ in ratios]), "min": worst[0], "min_row": worst[1],
                    "rows": len(ratios), "busy_rows": sum(r["busy"] for r in rows if runtime in r[key]),
                    "geomean_of_min": _geomean(of_min), "min_of_min": min(of_min)}
                for ckey in ("ceiling", "ceiling_fma"):
                    ceilings = [(r[ckey][runtime], f'{r["model"]} {r["shape"]}') for r in rows
                                if runtime in r.get(ckey, {})]
                    if suffix == "" and ceilings and len(ceilings) == len(ratios):
                        out[f"{runtime}/{base}"][ckey] = {
                            "geomean": _geomean([x for x, _ in ceilings]), "min": min(ceilings)[0],
                            "min_row": min(ceilings)[1]}
        return out

    def family_aggregates(self, smoke: bool = False) -> dict:
        """Per model of another family than BERT (issue 18): ORT/engine in float32 and ORT-int8/engine-int8 over its
        shapes, each with geometric mean, minimum (and its shape), the same from the rounds' minimum times, and
        whether the target holds (geometric mean >= FAMILY_GEOMEAN_RATIO, every shape >= FAMILY_MIN_RATIO)."""
        out: dict = {}
        for r in self.table_rows(smoke):
            if r["family"] == "bert":
                continue
            model = out.setdefault(r["model"], {"family": r["family"], "ratios": {}})
            for label, key, peer in (("ORT/eng", "ratio", ORT), ("ORT8/eng8", "ratio8", ORT_INT8)):
                if peer in r.get(key, {}):
                    model["ratios"].setdefault(label, []).append(
                        (r[key][peer], r["ratio_of_min" + key[len("ratio"):]][peer], r["shape"], r["busy"]))
        for model in out.values():
            for label, values in model.pop("ratios").items():
                worst = min(values)
                geomean = _geomean([v[0] for v in values])
                model[label] = {
                    "geomean": geomean, "min": worst[0], "min_shape": worst[2], "shapes": len(values),
                    "busy_shapes": sum(v[3] for v in values), "geomean_of_min": _geomean([v[1] for v in values]),
                    "min_of_min": min(v[1] for v in values),
                    "meets_target": geomean >= FAMILY_GEOMEAN_RATIO and worst[0] >= FAMILY_MIN_RATIO}
        return out

    def gemm_summary(self, smoke: bool) -> dict:
        rows = [g for g in self.gemm if g.smoke == smoke]
        peaks = [g for g in rows if g.peak_candidate]
        peak = max(peaks, key=lambda g: g.gflops) if peaks else None
        layers = []
        for g in rows:
            if g.peak_candidate:
                continue
            frac = g.gflops / peak.gflops if peak else None
            layers.append({**asdict(g), "fraction_of_peak": frac,
                           "meets_target": None if frac is None else frac >= GEMM_TARGET})
        return {"peak_gflops": peak.gflops if peak else None, "peak_from": peak.label if peak else None,
                "peak_candidates": [asdict(g) for g in peaks], "shapes": layers, "target": GEMM_TARGET}

    # --- output ------------------------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        out = [f"bortengine benchmark: {self.threads} thread(s), {platform.processor() or platform.machine()}, "
               f"load average {self.load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} now"]
        if self.engine:
            e = self.engine
            out.append("engine: " + (f"isa {e.get('default_isa')}, kernel {e.get('kernel')}" if e.get("available")
                                     else f"NOT AVAILABLE ({e.get('reason')})"))
        if self.native_rebuilt():
            out.append("WARNING: bortengine's native module was rebuilt during this run (its file changed): the "
                       "engine rows may mix two builds; rerun")
        for runtime, why in self.skipped.items():
            out.append(f"skipped {runtime}: {why}")
        for smoke in (False, True):
            rows = self.table_rows(smoke)
            if rows:
                out += ["", "SMOKE (tiny model, harness check only)" if smoke else "encoder forward, median ms"]
                out += self._encoder_table(rows)
        agg = self.aggregates()
        if agg:
            out.append("")
            for runtime, a in agg.items():
                out.append(f"{runtime} over {a['rows']} rows: geometric mean {a['geomean']:.2f}x, "
                           f"min {a['min']:.2f}x ({a['min_row']})   [from the rounds' minimum times: "
                           f"{a['geomean_of_min']:.2f}x, min {a['min_of_min']:.2f}x]")
                for ckey, rate in (("ceiling", "the run's best GEMM"), ("ceiling_fma", "the FMA probe's")):
                    if ckey in a:
                        c = a[ckey]
                        out.append(f"  ceiling with every FLOP at {rate} rate and nothing else costing time: "
                                   f"geometric mean {c['geomean']:.2f}x, min {c['min']:.2f}x ({c['min_row']})")
            busy = max(a["busy_rows"] for a in agg.values())
            if busy:
                out.append(f"{busy} row(s) marked ~ ran while other processes used more than {BUSY_SHARE:.0%} of "
                           "the CPU: their times and ratios are inflated by an unknown amount; rerun on a quiet "
                           "machine")
        out += self._family_lines()
        for smoke in (False, True):
            g = self.gemm_summary(smoke)
            if g["peak_candidates"] or g["shapes"]:
                out += ["", ("SMOKE " if smoke else "") + "GEMM, median"] + self._gemm_table(g)
        if self.fma:
            f = self.fma
            out += ["", f"FMA probe (independent fp32 FMAs, no loads; bench/fma_peak.py): ymm {_fmt_g(f.get('ymm_1'))}"
                        f" / {_fmt_g(f.get('ymm_' + str(f['threads'])))}, zmm {_fmt_g(f.get('zmm_1'))} / "
                        f"{_fmt_g(f.get('zmm_' + str(f['threads'])))} GFLOP/s on 1 / {f['threads']} thread(s): no "
                        f"fp32 GEMM passes {f['gflops']:.1f}"]
        for m in self.memory:
            out += ["", self._memory_line(m)]
        return out

    def _family_lines(self) -> list[str]:
        """The per-family summary (issue 18's target) and the ORT peers whose attention is not fused."""
        out = []
        families = self.family_aggregates()
        if families:
            out += ["", f"families (issue 18: ORT/engine geometric mean >= {FAMILY_GEOMEAN_RATIO} over the shapes and "
                        f">= {FAMILY_MIN_RATIO} on every shape, float32 and int8)"]
        for name, f in families.items():
            parts = []
            for label in ("ORT/eng", "ORT8/eng8"):
                if label in f:
                    a = f[label]
                    parts.append(f"{label} geometric mean {a['geomean']:.2f}x, min {a['min']:.2f}x ({a['min_shape']}) "
                                 f"{'ok' if a['meets_target'] else 'MISSED'} [from the minimum times "
                                 f"{a['geomean_of_min']:.2f}x, min {a['min_of_min']:.2f}x]"
                                 + (f", {a['busy_shapes']} busy shape(s) ~" if a["busy_shapes"] else ""))
            out.append(f"  {name} ({f['family']}): " + "; ".join(parts))
        for model, fusion in self.fusion.items():
            if fusion.get("attention_unfused"):
                out.append(f"  onnxruntime peer of {model}: attention NOT fused ({fusion['Attention']} Attention; "
                           f"{fusion['SkipLayerNormalization']} SkipLayerNormalization and {fusion['BiasGelu']} "
                           f"BiasGelu fused): {fusion['attention_unfused']}")
        return out

    @staticmethod
    def _fmt_ms(x):
        return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")

    def _encoder_table(self, rows) -> list[str]:
        head = ["model", "shape"] + [f"{r} ms" for r in RUNTIMES] + \
               ["ORT/eng", "PTeager/eng", "PTsdpa/eng", "ORT8/eng8", "eng/eng8", "PTbf16/eng16", "eng/eng16",
                "eng max|d|", "ORT max|d|", "eng8 cos", "eng16 cos", "others"]
        body = []
        for r in rows:
            diff = r["diff"].get(ENGINE)
            flag = ""
            if diff is not None and not diff <= FLAG_ATOL:
                flag = " !"
            if r.get("masked_rows_zero") is False:
                flag += " pad!=0"
            ratio = lambda k, s="": f'{r["ratio" + s][k]:.2f}' if k in r["ratio" + s] else "-"  # noqa: E731
            fmt_d = lambda d: "-" if d is None else f"{d:.1e}"  # noqa: E731
            cos = lambda k: "-" if r.get("cosine", {}).get(k) is None else f'{r["cosine"][k]:.4f}'  # noqa: E731
            body.append([r["model"], r["shape"]] + [self._fmt_ms(r["ms"].get(k)) for k in RUNTIMES] +
                        [ratio(ORT), ratio(TORCH_EAGER), ratio(TORCH_SDPA), ratio(ORT_INT8, "8"), ratio(ENGINE, "8"),
                         ratio(TORCH_BF16, "16"), ratio(ENGINE, "16"), fmt_d(diff) + flag,
                         fmt_d(r["diff"].get(ORT)), cos(ENGINE_INT8), cos(ENGINE_BF16),
                         _fmt_share(r["max_others_cpu"])])
        return _align([head] + body) + [
            f"(! = engine differs from PyTorch eager by more than {FLAG_ATOL:g}; pad!=0 = rows of masked positions "
            f"are not zero; others = most CPU other processes took during one runtime's timing, ~ above "
            f"{BUSY_SHARE:.0%})"]

    def _gemm_table(self, g) -> list[str]:
        head = ["what", "M", "K", "N", "ms", "GFLOP/s", "of peak", "max rel err", "others"]
        body = []
        for p in g["peak_candidates"]:
            body.append([p["label"] + " (peak candidate)", p["m"], p["k"], p["n"], self._fmt_ms(p["median_ms"]),
                         f'{p["gflops"]:.1f}', "", _fmt_err(p["max_rel_err"]), _fmt_share(p["others_cpu"])])
        for s in g["shapes"]:
            frac = s["fraction_of_peak"]
            ftxt = "-" if frac is None else f"{frac:.0%}" + ("" if s["meets_target"] or "PackedLinear" not in s["label"]
                                                               else " <target")
            body.append([s["label"], s["m"], s["k"], s["n"], self._fmt_ms(s["median_ms"]), f'{s["gflops"]:.1f}',
                         ftxt, _fmt_err(s["max_rel_err"]), _fmt_share(s["others_cpu"])])
        lines = _align([head] + [[str(c) for c in row] for row in body])
        if g["peak_gflops"]:
            lines.append(f"machine peak (best measured large square GEMM): {g['peak_gflops']:.1f} GFLOP/s "
                         f"from {g['peak_from']}; target per shape {g['target']:.0%}")
        return lines

    @staticmethod
    def _memory_line(m) -> str:
        mib = 1 << 20
        verdict = "within" if m["ratio"] <= 1 else "OVER"
        return (f"memory ({m['model']}, {m['shape']}, fresh process): peak RSS {m['peak_rss'] / mib:.1f} MiB, "
                f"fp32 weights {m['weights_bytes'] / mib:.1f} MiB, budget 1.2 x weights + 64 MiB = "
                f"{m['budget_bytes'] / mib:.1f} MiB -> {m['ratio']:.2f} of budget ({verdict}); RSS after import "
                f"{m['rss_after_import'] / mib:.1f} MiB, after load {m['rss_after_load'] / mib:.1f} MiB, "
                f"peak/weights {m['peak_rss'] / m['weights_bytes']:.2f}")

    def native_rebuilt(self) -> bool:
        from runtimes import native_module_stamp

        before = self.engine.get("module") if self.engine else None
        return bool(before) and native_module_stamp() != before

    def to_json(self) -> dict:
        return {
            "meta": {
                "threads": self.threads, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
                "duration_s": round(time.time() - self.started, 1), "load_average_start": self.load_start,
                "load_average_end": os.getloadavg(), "cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
                "python": platform.python_version(), "versions": _versions(), "git": _git_head(),
                "engine": self.engine, "native_module_rebuilt_during_run": self.native_rebuilt(),
                "skipped": self.skipped, "statistic": "median",
            },
            "encoder": {"rows": [asdict(t) for t in self.encoder], "table": self.table_rows(False),
                        "aggregates": self.aggregates(), "family_aggregates": self.family_aggregates(),
                        "onnx_fusion": self.fusion,
                        "smoke_table": self.table_rows(True)},
            "gemm": self.gemm_summary(False),
            "gemm_smoke": self.gemm_summary(True),
            "memory": self.memory,
            "fma": self.fma,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_finite(self.to_json()), indent=1, default=_json_default, allow_nan=False) + "\n")
        os.replace(tmp, path)

    @property
    def empty(self) -> bool:
        return not (self.encoder or self.gemm or self.memory)

    @property
    def smoke_only(self) -> bool:
        return all(t.smoke for t in self.encoder + self.gemm) and all(m.get("smoke") for m in self.memory)


def _geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _fmt_share(x) -> str:
    return "-" if x is None else f"{x:.0%}" + (" ~" if x > BUSY_SHARE else "")


def _fmt_g(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _fmt_err(x):
    return "-" if x is None else f"{x:.1e}"


def _align(rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]


def _finite(x):
    """NaN/inf (e.g. a diff of a broken output) as strings: strict JSON has no such numbers."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _json_default(x):
    if hasattr(x, "item"):
        return _finite(x.item())
    return str(x)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("numpy", "torch", "transformers", "onnx", "onnxruntime", "pytest-benchmark"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _git_head() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
