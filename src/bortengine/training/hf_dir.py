"""Model directories in Hugging Face format: write a trained model as one bortengine.load() (and transformers) read,
and get the model of a run directory back.

A written directory holds config.json, model.safetensors, the teacher's tokenizer files, and the
sentence-transformers modules.json + 1_Pooling/config.json (mean pooling, + Normalize when the teacher had it), so
Engine.encode() pools as the teacher did. Pretrain and finetune write their models here; `bortengine export`
(export.export_run) reads runs back through run_model (an Agora run: its last round's student, run_directory).
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

from bortengine.files import atomic_write_json, read_json
from bortengine.training.errors import TrainingError, UnfinishedRunWarning

__all__ = ["write_hf_directory", "run_model", "trained_model", "run_directory", "model_subdirectories",
           "relabel_classifier", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
NORMALIZE = "sentence_transformers.models.Normalize"


def write_hf_directory(model, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                       max_seq_length: Optional[int] = None) -> Path:
    """Write model (BertModel or BertForSequenceClassification) to out_dir; tokenizer and pooling files come
    from tokenizer_dir (the teacher's directory; a sentence-transformers one's tokenizer and max_seq_length from the
    sub-folder modules.json names, its Normalize from modules.json). Returns out_dir."""
    from bortengine.engine import transformer_directory
    from bortengine.training.models import encoder_of

    out, src = Path(out_dir), Path(tokenizer_dir)
    transformer = transformer_directory(src)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # Contiguous copies: slicing can leave views, and save_pretrained refuses shared/non-contiguous storage.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    config = read_json(out / "config.json", TrainingError)
    config.pop("_attn_implementation_autoset", None)
    atomic_write_json(out / "config.json", config, indent=2)
    for name in TOKENIZER_FILES:
        if (transformer / name).is_file():
            shutil.copy(transformer / name, out / name)
    _write_pooling(out, src, transformer, encoder_of(model).config.hidden_size, max_seq_length)
    return out


def _write_pooling(out: Path, src: Path, transformer: Path, hidden: int, max_seq_length: Optional[int]) -> None:
    """The sentence-transformers files: the teacher's pooling modes (src's 1_Pooling, as bortengine.load reads them:
    a student distilled from a CLS-pooling teacher pools by CLS too; mean when the teacher has none) and its
    Normalize, and its max_seq_length (sentence_bert_config.json, which sentence-transformers keeps beside the
    transformer). A teacher module the student cannot take (a Dense of the teacher's width) is left out."""
    from bortengine.engine import POOLING_CONFIG_KEYS, Pooling, sentence_transformers_config

    teacher = Pooling.load(src, dense=False)
    modes = teacher.modes or ("mean",)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if teacher.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE})
        (out / "2_Normalize").mkdir(exist_ok=True)
    atomic_write_json(out / "modules.json", modules, indent=2)
    (out / "1_Pooling").mkdir(exist_ok=True)
    atomic_write_json(out / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden, **{
        key: mode in modes for mode, key in POOLING_CONFIG_KEYS.items()}}, indent=2)
    st_config = sentence_transformers_config(transformer) or {"max_seq_length": 256, "do_lower_case": False}
    if max_seq_length is not None:
        st_config["max_seq_length"] = max_seq_length
    atomic_write_json(out / "sentence_bert_config.json", st_config, indent=2)


def model_subdirectories(directory: str | os.PathLike) -> list[Path]:
    """The directories right inside `directory` that hold a model (config.json, or in a sentence-transformers
    directory the sub-folder its modules.json names, as bortengine.load reads it), a run's checkpoint or an Agora
    run's state, sorted, with a pipeline run's student (model/) first: what to export from a folder that is neither
    (a pipeline run's model/, teacher/, agora/, ...; an Agora run's round-k/)."""
    from bortengine.engine import transformer_directory
    from bortengine.training.checkpoint import AGORA_STATE_FILE, CHECKPOINT_FILE

    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if p.is_dir() and ((transformer_directory(p) / "config.json").is_file()
                                or (p / CHECKPOINT_FILE).is_file() or (p / AGORA_STATE_FILE).is_file())]
    return sorted(found, key=lambda p: (p.name != "model", p.name))


