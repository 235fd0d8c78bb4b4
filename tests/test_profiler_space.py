"""Search spaces as data: the Bort and MiniLM spaces, spaces from JSON/YAML files, and every malformed case."""
from __future__ import annotations

import json

import pytest

from bortengine.search_space import SPACES, SearchSpace, SearchSpaceError, architecture_dims, make_architecture


def test_bort_space_is_the_papers():
    space = SPACES["bort"]
    archs = space.architectures()
    dims = {architecture_dims(a) for a in archs}
    # D 6 values x I 5 values x the (A, H) pairs with H divisible by A: 512 and 1024 take A in {4, 8, 16}, 768 all 4
    assert len(archs) == len(dims) == 6 * 5 * (3 + 4 + 3) == 300
    for d, a, h, i in dims:
        assert d in (2, 4, 6, 8, 10, 12) and a in (4, 8, 12, 16) and h in (512, 768, 1024)
        assert i in (256, 512, 768, 1024, 3072) and h % a == 0
    assert (4, 8, 1024, 768) in dims  # Bort itself
    assert (4, 12, 1024, 768) not in space and (4, 8, 1024, 768) in space
    assert architecture_dims(space.largest()) == (12, 16, 1024, 3072)


def test_minilm_space_is_below_minilm():
    space = SPACES["minilm"]
    assert len(space) > 100
    for d, a, h, i in map(architecture_dims, space):
        assert d <= 6 and h <= 384 and i <= 1536 and h % a == 0
    assert (6, 12, 384, 1536) in space  # all-MiniLM-L6-v2 is its maximum point
    assert architecture_dims(space.largest()) == (6, 12, 384, 1536)


def test_candidates_are_architectures_with_the_shared_sizes():
    space = SearchSpace("s", layers=[2], heads=[2], hidden=[64], intermediate=[128], vocab_size=1000, head="none")
    (arch,) = space.architectures()
    assert (arch.layers, arch.heads, arch.hidden, arch.intermediate) == (2, 2, 64, 128)
    assert arch.vocab_size == 1000 and arch.head == "none"
    assert architecture_dims((2, 2, 64, 128)) == (2, 2, 64, 128)
    assert architecture_dims(make_architecture(1, 4, 64, 32)) == (1, 4, 64, 32)


def test_sample_is_seeded_distinct_and_excludes():
    space = SPACES["bort"]
    a = space.sample(12, seed=3)
    assert a == space.sample(12, seed=3) and a != space.sample(12, seed=4)
    assert len({architecture_dims(x) for x in a}) == 12
    b = space.sample(12, seed=3, exclude=a)
    assert not {architecture_dims(x) for x in a} & {architecture_dims(x) for x in b}
    assert len(space.sample(10_000)) == 300


def test_space_from_json_and_yaml(tmp_path):
    data = {"name": "mine", "D": [1, 2], "A": 2, "hidden": [32, 48], "I": [64], "head": "none"}
    path = tmp_path / "space.json"
    path.write_text(json.dumps(data))
    space = SearchSpace.from_file(path)
    assert space.name == "mine" and space.layers == (1, 2) and space.heads == (2,) and len(space) == 4
    assert SearchSpace.resolve(str(path)) == space
    assert SearchSpace.from_dict(space.to_dict()) == space
    yaml = pytest.importorskip("yaml")
    ypath = tmp_path / "space.yaml"
    ypath.write_text(yaml.safe_dump({"layers": [3], "heads": [4], "hidden": [64], "intermediate": [32, 64]}))
    yspace = SearchSpace.from_file(ypath)
    assert yspace.name == "space" and len(yspace) == 2


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "mapping"),
    ('{"layers": [2], "heads": [4], "hidden": [64]}', "missing intermediate"),
    ('{"layers": [], "heads": [4], "hidden": [64], "intermediate": [64]}', "layers is empty"),
    ('{"layers": [2], "heads": [4], "hidden": [64], "intermediate": [0]}', "positive integers"),
    ('{"layers": [2], "heads": [4], "hidden": [64], "intermediate": ["64"]}', "positive integers"),
    ('{"layers": [2], "heads": [4], "hidden": [64], "intermediate": [64], "colour": 1}', "unknown key 'colour'"),
    ('{"layers": [2], "D": [2], "heads": [4], "hidden": [64], "intermediate": [64]}', "given twice"),
    ('{"layers": [2], "heads": [5, 7], "hidden": [64, 96], "intermediate": [64]}', "is empty: no hidden size"),
    ('{"layers": [2], "heads": [4], "hidden": [64], "intermediate": [64], "head": "lm"}', "head must be"),
])
def test_malformed_space_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SearchSpaceError, match=message) as info:
        SearchSpace.from_file(path)
    assert str(path) in str(info.value)


def test_unknown_space_and_missing_file(tmp_path):
    with pytest.raises(SearchSpaceError, match="unknown search space 'bert-xxl'.*bort"):
        SearchSpace.resolve("bert-xxl")
    with pytest.raises(SearchSpaceError, match="cannot read"):
        SearchSpace.from_file(tmp_path / "missing.json")
    with pytest.raises(SearchSpaceError, match=f"search space file {tmp_path / 'missing.json'} does not exist"):
        SearchSpace.resolve(tmp_path / "missing.json")       # not called an unknown space's name
    with pytest.raises(SearchSpaceError, match="not a multiple"):
        architecture_dims((2, 5, 64, 64))
    with pytest.raises(SearchSpaceError, match="not an architecture"):
        architecture_dims("2,4,64,64")
