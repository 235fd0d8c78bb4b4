"""`bortengine info`: this CPU, the instruction-set paths the build offers and the GEMM kernels of each (float32,
int8, bf16)."""
from __future__ import annotations

from bortengine.engine import available_cpus, core, cpu_info
from bortengine.version import __version__

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("info",)


def add_parsers(sub) -> None:
    sub.add_parser("info", help="CPU, instruction-set paths and GEMM kernels")


def run(args) -> int:
    info = cpu_info()
    print(f"bortengine {__version__}")
    print(f"CPU:            {info['vendor']} {info['model']}")
    print(f"flags:          {' '.join(info['flags'])}")
    print(f"logical CPUs:   {info['logical_cpus']} ({available_cpus()} available to this process)")
    if info["isa"]:
        print(f"default ISA:    {info['isa']} (kernel {info['kernel']}; force another with $BORTENGINE_ISA)")
    else:
        print(f"default ISA:    none: {info.get('default_isa_error', '$BORTENGINE_ISA cannot run here')}")
    print("available ISAs: " + ", ".join(f"{isa} ({core().kernel_name(isa)})" for isa in info["available_isas"]))
    # the kernel each path runs, then the others it could be forced to (tests do, by name)
    for dtype, kernel_names in (("int8", core().int8_kernel_names), ("bf16", core().bf16_kernel_names)):
        print(f"{dtype} kernels:   " + ", ".join(f"{isa} ({', '.join(kernel_names(isa))})"
                                              for isa in info["available_isas"]))
    return 0
