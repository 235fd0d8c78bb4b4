"""Checkpoints built to hurt: sizes in config.json that the weights do not hold (10^9 layers, a 2^40 vocabulary),
NaN and Inf weights, safetensors headers with overlapping or out-of-range offsets, nesting that overflows a JSON
parser. Each is refused with a ModelLoadError that names the field or tensor, before anything is sized by the
claim: no tensor is read and no buffer allocated beyond the header. Random headers and configs (hypothesis) raise
ModelLoadError or load, never anything else."""
from __future__ import annotations

import asyncio
import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.numpy import load_file, save_file

import bortengine
from bortengine import BortEngineError, ModelConfig, ModelLoadError
from bortengine.engine import weights as weights_module
from bortengine.engine.weights import read_safetensors_header
from test_loading import model_copy

HUGE = 2 ** 40
BIG_CLAIMS = [
    ({"num_hidden_layers": 10 ** 9}, r"config says num_hidden_layers=1000000000 but \S+ holds tensors of 2 encoder"),
    ({"vocab_size": HUGE}, rf"config says vocab_size={HUGE} but embeddings.word_embeddings.weight is \[30522, 64\]"),
    ({"hidden_size": HUGE}, rf"config says hidden_size={HUGE} but embeddings.word_embeddings.weight is \[30522, 64\]"),
    ({"intermediate_size": HUGE}, rf"config says intermediate_size={HUGE} but encoder.layer.0.intermediate"),
    ({"max_position_embeddings": HUGE}, rf"config says max_position_embeddings={HUGE} but embeddings.position"),
    ({"type_vocab_size": HUGE}, rf"config says type_vocab_size={HUGE} but embeddings.token_type"),
    ({"id2label": None, "num_labels": 10 ** 12},
     "config says num_labels=1000000000000 but classifier.weight is"),
]


@pytest.fixture(scope="module")
def weights(small_classifier) -> dict[str, np.ndarray]:
    return load_file(str(small_classifier / "model.safetensors"))


@pytest.fixture
def no_tensor_read(monkeypatch):
    """Fail the test if any tensor's data is read: the claim must be refused from the header alone."""
    def refuse(self, *args):
        raise AssertionError(f"tensor {self.name} was read before the config was checked against the header")

    monkeypatch.setattr(weights_module.TensorEntry, "read", refuse)
    monkeypatch.setattr(weights_module.TensorEntry, "read_int8", refuse)


@pytest.mark.parametrize("claim, match", BIG_CLAIMS, ids=[next(reversed(claim)) for claim, _ in BIG_CLAIMS])
def test_size_claims_refused_from_the_header(small_model, small_classifier, tmp_path, no_tensor_read, claim,
                                             match):
    source = small_classifier if "num_labels" in claim else small_model
    if "hidden_size" in claim:
        claim = {**claim, "num_attention_heads": 4}
    path = model_copy(source, tmp_path / "m", config=claim)
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match=match):
            bortengine.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2 ** 20, f"refusing the claim allocated {peak / 2 ** 20:.1f} MiB"


def test_empty_tensors_named_after_many_layers_do_not_pass_as_layers(small_model, tmp_path):
    """A header naming a tensor of each of 30,000 layers, empty (free in the file), with a config claiming as many:
    refused by the tensors the layers hold, before 16 names a layer are built for them."""
    layers, weights = 30_000, load_file(str(small_model / "model.safetensors"))
    header = {name: {"dtype": "F32", "shape": list(value.shape)} for name, value in weights.items()}
    offset, data = 0, []
    for entry, value in zip(header.values(), weights.values()):
        raw = value.astype("<f4").tobytes()
        entry["data_offsets"] = [offset, offset + len(raw)]
        offset += len(raw)
        data.append(raw)
    header.update({f"encoder.layer.{i}.attention.self.query.weight": {"dtype": "F32", "shape": [0, 64],
                                                                      "data_offsets": [offset, offset]}
                   for i in range(2, layers)})
    path = model_copy(small_model, tmp_path / "m", config={"num_hidden_layers": layers})
    (path / "model.safetensors").write_bytes(_file(header, 0) + b"".join(data))
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match=rf"num_hidden_layers={layers}, 16 tensors a layer, but .* holds "
                                                 rf"{2 * 16 + layers - 2} tensors of encoder layers"):
            bortengine.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    header_bytes = (path / "model.safetensors").stat().st_size
    assert peak < 12 * header_bytes, f"refusing it allocated {peak / 2 ** 20:.1f} MiB for a {header_bytes} B file"


