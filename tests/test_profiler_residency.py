"""Where a forward finds its weights: the warm GEMM twins, the residency probe and the cold share of a prediction.

Synthetic profiles (nothing timed here), plus one run of the probe's encoder through the native runner.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from bortengine import profiling as P
from bortengine.architecture import Architecture
from bortengine.engine import core
from bortengine.profiling import ops as ops_module
from bortengine.profiling.latency import LatencyModel, nondecreasing
from bortengine.profiling.runners import ValuePool, make_runner, weight_copies
from bortengine.search_space import SPACES, SearchSpace

from test_profiler_model import CALL, TARGET, _ms

SPACE = SearchSpace("residency", layers=[2, 4, 8], heads=[4], hidden=[256, 512], intermediate=[256, 1024])
W = P.Workload(batch_size=1, seq_len=32, num_threads=2, dtype="bf16")
ROTATION = 512 << 20
WARM = 0.6  # a warm GEMM's net time, as a share of its cold one


def _block(t: float) -> list[P.BlockStats]:
    return [P.BlockStats(t, t, t, t, t, 5, 0)]


def true_share(weight_bytes: float) -> float:
    """The caches of the synthetic CPU: all weights hit below 8 MiB, all miss above 64 MiB, log-linear between."""
    return min(1.0, max(0.0, math.log2(weight_bytes / (8 << 20)) / 3))


def profile(probe: bool = True, share=true_share) -> P.Profile:
    wp = P.WorkloadProfile(W, mode="full", blocks=1, spaces=[SPACE.name])
    for spec, roles in P.calibration_ops(W) + P.required_ops(SPACE, W):
        t = _ms(spec, W)
        if spec.kind == "gemm" and not spec.cold:
            t = CALL + (t - CALL) * WARM
        wp.ops[spec.key] = P.Measurement(spec, _block(t), roles=roles)
    wp.calibration = P.calibrate(wp)
    if probe:  # each probe encoder measured where the synthetic caches put it
        model = LatencyModel(wp, TARGET)
        for spec, roles in P.residency_ops(SPACE, W, ROTATION):
            arch = Architecture(spec.layers, spec.heads, spec.hidden, spec.intermediate, ops_module.CALIBRATION_VOCAB)
            p = model.predict(arch, cold_share=share(model.predict(arch).weights_mib * 2**20))
            wp.ops[spec.key] = P.Measurement(spec, _block(p.total_ms), roles=roles)
    return P.Profile(TARGET, {W.key: wp})


def test_every_gemm_is_measured_cold_and_warm():
    ops = [s for s, _ in P.required_ops(SPACE, W) if s.kind == "gemm"]
    cold = {replace(s, cold=True) for s in ops if s.cold}
    assert cold and {s for s in ops if not s.cold} == {replace(s, cold=False) for s in cold}
    assert all(weight_copies(s, W, ROTATION) == 1 for s in ops if not s.cold)
    assert all(weight_copies(s, W, ROTATION) > 1 for s in ops if s.cold)


def test_the_probe_spans_the_footprints_below_the_rotation_with_the_lightest_layer():
    probe = [s for s, roles in P.residency_ops(SPACE, W, ROTATION)]
    assert probe and all(roles == ("residency",) for _, roles in P.residency_ops(SPACE, W, ROTATION))
    assert {(s.heads, s.hidden, s.intermediate, s.head) for s in probe} == {(4, 256, 256, "pooler")}
    per_layer = ops_module.layer_weight_bytes(256, 256, W)
    assert per_layer == (4 * 256 * 256 + 2 * 256 * 256) * 2  # bf16 weights of QKV, out, FFN in and out
    layers = [s.layers for s in probe]
    assert layers == sorted(set(layers))
    heaviest = 8 * ops_module.layer_weight_bytes(512, 1024, W)
    assert max(layers) * per_layer <= min(ROTATION, 2 * heaviest) * 1.2
    assert min(layers) * per_layer == pytest.approx(4 << 20, rel=0.2)
    # no probe without a rotation (cold = warm), and none reaching past it
    assert P.residency_ops(SPACE, W, 0) == []
    assert all(s.layers * per_layer < (16 << 20) * 1.2 for s, _ in P.residency_ops(SPACE, W, 16 << 20))
    # the keys and the file round trip keep every field
    spec = probe[0]
    assert spec.key == f"forward D={spec.layers} A=4 H=256 I=256 pooler"
    assert P.OpSpec.from_dict(spec.to_dict()) == spec
    calibration = P.OpSpec("forward", layers=2, hidden=64)
    assert calibration.key == "forward D=2 H=64" and P.OpSpec.from_dict(calibration.to_dict()) == calibration


def test_the_curve_recovers_the_caches_and_predictions_mix_warm_and_cold():
    model = profile().model(W)
    assert model.residency
    for x, share in model.residency:
        assert share == pytest.approx(true_share(2 ** x), abs=1e-9)
    cold_only = profile(probe=False).model(W)
    assert cold_only.residency == [] and cold_only.cold_share(1 << 20) == 1.0
    for arch in SPACE:
        p = model.predict(arch)
        pooler = arch.hidden * arch.hidden * 4  # the pooler's GEMM stays float32
        assert p.weights_mib * 2**20 == arch.layers * ops_module.layer_weight_bytes(arch.hidden, arch.intermediate,
                                                                                    W) + pooler
        lo, hi = model.predict(arch, cold_share=0.0).total_ms, model.predict(arch, cold_share=1.0).total_ms
        assert lo < hi
        assert p.total_ms == pytest.approx(lo + p.cold_share * (hi - lo), rel=1e-9)
        # within the probe's range the share is the caches' own; beyond it, the edge value
        xs = [x for x, _ in model.residency]
        x = math.log2(p.weights_mib * 2**20)
        expect = true_share(2 ** min(max(x, xs[0]), xs[-1]))
        assert p.cold_share == pytest.approx(expect, abs=0.05)
        # a profile without the probe predicts every GEMM cold, as before it
        assert cold_only.predict(arch).total_ms == pytest.approx(hi, rel=1e-9)


def test_a_noisy_probe_gives_a_nondecreasing_share_within_0_and_1():
    wobble = [0.3, -0.2, 0.4, 1.6, 0.5, 0.9, 0.7, 1.2, 0.8, 1.0, 1.0, 1.0, 1.0]
    k = iter(wobble)
    model = profile(share=lambda b: next(k)).model(W)
    shares = [y for _, y in model.residency]
    assert shares == sorted(shares) and all(0.0 <= y <= 1.0 for y in shares)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=30))
def test_nondecreasing_is_the_isotonic_fit(ys):
    fit = nondecreasing(ys)
    assert len(fit) == len(ys)
    assert all(a <= b + 1e-9 for a, b in zip(fit, fit[1:]))
    assert sum(fit) == pytest.approx(sum(ys), abs=1e-6)  # pooling keeps each block's mean
    assert nondecreasing(fit) == pytest.approx(fit)
    if ys == sorted(ys):
        assert fit == pytest.approx(ys)


def test_the_probe_encoder_runs_natively():
    spec, _ = P.residency_ops(SPACES["minilm"], P.Workload(1, 8, 1), 8 << 20)[0]
    run, copies = make_runner(spec, P.Workload(1, 8, 1), ValuePool(), core().default_isa(), 8 << 20)
    out, _ = run()
    assert copies == 1 and out is not None
