"""`bortengine export` of model directories in every layout bortengine.load reads, and of every kind of head.

- Sharded safetensors (model-0000k-of-0000N.safetensors + model.safetensors.index.json, as transformers'
  save_pretrained(max_shard_size=...) writes them): exported as they are, loading to the source's outputs bit for
  bit, also with --dtype int8 / bf16 (each shard converted, the index naming the int8 scales).
- Pickled PyTorch shards (pytorch_model-0000k-of-0000N.bin + pytorch_model.bin.index.json), which bortengine.load
  refuses: refused by export too, with load's reason and fix, before anything is written.
- sentence-transformers directories whose transformer sits in a sub-folder (0_Transformer/, named by modules.json):
  exported whole, so the export pools and truncates as the source does.
- Token classifiers of every family (...ForTokenClassification): the export keeps the head (architectures,
  id2label, classifier weights) in every dtype export writes; classify_tokens gives the source's entities.

Random-weight models built here (bortengine.testing), no network.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

import bortengine
from bortengine import ModelLoadError
from bortengine.cli import main
from bortengine.engine import SCALE_SUFFIX, Checkpoint, read_safetensors_header, write_safetensors
from bortengine.export import bf16_checkpoint, export_run, quantize_checkpoint
from bortengine.testing import as_sentence_transformers
from test_cli import assert_error_line

DTYPES = ("float32", "int8", "bf16")
FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet")
LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
SMALL = dict(hidden_size=32, num_attention_heads=2, intermediate_size=48, num_hidden_layers=2, max_positions=40)
TEXTS = ["Marie Curie was born in Warsaw and worked in Paris.", "Angela Merkel met Emmanuel Macron in Berlin.",
         "Zürich, São Paulo and Reykjavík: 12345 here.", "x"]


def _export(src, out, capsys, *options) -> dict:
    assert main(["export", str(src), "--out", str(out), *options]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{"):])
    assert report["check_passed"], report
    return report


def _assert_same_outputs(exported, source, dtype="float32"):
    """load(exported, dtype) computes what load(source, dtype) computes, bit for bit, on every output."""
    got, want = bortengine.load(exported, dtype=dtype), bortengine.load(source, dtype=dtype)
    assert got.config.kind == want.config.kind
    ids = np.random.default_rng(0).integers(5, want.config.vocab_size, size=(3, 13))
    mask = (np.arange(13)[None, :] < np.array([13, 4, 9])[:, None]).astype(np.int64)
    a, b = got(ids, mask), want(ids, mask)
    for key in ("last_hidden_state", "pooler_output", "logits"):
        if getattr(b, key) is None:
            assert getattr(a, key) is None, key
        else:
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


def _sharded(src, dst, shard_size="40KB"):
    """src re-saved by transformers in shards of at most shard_size (tokenizer files copied)."""
    import transformers

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    kind = json.loads((src / "config.json").read_text())["architectures"][0]
    getattr(transformers, kind).from_pretrained(str(src)).save_pretrained(dst, max_shard_size=shard_size)
    assert not (dst / "model.safetensors").exists() and len(list(dst.glob("model-*.safetensors"))) > 1
    return dst


def _pickled_shards(src, dst):
    """src with its weights in pickled PyTorch shards only (as transformers 4 wrote them)."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    state = load_file(src / "model.safetensors")
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, part in halves.items():
        torch.save({n: state[n] for n in part}, dst / shard)
    (dst / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: shard for shard, part in halves.items() for n in part}}))
    return dst


def _sentence_transformers(src, dst):
    """src as the transformer module of a sentence-transformers directory that keeps it in 0_Transformer/, with CLS
    pooling + Normalize and a max_seq_length of its own (what a mean-pooling, default-length export would lose)."""
    return as_sentence_transformers(src, dst, pooling="cls", normalize=True, max_seq_length=24)