def test_num_labels_claim_costs_nothing_to_parse():
    config = ModelConfig.from_dict({"architectures": ["BertForSequenceClassification"], "num_labels": 10 ** 12})
    assert config.num_labels == 10 ** 12 and config.id2label[7] == "LABEL_7"


@pytest.mark.parametrize("name, dtype, values, counts", [
    ("encoder.layer.1.attention.self.key.weight", np.float32, [np.nan, np.nan, np.inf],
     "3 non-finite value.*2 NaN, 1 Inf"),
    ("embeddings.word_embeddings.weight", np.float32, [-np.inf], "1 non-finite value.*0 NaN, 1 Inf"),
    ("classifier.bias", np.float16, [np.nan], "1 non-finite value.*1 NaN, 0 Inf"),
    ("encoder.layer.0.output.LayerNorm.weight", np.float64, [np.inf, np.nan], "2 non-finite value.*1 NaN, 1 Inf"),
], ids=["f32-layer", "f32-embeddings", "f16-classifier", "f64-layernorm"])
def test_non_finite_weights_refused(small_classifier, weights, tmp_path, name, dtype, values, counts):
    bad = dict(weights)
    name = name if name in bad else "bert." + name
    tensor = bad[name].astype(dtype)
    tensor.reshape(-1)[[3 * i + 1 for i in range(len(values))]] = values
    bad[name] = tensor
    with pytest.raises(ModelLoadError, match=rf"tensor {name} holds {counts}.*re-export"):
        bortengine.load(model_copy(small_classifier, tmp_path / "m", bad))


@pytest.mark.parametrize("dtype", ["bf16", "float32", "int8"])
def test_non_finite_bf16_weights_refused_in_every_dtype(small_classifier, weights, tmp_path, dtype):
    """A BF16 checkpoint (a torch.bfloat16 save, or `bortengine export --dtype bf16`): load(dtype="bf16") takes its
    bits as they are, and is checked all the same."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    bad = {name: torch.from_numpy(value).to(torch.bfloat16) for name, value in weights.items()}
    name = "bert.encoder.layer.0.attention.self.query.weight"
    bad[name].view(-1)[[1, 5]] = torch.tensor([float("nan"), float("-inf")], dtype=torch.bfloat16)
    path = model_copy(small_classifier, tmp_path / "m")
    save_torch(bad, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=rf"tensor {name} holds 2 non-finite value.*1 NaN, 1 Inf.*re-export"):
        bortengine.load(path, dtype=dtype)


def test_large_finite_weights_load(small_classifier, weights, tmp_path):
    """Finite values whose float32 sum overflows are not mistaken for Inf."""
    big = dict(weights)
    big["classifier.bias"] = np.full_like(weights["classifier.bias"], 3e38)
    assert bortengine.load(model_copy(small_classifier, tmp_path / "m", big)).labels


def test_finite_weights_out_of_float32s_reach_are_refused_where_they_make_non_finite_outputs(small_classifier, weights,
                                                                                              tmp_path):
    """A LayerNorm weight of FLT_MAX is finite, so it loads; classify() then gave a label and NaN probabilities for
    every text, encode() infinities, without a word. The outputs are checked: an error says what is wrong."""
    big = dict(weights)
    name = next(n for n in big if n.endswith("encoder.layer.1.output.LayerNorm.weight"))
    big[name] = np.full_like(weights[name], np.finfo(np.float32).max)
    engine = bortengine.load(model_copy(small_classifier, tmp_path / "m", big))
    with pytest.raises(BortEngineError, match="computed non-finite logits .*LayerNorm weight near 3e38"):
        engine.classify(["a good film", "a terrible film"])
    with pytest.raises(BortEngineError, match="computed non-finite embeddings"):
        engine.encode("a good film")
    with pytest.raises(BortEngineError, match="computed non-finite logits"):
        asyncio.run(engine.aclassify(["a good film"]))
    # the raw forward's outputs come as computed, for a caller who inspects them
    assert not np.isfinite(engine(**engine.tokenize(["a good film"])).last_hidden_state).all()


def test_sizes_past_the_native_encoders_reach_are_a_load_error(small_model, monkeypatch):
    """A vocabulary of 2^31 rows that the weights really hold (a sparse 16 GiB table) passed every check and ended in
    pybind's bare TypeError "incompatible constructor arguments". (The limit lowered here: such a file is 16 GiB.)"""
    from bortengine.engine import runtime

    monkeypatch.setattr(runtime, "_INT32_MAX", 30000)
    with pytest.raises(ModelLoadError, match=r"vocab_size=30522 is more than the engine's 32-bit sizes go to"):
        bortengine.load(small_model)


