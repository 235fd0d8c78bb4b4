"""ModelConfig: the hyper-parameters of an encoder (BERT, RoBERTa / XLM-RoBERTa / CamemBERT, DistilBERT, ELECTRA,
MPNet), parsed and validated from a Hugging Face config.json.

A key missing from config.json takes the default of the family's transformers config class (so a model loads here
exactly when, and as, it loads in transformers); a key present with a value the engine cannot run is rejected with
an UnsupportedModelError that says why, rather than computing something subtly different. Families spell some keys
their own way (DistilBERT's dim, n_layers, ...): engine/families.py maps them onto the fields here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from bortengine.engine.families import FAMILIES, HEADS, Family, default_value, family_of, supported_classes
from bortengine.errors import ModelLoadError, UnsupportedModelError
from bortengine.files import is_regular_file, read_json

__all__ = ["ModelConfig", "NumberedLabels", "SUPPORTED_KINDS"]

# The architectures the engine runs: each family's bare encoder (+ optional pooler), sequence classifier (its head
# applied in NumPy on the first token) and token classifier (a linear layer on every token).
SUPPORTED_KINDS = tuple(supported_classes())

# Activations that other encoder configs use. Named so the error can say what the model wants instead.
_OTHER_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu",
                      "swish", "mish", "tanh", "gelu_accurate", "gelu_10", "linear", "sigmoid")
# transformers' names of the exact erf GELU the engine computes: "gelu_python" is the same function written in
# Python (GELUActivation(use_gelu_python=True): x * 0.5 * (1 + erf(x / sqrt(2))))
_EXACT_GELU = ("gelu", "gelu_python")
_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# A config.json holds tens of keys (and id2label); one larger than this is not a model's config. Read whole, so
# bounded before it is read; so are the other settings files of a model directory (tokenizer_config.json,
# modules.json, a module's config.json, a shard index).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_F32_MAX, _F32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38   # float32's largest, and smallest normal


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of an encoder. Defaults are transformers' BertConfig defaults (BERT-base)."""

    hidden_size: int = 768                 # H
    num_hidden_layers: int = 12            # D, encoder layers
    num_attention_heads: int = 12          # H must be a multiple of this; head size = H / heads
    intermediate_size: int = 3072          # I, FFN width
    vocab_size: int = 30522                # V, rows of the word embedding
    max_position_embeddings: int = 512     # P, rows of the position table (RoBERTa: padding_idx + 1 of them unused)
    type_vocab_size: int = 2               # Tt, segment (token type) embeddings (DistilBERT: 1, a zero row)
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"               # only exact erf GELU: the engine's FFN epilogue computes exactly that
    position_embedding_type: str = "absolute"
    model_type: str = "bert"               # config.json model_type: says the family (engine/families.py)
    kind: str = "BertModel"                # one of SUPPORTED_KINDS, from config.json "architectures"
    head: str = "encoder"                  # "encoder", "sequence" (classifier) or "token" (token classifier)
    id2label: Mapping[int, str] = field(default_factory=lambda: NumberedLabels(2))
    problem_type: Optional[str] = None     # None: transformers' rule (1 label -> regression, else single-label)
    pad_token_id: int = 0
    # sentence-transformers CrossEncoder's activation of the scores (config.json sentence_transformers.activation_fn,
    # a torch class path); None: its default (sigmoid for one label, identity otherwise)
    score_activation: Optional[str] = None
    embedding_size: int = 768              # E, width of the embedding tables: H but in ELECTRA (then projected to H)
    relative_attention_num_buckets: int = 0  # MPNet's relative position bias table rows; 0: no bias (the others)
    # the layers an int8 engine runs in float32 or in bf16 instead (config.json bortengine_int8.float32_layers,
    # .bf16_layers, written by bortengine.export.calibrate_int8): mixed precision where int8 would round some
    # tokens too coarsely
    int8_float32_layers: tuple[int, ...] = ()
    int8_bf16_layers: tuple[int, ...] = ()
    int8_calibrated_kernel: Optional[str] = None   # the int8 GEMM kernel of the CPU path that calibration ran on

    @property
    def int8_kept_layers(self) -> tuple[int, ...]:
        """The layers an int8 engine of this model runs out of int8 (float32 or bf16), ascending."""
        return tuple(sorted(self.int8_float32_layers + self.int8_bf16_layers))

    @property
    def family(self) -> Family:
        return family_of(self.model_type)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def positions_padding_id(self) -> int:
        """The id that positions after padding are numbered after (RoBERTa: pad_token_id; MPNet: 1, fixed)."""
        fixed = self.family.positions_padding_idx
        return self.pad_token_id if fixed is None else fixed

    @property
    def position_offset(self) -> int:
        """Row of the position table that the first token reads: padding_idx + 1 for RoBERTa and MPNet, else 0."""
        return self.positions_padding_id + 1 if self.family.positions_after_padding else 0

    @property
    def projects_embeddings(self) -> bool:
        """Whether the embeddings are projected to the hidden size (ELECTRA with embedding_size != hidden_size)."""
        return self.embedding_size != self.hidden_size

    @property
    def max_positions(self) -> int:
        """Tokens a sequence may have: the position table's rows from position_offset on."""
        return self.max_position_embeddings - self.position_offset

    @property
    def token_types(self) -> bool:
        """Whether the model reads token types from its tokenizer (the second text of a pair gets type 1)."""
        return self.family.token_types

    @property
    def is_classifier(self) -> bool:
        """A sequence classifier: one label per text."""
        return self.head == "sequence"

    @property
    def is_token_classifier(self) -> bool:
        return self.head == "token"

    def key(self, name: str) -> str:
        """The config.json key of a field in this model's family (hidden_size is DistilBERT's dim; embedding_size
        is the hidden size's key in the families whose embeddings are H wide)."""
        if name == "embedding_size" and name not in self.family.keys:
            name = "hidden_size"
        return self.family.keys.get(name, name)

    @property
    def effective_problem_type(self) -> str:
        """The problem type transformers would use: explicit problem_type, else by the number of labels."""
        if self.problem_type is not None:
            return self.problem_type
        return "regression" if self.num_labels == 1 else "single_label_classification"

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ModelConfig":
        """Parse a config.json file, or the config.json inside a model directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not is_regular_file(path, ModelLoadError):
            raise ModelLoadError(
                f"no config.json in {path.parent}: a Hugging Face model directory needs config.json next to its "
                f"weights (save it with model.config.save_pretrained(dir) or copy it from the model's hub page)")
        data = read_json(path, ModelLoadError, max_bytes=MAX_CONFIG_BYTES,
                         fix="re-save it with model.config.save_pretrained")
        config = cls.from_dict(data, source=str(path))
        activation = _saved_cross_encoder_activation(path.parent / "config_sentence_transformers.json")
        return config if activation is None else replace(config, score_activation=activation)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> "ModelConfig":
        """Validate a config.json dictionary. source names the file in error messages."""
        if not isinstance(data, dict):
            raise ModelLoadError(f"{source} must hold a JSON object, got {type(data).__name__}")
        model_type, family = _parse_family(data, source)
        kind, head = _parse_kind(data.get("architectures"), family, source)

        def get(name: str) -> tuple[str, Any]:
            """(config.json key, value) of a field: the family's key, or its fixed value."""
            if name in family.fixed:
                return name, family.fixed[name]
            key = family.keys[name]
            return key, data.get(key, default_value(family, model_type, key))

        def get_int(name: str, minimum: int = 1) -> int:
            key, value = get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ModelLoadError(f"{source}: {key} must be an integer >= {minimum}, got {value!r}")
            return value

        hidden = get_int("hidden_size")
        layers = get_int("num_hidden_layers")
        heads = get_int("num_attention_heads")
        intermediate = get_int("intermediate_size")
        vocab = get_int("vocab_size")
        positions = get_int("max_position_embeddings")
        type_vocab = get_int("type_vocab_size")
        pad_token_id = data.get("pad_token_id", default_value(family, model_type, "pad_token_id"))
        if pad_token_id is None:
            if family.positions_after_padding and family.positions_padding_idx is None:
                raise ModelLoadError(f"{source}: pad_token_id is null, but a {model_type} model numbers positions "
                                     f"after its padding id (transformers cannot run it either); set pad_token_id "
                                     f"to the id of the tokenizer's padding token (1, <pad>, for RoBERTa's)")
            pad_token_id = 0
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ModelLoadError(f"{source}: pad_token_id must be an integer token id or null, got {pad_token_id!r}")
        if hidden % heads != 0:
            absent = [k for k in (family.keys["hidden_size"], family.keys["num_attention_heads"]) if k not in data]
            defaults = (f" ({' and '.join(absent)} not in the file: {model_type}'s default"
                        f"{'s' if len(absent) > 1 else ''} taken)" if absent else "")
            raise ModelLoadError(
                f"{source}: {family.keys['hidden_size']}={hidden} is not a multiple of "
                f"{family.keys['num_attention_heads']}={heads}{defaults}; each head gets hidden_size / "
                f"num_attention_heads channels, so fix one of them")
        padding_idx = pad_token_id if family.positions_padding_idx is None else family.positions_padding_idx
        if family.positions_after_padding and not 0 <= padding_idx < positions - 1:
            named = "pad_token_id" if family.positions_padding_idx is None else "its padding index"
            raise ModelLoadError(
                f"{source}: a {model_type} model numbers positions from {named} + 1, so {named}="
                f"{padding_idx} leaves none of its max_position_embeddings={positions} positions for tokens")
        embedding = get_int("embedding_size") if "embedding_size" in family.keys else hidden
        buckets = _relative_buckets(family, get, source)

        _, eps = get("layer_norm_eps")
        # (the kernels take it as a float32: 1e300 became infinity, every text one embedding; 1e-50 became 0)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not _F32_TINY <= eps <= _F32_MAX:
            raise ModelLoadError(f"{source}: layer_norm_eps must be a positive number float32 holds (from "
                                 f"{_F32_TINY:.3g} to {_F32_MAX:.3g}; BERT's is 1e-12), got {eps!r}")
        act_key, act = get("hidden_act")
        _check_supported(data, act_key, act, source)

        id2label = _parse_id2label(data, source)
        problem_type = data.get("problem_type")
        if problem_type is not None and problem_type not in _PROBLEM_TYPES:
            raise ModelLoadError(
                f"{source}: problem_type {problem_type!r} is unknown; use one of {list(_PROBLEM_TYPES)} or null")
        if problem_type == "single_label_classification" and head == "sequence" and len(id2label) == 1:
            # a softmax over one logit is 1 for every text; transformers refuses this config too
            raise ModelLoadError(
                f"{source}: problem_type 'single_label_classification' with one label (num_labels=1): its probability "
                f"would be 1 for every text. Set problem_type to 'regression' (one score, as a cross-encoder's: "
                f"Engine.rerank) or 'multi_label_classification' (a sigmoid probability), or give num_labels >= 2")

        return cls(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
            vocab_size=vocab, max_position_embeddings=positions, type_vocab_size=type_vocab,
            layer_norm_eps=float(eps), hidden_act=act, position_embedding_type="absolute", model_type=model_type,
            kind=kind, head=head, id2label=id2label, problem_type=problem_type, pad_token_id=pad_token_id,
            score_activation=_parse_score_activation(data, source), embedding_size=embedding,
            relative_attention_num_buckets=buckets,
            **_parse_int8_record(data, layers, source),
        )


