"""Mixed precision: int8 engines that run some encoder layers in float32 or bf16 (load(float32_layers=...,
bf16_layers=...); bf16 engines float32_layers), the int8 calibration that chooses them on the user's texts
(bortengine.export.calibrate_int8), and the latency predictions that price them."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bortengine
from bortengine import _core
from bortengine.errors import InvalidInputError, ModelLoadError
from bortengine.export import calibrate_int8, quantize_checkpoint

TEXTS = ["A man is eating food.", "The girl is carrying a baby.", "Stock markets fell sharply on Monday.",
         "A monkey is playing drums.", "An unexpectedly moving film with superb performances from the whole cast.",
         "The cathedral, completed in the 13th century, is a masterpiece of Gothic architecture."]


def _cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _inputs(vocab=1000, lengths=(40, 1, 17, 33)):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(len(lengths), max(lengths)))
    mask = (np.arange(max(lengths))[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return ids, mask


@pytest.fixture(scope="module")
def odd_model(make_model):
    return make_model(hidden_size=200, num_hidden_layers=3, num_attention_heads=5, intermediate_size=333,
                      vocab_size=1000, seed=11)


@pytest.fixture(scope="module")
def text_model(make_model):
    """Odd sizes and the real tokenizer's whole vocabulary: a model to calibrate on texts."""
    return make_model(hidden_size=200, num_hidden_layers=3, num_attention_heads=5, intermediate_size=333, seed=12)


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    """A 3-layer model whose layer 1 has what int8 rounds badly: four FFN channels at ~100 on every token (the
    outliers fine-tuned classifiers grow), which set each token's u8 scale for FFN out's input, and an FFN out strong
    enough for the rounding of the other channels to move the hidden states. Layers 0 and 2 are plain random."""
    from safetensors.numpy import load_file, save_file

    from bortengine.testing import make_random_bert

    path = make_random_bert(tmp_path_factory.mktemp("outliers") / "model", hidden_size=96, num_hidden_layers=3,
                            num_attention_heads=4, intermediate_size=160, seed=5)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["encoder.layer.1.intermediate.dense.bias"][:4] = 100.0
    ffn_out = tensors["encoder.layer.1.output.dense.weight"]
    ffn_out *= 30
    ffn_out[:, :4] = 0   # the outliers set the scale; the channels they round are what reaches the output
    save_file(tensors, str(path / "model.safetensors"))
    return path


@pytest.mark.filterwarnings("ignore::bortengine.PerformanceWarning")  # bf16 emulated on paths without it
@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_every_layer_in_float32_is_the_float32_engine_exactly(odd_model, isa, dtype):
    ids, mask = _inputs()
    want = bortengine.load(odd_model, isa=isa)(ids, mask)
    engine = bortengine.load(odd_model, isa=isa, dtype=dtype, float32_layers=[0, 1, 2])
    got = engine(ids, mask)
    assert engine.dtype == dtype and engine.float32_layers == [0, 1, 2]
    np.testing.assert_array_equal(got.last_hidden_state, want.last_hidden_state)
    np.testing.assert_array_equal(got.pooler_output, want.pooler_output)


@pytest.mark.parametrize("isa", _core.available_isas())
def test_a_float32_layer_runs_between_int8_layers(outlier_model, isa):
    """Layer 1 (the outliers) in float32 and 0, 2 in int8: close to float32 where all-int8 is far from it, and not
    the float32 engine (its other layers are int8). Padding stays zero."""
    ids, mask = _inputs(vocab=500)
    rows = mask.astype(bool)
    ref = bortengine.load(outlier_model, isa=isa)(ids, mask).last_hidden_state
    all_int8 = bortengine.load(outlier_model, isa=isa, dtype="int8")(ids, mask).last_hidden_state
    mixed_engine = bortengine.load(outlier_model, isa=isa, dtype="int8", float32_layers=[1])
    mixed = mixed_engine(ids, mask).last_hidden_state
    assert mixed_engine.float32_layers == [1]
    assert _cosines(ref[rows], all_int8[rows]).min() < 0.95
    assert _cosines(ref[rows], mixed[rows]).min() > 0.999
    assert not np.array_equal(mixed, ref)
    assert not mixed[~rows].any()


