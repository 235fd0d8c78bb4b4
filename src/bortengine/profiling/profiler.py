"""The profiler: measured latencies of the engine's own kernels on this CPU, and a latency model built on them.

This is the inference-cost objective of the hardware-aware search: `predict_latency(architecture, workload,
profile)` says how long the engine's forward takes for an architecture on the CPU the profile was measured on.

Measuring (profile()): for a search space and a workload (batch B, tokens T, threads, dtype) the profiler lists
every kernel call a forward of any candidate makes: the four GEMMs of a layer (QKV, attention output, FFN in,
FFN out) for each (K, N) the space produces, attention for each (heads, head size), LayerNorm and embeddings for
each hidden size, and the pooler GEMM; plus calibration calls (empty calls of each op, and forwards of tiny
encoders that lie outside every space). Each op is timed through the single-op bindings of bortengine._core with
the workload's thread count: warm-up, then repeats within a time budget, in `blocks` passes over the whole list
(so a burst of load from another process hits one block of an op, not all). Statistics per block: median,
quartiles, min, max, and outliers (samples above Q3 + 3 IQR); the estimate is the median of the least-disturbed
block (other processes only ever add time). GEMMs cycle through copies of their packed weights whose total is
twice the L3 cache, so every call reads its weights from DRAM, as a forward does (each layer's weights are new).

The model (LatencyModel): a forward is one parallel region; every op ends with a barrier. So

    latency = fixed + emb(H) + sync + D × (qkv + attention + attn_out + 2 ln + ffn_in + ffn_out + S sync)
              + [pooler + 2 sync]

with S = 7 barriers per layer in float32 and 11 in int8 (each linear layer first quantizes its input rows in a
parallel step of its own). An int8 workload times the int8 kernels: QuantizedLinear (row quantization + the int8
GEMM with its fused dequantizing epilogue) for the layers' GEMMs, the int8 encoder's attention kernel (bf16 where
the CPU has AVX512_BF16), int8 tiny encoders; the pooler stays float32 as in the engine.

where each op term is its single-call time minus the cost of an empty call of that op (Python, binding, thread
team start, which a forward pays once), and `sync` (per op) and `fixed` (per forward) come from a straight-line
fit of the tiny encoders' forward time against their layer count. Shapes the profile lacks are interpolated, see
LatencyModel.

Shapes: B = batch, T = tokens per sequence, M = B·T token rows, H = hidden, I = intermediate, A = heads,
Dh = H / A head size, D = layers, V = vocab, K/N = GEMM depth / output columns (weights are [N, K]).
"""
from __future__ import annotations

import functools
import gc
import json
import math
import os
import re
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from bortengine.progress import Progress as _Progress
from bortengine.engine import available_cpus as _available_cpus, core as _core, core_build
from bortengine.errors import BortEngineError
from bortengine.search_space import SearchSpace, architecture_dims

__all__ = [
    "Workload", "Target", "Profile", "OpSpec", "Prediction", "LatencyModel", "ValidationReport",
    "ProfileError", "ProfileMismatchWarning", "ProfileInterrupted", "profile", "load_profile", "predict_latency",
    "validate", "required_ops", "default_profile_path", "default_profile_dir", "shipped_profiles", "kendall_tau",
]

FORMAT = "bortengine-profile"
FORMAT_VERSION = 1
DTYPES = ("float32", "int8")  # the engine's dtypes: load(dtype=...) / Encoder(dtype=...)
EPILOGUES = ("none", "gelu", "tanh", "residual")
SYNCS_PER_LAYER = 7      # qkv, attention, attn_out, ln1, ffn_in, ffn_out, ln2: one barrier each
# int8: each of the 4 linear layers first quantizes its input rows (a parallel step of its own, one more barrier)
SYNCS_PER_LAYER_DTYPE = {"float32": SYNCS_PER_LAYER, "int8": SYNCS_PER_LAYER + 4}
SYNCS_EMBEDDINGS = 1
SYNCS_POOLER = 2         # gather of the [CLS] rows, then the GEMM
LAYER_NORM_EPS = 1e-12

# Calibration encoders: tiny (their ops cost almost nothing, so their forward is mostly fixed and barrier cost),
# and outside every space (H = 64 is below the MiniLM space), so no candidate is used to build the model.
CALIBRATION_HIDDEN = 64
CALIBRATION_HEADS = 2
CALIBRATION_INTERMEDIATE = 64
CALIBRATION_VOCAB = 64
CALIBRATION_LAYERS = (1, 2, 4, 8)


class ProfileError(BortEngineError, ValueError):
    """A profile that is missing, malformed, incomplete, or does not cover what is asked of it."""


class ProfileMismatchWarning(UserWarning):
    """A profile measured on another CPU, kernel path or engine version than the one running."""


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C during profile(): what was measured is saved; running the same command again resumes."""

    def __init__(self, path: Path, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} measurements saved to {path}; run the same command "
                         f"again to resume")
        self.path, self.done, self.total = path, done, total


# ================================================================================================ the workload
@dataclass(frozen=True)
class Workload:
    """What the model will serve: batch_size sequences of seq_len tokens (no padding), num_threads threads, dtype.

    Latency depends on all four, so a profile holds measurements per workload.
    """

    batch_size: int = 1
    seq_len: int = 128
    num_threads: int = 1
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("batch_size", "seq_len", "num_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ProfileError(f"Workload.{name} must be a positive integer, got {v!r}")
        if self.dtype not in DTYPES:
            raise ProfileError(f"Workload.dtype {self.dtype!r} is not supported: the engine runs (and the "
                               f"profiler measures) {list(DTYPES)}")

    @property
    def tokens(self) -> int:
        """M: rows of every per-token op (sequences packed end to end)."""
        return self.batch_size * self.seq_len

    @property
    def key(self) -> str:
        return f"b{self.batch_size}-t{self.seq_len}-th{self.num_threads}-{self.dtype}"

    def __str__(self) -> str:
        return f"batch {self.batch_size} × {self.seq_len} tokens, {self.num_threads} thread(s), {self.dtype}"

    @property
    def syncs_per_layer(self) -> int:
        return SYNCS_PER_LAYER_DTYPE[self.dtype]

    def command(self) -> str:
        return (f"bortengine profile --batch {self.batch_size} --seq {self.seq_len} --threads {self.num_threads}"
                + ("" if self.dtype == "float32" else f" --dtype {self.dtype}"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Workload":
        return cls(int(d["batch_size"]), int(d["seq_len"]), int(d["num_threads"]), str(d.get("dtype", "float32")))


# ================================================================================================== the target
def _l3_bytes() -> Optional[int]:
    """The largest cache's size from sysfs (Linux), else None."""
    best = None
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        if not m:
            continue
        n = int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
        if level >= 3 and (best is None or n > best):
            best = n
    return best


