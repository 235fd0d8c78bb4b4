"""The error objective e(ξ) of the search: pluggable surrogates, picklable callables Architecture -> float.

AnalyticSurrogate is a cheap closed form for tests; DistillationSurrogate and FinetuneSurrogate train a student
sliced from the teacher (torch, imported only when one is called, normally in a worker process).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import warnings
from functools import lru_cache
from pathlib import Path
from dataclasses import KW_ONLY, dataclass, replace
from typing import Any, Iterator, Optional

from bortengine.architecture import Architecture, require_bert
from bortengine.engine import transformer_directory
from bortengine.files import read_json
from bortengine.search.errors import SearchError
from bortengine.search_space import architecture_dims

__all__ = ["Surrogate", "AnalyticSurrogate", "DistillationSurrogate", "FinetuneSurrogate", "DistilFinetuneSurrogate",
           "SURROGATES", "resolve_surrogate"]

DEFAULT_TEACHER = "all-MiniLM-L6-v2"


class Surrogate:
    """An error surrogate e(ξ): a picklable callable Architecture -> float (lower is better).

    name and settings() identify the results (the cache key): two surrogates with equal name and settings must
    return the same value for the same architecture. error_scale is the default τ of the W-coefficient: the error
    increase worth a factor e ≈ 2.72 in size and latency.
    """

    name = "surrogate"
    error_scale = 1.0
    expensive = False  # True: evaluations train a model, so extract() runs them in one worker process per CPU

    def settings(self) -> dict[str, Any]:
        return {}

    def key(self) -> str:
        text = json.dumps({"name": self.name, "settings": self.settings()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        s = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.name}({s})"

    def __call__(self, arch: Architecture) -> float:
        raise NotImplementedError

    def check_max_point(self, max_point: Architecture) -> None:
        """SearchError before any evaluation when the search's candidates (each at most max_point) are ones this
        surrogate cannot evaluate; the default evaluates any."""


@dataclass
class AnalyticSurrogate(Surrogate):
    """A cheap closed form for tests: a scaling law in the effective size, plus small depth and head-size terms.

        e(ξ) = base + (p_eff / 1e6)^(-alpha) + depth / √D + head · |log2(H/A / 64)|

    Smooth and decreasing in p_eff; the depth and head terms vary inside a (p, l) group by at most
    depth + head·log2(max head-size ratio), small against base, so assumption A_ε holds for ε ≥ 0.05 on the
    shipped spaces (the tests check it). fail/nan: architectures (D, A, H, I) for which it raises or returns NaN
    (to test robustness).
    """

    base: float = 1.0
    alpha: float = 0.3
    depth: float = 0.05
    head: float = 0.005
    fail: tuple = ()
    nan: tuple = ()
    delay: float = 0.0

    name = "analytic"
    error_scale = 0.5

    def settings(self) -> dict[str, Any]:
        return {"base": self.base, "alpha": self.alpha, "depth": self.depth, "head": self.head,
                "fail": [list(x) for x in self.fail], "nan": [list(x) for x in self.nan]}

    def __call__(self, arch: Architecture) -> float:
        dims = architecture_dims(arch)
        if self.delay:
            time.sleep(self.delay)
        if dims in {tuple(x) for x in self.fail}:
            raise RuntimeError(f"analytic surrogate told to fail on {dims}")
        if dims in {tuple(x) for x in self.nan}:
            return float("nan")
        d, a, h, _ = dims
        p = arch.parameters(embeddings=False) if isinstance(arch, Architecture) else Architecture(*dims).parameters(
            embeddings=False)
        return (self.base + (p / 1e6) ** (-self.alpha) + self.depth / math.sqrt(d)
                + self.head * abs(math.log2((h / a) / 64)))


@dataclass
class TrainingSurrogate(Surrogate):
    """A surrogate that trains a student sliced from a teacher (None: all-MiniLM-L6-v2), so extract() runs it in
    worker processes. threads: torch threads per evaluation (None: set by the executor from the CPUs and the
    worker count). Both keyword-only, after each surrogate's own settings."""

    _: KW_ONLY
    teacher: Optional[str] = None
    threads: Optional[int] = None

    expensive = True

    def __post_init__(self) -> None:
        if self.teacher is not None:  # refuse another family now, not in every evaluation of the search
            source = transformer_directory(self.teacher) / "config.json"
            config = read_json(source, SearchError, missing_ok=True)
            if config is None:
                where = Path(self.teacher)
                raise SearchError(f"the teacher {self.teacher} has no config.json"
                                  + ("" if where.is_dir() else " (it is a file, not a directory)" if where.exists()
                                     else " (there is no such directory)")
                                  + ": give a BERT model directory (BertModel, sentence-transformers, "
                                    "BertForSequenceClassification)")
            require_bert(config if isinstance(config, dict) else {}, str(source))
            _check_weights(source.parent)

    def teacher_name(self) -> str:
        return self.teacher or DEFAULT_TEACHER

    def check_max_point(self, max_point: Architecture) -> None:
        """Each of a student's layers is cut from one of the teacher's: a maximum point deeper than the teacher
        would have every deeper candidate fail, after the search spent its budget on them."""
        from bortengine.training import default_teacher_path, too_large_to_slice

        source = transformer_directory(self.teacher or default_teacher_path()) / "config.json"
        teacher = Architecture.from_hf_config(source)
        if too_large_to_slice(max_point, teacher):   # slicing's own rule (said in the search's terms)
            raise SearchError(
                f"the maximum point {max_point} has more layers than the teacher {self.teacher_name()} "
                f"({teacher}), and every student is cut from the teacher's layers: give --max-point (max_point) of "
                f"at most {teacher.layers} layers, e.g. the teacher's own {','.join(map(str, teacher.tuple))}, or "
                f"a space of at most {teacher.layers} layers")


