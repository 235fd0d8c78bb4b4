"""Reading encoder weights from safetensors files one tensor at a time, and checking them against the config.

Why not safetensors.safe_open or a memory map: loading must keep peak RSS within 1.2x the fp32 weights + 64 MiB.
The engine packs every layer's linear weights into its own layout, so a mapped file (whose touched pages count
as resident) plus the packed copies would hold the model twice. Here the header is parsed by hand (8-byte
little-endian length, then JSON), validated before any data is read, and each tensor is read with plain file
reads into a fresh float32 array that the caller drops once the engine has packed it. Half and double precision
are converted in bounded chunks so a conversion never holds a second full-size copy. Every size config.json
claims is checked against the header before anything is sized by it, and every tensor read is checked finite.

Names: the canonical names are transformers' BertModel names (embeddings.*, encoder.layer.{i}.*, pooler.*) plus
classifier.* (and pre_classifier.*: DistilBERT's, ELECTRA's classifier.dense) of the heads, ELECTRA's
embeddings_project.* and MPNet's encoder.relative_attention_bias.weight. Each family maps its checkpoint names onto
them (engine/families.py: "bert."/"roberta."/"distilbert."/"electra."/"mpnet." prefixes, DistilBERT's q_lin...,
MPNet's attn.q..., RoBERTa's classifier.dense and out_proj, legacy LayerNorm.gamma / beta); position_ids buffers
and pre-training heads are ignored.

Shapes: H = hidden size, I = intermediate size, V = vocab size, P = max positions, Tt = token types,
L = number of labels, E = embedding width (H but in ELECTRA), A = heads, R = relative position buckets (MPNet).
"""
from __future__ import annotations

import collections
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from bortengine.engine.config import MAX_CONFIG_BYTES, ModelConfig
from bortengine.engine.families import supported_classes
from bortengine.engine.native import core, forward_ops
from bortengine.engine.positions import relative_position_bias
from bortengine.errors import ModelLoadError
from bortengine.files import is_regular_file, read_json

__all__ = ["TensorEntry", "read_safetensors_header", "write_safetensors", "Checkpoint", "BertWeights",
           "expected_tensors", "LAYER_TENSORS"]

# safetensors dtype name -> (bytes per element, NumPy dtype to read the raw bytes as). None: not readable here.
_DTYPES: dict[str, tuple[int, Optional[str]]] = {
    "BOOL": (1, "|b1"), "U8": (1, "|u1"), "I8": (1, "|i1"), "F8_E4M3": (1, None), "F8_E5M2": (1, None),
    "I16": (2, "<i2"), "U16": (2, "<u2"), "F16": (2, "<f2"), "BF16": (2, "<u2"),
    "I32": (4, "<i4"), "U32": (4, "<u4"), "F32": (4, "<f4"),
    "I64": (8, "<i8"), "U64": (8, "<u8"), "F64": (8, "<f8"),
}
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
# The safetensors library allows headers of up to 100 MB; an encoder checkpoint's is kilobytes (a tensor's entry is
# ~100 bytes), and parsing a 74 MB header of a million entries took ~9 s and ~0.9 GB before it was refused.
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_CONVERT_CHUNK_BYTES = 8 * 1024 * 1024  # half/double tensors are converted this many source bytes at a time

# The 16 tensors of one encoder layer, in the order of _core.Encoder.set_layer, with their shapes.
LAYER_TENSORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention.self.query.weight", ("H", "H")), ("attention.self.query.bias", ("H",)),
    ("attention.self.key.weight", ("H", "H")), ("attention.self.key.bias", ("H",)),
    ("attention.self.value.weight", ("H", "H")), ("attention.self.value.bias", ("H",)),
    ("attention.output.dense.weight", ("H", "H")), ("attention.output.dense.bias", ("H",)),
    ("attention.output.LayerNorm.weight", ("H",)), ("attention.output.LayerNorm.bias", ("H",)),
    ("intermediate.dense.weight", ("I", "H")), ("intermediate.dense.bias", ("I",)),
    ("output.dense.weight", ("H", "I")), ("output.dense.bias", ("H",)),
    ("output.LayerNorm.weight", ("H",)), ("output.LayerNorm.bias", ("H",)),
)
EMBEDDING_TENSORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embeddings.word_embeddings.weight", ("V", "E")),
    ("embeddings.position_embeddings.weight", ("P", "E")),
    ("embeddings.token_type_embeddings.weight", ("Tt", "E")),
    ("embeddings.LayerNorm.weight", ("E",)), ("embeddings.LayerNorm.bias", ("E",)),
)
# ELECTRA with embedding_size != hidden_size: the Linear from the embeddings to the layers
PROJECTION_TENSORS = (("embeddings_project.weight", ("H", "E")), ("embeddings_project.bias", ("H",)))
# MPNet: the relative position bias of every layer's attention, one value per (distance bucket, head)
RELATIVE_BIAS_TENSORS = (("encoder.relative_attention_bias.weight", ("R", "A")),)
POOLER_TENSORS = (("pooler.dense.weight", ("H", "H")), ("pooler.dense.bias", ("H",)))
# The six linear weights of a layer: those load(dtype="int8" | "bf16") converts. A pre-quantized checkpoint
# (bortengine export --dtype int8) stores each as I8 [out, in] with a float32 per-output-channel scale
# "<name>_scale" [out] (w ~= q * scale), but FFN out ("output.dense.weight"), which int8 encoders run on the bf16
# kernels where those run on AMX tiles (int8_kernels, int8_stored_bf16), as BF16; each is converted at load for the
# kernels this CPU runs it on (exports made before hold FFN out as I8 with its scale too).
QUANTIZABLE_LAYER_WEIGHTS = (
    "attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
    "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight",
)
SCALE_SUFFIX = "_scale"
# The six linear weights by the names _core.Encoder.set_layer_quantized / set_layer_bf16 take them under.
_LINEAR_SHORT_NAMES = dict(zip(("q", "k", "v", "ao", "i", "o"), QUANTIZABLE_LAYER_WEIGHTS))
# The forward step (csrc/forward.h) each of them is the weight of.
_LINEAR_STEPS = {"q": "qkv", "k": "qkv", "v": "qkv", "ao": "attention_out", "i": "ffn_in", "o": "ffn_out"}