@dataclass(frozen=True)
class Target:
    """The CPU and engine a profile describes. Two targets with equal `signature_fields` time alike."""

    vendor: str
    model: str
    flags: tuple[str, ...]
    logical_cpus: int
    isa: str
    kernel: str
    engine_version: str
    core_build: str = "unknown"
    l3_bytes: Optional[int] = None
    int8_kernel: str = "unknown"     # the int8 GEMM and attention kernels of this path (dtype int8 workloads)
    int8_attention: str = "unknown"

    # what must match for a profile's numbers to describe this machine (core_build is compared separately; the
    # int8 kernels only when both sides name them: profiles of versions before int8 profiling do not)
    signature_fields = ("vendor", "model", "flags", "logical_cpus", "isa", "kernel")
    optional_fields = ("int8_kernel", "int8_attention")

    @classmethod
    def current(cls, isa: Optional[str] = None) -> "Target":
        from bortengine.version import __version__

        core = _core()
        info = core.cpu_info()
        chosen = isa or core.default_isa()
        return cls(vendor=str(info["vendor"]), model=str(info["model"]), flags=tuple(info["flags"]),
                   logical_cpus=int(info["logical_cpus"]), isa=chosen, kernel=core.kernel_name(chosen),
                   engine_version=__version__, core_build=core_build(), l3_bytes=_l3_bytes(),
                   int8_kernel=core.int8_kernel_name(chosen), int8_attention=_int8_attention_name(chosen))

    @property
    def signature(self) -> str:
        """File-name-safe name of the target, e.g. 'authenticamd-amd-epyc-avx512-2cpu'."""
        raw = f"{self.vendor}-{self.model}-{self.isa}-{self.logical_cpus}cpu"
        return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")

    def differences(self, other: "Target") -> list[str]:
        """Human-readable differences that change timings (CPU, kernel path, engine version)."""
        out = []
        for name in self.signature_fields:
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name} {_short(a)} vs {_short(b)}")
        for name in self.optional_fields:
            a, b = getattr(self, name), getattr(other, name)
            if a != b and "unknown" not in (a, b):
                out.append(f"{name} {_short(a)} vs {_short(b)}")
        if self.engine_version != other.engine_version:
            out.append(f"engine version {self.engine_version} vs {other.engine_version}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        d["signature"] = self.signature
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Target":
        return cls(vendor=str(d["vendor"]), model=str(d["model"]), flags=tuple(d["flags"]),
                   logical_cpus=int(d["logical_cpus"]), isa=str(d["isa"]), kernel=str(d["kernel"]),
                   engine_version=str(d["engine_version"]), core_build=str(d.get("core_build", "unknown")),
                   l3_bytes=d.get("l3_bytes"), int8_kernel=str(d.get("int8_kernel", "unknown")),
                   int8_attention=str(d.get("int8_attention", "unknown")))

    def describe(self, dtype: Optional[str] = None) -> str:
        kernels = self.kernel
        if dtype == "int8":
            kernels = f"{self.int8_kernel}, {self.int8_attention}"
        elif dtype is None and self.int8_kernel != "unknown":
            kernels = f"{self.kernel}; int8: {self.int8_kernel}, {self.int8_attention}"
        return (f"{self.vendor} {self.model}, {self.logical_cpus} logical CPU(s), {self.isa} "
                f"({kernels}), bortengine {self.engine_version} (core build {self.core_build})")


@functools.lru_cache(maxsize=None)
def _int8_attention_name(isa: str) -> str:
    """The attention kernel an int8 Encoder uses on this path (bf16 where the CPU has AVX512_BF16)."""
    enc = _core().Encoder(CALIBRATION_HIDDEN, 1, CALIBRATION_HEADS, CALIBRATION_INTERMEDIATE, CALIBRATION_VOCAB, 2,
                          2, LAYER_NORM_EPS, 1, isa, "int8")
    return str(enc.attention_kernel)


def _short(v: Any) -> str:
    return "[" + " ".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else repr(v)


# =========================================================================================== ops and their stats
@dataclass(frozen=True)
class OpSpec:
    """One kernel call to time.

    kind: "gemm" (a [M,K] · w[N,K]ᵀ + bias, then epilogue), "attention" (B sequences of T tokens, `heads` heads of
    head_dim), "layernorm" ([M, hidden]), "embeddings" (M ids into a [vocab, hidden] table, then LayerNorm),
    "call" (an empty call of op kind `of`: the per-call cost a forward does not pay) or "forward" (a tiny
    calibration encoder of `layers` layers).
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

    @property
    def key(self) -> str:
        if self.kind == "gemm":
            return f"gemm M={self.M} K={self.K} N={self.N} {self.epilogue}" + ("" if self.cold else " warm")
        if self.kind == "attention":
            return f"attention A={self.heads} Dh={self.head_dim}"
        if self.kind == "layernorm":
            return f"layernorm H={self.hidden}"
        if self.kind == "embeddings":
            return f"embeddings H={self.hidden} V={self.vocab}"
        if self.kind == "call":
            return f"call {self.of}"
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

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        d.update((k, getattr(self, k)) for k in self._FIELDS.get(self.kind, ()))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OpSpec":
        fields_ = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields_)


@dataclass
class BlockStats:
    """One block of timed calls, in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    n: int
    outliers: int  # samples above Q3 + 3 IQR (Tukey's far-out fence; IQR at least 1% of the median)
    foreign_cpus: Optional[float] = None  # CPUs other processes (and the hypervisor) used during the block
    own_cpus: Optional[float] = None      # CPUs this process used: about num_threads when its team is whole
    disturbed: bool = False               # others took CPU the workload needed, or its team collapsed onto fewer
    host_slowdown: Optional[float] = None  # the host probe's time around the block over its fastest (_HostProbe)

    @property
    def spread(self) -> float:
        """IQR / median: the relative width of the middle half of the samples."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "BlockStats":
        if not seconds:
            raise ProfileError("no samples")
        ms = sorted(s * 1e3 for s in seconds)
        n = len(ms)
        q1, med, q3 = _quantile(ms, 0.25), _quantile(ms, 0.5), _quantile(ms, 0.75)
        fence = q3 + 3.0 * max(q3 - q1, 0.01 * med)  # the floor keeps normal jitter of a very tight block in
        return cls(median_ms=med, q1_ms=q1, q3_ms=q3, min_ms=ms[0], max_ms=ms[-1], n=n,
                   outliers=sum(1 for x in ms if x > fence))

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BlockStats":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (NumPy's default method)."""
    n = len(sorted_values)
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


NOISY_SPREAD = 0.10    # IQR above 10% of the median
NOISY_OUTLIERS = 0.10  # or more than 10% of samples beyond the far-out fence (or the block was disturbed)


def _noisy(b: BlockStats) -> bool:
    return b.disturbed or b.spread > NOISY_SPREAD or b.outliers > NOISY_OUTLIERS * b.n


def _best(blocks: Sequence[BlockStats]) -> BlockStats:
    clean = [b for b in blocks if not b.disturbed]
    return min(clean or blocks, key=lambda b: b.median_ms)


@dataclass
class Measurement:
    """All blocks of one op; the estimate is the median of the least-disturbed block (the lowest median)."""

    spec: OpSpec
    blocks: list[BlockStats] = field(default_factory=list)
    mode: str = "full"
    roles: tuple[str, ...] = ()
    copies: int = 1  # packed weight copies the GEMM cycled through

    @property
    def best(self) -> BlockStats:
        """The block with the lowest median among those no other process disturbed (among all if none)."""
        return _best(self.blocks)

    @property
    def clean_blocks(self) -> int:
        return sum(1 for b in self.blocks if not b.disturbed)

    @property
    def ms(self) -> float:
        return self.best.median_ms

    @property
    def noisy(self) -> bool:
        return _noisy(self.best)

    def to_dict(self, w: Optional[Workload] = None) -> dict[str, Any]:
        b = self.best
        d: dict[str, Any] = {"op": self.spec.to_dict(), "mode": self.mode}
        if self.roles:
            d["roles"] = list(self.roles)
        if self.spec.kind == "gemm":
            d["weight_copies"] = self.copies
        d.update(median_ms=round(b.median_ms, 6), spread=round(b.spread, 4), outliers=b.outliers,
                 noisy=self.noisy)
        if w is not None and self.spec.flops(w) > 0:
            d["gflops"] = round(self.spec.flops(w) / (b.median_ms * 1e-3) / 1e9, 2)
        d["blocks"] = [x.to_dict() for x in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Measurement":
        blocks = [BlockStats.from_dict(x) for x in d["blocks"]]
        if not blocks:
            raise ProfileError("a measurement has no blocks")
        return cls(spec=OpSpec.from_dict(d["op"]), blocks=blocks, mode=str(d.get("mode", "full")),
                   roles=tuple(d.get("roles", ())), copies=int(d.get("weight_copies", 1)))


# ======================================================================================= what a space needs
def required_ops(space: SearchSpace, workload: Workload) -> list[tuple[OpSpec, tuple[str, ...]]]:
    """Every op a forward of any architecture of `space` runs under `workload`, with the roles it plays.

    Shapes: per-token ops have M = B·T rows; the pooler GEMM has M = B rows (one [CLS] row per sequence).
    """
    M, B = workload.tokens, workload.batch_size
    roles: dict[OpSpec, list[str]] = {}

    def need(spec: OpSpec, role: str) -> None:
        roles.setdefault(spec, [])
        if role not in roles[spec]:
            roles[spec].append(role)

    if len(space) == 0:
        raise ProfileError(f"search space {space.name!r} is empty")
    hiddens = sorted({a.hidden for a in space})
    for h in hiddens:
        need(OpSpec("embeddings", hidden=h, vocab=space.vocab_size), "embeddings")
        need(OpSpec("gemm", M=M, K=h, N=3 * h, epilogue="none"), "qkv")
        need(OpSpec("gemm", M=M, K=h, N=h, epilogue="residual"), "attn_out")
        need(OpSpec("layernorm", hidden=h), "layernorm")
        if space.head != "none":
            need(OpSpec("gemm", M=B, K=h, N=h, epilogue="tanh"), "pooler")
    for a, h in space.heads_hidden_pairs():
        need(OpSpec("attention", heads=a, head_dim=h // a), "attention")
    for h, i in space.hidden_intermediate_pairs():
        need(OpSpec("gemm", M=M, K=h, N=i, epilogue="gelu"), "ffn_in")
        need(OpSpec("gemm", M=M, K=i, N=h, epilogue="residual"), "ffn_out")
    return [(s, tuple(r)) for s, r in roles.items()]


def calibration_ops(workload: Workload) -> list[tuple[OpSpec, tuple[str, ...]]]:
    """Empty calls of each op kind, the tiny encoders' forwards, and the tiny encoders' own ops."""
    M, B = workload.tokens, workload.batch_size
    h, a, i, v = CALIBRATION_HIDDEN, CALIBRATION_HEADS, CALIBRATION_INTERMEDIATE, CALIBRATION_VOCAB
    ops = [OpSpec("call", of=k) for k in ("gemm", "attention", "layernorm", "embeddings")]
    ops += [OpSpec("forward", layers=d, hidden=h) for d in CALIBRATION_LAYERS]
    ops += [OpSpec("embeddings", hidden=h, vocab=v), OpSpec("attention", heads=a, head_dim=h // a),
            OpSpec("layernorm", hidden=h)]
    ops += [OpSpec("gemm", M=m, K=k, N=n, epilogue=e, cold=False) for m, k, n, e in _calibration_gemms(workload)]
    seen, out = set(), []
    for s in ops:
        if s not in seen:
            seen.add(s)
            out.append((s, ("calibration",)))
    return out


def _calibration_gemms(w: Workload) -> list[tuple[int, int, int, str]]:
    """The tiny encoder's GEMMs (M, K, N, epilogue): QKV, attention output, FFN in, FFN out, pooler. Its weights
    fit in cache and stay there between forwards, so these are timed warm."""
    M, B = w.tokens, w.batch_size
    h, i = CALIBRATION_HIDDEN, CALIBRATION_INTERMEDIATE
    return [(M, h, 3 * h, "none"), (M, h, h, "residual"), (M, h, i, "gelu"), (M, i, h, "residual"),
            (B, h, h, "tanh")]


# ================================================================================================ the profile
@dataclass
class WorkloadProfile:
    """The measurements of one workload, how they were taken, and the calibration derived from them."""

    workload: Workload
    ops: dict[str, Measurement] = field(default_factory=dict)
    mode: str = "full"
    blocks: int = 3
    clock: str = "wall"
    spaces: list[str] = field(default_factory=list)
    calibration: Optional[dict[str, Any]] = None
    conditions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.calibration is not None

    def refresh(self, settings: "Settings") -> None:
        """mode: "full" when every op was measured in full mode; blocks: the clean blocks each op should have."""
        was_full = self.mode == "full" and bool(self.ops)
        self.mode = "full" if settings.mode == "full" or (
            self.ops and all(m.mode == "full" for m in self.ops.values())) else "quick"
        self.blocks = self.blocks if was_full and settings.mode != "full" else settings.blocks

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": asdict(self.workload), "mode": self.mode, "blocks": self.blocks, "clock": self.clock,
            "spaces": self.spaces,
            "complete": self.complete, "calibration": self.calibration, "conditions": self.conditions,
            "ops": {k: m.to_dict(self.workload) for k, m in sorted(self.ops.items(), key=_op_order)},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WorkloadProfile":
        w = Workload.from_dict(d["workload"])
        ops = {}
        for key, m in d.get("ops", {}).items():
            meas = Measurement.from_dict(m)
            if meas.spec.key != key:
                raise ProfileError(f"measurement {key!r} describes op {meas.spec.key!r}")
            ops[key] = meas
        clock = str(d.get("clock", "wall"))
        if clock not in CLOCKS:
            raise ProfileError(f"unknown clock {clock!r}")
        return cls(workload=w, ops=ops, mode=str(d.get("mode", "full")), blocks=int(d.get("blocks", 3)), clock=clock,
                   spaces=list(d.get("spaces", [])), calibration=d.get("calibration"),
                   conditions=list(d.get("conditions", [])))


def _op_order(item: tuple[str, Measurement]) -> tuple:
    s = item[1].spec
    kinds = ["call", "forward", "embeddings", "gemm", "attention", "layernorm"]
    return (kinds.index(s.kind) if s.kind in kinds else 99, s.M, s.K, s.N, s.epilogue, s.heads, s.head_dim,
            s.hidden, s.layers, s.of)


class Profile:
    """The measurements of one CPU target, per workload. Saved as human-readable JSON.

    Build with profile(), read with load_profile() or Profile.load(), show with table().
    """

    def __init__(self, target: Target, workloads: Optional[dict[str, WorkloadProfile]] = None,
                 path: Optional[Path] = None, created: Optional[str] = None):
        self.target = target
        self.workloads: dict[str, WorkloadProfile] = workloads or {}
        self.path = path
        self.created = created or _now()
        self._models: dict[str, LatencyModel] = {}

    def __repr__(self) -> str:
        return f"Profile({self.target.signature}, workloads={list(self.workloads)}, path={self.path})"

    # -- coverage ---------------------------------------------------------------------------------------------
    def covers(self, workload: Workload) -> bool:
        wp = self.workloads.get(workload.key)
        return wp is not None and wp.complete

    def for_workload(self, workload: Workload) -> WorkloadProfile:
        wp = self.workloads.get(workload.key)
        if wp is None:
            have = ", ".join(str(self.workloads[k].workload) for k in self.workloads) or "none"
            raise ProfileError(f"the profile {self._where()} does not cover the workload {workload} (it has: "
                               f"{have}); measure it with: {workload.command()}")
        if not wp.complete:
            raise ProfileError(f"the profile {self._where()} of workload {workload} is incomplete (interrupted: "
                               f"{len(wp.ops)} ops measured); finish it with: {workload.command()}")
        return wp

    def model(self, workload: Workload) -> "LatencyModel":
        if workload.key not in self._models:
            self._models[workload.key] = LatencyModel(self.for_workload(workload), self.target)
        return self._models[workload.key]

    def _where(self) -> str:
        return str(self.path) if self.path else f"of {self.target.signature}"

    # -- files ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "created": self.created, "updated": _now(),
                "target": self.target.to_dict(),
                "workloads": {k: wp.to_dict() for k, wp in sorted(self.workloads.items())}}

    def save(self, path: Optional[str | os.PathLike] = None) -> Path:
        """Write atomically (a temporary file, then rename), so an interrupted save never leaves half a file."""
        path = Path(path or self.path or default_profile_path(self.target))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        self.path = path
        return path

    @classmethod
    def from_dict(cls, data: Any, path: Optional[Path] = None) -> "Profile":
        where = str(path) if path else "profile"
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ProfileError(f"{where} is not a bortengine profile (no \"format\": \"{FORMAT}\" field)")
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise ProfileError(f"{where} has profile format version {version!r}; this bortengine reads version "
                               f"{FORMAT_VERSION}: re-profile with `bortengine profile`")
        try:
            target = Target.from_dict(data["target"])
            workloads = {}
            for key, wd in data.get("workloads", {}).items():
                wp = WorkloadProfile.from_dict(wd)
                if wp.workload.key != key:
                    raise ProfileError(f"workload entry {key!r} describes {wp.workload.key!r}")
                workloads[key] = wp
        except ProfileError as e:
            raise ProfileError(f"{where} is malformed: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise ProfileError(f"{where} is malformed ({type(e).__name__}: {detail}); re-profile with "
                               f"`bortengine profile`") from None
        return cls(target, workloads, path=path, created=data.get("created"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ProfileError(f"no profile at {path}; make one with: bortengine profile --out {path}") from None
        except OSError as e:
            raise ProfileError(f"cannot read profile {path}: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileError(f"{path} is not valid JSON ({e}); it is not a bortengine profile or it is "
                               f"damaged: re-profile with `bortengine profile --out {path}`") from None
        return cls.from_dict(data, path=path)

    def check_target(self, current: Optional[Target] = None, stacklevel: int = 2) -> list[str]:
        """Warn (ProfileMismatchWarning) if the profile describes another CPU, kernel path or engine build."""
        current = current or Target.current(self.target.isa if self.target.isa in _core().available_isas()
                                            else None)
        diffs = self.target.differences(current)
        if diffs:
            warnings.warn(
                f"the profile {self._where()} was measured on another target ({'; '.join(diffs)}): its latencies "
                f"describe that machine, not this one. Profile this one with: bortengine profile",
                ProfileMismatchWarning, stacklevel=stacklevel + 1)
        elif self.target.core_build != current.core_build:
            diffs = [f"core build {self.target.core_build} vs {current.core_build}"]
            warnings.warn(
                f"the profile {self._where()} was measured with another build of the engine's native core "
                f"({diffs[0]}); if the kernels changed, re-profile with: bortengine profile",
                ProfileMismatchWarning, stacklevel=stacklevel + 1)
        return diffs

    # -- display ----------------------------------------------------------------------------------------------
    def table(self) -> str:
        """The profile as text: target, then per workload the calibration and one row per op."""
        t = self.target
        lines = [f"profile {self._where()}", f"target:  {t.describe()}",
                 f"L3:      {t.l3_bytes / 2**20:.0f} MiB" if t.l3_bytes else "L3:      unknown",
                 f"created: {self.created}"]
        if not self.workloads:
            lines.append("(no workloads measured)")
        for key, wp in sorted(self.workloads.items()):
            w = wp.workload
            lines += ["", f"workload {w}  [{key}]  mode {wp.mode}, {wp.blocks} block(s), {wp.clock} clock, spaces "
                          f"{', '.join(wp.spaces) or '-'}, {'complete' if wp.complete else 'INCOMPLETE'}"]
            for c in wp.conditions[-1:]:
                lines.append(f"  measured {c.get('started', '?')}: {c.get('seconds', 0):.0f} s, load average "
                             f"{c.get('loadavg_start', '?')}, other processes used {c.get('foreign_cpus', 0):.2f} "
                             f"CPU(s), steal {c.get('steal_cpus', 0):.2f}")
            if wp.calibration:
                cal = wp.calibration
                calls = ", ".join(f"{k} {v * 1e3:.1f} µs" for k, v in cal["call_ms"].items())
                lines.append(f"  calibration: fixed {cal['fixed_ms'] * 1e3:.1f} µs/forward, sync "
                             f"{cal['sync_ms'] * 1e3:.2f} µs/op; empty calls: {calls}")
                note = _calibration_note(cal)
                if note:
                    lines.append(f"  WARNING: {note}")
            lines.append(f"  {'op':<40} {'role':<22} {'median ms':>10} {'IQR %':>6} {'min ms':>9} {'n':>5} "
                         f"{'out':>4} {'GFLOP/s':>8}  flags")
            for k, m in sorted(wp.ops.items(), key=_op_order):
                b = m.best
                flops = m.spec.flops(w)
                gf = f"{flops / (b.median_ms * 1e-3) / 1e9:8.1f}" if flops else f"{'':8}"
                flags = []
                if m.noisy:
                    flags.append("NOISY")
                if m.mode != wp.mode:
                    flags.append(m.mode)
                if m.mode == wp.mode and m.clean_blocks < wp.blocks:
                    flags.append(f"{m.clean_blocks}/{wp.blocks} clean blocks")
                lines.append(f"  {k:<40} {','.join(m.roles):<22} {b.median_ms:10.4f} {100 * b.spread:6.1f} "
                             f"{b.min_ms:9.4f} {b.n:5d} {b.outliers:4d} {gf}  {' '.join(flags)}")
        return "\n".join(lines)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# ======================================================================================== where profiles live
PACKAGE_PROFILES = Path(__file__).resolve().parent / "profiles"


def default_profile_dir() -> Path:
    """$BORTENGINE_PROFILE_DIR, else $XDG_CACHE_HOME/bortengine/profiles, else ~/.cache/bortengine/profiles."""
    env = os.environ.get("BORTENGINE_PROFILE_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "bortengine" / "profiles"


def default_profile_path(target: Optional[Target] = None) -> Path:
    target = target or Target.current()
    return default_profile_dir() / f"{target.signature}.json"


def shipped_profiles() -> list[Path]:
    """Example profiles shipped in the package (bortengine/profiles/*.json)."""
    return sorted(PACKAGE_PROFILES.glob("*.json"))


def load_profile(path: Optional[str | os.PathLike] = None, *, check_target: bool = True) -> Profile:
    """Read a profile. Without a path: this CPU's profile in the cache directory, else a shipped one for it.

    check_target: warn (ProfileMismatchWarning) when the profile describes another CPU, kernel path or engine
    version than the one running; pass False when predicting for a deployment target on purpose.
    """
    if path is None:
        target = Target.current()
        candidates = [default_profile_path(target), PACKAGE_PROFILES / f"{target.signature}.json"]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise ProfileError(f"no profile of this CPU ({target.signature}) in {default_profile_dir()} or among "
                               f"the shipped examples; make one with: bortengine profile")
        path = found
    prof = Profile.load(path)
    if check_target:
        prof.check_target(stacklevel=2)
    return prof


# ================================================================================================= measuring
@dataclass
class Settings:
    """How hard to measure. quick() fits the whole Bort space in well under a minute."""

    mode: str = "full"
    blocks: int = 3                 # passes over the op list; the least-disturbed block is kept
    warmup_s: float = 0.03          # warm-up time per block (at least min_warmup calls)
    min_warmup: int = 3
    budget_s: float = 0.25          # timed calls per block: as many as fit, within [min_repeats, max_repeats]
    min_repeats: int = 15
    max_repeats: int = 3000
    rotation_factor: float = 2.0    # GEMM weight copies total rotation_factor × L3
    clock: str = "wall"             # see CLOCKS
    retries: int = 2                # extra blocks of an op when other processes disturbed one
    # A block of an op of >= 0.2 ms wider than this (IQR / median) counts as disturbed. Off for single ops, whose
    # timings can be bimodal on a quiet machine (the engine's workers join an op when they are awake); forwards of a
    # quiet machine repeat within 1-2 %, so validation uses 4 %.
    max_spread: float = math.inf
    retry_pause_s: float = 0.5      # × the retry number: lets a burst of load pass
    retry_budget_s: float = 60.0    # at most this long spent on retries per run
    host_probe: bool = True         # time _HostProbe around every block (interference /proc/stat cannot see)

    @classmethod
    def quick(cls, clock: str = "wall") -> "Settings":
        return cls(mode="quick", blocks=1, warmup_s=0.01, min_warmup=2, budget_s=0.06, min_repeats=7,
                   max_repeats=500, clock=clock, retries=1, retry_pause_s=0.2, retry_budget_s=10.0)


# wall: elapsed time (perf_counter), what a caller waits. cpu: CPU time of the calling thread (thread_time), which
# excludes the time other processes hold the CPU; it equals the wall time of a quiet machine only for one thread
# (the op runs on the calling thread), so it is allowed only with num_threads = 1.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _check_clock(clock: str, workload: Workload) -> None:
    if clock not in CLOCKS:
        raise ProfileError(f"unknown clock {clock!r}; expected one of {sorted(CLOCKS)}")
    if clock == "cpu" and workload.num_threads != 1:
        raise ProfileError(f"the cpu clock times the calling thread only, so it needs num_threads=1 (got "
                           f"{workload.num_threads}); use the wall clock on a quiet machine for more threads")


class _CpuMeter:
    """CPU time other processes used while we measured (from /proc/stat), in CPUs: the noise we could not avoid."""

    def __init__(self):
        self.started = _now()
        self.t0 = time.monotonic()
        self.stat0 = self._stat()
        self.self0 = self._self()
        try:
            self.load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            self.load = None

    @staticmethod
    def _stat() -> Optional[list[int]]:
        try:
            with open("/proc/stat") as f:
                return [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    @staticmethod
    def _self() -> float:
        t = os.times()
        return t.user + t.system

    def result(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.t0, 1e-9)
        out: dict[str, Any] = {"started": self.started, "loadavg_start": self.load, "seconds": round(wall, 2)}
        stat1 = self._stat()
        if self.stat0 and stat1:
            d = [b - a for a, b in zip(self.stat0, stat1)]
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy = (sum(d) - d[3] - (d[4] if len(d) > 4 else 0)) / hz  # all but idle and iowait
            steal = (d[7] if len(d) > 7 else 0) / hz
            mine = self._self() - self.self0
            out["foreign_cpus"] = round(max(0.0, busy - steal - mine) / wall, 3)
            out["steal_cpus"] = round(steal / wall, 3)
            out["own_cpus"] = round(mine / wall, 3)
        return out


def _disturbed(cond: Mapping[str, Any], threads: int, cpus: int) -> bool:
    """Did other processes (or the hypervisor) take CPU time the workload's threads needed? The tolerance covers
    the 10 ms tick of the kernel's accounting over short blocks."""
    foreign = cond.get("foreign_cpus", 0.0) + cond.get("steal_cpus", 0.0)
    return foreign > (cpus - threads) + max(0.25, 0.03 / max(cond.get("seconds", 1.0), 1e-3))


def _foreign_now(seconds: float = 0.3) -> dict[str, Any]:
    """Other processes' CPU use right now, sampled over `seconds` (we are idle meanwhile)."""
    meter = _CpuMeter()
    time.sleep(seconds)
    return meter.result()


class _HostProbe:
    """A fixed GEMM on the workload's threads, timed before and after every block: it catches interference that
    /proc/stat cannot see. On a VM the other tenants of the host are invisible, yet they can halve this machine's
    speed for seconds to minutes (seen here: forwards at exactly twice their time with both threads at 100% CPU on
    two vCPUs, as when the two share one physical core; an FMA loop at 86-109 instead of 116 GFLOP/s per core).
    The probe slows with the op, so a block whose probe ran `tolerance` x slower than the fastest probe of the run
    counts as disturbed and is retried like one that other processes disturbed.

    About 0.6 ms of work on two threads (a 448 x 256 x 512 product); a probe is the median of `repeats`
    back-to-back calls (the first wakes the pool), compared with the fastest probe of the run so far. On the quiet
    machine probes lie within 1.2x of the fastest 99% of the time and reach 1.33x at most (300 probes on 2
    threads, 300 on 1, and a tiny profile), hence the tolerance of 1.5: it catches the halvings, not the jitter."""

    def __init__(self, threads: int, isa: str, repeats: int = 5, tolerance: float = 1.5, calibrate: int = 5):
        import numpy as np

        rng = np.random.default_rng(0)
        self._linear = _core().PackedLinear(rng.standard_normal((512, 256)).astype(np.float32), None, isa)
        self._a = rng.standard_normal((448, 256)).astype(np.float32)
        self.threads, self.repeats, self.tolerance = threads, repeats, tolerance
        self.fastest = math.inf
        for _ in range(calibrate):
            self.slowdown()

    def _probe(self) -> float:
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            self._linear(self._a, num_threads=self.threads)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    def slowdown(self) -> float:
        """This moment's probe over the fastest of the run (1.0 on a host as quiet as at its quietest moment)."""
        t = self._probe()
        self.fastest = min(self.fastest, t)
        return t / self.fastest


def _measure_block(fn: Callable[[], Any], s: "Settings", threads: int, cpus: int,
                   probe: Optional[_HostProbe] = None) -> BlockStats:
    """One block of timed calls, with the CPU time other processes took meanwhile (and the host probe around it)."""
    before = probe.slowdown() if probe else None
    meter = _CpuMeter()
    samples = _time_block(fn, s)
    cond = meter.result()
    block = BlockStats.of(samples)
    if probe:
        block.host_slowdown = round(max(before, probe.slowdown()), 3)
    if "foreign_cpus" in cond and cond["seconds"] >= 0.05:  # shorter blocks are below the accounting's resolution
        block.foreign_cpus = round(cond["foreign_cpus"] + cond.get("steal_cpus", 0.0), 3)
        block.own_cpus = cond["own_cpus"]
        block.disturbed = _disturbed(cond, threads, cpus)
        # The engine's worker threads spin between ops, so a whole team keeps `threads` CPUs busy. About one CPU
        # means the team shares a core (the scheduler placed a worker on the caller's core): ops then run at
        # one-thread speed, with a tight spread, for as long as the placement lasts.
        if threads > 1 and block.own_cpus < threads - 0.5:
            block.disturbed = True
    # Interference /proc/stat cannot see (another tenant of the host hammering memory or the shared cache) still
    # widens the distribution: a quiet machine times ops of a fraction of a millisecond or more within a few %.
    if block.median_ms >= 0.2 and block.spread > s.max_spread:
        block.disturbed = True
    if block.host_slowdown is not None and block.host_slowdown > probe.tolerance:
        block.disturbed = True
    return block


def _measure(fn: Callable[[], Any], s: "Settings", threads: int, cpus: int, retry_clock: list[float],
             probe: Optional[_HostProbe] = None) -> list[BlockStats]:
    """A block, and up to s.retries more while other processes (or the host) disturb it (pausing between tries,
    within the run's retry budget, whose spent seconds retry_clock[0] carries across calls)."""
    blocks = [_measure_block(fn, s, threads, cpus, probe)]
    while blocks[-1].disturbed and len(blocks) <= s.retries and retry_clock[0] < s.retry_budget_s:
        start = time.monotonic()
        time.sleep(s.retry_pause_s * len(blocks))
        blocks.append(_measure_block(fn, s, threads, cpus, probe))
        retry_clock[0] += time.monotonic() - start
    return blocks


def _noise_note(cond: Mapping[str, Any], threads: int, cpus: int) -> Optional[str]:
    """A warning text when other processes used enough CPU to disturb a `threads`-thread measurement."""
    foreign = cond.get("foreign_cpus", 0.0) + cond.get("steal_cpus", 0.0)
    spare = cpus - threads
    if foreign > spare + 0.2:
        return (f"other processes used {foreign:.2f} CPU(s) on average while {threads} of the {cpus} CPUs were "
                f"timed: the measurements are likely inflated; re-run when the machine is quiet")
    return None


def _time_block(fn: Callable[[], Any], s: Settings) -> list[float]:
    """Warm up, then time calls of fn until the budget is spent (within the repeat bounds)."""
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside a timed call would be noise
    try:
        k, t_end = 0, time.perf_counter() + s.warmup_s
        while k < s.min_warmup or time.perf_counter() < t_end:
            fn()
            k += 1
        samples: list[float] = []
        wall, clock = time.perf_counter, CLOCKS[s.clock]
        start = wall()
        while len(samples) < s.max_repeats and (len(samples) < s.min_repeats or wall() - start < s.budget_s):
            t0 = clock()
            fn()
            samples.append(clock() - t0)
        return samples
    finally:
        if gc_was:
            gc.enable()


class _Pool:
    """A fixed block of random float32 values; weights and inputs are views of it (values do not change
    timings, and drawing fresh random numbers for every op would dominate the profiling time)."""

    SIZE = 1 << 23  # 32 MiB

    def __init__(self, seed: int = 0):
        import numpy as np

        self.np = np
        rng = np.random.default_rng(seed)
        self.values = rng.standard_normal(self.SIZE, dtype=np.float32)
        self.offset = 0

    def array(self, shape: tuple[int, ...], scale: float = 1.0):
        np = self.np
        n = int(np.prod(shape))
        if n > self.SIZE:
            out = np.resize(self.values, shape)
        else:
            if self.offset + n > self.SIZE:
                self.offset = 0
            out = self.values[self.offset:self.offset + n].reshape(shape)
            self.offset = (self.offset + 4099) % self.SIZE  # the next array starts elsewhere
        return out * np.float32(scale) if scale != 1.0 else out

    def ids(self, n: int, vocab: int, seed: int = 1):
        return self.np.random.default_rng(seed).integers(0, vocab, size=n, dtype=self.np.int64)


def _rotation_bytes(target: Target, s: Settings) -> int:
    return int(s.rotation_factor * (target.l3_bytes or 32 << 20))


def _gemm_is_int8(spec: OpSpec, w: Workload) -> bool:
    """The int8 engine runs the layers' GEMMs on int8 weights; its pooler (the one tanh GEMM) stays float32."""
    return spec.kind == "gemm" and w.dtype == "int8" and spec.epilogue != "tanh"


def _gemm_copies(spec: OpSpec, rotation_bytes: int, weight_bytes: int = 4) -> int:
    return max(1, min(512, math.ceil(rotation_bytes / (weight_bytes * spec.K * spec.N))))


def _make_runner(spec: OpSpec, w: Workload, pool: _Pool, isa: str, rotation_bytes: int
                 ) -> tuple[Callable[[], Any], int]:
    """A zero-argument callable that runs the op once as the forward would, and the GEMM weight copies it cycles.

    Shapes: gemm a [M,K], w [N,K], bias [N], residual [M,N]; attention qkv [M, 3 H]; layernorm x [M,H];
    embeddings ids/positions/types [M] into word [V,H], position [P,H], token_type [2,H].
    """
    np, core, th = pool.np, _core(), w.num_threads
    M, B, T = w.tokens, w.batch_size, w.seq_len
    if spec.kind == "gemm":
        a = pool.array((spec.M, spec.K))
        weight = pool.array((spec.N, spec.K), 0.02)
        bias = pool.array((spec.N,), 0.02)
        int8 = _gemm_is_int8(spec, w)
        copies = _gemm_copies(spec, rotation_bytes, 1 if int8 else 4) if spec.cold else 1
        if int8:  # quantized once; the call quantizes its input rows, as the int8 forward does per linear layer
            q, scale = core.quantize_weights(weight)  # once; each copy only packs
            packed = [core.QuantizedLinear(q, scale, bias, isa) for _ in range(copies)]
        else:
            packed = [core.PackedLinear(weight, bias, isa) for _ in range(copies)]
        residual = pool.array((spec.M, spec.N)) if spec.epilogue == "residual" else None
        state = [0]

        def run():
            state[0] = (state[0] + 1) % copies
            return packed[state[0]](a, spec.epilogue, residual, th)

        return run, copies
    if spec.kind == "attention":
        qkv = pool.array((M, 3 * spec.heads * spec.head_dim))
        lens = [T] * B
        bf16 = _attention_is_bf16(w, isa)
        return (lambda: core.attention(qkv, lens, spec.heads, th, isa, bf16)), 1
    if spec.kind == "layernorm":
        x = pool.array((M, spec.hidden))
        g, b = np.ones(spec.hidden, np.float32), np.zeros(spec.hidden, np.float32)
        return (lambda: core.layernorm(x, g, b, LAYER_NORM_EPS, None, th, isa)), 1
    if spec.kind == "embeddings":
        h = spec.hidden
        word = pool.array((spec.vocab, h), 0.02)
        position = pool.array((max(T, 2), h), 0.02)
        token_type = pool.array((2, h), 0.02)
        g, b = np.ones(h, np.float32), np.zeros(h, np.float32)
        ids = pool.ids(M, spec.vocab)
        positions = np.tile(np.arange(T, dtype=np.int64), B)
        types = np.zeros(M, np.int64)
        return (lambda: core.embed_layernorm(ids, positions, types, word, position, token_type, g, b,
                                             LAYER_NORM_EPS, th, isa)), 1
    if spec.kind == "call":
        return _empty_call(spec.of, pool, th, isa, w), 1
    if spec.kind == "forward":
        enc, tables = _random_encoder(pool, spec.layers, CALIBRATION_HEADS, spec.hidden,
                                      CALIBRATION_INTERMEDIATE, CALIBRATION_VOCAB, max(T, 2), "pooler", th, isa,
                                      dtype=w.dtype)
        ids = pool.ids(M, CALIBRATION_VOCAB).reshape(B, T)

        def forward():
            return enc.forward(ids, None, None, True), tables

        return forward, 1
    raise ProfileError(f"unknown op kind {spec.kind!r}")


def _attention_is_bf16(w: Workload, isa: str) -> bool:
    return w.dtype == "int8" and "bf16" in _int8_attention_name(isa)


def _empty_call(kind: str, pool: _Pool, th: int, isa: str, w: Workload) -> Callable[[], Any]:
    """The smallest call of an op: what a single-op call costs beyond the work (binding, team start, join)."""
    np, core = pool.np, _core()
    if kind == "gemm":
        a = pool.array((1, 1))
        if w.dtype == "int8":  # an int8 layer GEMM's call: quantize one row, then the GEMM
            lin8 = core.QuantizedLinear(pool.array((1, 1)), None, None, isa)
            return lambda: lin8(a, "none", None, th)
        lin = core.PackedLinear(pool.array((1, 1)), None, isa)
        return lambda: lin(a, "none", None, th)
    if kind == "attention":
        qkv = pool.array((1, 3))
        bf16 = _attention_is_bf16(w, isa)
        return lambda: core.attention(qkv, [1], 1, th, isa, bf16)
    if kind == "layernorm":
        x = pool.array((1, 2))
        g, b = np.ones(2, np.float32), np.zeros(2, np.float32)
        return lambda: core.layernorm(x, g, b, LAYER_NORM_EPS, None, th, isa)
    if kind == "embeddings":
        table = pool.array((2, 2))
        g, b = np.ones(2, np.float32), np.zeros(2, np.float32)
        z = np.zeros(1, np.int64)
        return lambda: core.embed_layernorm(z, z, z, table, table, table, g, b, LAYER_NORM_EPS, th, isa)
    raise ProfileError(f"unknown op kind {kind!r}")


def _random_encoder(pool: _Pool, D: int, A: int, H: int, I: int, V: int, P: int, head: str, threads: int,
                    isa: str, word=None, dtype: str = "float32"):
    """A native Encoder with random weights (views of the pool; set_layer packs copies, so layers are distinct),
    and the embedding tables it references (keep them alive as long as the encoder).

    Shapes: word [V,H], position [P,H],
    token_type [2,H]; per layer q/k/v/ao [H,H], i [I,H], o [H,I], biases and LayerNorms [H] or [I].
    """
    np, core = pool.np, _core()
    enc = core.Encoder(H, D, A, I, V, P, 2, LAYER_NORM_EPS, threads, isa, dtype)
    ones, zeros = np.ones(H, np.float32), np.zeros(H, np.float32)
    word = pool.array((V, H), 0.02) if word is None else word
    emb = (np.ascontiguousarray(word), pool.array((P, H), 0.02).copy(), pool.array((2, H), 0.02).copy(), ones,
           zeros)
    enc.set_embeddings(*emb)
    s = 0.02
    for layer in range(D):
        enc.set_layer(layer, pool.array((H, H), s), pool.array((H,), s), pool.array((H, H), s),
                      pool.array((H,), s), pool.array((H, H), s), pool.array((H,), s), pool.array((H, H), s),
                      pool.array((H,), s), ones, zeros, pool.array((I, H), s), pool.array((I,), s),
                      pool.array((H, I), s), pool.array((H,), s), ones, zeros)
    if head != "none":
        enc.set_pooler(pool.array((H, H), s), pool.array((H,), s))
    return enc, emb  # the caller keeps the embedding tables alive as long as the encoder


def _estimate_cost(spec: OpSpec, w: Workload, s: Settings, rotation_bytes: int) -> float:
    """A-priori seconds to measure one block of an op (only ratios matter: the progress bar rescales)."""
    call = spec.flops(w) / (40e9 * w.num_threads) + 20e-6
    if spec.kind == "forward":
        call = 50e-6 * spec.layers
    setup = 0.0
    if spec.kind == "gemm":
        wb = 1 if _gemm_is_int8(spec, w) else 4
        setup = _gemm_copies(spec, rotation_bytes, wb) * (wb + 4) * spec.K * spec.N / 2e9
    elif spec.kind == "embeddings":
        setup = 4 * spec.vocab * spec.hidden / 1e9
    return setup + max(s.warmup_s, s.min_warmup * call) + max(s.budget_s, s.min_repeats * call)


def profile(space: SearchSpace | str = "bort", workload: Optional[Workload] = None, *, quick: bool = False,
            out: Optional[str | os.PathLike] = None, resume: bool = True, isa: Optional[str] = None,
            progress: bool = True, settings: Optional[Settings] = None, clock: Optional[str] = None) -> Profile:
    """Measure every op the space needs under the workload on this CPU; save (and return) the profile.

    The file (out, default: this CPU's file in the cache directory) is updated after every op, so Ctrl-C
    (ProfileInterrupted, a KeyboardInterrupt) keeps what was measured, and calling again resumes. Measurements
    already in the file are kept, except that a full run re-measures ops a quick run took. clock: "wall"
    (default) or "cpu" (one thread only, immune to other processes taking the CPU; see CLOCKS).
    """
    space = SearchSpace.resolve(space)
    workload = workload or Workload(num_threads=_available_cpus())
    cpus = _available_cpus()
    if workload.num_threads > cpus:
        raise ProfileError(f"num_threads={workload.num_threads} is more than the {cpus} CPU(s) this process may "
                           f"run on: threads would share cores and the timings would describe nothing real. Use "
                           f"--threads {cpus} or fewer")
    core = _core()
    if isa is not None and isa not in core.available_isas():
        raise ProfileError(f"isa {isa!r} cannot run here; this CPU and build offer {core.available_isas()}")
    settings = settings or (Settings.quick() if quick else Settings())
    if clock is not None:
        settings = replace(settings, clock=clock)
    _check_clock(settings.clock, workload)
    target = Target.current(isa)
    path = Path(out) if out else default_profile_path(target)

    prof: Optional[Profile] = None
    if resume and path.exists():
        prof = Profile.load(path)
        diffs = prof.target.differences(target)
        if diffs:
            raise ProfileError(f"{path} is a profile of another target ({'; '.join(diffs)}); measurements of two "
                               f"targets cannot share a file: pass another --out")
        if prof.target.core_build != target.core_build and workload.key in prof.workloads:
            warnings.warn(f"{path} was measured with another build of the native core ({prof.target.core_build}); "
                          f"its measurements are reused: pass --fresh (resume=False) if the kernels changed",
                          ProfileMismatchWarning, stacklevel=2)
        prof.target = target
    if prof is None:
        prof = Profile(target, path=path)
    wp = prof.workloads.get(workload.key)
    if wp is not None and resume and wp.clock != settings.clock:
        warnings.warn(f"{path} holds {wp.workload} measured with the {wp.clock} clock; re-measuring it with the "
                      f"{settings.clock} clock (the two do not mix)", RuntimeWarning, stacklevel=2)
        wp = None
    if wp is None or not resume:
        wp = prof.workloads[workload.key] = WorkloadProfile(workload, mode=settings.mode, blocks=settings.blocks,
                                                            clock=settings.clock)
    if space.name not in wp.spaces:
        wp.spaces.append(space.name)

    wanted = calibration_ops(workload) + required_ops(space, workload)
    roles: dict[OpSpec, tuple[str, ...]] = {}
    for spec, r in wanted:
        roles[spec] = tuple(dict.fromkeys(roles.get(spec, ()) + r))
    for spec, r in roles.items():
        m = wp.ops.get(spec.key)
        if m is None:
            continue
        if settings.mode == "full" and m.mode != "full":
            del wp.ops[spec.key]  # a full run re-measures what a quick run took; a quick run reuses full ops
        else:
            m.roles = tuple(dict.fromkeys(m.roles + r))
    # the work list: block b of every op that has fewer than b+1 clean blocks, pass by pass (a resumed run also
    # re-measures ops that only have disturbed blocks)
    def clean(spec: OpSpec) -> int:
        m = wp.ops.get(spec.key)
        return 0 if m is None else m.clean_blocks if m.mode == settings.mode else settings.blocks

    todo: list[tuple[int, OpSpec]] = []
    for b in range(settings.blocks):
        for spec in roles:
            if clean(spec) <= b:
                todo.append((b, spec))
    wp.refresh(settings)
    rotation = _rotation_bytes(target, settings)
    if not todo and wp.complete:
        prof.save(path)
        return prof
    if not todo:  # everything measured but not yet calibrated (a run interrupted right at the end)
        wp.calibration = _calibrate(wp)
        prof.save(path)
        return prof

    wp.calibration = None
    _warn_if_busy(workload, cpus)
    meter = _CpuMeter()
    bar = _Progress([_estimate_cost(spec, workload, settings, rotation) for _, spec in todo],
                    f"profile {space.name} {workload.key}", enabled=progress)
    pool = _Pool()
    isa_name = target.isa
    probe = _HostProbe(workload.num_threads, isa_name) if settings.host_probe else None
    done = 0
    retry_clock = [0.0]
    def measure(spec: OpSpec) -> None:
        nonlocal done
        run, copies = _make_runner(spec, workload, pool, isa_name, rotation)
        # warm-up runs every weight copy at least once: a copy's first use pays for its packing's aftermath (pages,
        # TLB entries) that a forward never pays, and quick blocks are too short to average that away
        block_settings = replace(settings, min_warmup=max(settings.min_warmup, copies))
        blocks = _measure(run, block_settings, workload.num_threads, cpus, retry_clock, probe)
        del run
        m = wp.ops.get(spec.key)
        if m is None:
            m = wp.ops[spec.key] = Measurement(spec, mode=settings.mode, roles=roles[spec], copies=copies)
        m.blocks.extend(blocks)
        m.copies = copies
        done += 1
        prof.save(path)

    try:
        for b, spec in todo:
            bar.show(spec.key)
            m = wp.ops.get(spec.key)
            if m is None or m.clean_blocks <= b:  # (retries of a disturbed block may already have given it)
                measure(spec)
            bar.step(spec.key)
        # a last try, after the passes, for ops whose every block was disturbed
        repairs = [x for x in roles if wp.ops[x.key].clean_blocks == 0]
        if repairs and retry_clock[0] < settings.retry_budget_s:
            bar.extend([_estimate_cost(x, workload, settings, rotation) for x in repairs])
            for spec in repairs:
                bar.show(spec.key + " (again: disturbed)")
                measure(spec)
                bar.step(spec.key)
    except KeyboardInterrupt:
        cond = meter.result()
        cond.update(interrupted=True)
        wp.conditions.append(cond)
        prof.save(path)
        if bar.enabled:
            sys.stderr.write("\n")
        raise ProfileInterrupted(path, done, len(todo)) from None
    bar.show("done", final=True)
    wp.refresh(settings)
    cond = meter.result()
    cond.update(ops=len(todo), mode=settings.mode)
    wp.conditions.append(cond)
    wp.conditions = wp.conditions[-5:]
    note = _noise_note(cond, workload.num_threads, cpus)
    if note:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    wp.calibration = _calibrate(wp)
    note = _calibration_note(wp.calibration)
    if note:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    prof.save(path)
    prof._models.clear()
    return prof


def _calibration_note(cal: Mapping[str, Any]) -> Optional[str]:
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


def _warn_if_busy(workload: Workload, cpus: int) -> None:
    now = _foreign_now()
    if "foreign_cpus" in now and _disturbed({**now, "seconds": 1.0}, workload.num_threads, cpus):
        warnings.warn(f"the machine is busy (other processes are using {now['foreign_cpus']:.2f} of {cpus} CPU(s), "
                      f"1-minute load average {now['loadavg_start'][0] if now.get('loadavg_start') else '?'}): "
                      f"timings will be inflated; measure when it is quiet (disturbed blocks are retried and "
                      f"flagged)", RuntimeWarning, stacklevel=3)


def _calibrate(wp: WorkloadProfile) -> dict[str, Any]:
    """The model's constants: empty-call cost per op kind, and per-op sync and per-forward fixed cost from the
    tiny encoders (forward(D) = a + b·D by least squares; b = their layer's ops + S sync, S per dtype)."""
    w = wp.workload
    M, B = w.tokens, w.batch_size
    h, a, i, v = CALIBRATION_HIDDEN, CALIBRATION_HEADS, CALIBRATION_INTERMEDIATE, CALIBRATION_VOCAB

    def ms(spec: OpSpec) -> float:
        m = wp.ops.get(spec.key)
        if m is None:
            raise ProfileError(f"calibration op {spec.key!r} was not measured")
        return m.ms

    call = {k: ms(OpSpec("call", of=k)) for k in ("gemm", "attention", "layernorm", "embeddings")}

    def net(spec: OpSpec) -> float:
        return max(0.0, ms(spec) - call[spec.kind])

    qkv, ao, ffn_in, ffn_out, pool = (OpSpec("gemm", M=m, K=k, N=n, epilogue=e, cold=False)
                                      for m, k, n, e in _calibration_gemms(w))
    layer = (net(qkv) + net(OpSpec("attention", heads=a, head_dim=h // a)) + net(ao)
             + 2 * net(OpSpec("layernorm", hidden=h)) + net(ffn_in) + net(ffn_out))
    xs = list(CALIBRATION_LAYERS)
    ys = [ms(OpSpec("forward", layers=d, hidden=h)) for d in xs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    sync = (slope - layer) / w.syncs_per_layer
    emb = net(OpSpec("embeddings", hidden=h, vocab=v))
    pooler = net(pool)
    fixed = intercept - emb - pooler - (SYNCS_EMBEDDINGS + SYNCS_POOLER) * sync
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys)]
    return {"call_ms": call, "sync_ms": sync, "fixed_ms": fixed,
            "tiny_forward_ms": {str(x): y for x, y in zip(xs, ys)},
            "tiny_fit": {"intercept_ms": intercept, "slope_ms": slope, "layer_ops_ms": layer,
                         "max_residual_ms": max(abs(r) for r in residuals)}}


# ============================================================================================ the latency model
@dataclass
class Prediction:
    """A predicted forward latency and where it comes from (ms). parts: per forward, layer terms already × D."""

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
        cal = wp.calibration
        self.call = {k: float(v) for k, v in cal["call_ms"].items()}
        self.sync = float(cal["sync_ms"])
        self.fixed = float(cal["fixed_ms"])
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
            pts = _merge([(dh, g) for _, dh, g in self.attention])
            if not pts:
                raise ProfileError(f"the profile has no attention measurement for {self.w}")
            g, extrapolated = _piecewise(pts, spec.head_dim)
            t = self._rounds(spec.heads) * g
        elif spec.kind in ("layernorm", "embeddings"):
            pts = _merge(self.layernorm if spec.kind == "layernorm" else self.embeddings)
            if not pts:
                raise ProfileError(f"the profile has no {spec.kind} measurement for {self.w}")
            t, extrapolated = _piecewise(pts, spec.hidden)
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
        c, extrapolated = _interpolate_2d(pts, math.log2(spec.K), math.log2(spec.N))
        return c * spec.M * spec.K * spec.N, extrapolated

    # -- a forward --------------------------------------------------------------------------------------------
    def predict(self, arch: Any) -> Prediction:
        D, A, H, I = architecture_dims(arch)
        head = getattr(arch, "head", "pooler")
        vocab = getattr(arch, "vocab_size", 30522)
        M, B = self.w.tokens, self.w.batch_size
        p = Prediction(0.0, {})
        emb = self._embeddings(H, vocab, p)
        layer = {
            "qkv": self.op_ms(OpSpec("gemm", M=M, K=H, N=3 * H, epilogue="none"), p),
            "attention": self.op_ms(OpSpec("attention", heads=A, head_dim=H // A), p),
            "attn_out": self.op_ms(OpSpec("gemm", M=M, K=H, N=H, epilogue="residual"), p),
            "layernorm": 2 * self.op_ms(OpSpec("layernorm", hidden=H), p),
            "ffn_in": self.op_ms(OpSpec("gemm", M=M, K=H, N=I, epilogue="gelu"), p),
            "ffn_out": self.op_ms(OpSpec("gemm", M=M, K=I, N=H, epilogue="residual"), p),
        }
        syncs = SYNCS_EMBEDDINGS + D * self.w.syncs_per_layer
        p.parts["fixed"] = self.fixed
        p.parts["embeddings"] = emb
        for k, v in layer.items():
            p.parts[k] = D * v
        if head != "none":
            p.parts["pooler"] = self.op_ms(OpSpec("gemm", M=B, K=H, N=H, epilogue="tanh"), p)
            syncs += SYNCS_POOLER
        p.parts["sync"] = syncs * self.sync
        p.total_ms = sum(p.parts.values())
        return p

    def _embeddings(self, H: int, vocab: int, p: Prediction) -> float:
        key = OpSpec("embeddings", hidden=H, vocab=vocab).key
        if key in self.exact:
            return self.exact[key]
        # another vocabulary size at the same H: the table size hardly matters (M random rows are read)
        same_h = [m for m in self.wp.ops.values() if m.spec.kind == "embeddings" and m.spec.hidden == H]
        if same_h:
            return self.exact[same_h[0].spec.key]
        return self.op_ms(OpSpec("embeddings", hidden=H, vocab=vocab), p)


def _merge(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted (x, y) with the median y for repeated x."""
    by: dict[float, list[float]] = {}
    for x, y in points:
        by.setdefault(x, []).append(y)
    return sorted((x, statistics.median(ys)) for x, ys in by.items())


def _piecewise(pts: Sequence[tuple[float, float]], x: float) -> tuple[float, bool]:
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


def _interpolate_2d(pts: Sequence[tuple[float, float, float]], x: float, y: float) -> tuple[float, bool]:
    """c at (x, y) = (log K, log N) from scattered measured points; see LatencyModel. Returns (c, extrapolated)."""
    eps = 1e-9
    for px, py, c in pts:
        if abs(px - x) < eps and abs(py - y) < eps:
            return c, False
    same_x = _merge((py, c) for px, py, c in pts if abs(px - x) < eps)
    if same_x:
        return _clamped_line(same_x, y)
    same_y = _merge((px, c) for px, py, c in pts if abs(py - y) < eps)
    if same_y:
        return _clamped_line(same_y, x)
    xs = sorted({px for px, _, _ in pts})
    ys = sorted({py for _, py, _ in pts})
    grid = {(round(px, 9), round(py, 9)): c for px, py, c in pts}
    lo_x = [v for v in xs if v < x]
    hi_x = [v for v in xs if v > x]
    lo_y = [v for v in ys if v < y]
    hi_y = [v for v in ys if v > y]
    # the tightest bracketing rectangle whose four corners were measured
    for x0 in reversed(lo_x):
        for x1 in hi_x:
            for y0 in reversed(lo_y):
                for y1 in hi_y:
                    corners = [grid.get((round(a, 9), round(b, 9))) for a in (x0, x1) for b in (y0, y1)]
                    if all(c is not None for c in corners):
                        c00, c01, c10, c11 = corners
                        fx, fy = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
                        return ((1 - fx) * ((1 - fy) * c00 + fy * c01) + fx * ((1 - fy) * c10 + fy * c11)), False
    inside = xs[0] <= x <= xs[-1] and ys[0] <= y <= ys[-1]
    # inverse-distance weighting of the four nearest; outside the range, clamp the query to its edge first
    qx, qy = min(max(x, xs[0]), xs[-1]), min(max(y, ys[0]), ys[-1])
    near = sorted(pts, key=lambda p: (p[0] - qx) ** 2 + (p[1] - qy) ** 2)[:4]
    weights = [1.0 / max((px - qx) ** 2 + (py - qy) ** 2, eps) for px, py, _ in near]
    return sum(wt * c for wt, (_, _, c) in zip(weights, near)) / sum(weights), not inside


def _clamped_line(pts: Sequence[tuple[float, float]], x: float) -> tuple[float, bool]:
    """Piecewise linear inside the points, the edge value outside."""
    if x <= pts[0][0]:
        return pts[0][1], x < pts[0][0]
    if x >= pts[-1][0]:
        return pts[-1][1], x > pts[-1][0]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0), False
    raise AssertionError("unreachable")


_EXTRAPOLATION_NOTE = ("the profile has no measurements near some op shapes of this architecture; their costs were "
                       "extrapolated. Profile a space that contains it (bortengine profile --space ...) for exact "
                       "figures")


def predict_latency(architecture: Any, workload: Workload, profile: Profile, *, detail: bool = False
                    ) -> float | Prediction:
    """Predicted forward latency (ms) of the engine for the architecture under the workload, from the profile.

    architecture: an Architecture, or a tuple (D, A, H, I) (pooler head, vocab 30522). detail=True returns the
    Prediction (the parts, and which op shapes were interpolated or extrapolated).
    """
    if not isinstance(profile, Profile):
        raise ProfileError(f"profile must be a Profile (see load_profile()), got {type(profile).__name__}")
    if not isinstance(workload, Workload):
        raise ProfileError(f"workload must be a Workload, got {type(workload).__name__}")
    if workload.num_threads > profile.target.logical_cpus:
        warnings.warn(f"workload {workload} asks for more threads than the {profile.target.logical_cpus} CPU(s) of "
                      f"the profiled target", RuntimeWarning, stacklevel=2)
    max_positions = getattr(architecture, "max_positions", None)
    if max_positions is not None and workload.seq_len > max_positions:
        raise ProfileError(f"workload sequences of {workload.seq_len} tokens exceed the architecture's "
                           f"max_positions={max_positions}")
    p = profile.model(workload).predict(architecture)
    if p.extrapolated:
        warnings.warn(_EXTRAPOLATION_NOTE, RuntimeWarning, stacklevel=2)
    return p if detail else p.total_ms


# ================================================================================================= validation
def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two equally long sequences (ties handled), O(n²)."""
    n = len(a)
    if n != len(b) or n < 2:
        raise ValueError("kendall_tau needs two sequences of the same length >= 2")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else 0.0


TARGETS = {"median_abs_error": 0.07, "worst_abs_error": 0.20, "kendall_tau": 0.9}


@dataclass
class ValidationRow:
    arch: tuple[int, int, int, int]
    predicted_ms: float
    measured_ms: float
    spread: float         # IQR / median of the measured block
    blocks_ms: list[float]
    noisy: bool
    predicted_parts: dict[str, float] = field(default_factory=dict)
    traced_parts: dict[str, float] = field(default_factory=dict)  # the encoder's own per-op trace, when it has one

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


@dataclass
class ValidationReport:
    """Predicted against measured forward latency of held-out architectures."""

    space: str
    workload: Workload
    target: Target
    rows: list[ValidationRow]
    conditions: dict[str, Any]
    seed: int
    mode: str
    profile_path: Optional[str] = None

    @property
    def abs_errors(self) -> list[float]:
        return [abs(r.error) for r in self.rows]

    @property
    def median_abs_error(self) -> float:
        return statistics.median(self.abs_errors)

    @property
    def worst_abs_error(self) -> float:
        return max(self.abs_errors)

    @property
    def mean_error(self) -> float:
        return statistics.fmean(r.error for r in self.rows)

    @property
    def kendall_tau(self) -> float:
        return kendall_tau([r.predicted_ms for r in self.rows], [r.measured_ms for r in self.rows])

    def passes(self) -> dict[str, bool]:
        return {"median_abs_error": self.median_abs_error <= TARGETS["median_abs_error"],
                "worst_abs_error": self.worst_abs_error <= TARGETS["worst_abs_error"],
                "kendall_tau": self.kendall_tau >= TARGETS["kendall_tau"]}

    def summary(self) -> dict[str, Any]:
        return {"n": len(self.rows), "median_abs_error": round(self.median_abs_error, 4),
                "worst_abs_error": round(self.worst_abs_error, 4), "mean_error": round(self.mean_error, 4),
                "kendall_tau": round(self.kendall_tau, 4), "targets": TARGETS, "passes": self.passes()}

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "workload": asdict(self.workload), "target": self.target.to_dict(),
                "profile": self.profile_path, "seed": self.seed, "mode": self.mode, "conditions": self.conditions,
                "summary": self.summary(),
                "rows": [{"arch": list(r.arch), "predicted_ms": round(r.predicted_ms, 4),
                          "measured_ms": round(r.measured_ms, 4), "error": round(r.error, 4),
                          "spread": round(r.spread, 4), "blocks_ms": [round(x, 4) for x in r.blocks_ms],
                          "noisy": r.noisy,
                          "predicted_parts_ms": {k: round(v, 4) for k, v in r.predicted_parts.items()},
                          "traced_parts_ms": {k: round(v, 4) for k, v in r.traced_parts.items()}}
                         for r in self.rows]}

    def table(self) -> str:
        lines = [f"validation: {len(self.rows)} architectures of the {self.space} space (seed {self.seed}), "
                 f"{self.workload}", f"target: {self.target.describe(self.workload.dtype)}",
                 f"{'architecture ⟨D,A,H,I⟩':<24} {'predicted ms':>13} {'measured ms':>12} {'error':>8} "
                 f"{'IQR %':>6}  flags"]
        for r in sorted(self.rows, key=lambda r: r.measured_ms):
            arch = "⟨{}, {}, {}, {}⟩".format(*r.arch)
            lines.append(f"{arch:<24} {r.predicted_ms:13.3f} {r.measured_ms:12.3f} {100 * r.error:+7.1f}% "
                         f"{100 * r.spread:6.1f}  {'NOISY' if r.noisy else ''}")
        ok = self.passes()
        mark = {True: "ok", False: "MISSED"}
        lines += [
            f"median |error| {100 * self.median_abs_error:.1f}% (target <= 7%: {mark[ok['median_abs_error']]}), "
            f"worst {100 * self.worst_abs_error:.1f}% (target <= 20%: {mark[ok['worst_abs_error']]}), "
            f"mean error {100 * self.mean_error:+.1f}%",
            f"Kendall's tau {self.kendall_tau:.3f} (target >= 0.9: {mark[ok['kendall_tau']]})",
            f"conditions: load average {self.conditions.get('loadavg_start')}, other processes used "
            f"{self.conditions.get('foreign_cpus', 0):.2f} CPU(s), steal {self.conditions.get('steal_cpus', 0):.2f}, "
            f"{self.conditions.get('seconds', 0):.0f} s"
            + (f"; host probe slowed up to {self.conditions['host_slowdown_max']:.2f}x, "
               f"{self.conditions.get('host_disturbed_blocks', 0)} block(s) counted as disturbed for it"
               if "host_slowdown_max" in self.conditions else "")]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> Path:
        """Predicted against measured latency (log-log), with y = x and the ±7% band. Needs matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ProfileError("the plot needs matplotlib: pip install 'bortengine[profile]' (or matplotlib)") \
                from None
        meas = [r.measured_ms for r in self.rows]
        pred = [r.predicted_ms for r in self.rows]
        lo, hi = min(meas + pred) / 1.3, max(meas + pred) * 1.3
        fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="predicted = measured")
        ax.fill_between([lo, hi], [lo * 0.93, hi * 0.93], [lo * 1.07, hi * 1.07], color="tab:green", alpha=0.15,
                        label="±7%")
        ax.plot([lo, hi], [lo * 0.8, hi * 0.8], color="tab:red", lw=0.8, ls=":")
        ax.plot([lo, hi], [lo * 1.2, hi * 1.2], color="tab:red", lw=0.8, ls=":", label="±20%")
        ax.scatter(meas, pred, color="tab:blue", zorder=3, s=22, label="held-out architectures")
        for r in self.rows:
            ax.annotate("{},{},{},{}".format(*r.arch), (r.measured_ms, r.predicted_ms), fontsize=6,
                        xytext=(3, -7), textcoords="offset points", color="0.35")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        # plain numbers at 1, 2, 5 x 10^k instead of crowded 10^k minor labels
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
        from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(FixedLocator(ticks))
            axis.set_major_formatter(lambda v, _: f"{v:g}")
            axis.set_minor_locator(NullLocator())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("measured forward latency (ms)")
        ax.set_ylabel("predicted forward latency (ms)")
        ax.set_title(f"{self.space} space, {self.workload.batch_size}×{self.workload.seq_len} tokens, "
                     f"{self.workload.num_threads} thread(s), {self.conditions.get('clock', 'wall')} clock, "
                     f"{len(self.rows)} held-out architectures\nmedian |err| {100 * self.median_abs_error:.1f}%, "
                     f"worst {100 * self.worst_abs_error:.1f}%, Kendall τ {self.kendall_tau:.3f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path


def _trace(enc: Any, forward: Callable[[], Any], runs: int = 5) -> dict[str, float]:
    """Median per-op-kind milliseconds from the encoder's own trace (Encoder.trace / last_trace), for diagnosing
    which term of the model is off; {} when the core has no trace."""
    from bortengine.engine import traced_forwards

    if not hasattr(enc, "trace"):
        return {}
    try:
        return traced_forwards(enc, forward, runs)[0]
    except (AttributeError, TypeError, ValueError):
        return {}


@dataclass
class _ValidationSettings:
    blocks: int = 3
    warmup_s: float = 0.3
    min_warmup: int = 2
    budget_s: float = 0.6
    min_repeats: int = 10
    max_repeats: int = 1000
    retries: int = 2
    retry_pause_s: float = 1.0
    retry_budget_s: float = 120.0
    max_spread: float = 0.04  # forwards of a quiet machine repeat within ~1-2 % (IQR / median)

    @classmethod
    def quick(cls) -> "_ValidationSettings":
        return cls(blocks=1, warmup_s=0.1, min_warmup=1, budget_s=0.25, min_repeats=5, max_repeats=200, retries=1,
                   retry_pause_s=0.5, retry_budget_s=10.0)


def validate(profile: Profile, space: SearchSpace | str = "bort", workload: Optional[Workload] = None, *,
             n: int = 12, seed: int = 0, quick: bool = False, progress: bool = True,
             architectures: Optional[Sequence[Any]] = None) -> ValidationReport:
    """Measure the engine's forward on n architectures sampled (seeded) from the space and compare with the
    profile's predictions. The model is built from single-op timings and tiny calibration encoders outside the
    space, so none of these architectures was used to build it.

    Each architecture's encoder is built with random weights (no torch), warmed up and timed like the ops: in
    `blocks` passes over all architectures, keeping the least-disturbed block's median.
    """
    space = SearchSpace.resolve(space)
    workload = workload or Workload(num_threads=_available_cpus())
    cpus = _available_cpus()
    if workload.num_threads > cpus:
        raise ProfileError(f"num_threads={workload.num_threads} is more than the {cpus} CPU(s) this process may "
                           f"run on; use --threads {cpus} or fewer")
    model = profile.model(workload)  # raises if the workload is not covered
    archs = list(architectures) if architectures is not None else space.sample(n, seed)
    if len(archs) < 2:
        raise ProfileError(f"validation needs at least 2 architectures, got {len(archs)}")
    for a in archs:
        if workload.seq_len > getattr(a, "max_positions", space.max_positions):
            raise ProfileError(f"workload sequences of {workload.seq_len} tokens exceed max_positions of {a}")
    s = _ValidationSettings.quick() if quick else _ValidationSettings()
    clock = profile.for_workload(workload).clock  # measured as the profile was
    isa = profile.target.isa
    if isa not in _core().available_isas():
        raise ProfileError(f"the profile's kernel path {isa!r} cannot run here; validate on the profiled machine")
    pool = _Pool(seed=1)
    np = pool.np
    B, T = workload.batch_size, workload.seq_len
    tables: dict[tuple[int, int], Any] = {}
    costs = [0.5 + s.warmup_s + max(s.budget_s, s.min_repeats * model.predict(a).total_ms * 1e-3)
             for _ in range(s.blocks) for a in archs]
    bar = _Progress(costs, f"validate {space.name} {workload.key}", enabled=progress)
    meter = _CpuMeter()
    blocks: list[list[BlockStats]] = [[] for _ in archs]
    traces: dict[int, dict[str, float]] = {}
    retry_clock = [0.0]
    _warn_if_busy(workload, cpus)
    probe = _HostProbe(workload.num_threads, isa)
    timing = Settings(warmup_s=s.warmup_s, min_warmup=s.min_warmup, budget_s=s.budget_s, min_repeats=s.min_repeats,
                      max_repeats=s.max_repeats, clock=clock, retries=s.retries, retry_pause_s=s.retry_pause_s,
                      retry_budget_s=s.retry_budget_s, max_spread=s.max_spread)

    def measure(k: int, arch: Any, trace: bool) -> None:
        D, A, H, I = architecture_dims(arch)
        V = getattr(arch, "vocab_size", space.vocab_size)
        head = getattr(arch, "head", space.head)
        if (V, H) not in tables:  # the word table is referenced by the encoder, one per (V, H)
            tables[(V, H)] = pool.array((V, H), 0.02).copy()
        bar.show("⟨{}, {}, {}, {}⟩".format(D, A, H, I))
        enc, keep = _random_encoder(pool, D, A, H, I, V, max(T, getattr(arch, "max_positions", 512)), head,
                                    workload.num_threads, isa, word=tables[(V, H)], dtype=workload.dtype)
        ids = pool.ids(B * T, V, seed=k).reshape(B, T)
        pooler = head != "none"
        blocks[k].extend(_measure(lambda: enc.forward(ids, None, None, pooler), timing, workload.num_threads, cpus,
                                  retry_clock, probe))
        if trace:
            traces[k] = _trace(enc, lambda: enc.forward(ids, None, None, pooler))
        del enc, keep
        bar.step("⟨{}, {}, {}, {}⟩".format(D, A, H, I))

    for b in range(s.blocks):
        for k, arch in enumerate(archs):
            measure(k, arch, trace=b == 0)
    # a last try for architectures whose every block was disturbed
    for k, arch in enumerate(archs):
        if all(x.disturbed for x in blocks[k]) and retry_clock[0] < s.retry_budget_s:
            measure(k, arch, trace=False)
    bar.show("done", final=True)
    cond = meter.result()
    note = _noise_note(cond, workload.num_threads, cpus)
    if note:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    rows = []
    for k, (arch, bl) in enumerate(zip(archs, blocks)):
        best = _best(bl)
        pred = model.predict(arch)
        rows.append(ValidationRow(arch=architecture_dims(arch), predicted_ms=pred.total_ms,
                                  measured_ms=best.median_ms, spread=best.spread,
                                  blocks_ms=[x.median_ms for x in bl],
                                  noisy=_noisy(best),
                                  predicted_parts=pred.parts, traced_parts=traces.get(k, {})))
    del np
    cond["clock"] = clock
    slow = [x.host_slowdown for bl in blocks for x in bl if x.host_slowdown is not None]
    if slow:
        cond["host_slowdown_max"] = max(slow)
        cond["host_disturbed_blocks"] = sum(1 for x in slow if x > probe.tolerance)
    return ValidationReport(space=space.name, workload=workload, target=profile.target, rows=rows,
                            conditions=cond, seed=seed, mode="quick" if quick else "full",
                            profile_path=str(profile.path) if profile.path else None)