@dataclass
class DistillationSurrogate(TrainingSurrogate):
    """The real surrogate: training.surrogate_loss, the distillation loss of a slice-initialised student after
    `steps` optimiser steps. The defaults are the settings measured in docs/extraction.md (the whole MiniLM
    extraction in 18 minutes on a busy 2-core machine)."""

    steps: int = 16
    seed: int = 0
    batch_size: int = 8
    max_length: int = 32
    lr: float = 2e-4
    eval_sentences: int = 64

    name = "distill"
    error_scale = 1.5

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps, "seed": self.seed, "batch_size": self.batch_size,
                "max_length": self.max_length, "lr": self.lr, "eval_sentences": self.eval_sentences,
                "teacher": self.teacher_name()}

    def __call__(self, arch: Architecture) -> float:
        from bortengine import training

        return training.surrogate_loss(arch, teacher=self.teacher, steps=self.steps, seed=self.seed,
                                       batch_size=self.batch_size, max_length=self.max_length, lr=self.lr,
                                       eval_sentences=self.eval_sentences, threads=self.threads)


DATA_KEYS = ("train", "dev", "test", "text_column", "text_pair_column", "label_column")


@dataclass
class FinetuneSurrogate(TrainingSurrogate):
    """training.finetune_surrogate_loss on a slice-initialised student: mean dev cross-entropy of the task after
    `steps` fine-tuning steps. The task: a built-in one (task "rt", "imdb") or the user's data (data: the files and
    columns, as training.FinetuneConfig takes them, e.g. {"train": "reviews.csv", "label_column": "grade"}); the
    files' content is part of the cache key, so a changed file is never served another file's losses."""

    steps: int = 50
    task: str = "rt"
    seed: int = 0
    batch_size: int = 32
    eval_limit: int = 256
    data: Optional[dict[str, Any]] = None
    train_sample: Optional[int] = None   # a stratified, seeded sample of N training examples (scarce data)
    max_length: Optional[int] = None     # None: the task's (training.task_max_length)

    name = "finetune"
    error_scale = 0.1

    def __post_init__(self):
        super().__post_init__()
        unknown = set(self.data or {}) - set(DATA_KEYS)
        if unknown or (self.data is not None and not self.data.get("train")):
            raise SearchError(f"the finetune surrogate's data names the files and columns {list(DATA_KEYS)} "
                              f"(train required); got {self.data!r}")

    def settings(self) -> dict[str, Any]:
        # "init": students cut with the teacher's classifier when it has one (losses of the random-head students of
        # earlier versions are not these)
        settings = {"steps": self.steps, "task": self.task, "seed": self.seed, "batch_size": self.batch_size,
                    "eval_limit": self.eval_limit, "teacher": self.teacher_name(), "init": "sliced-head"}
        if self.train_sample:
            settings["train_sample"] = self.train_sample
        if self.data:     # the user's data: the cache key follows the files' content, not their names
            settings.update(task=None, data=_data_fingerprint(json.dumps(self.data, sort_keys=True), self.seed,
                                                              self.train_sample), max_length=self.max_length)
        return settings

    def __call__(self, arch: Architecture) -> float:
        from bortengine import training

        student, _ = self._cut_student(arch)
        with _data_already_checked():
            return float(training.finetune_surrogate_loss(self._finetune_config(), steps=self.steps, model=student))

    def _cut_student(self, arch: Architecture):
        """(student, layer map): the student cut from the teacher, with its classifier's columns when it has one."""
        from bortengine import training

        t_model, importance, t_dir = shared_teacher(self.teacher)
        # A teacher fine-tuned on the task gives the student its classifier's columns as well: with a random head,
        # `steps` steps leave every student near the loss of chance (ln 2 for two classes, measured on Rotten
        # Tomatoes: 0.68-0.73 over 61 students), which ranks nothing; cut from the whole classifier, a student's
        # loss tells how much of the teacher's answers its size keeps and how fast it recovers the rest.
        classifier = training.teacher_classifier(t_dir)
        if classifier is None:
            return training.slice_init(replace(arch, head="pooler"), t_model, importance)
        head = replace(arch, head="classifier", num_labels=classifier.config.num_labels)
        student, layer_map = training.slice_init(head, classifier, importance)
        student.config.id2label = dict(classifier.config.id2label)
        student.config.label2id = dict(classifier.config.label2id)
        return student, layer_map

    def _finetune_config(self):
        from bortengine import training

        t_dir = shared_teacher(self.teacher)[2]
        return training.FinetuneConfig(model=t_dir, tokenizer=t_dir, task=None if self.data else self.task,
                                       seed=self.seed, batch_size=self.batch_size, eval_limit=self.eval_limit,
                                       threads=self.threads, max_length=self.max_length,
                                       train_sample=self.train_sample, **(self.data or {}))