def run_directory(run: str | os.PathLike) -> Path:
    """The directory holding the model `run` stands for: run itself when it is a pretrain or finetune run
    (checkpoint.safetensors) or a model directory (config.json, or a sentence-transformers directory whose
    modules.json names the sub-folder holding it, as bortengine.load reads them); for an Agora run
    (state.safetensors and round-k/), the last finished round's best student, round-k/ (the model the run ends
    with). Raises TrainingError naming the model directories inside run when it is none of these, or when its state
    names no round to take."""
    from bortengine.engine import transformer_directory
    from bortengine.training.checkpoint import AGORA_STATE_FILE, CHECKPOINT_FILE, read_checkpoint, refuse_old_files

    run = Path(run)
    if (run / CHECKPOINT_FILE).is_file() or (transformer_directory(run) / "config.json").is_file():
        return run
    refuse_old_files(run)
    inside = model_subdirectories(run)
    choose = f"; export one of the model directories inside it: {', '.join(map(str, inside))}" if inside else ""
    if (run / AGORA_STATE_FILE).is_file():
        records = read_checkpoint(run / AGORA_STATE_FILE, "agora").state.get("records") or []
        if not records:
            raise TrainingError(f"{run} is an Agora run that has finished no round: it holds no student yet{choose}")
        last = run / f"round-{records[-1]['round']}"
        if not (last / "config.json").is_file():
            raise TrainingError(f"{run} is an Agora run whose state ends with round {records[-1]['round']}, but "
                                f"{last} holds no model{choose}")
        return last
    if inside:
        raise TrainingError(f"{run} is not a run or model directory itself (no {CHECKPOINT_FILE}, config.json or "
                            f"Agora {AGORA_STATE_FILE}){choose}")
    raise TrainingError(f"{run} holds neither a run checkpoint ({CHECKPOINT_FILE}) nor a model (config.json): pass "
                        f"the --out directory of bortengine pretrain/finetune (an Agora run's too), or a model "
                        f"directory")


def trained_model(run: str | os.PathLike):
    """(model, tokenizer_dir, max_length) of a pretrain run (the student encoder), a finetune run (the weights
    selected on dev, its labels named, and the length it trained at: what its exported model's classify() reads by
    default; None for the others), an Agora run (its last round's best student: run_directory) or a Hugging Face
    BERT model directory (as the class its config.json names: a token classifier keeps its head, a masked-LM model
    its LM head, a BertModel saved without a pooler gets none; a sentence-transformers directory from its
    transformer sub-folder). Reads
    checkpoints without running code; a run directory of an older bortengine (a pickled checkpoint.pt, state.pkl)
    is refused with a TrainingError saying what to do."""
    from bortengine.architecture import Architecture
    from bortengine.training.checkpoint import CHECKPOINT_FILE, read_checkpoint
    from bortengine.training.loop import torch_tensors
    from bortengine.training.models import build_model

    run = run_directory(run)
    if (run / CHECKPOINT_FILE).is_file():
        checkpoint = read_checkpoint(run / CHECKPOINT_FILE, ("pretrain", "finetune"))
        _warn_if_unfinished(checkpoint)
        if checkpoint.kind == "pretrain":                     # the student encoder, without its MLM head
            config = checkpoint.state["config"]
            model = build_model(Architecture.from_dict(config["student"]), dropout=0.0)
            student = checkpoint.group("model")
            model.load_state_dict(torch_tensors({k[len("encoder."):]: v for k, v in student.items()
                                                 if k.startswith("encoder.")}))
            return model, config["teacher"] or _default_tokenizer_dir(), None
        model = build_model(Architecture.from_dict(checkpoint.state["architecture"]), dropout=0.0)
        model.load_state_dict(torch_tensors(checkpoint.group("best") or checkpoint.group("model")))
        labels = checkpoint.state.get("labels")      # the task's class names: class id i is labels[i]
        if labels and len(labels) == model.config.num_labels:
            model.config.id2label = dict(enumerate(labels))
            model.config.label2id = {name: i for i, name in enumerate(labels)}
        return model, checkpoint.state["tokenizer_dir"], checkpoint.state.get("max_length")
    return _hf_model(run), str(run), None


