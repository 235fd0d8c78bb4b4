"""The native module `bortengine._core` as the rest of the package sees it: loaded on first use (so `import
bortengine` works, and says how to fix it, without a build), and what it tells about this CPU.

Every stage that calls the kernels directly (the profiler times single ops) goes through `core()` here.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import math
import os
import threading
from typing import Any, Optional

from bortengine.errors import BortEngineError

__all__ = ["core", "forward_ops", "available_cpus", "cgroup_cpu_quota", "cpu_info", "available_isas", "core_build",
           "native_call"]


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


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> Optional[float]:
    """CPUs' worth of time the process may use per period (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us over
    cpu.cfs_period_us), or None without a quota: the smallest quota on the way from the process's own cgroup (read
    from membership) up to the hierarchy's root, since a limit on a parent (a systemd slice or service's
    CPUQuota=, a Kubernetes pod) binds the cgroups below it. In a container with its own cgroup namespace the
    process's cgroup is the root; where its path is not under root (cgroup v1 in a container), root alone is read."""
    own = _own_cgroups(membership)
    quotas = []
    for hierarchy, controllers, quota_file, period_file in (
            (root, "", "cpu.max", None),
            (os.path.join(root, "cpu"), "cpu", "cpu.cfs_quota_us", "cpu.cfs_period_us"),
            (os.path.join(root, "cpu,cpuacct"), "cpu", "cpu.cfs_quota_us", "cpu.cfs_period_us")):
        directory = os.path.normpath(hierarchy + own.get(controllers, "/"))
        if not os.path.isdir(directory):
            directory = hierarchy
        while True:
            quota = _cpu_quota(directory, quota_file, period_file)
            if quota is not None:
                quotas.append(quota)
            if len(directory) <= len(hierarchy):
                break
            directory = os.path.dirname(directory)
    return min(quotas) if quotas else None


def _own_cgroups(membership: str) -> dict[str, str]:
    """The process's cgroup path per hierarchy from /proc/self/cgroup lines ("ID:CONTROLLERS:PATH"): "" for the v2
    hierarchy, "cpu" for the v1 one that has the cpu controller. {} where the file cannot be read."""
    try:
        lines = _read(membership).splitlines()
    except OSError:
        return {}
    own = {}
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        if controllers == "":
            own[""] = path
        elif "cpu" in controllers.split(","):
            own["cpu"] = path
    return own


def _cpu_quota(directory: str, quota_file: str, period_file: Optional[str]) -> Optional[float]:
    """One cgroup's quota in CPUs, None without one (or without the files)."""
    try:
        fields = _read(os.path.join(directory, quota_file)).split()
        if period_file is not None:
            fields.append(_read(os.path.join(directory, period_file)).strip())
        quota, period = fields[0], float(fields[1])
        if quota == "max" or float(quota) <= 0 or period <= 0:
            return None
        return float(quota) / period
    except (OSError, IndexError, ValueError):
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


class _NativeCalls:
    """The forwards running in native code with the GIL released, counted so that the interpreter's exit waits for
    them. A daemon thread still in one when Python finalizes is ended by pthread_exit as it takes the GIL back, in
    pybind11's gil_scoped_release destructor (noexcept): std::terminate, and the process aborts (exit code 134,
    "terminate called without an active exception": a service's daemon worker threads at most exits, a new-user
    trial). At exit the running ones are waited for (up to EXIT_WAIT_S), and a thread other than the main one that
    starts another then is parked, as a pure-Python daemon thread is frozen at exit."""

    EXIT_WAIT_S = 60.0

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.Lock())
        self.running = 0
        self.exiting = False

    # The main thread's calls are not counted: it runs the exit itself, so none of its forwards is running then (and
    # a Ctrl-C, which only it gets, cannot leave a count behind that the exit would wait for).
    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            return
        with self.changed:
            if self.exiting:
                self.changed.wait()      # for good: the interpreter is going away
            self.running += 1

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            return
        with self.changed:
            self.running -= 1
            if not self.running:
                self.changed.notify_all()

    def at_exit(self) -> None:
        with self.changed:
            self.exiting = True
            self.changed.wait_for(lambda: self.running == 0, timeout=self.EXIT_WAIT_S)


_NATIVE_CALLS = _NativeCalls()
atexit.register(_NATIVE_CALLS.at_exit)


def native_call() -> _NativeCalls:
    """`with native_call():` around a native call that releases the GIL (see _NativeCalls)."""
    return _NATIVE_CALLS
