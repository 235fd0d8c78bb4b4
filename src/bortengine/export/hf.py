"""Export a trained model to a Hugging Face-format directory that bortengine.load() (and transformers) read:
config.json, model.safetensors, the teacher's tokenizer files, and the sentence-transformers modules.json +
1_Pooling/config.json (mean pooling, + Normalize when the teacher had it) so Engine.encode() pools as the teacher.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

__all__ = ["export", "export_run", "check_export", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def export(model: torch.nn.Module, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
           max_seq_length: Optional[int] = None) -> Path:
    """Write model (BertModel or BertForSequenceClassification) to out_dir; tokenizer and pooling files come
    from tokenizer_dir (the teacher's directory). Returns out_dir."""
    from bortengine.training.models import encoder_of

    out, src = Path(out_dir), Path(tokenizer_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # Contiguous copies: slicing can leave views, and save_pretrained refuses shared/non-contiguous storage.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    config.pop("_attn_implementation_autoset", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)

    normalize = False
    if (src / "modules.json").is_file():
        normalize = any(m.get("type", "").endswith(".Normalize") for m in json.loads((src / "modules.json").read_text()))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "1_Pooling").mkdir(exist_ok=True)
    hidden = encoder_of(model).config.hidden_size
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2) + "\n")
    st_config = {"max_seq_length": 256, "do_lower_case": False}
    if (src / "sentence_bert_config.json").is_file():
        st_config = json.loads((src / "sentence_bert_config.json").read_text())
    if max_seq_length is not None:
        st_config["max_seq_length"] = max_seq_length
    (out / "sentence_bert_config.json").write_text(json.dumps(st_config, indent=2) + "\n")
    return out


def _model_from_run(run: Path):
    """(model, tokenizer_dir) from a pretrain/finetune run directory or an HF model directory."""
    from bortengine.architecture import Architecture
    from bortengine.training.models import build_model

    ckpt_path = run / "checkpoint.pt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        if "student" in ckpt:                               # a pretrain run: the student encoder
            from bortengine.training.distill import DistillConfig

            config = DistillConfig.from_dict(ckpt["config"])
            model = build_model(config.student, dropout=0.0)
            prefix = "encoder."
            model.load_state_dict({k[len(prefix):]: v for k, v in ckpt["student"].items() if k.startswith(prefix)})
            return model, config.teacher or _default_tokenizer_dir()
        if "model_state" in ckpt:                           # a finetune run: the weights selected on dev
            arch = Architecture.from_dict(ckpt["architecture"])
            model = build_model(arch, dropout=0.0)
            best = ckpt.get("best") or {}
            model.load_state_dict(best.get("state") or ckpt["model_state"])
            return model, ckpt["tokenizer_dir"]
        raise ValueError(f"{ckpt_path} is not a pretrain or finetune checkpoint")
    if (run / "config.json").is_file():                     # an HF directory: re-export
        from transformers import BertForSequenceClassification, BertModel

        arch = Architecture.from_hf_config(run)
        cls = BertForSequenceClassification if arch.head == "classifier" else BertModel
        return cls.from_pretrained(str(run), attn_implementation="eager"), str(run)
    raise ValueError(f"{run} holds neither a checkpoint.pt nor a config.json")


def _default_tokenizer_dir() -> str:
    from bortengine.training.teacher import default_teacher_path

    return str(default_teacher_path())


@torch.no_grad()
def check_export(model: torch.nn.Module, out_dir: str | os.PathLike, seed: int = 0, tolerance: float = 1e-4) -> dict:
    """Run the engine and torch on the same random batch (B=3, T=24, with padding) and compare.

    Returns max_abs_diff_hidden (real tokens), max_abs_diff_logits (classifiers), check_passed."""
    import numpy as np

    import bortengine
    from bortengine.training.models import encoder_of

    engine = bortengine.load(out_dir)
    rng = np.random.default_rng(seed)
    vocab = encoder_of(model).config.vocab_size
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
    ref = encoder_of(model)(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()
    real = mask.astype(bool)
    report = {"max_abs_diff_hidden": float(np.abs(ours.last_hidden_state - ref)[real].max())}
    if ours.logits is not None:
        logits = model(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
        report["max_abs_diff_logits"] = float(np.abs(ours.logits - logits).max())
    report["tolerance"] = tolerance
    report["check_passed"] = all(v <= tolerance for k, v in report.items() if k.startswith("max_abs"))
    return report


def export_run(run: str | os.PathLike, out_dir: str | os.PathLike, check: bool = True) -> dict:
    """`bortengine export`: a run directory (or HF directory) -> out_dir, then (check) the engine vs torch."""
    model, tokenizer_dir = _model_from_run(Path(run))
    out = export(model, out_dir, tokenizer_dir)
    report = {"exported": str(out), "source": str(run)}
    if check:
        report.update(check_export(model, out))
    return report
