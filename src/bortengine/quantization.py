"""The old import path of int8 checkpoints: see bortengine.export.quantize."""
from bortengine.export import SCHEME, quantize_checkpoint

__all__ = ["quantize_checkpoint", "SCHEME"]
