"""What a profile holds per workload: the blocks timed for each op (Measurement), and a workload's measurements
with how they were taken and the calibration derived from them (WorkloadProfile). Both read and write the
profile file's JSON."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, TypeVar

from bortengine.profiling.errors import ProfileError
from bortengine.profiling.ops import OpSpec, current_roles
from bortengine.profiling.timing import CLOCKS, BlockStats, Settings, best_block, is_noisy
from bortengine.profiling.workload import Workload


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
        return best_block(self.blocks)

    @property
    def clean_blocks(self) -> int:
        return sum(1 for b in self.blocks if not b.disturbed)

    @property
    def ms(self) -> float:
        return self.best.median_ms

    @property
    def noisy(self) -> bool:
        return is_noisy(self.best)

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
                   roles=current_roles(d.get("roles", ())), copies=int(d.get("weight_copies", 1)))


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

    def refresh(self, settings: Settings) -> None:
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
            "ops": {k: m.to_dict(self.workload) for k, m in sorted(self.ops.items(), key=op_order)},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WorkloadProfile":
        w = Workload.from_dict(d["workload"])
        ops = read_keyed(d.get("ops", {}), Measurement.from_dict, lambda m: m.spec.key,
                         "measurement {key!r} describes op {actual!r}")
        clock = str(d.get("clock", "wall"))
        if clock not in CLOCKS:
            raise ProfileError(f"unknown clock {clock!r}")
        return cls(workload=w, ops=ops, mode=str(d.get("mode", "full")), blocks=int(d.get("blocks", 3)), clock=clock,
                   spaces=list(d.get("spaces", [])), calibration=d.get("calibration"),
                   conditions=list(d.get("conditions", [])))


Entry = TypeVar("Entry")


def read_keyed(entries: Mapping[str, Any], read: Callable[[Any], Entry], key_of: Callable[[Entry], str],
               mismatch: str) -> dict[str, Entry]:
    """The entries of a JSON object keyed by what each describes (an op's key, a workload's key), read; an entry
    whose key says otherwise raises ProfileError with `mismatch` (formatted with key and actual)."""
    out = {}
    for key, raw in entries.items():
        entry = read(raw)
        if key_of(entry) != key:
            raise ProfileError(mismatch.format(key=key, actual=key_of(entry)))
        out[key] = entry
    return out


def op_order(item: tuple[str, Measurement]) -> tuple:
    """Sort key of (op key, Measurement) items: how a profile file and its table list the ops."""
    s = item[1].spec
    kinds = ["call", "forward", "embeddings", "gemm", "attention", "layernorm"]
    return (kinds.index(s.kind) if s.kind in kinds else 99, s.M, s.K, s.N, s.epilogue, s.heads, s.head_dim,
            s.hidden, s.layers, s.of)
