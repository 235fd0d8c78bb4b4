"""The CPU and engine a profile describes (Target), from this CPU's facts: the native module's CPU info and kernel
paths, the CPUID family, model and stepping from /proc/cpuinfo, the L2 and L3 cache sizes from sysfs, the int8
encoder's attention kernel, and the rate of the calibration probe (cpu_probe). Two targets with equal signature
fields, equal CPUID and caches where both know them, and probe rates within the tolerance time alike; a profile
measured on another target loads with a warning listing the differences (TargetMatch). A profile from before exact
targets (no probe rate) cannot be checked, and says so."""
from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from bortengine.engine import core, core_build
from bortengine.profiling.cpu_probe import (LOAD_SLOWDOWN, PROBE, PROBE_TOLERANCE, confirmed_gflops, probe_gflops,
                                            rates_differ)
from bortengine.profiling.ops import (CALIBRATION_HEADS, CALIBRATION_HIDDEN, CALIBRATION_INTERMEDIATE,
                                      CALIBRATION_VOCAB, LAYER_NORM_EPS)
from bortengine.version import __version__

# where this CPU's facts are read (tests point these at fake trees)
CPUINFO = Path("/proc/cpuinfo")
CACHE_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
CPUID_KEYS = {"cpu family": "cpu_family", "model": "cpu_model", "stepping": "cpu_stepping"}  # x86 /proc/cpuinfo
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def cpuid(cpuinfo: Optional[Path] = None) -> dict[str, Optional[int]]:
    """The first CPU's CPUID family, model and stepping from /proc/cpuinfo (x86); None for what it does not say."""
    out: dict[str, Optional[int]] = dict.fromkeys(CPUID_KEYS.values())
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return out
    for line in text.split("\n\n", 1)[0].splitlines():   # the first processor's block
        key, _, value = line.partition(":")
        name = CPUID_KEYS.get(key.strip())
        if name is not None and value.strip().isdigit():
            out[name] = int(value.strip())
    return out


def cache_bytes(level: int, sysfs: Optional[Path] = None) -> Optional[int]:
    """The largest data or unified cache of a level (3: the largest of level 3 and above) from sysfs (Linux), as
    the first CPU sees it, else None."""
    best = None
    for index in sorted((sysfs or CACHE_SYSFS).glob("index*")):
        try:
            found = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
            kind = (index / "type").read_text().strip() if (index / "type").exists() else "Unified"
        except (OSError, ValueError):
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        if not m or kind == "Instruction" or not (found == level or (level >= 3 and found >= 3)):
            continue
        n = int(m.group(1)) * SIZE_UNITS[m.group(2)]
        if best is None or n > best:
            best = n
    return best


@functools.lru_cache(maxsize=None)
def int8_attention_name(isa: str) -> str:
    """The attention kernel an int8 (or bf16) Encoder uses on this path (bf16 where the CPU has AVX512_BF16)."""
    enc = core().Encoder(CALIBRATION_HIDDEN, 1, CALIBRATION_HEADS, CALIBRATION_INTERMEDIATE, CALIBRATION_VOCAB, 2,
                         2, LAYER_NORM_EPS, 1, isa, "int8")
    return str(enc.attention_kernel)