def test_a_model_too_large_for_the_machine_is_a_load_error(small_model, monkeypatch):
    """A config and header that agree on sizes this machine cannot hold (a 64 GiB embedding table in a sparse file)
    got numpy's MemoryError out of load(); the allocation failing is what the test makes happen."""
    real_empty = np.empty

    def empty(shape, dtype=float, **kw):
        if int(np.prod(shape)) >= 1000:   # the embedding tables, not the small arrays
            raise MemoryError(f"Unable to allocate array with shape {shape}")
        return real_empty(shape, dtype, **kw)

    monkeypatch.setattr(weights_module.np, "empty", empty)
    with pytest.raises(ModelLoadError, match=r"tensor \S+ \[\d+, \d+\] needs [\d.]+ [MG]iB of memory as float32, which "
                                             r"this machine cannot allocate"):
        bortengine.load(small_model)


# --------------------------------------------------------------------------------------- safetensors headers
def _file(header: dict, data_size: int) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(data_size)


def _write(tmp_path, data: bytes):
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    return path


F32x2 = {"dtype": "F32", "shape": [2]}


def test_a_header_over_the_format_limit_is_said_so(tmp_path, monkeypatch):
    """Not "truncated": every byte it claims is there."""
    monkeypatch.setattr(weights_module, "_MAX_HEADER_BYTES", 64)
    with pytest.raises(ModelLoadError, match=r"header .* is longer than the 64 bytes an encoder's checkpoint"):
        read_safetensors_header(_write(tmp_path, _file({"a": {**F32x2, "data_offsets": [0, 8]},
                                                        "__metadata__": {"x": "y" * 100}}, 8)))


@pytest.mark.parametrize("header, data_size, match", [
    ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [0, 8]}}, 8, "tensors a and b overlap"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {**F32x2, "data_offsets": [4, 12]}}, 16,
     "tensors a and b overlap"),
    ({"a": {**F32x2, "data_offsets": [2 ** 64, 2 ** 64 + 8]}}, 8, "truncated: tensor a ends at data byte"),
    ({"a": {"dtype": "F32", "shape": [2 ** 62, 2 ** 62], "data_offsets": [0, 8]}}, 8, "needs .* bytes"),
    ({"a": {**F32x2, "data_offsets": [0, 8.0]}}, 8, "data_offsets must be"),
    ({"a": {**F32x2, "data_offsets": [0, 8, 16]}}, 16, "data_offsets must be"),
    ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, 8, "shape must be a list"),
    # what the safetensors library calls "file not fully covered": bytes after the last tensor, or between two
    ({"a": {**F32x2, "data_offsets": [0, 8]}}, 11, "3 of its 11 data bytes belong to no tensor"),
    ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [12, 20]}}, 20,
     "4 of its 20 data bytes belong to no tensor"),
])
def test_hostile_offsets_refused(tmp_path, header, data_size, match):
    with pytest.raises(ModelLoadError, match=match):
        read_safetensors_header(_write(tmp_path, _file(header, data_size)))


def test_uncovered_bytes_refused_as_the_safetensors_library_does(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": np.ones(2, np.float32)}, str(path))
    read_safetensors_header(path)
    with open(path, "ab") as f:
        f.write(b"xyz")
    with pytest.raises(Exception, match="not fully covered"):
        load_file(str(path))
    with pytest.raises(ModelLoadError, match="3 of its 11 data bytes belong to no tensor"):
        read_safetensors_header(path)


def test_deeply_nested_json_refused(small_model, tmp_path):
    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ModelLoadError, match="header is not JSON"):
        read_safetensors_header(_write(tmp_path, struct.pack("<Q", len(nested)) + nested))
    path = model_copy(small_model, tmp_path / "m")
    (path / "config.json").write_bytes(nested)
    with pytest.raises(ModelLoadError, match="config.json is not valid JSON"):
        bortengine.load(path)