# The smallest float32 magnitude that rounds to an infinite bfloat16: the largest finite one, (2 - 2^-7) x 2^127, plus
# half its step.
_BF16_OVERFLOW = (2 - 2 ** -8) * 2.0 ** 127


def int8_kernels(isa: str = "") -> dict[str, str]:
    """Short linear name (q, k, v, ao, i, o) -> the kernels an int8 encoder of kernel path isa ("": the default)
    runs it on, on this CPU: "int8", or "bf16" for FFN out where the path's bf16 GEMMs run on AMX tiles
    (csrc/forward.h int8_in_bf16: its GELU input's outlier channels would cost trained models' tokens up to 0.03 of
    cosine to float32 in int8; without tiles a bf16 GEMM is no faster than a float32 one, so it stays int8)."""
    kernels = {step["name"]: step["kernels"]["int8"] for step in forward_ops(isa) if step["kind"] == "gemm"}
    return {short: kernels[step] for short, step in _LINEAR_STEPS.items()}


def int8_stored_bf16() -> frozenset[str]:
    """The short linear names a pre-quantized checkpoint stores as BF16 rather than I8: those int8 encoders run on
    the bf16 kernels where they can (csrc/forward.h int8_in_bf16), whatever the exporting CPU runs: a CPU without
    tiles quantizes them at load."""
    marked = {step["name"] for step in forward_ops() if step["kind"] == "gemm" and step["int8_in_bf16"]}
    return frozenset(short for short, step in _LINEAR_STEPS.items() if step in marked)


CLASSIFIER_TENSORS = (("classifier.weight", ("L", "H")), ("classifier.bias", ("L",)))
PRE_CLASSIFIER_TENSORS = (("pre_classifier.weight", ("H", "H")), ("pre_classifier.bias", ("H",)))

_DIM_FIELDS = {"H": "hidden_size", "I": "intermediate_size", "V": "vocab_size", "P": "max_position_embeddings",
               "Tt": "type_vocab_size", "L": "num_labels", "E": "embedding_size", "A": "num_attention_heads",
               "R": "relative_attention_num_buckets"}
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.", "embeddings_project.")


