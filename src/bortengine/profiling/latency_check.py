"""The latency a deployed model is held to, and the check of a measurement against it.

A LatencyExpectation is the profile's predicted forward latency of the model's architecture at its workload
(predict_latency), a tolerance, and the CPU target the profile describes (the target the model was extracted for).
judge() compares a measured median with it (a LatencyVerdict that says measured against predicted, the ratio and
what to do); cpu_target_mismatch() says whether this machine is that target. workload_inputs() makes the token ids
of a workload from the model's own tokenizer, and time_calls() times a call the way validation times forwards.

The pytest plugin (pytest_plugin.py) and the suite the pipeline writes (latency_suite.py) are built on these;
nothing here imports pytest.

Shapes: B = batch, T = tokens per sequence.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import numpy as np

from bortengine.architecture import Architecture
from bortengine.engine import Engine, available_cpus, load
from bortengine.profiling.cpu_probe import RETRY_PAUSES_S
from bortengine.profiling.errors import ProfileError
from bortengine.profiling.profile_file import Profile, predict_latency
from bortengine.profiling.target import Target
from bortengine.profiling.timing import best_block, measure_with_retries
from bortengine.profiling.validation import VALIDATION
from bortengine.profiling.workload import Workload

# Why 1.5x: the shipped profile's two validation runs (docs/profiler.md, docs/profiler/shipping-run.log) timed 160
# forwards of the Bort and MiniLM spaces in float32 and int8, and the slowest ran at 1.47x its prediction (a
# MiniLM-sized int8 model while the host probe saw other tenants of the VM slow it 2-4x); the Bort float32 rows
# stayed within 1.08x. A model slower than 1.5x its prediction is slower than the latency model's error and a noisy
# stretch explain: a regression, or another machine. Small students (MiniLM-sized and below) are where the model
# erred most, so a tighter bound would flap.
DEFAULT_TOLERANCE = 1.5

# Plain English for the token ids of a workload: embeddings gather the rows of the ids a service would see.
SAMPLE_TEXT = (
    "The morning train to the coast was late again, so the station filled with people holding coffee and checking "
    "their phones. A child asked why the clock above the platform had stopped at ten past seven, and her father "
    "said that nobody had wound it since the old stationmaster retired. When the train finally arrived, the "
    "conductor apologised for the delay, blamed a signal failure near the river, and promised that the kitchen car "
    "would serve free tea until the first stop. Outside the window the fields gave way to low hills, then to "
    "salt marshes where herons stood perfectly still in the grey water. Most passengers were reading or asleep "
    "long before the sea came into view, bright and flat under a sky that could not decide whether to rain.")


def check_tolerance(tolerance: Any) -> float:
    """A tolerance as a float: the measured median may be at most tolerance × the prediction (> 0, finite)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or tolerance <= 0:
        raise ProfileError(f"a latency tolerance is a positive ratio to the prediction such as 1.5 (fail above "
                           f"1.5 × the predicted ms), got {tolerance!r}")
    return float(tolerance)


def architecture_of(engine: Engine) -> Architecture:
    """The architecture of a loaded model as the latency model sees it, its head as the engine runs it."""
    c = engine.config
    head = "classifier" if engine.labels is not None else ("pooler" if engine.has_pooler else "none")
    return Architecture(c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.intermediate_size,
                        vocab_size=c.vocab_size, max_positions=c.max_position_embeddings,
                        type_vocab_size=c.type_vocab_size, head=head,
                        num_labels=c.num_labels if head == "classifier" else 2)


def mixed_layers(engine: Engine, workload: Workload) -> dict[str, int]:
    """How many encoder layers the model runs in float32 and in bf16 when served at the workload's dtype: those of
    a loaded engine of that dtype, else (int8) those its int8 calibration takes out of int8 (config.json
    bortengine_int8): predict_latency's float32_layers and bf16_layers."""
    if engine.dtype == workload.dtype:
        return {"float32_layers": len(engine.float32_layers), "bf16_layers": len(engine.bf16_layers)}
    if workload.dtype != "int8":
        return {}
    return {"float32_layers": len(engine.config.int8_float32_layers),
            "bf16_layers": len(engine.config.int8_bf16_layers)}


def workload_inputs(engine: Engine, workload: Workload) -> dict[str, np.ndarray]:
    """{"input_ids": int64 [B, T]} for engine(**inputs): B sequences of exactly T tokens (no padding, as the
    workload is profiled), the same at every call.

    Each row is [CLS], a window of SAMPLE_TEXT's word pieces (cycling through the text, each row starting further
    on), [SEP], as the model's tokenizer makes them. A model without a tokenizer (or one whose ids do not fit its
    vocabulary) gets ids drawn from a generator seeded with 0 instead.
    """
    B, T = workload.batch_size, workload.seq_len
    if T > engine.config.max_positions:
        raise ProfileError(f"workload sequences of {T} tokens exceed the model's {engine.config.max_positions} "
                           f"positions (max_position_embeddings={engine.config.max_position_embeddings})")
    vocab = engine.config.vocab_size
    tokenizer = engine.tokenizer
    pieces = tokenizer.encode([SAMPLE_TEXT], max_length=4 * len(SAMPLE_TEXT), add_special_tokens=False)[0].ids \
        if tokenizer else []
    if not pieces or max(pieces) >= vocab:
        return {"input_ids": np.random.default_rng(0).integers(0, vocab, size=(B, T), dtype=np.int64)}
    specials = tokenizer.token_ids([""])[0]           # [CLS], [SEP] (or the model's equivalents)
    first, last = (specials[:1], specials[-1:]) if T >= 2 and len(specials) >= 2 else ([], [])
    body = T - len(first) - len(last)
    ids = np.empty((B, T), dtype=np.int64)
    for row in range(B):
        start = 37 * row                            # rows start at different words
        window = [pieces[(start + k) % len(pieces)] for k in range(body)]
        ids[row] = first + window + last
    return {"input_ids": ids}