@pytest.mark.parametrize("name", ["config.json", "config_sentence_transformers.json"])
def test_oversized_config_refused(small_model, tmp_path, monkeypatch, name):
    """config_sentence_transformers.json (a cross-encoder's activation) past the limit was ignored silently."""
    from bortengine.engine import config as config_module

    path = model_copy(small_model, tmp_path / "m")
    config = (path / "config.json").read_bytes()
    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", len(config))
    _replace(path / name, config + b" " if name == "config.json" else b'{"activation_fn": null}' + b" " * len(config))
    with pytest.raises(ModelLoadError, match=rf"{name} is \d+ bytes, more than the {len(config)} such a file can "):
        bortengine.load(path)


# ------------------------------------------------------------------------------------------------ hypothesis
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)
SIZES = st.integers(min_value=-2, max_value=2 ** 70)
ENTRY = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "I8", "BF16", "X"]) | JSON,
                               "shape": st.lists(SIZES, max_size=3) | JSON,
                               "data_offsets": st.lists(SIZES, min_size=2, max_size=2) | JSON})
HEADERS = st.dictionaries(st.text(max_size=3), ENTRY | JSON, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=HEADERS, data_size=st.integers(0, 64))
def test_random_headers_refused_or_read(tmp_path_factory, header, data_size):
    path = _write(tmp_path_factory.mktemp("h"), _file(header, data_size))
    try:
        entries = read_safetensors_header(path)
    except ModelLoadError:
        return
    spans = sorted((e.offset, e.offset + e.nbytes) for e in entries.values() if e.nbytes)
    assert all(e.offset + e.nbytes <= path.stat().st_size for e in entries.values())
    assert all(end <= begin for (_, end), (begin, _) in zip(spans, spans[1:]))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=64))
def test_random_bytes_refused(tmp_path_factory, data):
    try:
        read_safetensors_header(_write(tmp_path_factory.mktemp("b"), data))
    except ModelLoadError:
        pass


CONFIG_KEYS = ["architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id", "layer_norm_eps",
               "hidden_act", "position_embedding_type", "is_decoder", "id2label", "num_labels", "problem_type",
               "dim", "n_layers", "n_heads", "hidden_dim", "activation", "sentence_transformers"]
FAMILY_NAMES = st.sampled_from(["bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet"])
CLASSES = st.sampled_from(["BertModel", "RobertaForSequenceClassification", "XLMRobertaForTokenClassification",
                           "DistilBertModel", "DistilBertForSequenceClassification", "MPNetModel"])


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON | SIZES | CLASSES.map(lambda c: [c]), max_size=6),
       st.one_of(st.none(), FAMILY_NAMES, JSON))
def test_random_configs_refused_or_parsed(data, model_type):
    if model_type is not None:
        data = {**data, "model_type": model_type}
    try:
        config = ModelConfig.from_dict(data)
    except ModelLoadError:
        return
    assert config.hidden_size % config.num_attention_heads == 0 and config.layer_norm_eps > 0
    assert config.max_positions >= 1 and config.head in ("encoder", "sequence", "token")


def test_heads_that_do_not_divide_the_hidden_size_name_a_default_taken():
    """hidden_size left out of config.json is BERT's 768: the refusal said 768 as if the file held it."""
    with pytest.raises(ModelLoadError, match=r"hidden_size=768 is not a multiple of num_attention_heads=5 "
                                             r"\(hidden_size not in the file: bert's default taken\)"):
        ModelConfig.from_dict({"num_attention_heads": 5})
    with pytest.raises(ModelLoadError, match=r"hidden_size=200 is not a multiple of num_attention_heads=7; each"):
        ModelConfig.from_dict({"hidden_size": 200, "num_attention_heads": 7})



# ------------------------------------------------------------------------- the other files of a model directory
BIG_INTEGER = b"1" + b"0" * 5000          # more digits than Python's int() reads (4300)
DEEP = b"[" * 100_000 + b"]" * 100_000


def _st_copy(minilm, dst):
    """A sentence-transformers directory (MiniLM's files, linked) whose files a test may replace."""
    dst.mkdir()
    for f in minilm.iterdir():
        (dst / f.name).symlink_to(f, target_is_directory=f.is_dir())
    return dst


