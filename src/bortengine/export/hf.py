"""`bortengine export`: a pretrain, finetune or Agora run (or a model directory) -> a directory bortengine.load() reads,
then the engine checked against torch on the same batch.

The directory writer itself is training's (training.write_hf_directory: the runs write their models with it);
this module is what comes after training: reading a run's model back (training.run_model, which never
unpickles) and the engine-vs-torch check.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from bortengine.training import TOKENIZER_FILES, encoder_of, run_directory, run_model, write_hf_directory

__all__ = ["export", "export_run", "check_export", "TOKENIZER_FILES"]

export = write_hf_directory      # the older public name of the writer


@torch.no_grad()
def check_export(model: torch.nn.Module, out_dir: str | os.PathLike, seed: int = 0, tolerance: float = 1e-4) -> dict:
    """Run the engine and torch on the same random batch (B=3, T=24, with padding) and compare.

    Returns max_abs_diff_hidden (real tokens), max_abs_diff_logits (classifiers), check_passed."""
    import numpy as np

    import bortengine

    engine = bortengine.load(out_dir)
    rng = np.random.default_rng(seed)
    encoder = encoder_of(model)
    vocab = encoder.config.vocab_size
    ids = rng.integers(1000, vocab, size=(3, 24), dtype=np.int64) if vocab > 1000 else \
        rng.integers(1, vocab, size=(3, 24), dtype=np.int64)
    ids[:, 0] = 101 if vocab > 102 else 1
    mask = np.ones_like(ids)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    ours = engine(ids, mask)
    model.eval()
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    ref = encoder(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()
    real = mask.astype(bool)
    report = {"max_abs_diff_hidden": float(np.abs(ours.last_hidden_state - ref)[real].max())}
    if ours.logits is not None:
        logits = model(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
        report["max_abs_diff_logits"] = float(np.abs(ours.logits - logits).max())
    report["tolerance"] = tolerance
    report["check_passed"] = all(v <= tolerance for k, v in report.items() if k.startswith("max_abs"))
    return report


def export_run(run: str | os.PathLike, out_dir: str | os.PathLike, check: bool = True) -> dict:
    """`bortengine export`: a run directory (or HF directory) -> out_dir, then (check) the engine vs torch.
    An Agora run exports its last round's best student (training.run_directory); the report names it."""
    source = run_directory(run)
    model, tokenizer_dir = run_model(source)
    out = write_hf_directory(model, out_dir, tokenizer_dir)
    report = {"exported": str(out), "source": str(run)}
    if source != Path(run):
        report["model_directory"] = str(source)
    if check:
        report.update(check_export(model, out))
    return report