def _bf16_as_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bits [N] uint16 as float32 [N]: the upper half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: file, absolute byte offset, byte count; its safetensors dtype and shape."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def read_int8(self, symmetric: bool = False) -> np.ndarray:
        """An I8 tensor (pre-quantized weights) as a fresh int8 C-contiguous array. symmetric: for the int8 kernels,
        whose range is [-127, 127] (-128 has no positive twin; bortengine export never writes it): refused if not."""
        q = self._read_raw("I8", np.int8)
        low = int(np.count_nonzero(q == -128)) if symmetric else 0
        if low:
            raise ModelLoadError(f"{self.file}: tensor {self.name} holds {low} value(s) of -128, where the int8 "
                                 f"kernels take [-127, 127] (symmetric int8, as bortengine export writes it): load "
                                 f"it with dtype='float32', or re-export it")
        return q

    def read_bf16(self) -> np.ndarray:
        """A BF16 tensor as a fresh uint16 C-contiguous array of its bits (the engine's bf16 kernels take them as
        they are: no round trip through float32)."""
        bits = self._read_raw("BF16", np.dtype("<u2"))
        flat = bits.reshape(-1)
        if flat.size and int((flat & 0x7FFF).max()) >= 0x7F80:   # exponent all ones: Inf (mantissa 0) or NaN
            self._check_finite(_bf16_as_float32(flat))
        return bits

    def read_stored(self) -> np.ndarray:
        """The tensor as stored, in a fresh array of the NumPy type its bytes read as (_DTYPES: uint16 bits for
        BF16): what write_safetensors takes to copy it into another file unchanged."""
        raw_dtype = _DTYPES[self.dtype][1]
        if raw_dtype is None:
            raise ModelLoadError(f"{self.file}: tensor {self.name} has dtype {self.dtype}, which bortengine does not "
                                 f"read")
        return self._read_raw(self.dtype, np.dtype(raw_dtype))

    def _read_raw(self, dtype: str, np_dtype) -> np.ndarray:
        """The tensor's bytes as they are, in a fresh C-contiguous array of np_dtype shaped as the tensor (dtype: its
        safetensors name, checked)."""
        if self.dtype != dtype:
            raise ModelLoadError(f"{self.file}: tensor {self.name} has dtype {self.dtype}, expected {dtype}")
        out = self._allocate(np_dtype)
        try:
            with open(self.file, "rb") as f:
                f.seek(self.offset)
                got = f.readinto(out.view(np.uint8))
                if got != self.nbytes:
                    raise self._truncated(got)
        except OSError as e:
            raise ModelLoadError(f"{self.file}: cannot read tensor {self.name}: {e}") from e
        return out.astype(out.dtype.newbyteorder("="), copy=False).reshape(self.shape)

    def read(self, within_bf16: bool = False) -> np.ndarray:
        """The tensor as a fresh float32 C-contiguous array (F16/BF16/F64 converted in bounded chunks), checked
        finite; within_bf16: also within bfloat16's range (for weights the engine rounds to it)."""
        if self.dtype not in _FLOAT_DTYPES:
            raise ModelLoadError(
                f"{self.file}: tensor {self.name} has dtype {self.dtype}; weights must be F32, F16, BF16 or F64")
        out = self._allocate(np.float32)
        try:
            with open(self.file, "rb") as f:
                f.seek(self.offset)
                if self.dtype == "F32":
                    got = f.readinto(out.view(np.uint8))
                    if got != self.nbytes:
                        raise self._truncated(got)
                    if np.dtype("<f4") != np.dtype(np.float32):  # big-endian host
                        out.byteswap(inplace=True)
                else:
                    self._read_converted(f, out)
        except OSError as e:
            raise ModelLoadError(f"{self.file}: cannot read tensor {self.name}: {e}") from e
        self._check_finite(out, within_bf16)
        return out.reshape(self.shape)

    def _allocate(self, dtype) -> np.ndarray:
        """An empty 1-D array for the tensor's values; a size the machine cannot hold is the package's error (a
        header and config that agree on a 64 GiB embedding table raised numpy's MemoryError)."""
        count = math.prod(self.shape)
        try:
            return np.empty(count, dtype=dtype)
        except MemoryError:
            need = count * np.dtype(dtype).itemsize
            size = f"{need / 2 ** 30:.1f} GiB" if need >= 2 ** 30 else f"{need / 2 ** 20:.1f} MiB"
            raise ModelLoadError(f"{self.file}: tensor {self.name} {list(self.shape)} needs {size} "
                                 f"of memory as {np.dtype(dtype).name}, which this machine cannot allocate: the model "
                                 f"is too large for it (or its config and header were made to claim this size)"
                                 ) from None

    def _check_finite(self, values: np.ndarray, within_bf16: bool = False) -> None:
        """Refuse NaN and Inf: one of them in a weight makes every output NaN, silently. values is 1-D. Its dot
        product with itself is finite when every value is (NaN and Inf propagate), and is one BLAS pass: 4 ms for
        all-MiniLM-L6-v2's 22.7 M weights, against 6 ms for a sum and 16 ms for np.isfinite(values).all(). Only a
        non-finite product (or finite values large enough to overflow it) counts them. within_bf16: also refuse a
        value too large for bfloat16 (rounded to it, it would be Inf; such a value overflows the product too)."""
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(values, values)):
                return
        nan = int(np.count_nonzero(np.isnan(values)))
        inf = int(np.count_nonzero(np.isinf(values)))
        if nan or inf:
            raise ModelLoadError(
                f"{self.file}: tensor {self.name} holds {nan + inf} non-finite value(s) of {values.size} ({nan} NaN, "
                f"{inf} Inf); every output would be NaN. The checkpoint is corrupt or was saved after training "
                f"diverged: re-export it from a good checkpoint")
        over = int(np.count_nonzero(np.abs(values) >= _BF16_OVERFLOW)) if within_bf16 else 0
        if over:
            raise ModelLoadError(f"{self.file}: tensor {self.name} holds {over} value(s) too large for bfloat16 (at "
                                 f"least {_BF16_OVERFLOW:.4g}), which this engine rounds it to; load it with "
                                 f"dtype='float32', or fix the checkpoint")

    def _read_converted(self, f, out: np.ndarray) -> None:
        itemsize, raw_dtype = _DTYPES[self.dtype]
        step = max(1, _CONVERT_CHUNK_BYTES // itemsize)
        done, total = 0, out.size
        while done < total:
            n = min(step, total - done)
            raw = np.empty(n, dtype=raw_dtype)
            got = f.readinto(raw.view(np.uint8))
            if got != n * itemsize:
                raise self._truncated(done * itemsize + got)
            if self.dtype == "BF16":  # bfloat16 is the top half of a float32
                out[done:done + n] = (raw.astype(np.uint32) << 16).view(np.float32)
            else:
                out[done:done + n] = raw
            done += n

    def _truncated(self, got: int) -> ModelLoadError:
        return ModelLoadError(
            f"{self.file} is truncated: tensor {self.name} needs {self.nbytes} bytes at offset {self.offset} but "
            f"only {got} could be read; re-download or re-save the file")


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorEntry]:
    """Parse and validate a safetensors header without reading tensor data.

    Checks: the length prefix fits the file, the header is a JSON object, each entry has a known dtype, a shape of
    non-negative integers and data_offsets [begin, end] inside the file whose span equals prod(shape) x itemsize,
    and no two tensors overlap. Raises ModelLoadError naming the file (and tensor) on any failure.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelLoadError(f"{path} is {size} bytes, too small to be a safetensors file (truncated?)")
            header_len = int.from_bytes(prefix, "little")
            # (the length itself is not said: a link to another file would have its first 8 bytes told)
            if 8 + header_len <= size and header_len > _MAX_HEADER_BYTES:
                raise ModelLoadError(
                    f"{path}: its header (the JSON that lists the tensors) is longer than the {_MAX_HEADER_BYTES} "
                    f"bytes an encoder's checkpoint needs (its header lists a few hundred tensors in kilobytes); "
                    f"it is not a checkpoint of a model this engine runs")
            if 8 + header_len > size:
                raise ModelLoadError(
                    f"{path} is not a valid safetensors file: its header claims more bytes than the {size - 8} "
                    f"that follow the 8-byte length that starts the file (truncated or not safetensors)")
            header_bytes = f.read(header_len)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as e:   # ValueError: JSON's, UTF-8's, int()'s digit limit
        raise ModelLoadError(f"{path} is not a valid safetensors file: its header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path} is not a valid safetensors file: its header is not a JSON object")

    data_start = 8 + header_len
    data_size = size - data_start
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        bad = f"{path}: tensor {name} has a malformed header entry"
        if not isinstance(info, dict):
            raise ModelLoadError(f"{bad}: {info!r}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ModelLoadError(f"{bad}: unknown dtype {dtype!r} (known: {sorted(_DTYPES)})")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ModelLoadError(f"{bad}: shape must be a list of non-negative integers, got {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ModelLoadError(f"{bad}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        begin, end = offsets
        itemsize = _DTYPES[dtype][0]
        if end - begin != math.prod(shape) * itemsize:
            raise ModelLoadError(
                f"{bad}: shape {shape} of {dtype} needs {math.prod(shape) * itemsize} bytes but data_offsets "
                f"{offsets} span {end - begin}")
        if end > data_size:
            raise ModelLoadError(
                f"{path} is truncated: tensor {name} ends at data byte {end} but the file holds only {data_size} "
                f"bytes of data; re-download or re-save the file")
        entries[name] = TensorEntry(name, path, dtype, tuple(shape), data_start + begin, end - begin)

    spans = sorted((e.offset, e.offset + e.nbytes, e.name) for e in entries.values() if e.nbytes)
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise ModelLoadError(f"{path} is corrupt: tensors {name_a} and {name_b} overlap")
    # Bytes no tensor covers (a gap, or anything after the last tensor) are refused as the safetensors library
    # refuses them ("file not fully covered"): what transformers cannot load is not loaded here either.
    uncovered = data_size - sum(e.nbytes for e in entries.values())
    if uncovered:
        raise ModelLoadError(
            f"{path} is corrupt: {uncovered} of its {data_size} data bytes belong to no tensor (after the last one "
            f"or between two); the safetensors library refuses such a file too. Re-download or re-save it")
    return entries


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, tuple[str, np.ndarray]],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write one safetensors file (the format read_safetensors_header reads): tensors maps a name to (safetensors
    dtype, array of its values as TensorEntry.read_stored gives them: e.g. uint16 bits for BF16). Data follows the
    header 8-byte aligned, in the order given. Why not the safetensors library's writers: they take NumPy dtypes,
    and NumPy has no bfloat16."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (dtype, array) in tensors.items():
        if _DTYPES[dtype][0] != array.itemsize:
            raise ValueError(f"tensor {name}: a {dtype} tensor needs {_DTYPES[dtype][0]}-byte elements, got "
                             f"{array.dtype}")
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _, array in tensors.values():
            f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


class Checkpoint:
    """The tensors of a model directory: model.safetensors, or shards listed by model.safetensors.index.json."""

    def __init__(self, entries: dict[str, TensorEntry], source: str):
        self.entries = entries
        self.source = source

    @classmethod
    def open(cls, model_dir: str | os.PathLike) -> "Checkpoint":
        model_dir = Path(model_dir)
        single = model_dir / "model.safetensors"
        index = model_dir / "model.safetensors.index.json"
        if single.is_file():
            return cls(read_safetensors_header(single), str(single))
        if index.is_file():
            return cls(_read_sharded(index), str(index))
        others = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
                              "flax_model.msgpack", "model.ckpt.index") if (model_dir / n).exists()]
        if others:
            raise ModelLoadError(
                f"{model_dir} has {', '.join(others)} but no model.safetensors; bortengine reads safetensors only "
                f"(pickled .bin files can run arbitrary code and must be loaded whole). {_conversion(model_dir)}")
        odd = next((p for p in (single, index) if p.exists()), None)   # a device, a folder, a FIFO: not read
        if odd is not None:
            raise ModelLoadError(f"{odd} is not a regular file (a folder, a device or a pipe, or a link to one); "
                                 f"the weights must be a safetensors file")
        raise ModelLoadError(
            f"{model_dir} has no weights: expected model.safetensors or model.safetensors.index.json")


def _conversion(model_dir: Path) -> str:
    """How to write model_dir's weights as safetensors with transformers, with the class of its config.json
    architectures (a token classifier's head is kept only by ...ForTokenClassification, a sequence classifier's by
    ...ForSequenceClassification; AutoModel would drop either). Only class names the engine runs are printed: the
    command is for pasting, and config.json may hold anything."""
    try:
        architectures = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        architectures = None
    known = set(supported_classes())
    names = [a for a in architectures if isinstance(a, str) and a in known] if isinstance(architectures, list) else []
    cls = names[0] if names else "AutoModel"
    where = repr(str(model_dir))
    command = (f"python -c \"from transformers import {cls}; m = {cls}.from_pretrained({where}); "
               f"m.save_pretrained({where}, safe_serialization=True)\"")
    if names:
        return f"Convert once with: {command}"
    return (f"Convert once with: {command} (AutoModelForSequenceClassification for a sequence classifier, "
            f"AutoModelForTokenClassification for a token classifier: AutoModel drops their heads)")


def _read_sharded(index: Path) -> dict[str, TensorEntry]:
    data = read_json(index, ModelLoadError, max_bytes=MAX_CONFIG_BYTES)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(f"{index} has no \"weight_map\" object of tensor name -> shard file name")
    headers: dict[str, dict[str, TensorEntry]] = {}
    entries: dict[str, TensorEntry] = {}
    for name, shard in weight_map.items():
        shard_path = index.parent / shard
        if shard not in headers:
            if Path(shard).name != shard:
                raise ModelLoadError(f"{index}: shard {shard!r} must be a file name in the model directory")
            if not is_regular_file(shard_path, ModelLoadError):   # (a folder or /dev/zero: said what it is)
                raise ModelLoadError(f"{index} lists shard {shard} for {name}, but {shard_path} does not exist")
            headers[shard] = read_safetensors_header(shard_path)
        if name not in headers[shard]:
            raise ModelLoadError(f"{index} says {name} is in {shard}, but that shard has no tensor of that name")
        entries[name] = headers[shard][name]
    return entries


def expected_tensors(config: ModelConfig, pooler: bool) -> dict[str, tuple[str, ...]]:
    """Canonical tensor name -> symbolic shape (letters of the module header) that the engine needs: the encoder,
    the pooler if it is run, and the model's head."""
    names = dict(EMBEDDING_TENSORS)
    if not config.family.token_type_table:
        del names["embeddings.token_type_embeddings.weight"]
    if config.projects_embeddings:
        names.update(PROJECTION_TENSORS)
    if config.relative_attention_num_buckets:
        names.update(RELATIVE_BIAS_TENSORS)
    for i in range(config.num_hidden_layers):
        names.update((f"encoder.layer.{i}.{n}", s) for n, s in LAYER_TENSORS)
    if pooler:
        names.update(POOLER_TENSORS)
    if config.is_classifier and config.family.pre_classifier:
        names.update(PRE_CLASSIFIER_TENSORS)
    if config.head != "encoder":
        names.update(CLASSIFIER_TENSORS)
    return names


