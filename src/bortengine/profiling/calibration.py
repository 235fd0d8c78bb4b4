"""The latency model's constants, from a workload's calibration measurements (ops.calibration_ops).

Timing single ops includes costs a forward does not pay per op (the Python call, argument conversion, starting
the thread team) and misses one it does (the barrier at the end of each step inside the forward's single
parallel region). So: the empty call of each op kind is subtracted from every op of that kind, and tiny encoders
of D = 1, 2, 4, 8 layers (outside every search space) are timed with their own ops: a straight-line fit
forward(D) = a + b·D gives the cost per barrier, sync = (b − their layer's net ops) / barriers per layer, and the
fixed cost per forward, fixed = a − their embeddings and pooler − those steps' barriers × sync.
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Optional

from bortengine.profiling.errors import ProfileError
from bortengine.profiling.measurements import WorkloadProfile
from bortengine.profiling.ops import (CALIBRATION_HIDDEN, CALIBRATION_LAYERS, CALIBRATION_SIZES, CALIBRATION_VOCAB,
                                      CALL_KINDS, OpSpec, barriers, forward_costs, scope_repeats)


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
        return max(0.0, ms(spec) - call[spec.kind])

    # the tiny encoders have a pooler; their weights stay in cache, so their GEMMs were timed warm
    costs = forward_costs(net, CALIBRATION_SIZES, w, CALIBRATION_VOCAB, scope_repeats(1, "pooler"), cold=False)
    layer = sum(costs["layer"].values())
    xs = list(CALIBRATION_LAYERS)
    ys = [ms(OpSpec("forward", layers=d, hidden=CALIBRATION_HIDDEN)) for d in xs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    sync = (slope - layer) / barriers("layer", w.dtype)
    fixed = (intercept - sum(costs["forward"].values()) - sum(costs["pooler"].values())
             - (barriers("forward", w.dtype) + barriers("pooler", w.dtype)) * sync)
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys)]
    return {"call_ms": call, "sync_ms": sync, "fixed_ms": fixed,
            "tiny_forward_ms": {str(x): y for x, y in zip(xs, ys)},
            "tiny_fit": {"intercept_ms": intercept, "slope_ms": slope, "layer_ops_ms": layer,
                         "max_residual_ms": max(abs(r) for r in residuals)}}


def calibration_note(cal: Mapping[str, Any]) -> Optional[str]:
    """A warning text when the calibration contradicts itself: both constants are costs, so clearly negative values
    (beyond fit noise) mean the tiny encoders or the empty calls were disturbed."""
    slowest = max(cal.get("call_ms", {}).values(), default=0.0)
    if slowest > 0.2:
        return (f"an empty op call took {slowest:.2f} ms (a few µs on a quiet machine): the thread team was waiting "
                f"for CPU time; these measurements are unreliable: re-profile when the machine is quiet")
    if cal.get("sync_ms", 0.0) < -0.005 or cal.get("fixed_ms", 0.0) < -0.05:
        return (f"contradictory calibration (sync {1e3 * cal.get('sync_ms', 0.0):.1f} µs/op, fixed "
                f"{1e3 * cal.get('fixed_ms', 0.0):.1f} µs/forward; both should be >= 0): probably measured on a "
                f"loaded machine; re-profile when it is quiet")
    return None