INT8_RECORD = "bortengine_int8"  # config.json key of an int8 calibration (bortengine.export.calibrate_int8)


def check_layer_list(value: Any, layers: int, what: str) -> tuple[int, ...]:
    """A list of distinct layer indices in [0, layers), ascending, or ModelLoadError naming `what`."""
    if not isinstance(value, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in value):
        raise ModelLoadError(f"{what} must be a list of encoder layer indices, got {value!r}")
    if len(set(value)) != len(value) or any(not 0 <= i < layers for i in value):
        raise ModelLoadError(f"{what} must name distinct layers in 0..{layers - 1} (the model has {layers}), "
                             f"got {list(value)}")
    return tuple(sorted(value))


def _parse_int8_record(data: dict, layers: int, source: str) -> dict[str, Any]:
    """config.json bortengine_int8: the layers int8 engines run in float32 and in bf16 (absent: none), and the int8
    kernel the calibration measured with."""
    record = data.get(INT8_RECORD)
    if record is None:
        return {}
    if not isinstance(record, dict):
        raise ModelLoadError(f"{source}: {INT8_RECORD} must be an object (written by bortengine.export."
                             f"calibrate_int8), got {type(record).__name__}; delete it to run every layer in int8")
    kept = {f"int8_{dtype}_layers": check_layer_list(record.get(f"{dtype}_layers", []), layers,
                                                         f"{source}: {INT8_RECORD}.{dtype}_layers")
            for dtype in ("float32", "bf16")}
    both = set(kept["int8_float32_layers"]) & set(kept["int8_bf16_layers"])
    if both:
        raise ModelLoadError(f"{source}: {INT8_RECORD} puts layers {sorted(both)} both in float32_layers and in "
                             f"bf16_layers; a layer runs in one of them")
    kernel = record.get("kernel")
    return {**kept, "int8_calibrated_kernel": kernel if isinstance(kernel, str) else None}


