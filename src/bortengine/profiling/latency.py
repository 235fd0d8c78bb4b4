"""The latency model: composes one workload's measurements into the forward latency of any architecture.

A forward is one parallel region; every step of it (ops.forward_steps) ends with barriers. So

    latency = fixed + Σ forward steps + D × Σ layer steps + [Σ pooler steps] + barriers × sync

that is fixed + emb(H) + D × (qkv + attention + attention_out + 2 ln + ffn_in + ffn_out) + [pooler], with 1 barrier
for the embeddings, 7 per layer in float32 and bf16 and 10 in int8 (each of its three int8 linear layers first
quantizes its input rows in a parallel step of its own; FFN out runs on the bf16 kernels), and 2 for the pooler (the
gather of the [CLS] rows, then the GEMM). Each
op term is its single-call time minus the cost of an empty call of that op (Python, binding, thread team start,
which a forward pays once); `sync` (per barrier) and `fixed` (per forward) come from the calibration. Shapes the
profile lacks are interpolated, see LatencyModel.
"""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Optional, Sequence

from bortengine.architecture import Architecture
from bortengine.profiling.calibration import calibrate, op_net_ms
from bortengine.profiling.errors import ProfileError, ProfileMismatchWarning
from bortengine.profiling.measurements import WorkloadProfile
from bortengine.profiling.ops import (CALIBRATION_VOCAB, SCOPES, OpSpec, barriers, forward_costs, gemm_kernels,
                                      position_bias_ops, scope_repeats, weight_footprint)
from bortengine.profiling.target import Target
from bortengine.search_space import architecture_dims

EXTRAPOLATION_NOTE = ("the profile has no measurements near some op shapes of this architecture; their costs were "
                      "extrapolated. Profile a space that contains it (bortengine profile --space ...) for exact "
                      "figures")


@dataclass
class Prediction:
    """A predicted forward latency and where it comes from (ms). parts: per forward, keyed by the engine's trace
    buckets (as Encoder.last_trace) plus "fixed" and "sync"; layer terms already × D."""

    total_ms: float
    parts: dict[str, float]
    interpolated: list[str] = field(default_factory=list)   # op shapes the profile lacks, inside its range
    extrapolated: list[str] = field(default_factory=list)   # op shapes outside the measured range
    weights_mib: float = 0.0   # packed GEMM weights a forward reads
    cold_share: float = 1.0    # of their reads, the share that misses the caches (LatencyModel.cold_share)
    layer_ms: float = 0.0      # one encoder layer: its steps and their barriers (the "layer" scope, once)

    def __float__(self) -> float:
        return self.total_ms


