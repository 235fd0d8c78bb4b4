"""The latency model's constants, from a workload's calibration measurements (ops.calibration_ops).

Timing single ops includes costs a forward does not pay per op (the Python call, argument conversion, starting
the thread team) and misses one it does (the barrier at the end of each step inside the forward's single
parallel region). So: the empty call of each op kind is subtracted from every op of that kind, and tiny encoders
of D = 1, 2, 4, 8 layers (outside every search space) are timed with their own ops: a straight-line fit
forward(D) = a + b·D gives the cost per barrier, sync = (b − their layer's net ops) / barriers per layer, and the
fixed cost per forward, fixed = a − their embeddings and pooler − those steps' barriers × sync.

Both constants are costs, so the fit is constrained to sync, fixed >= 0: on a loaded machine the unconstrained fit
can come out negative (−96 µs per forward, measured on a busy 2-core CI runner), and the latency model then
predicted negative latencies for small encoders. The unconstrained values are kept in `tiny_fit` for the warning.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any, Callable, Mapping, Optional

from bortengine.profiling.errors import ProfileError
from bortengine.profiling.measurements import WorkloadProfile
from bortengine.profiling.ops import (CALIBRATION_HIDDEN, CALIBRATION_LAYERS, CALIBRATION_SIZES, CALIBRATION_VOCAB,
                                      CALL_KINDS, OpSpec, barriers, forward_costs, qkv_gemm_before, scope_repeats)
from bortengine.profiling.workload import Workload


def calibrate(wp: WorkloadProfile) -> dict[str, Any]:
    """The model's constants: empty-call cost per op kind, and per-barrier sync and per-forward fixed cost from the
    tiny encoders (forward(D) = a + b·D by least squares; b = their layer's ops + its barriers × sync)."""
    w = wp.workload

    def ms(spec: OpSpec) -> float:
        m = wp.ops.get(spec.key)
        if m is None:
            raise ProfileError(f"calibration op {spec.key!r} was not measured")
        return m.ms

    call = {k: ms(OpSpec("call", of=k)) for k in CALL_KINDS}

    def net(spec: OpSpec) -> float:
        return op_net_ms(ms, as_measured(spec, wp.ops), call, w)

    # the tiny encoders have a pooler; their weights stay in cache, so their GEMMs were timed warm
    costs = forward_costs(net, CALIBRATION_SIZES, w, CALIBRATION_VOCAB, scope_repeats(1, "pooler"), cold=False)
    layer = sum(costs["layer"].values())
    xs = list(CALIBRATION_LAYERS)
    ys = [ms(OpSpec("forward", layers=d, hidden=CALIBRATION_HIDDEN)) for d in xs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    per_layer = barriers("layer", w.dtype)
    outside = barriers("forward", w.dtype) + barriers("pooler", w.dtype)
    embeddings_and_pooler = sum(costs["forward"].values()) + sum(costs["pooler"].values())
    free_sync = (slope - layer) / per_layer
    free_fixed = intercept - embeddings_and_pooler - outside * free_sync
    # what the two constants explain: r(D) = forward(D) − the ops = fixed + sync · (barriers of a D-layer forward)
    rs = [y - embeddings_and_pooler - d * layer for d, y in zip(xs, ys)]
    bs = [outside + d * per_layer for d in xs]
    sync, fixed = _nonnegative_fit(rs, bs, free_sync, free_fixed)
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys)]
    return {"call_ms": call, "sync_ms": sync, "fixed_ms": fixed,
            "tiny_forward_ms": {str(x): y for x, y in zip(xs, ys)},
            "tiny_fit": {"intercept_ms": intercept, "slope_ms": slope, "layer_ops_ms": layer,
                         "max_residual_ms": max(abs(r) for r in residuals),
                         "unconstrained": {"sync_ms": free_sync, "fixed_ms": free_fixed}}}


def as_measured(spec: OpSpec, ops: Mapping[str, Any]) -> OpSpec:
    """The spec as a profile from before a change in how the forward runs it measured it, when it has only that:
    a GEMM without the kernels it now runs on (int8 FFN out: bf16), attention timed alone rather than after its QKV
    GEMM. Else spec."""
    if spec.key in ops:
        return spec
    for earlier in (replace(spec, kernel=""), replace(spec, after_qkv=False)):
        if earlier != spec and earlier.key in ops:
            return earlier
    return spec


def op_net_ms(ms: Callable[[OpSpec], float], spec: OpSpec, call: Mapping[str, float], w: Workload) -> float:
    """An op's time net of what a forward does not pay with it: the empty call of its kind and, for attention timed
    after its QKV GEMM (OpSpec.after_qkv), that GEMM's own time (a call too, which a forward does not pay either).
    ms: a spec's measured time."""
    t = ms(spec) - call.get(spec.kind, 0.0)
    if spec.kind == "attention" and spec.after_qkv:
        t -= ms(qkv_gemm_before(spec, w))
    return max(0.0, t)


def _nonnegative_fit(rs: list[float], bs: list[float], free_sync: float, free_fixed: float) -> tuple[float, float]:
    """Least squares of r ≈ fixed + sync · b with both >= 0 (NNLS of two unknowns): the free optimum when it is
    feasible, else the best of the optima with one or both held at zero (the constrained optimum lies on one)."""
    if free_sync >= 0 and free_fixed >= 0:
        return free_sync, free_fixed

    def sse(sync: float, fixed: float) -> float:
        return sum((r - fixed - sync * b) ** 2 for r, b in zip(rs, bs))

    only_sync = max(0.0, sum(r * b for r, b in zip(rs, bs)) / sum(b * b for b in bs))
    only_fixed = max(0.0, statistics.fmean(rs))
    return min([(only_sync, 0.0), (0.0, only_fixed), (0.0, 0.0)], key=lambda c: sse(*c))


def calibration_note(cal: Mapping[str, Any]) -> Optional[str]:
    """A warning text when the calibration contradicts itself: both constants are costs, so clearly negative values
    (beyond fit noise) mean the tiny encoders or the empty calls were disturbed."""
    slowest = max(cal.get("call_ms", {}).values(), default=0.0)
    if slowest > 0.2:
        return (f"an empty op call took {slowest:.2f} ms (a few µs on a quiet machine): the thread team was waiting "
                f"for CPU time; these measurements are unreliable: re-profile when the machine is quiet")
    free = cal.get("tiny_fit", {}).get("unconstrained", {})  # a profile from before the fit was held >= 0 has none
    sync = min(cal.get("sync_ms", 0.0), free.get("sync_ms", 0.0))
    fixed = min(cal.get("fixed_ms", 0.0), free.get("fixed_ms", 0.0))
    if sync < -0.005 or fixed < -0.05:
        return (f"contradictory calibration (sync {1e3 * sync:.1f} µs/op, fixed {1e3 * fixed:.1f} µs/forward; both "
                f"should be >= 0, so both were fitted again held >= 0): probably measured on a loaded machine; "
                f"re-profile when it is quiet")
    return None