# transformers' MPNetEncoder.compute_position_bias buckets query-key distances into 32 whatever the config says
# (its num_buckets argument keeps its default), so it looks up rows up to 31 of the table: a smaller table fails
# there (an index error) as soon as a sequence has enough tokens.
MPNET_BUCKETS = 32


def _relative_buckets(family: Family, get, source: str) -> int:
    """The rows of MPNet's relative position bias table (config.json relative_attention_num_buckets); 0 for the
    families without one."""
    if "relative_attention_num_buckets" not in family.keys:
        return 0
    key, value = get("relative_attention_num_buckets")
    if isinstance(value, bool) or not isinstance(value, int) or value < MPNET_BUCKETS:
        raise ModelLoadError(
            f"{source}: {key} must be an integer >= {MPNET_BUCKETS}, got {value!r}: transformers' MPNet looks up "
            f"{MPNET_BUCKETS} distance buckets in encoder.relative_attention_bias (rows 0..{MPNET_BUCKETS - 1}) "
            f"whatever the config says, so a smaller table cannot run it")
    return value


def _parse_family(data: dict, source: str) -> tuple[str, Family]:
    """(model_type, its Family). A config without model_type is read by the family of its architectures, else as
    BERT (transformers' BertConfig writes model_type; hand-written configs often leave it out)."""
    model_type = data.get("model_type")
    if model_type is None:
        architectures = data.get("architectures")
        names = architectures if isinstance(architectures, list) else [architectures]
        for family in FAMILIES:
            if any(isinstance(n, str) and family.supports(n) for n in names):
                return family.model_types[0], family
        return "bert", family_of("bert")
    if not isinstance(model_type, str):
        raise ModelLoadError(f"{source}: model_type must be a string such as 'bert', got {model_type!r}")
    family = family_of(model_type)
    if family is None:
        runs = sorted(t for f in FAMILIES for t in f.model_types)
        raise UnsupportedModelError(
            f"{source}: model_type {model_type!r} is not supported; bortengine runs the encoders {runs}. "
            f"{_why_not(model_type)}")
    return model_type, family


