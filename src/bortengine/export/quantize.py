"""Pre-converted checkpoints: store the linear weights of every encoder layer as the int8 or bf16 engine runs
them, so loading skips the conversion and the file shrinks (those weights go from 4 bytes to 1, or 2, per weight).

Formats: in model.safetensors, each of the six linear weights of every encoder layer (query, key, value, attention
output, intermediate, output) is stored
- int8: as I8 [out, in], with a float32 per-output-channel scale "<name>_scale" [out]: w ~= q * scale, q in
  [-127, 127], scale = max|w[row]| / 127 — exactly the rounding bortengine.load(dtype="int8") applies at load;
- bf16: as BF16 [out, in], rounded to nearest even by the engine's own rounding (_core.to_bf16: what
  bortengine.load(dtype="bf16") does to float weights at load), which the bf16 engine packs as they are.
Everything else (embeddings, LayerNorm, biases, pooler, classifier) stays as it was. bortengine.load reads such a
directory with its dtype directly, or with dtype="float32" by dequantizing (int8) or widening (bf16, exactly).
config.json records the scheme under "bortengine_quantization".

Torch-free: numpy, the engine's safetensors reader and writer, and the native module.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from bortengine.engine import (QUANTIZABLE_LAYER_WEIGHTS, SCALE_SUFFIX, TensorEntry, core, read_safetensors_header,
                               write_safetensors)
from bortengine.errors import ModelLoadError
from bortengine.files import atomic_write, atomic_write_json, read_json

__all__ = ["quantize_checkpoint", "bf16_checkpoint", "SCHEME", "BF16_SCHEME"]

SCHEME = {"dtype": "int8", "weights": "per output channel, symmetric s8 in [-127, 127], scale = max|w| / 127",
          "activations": "per token, asymmetric u8, at run time", "scale_suffix": SCALE_SUFFIX}
BF16_SCHEME = {"dtype": "bf16", "weights": "bf16, rounded to nearest even (subnormals to zero)",
               "activations": "rounded to bf16 as each GEMM reads them, fp32 accumulation"}
_FLOATS = ("F32", "F16", "F64")  # weights a conversion starts from

# A converted linear weight: entry -> {name: (safetensors dtype, array)} to store in its place.
Conversion = Callable[[TensorEntry], dict[str, tuple[str, np.ndarray]]]


def quantize_checkpoint(model_dir: str | os.PathLike) -> dict:
    """Rewrite model_dir/model.safetensors with int8 linear weights and their scales (in place, atomically).
    Returns {"quantized": n_tensors, "bytes_before": ..., "bytes_after": ...}."""
    def quantize(entry: TensorEntry) -> dict[str, tuple[str, np.ndarray]]:
        q, scale = core().quantize_weights(entry.read())
        return {entry.name: ("I8", q), entry.name + SCALE_SUFFIX: ("F32", scale)}

    done = _rewrite(model_dir, quantize, SCHEME, "I8")
    return {"quantized": done[0], "bytes_before": done[1], "bytes_after": done[2]}


def bf16_checkpoint(model_dir: str | os.PathLike) -> dict:
    """Rewrite model_dir/model.safetensors with BF16 linear weights (in place, atomically).
    Returns {"converted": n_tensors, "bytes_before": ..., "bytes_after": ...}."""
    def round_bf16(entry: TensorEntry) -> dict[str, tuple[str, np.ndarray]]:
        return {entry.name: ("BF16", core().to_bf16(entry.read()))}

    done = _rewrite(model_dir, round_bf16, BF16_SCHEME, "BF16")
    return {"converted": done[0], "bytes_before": done[1], "bytes_after": done[2]}


def _rewrite(model_dir: str | os.PathLike, convert: Conversion, scheme: dict, stored: str) -> tuple[int, int, int]:
    """model.safetensors with every float linear weight of the encoder layers replaced by convert(entry) and the
    other tensors copied as they are, written atomically (keeping the file's permissions); config.json records the
    scheme. A checkpoint already converted (its linear weights `stored`) is left as it is. Returns (tensors
    converted, bytes before, bytes after)."""
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist; converting a checkpoint needs a single-file safetensors model")
    before = path.stat().st_size
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    done = already = 0
    for name, entry in read_safetensors_header(path).items():
        linear = ".layer." in name and name.endswith(QUANTIZABLE_LAYER_WEIGHTS)
        already += linear and entry.dtype == stored
        if linear and entry.dtype in _FLOATS:
            tensors.update(convert(entry))
            done += 1
        elif name not in tensors:  # (a scale written by convert is not overwritten by the stored one)
            tensors[name] = (entry.dtype, entry.read_stored())
    if done == 0 and already == 0:
        raise ModelLoadError(f"{path} has no float encoder-layer linear weights to convert to {scheme['dtype']}")

    def write(tmp: Path) -> None:
        write_safetensors(tmp, tensors, {"format": "pt"})
        shutil.copymode(path, tmp)

    atomic_write(path, write)
    _record_scheme(Path(model_dir) / "config.json", scheme)
    return done, before, path.stat().st_size


def _record_scheme(config_path: Path, scheme: dict) -> None:
    if config_path.is_file():
        config = read_json(config_path, ModelLoadError)
        config["bortengine_quantization"] = scheme
        atomic_write_json(config_path, config, indent=2)
