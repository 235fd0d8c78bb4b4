"""The CPU and engine a profile describes (Target), from this CPU's facts: the native module's CPU info and kernel
paths, the L3 cache size from sysfs, and the int8 encoder's attention kernel. Two targets with equal signature
fields time alike; a profile measured on another target loads with a warning listing the differences."""
from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from bortengine.engine import core, core_build
from bortengine.profiling.ops import (CALIBRATION_HEADS, CALIBRATION_HIDDEN, CALIBRATION_INTERMEDIATE,
                                      CALIBRATION_VOCAB, LAYER_NORM_EPS)
from bortengine.version import __version__


def l3_bytes() -> Optional[int]:
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


@functools.lru_cache(maxsize=None)
def int8_attention_name(isa: str) -> str:
    """The attention kernel an int8 Encoder uses on this path (bf16 where the CPU has AVX512_BF16)."""
    enc = core().Encoder(CALIBRATION_HIDDEN, 1, CALIBRATION_HEADS, CALIBRATION_INTERMEDIATE, CALIBRATION_VOCAB, 2,
                         2, LAYER_NORM_EPS, 1, isa, "int8")
    return str(enc.attention_kernel)


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
        native = core()
        info = native.cpu_info()
        chosen = isa or native.default_isa()
        return cls(vendor=str(info["vendor"]), model=str(info["model"]), flags=tuple(info["flags"]),
                   logical_cpus=int(info["logical_cpus"]), isa=chosen, kernel=native.kernel_name(chosen),
                   engine_version=__version__, core_build=core_build(), l3_bytes=l3_bytes(),
                   int8_kernel=native.int8_kernel_name(chosen), int8_attention=int8_attention_name(chosen))

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


def _short(v: Any) -> str:
    return "[" + " ".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else repr(v)
