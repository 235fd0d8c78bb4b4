"""The training stage's error: pretrain, finetune and Agora raise it for bad data, arguments and run directories,
with a message that says what is wrong and how to fix it."""
from __future__ import annotations

from bortengine.errors import BortEngineError

__all__ = ["TrainingError", "NothingTrainedError", "SplitOverlapWarning", "UnfinishedRunWarning"]


class TrainingError(BortEngineError, ValueError):
    """Training cannot run as asked: an argument out of range, an empty corpus or split, a run directory written
    by another run or by an older bortengine. A ValueError too, so callers that catch that keep working."""


class NothingTrainedError(TrainingError):
    """A wall-clock time budget was spent (loading the model and data, preparing them) before the first training
    step, so there is no model to write; budget_s and spent_s say by how much."""

    def __init__(self, message: str, budget_s: float, spent_s: float):
        super().__init__(message)
        self.budget_s, self.spent_s = budget_s, spent_s


class SplitOverlapWarning(UserWarning):
    """Examples of dev or test are in train too (the same text, and pair): their accuracy is partly accuracy on
    training data."""


class UnfinishedRunWarning(UserWarning):
    """A pretrain or finetune run's checkpoint was read (to export it, or to start from it) while the run had not
    ended: it was interrupted, and its command, run again, would continue it."""