class BertWeights:
    """A checkpoint's tensors under canonical (BERT) names, checked against a ModelConfig before any data is read.

    has_pooler: the pooler (dense + tanh on the first token) runs: the checkpoint has one, or the model's sequence
    head is BERT's or RoBERTa's / MPNet's (whose head dense is mapped onto it: head_in_pooler). has_classifier: the
    model has a head.
    """

    def __init__(self, checkpoint: Checkpoint, config: ModelConfig):
        self.checkpoint = checkpoint
        self.config = config
        self._entries = by_canonical = _canonical_entries(checkpoint, config)
        _check_layer_count(config, by_canonical, checkpoint.source)  # before any per-layer list is built
        self.quantized = _check_quantized(config, by_canonical, checkpoint.source)

        pooler_head = config.is_classifier and not config.family.pre_classifier
        self.has_pooler = pooler_head or any(n in by_canonical for n, _ in POOLER_TENSORS)
        # RoBERTa's head dense runs as the pooler: its output is part of the head, not a pooler output
        self.head_in_pooler = pooler_head and bool(config.family.head_names)
        self.has_classifier = config.head != "encoder"
        expected = expected_tensors(config, self.has_pooler)
        self._check_names(expected)
        for name, symbols in expected.items():
            self._check_shape(name, symbols, by_canonical[name])

    def _check_names(self, expected: dict[str, tuple[str, ...]]) -> None:
        """Every tensor the model needs is there, and no encoder tensor is left over (a sign of a config that
        belongs to another model)."""
        config, source = self.config, self.checkpoint.source
        missing = [n for n in expected if n not in self._entries]
        if missing:
            hint = ""
            heads = ("classifier.", "pooler.", "pre_classifier.")
            if config.head != "encoder" and any(n.startswith(heads) for n in missing):
                bare = config.family.class_prefixes[0] + "Model"
                hint = (f" (config.json says {config.kind}, which needs its head's weights; if this is a bare "
                        f"encoder set \"architectures\": [\"{bare}\"])")
            elif any(n.startswith("encoder.layer.") for n in missing):
                hint = f" (config says num_hidden_layers={config.num_hidden_layers}; check it matches the weights)"
            elif any(n.startswith("embeddings_project.") for n in missing):
                hint = (f" (config says embedding_size={config.embedding_size} and hidden_size="
                        f"{config.hidden_size}: embeddings of another width are projected to the hidden size by "
                        f"embeddings_project; if the weights have none, embedding_size must be the hidden size)")
            names = [config.family.checkpoint_name(n, config.head) for n in missing]
            raise ModelLoadError(
                f"{source} is missing {len(missing)} tensor(s) the model needs: {_short_list(names)}{hint}")

        scales = {n + SCALE_SUFFIX for n in expected} if self.quantized else set()
        unexpected = [n for n in self._entries
                      if n not in expected and n not in scales and n.startswith(_ENCODER_PREFIXES)]
        if unexpected:
            hint = ""
            if any(n.startswith("encoder.layer.") for n in unexpected):
                hint = (f" (config says num_hidden_layers={config.num_hidden_layers}; the weights seem to have "
                        f"more layers)")
            elif any(n.startswith("embeddings_project.") for n in unexpected):
                hint = (f" (config says embedding_size = hidden_size = {config.hidden_size}, so there is nothing to "
                        f"project; weights with an embeddings_project have embeddings of another width)")
            raise ModelLoadError(f"{source} has tensor(s) this {config.family.name} config does not use: "
                                 f"{_short_list(unexpected)}{hint}")

    def _check_shape(self, name: str, symbols: tuple[str, ...], entry: TensorEntry) -> None:
        if entry.dtype not in _FLOAT_DTYPES and not (self.quantized and entry.dtype == "I8"):
            raise ModelLoadError(
                f"{entry.file}: tensor {entry.name} has dtype {entry.dtype}; weights must be F32, F16, BF16 or F64")
        want = tuple(self._dim(s) for s in symbols)
        if entry.shape == want:
            return
        fields = [self.config.key(_DIM_FIELDS[s]) for s in symbols]
        if len(entry.shape) != len(want):
            raise ModelLoadError(
                f"{entry.file}: {entry.name} is {list(entry.shape)} but a {self.config.family.name} {name} is "
                f"{list(want)} = [{', '.join(fields)}]")
        wrong = next(i for i, (a, b) in enumerate(zip(entry.shape, want)) if a != b)
        raise ModelLoadError(
            f"config says {fields[wrong]}={want[wrong]} but {entry.name} is {list(entry.shape)} "
            f"(expected {list(want)} = [{', '.join(fields)}]); config.json and {entry.file.name} disagree, "
            f"so one of them belongs to another model")

    def _dim(self, symbol: str) -> int:
        return getattr(self.config, _DIM_FIELDS[symbol])

    def has(self, name: str) -> bool:
        """Whether the checkpoint holds a tensor of this canonical name."""
        return name in self._entries

    def read(self, name: str, within_bf16: bool = False) -> np.ndarray:
        """The tensor of a canonical name as a float32 C-contiguous array (read from disk on each call).
        Pre-quantized weights are dequantized (q * scale). within_bf16: as TensorEntry.read's."""
        entry = self._entries[name]
        if entry.dtype == "I8":
            q = entry.read_int8()
            scale = self._scale(name)
            weights = (q.astype(np.float32) * scale[:, None]).astype(np.float32)
            if within_bf16:
                entry._check_finite(weights.reshape(-1), within_bf16)
            return weights
        return entry.read(within_bf16)

    def _scale(self, name: str) -> np.ndarray:
        """The per-channel scales of pre-quantized weight `name`, each one for which 127 * scale is a float32: a
        larger one holds the weights (q * scale) as Inf, and every output would be NaN."""
        entry = self._entries[name + SCALE_SUFFIX]
        scale = entry.read()   # finite, checked
        with np.errstate(over="ignore"):
            over = int(np.count_nonzero(~np.isfinite(np.float32(127) * np.abs(scale))))
        if over:
            raise ModelLoadError(f"{entry.file}: tensor {entry.name} holds {over} scale(s) so large that the weights "
                                 f"they scale overflow float32 (127 x scale); the checkpoint is corrupt: re-export it")
        return scale

    def read_layer_quantized(self, index: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Pre-quantized layer `index`: ({q,k,v,ao,i}_w int8 and _s scales, and o_w as stored: bf16 bits (uint16),
        or int8 with o_s from an earlier export}, the 10 bias and LayerNorm vectors in
        _core.Encoder.set_layer_quantized order)."""
        q: dict[str, np.ndarray] = {}
        for short, name in _LINEAR_SHORT_NAMES.items():
            entry = self._entries[f"encoder.layer.{index}.{name}"]
            if entry.dtype != "I8":  # FFN out, run on the bf16 kernels (_check_quantized allows nothing else)
                q[short + "_w"] = (entry.read_bf16() if entry.dtype == "BF16" else
                                   core().to_bf16(entry.read(within_bf16=True)))
                continue
            q[short + "_w"] = entry.read_int8(symmetric=True)
            q[short + "_s"] = self._scale(f"encoder.layer.{index}.{name}")
        return q, self._layer_vectors(index)

    def layer_is_quantized(self, index: int) -> bool:
        """Whether layer `index` of a pre-quantized checkpoint is stored int8 (not one an int8 calibration runs in
        float32 or bf16: read_layer_quantized applies)."""
        return self.quantized and index not in self.config.int8_kept_layers

    def layer_is_bf16(self, index: int) -> bool:
        """Whether the six linear weights of layer `index` are stored as BF16 (read_layer_bf16 applies)."""
        return all(entry.dtype == "BF16" for _, entry in self.linear_weights(index))

    def read_layer_bf16(self, index: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Layer `index` of a BF16 checkpoint: ({q,k,v,ao,i,o}_w uint16 bf16 bits}, the 10 bias and LayerNorm
        vectors in _core.Encoder.set_layer_bf16 order)."""
        return {short + "_w": entry.read_bf16() for short, entry in self.linear_weights(index)}, \
            self._layer_vectors(index)

    def linear_weights(self, index: int) -> list[tuple[str, TensorEntry]]:
        """(short name q/k/v/ao/i/o, entry) of the six linear weights of layer `index`: the tensors load(dtype=
        "int8") quantizes and load(dtype="bf16") rounds, whatever the family calls them (entry.name is the
        checkpoint's own name: DistilBERT's ...attention.q_lin.weight, MPNet's ...attention.attn.q.weight).
        bortengine export --dtype int8 / bf16 converts exactly these."""
        return [(short, self._entries[f"encoder.layer.{index}.{name}"])
                for short, name in _LINEAR_SHORT_NAMES.items()]

    def _layer_vectors(self, index: int) -> list[np.ndarray]:
        """The 10 bias and LayerNorm vectors of layer `index`, in LAYER_TENSORS order."""
        return [self.read(f"encoder.layer.{index}.{n}") for n, shape in LAYER_TENSORS if len(shape) == 1]

    def read_layer(self, index: int, to_bf16: bool = False) -> list[np.ndarray]:
        """The 16 tensors of encoder layer `index` in _core.Encoder.set_layer order. to_bf16: for an encoder that
        rounds the linear weights to bfloat16 (a bf16 layer; an int8 one's FFN out), which refuses any too large
        for it."""
        return [self.read(f"encoder.layer.{index}.{n}", within_bf16=to_bf16 and len(shape) == 2)
                for n, shape in LAYER_TENSORS]

    def read_embeddings(self) -> list[np.ndarray]:
        """word [V,E], position [P - position_offset, E], token_type [Tt,E], LayerNorm weight [E], bias [E]: the
        tables as the encoder indexes them. RoBERTa's and MPNet's position tables start at row padding_idx + 1,
        where their first token's position is (engine/families.py); DistilBERT and MPNet, which have no token
        types, get one zero row."""
        c = self.config
        position = self.read("embeddings.position_embeddings.weight")
        if c.position_offset:
            position = np.ascontiguousarray(position[c.position_offset:])
        token_type = (self.read("embeddings.token_type_embeddings.weight") if c.family.token_type_table
                      else np.zeros((c.type_vocab_size, c.embedding_size), dtype=np.float32))
        return [self.read("embeddings.word_embeddings.weight"), position, token_type,
                self.read("embeddings.LayerNorm.weight"), self.read("embeddings.LayerNorm.bias")]

    def read_embedding_projection(self) -> tuple[np.ndarray, np.ndarray]:
        """ELECTRA's embeddings_project: weight [H,E], bias [H] (config.projects_embeddings)."""
        return self.read("embeddings_project.weight"), self.read("embeddings_project.bias")

    def read_position_bias(self) -> np.ndarray:
        """MPNet's relative position bias as the native encoder adds it: [A, 2P - 1] float32 for the P = max_positions
        tokens a sequence may have, column P - 1 + d holding each head's bias for a key d tokens after its query."""
        table = self.read("encoder.relative_attention_bias.weight")                     # [R, A]
        return relative_position_bias(table, self.config.max_positions)