def _check_supported(data: dict, act_key: str, act: Any, source: str) -> None:
    """Refuse what the engine's layers do not compute: another activation, relative positions, a decoder."""
    if act not in _EXACT_GELU:
        hint = ("it is a known activation, but the engine computes exact erf GELU only ('gelu'), so its "
                "outputs would be wrong for this model" if act in _OTHER_ACTIVATIONS
                else "it is not an activation name transformers knows either")
        raise UnsupportedModelError(f"{source}: {act_key} {act!r} is not supported: {hint}")
    pos_type = data.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise UnsupportedModelError(
            f"{source}: position_embedding_type {pos_type!r} is not supported; the engine adds learned "
            f"absolute position embeddings ('absolute') only")
    for flag in ("is_decoder", "add_cross_attention"):
        if data.get(flag):
            raise UnsupportedModelError(
                f"{source}: {flag}=true is not supported; bortengine runs bidirectional encoders only")


def _saved_cross_encoder_activation(path: Path) -> Optional[str]:
    """The activation_fn sentence-transformers 6 saves with a CrossEncoder in config_sentence_transformers.json,
    which CrossEncoder reads before config.json's; None without one."""
    data = read_json(path, ModelLoadError, missing_ok=True, max_bytes=MAX_CONFIG_BYTES,
                     fix="re-save the model with sentence-transformers")
    activation = data.get("activation_fn") if isinstance(data, dict) else None
    if activation is not None and not isinstance(activation, str):
        raise ModelLoadError(f"{path}: activation_fn must be a class path such as "
                             f"'torch.nn.modules.activation.Sigmoid', got {activation!r}")
    return activation