def _replace(path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "modules.json", "sentence_bert_config.json",
                                  "config_sentence_transformers.json", "1_Pooling/config.json"])
@pytest.mark.parametrize("content", [b'{"x": ' + BIG_INTEGER + b"}", DEEP], ids=["5000 digits", "nested 100000 deep"])
def test_a_settings_file_json_cannot_read_is_a_load_error(minilm, tmp_path, name, content):
    """json raised ValueError (an integer of over 4300 digits) or RecursionError out of load()."""
    model = _st_copy(minilm, tmp_path / "st")
    if "/" in name:
        (model / "1_Pooling").unlink()
        (model / "1_Pooling").mkdir()
    _replace(model / name, content)
    with pytest.raises(ModelLoadError, match=rf"{name} is not valid JSON"):
        bortengine.load(model)


def test_a_shard_index_json_cannot_read_is_a_load_error(small_model, tmp_path):
    path = model_copy(small_model, tmp_path / "m")
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    (path / "model.safetensors.index.json").write_bytes(b'{"weight_map": ' + BIG_INTEGER + b"}")
    with pytest.raises(ModelLoadError, match="model.safetensors.index.json is not valid JSON"):
        bortengine.load(path)


def test_settings_files_larger_than_any_model_has_are_refused_unread(minilm, tmp_path, monkeypatch):
    from bortengine.engine import pooling, tokenization

    model = _st_copy(minilm, tmp_path / "st")
    monkeypatch.setattr(pooling, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(ModelLoadError, match=r"\.json is \d+ bytes, more than the 100 such a file can sensibly be"):
        bortengine.load(model)
    monkeypatch.undo()
    monkeypatch.setattr(tokenization, "MAX_TOKENIZER_BYTES", 1000)
    with pytest.raises(ModelLoadError, match=r"tokenizer.json is \d+ bytes, more than the 1000 of any encoder"):
        bortengine.load(model)
    # a vocab.txt (no tokenizer.json) had no limit: 195 MB ended the process in an allocation failure
    monkeypatch.undo()
    (model / "tokenizer.json").unlink()
    assert bortengine.load(model).tokenize("a text")["input_ids"].shape == (1, 4)
    monkeypatch.setattr(tokenization, "MAX_VOCAB_TXT_BYTES", 1000)
    with pytest.raises(ModelLoadError, match=r"vocab.txt is \d+ bytes, more than the 1000 of any encoder's "
                                             r"WordPiece vocabulary"):
        bortengine.load(model)


@pytest.mark.parametrize("module, match", [
    ({"type": None, "path": "1_Pooling"}, "a module's type must be a class name, got None"),
    ({"type": 5, "path": "1_Pooling"}, "a module's type must be a class name, got 5"),
    ({"type": "sentence_transformers.models.Pooling", "path": 5}, "a module's path must be a folder inside"),
    ({"type": "sentence_transformers.models.Pooling", "path": None}, "a module's path must be a folder inside"),
    ({"type": "sentence_transformers.models.Pooling", "path": "../elsewhere"}, "must be a folder inside"),
    ({"type": "sentence_transformers.models.Normalize", "path": "/etc"}, "must be a folder inside"),
])
def test_modules_json_entries_that_are_not_modules_here_are_refused(minilm, tmp_path, module, match):
    """A path out of the directory loaded another model's files (or any file) in its place; a type or path of
    another JSON type raised AttributeError or TypeError."""
    model = _st_copy(minilm, tmp_path / "st")
    modules = json.loads((minilm / "modules.json").read_text())
    modules[1] = {"idx": 1, "name": "1", **module}
    (model / "modules.json").unlink()
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=match):
        bortengine.load(model)


def test_a_modules_json_that_is_not_a_file_is_refused_not_ignored(minilm, tmp_path):
    """A link to /dev/zero was taken for no modules.json: mean pooling, unnormalised, instead of the model's."""
    model = _st_copy(minilm, tmp_path / "st")
    (model / "modules.json").unlink()
    (model / "modules.json").symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match="modules.json is not a regular file"):
        bortengine.load(model)


