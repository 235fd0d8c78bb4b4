"""Distillation pretraining: teacher -> student on real text (Wikipedia openings + IMDB train reviews).

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

The data order is a function of the seed alone (batch_order), so a run resumed from its checkpoint (student,
loss projections, optimiser, step, position in the data, clocks, RNG) continues exactly where it stopped.

Shapes: B = batch, T = tokens, H = hidden, A = heads, V = vocab.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bortengine.architecture import Architecture
from .data import (WordPieceTokenizer, batch_order, build_segments, collate, heldout_sentences, load_split,
                   pretraining_documents, split_sentences)
from .models import architecture_of, build_model, encoder_of, load_teacher
from .slicing import Importance, default_importance, mean_pool, slice_init

__all__ = ["DistillConfig", "DistillationLoss", "pretrain", "surrogate_loss", "embedding_similarity",
           "pair_similarity", "uniform_layer_map", "Budget", "PAIR"]

PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
TEACHER_PAIR = 0.7553


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
    time_budget: Optional[float] = None  # stop after this many seconds of training on `clock`
    clock: str = "cpu"                   # "cpu": process CPU time (all threads); "wall": elapsed time
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["student"] = self.student.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        d = dict(d)
        d["student"] = Architecture.from_dict(d["student"])
        return cls(**d)


# Fields that must agree between a checkpoint and the run that resumes it (the rest may change, e.g. the budget).
_RESUME_KEYS = ("student", "teacher", "init", "seed", "batch_size", "max_length", "max_documents")


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


class Budget:
    """Training time on a chosen clock, accumulated across resumes (only time inside training steps counts)."""

    def __init__(self, clock: str, spent: float = 0.0, wall: float = 0.0, cpu: float = 0.0):
        if clock not in ("cpu", "wall"):
            raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")
        self.clock, self.wall, self.cpu = clock, wall, cpu

    @property
    def spent(self) -> float:
        return self.cpu if self.clock == "cpu" else self.wall

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


class _Corpus:
    """Token-id segments of the pretraining documents, cached on disk per (tokenizer, seed, max_length)."""

    def __init__(self, tokenizer: WordPieceTokenizer, seed: int, max_documents: Optional[int],
                 documents: Optional[Sequence[tuple[str, str]]], cache: Optional[Path]):
        if cache is not None and cache.is_file():
            self.segments = torch.load(cache)
            return
        docs = list(documents) if documents is not None else pretraining_documents()
        rng = torch.Generator().manual_seed(seed)
        docs = [docs[i] for i in torch.randperm(len(docs), generator=rng).tolist()]
        if max_documents is not None:
            docs = docs[:max_documents]
        self.segments = [list(s.ids) for s in build_segments(tokenizer, docs, seed)]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.segments, cache)


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


def _make_student(config: DistillConfig, teacher, importance: Optional[Importance]):
    t_arch = architecture_of(encoder_of(teacher))
    arch = config.student
    projection_init = None
    if config.init == "slice":
        if importance is None:
            raise ValueError("slice init needs the teacher's importance scores")
        encoder, layer_map = slice_init(arch, teacher, importance, seed=config.seed, dropout=config.dropout)
        if arch.hidden < t_arch.hidden:
            projection_init = torch.sort(torch.topk(importance.hidden, arch.hidden).indices).values
    elif config.init == "random":
        encoder = build_model(arch, seed=config.seed, dropout=config.dropout)
        layer_map = uniform_layer_map(arch.layers, t_arch.layers)
    else:
        raise ValueError(f"init must be 'slice' or 'random', got {config.init!r}")
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


def _lr_at(config: DistillConfig, step: int, budget_fraction: float) -> float:
    """Linear warm-up, then linear decay to 10% at the end of the run (max_steps, else the time budget)."""
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    if config.max_steps:
        frac = step / config.max_steps
    elif config.time_budget:
        frac = budget_fraction
    else:
        frac = 0.0
    return config.lr * warm * (1.0 - 0.9 * min(1.0, frac))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _progress(total: Optional[int], initial: int, desc: str):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                mininterval=0.5 if tty else 30.0, file=sys.stderr)


def pretrain(config: DistillConfig, teacher=None, importance: Optional[Importance] = None,
             documents: Optional[Sequence[tuple[str, str]]] = None, progress: bool = True,
             evaluate: bool = True, on_step: Optional[Callable[[int, float], None]] = None) -> dict[str, Any]:
    """Distil config.student from the teacher; resume from out_dir/checkpoint.pt when present.

    Writes out_dir/checkpoint.pt (periodically), out_dir/log.jsonl (one line per log_every steps),
    out_dir/student/ (the final student, HF format, loadable by bortengine.load) and out_dir/result.json.
    Returns the result dict (steps, tokens, throughput, clocks, final losses, held-out similarity figures).
    on_step(step, loss) is called after each step (and its checkpoint, if one is due); an exception it raises
    stops the run as an interruption would.
    """
    if config.max_steps is None and config.time_budget is None:
        raise ValueError("pretrain needs a stopping rule: max_steps and/or time_budget")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    if teacher is None:
        teacher = load_teacher(config.teacher)
    teacher_dir = Path(config.teacher or teacher.name_or_path)
    tokenizer = WordPieceTokenizer(teacher_dir, config.max_length)
    if importance is None and config.init == "slice":
        importance = default_importance(teacher, tokenizer)

    cache = None if documents is not None else out / f"corpus-{config.seed}-{config.max_length}-{config.max_documents}.pt"
    corpus = _Corpus(tokenizer, config.seed, config.max_documents, documents, cache)
    lengths = [len(s) for s in corpus.segments]
    if not lengths:
        raise ValueError("the pretraining corpus is empty")

    student, layer_map, projection_init = _make_student(config, teacher, importance)
    loss_fn = DistillationLoss(config, architecture_of(encoder_of(teacher)), layer_map, projection_init)
    params = [p for p in list(student.parameters()) + list(loss_fn.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    mask_gen = torch.Generator().manual_seed(config.seed + 1)

    step, epoch, cursor, tokens = 0, 0, 0, 0
    budget = Budget(config.clock)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        saved = ckpt["config"]
        mine = config.to_dict()
        diff = [k for k in _RESUME_KEYS if saved.get(k) != mine.get(k)]
        if diff:
            raise ValueError(f"{ckpt_path} was written by a different run (differs in {diff}); use another "
                             f"out_dir or delete the checkpoint")
        student.load_state_dict(ckpt["student"])
        loss_fn.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, cursor, tokens = ckpt["step"], ckpt["epoch"], ckpt["cursor"], ckpt["tokens"]
        budget = Budget(config.clock, wall=ckpt["wall"], cpu=ckpt["cpu"])
        torch.set_rng_state(ckpt["rng"])
        mask_gen.set_state(ckpt["mask_rng"])
        layer_map = ckpt["layer_map"]
        print(f"resumed {ckpt_path} at step {step} (epoch {epoch}, batch {cursor}, "
              f"{budget.spent:.0f} s of {config.clock} time spent)", file=sys.stderr)

    def save_checkpoint():
        _atomic_save({"config": config.to_dict(), "student": student.state_dict(), "loss": loss_fn.state_dict(),
                      "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch, "cursor": cursor,
                      "tokens": tokens, "wall": budget.wall, "cpu": budget.cpu, "rng": torch.get_rng_state(),
                      "mask_rng": mask_gen.get_state(), "layer_map": layer_map}, ckpt_path)

    def done() -> bool:
        return bool((config.max_steps is not None and step >= config.max_steps) or
                    (config.time_budget is not None and budget.spent >= config.time_budget))

    student.train()
    vocab = config.student.vocab_size
    bar = _progress(config.max_steps, step, f"distil {config.student}") if progress else None
    log = open(out / "log.jsonl", "a")
    last_ckpt = time.perf_counter()
    run_tokens, run_wall = 0, 0.0
    parts: dict[str, float] = {}
    loss_value = float("nan")
    try:
        while not done():
            batches = batch_order(lengths, config.batch_size, config.seed, epoch)
            if cursor >= len(batches):
                epoch, cursor = epoch + 1, 0
                continue
            seqs = [corpus.segments[i] for i in batches[cursor]]
            ids, mask = collate(seqs)
            with budget:
                start = time.perf_counter()
                labels = None
                s_ids = ids
                if student.mlm is not None:
                    s_ids, labels = _mask_tokens(ids, mask, config.mask_prob, vocab, mask_gen)
                with torch.no_grad():
                    t_out, t_logits = _teacher_forward(teacher, s_ids, mask)
                s_out = student.encoder(input_ids=s_ids, attention_mask=mask, output_hidden_states=True,
                                        output_attentions=True)
                s_logits = student.mlm(s_out.last_hidden_state) if student.mlm is not None else None
                loss, parts = loss_fn(s_out, t_out, mask, s_logits, t_logits, labels)
                frac = budget.spent / config.time_budget if config.time_budget else 0.0
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(config, step, frac)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                run_wall += time.perf_counter() - start
            n_tok = int(mask.sum())
            tokens += n_tok
            run_tokens += n_tok
            step += 1
            cursor += 1
            loss_value = float(loss.detach())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{run_tokens / max(run_wall, 1e-9):.0f}",
                                spent=f"{budget.spent / 60:.1f}m{config.clock}", refresh=False)
            if step % config.log_every == 0:
                log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss_value, **parts,
                                      "lr": optimizer.param_groups[0]["lr"], "tokens": tokens,
                                      "wall": budget.wall, "cpu": budget.cpu}) + "\n")
                log.flush()
            if time.perf_counter() - last_ckpt >= config.checkpoint_every:
                save_checkpoint()
                last_ckpt = time.perf_counter()
            if on_step is not None:
                on_step(step, loss_value)
    finally:
        if bar is not None:
            bar.close()
        log.close()
    save_checkpoint()

    from bortengine.export.hf import export

    student.encoder.eval()
    student_dir = export(student.encoder, out / "student", teacher_dir)
    result: dict[str, Any] = {
        "student": str(config.student), "architecture": config.student.to_dict(), "init": config.init,
        "layer_map": layer_map, "steps": step, "epochs": epoch + cursor / max(1, len(lengths) // config.batch_size),
        "tokens": tokens, "train_wall_s": budget.wall, "train_cpu_s": budget.cpu,
        "tokens_per_s_wall": tokens / max(budget.wall, 1e-9), "tokens_per_cpu_s": tokens / max(budget.cpu, 1e-9),
        "threads": torch.get_num_threads(), "final_loss": loss_value, "final_parts": parts,
        "student_dir": str(student_dir), "parameters": config.student.parameters(),
        "parameters_without_embeddings": config.student.parameters(embeddings=False),
    }
    if evaluate and config.student.hidden == architecture_of(encoder_of(teacher)).hidden:
        result.update(evaluate_student(student.encoder, teacher, tokenizer))
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def _embed(model, tokenizer: WordPieceTokenizer, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = collate(tokenizer(texts[start:start + batch_size]))
        hidden = encoder_of(model)(input_ids=ids, attention_mask=mask).last_hidden_state
        out.append(F.normalize(mean_pool(hidden, mask), dim=-1))
    return torch.cat(out)


def embedding_similarity(student, teacher, tokenizer: WordPieceTokenizer,
                         sentences: Optional[Sequence[str]] = None) -> float:
    """Mean cosine between student and teacher sentence embeddings (default: the 1,000 held-out sentences)."""
    sentences = heldout_sentences() if sentences is None else list(sentences)
    return float((_embed(student, tokenizer, sentences) * _embed(teacher, tokenizer, sentences)).sum(-1).mean())


def pair_similarity(model, tokenizer: WordPieceTokenizer, pair: Sequence[str] = PAIR) -> float:
    e = _embed(model, tokenizer, list(pair))
    return float(e[0] @ e[1])


def evaluate_student(student, teacher, tokenizer) -> dict[str, float]:
    s_pair, t_pair = pair_similarity(student, tokenizer), pair_similarity(teacher, tokenizer)
    return {"heldout_mean_cosine": embedding_similarity(student, teacher, tokenizer),
            "pair_similarity_student": s_pair, "pair_similarity_teacher": t_pair,
            "pair_difference": abs(s_pair - t_pair)}


# -- the error surrogate -------------------------------------------------------------------------------------------
_TEACHERS: dict[str, tuple[Any, Importance, WordPieceTokenizer]] = {}
_CORPORA: dict[tuple, "_Corpus"] = {}


def _teacher_bundle(teacher) -> tuple[Any, Importance, WordPieceTokenizer, str]:
    """(teacher model, importance, tokenizer, directory), loaded and measured once per process."""
    if teacher is None or isinstance(teacher, (str, os.PathLike)):
        from bortengine.training.teacher import default_teacher_path

        key = str(teacher or default_teacher_path())
        if key not in _TEACHERS:
            model = load_teacher(key)
            tok = WordPieceTokenizer(key, 128)
            _TEACHERS[key] = (model, default_importance(model, tok), tok)
        model, imp, tok = _TEACHERS[key]
        return model, imp, tok, key
    key = str(teacher.name_or_path)
    if key not in _TEACHERS:
        tok = WordPieceTokenizer(key, 128)
        _TEACHERS[key] = (teacher, default_importance(teacher, tok), tok)
    model, imp, tok = _TEACHERS[key]
    return model, imp, tok, key


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
    import tempfile

    t_model, importance, _, t_dir = _teacher_bundle(teacher)
    arch = replace(architecture, head="pooler") if architecture.head == "classifier" else architecture
    with tempfile.TemporaryDirectory() as tmp:
        config = DistillConfig(student=arch, out_dir=tmp, teacher=t_dir, seed=seed, batch_size=batch_size,
                               max_length=max_length, lr=lr, warmup_steps=max(1, steps // 10), max_steps=steps,
                               checkpoint_every=float("inf"), log_every=10**9, threads=threads,
                               max_documents=max(64, steps * batch_size // 4))
        tokenizer = WordPieceTokenizer(t_dir, max_length)
        student, layer_map, proj_init = _make_student(config, t_model, importance)
        loss_fn = DistillationLoss(config, architecture_of(encoder_of(t_model)), layer_map, proj_init)
        key = (t_dir, seed, config.max_documents, max_length)
        if documents is not None:
            corpus = _Corpus(tokenizer, seed, config.max_documents, documents, None)
        else:  # every candidate of a search trains on the same segments: tokenise them once per process
            corpus = _CORPORA.get(key) or _CORPORA.setdefault(
                key, _Corpus(tokenizer, seed, config.max_documents, None, None))
        lengths = [len(s) for s in corpus.segments]
        params = list(student.parameters()) + list(loss_fn.parameters())
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(threads)
        student.train()
        step, epoch = 0, 0
        while step < steps:
            for batch in batch_order(lengths, batch_size, seed, epoch):
                if step >= steps:
                    break
                ids, mask = collate([corpus.segments[i] for i in batch])
                with torch.no_grad():
                    t_out, _ = _teacher_forward(t_model, ids, mask)
                s_out = student.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                        output_attentions=True)
                loss, _ = loss_fn(s_out, t_out, mask)
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(config, step, 0.0)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                step += 1
            epoch += 1
        texts = _eval_texts(eval_sentences)
        ids, mask = collate(tokenizer(texts))
        student.eval()
        with torch.no_grad():
            t_out, _ = _teacher_forward(t_model, ids, mask)
            s_out = student.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                    output_attentions=True)
            loss, _ = loss_fn(s_out, t_out, mask)
    return float(loss)


def _eval_texts(n: int) -> list[str]:
    texts = []
    for example in load_split("imdb", "dev"):
        sentences = split_sentences(example.text)
        if sentences:
            texts.append(sentences[0])
        if len(texts) == n:
            break
    return texts