class LatencyModel:
    """Composes one workload's measurements into forward latencies of any architecture.

    Each op term is a measured time minus the empty-call cost of its kind (the net work). Shapes not measured:

    - GEMM (same M and epilogue): the time per multiply-add, c = t / (M K N), is nearly flat across shapes, so
      c is interpolated in (log K, log N) and multiplied back by M K N. Along one axis when the other size was
      measured (piecewise linear in log size); bilinear inside a rectangle of four measured shapes; otherwise
      inverse-distance weighting (power 2) of the four nearest in log space. Beyond the measured range c is
      held at the edge value (flagged as extrapolated). GEMMs of another epilogue fill in when none of the
      same epilogue was measured at that M.
    - Attention: the B·A (sequence, head) tasks share the threads dynamically, so t = ceil(B A / threads) × g,
      with the time per task g depending on the head size: g is piecewise linear in Dh (linear extrapolation
      from the two nearest beyond the range).
    - LayerNorm and embeddings: piecewise linear in H (linear extrapolation beyond the range).

    Where a GEMM finds its weights: a model called again and again reads all its weights between two reads of any
    one layer's, so the caches keep them when the model's weights fit and lose them when they do not. Each GEMM is
    measured both ways, cold (weight copies cycled through twice the L3) and warm (one copy); an architecture's GEMM
    costs warm + s × (cold − warm), where s is the share of its weight reads that miss, read off the residency probe
    at the bytes of weights the architecture's forward reads (cold_share). Profiles without warm GEMMs or the probe
    (written before it) take every GEMM cold.
    """

    def __init__(self, wp: WorkloadProfile, target: Optional[Target] = None, remedy: Optional[str] = None):
        # remedy: the command that measures this workload into the profile the model comes from (Profile.command_for)
        self.remedy = remedy or wp.workload.command()
        if not wp.complete or wp.calibration is None:
            raise ProfileError(f"the profile of workload {wp.workload} is incomplete; finish it with: {self.remedy}")
        self.wp, self.w, self.target = wp, wp.workload, target
        # from the measurements, not the stored constants: profiles written before the fit was held >= 0 can
        # hold a negative fixed cost
        cal = calibrate(wp)
        self.call = {k: float(v) for k, v in cal["call_ms"].items()}
        self.sync = float(cal["sync_ms"])
        self.fixed = float(cal["fixed_ms"])
        self.barriers = {scope: barriers(scope, self.w.dtype) for scope in SCOPES}
        self.exact: dict[str, float] = {}
        # (cold, M, epilogue, kernel) -> [(lgK, lgN, c)]
        self.gemms: dict[tuple[bool, int, str, str], list[tuple[float, float, float]]] = {}
        self.attention: list[tuple[int, int, float]] = []  # (A, Dh, g)
        self.layernorm: list[tuple[int, float]] = []
        self.embeddings: list[tuple[int, float]] = []
        # attention timed after its QKV GEMM, as the forward runs it (a profile from before has it alone only)
        self.attention_after_qkv = any(m.spec.kind == "attention" and m.spec.after_qkv for m in wp.ops.values())
        for key, m in wp.ops.items():
            s = m.spec
            if s.kind in ("call", "forward"):
                continue
            if s.kind == "gemm" and not s.cold and replace(s, cold=True).key not in wp.ops:
                continue  # the calibration encoders' GEMMs: warm only, and outside every space
            if s.kind == "attention" and s.after_qkv != self.attention_after_qkv:
                continue  # alone, in a profile resumed after the change: not what the forward runs
            t = op_net_ms(self._measured_ms, s, self.call, self.w)
            self.exact[key] = t
            if s.position_bias:
                continue  # (priced as a factor on the unbiased attention: position_bias_factor)
            if s.kind == "gemm":
                self.gemms.setdefault((s.cold, s.M, s.epilogue, s.kernel), []).append(
                    (math.log2(s.K), math.log2(s.N), t / (s.M * s.K * s.N)))
            elif s.kind == "attention":
                self.attention.append((s.heads, s.head_dim, t / self._rounds(s.heads)))
            elif s.kind == "layernorm":
                self.layernorm.append((s.hidden, t))
            elif s.kind == "embeddings":
                self.embeddings.append((s.hidden, t))
        self.warm_rows = {m for cold, m, _, _ in self.gemms if not cold}  # the M of GEMMs measured warm too
        # kernels a forward of this workload runs that the profile has no GEMM of: an int8 profile measured before
        # int8 encoders ran FFN out on the bf16 kernels. Those GEMMs are then predicted as the workload's own
        # (too fast), said once here.
        self.missing_kernels = sorted(gemm_kernels(self.w) - {kernel for *_, kernel in self.gemms})
        if self.missing_kernels:
            warnings.warn(f"the profile of workload {self.w} has no GEMM on the {', '.join(self.missing_kernels)} "
                          f"kernels that its forwards now run (it was measured by an earlier version): those GEMMs are "
                          f"predicted at the speed of the others, too fast; measure them with: {self.remedy}",
                          ProfileMismatchWarning, stacklevel=2)
        self.residency = residency_curve(self)

    def position_bias_factor(self) -> float:
        """How much longer an attention with MPNet's relative position bias takes than without it: the ratio of the
        pair position_bias_ops times (ProfileError for a profile measured before it had them)."""
        plain = [s for s, _ in position_bias_ops(self.w) if s.kind == "attention"][0]
        biased, plain = replace(plain, position_bias=True).key, plain.key
        if biased not in self.exact or plain not in self.exact or self.exact[plain] <= 0:
            raise ProfileError(f"the profile of workload {self.w} has no attention with a relative position bias "
                               f"(MPNet's: profiles measured before it was timed lack it); measure it with: "
                               f"{self.remedy}")
        return max(1.0, self.exact[biased] / self.exact[plain])

    def _measured_ms(self, spec: OpSpec) -> float:
        m = self.wp.ops.get(spec.key)
        if m is None:  # (attention timed after its QKV GEMM needs that GEMM's own time)
            raise ProfileError(f"the profile of workload {self.w} has no {spec.key!r}; measure it with: "
                               f"{self.remedy}")
        return m.ms

    def cold_share(self, weight_bytes: float) -> float:
        """Of the weight reads of a forward that reads weight_bytes of weights, the share that misses the caches,
        from the residency probe (residency_curve; the edge value beyond it). 1 for a profile without the probe:
        every GEMM cold."""
        if not self.residency:
            return 1.0
        return clamped_line(self.residency, math.log2(max(weight_bytes, 1.0)))[0]

    def _rounds(self, heads: int) -> int:
        return math.ceil(self.w.batch_size * heads / self.w.num_threads)

    # -- one op -----------------------------------------------------------------------------------------------
    def op_ms(self, spec: OpSpec, notes: Optional[Prediction] = None) -> float:
        """Net time of one op (ms), measured or interpolated."""
        if spec.kernel in self.missing_kernels:  # a profile from before the op ran on these kernels (warned)
            spec = replace(spec, kernel="")
        if spec.after_qkv and not self.attention_after_qkv:
            spec = replace(spec, after_qkv=False)
        if spec.key in self.exact:
            return self.exact[spec.key]
        extrapolated = False
        if spec.kind == "gemm":
            t, extrapolated = self._gemm(spec)
        elif spec.kind == "attention":
            pts = merge([(dh, g) for _, dh, g in self.attention])
            if not pts:
                raise ProfileError(f"the profile has no attention measurement for {self.w}")
            g, extrapolated = piecewise(pts, spec.head_dim)
            t = self._rounds(spec.heads) * g
        elif spec.kind in ("layernorm", "embeddings"):
            pts = merge(self.layernorm if spec.kind == "layernorm" else self.embeddings)
            if not pts:
                raise ProfileError(f"the profile has no {spec.kind} measurement for {self.w}")
            t, extrapolated = piecewise(pts, spec.hidden)
        else:
            raise ProfileError(f"cannot predict op kind {spec.kind!r}")
        if notes is not None:
            (notes.extrapolated if extrapolated else notes.interpolated).append(spec.key)
        return max(0.0, t)

    def _gemm(self, spec: OpSpec) -> tuple[float, bool]:
        pts = self.gemms.get((spec.cold, spec.M, spec.epilogue, spec.kernel))
        if not pts:  # another epilogue at the same M
            pts = [p for (cold, m, _, k), ps in self.gemms.items() if (cold, m, k) == (spec.cold, spec.M, spec.kernel)
                   for p in ps]
        if not pts:
            raise ProfileError(f"the profile has no GEMM with M={spec.M} rows for {self.w}; measure it with: "
                               f"{self.remedy}")
        c, extrapolated = interpolate_2d(pts, math.log2(spec.K), math.log2(spec.N))
        return c * spec.M * spec.K * spec.N, extrapolated

    def _step_ms(self, spec: OpSpec, notes: Prediction) -> float:
        """op_ms, except that embeddings at a measured H but another vocabulary size take that measurement: the
        table size hardly matters (M random rows are read)."""
        if spec.kind == "embeddings" and spec.key not in self.exact:
            same_h = [m for m in self.wp.ops.values() if m.spec.kind == "embeddings" and m.spec.hidden == spec.hidden]
            if same_h:
                return self.exact[same_h[0].spec.key]
        return self.op_ms(spec, notes)

    # -- a forward --------------------------------------------------------------------------------------------
    def predict(self, arch: Any, *, cold_share: Optional[float] = None, position_bias: bool = False) -> Prediction:
        """The forward latency of arch; cold_share: of its weight reads the share that misses the caches (default:
        read off the residency probe at the bytes of weights arch has); position_bias: its attention adds MPNet's
        relative position bias (position_bias_factor)."""
        bias_factor = self.position_bias_factor() if position_bias else 1.0
        D, A, H, I = architecture_dims(arch)
        repeats = scope_repeats(D, getattr(arch, "head", "pooler"))
        sizes, vocab = {"A": A, "H": H, "I": I}, getattr(arch, "vocab_size", 30522)
        footprint = weight_footprint(sizes, self.w, vocab, repeats)
        share = self.cold_share(footprint) if cold_share is None else cold_share
        p = Prediction(0.0, {}, weights_mib=footprint / 2**20, cold_share=share)
        known: dict[OpSpec, float] = {}  # each distinct op once (FFN out with I = H is the attention-output GEMM)

        def net(spec: OpSpec) -> float:
            if spec not in known:
                t = self._step_ms(spec, p)
                if spec.kind == "gemm" and p.cold_share < 1.0 and spec.M in self.warm_rows:
                    # weights partly in cache: between the warm and the cold time, by the share of missed reads
                    warm = self._step_ms(replace(spec, cold=False), p)
                    t = warm + p.cold_share * (t - warm)
                elif spec.kind == "attention":
                    t *= bias_factor
                known[spec] = t
            return known[spec]

        costs = forward_costs(net, sizes, self.w, vocab, repeats)
        p.parts["fixed"] = self.fixed
        for scope, buckets in costs.items():
            for trace, t in buckets.items():
                part = repeats[scope] * t
                p.parts[trace] = p.parts[trace] + part if trace in p.parts else part
        p.parts["sync"] = sum(n * self.barriers[scope] for scope, n in repeats.items()) * self.sync
        p.total_ms = sum(p.parts.values())
        p.layer_ms = sum(costs.get("layer", {}).values()) + self.barriers["layer"] * self.sync
        return p


