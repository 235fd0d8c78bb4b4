"""What a forward runs, described once: the table of its steps, the kernel call (OpSpec) each step makes for an
architecture, and from them the lists of calls a profile measures (required_ops for a search space,
calibration_ops for the tiny calibration encoders), the per-step costs the latency model and the calibration sum,
and the barrier counts.

A forward is one parallel region; every step ends with a barrier (an int8 linear layer's GEMM with two: it first
quantizes its input rows in a parallel step of its own). The table names the steps and their trace buckets as the
engine's own per-op trace does (Encoder.last_trace), so predicted parts and traced parts share their keys.

Shapes: B = batch, T = tokens per sequence, M = B·T token rows, H = hidden, I = intermediate, A = heads,
Dh = H / A head size, D = layers, V = vocab, K/N = GEMM depth / output columns (weights are [N, K]).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Optional

from bortengine.engine import forward_ops
from bortengine.profiling.errors import ProfileError
from bortengine.profiling.workload import Workload
from bortengine.search_space import SearchSpace

SCOPES = ("forward", "layer", "pooler")
# kinds with a single-op binding of their own, timed by the profiler; a scatter or gather only moves rows (its time
# is in the fixed per-forward cost, its barrier in the sync term)
TIMED_KINDS = ("embeddings", "gemm", "attention", "layernorm")
# role names in profiles written before the steps took the engine's names
FORMER_ROLES = {"attn_out": ("attention_out",), "layernorm": ("ln1", "ln2")}

LAYER_NORM_EPS = 1e-12
# Calibration encoders: tiny (their ops cost almost nothing, so their forward is mostly fixed and barrier cost),
# and outside every space (H = 64 is below the MiniLM space), so no candidate is used to build the model.
CALIBRATION_HIDDEN = 64
CALIBRATION_HEADS = 2
CALIBRATION_INTERMEDIATE = 64
CALIBRATION_VOCAB = 64
CALIBRATION_LAYERS = (1, 2, 4, 8)
CALIBRATION_SIZES = {"A": CALIBRATION_HEADS, "H": CALIBRATION_HIDDEN, "I": CALIBRATION_INTERMEDIATE}
CALL_KINDS = ("gemm", "attention", "layernorm", "embeddings")  # op kinds whose empty call is measured
BERT_STEPS = ("always", "padded")  # the `when` of the steps a BERT forward runs (forward_ops())


def forward_steps() -> list[dict[str, Any]]:
    """The forward's steps in order, as the engine describes them (_core.forward_ops(), csrc/forward.h), in fresh
    dicts the caller may keep.

    Keys: name, trace (the bucket of Encoder.last_trace / Engine.op_times), kind, scope ("forward", "layer", or
    "pooler": only with a pooler), when, barriers ({dtype: n}: the barriers the step ends with; an int8 linear
    layer has two, it first quantizes its input rows in a parallel step of its own); a GEMM also has K and N (in
    the architecture's sizes: "H", "3H", "I"), epilogue, rows ("tokens": M = B·T, "sequences": M = B) and
    low_precision (int8 and bf16 encoders run it on low-precision kernels) and kernels ({dtype: the kernels' dtype
    in an encoder of that dtype}: an int8 encoder runs FFN out on the bf16 ones). The latency model describes the dense
    batches a profile times, so a step that runs only when the batch has padding (when == "padded": the scatter of
    packed rows into the output) counts no barrier here. Profiles describe BERT encoders (the only family
    extraction and training take), so the steps only other families run (when == "projected": ELECTRA's
    embeddings_project) are left out.
    """
    return [{**step, "barriers": {dtype: n if step["when"] == "always" else 0 for dtype, n in step["barriers"].items()}}
            for step in forward_ops() if step["when"] in BERT_STEPS]


def barriers(scope: str, dtype: str, steps: Optional[Iterable[Mapping[str, Any]]] = None) -> int:
    """Barriers the steps of one scope end with under dtype (per layer for "layer")."""
    return sum(step["barriers"][dtype] for step in (forward_steps() if steps is None else steps)
               if step["scope"] == scope)


def scope_repeats(layers: int, head: str) -> dict[str, int]:
    """How often each scope's steps run in one forward of a model of `layers` layers with that head."""
    return {"forward": 1, "layer": layers, "pooler": 0 if head == "none" else 1}


def current_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Roles as this version names them (a profile of an earlier one says attn_out and layernorm)."""
    return tuple(dict.fromkeys(new for role in roles for new in FORMER_ROLES.get(role, (role,))))


@dataclass(frozen=True)
class OpSpec:
    """One kernel call to time.

    kind: "gemm" (a [M,K] · w[N,K]ᵀ + bias, then epilogue), "attention" (B sequences of T tokens, `heads` heads of
    head_dim), "layernorm" ([M, hidden]), "embeddings" (M ids into a [vocab, hidden] table, then LayerNorm),
    "call" (an empty call of op kind `of`: the per-call cost a forward does not pay) or "forward" (a tiny
    calibration encoder of `layers` layers, or with `intermediate` set an encoder of the residency probe: `layers`
    layers of heads, hidden and intermediate, with the `head` of its space).
    """

    kind: str
    M: int = 0
    K: int = 0
    N: int = 0
    epilogue: str = ""
    heads: int = 0
    head_dim: int = 0
    hidden: int = 0
    vocab: int = 0
    layers: int = 0
    of: str = ""
    cold: bool = True  # gemm: weights read from DRAM (cycled copies); False: the same weights, cache-warm
    intermediate: int = 0
    head: str = ""
    # gemm: the kernels it runs on where they are neither the workload's dtype nor, for the pooler, float32 (an
    # int8 encoder's FFN out runs on the bf16 kernels: forward_steps' "kernels"); "" for the others (gemm_dtype)
    kernel: str = ""
    # attention: timed right after the QKV GEMM that writes its input, as the forward runs it (that GEMM's own time,
    # measured warm, is taken off: qkv_gemm_before); alone, attention finds its input in the caches it left it in
    # and ran 1.45x faster than in the forward (H 1024, 16 heads, bf16 on AMX, 2 threads)
    after_qkv: bool = False
    # attention: with MPNet's relative position bias added to every score (position_bias_ops)
    position_bias: bool = False

    @property
    def key(self) -> str:
        if self.kind == "gemm":
            return (f"gemm M={self.M} K={self.K} N={self.N} {self.epilogue}"
                    + (f" {self.kernel}" if self.kernel else "") + ("" if self.cold else " warm"))
        if self.kind == "attention":
            return (f"attention A={self.heads} Dh={self.head_dim}" + (" after qkv" if self.after_qkv else "")
                    + (" position bias" if self.position_bias else ""))
        if self.kind == "layernorm":
            return f"layernorm H={self.hidden}"
        if self.kind == "embeddings":
            return f"embeddings H={self.hidden} V={self.vocab}"
        if self.kind == "call":
            return f"call {self.of}"
        if self.kind == "forward" and self.intermediate:
            return f"forward D={self.layers} A={self.heads} H={self.hidden} I={self.intermediate} {self.head}"
        if self.kind == "forward":
            return f"forward D={self.layers} H={self.hidden}"
        raise ProfileError(f"unknown op kind {self.kind!r}")

    def flops(self, w: Workload) -> float:
        if self.kind == "gemm":
            return 2.0 * self.M * self.K * self.N
        if self.kind == "attention":
            return 4.0 * w.batch_size * self.heads * w.seq_len * w.seq_len * self.head_dim
        if self.kind in ("layernorm", "embeddings"):
            return 8.0 * w.tokens * self.hidden
        return 0.0

    _FIELDS = {"gemm": ("M", "K", "N", "epilogue", "cold"), "attention": ("heads", "head_dim"),
               "layernorm": ("hidden",), "embeddings": ("hidden", "vocab"), "call": ("of",),
               "forward": ("layers", "hidden")}
    _PROBE_FIELDS = ("layers", "heads", "hidden", "intermediate", "head")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        fields_ = self._PROBE_FIELDS if self.kind == "forward" and self.intermediate else self._FIELDS.get(self.kind)
        d.update((k, getattr(self, k)) for k in fields_ or ())
        if self.kernel:
            d["kernel"] = self.kernel
        if self.after_qkv:
            d["after_qkv"] = True
        if self.position_bias:
            d["position_bias"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OpSpec":
        fields_ = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields_)


# ========================================================================================== a step's kernel call
def step_sizes(step: Mapping[str, Any]) -> tuple[str, ...]:
    """The architecture sizes a step's call depends on: ("H",), ("A", "H") or ("H", "I")."""
    if step["kind"] == "attention":
        return ("A", "H")
    if step["kind"] == "gemm" and "I" in (step["K"], step["N"]):
        return ("H", "I")
    return ("H",)


def _size(symbol: str, sizes: Mapping[str, int]) -> int:
    return 3 * sizes["H"] if symbol == "3H" else sizes[symbol]


def step_op(step: Mapping[str, Any], sizes: Mapping[str, int], workload: Workload, vocab: int, *,
            cold: bool = True) -> Optional[OpSpec]:
    """The kernel call a step makes for an architecture of `sizes` (A, H, I) under the workload; None for the steps
    that only move rows (scatter, gather).

    Shapes: per-token GEMMs have M = B·T rows; the pooler GEMM has M = B rows (one [CLS] row per sequence).
    """
    kind = step["kind"]
    if kind == "gemm":
        rows = workload.tokens if step["rows"] == "tokens" else workload.batch_size
        kernel = step["kernels"][workload.dtype]
        implied = workload.dtype if step["low_precision"] else "float32"  # what gemm_dtype says without `kernel`
        return OpSpec("gemm", M=rows, K=_size(step["K"], sizes), N=_size(step["N"], sizes),
                      epilogue=step["epilogue"], cold=cold, kernel="" if kernel == implied else kernel)
    if kind == "attention":
        return OpSpec("attention", heads=sizes["A"], head_dim=sizes["H"] // sizes["A"], after_qkv=True)
    if kind == "layernorm":
        return OpSpec("layernorm", hidden=sizes["H"])
    if kind == "embeddings":
        return OpSpec("embeddings", hidden=sizes["H"], vocab=vocab)
    return None


def qkv_gemm_before(spec: OpSpec, workload: Workload) -> OpSpec:
    """The QKV GEMM an attention op timed after_qkv runs first, weights warm (one copy): a GEMM every profile of the
    attention's hidden size measures too, whose time is taken off the pair's."""
    qkv = next(step for step in _gemm_steps() if step["name"] == "qkv")
    return step_op(qkv, {"A": spec.heads, "H": spec.heads * spec.head_dim}, workload, 1, cold=False)

WEIGHT_BYTES = {"float32": 4, "int8": 1, "bf16": 2}  # per packed weight of a GEMM of that dtype


def gemm_dtype(spec: OpSpec, w: Workload) -> str:
    """The arithmetic of a GEMM op in a forward of w.dtype: the int8 and bf16 engines run the layers' GEMMs in their
    dtype (but the kernel a spec names: an int8 encoder's FFN out runs in bf16); the pooler (the one tanh GEMM)
    stays float32."""
    if spec.kernel:
        return spec.kernel
    return w.dtype if spec.kind == "gemm" and spec.epilogue != "tanh" else "float32"


def gemm_weight_bytes(spec: OpSpec, w: Workload) -> int:
    return WEIGHT_BYTES[gemm_dtype(spec, w)]


def weight_footprint(sizes: Mapping[str, int], workload: Workload, vocab: int, repeats: Mapping[str, int]) -> int:
    """Bytes of packed GEMM weights one forward reads: what passes through the caches between two reads of any one
    layer's weights when the model is called again and again."""
    total = 0
    for step in _gemm_steps():
        if repeats[step["scope"]]:
            spec = step_op(step, sizes, workload, vocab)
            total += repeats[step["scope"]] * spec.K * spec.N * gemm_weight_bytes(spec, workload)
    return total


@functools.lru_cache(maxsize=1)
def _gemm_steps() -> tuple[dict[str, Any], ...]:
    """forward_steps()' GEMM steps, read-only (weight_footprint runs in every prediction; forward_steps() copies)."""
    return tuple(step for step in forward_steps() if step["kind"] == "gemm")


def gemm_kernels(workload: Workload) -> set[str]:
    """The OpSpec.kernel values of the GEMMs a forward runs under the workload ("" for its own dtype's kernels)."""
    return {step_op(step, {"A": 1, "H": 1, "I": 1}, workload, 1).kernel for step in _gemm_steps()}


def forward_costs(op_ms: Callable[[OpSpec], float], sizes: Mapping[str, int], workload: Workload, vocab: int,
                  repeats: Mapping[str, int], *, cold: bool = True) -> dict[str, dict[str, float]]:
    """Per scope that runs (repeats > 0), the net time of its timed steps summed per trace bucket, each in forward
    order (a layer's two LayerNorms make one "layernorm" bucket): one layer, not D of them."""
    costs: dict[str, dict[str, float]] = {}
    for step in forward_steps():
        spec = step_op(step, sizes, workload, vocab, cold=cold) if repeats[step["scope"]] else None
        if spec is None:
            continue
        buckets = costs.setdefault(step["scope"], {})
        t = op_ms(spec)
        buckets[step["trace"]] = buckets[step["trace"]] + t if step["trace"] in buckets else t
    return costs


# ============================================================================================ what to measure
def required_ops(space: SearchSpace, workload: Workload) -> list[tuple[OpSpec, tuple[str, ...]]]:
    """Every op a forward of any architecture of `space` runs under `workload`, with the roles (step names) it
    plays: the steps that depend on H alone for every hidden size, attention for every (A, H) pair, the FFN GEMMs
    for every (H, I) pair of the space."""
    if len(space) == 0:
        raise ProfileError(f"search space {space.name!r} is empty")
    runs = scope_repeats(1, space.head)  # (no pooler steps for a space without a pooler)
    steps = [s for s in forward_steps() if s["kind"] in TIMED_KINDS and runs[s["scope"]]]
    shapes = {("H",): [{"H": h} for h in sorted({a.hidden for a in space})],
              ("A", "H"): [{"A": a, "H": h} for a, h in space.heads_hidden_pairs()],
              ("H", "I"): [{"H": h, "I": i} for h, i in space.hidden_intermediate_pairs()]}
    roles: dict[OpSpec, dict[str, None]] = {}
    for depends_on, values in shapes.items():
        for sizes in values:
            for step in steps:
                if step_sizes(step) == depends_on:
                    for cold in (True, False):  # each GEMM with its weights in DRAM and in cache (LatencyModel)
                        spec = step_op(step, sizes, workload, space.vocab_size, cold=cold)
                        roles.setdefault(spec, {})[step["name"]] = None
    return [(s, tuple(r)) for s, r in roles.items()]


# The residency probe: encoders of the space's lightest layer, with as many layers as make each footprint of
# RESIDENCY_MIB MiB of weights (below the profile's rotation), timed whole. A model called again and again reads all
# its weights between two reads of any one layer's, so whether its weights stay in the caches is a matter of how
# many bytes of weights it has; where each probe's time lies between the model's all-warm and all-cold predictions
# is the share of weight reads that miss at that footprint (LatencyModel.cold_share).
RESIDENCY_MIB = (4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256)


def residency_ops(space: SearchSpace, workload: Workload, rotation: int) -> list[tuple[OpSpec, tuple[str, ...]]]:
    """The residency probe's encoders (distinct layer counts, at most one per footprint): footprints below the
    rotation (beyond it every read misses) and up to twice the space's heaviest model (beyond, nothing to predict)."""
    def weights(a) -> int:
        return a.layers * layer_weight_bytes(a.hidden, a.intermediate, workload)

    lightest = min(space, key=lambda a: (layer_weight_bytes(a.hidden, a.intermediate, workload), a.heads))
    per_layer = layer_weight_bytes(lightest.hidden, lightest.intermediate, workload)
    reach = min(rotation, 2 * max(weights(a) for a in space) + 1)
    layers = dict.fromkeys(max(1, round((mib << 20) / per_layer)) for mib in RESIDENCY_MIB if mib << 20 < reach)
    return [(OpSpec("forward", layers=d, heads=lightest.heads, hidden=lightest.hidden,
                    intermediate=lightest.intermediate, head=space.head), ("residency",)) for d in layers]


def layer_weight_bytes(hidden: int, intermediate: int, workload: Workload) -> int:
    """Packed GEMM weights of one encoder layer (QKV, attention output, FFN in and out) under the workload."""
    return weight_footprint({"A": 1, "H": hidden, "I": intermediate}, workload, 1,
                            {"forward": 0, "layer": 1, "pooler": 0})


def calibration_forward_ops(workload: Workload) -> list[OpSpec]:
    """The tiny encoder's own ops: embeddings, attention, LayerNorm, then its GEMMs. Its weights fit in cache and
    stay there between forwards, so the GEMMs are timed warm."""
    specs = [step_op(s, CALIBRATION_SIZES, workload, CALIBRATION_VOCAB, cold=False) for s in forward_steps()
             if s["kind"] in TIMED_KINDS]
    return list(dict.fromkeys(sorted(specs, key=lambda s: s.kind == "gemm")))


# MPNet's attention adds a relative position bias (a [heads, 2P - 1] table by the key - query distance) to every
# score: a few percent of attention at 512 tokens, ~1% at 128. It is timed at one shape per workload, mpnet-base's
# 12 heads of 64, beside the same attention without it; the latency model prices a biased attention as the unbiased
# one times their ratio (LatencyModel.position_bias_factor).
POSITION_BIAS_SHAPE = (12, 64)


def position_bias_ops(workload: Workload) -> list[tuple[OpSpec, tuple[str, ...]]]:
    """The attention of POSITION_BIAS_SHAPE with and without the position bias, and the QKV GEMM both are timed
    after (its own time is taken off theirs)."""
    heads, head_dim = POSITION_BIAS_SHAPE
    plain = OpSpec("attention", heads=heads, head_dim=head_dim, after_qkv=True)
    ops = [plain, replace(plain, position_bias=True), qkv_gemm_before(plain, workload)]
    return [(s, ("position_bias",)) for s in ops]


def calibration_ops(workload: Workload) -> list[tuple[OpSpec, tuple[str, ...]]]:
    """Empty calls of each op kind, the tiny encoders' forwards, and the tiny encoders' own ops."""
    ops = [OpSpec("call", of=k) for k in CALL_KINDS]
    ops += [OpSpec("forward", layers=d, hidden=CALIBRATION_HIDDEN) for d in CALIBRATION_LAYERS]
    ops += calibration_forward_ops(workload)
    return [(s, ("calibration",)) for s in dict.fromkeys(ops)]
