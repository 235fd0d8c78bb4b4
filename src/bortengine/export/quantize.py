"""Pre-converted checkpoints: store the linear weights of every encoder layer as the int8 or bf16 engine runs
them, so loading skips the conversion and the file shrinks (those weights go from 4 bytes to 1, or 2, per weight).

Which tensors those are is the engine's knowledge, not this module's: config.json says the family (BERT, RoBERTa,
XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA, MPNet: engine/families.py) and BertWeights.linear_weights names each
layer's six linear weights under the checkpoint's own names (DistilBERT's q_lin ... ffn.lin2, MPNet's attn.q ...
attn.o), after checking every name and shape as bortengine.load does. So a checkpoint converts exactly the tensors
the engine converts at load, layers x 6 of them, and a model the engine cannot load is refused with the engine's
reason rather than converted in part or not at all.

Formats: in model.safetensors (or in the shards a model.safetensors.index.json lists, each in its own shard; in a
sentence-transformers directory, those of the transformer's sub-folder), each of the six linear weights of every
encoder layer (query, key, value, attention output, intermediate, output) is stored
- int8: as I8 [out, in], with a float32 per-output-channel scale "<name>_scale" [out]: w ~= q * scale, q in
  [-127, 127], scale = max|w[row]| / 127 — exactly the rounding bortengine.load(dtype="int8") applies at load;
  but the output weight (FFN out), which int8 encoders run on the bf16 kernels where those run on AMX tiles
  (engine int8_kernels), as BF16 whatever CPU exports it (engine int8_stored_bf16): a CPU without tiles quantizes
  it at load;
  the layers an int8 calibration keeps out of int8 (float32 or bf16: config.json "bortengine_int8", bortengine.
  export.calibrate_int8) stay as they are;
- bf16: as BF16 [out, in], rounded to nearest even by the engine's own rounding (_core.to_bf16: what
  bortengine.load(dtype="bf16") does to float weights at load), which the bf16 engine packs as they are.
Everything else (embeddings, ELECTRA's embeddings_project, LayerNorm, biases, pooler, classifier heads, tensors the
engine ignores) stays as it was: the engine runs those in float32 whatever its dtype. bortengine.load reads such a
directory with its dtype directly, or with dtype="float32" by dequantizing (int8) or widening (bf16, exactly).
config.json records the scheme under "bortengine_quantization"; a sharded checkpoint's index names the int8 scales
in their weights' shards.

Torch-free: numpy, the engine's safetensors reader and writer, and the native module.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from bortengine.engine import (SCALE_SUFFIX, BertWeights, Checkpoint, ModelConfig, TensorEntry, core, int8_kernels,
                               int8_stored_bf16, read_safetensors_header, transformer_directory, write_safetensors)
from bortengine.errors import ModelLoadError
from bortengine.files import atomic_write_json, read_json

__all__ = ["quantize_checkpoint", "bf16_checkpoint", "SCHEME", "BF16_SCHEME"]

SCHEME = {"dtype": "int8", "weights": "per output channel, symmetric s8 in [-127, 127], scale = max|w| / 127",
          "activations": "per token, asymmetric u8, at run time", "scale_suffix": SCALE_SUFFIX,
          "ffn_out": "stored bf16 (rounded to nearest even); run in bf16 (fp32 accumulation) where the CPU's bf16 "
                     "GEMMs run on AMX tiles, else quantized at load as the others"}
BF16_SCHEME = {"dtype": "bf16", "weights": "bf16, rounded to nearest even (subnormals to zero)",
               "activations": "rounded to bf16 as each GEMM reads them, fp32 accumulation"}
# dtype -> the stored dtypes of a linear weight that a conversion to it starts from: what load(dtype=...) reads as
# float32 and then converts (a BF16 weight is widened exactly, then quantized; for bf16 it is already converted)
_SOURCES = {"int8": ("F32", "F16", "BF16", "F64"), "bf16": ("F32", "F16", "F64")}

# A converted linear weight: entry -> {name: (safetensors dtype, array)} to store in its place.
Conversion = Callable[[TensorEntry], dict[str, tuple[str, np.ndarray]]]


def _quantize(entry: TensorEntry) -> dict[str, tuple[str, np.ndarray]]:
    q, scale = core().quantize_weights(entry.read())
    return {entry.name: ("I8", q), entry.name + SCALE_SUFFIX: ("F32", scale)}


def _round_bf16(entry: TensorEntry) -> dict[str, tuple[str, np.ndarray]]:
    return {entry.name: ("BF16", core().to_bf16(entry.read()))}


# The stored dtype of a linear weight converted for the kernels it runs on, and its conversion.
_CONVERSIONS: dict[str, tuple[str, Conversion]] = {"int8": ("I8", _quantize), "bf16": ("BF16", _round_bf16)}


def quantize_checkpoint(model_dir: str | os.PathLike) -> dict:
    """Rewrite the safetensors of model_dir (model.safetensors, or each shard) with the linear weights as the int8
    engine reads them: int8 with their scales, FFN out bf16 (in place: the files replaced once all are written).
    Returns {"family": ..., "quantized": n_tensors (layers x 6), "bytes_before": ..., "bytes_after": ...}."""
    bf16 = int8_stored_bf16()
    return _rewrite(model_dir, {short: _CONVERSIONS["bf16" if short in bf16 else "int8"] for short in int8_kernels()},
                    SCHEME, "quantized")


def bf16_checkpoint(model_dir: str | os.PathLike) -> dict:
    """Rewrite the safetensors of model_dir (model.safetensors, or each shard) with BF16 linear weights (in place:
    the files replaced once all are written). Returns {"family": ..., "converted": n_tensors (layers x 6),
    "bytes_before": ..., "bytes_after": ...}."""
    return _rewrite(model_dir, dict.fromkeys(int8_kernels(), _CONVERSIONS["bf16"]), BF16_SCHEME, "converted")


def _rewrite(model_dir: str | os.PathLike, conversions: dict[str, tuple[str, Conversion]], scheme: dict,
             counted: str) -> dict:
    """The checkpoint bortengine.load reads in model_dir (model.safetensors, or the shards its index lists; in a
    sentence-transformers directory, those of the sub-folder modules.json names) with every linear weight of the
    encoder layers that is not yet stored as its conversion stores it (conversions: short name q/k/v/ao/i/o ->
    (stored dtype, conversion)) replaced by the conversion and the other tensors copied as they are:
    the files replaced once all are written (_rewrite_files), and a sharded checkpoint's index then naming the
    tensors convert adds (the int8 scales, in their weight's shard). config.json records the scheme. A checkpoint
    already converted is left as it is. Returns {"family", counted: tensors converted, "bytes_before",
    "bytes_after"}."""
    directory = transformer_directory(model_dir)
    try:
        checkpoint = Checkpoint.open(directory)
    except ModelLoadError as e:
        raise type(e)(f"cannot convert {model_dir} to {scheme['dtype']}: {e}") from e
    files = sorted({entry.file for entry in checkpoint.entries.values()})
    sharded = checkpoint.source.endswith(".index.json")
    if sharded and _index_every_tensor(Path(checkpoint.source), files):  # a conversion stopped before its index
        checkpoint = Checkpoint.open(directory)
    before = sum(file.stat().st_size for file in files)
    family, shorts = _linear_weights(directory, checkpoint, scheme["dtype"])
    linear = {name: conversions[short] for name, (short, _) in shorts.items()}
    wrong = [e.name for name, (_, e) in shorts.items()
             if e.dtype != linear[name][0] and e.dtype not in _SOURCES[scheme["dtype"]]]
    if wrong:
        raise ModelLoadError(
            f"{checkpoint.source} already stores its linear weights as {shorts[wrong[0]][1].dtype} ({wrong[0]}, "
            f"...), not as floats; a {scheme['dtype']} checkpoint is made from the float weights: convert the float "
            f"checkpoint instead (bortengine export RUN --out DIR --dtype {scheme['dtype']})")
    done = _rewrite_files(files, linear)
    if sharded:
        _index_every_tensor(Path(checkpoint.source), files)
    _record_scheme(directory / "config.json", scheme)
    return {"family": family, counted: done, "bytes_before": before,
            "bytes_after": sum(file.stat().st_size for file in files)}


def _rewrite_files(files: list[Path], linear: dict[str, tuple[str, Conversion]]) -> int:
    """Each safetensors file that holds tensors among `linear` (name -> (stored dtype, conversion)) not yet stored
    so, with those converted and every other tensor it holds copied as it is. Every converted file is written beside
    its original first (keeping its permissions; one file's tensors in memory at a time), and the originals replaced
    only once all are written: a conversion stopped on the way leaves the checkpoint as it was, not a mix of converted
    and float shards that nothing loads. Returns how many tensors were converted."""
    staged: list[Path] = []
    done = 0
    try:
        for path in files:
            entries = read_safetensors_header(path)
            todo = [name for name, entry in entries.items() if name in linear and entry.dtype != linear[name][0]]
            if not todo:
                continue
            tensors: dict[str, tuple[str, np.ndarray]] = {}
            for name, entry in entries.items():
                if name in todo:
                    tensors.update(linear[name][1](entry))
                elif name not in tensors:  # (a scale written by convert is not overwritten by the stored one)
                    tensors[name] = (entry.dtype, entry.read_stored())
            staged.append(path)
            write_safetensors(_staged(path), tensors, {"format": "pt"})
            shutil.copymode(path, _staged(path))
            done += len(todo)
        for path in staged:
            os.replace(_staged(path), path)
    finally:
        for path in staged:
            _staged(path).unlink(missing_ok=True)
    return done


def _staged(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _index_every_tensor(index: Path, files: list[Path]) -> bool:
    """A sharded checkpoint's index (model.safetensors.index.json) naming every tensor its shards hold, in the
    shard that holds it, and their total size: the scales a conversion added beside their weights (also those of a
    conversion stopped between a shard and the index, which converting again completes). Returns whether it
    named any it did not."""
    data = read_json(index, ModelLoadError)
    weight_map = data["weight_map"]   # (a dict of names to shard file names: Checkpoint.open checked it)
    headers = {file.name: read_safetensors_header(file) for file in files}
    added = {name: shard for shard, entries in headers.items() for name in entries if name not in weight_map}
    if added:
        weight_map.update(added)
        data.setdefault("metadata", {})["total_size"] = sum(
            entry.nbytes for entries in headers.values() for entry in entries.values())
        atomic_write_json(index, data, indent=2)
    return bool(added)


def _linear_weights(model_dir: Path, checkpoint: Checkpoint, dtype: str
                    ) -> tuple[str, dict[str, tuple[str, TensorEntry]]]:
    """(family name, checkpoint name -> (short name q/k/v/ao/i/o, entry)) of the linear weights of every encoder
    layer, as the engine finds
    them for the model's family (BertWeights.linear_weights), after checking config.json and every tensor name and
    shape of the checkpoint as bortengine.load does. Raises the engine's error, said as a conversion's, for a model
    it cannot load."""
    try:
        config = ModelConfig.from_file(model_dir)
        weights = BertWeights(checkpoint, config)
    except ModelLoadError as e:
        raise type(e)(f"cannot convert {model_dir} to {dtype}: the conversion stores the linear weights that "
                      f"bortengine.load(dtype={dtype!r}) converts, so it needs a model that bortengine.load "
                      f"reads, and this one it does not: {e}") from e
    kept = config.int8_kept_layers if dtype == "int8" else ()  # the layers an int8 calibration keeps stay float
    linear = {entry.name: (short, entry) for i in range(config.num_hidden_layers) if i not in kept
              for short, entry in weights.linear_weights(i)}
    return config.family.name, linear


def _record_scheme(config_path: Path, scheme: dict) -> None:
    if config_path.is_file():
        config = read_json(config_path, ModelLoadError)
        config["bortengine_quantization"] = scheme
        atomic_write_json(config_path, config, indent=2)