# ============================================================================================== cache residency
def residency_curve(model: "LatencyModel") -> list[tuple[float, float]]:
    """The share of weight reads that miss the caches against log2 of the weight bytes a forward reads, from the
    residency probe's encoders (ops.residency_ops): where each one's measured forward lies between the model's
    prediction of it with every GEMM warm (0) and every GEMM cold (1), held to [0, 1] and made non-decreasing (more
    weights never fit better; the pool-adjacent-violators fit, so timing noise averages out instead of ratcheting
    up). Empty without the probe."""
    points = []
    for m in model.wp.ops.values():
        s = m.spec
        if s.kind == "forward" and s.intermediate:
            arch = Architecture(s.layers, s.heads, s.hidden, s.intermediate, CALIBRATION_VOCAB, head=s.head)
            warm, cold = model.predict(arch, cold_share=0.0), model.predict(arch, cold_share=1.0)
            if cold.total_ms - warm.total_ms < 0.02 * cold.total_ms:
                continue  # where the weights are changes nothing measurable here
            share = (m.ms - warm.total_ms) / (cold.total_ms - warm.total_ms)
            points.append((math.log2(warm.weights_mib * 2**20), min(1.0, max(0.0, share))))
    points = merge(points)
    return list(zip((x for x, _ in points), nondecreasing([y for _, y in points])))