def _canonical_entries(checkpoint: Checkpoint, config: ModelConfig) -> dict[str, TensorEntry]:
    """The checkpoint's tensors under the engine's names (those it does not use left out)."""
    by_canonical: dict[str, TensorEntry] = {}
    for name, entry in checkpoint.entries.items():
        canonical = config.family.canonical_name(name, config.head)
        if canonical is None:
            continue
        if canonical in by_canonical:
            raise ModelLoadError(
                f"{checkpoint.source}: tensors {by_canonical[canonical].name} and {name} are both "
                f"{canonical}; keep one of them")
        by_canonical[canonical] = entry
    return by_canonical


def _check_quantized(config: ModelConfig, entries: dict[str, TensorEntry], source: str) -> bool:
    """Whether the checkpoint is pre-quantized (bortengine export --dtype int8): every linear weight the export
    stores as I8 is I8 with its scale, or none is; FFN out, which int8 encoders may run on the bf16 kernels, is stored
    in any float dtype (BF16 from the export) or, from earlier exports, I8 with its scale."""
    stored_bf16 = int8_stored_bf16()
    on_int8 = {name for short, name in _LINEAR_SHORT_NAMES.items() if short not in stored_bf16}
    # the layers an int8 calibration keeps out of int8 are exported in float (bortengine.export.calibrate_int8)
    kept = set(config.int8_kept_layers)
    quantizable = [f"encoder.layer.{i}.{n}" for i in range(config.num_hidden_layers) if i not in kept
                   for n in QUANTIZABLE_LAYER_WEIGHTS]
    kept_int8 = [f"encoder.layer.{i}.{n}" for i in sorted(kept) for n in QUANTIZABLE_LAYER_WEIGHTS
                 if f"encoder.layer.{i}.{n}" in entries and entries[f"encoder.layer.{i}.{n}"].dtype == "I8"]
    if kept_int8:
        raise ModelLoadError(
            f"{source}: config.json's bortengine_int8 keeps layers {sorted(kept)} out of int8, but "
            f"{_short_list(kept_int8, 2)} are I8; re-export it (bortengine export --dtype int8 stores those "
            f"layers in float)")
    int8_names = [n for n in quantizable if n in entries and entries[n].dtype == "I8"]
    if not int8_names:
        return False
    float_names = [n for n in quantizable
                   if n in entries and entries[n].dtype != "I8" and n.split(".", 3)[3] in on_int8]
    if float_names:
        raise ModelLoadError(
            f"{source} mixes int8 and float linear weights ({_short_list(int8_names, 2)} are "
            f"I8, {_short_list(float_names, 2)} are not); re-export it with one dtype")
    for n in int8_names:
        scale = entries.get(n + SCALE_SUFFIX)
        out_dim = entries[n].shape[0] if entries[n].shape else -1
        if scale is None:
            raise ModelLoadError(f"{source}: int8 weight {n} has no {n + SCALE_SUFFIX}; a "
                                 f"pre-quantized checkpoint stores one float32 scale per output channel")
        if scale.dtype not in _FLOAT_DTYPES or scale.shape != (out_dim,):
            raise ModelLoadError(f"{source}: {n + SCALE_SUFFIX} must be a float vector of "
                                 f"{out_dim} scales, got {scale.dtype} {list(scale.shape)}")
    return True


