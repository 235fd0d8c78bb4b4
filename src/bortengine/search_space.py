"""Search spaces of BERT architectures, as data: the Bort space, a space below all-MiniLM-L6-v2, or a file.

A SearchSpace is the product of the values each size may take, D × A × H × I, keeping only architectures whose
hidden size H is a multiple of the head count A (the head size H / A must be whole), plus the sizes every
candidate shares (vocabulary, positions, token types, head). The profiler reads it to know which kernel shapes to
measure; the search (FPTAS) enumerates it. This module is pure Python: no NumPy, no torch.

A space file is JSON (or YAML, if PyYAML is installed) with one list per size:

    {"name": "small", "layers": [2, 4], "heads": [4, 8], "hidden": [256, 512], "intermediate": [512, 1024],
     "vocab_size": 30522, "max_positions": 512, "type_vocab_size": 2, "head": "pooler"}

The paper's letters work as keys too (D, A, H, I); a single integer stands for a one-element list.

Sizes: D = encoder layers, A = attention heads, H = hidden size, I = feed-forward (intermediate) size.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from bortengine.architecture import HEADS, Architecture
from bortengine.errors import BortEngineError

__all__ = ["SearchSpace", "SearchSpaceError", "SPACES", "architecture_dims", "make_architecture"]


class SearchSpaceError(BortEngineError, ValueError):
    """A search space that is malformed, empty, or cannot be read."""


def make_architecture(layers: int, heads: int, hidden: int, intermediate: int, **sizes: Any) -> Architecture:
    """A bortengine.architecture.Architecture (which owns the exact parameter counts)."""
    return Architecture(layers, heads, hidden, intermediate, **sizes)


def architecture_dims(arch: Any) -> tuple[int, int, int, int]:
    """⟨D, A, H, I⟩ of an Architecture, of any object with D/A/H/I or layers/heads/hidden/intermediate
    attributes, or of a 4-tuple."""
    if isinstance(arch, (tuple, list)) and len(arch) == 4:
        dims = tuple(arch)
    elif all(hasattr(arch, n) for n in ("layers", "heads", "hidden", "intermediate")):
        dims = (arch.layers, arch.heads, arch.hidden, arch.intermediate)
    elif all(hasattr(arch, n) for n in ("D", "A", "H", "I")):
        dims = (arch.D, arch.A, arch.H, arch.I)
    else:
        raise SearchSpaceError(f"not an architecture: {arch!r}; pass an Architecture or a tuple (D, A, H, I)")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims):
        raise SearchSpaceError(f"architecture sizes must be positive integers, got {dims}")
    d, a, h, i = dims
    if h % a:
        raise SearchSpaceError(f"architecture {dims}: hidden size {h} is not a multiple of the head count {a}")
    return dims  # type: ignore[return-value]


# -- the space ---------------------------------------------------------------------------------------------------
_SIZE_KEYS = {"layers": "layers", "D": "layers", "num_layers": "layers", "num_hidden_layers": "layers",
              "heads": "heads", "A": "heads", "num_heads": "heads", "num_attention_heads": "heads",
              "hidden": "hidden", "H": "hidden", "hidden_size": "hidden",
              "intermediate": "intermediate", "I": "intermediate", "intermediate_size": "intermediate"}
_SCALAR_KEYS = ("name", "vocab_size", "max_positions", "type_vocab_size", "head", "description")


def _values(name: str, raw: Any) -> tuple[int, ...]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        raise SearchSpaceError(f"search space: {name} must be a list of positive integers, got {raw!r}")
    if not raw:
        raise SearchSpaceError(f"search space: {name} is empty; give at least one value")
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SearchSpaceError(f"search space: {name} must hold positive integers, got {v!r} in {list(raw)}")
    return tuple(sorted(set(raw)))


@dataclass(frozen=True)
class SearchSpace:
    """Every ⟨D, A, H, I⟩ with D in layers, A in heads, H in hidden, I in intermediate and H divisible by A.

    The shared sizes (vocab_size, max_positions, type_vocab_size, head) are those of every candidate. Building a
    space that holds no architecture raises SearchSpaceError.
    """

    name: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    hidden: tuple[int, ...]
    intermediate: tuple[int, ...]
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    head: str = "pooler"
    description: str = ""
    _archs: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("layers", "heads", "hidden", "intermediate"):
            object.__setattr__(self, name, _values(name, getattr(self, name)))
        for name in ("vocab_size", "max_positions", "type_vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SearchSpaceError(f"search space: {name} must be a positive integer, got {v!r}")
        if self.head not in HEADS:
            raise SearchSpaceError(f"search space: head must be one of {HEADS}, got {self.head!r}")
        if not isinstance(self.name, str) or not self.name:
            raise SearchSpaceError(f"search space: name must be a non-empty string, got {self.name!r}")
        pairs = [(a, h) for h in self.hidden for a in self.heads if h % a == 0]
        if not pairs:
            raise SearchSpaceError(
                f"search space {self.name!r} is empty: no hidden size in {list(self.hidden)} is a multiple of a "
                f"head count in {list(self.heads)}")
        archs = tuple(Architecture(d, a, h, i, vocab_size=self.vocab_size, max_positions=self.max_positions,
                                   type_vocab_size=self.type_vocab_size, head=self.head)
                      for d in self.layers for (a, h) in pairs for i in self.intermediate)
        object.__setattr__(self, "_archs", archs)

    # -- the candidates ---------------------------------------------------------------------------------------
    def architectures(self) -> list:
        """Every candidate, ordered by (D, H, A, I)."""
        return sorted(self._archs, key=lambda x: (x.layers, x.hidden, x.heads, x.intermediate))

    def __iter__(self) -> Iterator:
        return iter(self.architectures())

    def __len__(self) -> int:
        return len(self._archs)

    def __contains__(self, arch: object) -> bool:
        try:
            d, a, h, i = architecture_dims(arch)
        except SearchSpaceError:
            return False
        return d in self.layers and a in self.heads and h in self.hidden and i in self.intermediate and h % a == 0

    def sample(self, n: int, seed: int = 0, exclude: Sequence[Any] = ()) -> list:
        """n distinct candidates drawn with random.Random(seed), none of `exclude`; all of them if n >= size."""
        excluded = {architecture_dims(x) for x in exclude}
        pool = [x for x in self.architectures() if architecture_dims(x) not in excluded]
        if n >= len(pool):
            return pool
        return random.Random(seed).sample(pool, n)

    def largest(self):
        """The maximum point: the most layers, heads, hidden and intermediate sizes (the paper's reference)."""
        return max(self._archs, key=lambda x: (x.layers, x.hidden, x.intermediate, x.heads))

    # -- shapes the profiler needs ----------------------------------------------------------------------------
    def heads_hidden_pairs(self) -> list[tuple[int, int]]:
        """(A, H) pairs that occur: attention shapes."""
        return sorted({(x.heads, x.hidden) for x in self._archs})

    def hidden_intermediate_pairs(self) -> list[tuple[int, int]]:
        """(H, I) pairs that occur: feed-forward GEMM shapes."""
        return sorted({(x.hidden, x.intermediate) for x in self._archs})

    # -- data -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "layers": list(self.layers), "heads": list(self.heads), "hidden": list(self.hidden),
             "intermediate": list(self.intermediate), "vocab_size": self.vocab_size,
             "max_positions": self.max_positions, "type_vocab_size": self.type_vocab_size, "head": self.head}
        if self.description:
            d["description"] = self.description
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default_name: str = "custom") -> "SearchSpace":
        if not isinstance(data, Mapping):
            raise SearchSpaceError(f"a search space is a mapping of sizes to lists, got {type(data).__name__}")
        sizes: dict[str, Any] = {}
        scalars: dict[str, Any] = {}
        for key, value in data.items():
            if key in _SIZE_KEYS:
                canonical = _SIZE_KEYS[key]
                if canonical in sizes:
                    raise SearchSpaceError(f"search space: {canonical} is given twice (as {key!r} and another alias)")
                sizes[canonical] = value
            elif key in _SCALAR_KEYS:
                scalars[key] = value
            else:
                raise SearchSpaceError(
                    f"search space: unknown key {key!r}; expected layers/D, heads/A, hidden/H, intermediate/I and "
                    f"optionally {', '.join(_SCALAR_KEYS)}")
        missing = [k for k in ("layers", "heads", "hidden", "intermediate") if k not in sizes]
        if missing:
            raise SearchSpaceError(f"search space: missing {', '.join(missing)} (each a list of positive integers)")
        scalars.setdefault("name", default_name)
        return cls(**sizes, **scalars)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SearchSpace":
        """Read a space from a .json, .yaml or .yml file (see the module docstring for the format)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise SearchSpaceError(f"cannot read search space file {path}: {e.strerror or e}") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise SearchSpaceError(f"{path} is YAML but PyYAML is not installed: pip install pyyaml, or "
                                       f"write the space as JSON") from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise SearchSpaceError(f"{path} is not valid YAML: {e}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise SearchSpaceError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(data, default_name=path.stem)
        except SearchSpaceError as e:
            raise SearchSpaceError(f"{path}: {e}") from None

    @classmethod
    def resolve(cls, spec: "str | os.PathLike | SearchSpace") -> "SearchSpace":
        """A space from a name in SPACES ("bort", "minilm") or a file path."""
        if isinstance(spec, SearchSpace):
            return spec
        key = str(spec)
        if key.lower() in SPACES:
            return SPACES[key.lower()]
        if Path(key).exists():
            return cls.from_file(key)
        if Path(key).suffix.lower() in (".json", ".yaml", ".yml") or "/" in key:
            raise SearchSpaceError(f"search space file {key} does not exist; give an existing JSON/YAML file or one "
                                   f"of {sorted(SPACES)}")
        raise SearchSpaceError(f"unknown search space {key!r}: give one of {sorted(SPACES)} or a JSON/YAML file")

    def describe(self) -> str:
        def values(v: tuple[int, ...]) -> str:
            return "{" + ", ".join(map(str, v)) + "}"

        return (f"{self.name}: D ∈ {values(self.layers)}, A ∈ {values(self.heads)}, H ∈ {values(self.hidden)}, "
                f"I ∈ {values(self.intermediate)} (H divisible by A): {len(self)} architectures")


# The space of de Wynter and Perry (2020), sub-architectures of BERT-large.
BORT_SPACE = SearchSpace(
    name="bort", layers=(2, 4, 6, 8, 10, 12), heads=(4, 8, 12, 16), hidden=(512, 768, 1024),
    intermediate=(256, 512, 768, 1024, 3072),
    description="Bort (arXiv 2010.10499): sub-architectures of BERT-large")

# Below all-MiniLM-L6-v2 ⟨6, 12, 384, 1536⟩: D ≤ 6, H ≤ 384, I ≤ 1536, heads dividing H.
MINILM_SPACE = SearchSpace(
    name="minilm", layers=(1, 2, 3, 4, 5, 6), heads=(2, 4, 6, 8, 12), hidden=(128, 192, 256, 320, 384),
    intermediate=(256, 512, 768, 1024, 1536),
    description="below all-MiniLM-L6-v2: D <= 6, H <= 384, I <= 1536, heads dividing H")

SPACES = {"bort": BORT_SPACE, "minilm": MINILM_SPACE}