def nondecreasing(ys: Sequence[float]) -> list[float]:
    """The least-squares non-decreasing fit of ys (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for y in ys:
        blocks.append([y, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
    return [total / n for total, n in blocks for _ in range(int(n))]


# ============================================================================================== interpolation
def merge(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted (x, y) with the median y for repeated x."""
    by: dict[float, list[float]] = {}
    for x, y in points:
        by.setdefault(x, []).append(y)
    return sorted((x, statistics.median(ys)) for x, ys in by.items())


def piecewise(pts: Sequence[tuple[float, float]], x: float) -> tuple[float, bool]:
    """Piecewise-linear y(x) through sorted points; beyond them, linear through the two nearest (proportional
    to x with one point), never below a quarter of the nearest point. Returns (y, extrapolated)."""
    if len(pts) == 1:
        x0, y0 = pts[0]
        return y0 * x / x0, x != x0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0), False
    (x0, y0), (x1, y1) = (pts[0], pts[1]) if x < pts[0][0] else (pts[-2], pts[-1])
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    nearest = pts[0][1] if x < pts[0][0] else pts[-1][1]
    return max(y, 0.25 * nearest), True


def interpolate_2d(pts: Sequence[tuple[float, float, float]], x: float, y: float) -> tuple[float, bool]:
    """c at (x, y) = (log K, log N) from scattered measured points; see LatencyModel. Returns (c, extrapolated)."""
    eps = 1e-9
    for px, py, c in pts:
        if abs(px - x) < eps and abs(py - y) < eps:
            return c, False
    same_x = merge((py, c) for px, py, c in pts if abs(px - x) < eps)
    if same_x:
        return clamped_line(same_x, y)
    same_y = merge((px, c) for px, py, c in pts if abs(py - y) < eps)
    if same_y:
        return clamped_line(same_y, x)
    xs = sorted({px for px, _, _ in pts})
    ys = sorted({py for _, py, _ in pts})
    inside = bilinear(pts, xs, ys, x, y)
    if inside is not None:
        return inside, False
    # inverse-distance weighting of the four nearest; outside the range, clamp the query to its edge first
    qx, qy = min(max(x, xs[0]), xs[-1]), min(max(y, ys[0]), ys[-1])
    near = sorted(pts, key=lambda p: (p[0] - qx) ** 2 + (p[1] - qy) ** 2)[:4]
    weights = [1.0 / max((px - qx) ** 2 + (py - qy) ** 2, eps) for px, py, _ in near]
    within = xs[0] <= x <= xs[-1] and ys[0] <= y <= ys[-1]
    return sum(wt * c for wt, (_, _, c) in zip(weights, near)) / sum(weights), not within


