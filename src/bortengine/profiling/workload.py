"""The workload a profile is measured for: batch B of sequences of T tokens, a thread count and a dtype.

Latency depends on all four, so a profile holds measurements per workload (keyed by Workload.key).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from bortengine.engine import DTYPES  # the engine's dtypes: load(dtype=...) / Encoder(dtype=...)
from bortengine.profiling.errors import ProfileError


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

    def command(self) -> str:
        return (f"bortengine profile --batch {self.batch_size} --seq {self.seq_len} --threads {self.num_threads}"
                + ("" if self.dtype == "float32" else f" --dtype {self.dtype}"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Workload":
        return cls(int(d["batch_size"]), int(d["seq_len"]), int(d["num_threads"]), str(d.get("dtype", "float32")))
