"""The user's text for distillation (training.corpus_documents, pretrain's corpus / corpus_mode, `bortengine
pretrain --corpus`): real files of every format read back, tiny pretrain runs on each, mix against replace, the
segment cache named by the text, and every bad input refused with the file and row before a model is loaded; and
the pieces of documents cut to a task's lengths that the pipeline's teacher labels (training.transfer_pieces)."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq

from bortengine.architecture import Architecture
from bortengine.cli import main
from bortengine.engine import TextTokenizer
from bortengine.training import TrainingError, corpus_documents, read_checkpoint, transfer_pieces
from bortengine.training import distill
from bortengine.training.distill import DistillConfig, pretrain
from test_cli import assert_error_line, assert_usage_error

MARK = "zebra"   # in every sentence of the user's text, in none of the stand-in built-in corpus
USER = ["The zebra ran across the plain. A zebra has black stripes.\nEvery zebra sleeps standing up.",
        "Our zebra was born in spring. The zebra foal walked within an hour.",
        "A zebra herd moved to the river. Each zebra drank in turn. Lions watched the zebra herd."]
BUILT_IN = [("wiki", "The cat sat on the mat. It was a sunny day. Birds sang in the trees outside."),
            ("imdb", "This film was a waste of time. The acting was wooden. I would not watch it again."),
            ("wiki", "Paris is the capital of France. It has many museums. The Louvre is the largest one.")] * 3


@pytest.fixture(scope="module")
def teacher_dir(make_model):
    return make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=64, seed=5)


def _write(directory: Path, kind: str, texts=USER, column: str = "text") -> Path:
    """The texts as a real file (or folder) of the given kind, written by the standard writers."""
    rows = [{"id": i, column: t} for i, t in enumerate(texts)]
    if kind == "txt":
        path = directory / "corpus.txt"
        path.write_text("\n\n\n".join(texts) + "\n", encoding="utf-8")
    elif kind == "folder":
        path = directory / "texts"
        for i, text in enumerate(texts):   # nested, named so that the sorted order is the texts' order
            (path / f"part{i}" / "deeper").mkdir(parents=True)
            (path / f"part{i}" / "deeper" / f"{i}.txt").write_text(text + "\n", encoding="utf-8")
        (path / "notes.md").write_text("not part of the corpus")
    elif kind == "jsonl":
        path = directory / "corpus.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind in ("csv", "tsv"):
        path = directory / f"corpus.{kind}"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["id", column], delimiter="," if kind == "csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    else:
        path = directory / "corpus.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


KINDS = ("txt", "folder", "jsonl", "csv", "tsv", "parquet")


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_reads_back_the_texts(tmp_path, kind):
    path = _write(tmp_path, kind)
    documents = corpus_documents([path])
    assert [text for _, text in documents] == USER
    assert all(Path(source).is_file() and Path(source).is_relative_to(path) or source == str(path)
               for source, _ in documents)


def test_json_lines_fields_beside_the_text_may_change_type(tmp_path):
    """Only the text column is read: an id that is 1 on one line and "b" on the next (pyarrow refuses such a
    column) does not matter."""
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"id": i if i % 2 else f"n{i}", "text": t, "extra": [i] if i else None}) + "\n"
                            for i, t in enumerate(USER)))
    assert [text for _, text in corpus_documents([path])] == USER


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.text(st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"]), min_size=1)
                         .filter(str.strip), min_size=1, max_size=3), min_size=1, max_size=5))
def test_text_files_split_at_blank_lines(tmp_path, paragraphs):
    """Documents of non-blank lines, written separated by blank lines, come back one each (stripped)."""
    path = tmp_path / "h.txt"
    path.write_text("\n \n".join("\n".join(lines) for lines in paragraphs), encoding="utf-8")
    assert [t for _, t in corpus_documents(path)] == ["\n".join(lines).strip() for lines in paragraphs]


# -- transfer pieces -------------------------------------------------------------------------------------------
@st.composite
def documents_of_words(draw):
    """(source, text) documents of sentences ("Word word."), every word ending in its document's number (so a
    piece says which document it came from), some documents blank."""
    documents = []
    for d in range(draw(st.integers(1, 8))):
        if draw(st.booleans()) and d % 3 == 2:
            documents.append(("blank", draw(st.sampled_from(["", "  ", "\n\n"]))))
            continue
        sentences = draw(st.lists(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta"]), min_size=1,
                                           max_size=7), min_size=1, max_size=5))
        documents.append(("doc", " ".join(" ".join(f"{w}{d}" for w in words).capitalize() + "."
                                          for words in sentences)))
    return documents


@settings(max_examples=60, deadline=None)
@given(documents_of_words(), st.lists(st.integers(1, 12), min_size=1, max_size=6), st.integers(0, 40),
       st.integers(0, 2**32 - 1))
def test_transfer_pieces_are_runs_of_a_documents_words_of_the_drawn_lengths(documents, lengths, count, seed):
    if not any(text.strip() for _, text in documents):
        with pytest.raises(TrainingError, match="none of the .* documents holds a word"):
            transfer_pieces(documents, lengths, count, seed)
        return
    pieces = transfer_pieces(documents, lengths, count, seed)
    assert len(pieces) == count
    assert pieces == transfer_pieces(documents, lengths, count, seed)            # the same for a seed
    words = {d: text.split() for d, (_, text) in enumerate(documents) if text.strip()}
    used = []
    for piece in pieces:
        (d,) = {int(w.rstrip(".")[-1]) for w in piece.split()}                  # one document's words
        used.append(d)
        assert f" {piece} " in f" {' '.join(words[d])} "                         # consecutive, whole words
        n = len(piece.split())
        # a drawn word count, or all of a document shorter than the count drawn for it
        assert n in lengths or (piece.split() == words[d] and n < max(lengths))
    # spread over the documents: each usable one gives a piece before any gives a second
    counts = [used.count(d) for d in words]
    assert max(counts) - min(counts) <= 1 and sum(counts) == count


def test_transfer_pieces_start_at_sentences_and_at_other_words():
    documents = [("a", "Red fox runs. Blue cat sleeps. <br /><br />Green owl hoots."), ("b", " "),
                 ("c", "One long sentence without any end mark that goes on and on for a while")]
    pieces = transfer_pieces(documents, [3], 400, seed=1)
    words_a = "Red fox runs. Blue cat sleeps. Green owl hoots.".split()      # <br /> cleaned away
    from_a = [p for p in pieces if p.split()[0] in words_a]
    assert len(from_a) == 200 and all(f" {p} " in f" {' '.join(words_a)} " for p in from_a)
    # half start at a sentence, the others at any word (3 of whose 7 starts are sentences): 1/2 + 3/14 of 200
    # expected whole sentences, 143, where starts at any word alone would give 86
    sentences = {"Red fox runs.", "Blue cat sleeps.", "Green owl hoots."}
    assert 120 < sum(p in sentences for p in from_a) < 165
    # a document of one long sentence gives more than the piece at its start: 1/2 + 1/26 of 200 there, 108
    from_c = [p for p in pieces if p not in from_a]
    assert 85 < from_c.count("One long sentence") < 130 and len(set(from_c)) > 5
    assert all(len(p.split()) == 3 for p in pieces)
    assert transfer_pieces(documents, [3], 40, seed=2) != pieces                  # another seed, other pieces
    assert transfer_pieces(documents, [3], 0, seed=1) == []


@pytest.mark.parametrize("lengths, count, documents, says", [
    ([], 5, BUILT_IN, "lengths holds no word count"),
    ([3, 0], 5, BUILT_IN, "word counts are at least 1, got 0"),
    ([3], -1, BUILT_IN, "count is the number of pieces wanted, at least 0; got -1"),
    ([3], 5, [], "none of the 0 documents holds a word"),
    ([3], 5, [("x", " "), ("y", "<br />")], "none of the 2 documents holds a word"),
])
def test_transfer_pieces_refuse_what_they_cannot_cut(lengths, count, documents, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        transfer_pieces(documents, lengths, count, seed=0)


def _config(tmp_path, teacher_dir, name, **kw):
    base = dict(student=Architecture(1, 2, 16, 32, max_positions=64), out_dir=str(tmp_path / name),
                teacher=str(teacher_dir), batch_size=2, max_length=32, warmup_steps=1, max_steps=2,
                checkpoint_every=float("inf"), threads=1)
    base.update(kw)
    return DistillConfig(**base)


def _segments(run_dir: Path, teacher_dir) -> list[str]:
    """The segments a run distilled on, as text (its corpus cache, decoded with the teacher's tokenizer)."""
    (cache,) = run_dir.glob("corpus-*.safetensors")
    saved = read_checkpoint(cache, "corpus")
    ids, ends = saved.tensors["ids"].tolist(), saved.tensors["ends"].tolist()
    tokenizer = TextTokenizer.from_directory(teacher_dir)
    return [tokenizer.decode(ids[a:b]) for a, b in zip([0] + ends[:-1], ends)]


def _sentences(text: str) -> set[str]:
    return {s.lower() for s in re.split(r"(?<=[.!?])\s+", text.strip())}


@pytest.mark.parametrize("kind", KINDS)
def test_pretrain_on_the_users_text_alone(tmp_path, teacher_dir, kind):
    path = _write(tmp_path, kind)
    config = _config(tmp_path, teacher_dir, "run", corpus=[str(path)], corpus_mode="replace")
    result = pretrain(config, progress=False, evaluate=False)
    assert result["steps"] == 2 and result["documents"] == len(USER)
    segments = _segments(tmp_path / "run", teacher_dir)
    assert len(segments) == result["segments"] >= len(USER)
    assert all(MARK in s for s in segments), segments
    assert _sentences(" ".join(segments)) == _sentences(" ".join(USER))


def test_mix_adds_the_users_text_to_the_built_in_corpus(tmp_path, teacher_dir, monkeypatch):
    monkeypatch.setattr(distill, "pretraining_documents", lambda: list(BUILT_IN))   # a small built-in corpus
    path = _write(tmp_path, "jsonl")
    mixed = pretrain(_config(tmp_path, teacher_dir, "mix", corpus=[str(path)]), progress=False, evaluate=False)
    alone = pretrain(_config(tmp_path, teacher_dir, "replace", corpus=[str(path)], corpus_mode="replace"),
                     progress=False, evaluate=False)
    assert mixed["documents"] == len(BUILT_IN) + len(USER) and alone["documents"] == len(USER)
    mix_segments = _segments(tmp_path / "mix", teacher_dir)
    with_mark = [s for s in mix_segments if MARK in s]
    assert with_mark and len(with_mark) < len(mix_segments)
    users = _sentences(" ".join(USER))    # every sentence of the user's text, in both, and nothing else
    assert _sentences(" ".join(with_mark)) == users == _sentences(" ".join(_segments(tmp_path / "replace",
                                                                                    teacher_dir)))
    assert any("louvre" in s for s in mix_segments)
    builtin = pretrain(_config(tmp_path, teacher_dir, "builtin"), progress=False, evaluate=False)
    assert builtin["documents"] == len(BUILT_IN) and not any(MARK in s for s in _segments(tmp_path / "builtin",
                                                                                           teacher_dir))


def test_the_cache_and_the_checkpoint_follow_the_text(tmp_path, teacher_dir):
    path = _write(tmp_path, "txt")
    config = _config(tmp_path, teacher_dir, "run", corpus=[str(path)], corpus_mode="replace")
    pretrain(config, progress=False, evaluate=False)
    path.write_text("A giraffe eats leaves. The giraffe is tall.\n\nThe giraffe calf runs.\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="run on other text"):
        pretrain(config, progress=False, evaluate=False)
    (tmp_path / "run" / "checkpoint.safetensors").unlink()
    pretrain(config, progress=False, evaluate=False)
    caches = sorted((tmp_path / "run").glob("corpus-*.safetensors"))
    assert len(caches) == 2      # a new cache for the new text, never the old one's segments
    tokenizer = TextTokenizer.from_directory(teacher_dir)
    texts = {c.name: read_checkpoint(c, "corpus").tensors["ids"].tolist() for c in caches}
    assert sum("giraffe" in tokenizer.decode(ids) for ids in texts.values()) == 1
    with pytest.raises(TrainingError, match="differs in .*corpus_mode"):
        pretrain(_config(tmp_path, teacher_dir, "run", corpus=[str(path)]), progress=False, evaluate=False)


# -- bad input: a TrainingError naming the file and row or line, before any model is loaded -----------------------
def _bad(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """(corpus paths, a part of the message) of each bad case."""
    if case == "missing":
        return [str(tmp_path / "nope.txt")], "nope.txt does not exist"
    if case == "empty folder":
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        (tmp_path / "empty" / "sub" / "data.csv").write_text("text\nhello\n")
        return [str(tmp_path / "empty")], "holds no .txt file (searched recursively)"
    if case == "unknown suffix":
        (tmp_path / "data.xlsx").write_bytes(b"PK")
        return [str(tmp_path / "data.xlsx")], "a corpus file is .txt"
    if case == "blank text file":
        (tmp_path / "blank.txt").write_text("\n  \n\n")
        return [str(tmp_path / "blank.txt")], "blank.txt holds no text"
    if case == "txt not utf-8":
        (tmp_path / "latin.txt").write_bytes("A first line.\n\nThe second.\nCaf".encode() + b"\xe9 au lait.\n")
        return [str(tmp_path / "latin.txt")], "latin.txt: line 4 is not UTF-8 text (byte 0xe9"
    if case == "csv not utf-8":
        (tmp_path / "latin.csv").write_bytes(b"id,text\n1,Fine text.\n2,Caf\xe9 au lait.\n")
        return [str(tmp_path / "latin.csv")], "latin.csv: row 2 of column 'text' is not UTF-8 text"
    if case == "jsonl not utf-8":
        (tmp_path / "latin.jsonl").write_bytes(b'{"text": "Fine."}\n{"text": "Caf\xe9 au lait."}\n')
        return [str(tmp_path / "latin.jsonl")], "latin.jsonl: row 2 of column 'text' is not UTF-8 text"
    if case == "no column":
        path = _write(tmp_path, "csv", column="review")
        return [str(path)], "has no column 'text'; its columns are 'id', 'review'"
    if case == "parquet no column":
        path = _write(tmp_path, "parquet", column="body")
        return [str(path)], "has no column 'text'; its columns are 'id', 'body'"
    if case == "numbers":
        pq.write_table(pa.table({"text": [3, 4]}), tmp_path / "n.parquet")
        return [str(tmp_path / "n.parquet")], "column 'text' holds int64 values, not text (row 1: 3)"
    if case == "mixed types":
        (tmp_path / "mixed.jsonl").write_text('{"text": "Fine."}\n{"text": 7}\n')
        return [str(tmp_path / "mixed.jsonl")], "mixed.jsonl: column 'text' holds a JSON number, not text (row 2: 7)"
    if case == "jsonl no column":
        (tmp_path / "other.jsonl").write_text('{"id": 1, "body": "Fine."}\n{"id": 2, "body": "Also."}\n')
        return [str(tmp_path / "other.jsonl")], "other.jsonl has no column 'text'; its columns are 'id', 'body'"
    if case == "jsonl not json":
        (tmp_path / "broken.jsonl").write_text('{"text": "Fine."}\n\n{"text": "Also."\n')
        return [str(tmp_path / "broken.jsonl")], "broken.jsonl, line 3: not JSON"
    if case == "empty value":
        (tmp_path / "gap.csv").write_text("id,text\n1,Fine text.\n2,Also fine.\n3,\n")
        return [str(tmp_path / "gap.csv")], "gap.csv: row 3 of column 'text' is empty"
    if case == "null value":
        (tmp_path / "gap.jsonl").write_text('{"text": "Fine."}\n{"text": null}\n')
        return [str(tmp_path / "gap.jsonl")], "gap.jsonl: row 2 of column 'text' is empty"
    if case == "no rows":
        (tmp_path / "head.tsv").write_text("id\ttext\n")
        return [str(tmp_path / "head.tsv")], "head.tsv holds no rows"
    raise AssertionError(case)


BAD = ("missing", "empty folder", "unknown suffix", "blank text file", "txt not utf-8", "csv not utf-8",
       "jsonl not utf-8", "no column", "parquet no column", "numbers", "mixed types", "empty value", "null value",
       "no rows", "jsonl no column", "jsonl not json")


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_before_any_model_loads(tmp_path, case):
    paths, says = _bad(tmp_path, case)
    with pytest.raises(TrainingError) as error:
        corpus_documents(paths)
    assert says in str(error.value)
    config = DistillConfig(student=Architecture(1, 2, 16, 32), out_dir=str(tmp_path / "run"),
                           teacher=str(tmp_path / "no-such-teacher"), max_steps=1, corpus=paths)
    with pytest.raises(TrainingError, match=re.escape(says)):   # not the missing teacher's error
        pretrain(config, progress=False)


@pytest.mark.parametrize("field, value, says", [
    ("corpus_mode", "both", "corpus_mode must be 'mix'"),
    ("corpus", "one.txt", "corpus is a list of paths"),
    ("corpus", [], "corpus is a list of paths"),
])
def test_bad_corpus_options(tmp_path, field, value, says):
    config = DistillConfig(student=Architecture(1, 2, 16, 32), out_dir=str(tmp_path), max_steps=1,
                           **{"corpus": ["x.txt"], field: value})
    with pytest.raises(TrainingError, match=says):
        config.check()
    with pytest.raises(TrainingError, match="'replace' needs a corpus"):
        DistillConfig(student=Architecture(1, 2, 16, 32), out_dir="x", max_steps=1, corpus_mode="replace").check()


# -- the command -----------------------------------------------------------------------------------------------
def _pretrain_argv(tmp_path, teacher_dir, *extra):
    return ["pretrain", "--arch", "1,2,16,32", "--teacher", str(teacher_dir), "--out", str(tmp_path / "run"),
            "--max-steps", "2", "--batch-size", "2", "--max-length", "32", "--threads", "1", "--no-progress",
            "--no-eval", *extra]


def test_pretrain_command_with_a_corpus(tmp_path, teacher_dir, capsys):
    txt = _write(tmp_path, "txt")
    table = _write(tmp_path, "tsv", texts=["The zebra crossed the road. It was late."], column="body")
    argv = _pretrain_argv(tmp_path, teacher_dir, "--corpus", str(txt), str(table), "--corpus-mode", "replace",
                          "--corpus-text-column", "body")
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["documents"] == len(USER) + 1 and result["steps"] == 2
    assert all(MARK in s for s in _segments(tmp_path / "run", teacher_dir))
    code = main(argv[:-2])
    assert "has no column 'text'; its columns are 'id', 'body'" in assert_error_line(capsys, "pretrain", code)


def test_pretrain_command_corpus_errors(tmp_path, teacher_dir, capsys):
    code = main(_pretrain_argv(tmp_path, teacher_dir, "--corpus", str(tmp_path / "nope.jsonl")))
    assert "nope.jsonl does not exist" in assert_error_line(capsys, "pretrain", code)
    code = main(_pretrain_argv(tmp_path, teacher_dir, "--corpus-mode", "replace"))
    assert "--corpus-mode goes with --corpus" in assert_error_line(capsys, "pretrain", code)
    says = assert_usage_error(capsys, _pretrain_argv(tmp_path, teacher_dir, "--corpus", "a", "--corpus-mode", "x"),
                              "pretrain")
    assert "argument --corpus-mode: invalid choice" in says
    assert not (tmp_path / "run").exists()
