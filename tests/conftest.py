"""Shared fixtures: the native module (or its NumPy stand-in), the ISA list, cached random-weight models (BERT, and
the other families with their own tokenizers).

If `bortengine._core` is not built, tests/numpy_encoder.py stands in for it (the run header says so), so the
Python package can be tested on its own; every ISA-parametrized test then runs on the one "numpy" path. Setting
BORTENGINE_TEST_NUMPY_CORE=1 forces the stand-in even when the module is built.
Random models are built once per session into one temporary directory, keyed by their arguments.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
try:
    import bortengine
except ImportError:  # not installed: test the source tree
    sys.path.insert(0, str(ROOT / "src"))
    import bortengine

try:
    if os.environ.get("BORTENGINE_TEST_NUMPY_CORE"):  # test the Python package on the stand-in even when built
        raise ImportError("BORTENGINE_TEST_NUMPY_CORE is set")
    from bortengine import _core

    NATIVE = True
except ImportError:
    import numpy_encoder as _core

    sys.modules["bortengine._core"] = _core
    bortengine._core = _core
    NATIVE = False

ISAS = list(_core.available_isas())


def pytest_report_header(config):
    core = "native bortengine._core" if NATIVE else "NumPy stand-in (tests/numpy_encoder.py; _core not built)"
    return f"bortengine core: {core}; ISAs under test: {ISAS}"


class ModelFactory:
    """make_random_bert with every model built once per session, in a directory named by its arguments."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, **kwargs) -> Path:
        from bortengine.testing import make_random_bert

        key = hashlib.sha1(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:12]
        return make_random_bert(self.root / key, **kwargs)


class EncoderFactory(ModelFactory):
    """make_random_encoder (RoBERTa, XLM-R, CamemBERT, DistilBERT, BERT with trained tokenizers), each model built
    once per session."""

    def __call__(self, **kwargs) -> Path:
        from bortengine.testing import make_random_encoder

        key = hashlib.sha1(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:12]
        return make_random_encoder(self.root / key, **kwargs)


@pytest.fixture(scope="session")
def make_model(tmp_path_factory) -> ModelFactory:
    return ModelFactory(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def make_encoder(tmp_path_factory) -> EncoderFactory:
    return EncoderFactory(tmp_path_factory.mktemp("encoders"))


@pytest.fixture(scope="session")
def minilm() -> Path:
    from bortengine.testing import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def small_model(make_model) -> Path:
    """A 2-layer H=64 model with pooler and the real tokenizer: the default for input/API tests."""
    return make_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)


@pytest.fixture(scope="session")
def small_classifier(make_model) -> Path:
    return make_model(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                      head="classifier", num_labels=3, seed=3)


@pytest.fixture(scope="session")
def small_engine(small_model):
    return bortengine.load(small_model)


@pytest.fixture(params=ISAS)
def isa(request) -> str:
    return request.param