def _check_layer_count(config: ModelConfig, entries: dict[str, TensorEntry], source: str) -> None:
    """config.json's num_hidden_layers against the layers the weights hold, before anything is sized by it: a
    config claiming 10^9 layers must fail here, not in building 16 x 10^9 tensor names or allocating workspaces.
    Nor in building them for layers the header only names: one empty tensor named after each of 10^5 layers costs
    a header ~80 bytes a layer, so the layers must hold half their tensors or more before the names of every
    tensor they lack are built (a layer missing a few tensors is then named by the check of each tensor)."""
    per_layer = collections.Counter(name.split(".", 3)[2] for name in entries if name.startswith("encoder.layer."))
    held = list(per_layer)
    if config.num_hidden_layers <= len(held) and \
            config.num_hidden_layers * len(LAYER_TENSORS) > 2 * sum(per_layer.values()):
        raise ModelLoadError(
            f"config says {config.key('num_hidden_layers')}={config.num_hidden_layers}, {len(LAYER_TENSORS)} tensors "
            f"a layer, but {source} holds {sum(per_layer.values())} tensors of encoder layers in all; config.json "
            f"and the weights disagree, so one of them belongs to another model")
    if config.num_hidden_layers > len(held):
        raise ModelLoadError(
            f"config says {config.key('num_hidden_layers')}={config.num_hidden_layers} but {source} holds tensors "
            f"of {len(held)} encoder layer(s); config.json and the weights disagree, so one of them belongs to "
            f"another model")


def _short_list(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