def _warn_if_unfinished(checkpoint) -> None:
    """An UnfinishedRunWarning when the checkpoint was written before its run ended (an interrupted run: "ended" is
    the loop's stop reason, None mid-run; a checkpoint of an older bortengine does not say, and is taken as it is)."""
    if "ended" not in checkpoint.state or checkpoint.state["ended"] is not None:
        return
    chosen = " (the best on dev so far)" if checkpoint.kind == "finetune" and checkpoint.group("best") else ""
    warnings.warn(UnfinishedRunWarning(
        f"{checkpoint.path} is the checkpoint of a {checkpoint.kind} run interrupted at step "
        f"{checkpoint.state.get('step')}, before its end: the model read is its weights at that step{chosen}. Run "
        f"the run's command again to finish it first"), stacklevel=3)


def run_model(run: str | os.PathLike):
    """(model, tokenizer_dir) of a run or model directory: trained_model without the length."""
    return trained_model(run)[:2]


def _hf_model(directory: Path):
    """The transformers model of a BERT model directory, of the class its config.json names: rebuilt through an
    Architecture (BertModel or classifier) it lost a token classifier's head, read a masked-LM model as BertModel
    and gave a random pooler to checkpoints without one."""
    import transformers

    from bortengine.architecture import require_bert
    from bortengine.engine import Checkpoint, transformer_directory
    from bortengine.training.models import load_pretrained

    directory = transformer_directory(directory)
    config = read_json(directory / "config.json", TrainingError)
    require_bert(config, str(directory / "config.json"))
    kind = (config.get("architectures") or ["BertModel"])[0]
    cls = getattr(transformers, kind, None) if kind.startswith("Bert") else None
    if cls is None:
        raise TrainingError(f"{directory / 'config.json'} names the class {kind!r}, which transformers does not have: "
                            f"set its \"architectures\" to the BERT class the weights are of (e.g. [\"BertModel\"])")
    if cls is transformers.BertModel:
        names = Checkpoint.open(directory).entries
        return load_pretrained(cls, directory, add_pooling_layer=any(n.endswith("pooler.dense.weight") for n in names))
    return load_pretrained(cls, directory)


def relabel_classifier(directory: str | os.PathLike, labels: list[str]) -> None:
    """A BertForSequenceClassification directory whose classes are `labels` in another order put in that order, in
    place: config.json's id2label and label2id, and the rows of the classifier's weight and bias in the safetensors
    file holding them, so every class keeps what it learnt. Nothing else is touched (its layout, pooling,
    truncation, tokenizer and weights' dtype stay as they are). Raises TrainingError when its classes are not these
    names."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from bortengine.engine import Checkpoint, transformer_directory

    directory = transformer_directory(directory)
    config = read_json(directory / "config.json", TrainingError)
    id2label = config.get("id2label") or {}
    current = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if sorted(current) != sorted(labels):
        raise TrainingError(f"{directory / 'config.json'} names the classes {current}, not {list(labels)} in "
                            f"another order; fine-tune it on the task instead")
    order = [current.index(name) for name in labels]
    head = ("classifier.weight", "classifier.bias")
    entries = Checkpoint.open(directory).entries
    missing = [name for name in head if name not in entries]
    if missing:
        raise TrainingError(f"{directory} is a BertForSequenceClassification without {', '.join(missing)}: its "
                            f"weights are not a classifier's; save the classifier again with save_pretrained")
    for file in {entries[name].file for name in head}:
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata()
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        for name in head:
            if name in tensors:
                tensors[name] = tensors[name][order].contiguous()
        save_file(tensors, str(file), metadata=metadata)
    config["id2label"] = {str(i): name for i, name in enumerate(labels)}
    config["label2id"] = {name: i for i, name in enumerate(labels)}
    atomic_write_json(directory / "config.json", config, indent=2)


def _default_tokenizer_dir() -> str:
    from bortengine.training.teacher import default_teacher_path

    return str(default_teacher_path())