def bilinear(pts: Sequence[tuple[float, float, float]], xs: Sequence[float], ys: Sequence[float], x: float,
             y: float) -> Optional[float]:
    """c at (x, y) from the tightest bracketing rectangle whose four corners were measured, else None."""
    grid = {(round(px, 9), round(py, 9)): c for px, py, c in pts}
    lo_x = [v for v in xs if v < x]
    hi_x = [v for v in xs if v > x]
    lo_y = [v for v in ys if v < y]
    hi_y = [v for v in ys if v > y]
    for x0 in reversed(lo_x):
        for x1 in hi_x:
            for y0 in reversed(lo_y):
                for y1 in hi_y:
                    corners = [grid.get((round(a, 9), round(b, 9))) for a in (x0, x1) for b in (y0, y1)]
                    if all(c is not None for c in corners):
                        c00, c01, c10, c11 = corners
                        fx, fy = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
                        return (1 - fx) * ((1 - fy) * c00 + fy * c01) + fx * ((1 - fy) * c10 + fy * c11)
    return None


def clamped_line(pts: Sequence[tuple[float, float]], x: float) -> tuple[float, bool]:
    """Piecewise linear inside the points, the edge value outside."""
    if x <= pts[0][0]:
        return pts[0][1], x < pts[0][0]
    if x >= pts[-1][0]:
        return pts[-1][1], x > pts[-1][0]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0), False
    raise AssertionError("unreachable")
