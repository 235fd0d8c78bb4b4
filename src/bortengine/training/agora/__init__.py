"""Agora (de Wynter, arXiv 2010.07990): fine-tuning on scarce data by growing the training set around the
student's dev mistakes, labelled by a larger model. See docs/agora.md.

loop: the generic loop (run_agora), its records, and where a round's fine-tunes run (SettingsRunner,
InProcessRunner); transformations: new points near a point; labeller: the engine
as labeller; trainer: the text student trainer (on training's one loop); recipes: the movie-reviews experiment
(finetune_agora) and its options; report: test accuracy per round, plots, the summary over seeds
(`python -m bortengine.agora`). Importing this package does not import torch.
"""
from __future__ import annotations

from bortengine.training.agora.labeller import EngineLabeller
from bortengine.training.agora.loop import (DEFAULT_SETTINGS, AgoraConfig, AgoraError, AgoraResult, InProcessRunner,
                                            Labeller, RoundRecord, RoundWork, SettingResult, SettingRun,
                                            SettingsRunner, Trainer, Transformation, accuracy, best_position,
                                            fit_setting, run_agora, stratified_split)
from bortengine.training.agora.recipes import (MEASURED_SETTINGS, RECIPES, finetune_agora, parse_settings,
                                               resolve_recipe, scarce_subset, slice_student)
from bortengine.training.agora.report import evaluate_rounds, main, plot_rounds, summarize
from bortengine.training.agora.trainer import TextClassifierTrainer, load_engine_classifier, save_classifier
from bortengine.training.agora.transformations import GaussianNoise, MaskedLMFill, NearestNeighbourSwap

__all__ = [
    "AgoraError", "AgoraConfig", "AgoraResult", "RoundRecord", "run_agora", "evaluate_rounds", "accuracy",
    "Labeller", "Trainer", "Transformation",
    "SettingsRunner", "InProcessRunner", "SettingRun", "RoundWork", "SettingResult", "fit_setting", "best_position",
    "stratified_split", "NearestNeighbourSwap", "MaskedLMFill", "GaussianNoise",
    "EngineLabeller", "TextClassifierTrainer", "slice_student", "scarce_subset", "finetune_agora", "DEFAULT_SETTINGS",
    "MEASURED_SETTINGS", "RECIPES", "resolve_recipe", "plot_rounds", "parse_settings", "summarize", "save_classifier",
    "load_engine_classifier", "main",
]