@dataclass(frozen=True)
class Timing:
    """A measured latency: the median of `calls` calls, and how it was measured."""

    median_ms: float
    calls: Optional[int] = None
    how: str = "measured"

    def describe(self) -> str:
        return f"median of {self.calls} calls, {self.how}" if self.calls else self.how


def time_calls(fn: Callable[[], Any], num_threads: int) -> Timing:
    """Time fn as validation times forwards (VALIDATION: warm-up 0.3 s, repeats in a 0.6 s budget, at least 10):
    one block, retried (up to 2 more) while other processes take the CPU its threads need; the least-disturbed
    block's median."""
    blocks = measure_with_retries(fn, replace(VALIDATION, blocks=1), num_threads, available_cpus(), [0.0])
    best = best_block(blocks)
    how = f"after {VALIDATION.warmup_s:g} s of warm-up"
    if best.foreign_cpus:
        how += f"; other processes used {best.foreign_cpus:.2f} CPU(s) meanwhile"
    return Timing(best.median_ms, best.n, how)


# ============================================================================================ the expectation
@dataclass(frozen=True)
class LatencyExpectation:
    """What a model is held to: predicted_ms (the profile's latency model for its architecture at the workload),
    at most tolerance × that, on the CPU target the profile describes."""

    model: str                   # the model directory, as shown in messages
    architecture: Architecture
    workload: Workload
    predicted_ms: float
    tolerance: float
    target: Target
    profile: str                 # the profile file, as shown in messages
    remedy: str = ""             # the command that measures the workload into that profile (Profile.command_for)

    @classmethod
    def of(cls, model: Engine | str | os.PathLike, profile: Profile, workload: Workload,
           tolerance: float = DEFAULT_TOLERANCE) -> "LatencyExpectation":
        """The expectation of a model (a loaded Engine, or its directory, loaded here only to read its
        architecture) under the workload, from the profile. Raises ProfileError if the profile does not cover it."""
        if not isinstance(workload, Workload):
            raise ProfileError(f"workload must be a bortengine.profiling.Workload, got {type(workload).__name__}")
        tolerance = check_tolerance(tolerance)
        engine = model if isinstance(model, Engine) else load(model, num_threads=1)
        arch = architecture_of(engine)
        # (MPNet's attention adds a relative position bias; the other families' is BERT's)
        position_bias = bool(engine.config.relative_attention_num_buckets)
        predicted = float(predict_latency(arch, workload, profile, position_bias=position_bias,
                                          **mixed_layers(engine, workload)))
        return cls(model=str(engine.path), architecture=arch, workload=workload, predicted_ms=predicted,
                   tolerance=tolerance, target=profile.target,
                   profile=str(profile.path) if profile.path else f"profile of {profile.target.signature}",
                   remedy=profile.command_for(workload))

    @property
    def limit_ms(self) -> float:
        return self.tolerance * self.predicted_ms

    def judge(self, timing: Timing, current: Optional[Target] = None) -> "LatencyVerdict":
        """The verdict on a measured median; current (this machine's target) adds a note when the engine differs
        from the one the profile was measured with."""
        note = engine_change(self.target, current) if current is not None else None
        return LatencyVerdict(self, timing, note)

    def changes_since(self, predicted_ms: float, target_signature: str) -> Optional[str]:
        """None if the profile and model still give the prediction and target a suite was written with (within
        0.1%), else what changed and what to do."""
        changed = []
        if self.target.signature != target_signature:
            changed.append(f"its CPU target is {self.target.signature}, the suite was written for "
                           f"{target_signature}")
        if not math.isclose(self.predicted_ms, predicted_ms, rel_tol=1e-3):
            changed.append(f"it predicts {self.predicted_ms:.6g} ms for {self.architecture} at "
                           f"{self.workload}, the suite was written for {predicted_ms:.6g} ms")
        if not changed:
            return None
        return (f"the profile {self.profile} or the model {self.model} changed since this suite was written: "
                f"{'; '.join(changed)}. If that was on purpose (re-profiled, another model), write the suite again "
                f"(bortengine pipeline, or bortengine.profiling.write_latency_suite); otherwise restore the files the "
                f"suite was written with")


