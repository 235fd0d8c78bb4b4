"""Architecture: parsing, validation, exact parameter counts against the transformers models built from it."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bortengine.architecture import BERT_BASE, BERT_LARGE, BORT, MINILM_L6, Architecture


def test_parse_and_str():
    arch = Architecture.parse("⟨4, 12, 384, 1536⟩")
    assert arch.tuple == (4, 12, 384, 1536) and arch.head_size == 32
    assert str(arch) == "⟨4, 12, 384, 1536⟩"
    assert Architecture.parse("4x8x256x512", head="none").head == "none"
    assert Architecture.from_dict(arch.to_dict()) == arch


@pytest.mark.parametrize("bad, match", [
    ("4,12,384", "four integers"), ("4,5,384,1536", "multiple of heads"), ("0,12,384,1536", "positive"),
])
def test_invalid(bad, match):
    with pytest.raises(ValueError, match=match):
        Architecture.parse(bad)
    with pytest.raises(ValueError, match="head"):
        Architecture(2, 2, 8, 8, head="mlm")


def test_known_sizes():
    # transformers' BertModel (with pooler) of bert-base-uncased and bert-large-uncased
    assert BERT_BASE.parameters() == 109_482_240
    assert BERT_LARGE.parameters() == 335_141_888
    assert BORT.parameters(embeddings=False) < BERT_BASE.parameters(embeddings=False) / 3


@pytest.mark.parametrize("arch", [
    Architecture(1, 1, 8, 4, vocab_size=50, max_positions=16, type_vocab_size=1, head="none"),
    Architecture(2, 4, 32, 64, vocab_size=100, max_positions=64),
    Architecture(3, 2, 16, 48, vocab_size=120, max_positions=32, head="classifier", num_labels=3),
])
def test_counts_match_built_model(arch):
    from bortengine.training.models import architecture_of, build_model, count_parameters

    model = build_model(arch, seed=0)
    assert count_parameters(model) == arch.parameters()
    assert count_parameters(model, embeddings=False) == arch.parameters(embeddings=False)
    assert architecture_of(model) == arch


def test_real_teacher_counts():
    from bortengine.testing import minilm_path
    from bortengine.training import count_parameters, load_teacher

    arch = Architecture.from_hf_config(minilm_path())
    assert arch == MINILM_L6
    assert count_parameters(load_teacher()) == arch.parameters() == 22_713_216


def test_no_torch_on_import():
    code = ("import sys, bortengine, bortengine.architecture, bortengine.training, bortengine.cli.train, "
            "bortengine.cli; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
