"""Slice-init: importance scores, slicing to the same, smaller and differently shaped architectures."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from bortengine.architecture import Architecture
from bortengine.training.models import architecture_of, build_model
from bortengine.training.slicing import forward_layers, mean_pool, measure_importance, slice_init

TEACHER = Architecture(3, 4, 32, 64, vocab_size=200, max_positions=40)


@pytest.fixture(scope="module")
def teacher():
    model = build_model(TEACHER, seed=1, dropout=0.0).eval()
    with torch.no_grad():  # perturb LayerNorms and biases so slicing mistakes show
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (6, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[4, 3:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def importance(teacher, batch):
    return measure_importance(teacher, *batch)


def test_importance_shapes(importance):
    assert importance.heads.shape == (3, 4) and importance.neurons.shape == (3, 64)
    assert importance.hidden.shape == (32,)
    assert sorted(importance.layer_removal_order) == sorted(set(importance.layer_removal_order))
    assert len(importance.layer_removal_order) == 2
    assert (importance.heads > 0).all() and (importance.neurons >= 0).all()
    assert importance.kept_layers(3) == [0, 1, 2] and len(importance.kept_layers(1)) == 1
    with pytest.raises(ValueError, match="1..3"):
        importance.kept_layers(4)


def test_same_architecture_is_the_teacher(teacher, batch, importance):
    student, layer_map = slice_init(TEACHER, teacher, importance)
    assert layer_map == [0, 1, 2]
    student.eval()
    with torch.no_grad():
        a = student(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state
        b = teacher(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state
    torch.testing.assert_close(a, b)


def test_dropping_layers_equals_skipping_them(teacher, batch, importance):
    arch = Architecture(2, 4, 32, 64, vocab_size=200, max_positions=40)
    student, layer_map = slice_init(arch, teacher, importance)
    student.eval()
    with torch.no_grad():
        a = student(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state
        b = forward_layers(teacher, layer_map, *batch)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("arch", [
    Architecture(2, 2, 16, 32, vocab_size=200, max_positions=40),           # same head size, everything smaller
    Architecture(2, 2, 32, 48, vocab_size=200, max_positions=40),           # head size 16 vs 8: regrouped
    Architecture(1, 4, 16, 96, vocab_size=150, max_positions=20, type_vocab_size=1),  # wider FFN than teacher
])
def test_smaller_shapes(teacher, batch, importance, arch):
    student, layer_map = slice_init(arch, teacher, importance)
    assert architecture_of(student) == arch and len(layer_map) == arch.layers
    ids = batch[0].clamp(max=arch.vocab_size - 1)
    with torch.no_grad():
        out = student.eval()(input_ids=ids, attention_mask=batch[1]).last_hidden_state
    assert out.shape == (6, 12, arch.hidden) and torch.isfinite(out).all()
    # the kept FFN neurons are the most important ones, in order
    kept = torch.sort(torch.topk(importance.neurons[layer_map[0]], min(64, arch.intermediate)).indices).values
    hid = torch.sort(torch.topk(importance.hidden, arch.hidden).indices).values
    expected = teacher.encoder.layer[layer_map[0]].intermediate.dense.weight[kept][:, hid]
    got = student.encoder.layer[0].intermediate.dense.weight[:len(kept)]
    torch.testing.assert_close(got, expected)


def test_slice_beats_random_at_init(teacher, batch, importance):
    arch = Architecture(2, 4, 32, 48, vocab_size=200, max_positions=40)
    sliced, _ = slice_init(arch, teacher, importance)
    rand = build_model(arch, seed=0)
    ids, mask = batch
    with torch.no_grad():
        t = mean_pool(teacher(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        cos = [torch.nn.functional.cosine_similarity(
            mean_pool(m.eval()(input_ids=ids, attention_mask=mask).last_hidden_state, mask), t).mean()
            for m in (sliced, rand)]
    assert cos[0] > cos[1]


def test_more_layers_than_teacher_rejected(teacher, importance):
    with pytest.raises(ValueError, match="more layers than its teacher .*at most 3 layers"):
        slice_init(Architecture(4, 4, 32, 64, vocab_size=200, max_positions=40), teacher, importance)
