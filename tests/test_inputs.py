"""Engine.__call__ input handling: what is accepted, and every malformed input rejected with InvalidInputError
whose message names the problem."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import bortengine
from bortengine import InvalidInputError, ModelLoadError

IDS = np.array([[101, 2023, 2003, 102], [101, 7592, 102, 0]], dtype=np.int64)
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=np.int64)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64])
def test_integer_dtypes_accepted(small_engine, dtype):
    ref = small_engine(IDS, MASK).last_hidden_state
    out = small_engine(IDS.astype(dtype), MASK.astype(dtype), np.zeros(IDS.shape, dtype))
    np.testing.assert_array_equal(out.last_hidden_state, ref)


def test_lists_bool_masks_and_views_accepted(small_engine):
    ref = small_engine(IDS, MASK)
    as_lists = small_engine(IDS.tolist(), MASK.tolist(), [[0] * 4, [0] * 4])
    np.testing.assert_array_equal(as_lists.last_hidden_state, ref.last_hidden_state)
    as_bool = small_engine(IDS, MASK.astype(bool))
    np.testing.assert_array_equal(as_bool.last_hidden_state, ref.last_hidden_state)
    wide = np.zeros((2, 8), np.int64)
    wide[:, ::2] = IDS
    strided = small_engine(wide[:, ::2], np.asfortranarray(MASK))  # non-contiguous views
    np.testing.assert_array_equal(strided.last_hidden_state, ref.last_hidden_state)


def test_mapping_input(small_engine):
    batch = small_engine.tokenize(["hello world", "hi"])
    np.testing.assert_array_equal(small_engine(batch).last_hidden_state, small_engine(**batch).last_hidden_state)
    with pytest.raises(InvalidInputError, match="not both"):
        small_engine(batch, MASK)
    with pytest.raises(InvalidInputError, match="got keys"):
        small_engine({"ids": IDS})


def test_output_access(small_engine):
    out = small_engine(IDS, MASK)
    assert out["last_hidden_state"] is out.last_hidden_state
    assert out.pooler_output.shape == (2, 64)
    assert set(out.keys()) == {"last_hidden_state", "pooler_output"} and "logits" not in out
    assert dict(out.items())["pooler_output"] is out.pooler_output
    with pytest.raises(KeyError):
        out["logits"]


def _raises(engine, match, *args, **kwargs):
    with pytest.raises(InvalidInputError, match=match) as info:
        engine(*args, **kwargs)
    return str(info.value)


def test_wrong_rank(small_engine):
    msg = _raises(small_engine, "2-D", np.array([101, 102]))
    assert "ids[None, :]" in msg
    _raises(small_engine, "2-D", np.zeros((1, 2, 3), np.int64))
    _raises(small_engine, "2-D", np.int64(5))


@pytest.mark.parametrize("arg", ["input_ids", "attention_mask", "token_type_ids"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, "U3"])
def test_non_integer_dtypes(small_engine, arg, dtype):
    kwargs = {"input_ids": IDS, "attention_mask": MASK, "token_type_ids": np.zeros_like(IDS)}
    kwargs[arg] = kwargs[arg].astype(dtype)
    msg = _raises(small_engine, arg, **kwargs)
    assert "integers" in msg and "np.int64" in msg


def test_bool_ids_rejected(small_engine):
    _raises(small_engine, "input_ids must hold integers", IDS.astype(bool))


def test_object_and_ragged(small_engine):
    _raises(small_engine, "different lengths", [[101, 102], [101]])
    _raises(small_engine, "input_ids", [[101, "x"]])
    _raises(small_engine, "64-bit integers", [[101, 2**70]])
    _raises(small_engine, "got NoneType", None)


def test_empty(small_engine):
    _raises(small_engine, "empty batch", np.zeros((0, 4), np.int64))
    _raises(small_engine, "empty batch", [])
    _raises(small_engine, "0 tokens", np.zeros((2, 0), np.int64))
    _raises(small_engine, "0 tokens", [[]])


def test_shape_disagreement(small_engine):
    msg = _raises(small_engine, "attention_mask has shape", IDS, MASK[:, :3])
    assert "[2, 3]" in msg and "[2, 4]" in msg
    _raises(small_engine, "token_type_ids has shape", IDS, MASK, np.zeros((1, 4), np.int64))


@pytest.mark.parametrize("value", [-1, 30522, 2**40, np.iinfo(np.uint64).max])
def test_ids_out_of_range(small_engine, value):
    ids = IDS.astype(np.uint64 if value > np.iinfo(np.int64).max else np.int64)
    ids[1, 2] = value
    msg = _raises(small_engine, r"input_ids\[1, 2\]", ids)
    assert "vocab_size=30522" in msg


def test_token_types_out_of_range(small_engine):
    types = np.zeros_like(IDS)
    types[0, 3] = 2
    assert "type_vocab_size=2" in _raises(small_engine, r"token_type_ids\[0, 3\]", IDS, MASK, types)
    types[0, 3] = -1
    _raises(small_engine, r"token_type_ids\[0, 3\]", IDS, MASK, types)


def test_too_long(small_engine):
    msg = _raises(small_engine, "513 tokens", np.full((1, 513), 100, np.int64))
    assert "max_position_embeddings=512" in msg


@pytest.mark.parametrize("bad", [2, -1, 255])
def test_mask_values(small_engine, bad):
    mask = MASK.copy()
    mask[0, 1] = bad
    _raises(small_engine, r"only 0 \(padding\) and 1.*attention_mask\[0, 1\]", IDS, mask)


def test_rows_without_tokens(small_engine):
    mask = MASK.copy()
    mask[1] = 0
    msg = _raises(small_engine, r"row\(s\) \[1\]", IDS, mask)
    assert "at least one" in msg


def test_num_threads(small_model):
    engine = bortengine.load(small_model, num_threads=1)
    assert engine.num_threads == 1
    engine.num_threads = 2 if bortengine.available_cpus() >= 2 else 1
    assert engine.num_threads == (2 if bortengine.available_cpus() >= 2 else 1)
    for bad in (0, -3, 1.5, "2", True, 1_000_000, 2 ** 31):   # a million was accepted, then every call a MemoryError
        with pytest.raises(InvalidInputError, match="num_threads"):
            engine.num_threads = bad
        with pytest.raises(InvalidInputError, match="num_threads"):
            bortengine.load(small_model, num_threads=bad)
    with pytest.warns(RuntimeWarning, match="more than"):
        engine.num_threads = bortengine.available_cpus() + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bortengine.load(small_model).num_threads == bortengine.available_cpus()


@pytest.mark.parametrize("path", [None, 3, b"/tmp"])
def test_a_model_directory_that_is_not_a_path_is_said_so(path):
    with pytest.raises(ModelLoadError, match="the model directory must be a path"):
        bortengine.load(path)


def test_isa_choice(small_model):
    for name in bortengine.available_isas():
        engine = bortengine.load(small_model, isa=name)
        assert engine.isa == name and engine.kernel
    with pytest.raises(InvalidInputError, match="cannot run here"):
        bortengine.load(small_model, isa="sse9")


def test_properties_and_repr(small_engine):
    assert small_engine.dtype == "float32"
    assert small_engine.config.hidden_size == 64
    assert small_engine.has_pooler and small_engine.labels is None
    text = repr(small_engine)
    for part in ("hidden_size=64", f"isa={small_engine.isa!r}", "num_threads=", small_engine.kernel):
        assert part in text


def test_cpu_info_and_version():
    info = bortengine.cpu_info()
    assert info["isa"] == info["default_isa"] and info["isa"] in info["available_isas"]
    assert info["kernel"]
    assert bortengine.available_isas() == info["available_isas"]
    assert isinstance(bortengine.__version__, str)


def test_exception_hierarchy():
    assert issubclass(bortengine.InvalidInputError, ValueError)
    assert issubclass(bortengine.ModelLoadError, ValueError)
    assert issubclass(bortengine.UnsupportedModelError, bortengine.ModelLoadError)
    for cls in (bortengine.InvalidInputError, bortengine.ModelLoadError, bortengine.UnsupportedModelError):
        assert issubclass(cls, bortengine.BortEngineError)


def test_op_times_breaks_a_forward_down(small_engine):
    times = small_engine.op_times(IDS, MASK, runs=3)
    ops = ["embeddings", "qkv", "attention", "attention_out", "layernorm", "ffn_in", "ffn_out", "output"]
    assert list(times) == ops + ["total"]
    assert all(v >= 0 for v in times.values())
    assert times["qkv"] > 0 and times["ffn_in"] > 0
    # the ops are read inside the forward, so together they cannot take longer than the median forward by much
    assert sum(times[k] for k in ops) <= 1.5 * times["total"] + 0.5
    # tracing is off again: a later call is not traced (and still correct)
    np.testing.assert_array_equal(small_engine(IDS, MASK).last_hidden_state,
                                  small_engine(IDS, MASK).last_hidden_state)
    assert small_engine._encoder.trace is False


@pytest.mark.parametrize("runs", [0, -1, 1.5, True, "3"])
def test_op_times_bad_runs(small_engine, runs):
    with pytest.raises(InvalidInputError, match="runs must be a positive integer"):
        small_engine.op_times(IDS, MASK, runs=runs)


def test_op_times_checks_inputs(small_engine):
    with pytest.raises(InvalidInputError, match="vocabulary|vocab_size"):
        small_engine.op_times(np.array([[10**9]]))
