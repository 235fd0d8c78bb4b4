"""`bortengine export`: a pretrain, finetune or Agora run (or a model directory) -> a directory bortengine.load() reads,
then the engine checked against torch on the same batch.

The directory writer itself is training's (training.write_hf_directory: the runs write their models with it);
this module is what comes after training: reading a run's model back (training.trained_model, which never
unpickles) and the engine-vs-torch check. A model directory of any family the engine loads (BERT, RoBERTa, XLM-R,
CamemBERT, DistilBERT, ELECTRA, MPNet; bare, ...ForSequenceClassification or ...ForTokenClassification) is already
what bortengine.load reads, in every layout it reads (one model.safetensors or shards with their index; a
sentence-transformers directory that keeps the transformer in the sub-folder modules.json names), so it is checked
as load checks it, copied as it is (without the weights of other frameworks) and checked against its transformers
class. Re-saving it through training's BERT classes would rebuild config.json from an Architecture, which knows
no token classifier (its head, labels and weights were dropped), nor the source's pooling and max_seq_length.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from bortengine.engine import BertWeights, Checkpoint, ModelConfig, transformer_directory
from bortengine.errors import ModelLoadError, UsageError
from bortengine.training import (CHECKPOINT_FILE, TOKENIZER_FILES, run_directory, trained_model,
                                 write_hf_directory)

__all__ = ["export", "export_run", "check_export", "TOKENIZER_FILES"]

export = write_hf_directory      # the older public name of the writer
# Files of a model directory that bortengine.load never reads (pickles, other frameworks' weights, and the indexes
# of their shards, which would name files not copied): not copied.
_NOT_READ = ("*.bin", "*.bin.index.json", "*.h5", "*.h5.index.json", "*.msgpack", "*.msgpack.index.json", "*.ckpt*",
             "*.onnx", "*.ot", ".git")


@torch.no_grad()
def check_export(model: torch.nn.Module, out_dir: str | os.PathLike, seed: int = 0, tolerance: float = 1e-4) -> dict:
    """Run the engine and torch on the same random batch (B=3, T=24, with padding) and compare.

    Returns max_abs_diff_hidden (real tokens), max_abs_diff_logits (classifiers), check_passed."""
    import numpy as np

    import bortengine

    engine = bortengine.load(out_dir)
    rng = np.random.default_rng(seed)
    encoder = model.base_model   # the encoder of a head model (.bert, .roberta, ...), or the model itself
    vocab = encoder.config.vocab_size
    # small vocabularies (random test models): not ids 0..4, the special tokens (RoBERTa's and MPNet's padding id
    # is 1, which their positions skip)
    ids = rng.integers(1000, vocab, size=(3, 24), dtype=np.int64) if vocab > 1000 else \
        rng.integers(5 if vocab > 5 else 1, vocab, size=(3, 24), dtype=np.int64)
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
        diff = np.abs(ours.logits - logits)
        # a token classifier's logits [B,T,L]: the engine's are zeros where the mask is 0, transformers' not
        report["max_abs_diff_logits"] = float((diff[real] if diff.ndim == 3 else diff).max())
    report["tolerance"] = tolerance
    report["check_passed"] = all(v <= tolerance for k, v in report.items() if k.startswith("max_abs"))
    return report


def export_run(run: str | os.PathLike, out_dir: str | os.PathLike, check: bool = True) -> dict:
    """`bortengine export`: a run directory (or HF directory) -> out_dir, then (check) the engine vs torch.
    An Agora run exports its last round's best student (training.run_directory); the report names it. A model
    directory the engine cannot load, or an out_dir that already holds files or lies inside the source, is refused
    before anything is written."""
    source = run_directory(run)
    _check_new_directory(Path(out_dir))
    report = {"exported": str(Path(out_dir)), "source": str(run)}
    if source != Path(run):
        report["model_directory"] = str(source)
    if (source / CHECKPOINT_FILE).is_file():
        model, tokenizer_dir, max_length = trained_model(source)    # one read of the checkpoint
        write_hf_directory(model, out_dir, tokenizer_dir, max_seq_length=max_length)
    else:
        config = _loadable_config(source)
        if Path(out_dir).resolve().is_relative_to(source.resolve()):
            raise UsageError(f"{out_dir} is inside the model directory {source}, which export copies: pass a "
                             f"directory outside it")
        shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns(*_NOT_READ), dirs_exist_ok=True)
        report.update(family=config.family.name, copied=True)
        model = _transformers_model(transformer_directory(out_dir), config.kind) if check else None
    if check:
        report.update(check_export(model, out_dir))
    return report


def _check_new_directory(out: Path) -> None:
    """out is a new or empty directory. Files already there would be overwritten, or stay beside the export and
    change what loads: an older model.safetensors is read before the shards an export writes, an older config.json
    before a sentence-transformers sub-folder's."""
    if out.is_dir() and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir())
        raise UsageError(f"{out} already holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''}; export "
                         f"writes a new model directory and overwrites nothing: pass a new or empty directory (or "
                         f"remove {out} first)")


def _loadable_config(source: Path) -> ModelConfig:
    """The engine's config of a model directory, after checking it as bortengine.load does before reading a tensor:
    config.json of a family it runs, safetensors weights (one file, or shards and their index) holding every
    tensor it needs in its shape. Raises the engine's error otherwise (e.g. weights only in pickled
    pytorch_model*.bin files, with how to convert them), said as the export's."""
    directory = transformer_directory(source)
    try:
        config = ModelConfig.from_file(directory)
        BertWeights(Checkpoint.open(directory), config)
    except ModelLoadError as e:
        raise type(e)(f"cannot export {source}: bortengine.load would not read it: {e}") from e
    return config


def _transformers_model(directory: Path, kind: str) -> torch.nn.Module:
    """The transformers model of config.json's class `kind` (e.g. DistilBertForSequenceClassification), from its
    safetensors only and offline, as training.load_pretrained reads BERT."""
    import transformers
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()   # e.g. a RobertaModel's pooler that the checkpoint has not: unused here
    return getattr(transformers, kind).from_pretrained(str(directory), use_safetensors=True,
                                                       attn_implementation="eager").eval()
