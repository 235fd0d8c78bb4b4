"""Agora's labeller for the movie-reviews task: a classifier exported for the engine labels the generated texts
(and gives the soft labels students may distil). No torch.

Shapes: N = texts, C = the task's classes.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from bortengine.training.agora.loop import AgoraError

__all__ = ["EngineLabeller"]


class EngineLabeller:
    """A classifier exported for the engine, as a labeller: bortengine.load(dir).classify(texts), its label names
    mapped to the task's class ids (a label the task does not have is an error). No torch."""

    def __init__(self, model_dir: str | os.PathLike, label_names: Sequence[str] = ("negative", "positive"),
                 num_threads: Optional[int] = None, max_length: int = 64):
        from bortengine.engine import load

        self.model_dir, self.num_threads = str(model_dir), num_threads
        self.engine = load(str(model_dir), num_threads=num_threads) if num_threads else load(str(model_dir))
        cfg = self.engine.config
        names = [cfg.id2label[i] for i in range(cfg.num_labels)] if getattr(cfg, "id2label", None) else []
        if sorted(names) != sorted(label_names):
            raise AgoraError(f"the labeller {model_dir} predicts {names}, the task's labels are {list(label_names)}")
        self.labels = list(label_names)
        self.index = {name: i for i, name in enumerate(label_names)}
        self._column = [names.index(name) for name in self.labels]  # the model's logit column of each task class
        self.max_length = max_length
        self._logits: dict[str, np.ndarray] = {}   # text -> [C]: the confidence filter and distillation share them

    def __reduce__(self):
        """Pickled as its directory and options (the engine is loaded again where it is unpickled, e.g. a Ray worker:
        the directory must be at the same path there)."""
        return EngineLabeller, (self.model_dir, self.labels, self.num_threads, self.max_length)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0, dtype=np.int64)
        result = self.engine.classify(list(texts), batch_size=64, max_length=self.max_length)
        return np.array([self.index[name] for name in result.labels], dtype=np.int64)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """[N, C] logits in the task's class order (for distillation from the labeller's soft labels)."""
        if not len(texts):
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._logits]
        if missing:
            result = self.engine.classify(missing, batch_size=64, max_length=self.max_length)
            for t, row in zip(missing, np.asarray(result.logits, dtype=np.float32)[:, self._column]):
                self._logits[t] = row
        return np.stack([self._logits[t] for t in texts])
