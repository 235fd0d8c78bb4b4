"""Export: a trained run or model to a Hugging Face directory bortengine.load() reads, checked against the
engine; and int8 pre-quantized checkpoints."""
from __future__ import annotations

from bortengine.export.quantize import SCHEME, quantize_checkpoint

__all__ = ["quantize_checkpoint", "SCHEME", "export", "export_run", "check_export"]


def __getattr__(name: str):
    # The HF export needs torch: imported when first asked for, so `bortengine.export` stays torch-free.
    if name in ("export", "export_run", "check_export", "TOKENIZER_FILES"):
        from bortengine.export import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'bortengine.export' has no attribute {name!r}")