@dataclass(frozen=True)
class Target:
    """The CPU and engine a profile describes. Two targets with equal `signature_fields`, equal `optional_fields`
    where both know them, and probe rates within the tolerance time alike (cpu_differences)."""

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
    int8_attention: str = "unknown"  # (the bf16 engine's attention too)
    cpu_family: Optional[int] = None   # CPUID, from /proc/cpuinfo (x86; None elsewhere and in older profiles)
    cpu_model: Optional[int] = None
    cpu_stepping: Optional[int] = None
    l2_bytes: Optional[int] = None
    probe: Optional[str] = None        # the calibration probe's definition (cpu_probe.PROBE) and its rate
    probe_gflops: Optional[float] = None
    bf16_kernel: str = "unknown"     # the bf16 GEMM kernel of this path (dtype bf16 workloads)

    # what must match for a profile's numbers to describe this machine (core_build is compared separately; the
    # int8 kernels, CPUID and caches only when both sides name them: profiles of earlier versions do not)
    signature_fields = ("vendor", "model", "flags", "logical_cpus", "isa", "kernel")
    optional_fields = ("int8_kernel", "int8_attention", "cpu_family", "cpu_model", "cpu_stepping", "l2_bytes",
                       "l3_bytes", "bf16_kernel")

    @classmethod
    def current(cls, isa: Optional[str] = None) -> "Target":
        """This machine on the kernel path isa (default: the engine's), with this process's probe rate."""
        native = core()
        info = native.cpu_info()
        chosen = isa or native.default_isa()
        return cls(vendor=str(info["vendor"]), model=str(info["model"]), flags=tuple(info["flags"]),
                   logical_cpus=int(info["logical_cpus"]), isa=chosen, kernel=native.kernel_name(chosen),
                   engine_version=__version__, core_build=core_build(), l3_bytes=cache_bytes(3),
                   int8_kernel=native.int8_kernel_name(chosen), int8_attention=int8_attention_name(chosen),
                   bf16_kernel=native.bf16_kernel_name(chosen),
                   **cpuid(), l2_bytes=cache_bytes(2), probe=PROBE, probe_gflops=round(probe_gflops(chosen), 2))

    @property
    def checkable(self) -> bool:
        """Whether this target can be told apart from another CPU that reports the same name and flags: it has the
        rate of this version's calibration probe (profiles from before exact targets do not)."""
        return self.probe == PROBE and self.probe_gflops is not None

    @property
    def signature(self) -> str:
        """File-name-safe name of the target, e.g. 'authenticamd-amd-epyc-f25m17s1-avx512-2cpu' (without the
        CPUID part where it is unknown, as in profiles of earlier versions)."""
        if self.cpu_family is None:
            return self.legacy_signature
        return _file_name(f"{self.vendor}-{self.model}-f{self.cpu_family}m{self.cpu_model}s{self.cpu_stepping}-"
                          f"{self.isa}-{self.logical_cpus}cpu")

    @property
    def legacy_signature(self) -> str:
        """The signature of versions before exact targets (their profile files are named by it)."""
        return _file_name(f"{self.vendor}-{self.model}-{self.isa}-{self.logical_cpus}cpu")

    def cpu_differences(self, other: "Target") -> list[str]:
        """Human-readable differences of CPU and kernel path that change timings (the engine version aside)."""
        out = []
        for name in self.signature_fields:
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name} {_short(a)} vs {_short(b)}")
        for name in self.optional_fields:
            a, b = getattr(self, name), getattr(other, name)
            if a != b and "unknown" not in (a, b) and None not in (a, b):
                out.append(f"{name} {_short(a)} vs {_short(b)}")
        if (self.checkable and other.checkable and self.isa == other.isa
                and rates_differ(self.probe_gflops, other.probe_gflops)):
            out.append(f"calibration probe {self.probe_gflops:.0f} vs {other.probe_gflops:.0f} GFLOP/s (more than "
                       f"{100 * PROBE_TOLERANCE:.0f}% apart)")
        return out

    def differences(self, other: "Target") -> list[str]:
        """Human-readable differences that change timings (CPU, kernel path, engine version)."""
        out = self.cpu_differences(other)
        if self.engine_version != other.engine_version:
            out.append(f"engine version {self.engine_version} vs {other.engine_version}")
        return out

    def apart_by_load_alone(self, found: "Target") -> bool:
        """Whether `found` (this machine's target, confirmed against this one) differs from it by the probe rate
        alone, beyond the tolerance but within what load on a core can cause either way (LOAD_SLOWDOWN): a busy
        core now or while the profile was measured, or another clock of the same CPU, which the probe cannot tell
        apart."""
        if not (self.checkable and found.checkable and self.isa == found.isa
                and rates_differ(self.probe_gflops, found.probe_gflops)):
            return False
        within = not rates_differ(self.probe_gflops, found.probe_gflops, tolerance=LOAD_SLOWDOWN - 1.0)
        return within and not self.cpu_differences(replace(found, probe_gflops=self.probe_gflops))

    def confirmed_against(self, expected: "Target") -> "Target":
        """This (current) target with its probe re-run after short pauses while it is slower than `expected`'s
        beyond the tolerance (load slows a probe; another CPU stays slow); the same target when there is nothing to
        compare (another kernel path, or `expected` has no probe rate)."""
        if not (self.checkable and expected.checkable and self.isa == expected.isa):
            return self
        return replace(self, probe_gflops=round(confirmed_gflops(self.isa, expected.probe_gflops), 2))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        d["signature"] = self.signature
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Target":
        def number(name: str, kind: type) -> Any:
            return None if d.get(name) is None else kind(d[name])

        return cls(vendor=str(d["vendor"]), model=str(d["model"]), flags=tuple(d["flags"]),
                   logical_cpus=int(d["logical_cpus"]), isa=str(d["isa"]), kernel=str(d["kernel"]),
                   engine_version=str(d["engine_version"]), core_build=str(d.get("core_build", "unknown")),
                   l3_bytes=number("l3_bytes", int), int8_kernel=str(d.get("int8_kernel", "unknown")),
                   int8_attention=str(d.get("int8_attention", "unknown")), cpu_family=number("cpu_family", int),
                   cpu_model=number("cpu_model", int), cpu_stepping=number("cpu_stepping", int),
                   l2_bytes=number("l2_bytes", int), probe=None if d.get("probe") is None else str(d["probe"]),
                   probe_gflops=number("probe_gflops", float), bf16_kernel=str(d.get("bf16_kernel", "unknown")))

    def describe(self, dtype: Optional[str] = None) -> str:
        kernels = self.kernel
        if dtype == "int8":
            kernels = f"{self.int8_kernel}, {self.int8_attention}"
        elif dtype == "bf16":
            kernels = f"{self.bf16_kernel}, {self.int8_attention}"
        elif dtype is None and self.int8_kernel != "unknown":
            kernels = f"{self.kernel}; int8: {self.int8_kernel}, {self.int8_attention}"
            if self.bf16_kernel != "unknown":
                kernels += f"; bf16: {self.bf16_kernel}"
        cpuid_part = ("" if self.cpu_family is None else
                      f" (family {self.cpu_family} model {self.cpu_model} stepping {self.cpu_stepping})")
        caches = ", ".join(f"{name} {size / 2**20:g} MiB" for name, size in (("L2", self.l2_bytes),
                                                                              ("L3", self.l3_bytes)) if size)
        probe = (f"probe {self.probe_gflops:.0f} GFLOP/s" if self.checkable else
                 "no probe rate: from before exact CPU targets" if self.probe is None else
                 "probe of another bortengine version")
        return (f"{self.vendor} {self.model}{cpuid_part}, {self.logical_cpus} logical CPU(s)"
                f"{', ' + caches if caches else ''}, {self.isa} ({kernels}), {probe}, bortengine "
                f"{self.engine_version} (core build {self.core_build})")


@dataclass(frozen=True)
class TargetMatch:
    """A profile's target (expected) against this machine (found, on the same kernel path where it can run it)."""

    expected: Target
    found: Target

    @property
    def checkable(self) -> bool:
        """False for a profile from before exact targets: it may be of another CPU behind the same name."""
        return self.expected.checkable

    @property
    def differences(self) -> list[str]:
        return self.expected.cpu_differences(self.found)

    @property
    def same_cpu(self) -> bool:
        """The profile's numbers describe this machine's CPU and kernel path (checked, and no difference)."""
        return self.checkable and not self.differences

    def describe_both(self) -> str:
        """Both targets on two lines, for a message."""
        return (f"  profile  {self.expected.signature}: {self.expected.describe()}\n"
                f"  here     {self.found.signature}: {self.found.describe()}")

    @classmethod
    def of(cls, expected: Target) -> "TargetMatch":
        """This machine against `expected`: on its kernel path when this CPU and build can run it, the probe
        confirmed (Target.confirmed_against)."""
        isa = expected.isa if expected.isa in core().available_isas() else None
        return cls(expected, Target.current(isa).confirmed_against(expected))


def _file_name(raw: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")


def _short(v: Any) -> str:
    return "[" + " ".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else repr(v)
