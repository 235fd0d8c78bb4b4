"""The native module `bortengine._core` as the rest of the package sees it: loaded on first use (so `import
bortengine` works, and says how to fix it, without a build), and what it tells about this CPU.

Every stage that calls the kernels directly (the profiler times single ops) goes through `core()` here.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
from typing import Any, Optional

from bortengine.errors import BortEngineError

__all__ = ["core", "forward_ops", "available_cpus", "cgroup_cpu_quota", "cpu_info", "available_isas", "core_build"]


def core() -> Any:
    """The native module, imported on first use."""
    try:
        from bortengine import _core as native
    except ImportError as e:
        raise BortEngineError(
            f"bortengine's native module is not available ({e}); build it with `python setup.py build_ext "
            f"--inplace` in the source tree, or reinstall the package") from e
    return native


@functools.lru_cache(maxsize=None)
def forward_ops(isa: str = "") -> tuple[dict[str, Any], ...]:
    """The native forward's step table for kernel path isa ("": the default) on this CPU (_core.forward_ops), read
    once per path: it cannot change within a process. Shared: read it, do not change it."""
    return tuple(core().forward_ops(isa))


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core host gets 2), rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """CPUs' worth of time the process's cgroup may use per period (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us over
    cpu.cfs_period_us), or None without a quota."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
                                    ("cpu,cpuacct/cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_period_us")):
        try:
            fields = _read(os.path.join(root, quota_file)).split()
            if period_file is not None:
                fields.append(_read(os.path.join(root, period_file)).strip())
            quota, period = fields[0], float(fields[1])
        except (OSError, IndexError, ValueError):
            continue
        if quota == "max" or float(quota) <= 0 or period <= 0:
            return None
        return float(quota) / period
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def cpu_info() -> dict:
    """The CPU as the native module sees it: vendor, model, flags, available_isas, default_isa, logical_cpus; plus
    'isa' (the path load() uses by default, None if $BORTENGINE_ISA is unusable) and 'kernel' (its GEMM
    microkernel)."""
    native = core()
    info = dict(native.cpu_info())
    # default_isa is None when $BORTENGINE_ISA names a path this CPU cannot run (the native module then says why
    # in default_isa_error); cpu_info() still answers, so `bortengine info` can show the problem.
    info["isa"] = info.get("default_isa")
    info["kernel"] = native.kernel_name(info["isa"]) if info["isa"] else None
    return info


def available_isas() -> list[str]:
    """Kernel paths compiled in and runnable on this CPU, best first; pass one to load(isa=...)."""
    return list(core().available_isas())


def core_build() -> str:
    """First 16 hex digits of the native module's SHA-256: a rebuilt engine may have other kernels."""
    try:
        with open(core().__file__, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except (BortEngineError, OSError, AttributeError, TypeError):
        return "unknown"
