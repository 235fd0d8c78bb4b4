"""The latency model: composes one workload's measurements into the forward latency of any architecture.

A forward is one parallel region; every step of it (ops.forward_steps) ends with barriers. So

    latency = fixed + Σ forward steps + D × Σ layer steps + [Σ pooler steps] + barriers × sync

that is fixed + emb(H) + D × (qkv + attention + attention_out + 2 ln + ffn_in + ffn_out) + [pooler], with 1 barrier
for the embeddings, 7 per layer in float32 and bf16 and 11 in int8 (each int8 linear layer first quantizes its
input rows in a parallel step of its own), and 2 for the pooler (the gather of the [CLS] rows, then the GEMM). Each
op term is its single-call time minus the cost of an empty call of that op (Python, binding, thread team start,
which a forward pays once); `sync` (per barrier) and `fixed` (per forward) come from the calibration. Shapes the
profile lacks are interpolated, see LatencyModel.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from bortengine.profiling.calibration import calibrate
from bortengine.profiling.errors import ProfileError
from bortengine.profiling.measurements import WorkloadProfile
from bortengine.profiling.ops import SCOPES, OpSpec, barriers, forward_costs, scope_repeats
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
    """

    def __init__(self, wp: WorkloadProfile, target: Optional[Target] = None):
        if not wp.complete or wp.calibration is None:
            raise ProfileError(f"the profile of workload {wp.workload} is incomplete; finish it with: "
                               f"{wp.workload.command()}")
        self.wp, self.w, self.target = wp, wp.workload, target
        # from the measurements, not the stored constants: profiles written before the fit was held >= 0 can
        # hold a negative fixed cost
        cal = calibrate(wp)
        self.call = {k: float(v) for k, v in cal["call_ms"].items()}
        self.sync = float(cal["sync_ms"])
        self.fixed = float(cal["fixed_ms"])
        self.barriers = {scope: barriers(scope, self.w.dtype) for scope in SCOPES}
        self.exact: dict[str, float] = {}
        self.gemms: dict[tuple[int, str], list[tuple[float, float, float]]] = {}  # (M, ep) -> [(lgK, lgN, c)]
        self.attention: list[tuple[int, int, float]] = []  # (A, Dh, g)
        self.layernorm: list[tuple[int, float]] = []
        self.embeddings: list[tuple[int, float]] = []
        for key, m in wp.ops.items():
            s = m.spec
            if s.kind in ("call", "forward") or (s.kind == "gemm" and not s.cold):
                continue
            t = max(0.0, m.ms - self.call.get(s.kind, 0.0))
            self.exact[key] = t
            if s.kind == "gemm":
                self.gemms.setdefault((s.M, s.epilogue), []).append(
                    (math.log2(s.K), math.log2(s.N), t / (s.M * s.K * s.N)))
            elif s.kind == "attention":
                self.attention.append((s.heads, s.head_dim, t / self._rounds(s.heads)))
            elif s.kind == "layernorm":
                self.layernorm.append((s.hidden, t))
            elif s.kind == "embeddings":
                self.embeddings.append((s.hidden, t))

    def _rounds(self, heads: int) -> int:
        return math.ceil(self.w.batch_size * heads / self.w.num_threads)

    # -- one op -----------------------------------------------------------------------------------------------
    def op_ms(self, spec: OpSpec, notes: Optional[Prediction] = None) -> float:
        """Net time of one op (ms), measured or interpolated."""
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
        pts = self.gemms.get((spec.M, spec.epilogue))
        if not pts:  # another epilogue at the same M
            pts = [p for (m, _), ps in self.gemms.items() if m == spec.M for p in ps]
        if not pts:
            raise ProfileError(f"the profile has no GEMM with M={spec.M} rows for {self.w}; measure it with: "
                               f"{self.w.command()}")
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
    def predict(self, arch: Any) -> Prediction:
        D, A, H, I = architecture_dims(arch)
        repeats = scope_repeats(D, getattr(arch, "head", "pooler"))
        p = Prediction(0.0, {})
        known: dict[OpSpec, float] = {}  # each distinct op once (FFN out with I = H is the attention-output GEMM)

        def net(spec: OpSpec) -> float:
            if spec not in known:
                known[spec] = self._step_ms(spec, p)
            return known[spec]

        costs = forward_costs(net, {"A": A, "H": H, "I": I}, self.w, getattr(arch, "vocab_size", 30522), repeats)
        p.parts["fixed"] = self.fixed
        for scope, buckets in costs.items():
            for trace, t in buckets.items():
                part = repeats[scope] * t
                p.parts[trace] = p.parts[trace] + part if trace in p.parts else part
        p.parts["sync"] = sum(n * self.barriers[scope] for scope, n in repeats.items()) * self.sync
        p.total_ms = sum(p.parts.values())
        return p


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