@pytest.mark.filterwarnings("ignore::bortengine.PerformanceWarning")  # bf16 emulated on paths without it
@pytest.mark.parametrize("isa", _core.available_isas())
def test_every_layer_in_bf16_is_the_bf16_engine_exactly(odd_model, isa):
    ids, mask = _inputs()
    want = bortengine.load(odd_model, isa=isa, dtype="bf16")(ids, mask)
    engine = bortengine.load(odd_model, isa=isa, dtype="int8", bf16_layers=[0, 1, 2])
    assert engine.layer_dtypes == ["bf16"] * 3 and engine.bf16_layers == [0, 1, 2] and engine.float32_layers == []
    got = engine(ids, mask)
    np.testing.assert_array_equal(got.last_hidden_state, want.last_hidden_state)
    np.testing.assert_array_equal(got.pooler_output, want.pooler_output)


@pytest.mark.filterwarnings("ignore::bortengine.PerformanceWarning")
@pytest.mark.parametrize("isa", _core.available_isas())
def test_a_bf16_layer_runs_between_int8_layers(outlier_model, isa):
    ids, mask = _inputs(vocab=500)
    rows = mask.astype(bool)
    ref = bortengine.load(outlier_model, isa=isa)(ids, mask).last_hidden_state
    mixed = bortengine.load(outlier_model, isa=isa, dtype="int8", bf16_layers=[1])(ids, mask).last_hidden_state
    assert _cosines(ref[rows], mixed[rows]).min() > 0.995
    assert not mixed[~rows].any()


def test_float32_layers_arguments(odd_model):
    assert bortengine.load(odd_model, dtype="int8", float32_layers=range(2)).float32_layers == [0, 1]
    assert bortengine.load(odd_model, dtype="int8", float32_layers=np.array([2, 0])).float32_layers == [0, 2]
    assert bortengine.load(odd_model, dtype="int8").float32_layers == []
    assert bortengine.load(odd_model).float32_layers == []
    with pytest.raises(InvalidInputError, match="apply to int8"):
        bortengine.load(odd_model, float32_layers=[0])
    engine = bortengine.load(odd_model, dtype="int8", float32_layers=[0], bf16_layers=[2])
    assert engine.layer_dtypes == ["float32", "int8", "bf16"]
    assert engine.float32_layers == [0] and engine.bf16_layers == [2]
    with pytest.raises(InvalidInputError, match="in both float32_layers and bf16_layers"):
        bortengine.load(odd_model, dtype="int8", float32_layers=[0, 1], bf16_layers=[1])
    with pytest.raises(InvalidInputError, match="bf16_layers applies to int8"):
        bortengine.load(odd_model, dtype="bf16", bf16_layers=[1])
    with pytest.raises(InvalidInputError, match="apply to int8"):
        bortengine.load(odd_model, bf16_layers=[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.lists(st.integers(-5, 8), min_size=1, max_size=5).filter(
                     lambda v: len(set(v)) != len(v) or any(not 0 <= i < 3 for i in v)),
                 st.text(max_size=3), st.floats(), st.lists(st.booleans(), min_size=1, max_size=2),
                 st.lists(st.floats(0, 2), min_size=1, max_size=2)))
def test_bad_float32_layers_are_refused(odd_model, value):
    with pytest.raises(InvalidInputError, match="float32_layers"):
        bortengine.load(odd_model, dtype="int8", float32_layers=value)


def _with_record(src, dst, record):
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["bortengine_int8"] = record
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_the_models_calibration_is_applied_by_default(odd_model, tmp_path):
    path = _with_record(odd_model, tmp_path / "m", {"float32_layers": [2]})
    assert bortengine.load(path, dtype="int8").float32_layers == [2]
    assert bortengine.load(path, dtype="int8", float32_layers=[]).float32_layers == []   # the caller's choice wins
    assert bortengine.load(path, dtype="bf16").float32_layers == []   # an int8 calibration, not bf16's
    assert bortengine.load(path).float32_layers == []