@dataclass(frozen=True)
class LatencyVerdict:
    """A measured median against an expectation: passed when it is at most tolerance × the prediction."""

    expectation: LatencyExpectation
    timing: Timing
    engine_note: Optional[str] = None

    @property
    def measured_ms(self) -> float:
        return self.timing.median_ms

    @property
    def ratio(self) -> float:
        """measured / predicted."""
        return self.measured_ms / self.expectation.predicted_ms

    @property
    def passed(self) -> bool:
        return self.measured_ms <= self.expectation.limit_ms

    def summary(self) -> str:
        e = self.expectation
        return (f"{ms(self.measured_ms)} ms measured, {self.ratio:.2f}x the predicted {ms(e.predicted_ms)} ms "
                f"(tolerance {e.tolerance:g}x: at most {ms(e.limit_ms)} ms)")

    def message(self) -> str:
        """Measured against predicted, the ratio, the tolerance and, when it failed, what to do."""
        e, w = self.expectation, self.expectation.workload
        lines = [
            f"bortengine latency check {'passed' if self.passed else 'FAILED'}: {e.model} {e.architecture} at {w}",
            f"  measured   {ms(self.measured_ms):>9} ms  ({self.timing.describe()})",
            f"  predicted  {ms(e.predicted_ms):>9} ms  (the latency model of {e.profile}, CPU target "
            f"{e.target.signature})",
            f"  ratio      {self.ratio:>8.2f}x      the tolerance is {e.tolerance:g}x: at most {ms(e.limit_ms)} ms"]
        if self.engine_note:
            lines.append(f"  note: {self.engine_note}")
        if not self.passed:
            lines.append(
                f"What to do: run it again on a quiet machine first (other processes, and other tenants of a VM "
                f"that /proc/stat does not show, slow a run by 2-4x). If it stays slow, the model, bortengine or "
                f"the machine changed since the profile was measured: re-profile on this machine "
                f"({e.remedy or w.command()} --fresh: without it the measurements kept are not taken again) and, "
                f"for a model the pipeline extracted, run the pipeline again. To accept a slower model, raise the "
                f"tolerance (the suite's: TOLERANCE in a suite the pipeline wrote, bortengine_expectation(..., "
                f"tolerance=) in your own; or --bortengine-tolerance for one run).")
        return "\n".join(lines)


def ms(value: float) -> str:
    """Milliseconds for a message: three decimals, or four significant digits below 0.1 ms."""
    return f"{value:.3f}" if value >= 0.1 else f"{value:.4g}"


# ============================================================================================ the CPU target
def cpu_target_mismatch(expected: Target, current: Target, where: str = "the profile",
                        dtype: Optional[str] = None, advise: bool = True) -> Optional[str]:
    """None when this machine (current) is the CPU target `expected` (same CPU, CPU count and kernel path, CPUID and
    caches where both know them, calibration probe within its tolerance; the engine version may differ), else a
    message naming both targets (their kernels of dtype, or all) and, if advise, what to do (a skip under
    --bortengine-allow-other-cpu has nothing to do)."""
    differences = expected.cpu_differences(current)
    if not differences:
        return None
    return (f"this machine is not the CPU target the model was extracted for ({where}):\n"
            f"  expected  {expected.signature}: {expected.describe(dtype)}\n"
            f"  found     {current.signature}: {current.describe(dtype)}\n"
            f"  differences: {'; '.join(differences)}\n"
            f"Its latency was predicted for that machine, so the suite's numbers do not hold here."
            + (" Run the suite on the target, run the pipeline on this machine to extract a model for it, or pass "
               "--bortengine-allow-other-cpu to skip the latency checks on other machines." if advise else ""))


LATENCY_DECIDES = ("the latency checks run and judge the time measured. Run the suite when the machine is quiet to "
                   "confirm the target, or re-profile it quiet.")


def busy_core_note(expected: Target, current: Target, where: str = "the profile", then: str = LATENCY_DECIDES) -> str:
    """What a check says of a probe rate apart from the profile's by no more than load causes, all else the same
    (Target.apart_by_load_alone): it cannot tell a busy core from another clock, so what is timed decides (`then`
    says what is: by default the latency suite's checks)."""
    if current.probe_gflops < expected.probe_gflops:
        how, why = (f"slower than the profile's ({where}) after re-probing for {sum(RETRY_PAUSES_S):.1f} s",
                    "Another tenant on this core slows the probe so, as would a slower clock of this CPU")
    else:
        how, why = (f"faster than the profile's ({where})",
                    "The profile's probe ran so on a busy core, or this CPU clocks higher")
    return (f"this machine's calibration probe ran {how}: {current.probe_gflops:.0f} against "
            f"{expected.probe_gflops:.0f} GFLOP/s, its CPU otherwise the target's ({expected.signature}). {why}; "
            f"{then}")


def engine_change(expected: Target, current: Target) -> Optional[str]:
    """A note when the engine running differs from the one the profile was measured with, else None."""
    if (expected.engine_version, expected.core_build) == (current.engine_version, current.core_build):
        return None
    return (f"the profile was measured with bortengine {expected.engine_version} (core build "
            f"{expected.core_build}); this is bortengine {current.engine_version} (core build {current.core_build}): "
            f"a changed engine can explain a changed latency")

