"""The training stage's error: pretrain, finetune and Agora raise it for bad data, arguments and run directories,
with a message that says what is wrong and how to fix it."""
from __future__ import annotations

from bortengine.errors import BortEngineError

__all__ = ["TrainingError"]


class TrainingError(BortEngineError, ValueError):
    """Training cannot run as asked: an argument out of range, an empty corpus or split, a run directory written
    by another run or by an older bortengine. A ValueError too, so callers that catch that keep working."""
