"""bortengine: a compiled CPU inference engine for BERT-family encoders, and the Bort pipeline that extracts the fastest
accurate sub-architecture of a teacher for the CPU it will run on.

    import bortengine
    engine = bortengine.load("path/to/all-MiniLM-L6-v2")
    vectors = engine.encode(["A man is eating food.", "A man is eating a piece of bread."])

The stages, each a package (docs/architecture.md): engine (inference, torch-free), profiling, search, training,
export, cli. Importing the package imports the engine only; never torch.
"""
from __future__ import annotations

from bortengine.engine import (ClassificationResult, EncoderOutput, Engine, ModelConfig, RankedDocument, TokenEntity,
                               TokenizedTexts, available_cpus, available_isas, cpu_info, load)
from bortengine.errors import (BortEngineError, DeadlineExceeded, InvalidInputError, ModelLoadError, PerformanceWarning,
                               PromptWarning, RequestCancelled, TextTooLongError, TruncationWarning, UnknownOptionError,
                               UnsupportedModelError)
from bortengine.version import __version__

__all__ = [
    "load", "Engine", "EncoderOutput", "ClassificationResult", "TokenEntity", "RankedDocument", "ModelConfig",
    "TokenizedTexts", "cpu_info", "available_isas",
    "available_cpus", "BortEngineError", "InvalidInputError", "UnknownOptionError", "TextTooLongError",
    "TruncationWarning", "ModelLoadError",
    "UnsupportedModelError", "DeadlineExceeded", "RequestCancelled", "PerformanceWarning", "PromptWarning",
    "__version__",
]
