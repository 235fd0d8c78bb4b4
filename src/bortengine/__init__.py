"""bortengine: a compiled CPU inference engine for BERT encoders.

    import bortengine
    engine = bortengine.load("path/to/all-MiniLM-L6-v2")
    vectors = engine.encode(["A man is eating food.", "A man is eating a piece of bread."])

A thin layer over the private native module `bortengine._core`; importing the package never imports torch.
"""
from __future__ import annotations

from .config import ModelConfig
from .engine import ClassificationResult, EncoderOutput, Engine, available_cpus, load
from .errors import BortEngineError, InvalidInputError, ModelLoadError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "load", "Engine", "EncoderOutput", "ClassificationResult", "ModelConfig", "cpu_info", "available_isas",
    "available_cpus", "BortEngineError", "InvalidInputError", "ModelLoadError", "UnsupportedModelError",
    "__version__",
]


def cpu_info() -> dict:
    """The CPU as the native module sees it: vendor, model, flags, available_isas, default_isa, logical_cpus; plus
    'isa' (the path load() uses by default, None if $BORTENGINE_ISA is unusable) and 'kernel' (its GEMM
    microkernel)."""
    from .engine import _core

    core = _core()
    info = dict(core.cpu_info())
    # default_isa is None when $BORTENGINE_ISA names a path this CPU cannot run (the native module then says why
    # in default_isa_error); cpu_info() still answers, so `bortengine info` can show the problem.
    info["isa"] = info.get("default_isa")
    info["kernel"] = core.kernel_name(info["isa"]) if info["isa"] else None
    return info


def available_isas() -> list[str]:
    """Kernel paths compiled in and runnable on this CPU, best first; pass one to load(isa=...)."""
    from .engine import _core

    return list(_core().available_isas())
