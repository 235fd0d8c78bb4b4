"""Pre-quantized int8 checkpoints: store the weights the int8 engine runs, so loading skips quantization and the
file shrinks (the linear layers of every encoder layer go from 4 bytes to 1 byte per weight).

Format: in model.safetensors, each of the six linear weights of every encoder layer (query, key, value, attention
output, intermediate, output) is stored as I8 [out, in], with a float32 per-output-channel scale
"<name>_scale" [out]: w ~= q * scale, q in [-127, 127], scale = max|w[row]| / 127 — exactly the rounding
bortengine.load(dtype="int8") applies at load. Everything else (embeddings, LayerNorm, biases, pooler,
classifier) stays float. bortengine.load reads such a directory with dtype="int8" directly, or with dtype="float32"
by dequantizing. config.json records the scheme under "bortengine_quantization".

Torch-free: numpy, safetensors and the native module.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from bortengine.engine import QUANTIZABLE_LAYER_WEIGHTS, SCALE_SUFFIX
from bortengine.errors import ModelLoadError
from bortengine.files import atomic_write, atomic_write_json, read_json

__all__ = ["quantize_checkpoint", "SCHEME"]

SCHEME = {"dtype": "int8", "weights": "per output channel, symmetric s8 in [-127, 127], scale = max|w| / 127",
          "activations": "per token, asymmetric u8, at run time", "scale_suffix": SCALE_SUFFIX}


def quantize_checkpoint(model_dir: str | os.PathLike) -> dict:
    """Rewrite model_dir/model.safetensors with int8 linear weights and their scales (in place, atomically).
    Returns {"quantized": n_tensors, "bytes_before": ..., "bytes_after": ...}."""
    from safetensors.numpy import load_file, save_file

    from bortengine.engine import core as _core

    core = _core()
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist; quantize_checkpoint needs a single-file safetensors model")
    before = path.stat().st_size
    tensors = load_file(str(path))
    done = 0
    for name in list(tensors):
        if ".layer." in name and name.endswith(QUANTIZABLE_LAYER_WEIGHTS):
            w = tensors[name]
            if w.dtype == np.int8:
                continue  # already quantized
            q, scale = core.quantize_weights(np.ascontiguousarray(w, dtype=np.float32))
            tensors[name], tensors[name + SCALE_SUFFIX] = q, scale
            done += 1
    if done == 0 and not any(t.dtype == np.int8 for t in tensors.values()):
        raise ModelLoadError(f"{path} has no encoder-layer linear weights to quantize")

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        shutil.copymode(path, tmp)  # keep the original file's permissions

    atomic_write(path, write)
    config_path = Path(model_dir) / "config.json"
    if config_path.is_file():
        config = read_json(config_path, ModelLoadError)
        config["bortengine_quantization"] = SCHEME
        atomic_write_json(config_path, config, indent=2)
    return {"quantized": done, "bytes_before": before, "bytes_after": path.stat().st_size}