# ----------------------------------------------------------------------------------------- sharded safetensors
@pytest.mark.parametrize("model", [dict(model_type="bert", head="model"),
                                   dict(model_type="bert", head="sequence"),
                                   dict(model_type="roberta", head="token", labels=LABELS),
                                   dict(model_type="electra", head="model", embedding_size=16)],
                         ids=["bert", "bert-classifier", "roberta-token", "electra"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sharded_safetensors_export_as_they_load(make_encoder, tmp_path, capsys, model, dtype):
    src = _sharded(make_encoder(**model, **SMALL), tmp_path / "src")
    out = tmp_path / "model"
    report = _export(src, out, capsys, "--dtype", dtype)
    if dtype != "float32":
        assert report[dtype]["max_abs_vs_at_load"] == 0.0
        assert json.loads((out / "config.json").read_text())["bortengine_quantization"]["dtype"] == dtype
    _assert_same_outputs(out, src, dtype)
    assert sorted(p.name for p in out.glob("model-*.safetensors")) == \
        sorted(p.name for p in src.glob("model-*.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shards=st.integers(2, 5), data=st.data(), dtype=st.sampled_from(["int8", "bf16"]))
def test_a_sharded_checkpoint_converts_whatever_the_tensors_shards(make_encoder, tmp_path_factory, shards, data,
                                                                    dtype):
    """Any assignment of tensors to shards (a layer's weights split over several, a shard with no linear weight):
    each shard converted in place, the int8 scales beside their weights and in the index; load computes what it
    computes converting the float checkpoint at load."""
    src = make_encoder(model_type="mpnet", head="sequence", **SMALL)
    entries = read_safetensors_header(src / "model.safetensors")
    where = {name: data.draw(st.integers(0, shards - 1), label=name) for name in sorted(entries)}
    out = tmp_path_factory.mktemp("sharded")
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
    files = [f"model-{k + 1:05d}-of-{shards:05d}.safetensors" for k in range(shards)]
    for k, file in enumerate(files):
        write_safetensors(out / file, {n: (e.dtype, e.read_stored()) for n, e in entries.items() if where[n] == k},
                          {"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(e.nbytes for e in entries.values())},
         "weight_map": {n: files[k] for n, k in where.items()}}))

    report = (quantize_checkpoint if dtype == "int8" else bf16_checkpoint)(out)
    assert report["quantized" if dtype == "int8" else "converted"] == 2 * 6
    converted = Checkpoint.open(out).entries
    # int8: FFN out (output.dense, 1 of each layer's 6) as BF16, as the int8 engine runs it; the others I8, scaled
    int8 = {n for n, e in converted.items() if e.dtype == "I8"}
    bf16 = {n for n, e in converted.items() if e.dtype == "BF16"}
    assert (len(int8), len(bf16)) == ((2 * 5, 2) if dtype == "int8" else (0, 2 * 6))
    if dtype == "int8":
        assert all(n.endswith(".output.dense.weight") and ".attention." not in n for n in bf16)
    assert set(converted) == set(entries) | {n + SCALE_SUFFIX for n in int8}
    for name, entry in converted.items():
        assert entry.file.name == files[where[name.removesuffix(SCALE_SUFFIX)]], name
    _assert_same_outputs(out, src, dtype)


def test_pickled_shards_are_refused_as_load_refuses_them(make_encoder, tmp_path, capsys):
    """Weights only in pytorch_model-*.bin shards: load refuses them (pickles run code); export says the same, with
    the conversion to safetensors, before writing anything."""
    src = _pickled_shards(make_encoder(model_type="distilbert", head="model", **SMALL), tmp_path / "src")
    with pytest.raises(ModelLoadError) as loading:
        bortengine.load(src)
    out = tmp_path / "model"
    capsys.readouterr()   # (the building's progress bars)
    code = main(["export", str(src), "--out", str(out)])
    message = assert_error_line(capsys, "export", code)
    assert str(loading.value) in message and "safe_serialization=True" in message
    assert not out.exists()
    with pytest.raises(ModelLoadError, match="reads safetensors only"):
        export_run(src, out, check=False)
    assert not out.exists()


def test_safetensors_beside_pickled_shards_export_without_the_pickles(make_encoder, tmp_path, capsys):
    """Both: the safetensors are what load reads, and the export holds nothing else of the weights (no pickled
    shards, and no index naming shards that are not there)."""
    model = make_encoder(model_type="bert", head="token", labels=LABELS, **SMALL)
    src = _pickled_shards(model, tmp_path / "src")
    shutil.copy(model / "model.safetensors", src / "model.safetensors")
    out = tmp_path / "model"
    _export(src, out, capsys)
    assert not list(out.glob("pytorch_model*"))
    _assert_same_outputs(out, src)


def test_an_out_directory_that_holds_files_is_refused_untouched(make_encoder, tmp_path, capsys):
    """An older export in --out: its model.safetensors would be overwritten (a single file), or stay beside the
    shards exported there and be what loads; the export refuses to write over it, and changes nothing."""
    older = make_encoder(model_type="bert", head="model", **SMALL)
    src = _sharded(make_encoder(model_type="bert", head="token", labels=LABELS, **SMALL), tmp_path / "src")
    out = shutil.copytree(older, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()   # (the building's progress bars)
    message = assert_error_line(capsys, "export", main(["export", str(src), "--out", str(out)]))
    assert f"{out} already holds " in message and "config.json" in message and "pass a new or empty" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    inside = src / "export"
    message = assert_error_line(capsys, "export", main(["export", str(src), "--out", str(inside)]))
    assert "is inside the model directory" in message and not inside.exists()
    (tmp_path / "empty").mkdir()
    _export(src, tmp_path / "empty", capsys)   # an empty directory is a new one


# ------------------------------------------------------------------- sentence-transformers with a 0_Transformer/
@pytest.mark.filterwarnings("ignore::bortengine.TruncationWarning")   # TEXTS are cut at the source's 24 tokens
@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sentence_transformers_subfolder_exports_whole(make_encoder, tmp_path, capsys, model_type, dtype):
    src = _sentence_transformers(make_encoder(model_type=model_type, head="model", **SMALL), tmp_path / "src")
    out = tmp_path / "model"
    _export(src, out, capsys, "--dtype", dtype)
    _assert_same_outputs(out, src, dtype)
    got, want = bortengine.load(out, dtype=dtype), bortengine.load(src, dtype=dtype)
    assert got.max_length == want.max_length == 24
    np.testing.assert_array_equal(got.encode(TEXTS), want.encode(TEXTS))
    for name in ("modules.json", "1_Pooling/config.json", "0_Transformer/sentence_bert_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name


def test_a_sentence_transformers_directory_without_its_transformer_is_refused(make_encoder, tmp_path, capsys):
    src = _sentence_transformers(make_encoder(model_type="bert", head="model", **SMALL), tmp_path / "src")
    shutil.rmtree(src / "0_Transformer")
    out = tmp_path / "model"
    capsys.readouterr()   # (the building's progress bars)
    message = assert_error_line(capsys, "export", main(["export", str(src), "--out", str(out)]))
    assert "0_Transformer" in message and "modules.json" in message
    assert not out.exists()


# ------------------------------------------------------------------------------------ token classifiers' heads
@pytest.fixture(scope="module", params=FAMILIES)
def tagger(request, make_encoder):
    return make_encoder(model_type=request.param, head="token", labels=LABELS, **SMALL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_classifiers_keep_their_head(tagger, tmp_path, capsys, dtype):
    out = tmp_path / "model"
    _export(tagger, out, capsys, "--dtype", dtype)
    config, source = (json.loads((d / "config.json").read_text()) for d in (out, tagger))
    assert config["architectures"] == source["architectures"] and config["architectures"][0].endswith(
        "ForTokenClassification")
    assert config["id2label"] == source["id2label"]
    exported, original = bortengine.load(out, dtype=dtype), bortengine.load(tagger, dtype=dtype)
    assert exported.config.labels == original.config.labels == list(LABELS)
    _assert_same_outputs(out, tagger, dtype)
    for aggregation in ("none", "simple"):
        assert exported.classify_tokens(TEXTS, aggregation, ignore_labels=()) == \
            original.classify_tokens(TEXTS, aggregation, ignore_labels=())


def test_a_conversion_stopped_before_the_index_is_completed_by_converting_again(make_encoder, tmp_path, capsys):
    """Shards converted but the index not yet naming their scales (a conversion killed between the two): converting
    again converts nothing and writes the index, after which the checkpoint loads as the finished one."""
    src = _sharded(make_encoder(model_type="distilbert", head="sequence", **SMALL), tmp_path / "src")
    out = tmp_path / "model"
    _export(src, out, capsys, "--dtype", "int8")
    index = out / "model.safetensors.index.json"
    finished = json.loads(index.read_text())
    stopped = {**finished, "weight_map": {n: f for n, f in finished["weight_map"].items()
                                          if not n.endswith(SCALE_SUFFIX)}}
    index.write_text(json.dumps(stopped))
    report = quantize_checkpoint(out)
    assert report["quantized"] == 0
    assert json.loads(index.read_text()) == finished
    _assert_same_outputs(out, src, "int8")


def test_a_conversion_stopped_between_shards_leaves_the_checkpoint_as_it_was(make_encoder, tmp_path, monkeypatch):
    """The second converted shard cannot be written (disk full, killed): no shard has been replaced yet, so the
    checkpoint is still the float one that loads, and no temporary file is left."""
    from bortengine.export import quantize

    src = _sharded(make_encoder(model_type="electra", head="model", embedding_size=16, **SMALL), tmp_path / "src",
                   shard_size="20KB")
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    written = []

    def full_disk(path, *args):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        return write_safetensors(path, *args)

    monkeypatch.setattr(quantize, "write_safetensors", full_disk)
    with pytest.raises(OSError, match="No space left"):
        quantize_checkpoint(src)
    assert written and {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before
    monkeypatch.undo()
    assert quantize_checkpoint(src)["quantized"] == 2 * 6
    assert bortengine.load(src, dtype="int8").dtype == "int8"
