"""The machine's fp32 multiply-add ceiling, measured by bench/fma_probe.cc (independent FMAs, no memory traffic).

`python bench/fma_peak.py [--threads N] [--seconds S]` prints GFLOP/s for ymm (AVX2+FMA) and, where the CPU has it,
zmm (AVX-512) FMAs on 1 and N threads, and where the CPU and OS have AMX-BF16 tiles, their bf16 rate (not an fp32
ceiling: the bf16 and int8 GEMMs run on them). The benchmark suite records the best as the ceiling no fp32 GEMM, and so no
fp32 engine, can pass on this machine: the report's "ceiling" lines use it. The probe is compiled with the system
C++ compiler (`$CXX`, else g++ or c++) into bench/.cache/ the first time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SOURCE = BENCH_DIR / "fma_probe.cc"
BINARY = BENCH_DIR / ".cache" / "fma_probe"


class ProbeUnavailable(RuntimeError):
    """No C++ compiler, or the probe would not build."""


def build() -> Path:
    """Compile the probe if it is missing or older than its source; returns the binary's path."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise ProbeUnavailable("no C++ compiler (set CXX, or install g++)")
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = BINARY.with_suffix(".tmp")
    proc = subprocess.run([cxx, "-O2", "-std=c++17", "-pthread", str(SOURCE), "-o", str(tmp)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProbeUnavailable(f"{cxx} could not build {SOURCE.name}: {proc.stderr.strip()[-500:]}")
    os.replace(tmp, BINARY)
    return BINARY


def measure(isa: str, threads: int, seconds: float = 1.0) -> float | None:
    """GFLOP/s of `threads` threads of independent `isa` ("ymm" or "zmm") FMAs, or of bf16 tile products ("amx");
    None if the CPU lacks them."""
    proc = subprocess.run([str(build()), isa, str(threads), str(seconds)], capture_output=True, text=True,
                          timeout=60 + 10 * seconds)
    if proc.returncode == 3:
        return None
    if proc.returncode != 0:
        raise ProbeUnavailable(f"fma_probe {isa} {threads} failed: {proc.stderr.strip()}")
    return float(proc.stdout)


def ceiling(threads: int, seconds: float = 1.0, repeats: int = 3) -> dict:
    """Best of `repeats` measurements per ISA on 1 and `threads` threads; "gflops" is the best of all."""
    out: dict = {"threads": threads}
    for isa in ("ymm", "zmm"):
        for n in sorted({1, threads}):
            values = [measure(isa, n, seconds) for _ in range(repeats)]
            out[f"{isa}_{n}"] = None if values[0] is None else max(values)
    out["gflops"] = max(v for k, v in out.items() if k != "threads" and k.endswith(f"_{threads}") and v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    c = ceiling(args.threads, args.seconds)
    for key, value in c.items():
        if key not in ("threads", "gflops"):
            isa, n = key.split("_")
            print(f"{isa} FMAs, {n} thread(s): " + ("not on this CPU" if value is None else f"{value:.1f} GFLOP/s"))
    print(f"ceiling on {args.threads} thread(s): {c['gflops']:.1f} GFLOP/s")
    for n in sorted({1, args.threads}):
        amx = max(measure("amx", n, args.seconds) or 0.0 for _ in range(3))
        print(f"amx bf16 tiles, {n} thread(s): " + (f"{amx:.1f} GFLOP/s" if amx else "not on this CPU (or OS)"))


if __name__ == "__main__":
    main()