@dataclass
class DistilFinetuneSurrogate(FinetuneSurrogate):
    """FinetuneSurrogate's loss after the student was first distilled from the teacher for `distil_steps` steps on
    the task's training texts (training.distil_cut_student: batch 16, 64 tokens). Cut to a narrower hidden size, a
    student ends the fine-tuning surrogate's steps at or near the loss of chance whatever its depth, so that
    surrogate ranks the widest, shallowest students first; a short distillation recovers what a student's shape can
    hold. On four students of one Rotten Tomatoes teacher with known final accuracies, at steps=30 (the pipeline's
    fine-tuning steps), its order was dev accuracy's (Spearman 1.0, against -0.6 for the fine-tuning surrogate
    alone; docs/pipeline.md, the narrow regime); a student costs the distillation's steps more (25-50 s a student
    on 2 cores at 100 steps, 1 x 64 tokens)."""

    distil_steps: int = 100

    name = "distill-finetune"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.distil_steps, bool) or not isinstance(self.distil_steps, int) or self.distil_steps < 0:
            raise SearchError(f"distil_steps must be an integer >= 0 (distillation steps before the fine-tuning "
                              f"steps), got {self.distil_steps!r}")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "distil_steps": self.distil_steps}

    def __call__(self, arch: Architecture) -> float:
        from bortengine import training

        student, layer_map = self._cut_student(arch)
        config = self._finetune_config()
        with _data_already_checked():
            if self.distil_steps:     # on the training texts (and their pairs) the fine-tuning then reads
                texts, pairs = training.load_task(config.data_spec()).texts("train")
                _, importance, t_dir = shared_teacher(self.teacher)
                training.distil_cut_student(training.encoder_of(student), layer_map, t_dir, importance,
                                            [("task", t) for t in list(texts) + list(pairs or [])],
                                            self.distil_steps, seed=self.seed, threads=self.threads)
            return float(training.finetune_surrogate_loss(config, steps=self.steps, model=student))


def _check_weights(directory: Path) -> None:
    """The teacher's safetensors weights readable (their header, every tensor inside the file) before the search:
    a truncated file failed each evaluation in turn, each reloading it, with a hint at the cluster. (Training also
    reads pickled .bin weights, which are not checked here.)"""
    from bortengine.engine import Checkpoint
    from bortengine.errors import ModelLoadError

    if not any((directory / n).exists() for n in ("model.safetensors", "model.safetensors.index.json")):
        return
    try:
        Checkpoint.open(directory)
    except ModelLoadError as e:
        raise SearchError(f"the teacher's weights cannot be read: {e}") from None


@contextlib.contextmanager
def _data_already_checked() -> Iterator[None]:
    """Every evaluation reads the task's data again, in every worker process: what the data's checks warn of
    (training.SplitOverlapWarning: dev or test rows in train too) was said where it was read first (bortengine
    extract and the pipeline read it before the search; the cache key's _data_fingerprint reads it in the calling
    process), not once a student, in each worker's raw format (14 times in one pipeline run)."""
    from bortengine.training import SplitOverlapWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitOverlapWarning)
        yield


@lru_cache(maxsize=None)
def _data_fingerprint(fields: str, seed: int, sample: Optional[int]) -> str:
    """The fingerprint of a task's data (its files' sha256, columns and split), read once per process."""
    from bortengine import training

    return training.load_task(**json.loads(fields), train_limit=sample, seed=seed).fingerprint


def shared_teacher(teacher: Optional[str]) -> tuple[Any, Any, str]:
    """(teacher model, its importance scores, its directory), loaded and measured once per process (shared with
    the distillation surrogate)."""
    from bortengine.training import teacher_bundle

    t_model, importance, _, t_dir = teacher_bundle(teacher)
    return t_model, importance, t_dir


SURROGATES = {"analytic": AnalyticSurrogate, "distill": DistillationSurrogate, "finetune": FinetuneSurrogate,
              "distill-finetune": DistilFinetuneSurrogate}


def resolve_surrogate(spec: "str | Surrogate", **settings: Any) -> Surrogate:
    """A surrogate from a name in SURROGATES (with settings as keyword arguments), or the surrogate itself."""
    if isinstance(spec, Surrogate):
        return spec
    cls = SURROGATES.get(str(spec))
    if cls is None:
        raise SearchError(f"unknown surrogate {spec!r}: give one of {sorted(SURROGATES)}")
    known = {k: v for k, v in settings.items() if v is not None and k in cls.__dataclass_fields__}
    return cls(**known)