def _parse_score_activation(data: dict, source: str) -> Optional[str]:
    """sentence-transformers CrossEncoder's activation_fn (v4+: sentence_transformers.activation_fn; before:
    sbert_ce_default_activation_function), a torch class path, or None."""
    st = data.get("sentence_transformers")
    path = st.get("activation_fn") if isinstance(st, dict) else data.get("sbert_ce_default_activation_function")
    if path is not None and not isinstance(path, str):
        raise ModelLoadError(f"{source}: sentence_transformers.activation_fn must be a class path such as "
                             f"'torch.nn.modules.activation.Sigmoid', got {path!r}")
    return path


def _why_not(model_type: str) -> str:
    reasons = {
        "albert": "ALBERT factorises the embedding and shares weights across layers.",
        "deberta": "DeBERTa uses disentangled relative attention.",
        "deberta-v2": "DeBERTa uses disentangled relative attention.",
    }
    return reasons.get(model_type, "Its layers differ from BERT's, so BERT kernels would compute wrong outputs.")


def _parse_kind(architectures: Any, family: Family, source: str) -> tuple[str, str]:
    """(class name, head) of config.json "architectures": the first class of the family that the engine runs."""
    if architectures is None:
        return family.class_prefixes[0] + "Model", "encoder"
    if isinstance(architectures, str):
        architectures = [architectures]
    if not isinstance(architectures, list) or not architectures:
        raise ModelLoadError(f"{source}: architectures must be a non-empty list of class names, got {architectures!r}")
    for name in architectures:
        head = family.supports(name) if isinstance(name, str) else None
        if head is not None:
            return name, head
    bare = family.class_prefixes[0] + "Model"
    runs = [family.class_prefixes[0] + suffix for suffix in HEADS]
    raise UnsupportedModelError(
        f"{source}: architectures {architectures} are not supported; for this {family.name} model bortengine runs "
        f"{runs}. If the checkpoint holds the encoder under another head, set \"architectures\": [\"{bare}\"] to "
        f"run the encoder alone")


class NumberedLabels(Mapping[int, str]):
    """transformers' default names LABEL_0 .. LABEL_{n-1}, made when asked: a config's num_labels is checked
    against the classifier's weights only after parsing, so a hostile num_labels of 10^12 must cost nothing."""

    def __init__(self, count: int):
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> str:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self._count:
            raise KeyError(index)
        return f"LABEL_{index}"

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._count))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and len(other) == self._count and all(
            other.get(i) == f"LABEL_{i}" for i in range(self._count))

    def __repr__(self) -> str:
        return f"NumberedLabels({self._count})"


def _parse_id2label(data: dict, source: str) -> Mapping[int, str]:
    raw = data.get("id2label")
    if raw is None:
        n = data.get("num_labels", 2)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ModelLoadError(f"{source}: num_labels must be an integer >= 1, got {n!r}")
        return NumberedLabels(n)
    if not isinstance(raw, dict) or not raw:
        raise ModelLoadError(f"{source}: id2label must be a non-empty object {{\"0\": \"label\", ...}}, got {raw!r}")
    try:
        id2label = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{source}: id2label keys must be integers 0..num_labels-1, got {list(raw)}") from e
    if sorted(id2label) != list(range(len(id2label))):
        raise ModelLoadError(
            f"{source}: id2label keys must be exactly 0..{len(id2label) - 1}, got {sorted(id2label)}")
    n = data.get("num_labels")
    if n is not None and n != len(id2label):
        raise ModelLoadError(f"{source}: num_labels={n} disagrees with id2label, which has {len(id2label)} entries")
    return id2label
