"""The one checkpoint format of every training run (pretrain, finetune, Agora), and the refusal of older ones.

A checkpoint is one safetensors file, written atomically: its tensors are the arrays of the run (model weights,
optimiser moments, the torch RNG state, Agora's labels and vector points), named "<group>/<name>"
(model/encoder.embeddings.word_embeddings.weight, optimizer/3/exp_avg, rng/torch); its header's metadata holds,
under "bortengine.checkpoint", one JSON object {"format": 1, "kind": ..., "state": {...}} with everything else
(step, epoch, config, budget clocks, metrics, numpy RNG state). One file, so a run stopped mid-write never leaves
tensors and state that disagree; `read_checkpoint(path).state` shows the JSON.

Reading one never runs code: safetensors holds tensors and a string header only. Earlier versions wrote torch
pickles (checkpoint.pt) and Python pickles (Agora's state.pkl, round-k/model.pkl), which execute whatever a run
directory someone else made puts in them; those files are never opened, and a run directory holding one is
refused with a message that says how to go on (OLD_FILES).

Torch-free: tensors are NumPy arrays here; the loops convert (loop.py).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bortengine.files import atomic_write
from bortengine.training.errors import TrainingError

__all__ = ["FORMAT", "CHECKPOINT_FILE", "AGORA_STATE_FILE", "OLD_FILES", "TrainingCheckpoint", "write_checkpoint",
           "read_checkpoint", "refuse_old_files", "check_same_run"]

FORMAT = 1
HEADER_KEY = "bortengine.checkpoint"
CHECKPOINT_FILE = "checkpoint.safetensors"     # pretrain and finetune runs
AGORA_STATE_FILE = "state.safetensors"         # an Agora run's state after its last finished round
# What runs of earlier versions left (pickles), and what to do about each.
OLD_FILES = {
    "checkpoint.pt": "a pretrain or finetune checkpoint",
    "state.pkl": "an Agora state",
    "model.pkl": "an Agora round's model",
}


@dataclass
class TrainingCheckpoint:
    """A checkpoint as read: its kind ("pretrain", "finetune", "agora"), JSON state and NumPy tensors."""

    kind: str
    state: dict[str, Any]
    tensors: dict[str, np.ndarray]
    path: Path

    def group(self, name: str) -> dict[str, np.ndarray]:
        """The tensors named "<name>/..." with that prefix taken off (e.g. group("model") -> a state dict)."""
        prefix = name + "/"
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def write_checkpoint(path: str | os.PathLike, kind: str, state: Mapping[str, Any],
                     tensors: Mapping[str, np.ndarray]) -> Path:
    """Write state (JSON-able) and tensors (NumPy arrays) to path, atomically."""
    from safetensors.numpy import save_file

    header = json.dumps({"format": FORMAT, "kind": kind, "state": state})
    arrays = {name: np.array(value, order="C", copy=None) for name, value in tensors.items()}   # 0-d stays 0-d
    return atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata={HEADER_KEY: header}))


def read_checkpoint(path: str | os.PathLike, kind: str | Sequence[str]) -> TrainingCheckpoint:
    """The checkpoint at path, which must be of `kind` (one kind or several). Raises TrainingError for a file that
    is not one (another format, another kind, a newer format version)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainingError(f"{path} is not a readable checkpoint ({e}); delete it to start the run afresh") from e
    try:
        record = json.loads(header) if header is not None else None
    except json.JSONDecodeError as e:
        raise TrainingError(f"{path}: its checkpoint header is not valid JSON ({e}); delete it to start afresh") from e
    if not isinstance(record, dict) or "state" not in record:
        raise TrainingError(f"{path} is a safetensors file but not a bortengine checkpoint (no {HEADER_KEY!r} "
                            f"header); use another out directory")
    if record.get("format") != FORMAT:
        raise TrainingError(f"{path} has checkpoint format {record.get('format')!r}; this bortengine reads format "
                            f"{FORMAT}: use the version that wrote it, or start the run afresh")
    if record.get("kind") not in kinds:
        raise TrainingError(f"{path} is a {record.get('kind')} checkpoint, not {' or '.join(kinds)}: use the "
                            f"command that wrote it, or another out directory")
    return TrainingCheckpoint(record["kind"], record["state"], tensors, path)


def refuse_old_files(directory: str | os.PathLike, names: Sequence[str] = tuple(OLD_FILES)) -> None:
    """Raise TrainingError when directory (or its round-k/ directories, for model.pkl) holds a file an earlier
    bortengine wrote as a pickle. The file is never opened: loading a pickle can run any code it names."""
    directory = Path(directory)
    for name in names:
        found = [directory / name] if name != "model.pkl" else sorted(directory.glob("round-*/model.pkl"))
        for path in found:
            if path.is_file():
                raise TrainingError(
                    f"{path} is {OLD_FILES[name]} written by an older bortengine as a pickle, which can run code "
                    f"when loaded, so this version does not read it. Start the run again in a new out directory "
                    f"(or delete {path.name} to restart this one); to keep what it holds, export or summarise it "
                    f"with the bortengine version that wrote it")


def check_same_run(checkpoint: TrainingCheckpoint, config: Mapping[str, Any], keys: Sequence[str]) -> None:
    """A resume must be the run that wrote the checkpoint: the config fields `keys` must agree (the others, such
    as the budget, may change)."""
    saved = checkpoint.state.get("config", {})
    # the JSON round trip of both sides: tuples and lists, ints and floats compare as written
    differ = [k for k in keys if json.loads(json.dumps(saved.get(k))) != json.loads(json.dumps(config.get(k)))]
    if differ:
        raise TrainingError(f"{checkpoint.path} was written by a different run (differs in {differ}); use another "
                            f"out directory or delete the checkpoint")
