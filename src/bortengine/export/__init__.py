"""Export: what comes after training. `bortengine export` reads a pretrain/finetune run's model back (never
unpickling), writes the directory bortengine.load() reads and checks the engine against torch on it (hf.py);
pre-converted int8 and bf16 checkpoints (quantize.py); the int8 calibration that picks the layers an int8 engine
keeps in float32 (calibrate.py). The directory writer itself is training's
(training.write_hf_directory; `export` here is its older name)."""
from __future__ import annotations

from bortengine.export.calibrate import DEFAULT_MIN_COSINE, Int8Calibration, calibrate_int8, is_prequantized
from bortengine.export.quantize import BF16_SCHEME, SCHEME, bf16_checkpoint, quantize_checkpoint

__all__ = ["quantize_checkpoint", "bf16_checkpoint", "SCHEME", "BF16_SCHEME", "calibrate_int8", "Int8Calibration",
           "DEFAULT_MIN_COSINE", "is_prequantized", "export", "export_run",
           "check_export"]


def __getattr__(name: str):
    # The HF export needs torch: imported when first asked for, so `bortengine.export` stays torch-free.
    if name in ("export", "export_run", "check_export", "TOKENIZER_FILES"):
        from bortengine.export import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'bortengine.export' has no attribute {name!r}")
