"""Distillation pretraining: teacher -> student on real text (Wikipedia openings + IMDB train reviews, and/or the
user's own text: corpus.py).

Losses (weights in DistillConfig), summed:
- hidden: MSE between student and teacher hidden states at mapped layers (embedding output <-> embedding output,
  student layer j <-> teacher layer layer_map[j]), through a learnt linear map H_s -> H_t when the student is
  narrower (TinyBERT's W_h; started as the coordinate embedding of the sliced coordinates);
- attention: KL(teacher || student) between attention distributions at the mapped layers, per head when the head
  counts agree, of the head-averaged distributions otherwise;
- embedding: 1 - cosine between the mean-pooled sentence embeddings (what all-MiniLM-L6-v2 is used for);
- mlm, only for a teacher with a masked-LM head (BertForMaskedLM): T² KL between temperature-T softened teacher
  and student MLM distributions at masked positions, plus the hard masked-LM cross-entropy, weighted as Bort
  did (0.5 and 0.1, T = 2).
Layer mapping: a sliced student maps each layer to the teacher layer it was cut from (the last student layer is
always mapped to the teacher's last); a random student uses the uniform map j -> round((j+1) Dt / Ds) - 1.

The run is training.loop's: the data order is a function of the seed alone (batch_order), so a run resumed from
its checkpoint (student, loss projections, optimiser, step, position in the data, clocks, RNG) continues exactly
where it stopped.

Shapes: B = batch, T = tokens, H = hidden, A = heads, V = vocab.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bortengine.architecture import Architecture
from bortengine.engine import TextTokenizer, available_cpus
from bortengine.training.checkpoint import check_same_run, read_checkpoint, refuse_old_files, write_checkpoint
from bortengine.training.corpus import CORPUS_MODES, corpus_documents, documents_sha256
from bortengine.training.data import (build_segments, collate, heldout_sentences, load_split, padded_tokens,
                                      pretraining_documents, split_sentences)
from bortengine.training.errors import TrainingError
from bortengine.training.hf_dir import write_hf_directory
from bortengine.training.loop import CLOCKS, Checkpointing, Schedule, StepOutcome, TrainingLoop, shortest_time, \
    tensors_of, torch_tensors
from bortengine.training.models import architecture_of, build_model, encoder_of, progress_governs_transformers_bars
from bortengine.training.slicing import Importance, default_importance, mean_pool, slice_init
from bortengine.training.teacher import load_teacher, teacher_bundle

__all__ = ["DistillConfig", "DistillationLoss", "pretrain", "distillation_documents", "surrogate_loss",
           "embedding_similarity", "pair_similarity", "uniform_layer_map", "distillation_schedule", "PAIR"]

PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
TEACHER_PAIR = 0.7553
INITS = ("slice", "random")


@dataclass
class DistillConfig:
    """Everything that defines a distillation run (stored in its checkpoint; a resume must match it)."""

    student: Architecture
    out_dir: str
    teacher: Optional[str] = None        # model directory; default the installed all-MiniLM-L6-v2
    init: str = "slice"                  # "slice" (extraction from the teacher) or "random"
    seed: int = 0
    batch_size: int = 32
    max_length: int = 128                # tokens per segment (segments are 1-3 sentences)
    lr: float = 2e-4
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_steps: Optional[int] = None      # stop after this many optimiser steps
    time_budget: Optional[float] = None  # seconds on `clock`; wall: the whole call, loading to result written
    clock: str = "cpu"                   # "cpu": process CPU time of the training steps (all threads); "wall"
    w_hidden: float = 1.0
    w_attention: float = 1.0
    w_embedding: float = 4.0
    w_mlm_soft: float = 0.5
    w_mlm_hard: float = 0.1
    temperature: float = 2.0
    mask_prob: float = 0.15
    dropout: float = 0.0                 # short distillations converge faster without it
    checkpoint_every: float = 120.0      # seconds (wall) between checkpoints
    log_every: int = 10
    threads: Optional[int] = None        # torch intra-op threads; default: every CPU this process may use
    max_documents: Optional[int] = None  # use only the first N documents (in the seeded order); tests, surrogate
    corpus: Optional[list[str]] = None   # the user's text: files and folders (corpus.corpus_documents)
    corpus_mode: str = "mix"             # "mix": beside the built-in corpus; "replace": the user's text alone
    corpus_text_column: str = "text"     # the text column of the user's JSON Lines, CSV, TSV and Parquet files

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["student"] = self.student.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        d = dict(d)
        d["student"] = Architecture.from_dict(d["student"])
        return cls(**d)

    def check(self) -> None:
        """The options' ranges, before anything is loaded."""
        if self.max_steps is None and self.time_budget is None:
            raise TrainingError("pretrain needs a stopping rule: max_steps and/or time_budget")
        if self.init not in INITS:
            raise TrainingError(f"init must be 'slice' (extraction from the teacher) or 'random', got {self.init!r}")
        if self.clock not in CLOCKS:
            raise TrainingError(f"clock must be 'cpu' or 'wall', got {self.clock!r}")
        for name in ("batch_size", "max_length", "log_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainingError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.time_budget is not None and not self.time_budget >= 0:
            raise TrainingError(f"time_budget must be a number of seconds >= 0, got {self.time_budget}")
        if self.corpus_mode not in CORPUS_MODES:
            raise TrainingError(f"corpus_mode must be 'mix' (the user's text beside the built-in corpus) or "
                                f"'replace' (the user's text alone), got {self.corpus_mode!r}")
        if self.corpus is not None and (isinstance(self.corpus, str) or not self.corpus):
            raise TrainingError(f"corpus is a list of paths (files or folders), got {self.corpus!r}")
        if self.corpus is None and self.corpus_mode == "replace":
            raise TrainingError("corpus_mode='replace' needs a corpus: the paths of the text to distil on")


# Fields that must agree between a checkpoint and the run that resumes it (the rest may change, e.g. the budget).
_RESUME_KEYS = ("student", "teacher", "init", "seed", "batch_size", "max_length", "max_documents", "corpus")
_CORPUS_KEYS = ("corpus_mode", "corpus_text_column")    # also, when there is a corpus (older runs had none)


def distillation_schedule(config: DistillConfig) -> Schedule:
    """Linear warm-up, then linear decay to 10% at the end of the run (max_steps, else the time budget)."""
    return Schedule(config.lr, max(1, config.warmup_steps), config.max_steps, decay=0.9, overlap=True,
                    by_budget=not config.max_steps and bool(config.time_budget))


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    return [max(0, round((j + 1) * teacher_layers / student_layers) - 1) for j in range(student_layers)]


def _mlm_head(model) -> Optional[nn.Module]:
    return getattr(getattr(model, "cls", None), "predictions", None)


class DistillationLoss(nn.Module):
    """The weighted sum of the hidden, attention, embedding (and MLM) losses; owns the H_s -> H_t projection."""

    def __init__(self, config: DistillConfig, teacher_arch: Architecture, layer_map: Sequence[int],
                 projection_init: Optional[torch.Tensor] = None):
        super().__init__()
        self.config = config
        self.layer_map = list(layer_map)
        self.layer_map[-1] = teacher_arch.layers - 1      # the sentence embedding comes from the last layer
        h_s, h_t = config.student.hidden, teacher_arch.hidden
        self.projection = None
        if h_s != h_t:
            self.projection = nn.Linear(h_s, h_t, bias=False)
            if projection_init is not None:               # coordinate embedding: student dim c -> teacher dim hid[c]
                with torch.no_grad():
                    self.projection.weight.zero_()
                    self.projection.weight[projection_init, torch.arange(len(projection_init))] = 1.0
        self.same_heads = config.student.heads == teacher_arch.heads

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.projection is None else self.projection(h)

    def forward(self, s_out, t_out, mask: torch.Tensor, s_logits=None, t_logits=None, labels=None):
        """s_out, t_out: transformers outputs with hidden_states (D+1 x [B,T,H]) and attentions (D x [B,A,T,T]).
        mask [B,T]. Returns (total, {part: value})."""
        c = self.config
        real = mask.bool()
        parts: dict[str, torch.Tensor] = {}
        pairs = [(0, 0)] + [(j + 1, k + 1) for j, k in enumerate(self.layer_map)]
        if c.w_hidden:
            hid = [F.mse_loss(self.project(s_out.hidden_states[j])[real], t_out.hidden_states[k][real])
                   for j, k in pairs]
            parts["hidden"] = torch.stack(hid).mean()
        if c.w_attention:
            att = []
            keys = mask[:, None, None, :].to(torch.float32)
            for j, k in enumerate(self.layer_map):
                s_att, t_att = s_out.attentions[j], t_out.attentions[k]          # [B,A,T,T]
                if not self.same_heads:
                    s_att, t_att = s_att.mean(1, keepdim=True), t_att.mean(1, keepdim=True)
                kl = (t_att * (torch.log(t_att + 1e-9) - torch.log(s_att + 1e-9)) * keys).sum(-1)   # [B,A,T]
                att.append(kl.mean(1)[real].mean())
            parts["attention"] = torch.stack(att).mean()
        if c.w_embedding:
            s_emb = mean_pool(self.project(s_out.last_hidden_state), mask)
            t_emb = mean_pool(t_out.last_hidden_state, mask)
            parts["embedding"] = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
        if s_logits is not None and t_logits is not None and labels is not None:
            sel = labels >= 0
            temp = c.temperature
            log_s = F.log_softmax(s_logits[sel] / temp, dim=-1)
            p_t = F.softmax(t_logits[sel] / temp, dim=-1)
            parts["mlm_soft"] = F.kl_div(log_s, p_t, reduction="batchmean") * temp * temp
            parts["mlm_hard"] = F.cross_entropy(s_logits[sel], labels[sel])
        weights = {"hidden": c.w_hidden, "attention": c.w_attention, "embedding": c.w_embedding,
                   "mlm_soft": c.w_mlm_soft, "mlm_hard": c.w_mlm_hard}
        total = sum(weights[name] * value for name, value in parts.items())
        return total, {name: float(value.detach()) for name, value in parts.items()}


class _Corpus:
    """Token-id segments of the pretraining documents (seeded order, max_documents), cached in the file `cache`
    (whose name the caller makes from everything the segments depend on)."""

    def __init__(self, tokenizer: TextTokenizer, seed: int, max_documents: Optional[int],
                 documents: Optional[Sequence[tuple[str, str]]], cache: Optional[Path]):
        if cache is not None and cache.is_file():
            saved = read_checkpoint(cache, "corpus")
            ids, ends = saved.tensors["ids"].tolist(), saved.tensors["ends"].tolist()
            self.segments = [ids[a:b] for a, b in zip([0] + ends[:-1], ends)]
            return
        docs = list(documents) if documents is not None else pretraining_documents()
        rng = torch.Generator().manual_seed(seed)
        docs = [docs[i] for i in torch.randperm(len(docs), generator=rng).tolist()]
        if max_documents is not None:
            docs = docs[:max_documents]
        self.segments = [list(s.ids) for s in build_segments(tokenizer, docs, seed)]
        if not self.segments:
            raise TrainingError(f"the pretraining corpus is empty: the {len(docs)} documents give no segment of more "
                                f"than 3 tokens; give documents with sentences of text")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_checkpoint(cache, "corpus", {"segments": len(self.segments)}, {
                "ids": np.asarray([i for s in self.segments for i in s], dtype=np.int32),
                "ends": np.cumsum([len(s) for s in self.segments], dtype=np.int64)})


def _mask_tokens(ids: torch.Tensor, mask: torch.Tensor, prob: float, vocab: int, gen: torch.Generator,
                 special: int = 999):
    """BERT masking: prob of real non-special tokens selected; 80% -> [MASK] (103), 10% random, 10% kept."""
    labels = torch.full_like(ids, -100)
    pick = (torch.rand(ids.shape, generator=gen) < prob) & mask.bool() & (ids > special)
    labels[pick] = ids[pick]
    ids = ids.clone()
    r = torch.rand(ids.shape, generator=gen)
    ids[pick & (r < 0.8)] = 103
    rand = pick & (r >= 0.8) & (r < 0.9)
    ids[rand] = torch.randint(special + 1, vocab, (int(rand.sum()),), generator=gen)
    return ids, labels


class _Student(nn.Module):
    """The student encoder, plus its own MLM head when the teacher has one."""

    def __init__(self, encoder: nn.Module, mlm: Optional[nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.mlm = mlm


def _projection_init(importance: Importance, arch: Architecture, t_arch: Architecture) -> Optional[torch.Tensor]:
    """The teacher dimensions a student cut narrower by slice_init kept, in order (its hidden-state projection's
    starting point), or None for a student as wide as the teacher."""
    if arch.hidden >= t_arch.hidden:
        return None
    return torch.sort(torch.topk(importance.hidden, arch.hidden).indices).values


def _make_student(config: DistillConfig, teacher, importance: Optional[Importance]):
    t_arch = architecture_of(encoder_of(teacher))
    arch = config.student
    projection_init = None
    if config.init == "slice":
        if importance is None:
            raise TrainingError("slice init needs the teacher's importance scores")
        encoder, layer_map = slice_init(arch, teacher, importance, seed=config.seed, dropout=config.dropout)
        projection_init = _projection_init(importance, arch, t_arch)
    elif config.init == "random":
        encoder = build_model(arch, seed=config.seed, dropout=config.dropout)
        layer_map = uniform_layer_map(arch.layers, t_arch.layers)
    else:
        raise TrainingError(f"init must be 'slice' or 'random', got {config.init!r}")
    mlm = None
    t_head = _mlm_head(teacher)
    if t_head is not None:
        from transformers.models.bert.modeling_bert import BertOnlyMLMHead

        head = BertOnlyMLMHead(encoder.config)
        head.predictions.decoder.weight = encoder.embeddings.word_embeddings.weight   # tied, as in BERT
        if config.init == "slice" and arch.hidden == t_arch.hidden:
            with torch.no_grad():
                head.predictions.transform.load_state_dict(t_head.transform.state_dict())
                head.predictions.bias.copy_(t_head.bias[:arch.vocab_size])
        mlm = head
    return _Student(encoder, mlm), layer_map, projection_init


def _teacher_forward(teacher, ids, mask):
    enc = encoder_of(teacher)
    out = enc(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    head = _mlm_head(teacher)
    logits = teacher.cls(out.last_hidden_state) if head is not None else None
    return out, logits


def _check_fits(config: DistillConfig, teacher: Architecture) -> None:
    """The student and the segments fit the teacher: its token ids, its positions."""
    student = config.student
    if student.vocab_size < teacher.vocab_size:
        raise TrainingError(f"the student's vocabulary ({student.vocab_size}) is smaller than the teacher's "
                            f"({teacher.vocab_size}), whose tokenizer the corpus is cut with; give the student "
                            f"vocab_size={teacher.vocab_size}")
    limit = min(student.max_positions, teacher.max_positions)
    if config.max_length > limit:
        raise TrainingError(f"max_length={config.max_length} tokens per segment exceeds the positions of the "
                            f"{'student' if student.max_positions < teacher.max_positions else 'teacher'} ({limit});"
                            f" use max_length <= {limit}")


def _student_forward(student: _Student, ids: torch.Tensor, mask: torch.Tensor, mlm: bool = True):
    """The student's outputs (hidden states, attentions) and, with mlm and a head, its MLM logits."""
    out = student.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    return out, student.mlm(out.last_hidden_state) if mlm and student.mlm is not None else None


class _Distillation:
    """A pretrain run: teacher, tokenizer, corpus, student, loss and the loop over them."""

    def __init__(self, config: DistillConfig, teacher, importance: Optional[Importance],
                 documents: Sequence[tuple[str, str]], progress: bool):
        self.config, out = config, Path(config.out_dir)
        self.teacher = teacher if teacher is not None else load_teacher(config.teacher)
        self.teacher_dir = str(config.teacher or self.teacher.name_or_path)
        self.tokenizer = TextTokenizer.from_directory(self.teacher_dir, config.max_length)
        if importance is None and config.init == "slice":   # measured on this run's segments' truncation
            importance = default_importance(self.teacher, self.tokenizer)
        self.corpus_sha256, self.documents = documents_sha256(documents), len(documents)
        self.corpus = _Corpus(self.tokenizer, config.seed, config.max_documents, documents,
                              _corpus_cache(out, config, self.tokenizer, self.corpus_sha256))
        _check_fits(config, architecture_of(encoder_of(self.teacher)))
        self.student, self.layer_map, projection_init = _make_student(config, self.teacher, importance)
        self.loss_fn = DistillationLoss(config, architecture_of(encoder_of(self.teacher)), self.layer_map,
                                        projection_init)
        params = [p for p in list(self.student.parameters()) + list(self.loss_fn.parameters()) if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.mask_gen = torch.Generator().manual_seed(config.seed + 1)
        self.loop = TrainingLoop(params, optimizer, distillation_schedule(config),
                                 [len(s) for s in self.corpus.segments], config.batch_size, config.seed, bucket=64,
                                 max_steps=config.max_steps, time_budget=config.time_budget, clock=config.clock,
                                 progress=f"distil {config.student}" if progress else None)
        self.checkpointing = Checkpointing(out / "checkpoint.safetensors", "pretrain", config.checkpoint_every,
                                           self.contents)
        self.parts: dict[str, float] = {}

    def contents(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {"config": self.config.to_dict(), "layer_map": self.layer_map, "corpus_sha256": self.corpus_sha256}
        tensors = {**tensors_of(self.student.state_dict(), "model"), **tensors_of(self.loss_fn.state_dict(), "loss"),
                   "rng/mask": self.mask_gen.get_state().numpy()}
        return state, tensors

    def resume(self) -> None:
        checkpoint = self.checkpointing.read()
        if checkpoint is None:
            return
        check_same_run(checkpoint, self.config.to_dict(),
                       _RESUME_KEYS + (_CORPUS_KEYS if self.config.corpus is not None else ()))
        if checkpoint.state.get("corpus_sha256", self.corpus_sha256) != self.corpus_sha256:
            raise TrainingError(f"{checkpoint.path} was written by a run on other text: the corpus's documents "
                                f"have changed since; restore them, or use another out directory")
        self.student.load_state_dict(torch_tensors(checkpoint.group("model")))
        self.loss_fn.load_state_dict(torch_tensors(checkpoint.group("loss")))
        self.loop.load(checkpoint)
        self.mask_gen.set_state(torch.from_numpy(np.array(checkpoint.tensors["rng/mask"])))
        self.layer_map = checkpoint.state["layer_map"]
        print(f"resumed {checkpoint.path} at step {self.loop.step} (epoch {self.loop.epoch}, batch "
              f"{self.loop.cursor}, {self.loop.budget.spent:.0f} s of {self.config.clock} time spent)", file=sys.stderr)

    def loss_of(self, indices: list[int]):
        """The distillation loss on one batch of segments (masked for the MLM losses when the teacher has a head)."""
        ids, mask = collate([self.corpus.segments[i] for i in indices])
        labels = None
        if self.student.mlm is not None:
            ids, labels = _mask_tokens(ids, mask, self.config.mask_prob, self.config.student.vocab_size,
                                       self.mask_gen)
        with torch.no_grad():
            t_out, t_logits = _teacher_forward(self.teacher, ids, mask)
        s_out, s_logits = _student_forward(self.student, ids, mask)
        loss, parts = self.loss_fn(s_out, t_out, mask, s_logits, t_logits, labels)
        return loss, int(mask.sum()), parts

    def train(self, on_step: Optional[Callable[[int, float], None]]) -> None:
        self.student.train()
        loop = self.loop
        with open(Path(self.config.out_dir) / "log.jsonl", "a") as log:
            def after_step(outcome: StepOutcome) -> None:
                self.parts = outcome.extra
                if loop.step % self.config.log_every == 0:
                    log.write(json.dumps({"step": loop.step, "epoch": loop.epoch, "loss": loop.last_loss,
                                          **self.parts, "lr": loop.optimizer.param_groups[0]["lr"],
                                          "tokens": loop.tokens, "wall": loop.budget.wall,
                                          "cpu": loop.budget.cpu}) + "\n")
                    log.flush()
                if on_step is not None:
                    on_step(loop.step, loop.last_loss)

            loop.run(self.loss_of, after_step, self.checkpointing)

    def hold_budget(self, started: float, evaluate: bool) -> None:
        """A wall-clock budget over the whole call (TrainingLoop.hold_stage_budget), keeping time for writing the
        student (at most a checkpoint's time: its weights without the optimiser's) and, with evaluate, for the
        held-out evaluation, estimated from one timed batch of it."""
        if not (self.config.time_budget is not None and self.config.clock == "wall"):
            return
        evaluation = self._evaluation_seconds() if evaluate and self._evaluated() else 0.0
        self.loop.hold_stage_budget(started, lambda: evaluation + (self.checkpointing.seconds or 0.0))

    def _evaluated(self) -> bool:
        return self.config.student.hidden == architecture_of(encoder_of(self.teacher)).hidden

    def _evaluation_seconds(self, batch_size: int = 64) -> float:
        """evaluate_student's time: its first batch of held-out sentences embedded by student and teacher, timed,
        scaled by the tokens of all of them (and the pair), in batches padded as _embed pads them."""
        sentences = heldout_sentences() + list(PAIR) * 2
        ids = self.tokenizer.token_ids(sentences)
        probe = shortest_time(lambda: (_embed(self.student.encoder, self.tokenizer, sentences[:batch_size]),
                                       _embed(self.teacher, self.tokenizer, sentences[:batch_size])))
        self.student.train()          # _embed left it in eval mode
        return probe * padded_tokens(ids, batch_size) / padded_tokens(ids[:batch_size], batch_size)

    def result(self, evaluate: bool) -> dict[str, Any]:
        """Write the student (HF format) and result.json; return the result."""
        config, loop, out = self.config, self.loop, Path(self.config.out_dir)
        self.student.encoder.eval()
        student_dir = write_hf_directory(self.student.encoder, out / "student", self.teacher_dir)
        result: dict[str, Any] = {
            "student": str(config.student), "architecture": config.student.to_dict(), "init": config.init,
            "layer_map": self.layer_map, "steps": loop.step,
            "epochs": loop.epoch + loop.cursor / max(1, len(loop.lengths) // config.batch_size),
            "tokens": loop.tokens, "train_wall_s": loop.budget.wall, "train_cpu_s": loop.budget.cpu,
            "tokens_per_s_wall": loop.tokens / max(loop.budget.wall, 1e-9),
            "tokens_per_cpu_s": loop.tokens / max(loop.budget.cpu, 1e-9),
            "threads": torch.get_num_threads(), "final_loss": loop.last_loss, "final_parts": self.parts,
            "documents": self.documents, "segments": len(self.corpus.segments),
            "student_dir": str(student_dir), "parameters": config.student.parameters(),
            "parameters_without_embeddings": config.student.parameters(embeddings=False),
        }
        if evaluate and self._evaluated():
            result.update(evaluate_student(self.student.encoder, self.teacher, self.tokenizer))
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        return result


def distillation_documents(config: DistillConfig, base: Optional[Sequence[tuple[str, str]]] = None
                           ) -> list[tuple[str, str]]:
    """(source, text) of the documents a run distils on: the base corpus (default the built-in Wikipedia + IMDB
    one, data.pretraining_documents), with config.corpus's documents after it ("mix") or those alone ("replace").
    The user's files are read first, so a bad one is reported before the built-in corpus is read."""
    if config.corpus is None:
        return list(base if base is not None else pretraining_documents())
    mine = corpus_documents(config.corpus, config.corpus_text_column)
    if config.corpus_mode == "replace":
        return mine
    return list(base if base is not None else pretraining_documents()) + mine


def _corpus_cache(out: Path, config: DistillConfig, tokenizer: TextTokenizer, documents_digest: str) -> Path:
    """The segment cache of a run: named by its documents and the tokenizer's vocabulary, so that a run never
    reads the segments of other text (or other token ids)."""
    key = hashlib.sha256(documents_digest.encode() + "\n".join(tokenizer.vocabulary()).encode("utf-8"))
    return out / f"corpus-{key.hexdigest()[:16]}-{config.seed}-{config.max_length}-{config.max_documents}.safetensors"


@progress_governs_transformers_bars
def pretrain(config: DistillConfig, teacher=None, importance: Optional[Importance] = None,
             documents: Optional[Sequence[tuple[str, str]]] = None, progress: bool = True,
             evaluate: bool = True, on_step: Optional[Callable[[int, float], None]] = None,
             started: Optional[float] = None) -> dict[str, Any]:
    """Distil config.student from the teacher; resume from out_dir/checkpoint.safetensors when present.

    The text: config.corpus's documents (the user's files, training.corpus_documents) beside the base corpus or
    alone (config.corpus_mode); the base is `documents` when given, else the built-in Wikipedia + IMDB corpus.
    Writes out_dir/corpus-<key>.safetensors (the token ids of the segments, named by the text and tokenizer),
    out_dir/checkpoint.safetensors (periodically), out_dir/log.jsonl (one line per log_every steps),
    out_dir/student/ (the final student, HF format, loadable by bortengine.load) and out_dir/result.json.
    Returns the result dict (steps, tokens, throughput, clocks, final losses, held-out similarity figures).
    on_step(step, loss) is called after each step (and its checkpoint, if one is due); an exception it raises
    stops the run as an interruption would. A run directory of an older bortengine (checkpoint.pt) is refused.
    A wall-clock time budget (clock="wall") holds for the whole call, counted from `started` (a time.monotonic()
    value, e.g. the command's start; default this call's start), and across resumes.
    """
    started = time.monotonic() if started is None else started     # a wall-clock time budget counts from here
    config.check()
    out = Path(config.out_dir)
    refuse_old_files(out, ("checkpoint.pt",))
    documents = distillation_documents(config, documents)     # the user's files are checked before any model loads
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads or available_cpus())
    run = _Distillation(config, teacher, importance, documents, progress)
    run.resume()
    run.hold_budget(started, evaluate)
    run.train(on_step)
    return run.result(evaluate)


@torch.no_grad()
def _embed(model, tokenizer: TextTokenizer, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = collate(tokenizer.token_ids(texts[start:start + batch_size]))
        hidden = encoder_of(model)(input_ids=ids, attention_mask=mask).last_hidden_state
        out.append(F.normalize(mean_pool(hidden, mask), dim=-1))
    return torch.cat(out)


def embedding_similarity(student, teacher, tokenizer: TextTokenizer,
                         sentences: Optional[Sequence[str]] = None) -> float:
    """Mean cosine between student and teacher sentence embeddings (default: the 1,000 held-out sentences)."""
    sentences = heldout_sentences() if sentences is None else list(sentences)
    return float((_embed(student, tokenizer, sentences) * _embed(teacher, tokenizer, sentences)).sum(-1).mean())


def pair_similarity(model, tokenizer: TextTokenizer, pair: Sequence[str] = PAIR) -> float:
    e = _embed(model, tokenizer, list(pair))
    return float(e[0] @ e[1])


def evaluate_student(student, teacher, tokenizer: TextTokenizer) -> dict[str, float]:
    s_pair, t_pair = pair_similarity(student, tokenizer), pair_similarity(teacher, tokenizer)
    return {"heldout_mean_cosine": embedding_similarity(student, teacher, tokenizer),
            "pair_similarity_student": s_pair, "pair_similarity_teacher": t_pair,
            "pair_difference": abs(s_pair - t_pair)}


# -- the error surrogate -------------------------------------------------------------------------------------------
_CORPORA: dict[tuple, "_Corpus"] = {}


def surrogate_loss(architecture: Architecture, teacher=None, steps: int = 50, seed: int = 0, batch_size: int = 16,
                   max_length: int = 64, lr: float = 2e-4, eval_sentences: int = 64,
                   documents: Optional[Sequence[tuple[str, str]]] = None, threads: Optional[int] = None) -> float:
    """The FPTAS error surrogate e(ξ): distillation loss of a slice-initialised student after a fixed budget.

    Runs `steps` optimiser steps of the distillation objective (hidden + attention + embedding losses, the same
    weights as pretrain) on the deterministic first batches of the pretraining corpus, then returns the same loss,
    without dropout, on a fixed evaluation batch: the first sentence of the first eval_sentences IMDB dev reviews
    (never trained on). Same (architecture, teacher, steps, seed) -> same value on the same machine.
    teacher: a model directory, a loaded BertModel (with .name_or_path), or None for all-MiniLM-L6-v2.
    """
    t_model, importance, _, t_dir = teacher_bundle(teacher)
    arch = replace(architecture, head="pooler") if architecture.head == "classifier" else architecture
    config = _surrogate_config(arch, t_dir, steps, seed, batch_size, max_length, lr, threads)
    tokenizer = TextTokenizer.from_directory(t_dir, max_length)
    student, layer_map, proj_init = _make_student(config, t_model, importance)
    loss_fn = DistillationLoss(config, architecture_of(encoder_of(t_model)), layer_map, proj_init)
    if documents is not None:
        corpus = _Corpus(tokenizer, seed, config.max_documents, documents, None)
    else:  # every candidate of a search trains on the same segments: tokenise them once per process
        key = (t_dir, seed, config.max_documents, max_length)
        corpus = _CORPORA.get(key) or _CORPORA.setdefault(
            key, _Corpus(tokenizer, seed, config.max_documents, None, None))
    _distil_steps(student, t_model, loss_fn, corpus, config)
    ids, mask = collate(tokenizer.token_ids(_eval_texts(eval_sentences)))
    student.eval()
    with torch.no_grad():
        t_out, _ = _teacher_forward(t_model, ids, mask)
        s_out, _ = _student_forward(student, ids, mask, mlm=False)
        loss, _ = loss_fn(s_out, t_out, mask)
    return float(loss)


def _distil_steps(student: _Student, t_model, loss_fn: DistillationLoss, corpus: _Corpus, config: DistillConfig
                  ) -> None:
    """config.max_steps optimiser steps of the distillation objective on the corpus's first batches (seeded), in place
    on the student and the loss's projections: the surrogates' short distillation. MLM losses left out, even for a
    teacher with a head."""
    params = list(student.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    student.train()

    def loss_of(indices: list[int]):
        ids, mask = collate([corpus.segments[i] for i in indices])
        with torch.no_grad():
            t_out, _ = _teacher_forward(t_model, ids, mask)
        s_out, _ = _student_forward(student, ids, mask, mlm=False)
        return loss_fn(s_out, t_out, mask)[0], int(mask.sum())

    TrainingLoop(params, optimizer, distillation_schedule(config), [len(s) for s in corpus.segments],
                 config.batch_size, config.seed, bucket=64, max_steps=config.max_steps).run(loss_of)


def distil_cut_student(encoder, layer_map: Sequence[int], teacher_dir: str, importance: Importance,
                       documents: Sequence[tuple[str, str]], steps: int, seed: int = 0, batch_size: int = 16,
                       max_length: int = 64, lr: float = 2e-4, threads: Optional[int] = None) -> None:
    """`steps` optimiser steps of the distillation objective (as surrogate_loss trains) on `documents` ((source,
    text) pairs, e.g. a task's training texts), in place on `encoder`: a BertModel cut from the teacher in
    teacher_dir by slice_init with `importance`, whose layer i learns teacher layer layer_map[i]. For a surrogate
    that distils a student before it fine-tunes it (search.DistilFinetuneSurrogate)."""
    t_model, _, _, t_dir = teacher_bundle(teacher_dir)
    arch = replace(architecture_of(encoder), head="pooler")
    t_arch = architecture_of(encoder_of(t_model))
    config = _surrogate_config(arch, t_dir, steps, seed, batch_size, max_length, lr, threads)
    loss_fn = DistillationLoss(config, t_arch, list(layer_map), _projection_init(importance, arch, t_arch))
    corpus = _Corpus(TextTokenizer.from_directory(t_dir, max_length), seed, config.max_documents, documents, None)
    _distil_steps(_Student(encoder, None), t_model, loss_fn, corpus, config)


def _surrogate_config(arch: Architecture, t_dir: str, steps: int, seed: int, batch_size: int, max_length: int,
                      lr: float, threads: Optional[int]) -> DistillConfig:
    """The settings of the surrogates' short distillation: a tenth of the steps warm-up, no checkpoints or logs,
    a quarter of a document per sample (at least 64 documents)."""
    config = DistillConfig(student=arch, out_dir="", teacher=t_dir, seed=seed, batch_size=batch_size,
                           max_length=max_length, lr=lr, warmup_steps=max(1, steps // 10), max_steps=steps,
                           checkpoint_every=float("inf"), log_every=10**9, threads=threads,
                           max_documents=max(64, steps * batch_size // 4))
    config.check()
    return config


def _eval_texts(n: int) -> list[str]:
    texts = []
    for example in load_split("imdb", "dev"):
        sentences = split_sentences(example.text)
        if sentences:
            texts.append(sentences[0])
        if len(texts) == n:
            break
    return texts