def test_a_calibration_of_another_cpu_path_is_applied_with_a_warning(odd_model, tmp_path):
    """The record names the int8 kernel it was measured with; an engine that runs another says the measured accuracy
    may not hold, and applies it all the same (the caller's explicit layers do not warn)."""
    import warnings

    here = bortengine.load(odd_model, dtype="int8").kernel
    same = _with_record(odd_model, tmp_path / "same", {"bf16_layers": [1], "kernel": here})
    other = _with_record(odd_model, tmp_path / "other", {"bf16_layers": [1], "kernel": "gemm_u8s8_amx_elsewhere"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bortengine.load(same, dtype="int8").bf16_layers == [1]
        assert bortengine.load(other, dtype="int8", bf16_layers=[1]).bf16_layers == [1]
    with pytest.warns(RuntimeWarning, match="measured with gemm_u8s8_amx_elsewhere; this engine runs"):
        assert bortengine.load(other, dtype="int8").bf16_layers == [1]


@pytest.mark.parametrize("record", [[0], "all", {"float32_layers": [3]}, {"float32_layers": [0, 0]},
                                    {"float32_layers": "0"}, {"float32_layers": [True]}, {"bf16_layers": [-1]},
                                    {"float32_layers": [0], "bf16_layers": [0, 1]}])
def test_a_bad_calibration_record_is_refused_at_load(odd_model, tmp_path, record):
    path = _with_record(odd_model, tmp_path / "m", record)
    with pytest.raises(ModelLoadError, match="bortengine_int8"):
        bortengine.load(path, dtype="int8")


def test_the_int8_export_keeps_the_calibrated_layers_float(odd_model, tmp_path):
    from bortengine.engine import read_safetensors_header

    path = _with_record(odd_model, tmp_path / "m", {"float32_layers": [1]})
    ids, mask = _inputs()
    before = bortengine.load(path, dtype="int8")(ids, mask).last_hidden_state
    quantize_checkpoint(path)
    header = read_safetensors_header(path / "model.safetensors")
    for name, entry in header.items():
        if name.endswith(("query.weight", "intermediate.dense.weight")):
            assert entry.dtype == ("F32" if ".layer.1." in name else "I8"), name
    engine = bortengine.load(path, dtype="int8")
    assert engine.float32_layers == [1]
    np.testing.assert_array_equal(engine(ids, mask).last_hidden_state, before)
    # a record naming a layer the export quantized: the checkpoint does not match it, refused with the remedy
    config = json.loads((path / "config.json").read_text())
    config["bortengine_int8"]["float32_layers"] = [0, 1]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="re-export"):
        bortengine.load(path, dtype="int8")


@pytest.mark.parametrize("fallback", ["float32", "bf16"])
def test_calibration_takes_out_of_int8_the_layer_it_rounds_badly(outlier_model, tmp_path, fallback):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(outlier_model, path)
    result = calibrate_int8(path, TEXTS * 4, min_cosine=0.98, fallback=fallback, progress=False)
    assert result.all_int8_min_cosine < 0.95
    assert result.layers == [1] and result.fallback == fallback and result.min_cosine >= 0.98
    assert (result.float32_layers, result.bf16_layers) == (([1], []) if fallback == "float32" else ([], [1]))
    assert result.steps[0]["layers"] == [1] and set(result.steps[0]["tried"]) == {"0", "1", "2"}
    assert result.tokens == sum(bortengine.load(path).tokenize(TEXTS)["attention_mask"].sum() for _ in range(4))
    record = json.loads((path / "config.json").read_text())["bortengine_int8"]
    assert record["float32_layers"] == result.float32_layers and record["bf16_layers"] == result.bf16_layers
    assert record["target"] == 0.98 and record["fallback"] == fallback
    engine = bortengine.load(path, dtype="int8")
    assert engine.layer_dtypes == ["int8", fallback, "int8"]
    # what the calibration reported is what the loaded engine gives on those texts
    ref = bortengine.load(path)
    inputs = ref.tokenize(TEXTS)
    rows = np.asarray(inputs["attention_mask"]).astype(bool)
    got = _cosines(ref(inputs).last_hidden_state[rows], engine(inputs).last_hidden_state[rows]).min()
    assert got == pytest.approx(result.min_cosine, abs=1e-6)


def test_calibration_of_a_model_int8_serves_well_keeps_no_layer(text_model, tmp_path):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(text_model, path)
    result = calibrate_int8(path, TEXTS, progress=False, write=False)
    assert result.layers == [] and result.min_cosine == result.all_int8_min_cosine >= 0.98
    assert result.steps == [] and "bortengine_int8" not in json.loads((path / "config.json").read_text())


def test_a_target_only_float32_meets_keeps_every_layer(text_model, tmp_path):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(text_model, path)
    result = calibrate_int8(path, TEXTS, min_cosine=1 - 1e-15, progress=False)   # bf16 layers cannot: float32
    assert result.float32_layers == [0, 1, 2] and result.fallback == "float32" and result.min_cosine == 1.0
    ids, mask = _inputs()
    np.testing.assert_array_equal(bortengine.load(path, dtype="int8")(ids, mask).last_hidden_state,
                                  bortengine.load(path)(ids, mask).last_hidden_state)


def test_calibration_refuses_bad_input(text_model, tmp_path):
    with pytest.raises(InvalidInputError, match="list of strings"):
        calibrate_int8(text_model, "one text", write=False)
    with pytest.raises(InvalidInputError, match="non-empty"):
        calibrate_int8(text_model, ["", "  "], write=False)
    with pytest.raises(InvalidInputError, match="min_cosine"):
        calibrate_int8(text_model, TEXTS, min_cosine=1.5, write=False)
    with pytest.raises(InvalidInputError, match="max_tokens"):
        calibrate_int8(text_model, TEXTS, max_tokens=0, write=False)
    with pytest.raises(InvalidInputError, match="fallback"):
        calibrate_int8(text_model, TEXTS, fallback="int4", write=False)
    import shutil

    pre = tmp_path / "pre"
    shutil.copytree(text_model, pre)
    quantize_checkpoint(pre)
    with pytest.raises(ModelLoadError, match="calibrate the float model"):
        calibrate_int8(pre, TEXTS, write=False)


def test_the_export_command_calibrates_on_the_users_texts(outlier_model, tmp_path, capsys):
    """bortengine export --dtype int8 --calibrate: the float export, the calibration on the texts (the layer with
    outliers kept in float32), then the int8 checkpoint without that layer's int8 weights; load applies it."""
    from bortengine.cli import main
    from bortengine.engine import read_safetensors_header

    (tmp_path / "texts.txt").write_text("\n\n".join(TEXTS * 3) + "\n")
    out = tmp_path / "model"
    assert main(["export", str(outlier_model), "--out", str(out), "--dtype", "int8", "--calibrate",
                 str(tmp_path / "texts.txt")]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{"):])
    calibration = report["int8_calibration"]   # (float32 or bf16: what runs faster on this CPU, fallback "auto")
    assert calibration["float32_layers"] + calibration["bf16_layers"] == [1] and report["check_passed"]
    assert calibration["fallback"] == ("bf16" if bortengine.engine.bf16_runs_fast() else "float32")
    assert calibration["texts"] == len(TEXTS) * 3
    record = json.loads((out / "config.json").read_text())["bortengine_int8"]
    assert record["float32_layers"] + record["bf16_layers"] == [1]
    header = read_safetensors_header(out / "model.safetensors")
    assert header["encoder.layer.1.attention.self.query.weight"].dtype == "F32"
    assert header["encoder.layer.0.attention.self.query.weight"].dtype == "I8"
    engine = bortengine.load(out, dtype="int8")
    assert engine.float32_layers + engine.bf16_layers == [1]
    assert engine.layer_dtypes[1] == calibration["fallback"] and engine.layer_dtypes[0] == "int8"


@pytest.mark.parametrize("extra, message", [
    (["--calibrate", "TEXTS"], "goes with --dtype int8"),
    (["--dtype", "int8", "--min-cosine", "0.9"], "go with --calibrate"),
    (["--dtype", "int8", "--calibrate-fallback", "bf16"], "go with --calibrate"),
    (["--dtype", "int8", "--calibrate", "TEXTS", "--min-cosine", "1.5"], "must be in \\(0, 1\\)"),
    (["--dtype", "int8", "--calibrate", "MISSING"], "--calibrate"),
])
def test_the_export_command_refuses_a_bad_calibration(small_model, tmp_path, capsys, extra, message):
    from bortengine.cli import main

    (tmp_path / "texts.txt").write_text("A man is eating food.\n")
    extra = [str(tmp_path / "texts.txt") if v == "TEXTS" else str(tmp_path / "none.txt") if v == "MISSING" else v
             for v in extra]
    code = main(["export", str(small_model), "--out", str(tmp_path / "model"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "model").exists()


# ------------------------------------------------------------------------------------------- latency predictions
@pytest.fixture(scope="module")
def shipped_profile():
    """The shipped Zen 4 profile, which holds the float32 and the int8 workload of 1 x 128 on 2 threads (read as a
    file: its figures, not this CPU, are what these tests check)."""
    from bortengine.profiling import Profile
    from bortengine.profiling.profile_file import shipped_profiles

    with_both = [p for p in map(Profile.load, shipped_profiles())
                 if {"b1-t128-th2-float32", "b1-t128-th2-int8"} <= set(p.workloads)]
    assert with_both, "the shipped profiles should hold a float32 and an int8 workload of the same shape"
    return with_both[0]


def test_layers_kept_in_float32_are_priced_by_the_float32_workload(shipped_profile):
    from bortengine.architecture import Architecture
    from bortengine.profiling import Workload, predict_latency

    arch = Architecture(6, 12, 384, 1536)
    w8, w32 = Workload(1, 128, 2, "int8"), Workload(1, 128, 2, "float32")
    int8, full = predict_latency(arch, w8, shipped_profile), predict_latency(arch, w32, shipped_profile)
    mixed = [predict_latency(arch, w8, shipped_profile, float32_layers=k) for k in range(7)]
    assert mixed[0] == int8 and all(a < b for a, b in zip(mixed, mixed[1:]))
    steps = np.diff(mixed)   # every layer moved to float32 costs the same: a float32 layer minus an int8 one
    assert np.allclose(steps, steps[0])
    # all six in float32: the float32 forward but for what is outside the layers (embeddings, head, fixed cost)
    assert mixed[6] == pytest.approx(full, rel=0.05)
    detail = predict_latency(arch, w8, shipped_profile, float32_layers=3, detail=True)
    assert detail.parts["float32_layers"] == pytest.approx(mixed[3] - int8)
    assert sum(detail.parts.values()) == pytest.approx(detail.total_ms)
    assert predict_latency(arch, w32, shipped_profile, float32_layers=3) == full   # float32 already


def test_a_mixed_prediction_needs_the_float32_workload(shipped_profile):
    from bortengine.architecture import Architecture
    from bortengine.profiling import Profile, ProfileError, Workload, predict_latency

    profile = Profile(shipped_profile.target,
                      {k: v for k, v in shipped_profile.workloads.items() if k.endswith("int8")})
    arch, w8 = Architecture(6, 12, 384, 1536), Workload(1, 128, 2, "int8")
    with pytest.raises(ProfileError, match="bortengine profile --batch 1 --seq 128 --threads 2 --space bort$"):
        predict_latency(arch, w8, profile, float32_layers=2)
    for bad in (-1, 7, 1.5, True):
        with pytest.raises(ProfileError, match="float32_layers"):
            predict_latency(arch, w8, shipped_profile, float32_layers=bad)
    with pytest.raises(ProfileError, match="more than the architecture's 6 layers"):
        predict_latency(arch, w8, shipped_profile, float32_layers=4, bf16_layers=3)
    # bf16 layers are priced by the bf16 workload, which this profile does not have
    with pytest.raises(ProfileError, match="bortengine profile --batch 1 --seq 128 --threads 2 --dtype bf16 --space bort$"):
        predict_latency(arch, w8, shipped_profile, bf16_layers=2)
    with pytest.raises(ProfileError, match="bf16_layers prices layers of an int8 model"):
        predict_latency(arch, Workload(1, 128, 2, "float32"), shipped_profile, bf16_layers=2)


@pytest.mark.filterwarnings("ignore:the profile has no measurements near")  # H = 96 is below the profile's space
def test_the_latency_expectation_counts_the_calibrated_layers(outlier_model, tmp_path, shipped_profile):
    """A model whose int8 calibration keeps a layer in float32 is held, at an int8 workload, to the mixed
    prediction: a loaded int8 engine by its own layers, a directory by its record."""
    from bortengine.profiling import Workload, predict_latency
    from bortengine.profiling.latency_check import LatencyExpectation, architecture_of

    path = _with_record(outlier_model, tmp_path / "m", {"float32_layers": [1]})
    w8, w32 = Workload(1, 128, 2, "int8"), Workload(1, 128, 2, "float32")
    arch = architecture_of(bortengine.load(path))
    want = predict_latency(arch, w8, shipped_profile, float32_layers=1)
    assert want > predict_latency(arch, w8, shipped_profile)
    assert LatencyExpectation.of(path, shipped_profile, w8).predicted_ms == pytest.approx(want)
    engine = bortengine.load(path, dtype="int8")
    assert LatencyExpectation.of(engine, shipped_profile, w8).predicted_ms == pytest.approx(want)
    plain = bortengine.load(path, dtype="int8", float32_layers=[])
    assert LatencyExpectation.of(plain, shipped_profile, w8).predicted_ms == pytest.approx(
        predict_latency(arch, w8, shipped_profile))
    assert LatencyExpectation.of(path, shipped_profile, w32).predicted_ms == pytest.approx(
        predict_latency(arch, w32, shipped_profile))


def test_calibration_reads_text_pairs_as_the_engine_tokenizes_them(text_model):
    pairs = list(reversed(TEXTS))
    alone = calibrate_int8(text_model, TEXTS, write=False, progress=False)
    paired = calibrate_int8(text_model, TEXTS, pairs, write=False, progress=False)
    want = int(bortengine.load(text_model).tokenize(TEXTS, pairs)["attention_mask"].sum())
    assert paired.tokens == want > alone.tokens and paired.texts == len(TEXTS)
    assert calibrate_int8(text_model, TEXTS, pairs, write=False, progress=False, max_tokens=1).texts == 1
    with pytest.raises(InvalidInputError, match="one second text per text"):
        calibrate_int8(text_model, TEXTS, pairs[:2], write=False)