@pytest.mark.parametrize("file, content, match", [
    ("tokenizer_config.json", [1], "tokenizer_config.json must be a JSON object"),
    ("tokenizer_config.json", {"do_lower_case": "false"}, "do_lower_case must be true or false, got 'false'"),
    ("tokenizer_config.json", {"strip_accents": "yes"}, "strip_accents must be true or false"),
    ("sentence_bert_config.json", {"max_seq_length": float("nan")}, "must be a positive integer, got nan"),
    ("sentence_bert_config.json", {"max_seq_length": 1.5}, "must be a positive integer, got 1.5"),
    ("sentence_bert_config.json", {"max_seq_length": True}, "must be a positive integer, got True"),
])
def test_tokenizer_settings_of_the_wrong_type_are_refused(minilm, tmp_path, file, content, match):
    model = _st_copy(minilm, tmp_path / "st")
    (model / file).unlink()
    (model / file).write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=match):
        bortengine.load(model)


def test_a_bare_encoders_num_labels_costs_nothing(small_model, tmp_path):
    """No head holds num_labels to its weights: its label names were made all the same (10^12 strings)."""
    engine = bortengine.load(model_copy(small_model, tmp_path / "m", config={"num_labels": 10 ** 12}))
    assert engine.labels is None


@pytest.mark.parametrize("dtype, refused", [("float32", False), ("bf16", True), ("int8", True)])
def test_weights_too_large_for_bfloat16_are_refused_where_they_are_rounded_to_it(small_classifier, weights, tmp_path,
                                                                                 dtype, refused):
    """FLT_MAX is finite in float32 and Inf in bfloat16: a bf16 engine (and an int8 one, whose FFN out goes
    through bf16) held it as Inf and answered NaN, or raised a ValueError from the native module."""
    big = dict(weights)
    name = next(n for n in big if n.endswith("encoder.layer.1.output.dense.weight"))
    big[name] = big[name].copy()
    big[name][0, 0] = np.finfo(np.float32).max
    path = model_copy(small_classifier, tmp_path / "m", big)
    if refused:
        with pytest.raises(ModelLoadError, match=rf"tensor {name} holds 1 value\(s\) too large for bfloat16"):
            bortengine.load(path, dtype=dtype)
    else:
        assert bortengine.load(path, dtype=dtype)(np.array([[101, 7592, 102]])).last_hidden_state.shape[0] == 1


def test_prequantized_weights_out_of_the_int8_kernels_range_are_refused(make_model, tmp_path):
    from test_int8_engine import _write_prequantized

    path = make_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      vocab_size=500, seed=9)
    pre = _write_prequantized(path, tmp_path / "pre")
    tensors = load_file(str(pre / "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    low = dict(tensors)
    low[name] = tensors[name].copy()
    low[name][0, :2] = -128
    save_file(low, str(pre / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=rf"tensor {name} holds 2 value\(s\) of -128"):
        bortengine.load(pre, dtype="int8")
    assert np.isfinite(bortengine.load(pre)(np.array([[1, 2, 3]])).last_hidden_state).all()   # float32: fine
    huge = dict(tensors)
    huge[name + "_scale"] = np.full_like(tensors[name + "_scale"], 3e38)
    save_file(huge, str(pre / "model.safetensors"))
    for dtype in ("int8", "float32"):
        with pytest.raises(ModelLoadError, match=rf"tensor {name}_scale holds 64 scale\(s\) so large"):
            bortengine.load(pre, dtype=dtype)


@pytest.mark.parametrize("file", ["tokenizer.json", "vocab.txt"])
def test_a_wordpiece_vocabulary_without_its_unknown_token_is_a_load_error(minilm, tmp_path, file):
    """It loaded, and the first word it could not spell raised the tokenizers library's bare Exception ("WordPiece
    error: Missing [UNK] token from the vocabulary") from encode()."""
    model = _st_copy(minilm, tmp_path / "st")
    if file == "tokenizer.json":
        tokenizer = json.loads((model / "tokenizer.json").read_text())
        del tokenizer["model"]["vocab"]["[UNK]"]
        tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] != "[UNK]"]
        _replace(model / "tokenizer.json", json.dumps(tokenizer).encode())
    else:
        (model / "tokenizer.json").unlink()
        words = (model / "vocab.txt").read_text().splitlines()
        _replace(model / "vocab.txt", "\n".join(w for w in words if w != "[UNK]").encode() + b"\n")
    with pytest.raises(ModelLoadError, match=rf"{file}: its WordPiece vocabulary lacks its unknown token '\[UNK\]'"):
        bortengine.load(model)
