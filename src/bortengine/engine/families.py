"""Model families: how each Hugging Face encoder family maps onto the engine's one encoder.

BERT, RoBERTa (and XLM-RoBERTa and CamemBERT, RoBERTa with other vocabularies), DistilBERT, ELECTRA and MPNet
compute the same layers: learned absolute positions, post-LayerNorm blocks, exact erf GELU. They differ in what is
around them (and ELECTRA and MPNet in one place each, which the native encoder offers as an option), and each
Family says those differences as data, read by config.py (config.json keys and their defaults) and weights.py
(tensor names), so the rest of the engine sees one encoder under BERT's tensor names:

- RoBERTa numbers positions from padding_idx + 1 (fairseq's make_positions): a real token at column t of a
  right-padded row has position padding_idx + 1 + t. The engine gives column t position row t, so the position
  table is loaded from row padding_idx + 1 on (engine/positions.py lays out batches where the two differ). Its
  tokenizer gives no token types (the <s> A </s></s> B </s> pair template is all type 0); its classification head
  is dense + tanh on the first token, then out_proj: BERT's pooler + classifier under other names.
- DistilBERT has its own config keys (dim, n_layers, ...) and tensor names (q_lin, sa_layer_norm, ffn.lin1, ...),
  no token type embeddings (a zero row stands in) and no pooler; its classification head is pre_classifier + ReLU
  on the first token, then classifier, computed in NumPy (engine/heads.py).
- ELECTRA is BERT with embeddings of their own width (embedding_size, E): when E differs from the hidden size,
  embeddings_project (E -> H) follows the embeddings' LayerNorm, a step of the native forward. No pooler; its
  classification head is classifier.dense + GELU on the first token, then out_proj, computed in NumPy.
- MPNet numbers positions as RoBERTa does (from a padding index fixed at 1, whatever pad_token_id says), has no
  token types, names its attention linears attn.q/k/v/o, and adds a relative position bias to the attention
  scores of every layer: encoder.relative_attention_bias [buckets, heads] looked up by the bucket of each
  query-key distance (engine/positions.py), which the native attention kernels add. Its classification head is
  RoBERTa's.

Heads, by the class name in config.json "architectures": <Family>Model (the encoder), <Family>ForSequenceClassification
and <Family>ForTokenClassification. A pre-training checkpoint (<Family>ForMaskedLM, <Family>ForPreTraining: how the
Hub's bert-base-uncased, roberta-base, xlm-roberta-base, distilbert-base-uncased, the ELECTRA discriminators and
mpnet-base come) runs as its encoder, its pre-training head's tensors left unread, as transformers' AutoModel loads
it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["Family", "FAMILIES", "HEADS", "family_of", "supported_classes"]

# Class-name suffix -> head. "encoder": hidden states (+ the pooler a checkpoint has); "sequence": one label per
# text from its first token; "token": one label per token.
HEADS = {"Model": "encoder", "ForSequenceClassification": "sequence", "ForTokenClassification": "token",
         "ForMaskedLM": "encoder", "ForPreTraining": "encoder"}

# ModelConfig field -> its config.json key, for the families that spell them as BERT does.
_BERT_KEYS = {k: k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                             "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                             "hidden_act")}


@dataclass(frozen=True)
class Family:
    """What one encoder family changes around the shared encoder."""

    name: str
    model_types: tuple[str, ...]            # config.json model_type values
    class_prefixes: tuple[str, ...]         # "Roberta" of RobertaModel, RobertaForSequenceClassification, ...
    encoder_prefix: str                     # the encoder's attribute in a head model: "roberta." of roberta.encoder...
    keys: Mapping[str, str]                 # ModelConfig field -> config.json key (DistilBERT: hidden_size -> dim)
    defaults: Mapping[str, Any]             # transformers' value of each key missing from config.json
    fixed: Mapping[str, Any] = field(default_factory=dict)   # fields the family does not configure (DistilBERT eps)
    positions_after_padding: bool = False   # position ids start at pad_token_id + 1 (RoBERTa)
    token_type_table: bool = True           # the checkpoint has embeddings.token_type_embeddings
    token_types: bool = True                # its tokenizer gives pairs token type 1 and the model reads them
    # sequence head: pre_classifier + this activation on the first token, in NumPy ("relu": DistilBERT, "gelu":
    # ELECTRA's classifier.dense); None: the pooler (dense + tanh, natively)
    pre_classifier: Optional[str] = None
    positions_padding_idx: Optional[int] = None  # the padding index positions count from, if not pad_token_id
    layer_prefix: str = "encoder.layer."    # where layer i's tensors are, before renaming
    layer_names: tuple[tuple[str, str], ...] = ()    # (checkpoint, canonical) name prefixes inside a layer
    head_names: tuple[tuple[str, str], ...] = ()     # (checkpoint, canonical) names of the sequence head
    ignored_prefixes: tuple[str, ...] = ()  # pre-training heads the engine never runs

    def supports(self, class_name: str) -> Optional[str]:
        """The head of a class name of this family (RobertaForTokenClassification -> "token"), or None."""
        for prefix in self.class_prefixes:
            suffix = class_name[len(prefix):] if class_name.startswith(prefix) else None
            if suffix in HEADS:
                return HEADS[suffix]
        return None

    def canonical_name(self, name: str, head: str) -> Optional[str]:
        """The engine's (BERT's) name of a checkpoint tensor, or None if the engine does not use it."""
        if head == "sequence":
            for theirs, ours in self.head_names:
                if name.startswith(theirs):
                    return ours + name[len(theirs):]
        if name.startswith(self.encoder_prefix):
            name = name[len(self.encoder_prefix):]
        if name.startswith(self.ignored_prefixes) or name in ("embeddings.position_ids", "embeddings.token_type_ids"):
            return None
        if name.startswith("pooler.") and (head == "token" or (head == "sequence" and self.head_names)):
            return None  # transformers builds these heads without the encoder's pooler and drops its weights
        if name.startswith(self.layer_prefix):
            index, _, rest = name[len(self.layer_prefix):].partition(".")
            for theirs, ours in self.layer_names:
                if rest.startswith(theirs):
                    rest = ours + rest[len(theirs):]
                    break
            name = f"encoder.layer.{index}.{rest}"
        if name.endswith(".gamma") and "LayerNorm" in name:  # TF-era BERT checkpoints
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta") and "LayerNorm" in name:
            name = name[: -len("beta")] + "bias"
        return name

    def checkpoint_name(self, canonical: str, head: str) -> str:
        """The name this family gives a canonical tensor (inverse of canonical_name without the encoder prefix),
        for error messages: a DistilBERT user looks for q_lin, not attention.self.query."""
        for theirs, ours in self.head_names if head == "sequence" else ():
            if canonical.startswith(ours):
                return theirs + canonical[len(ours):]
        if canonical.startswith("encoder.layer."):
            index, _, rest = canonical[len("encoder.layer."):].partition(".")
            for theirs, ours in self.layer_names:
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours):]
                    break
            return f"{self.layer_prefix}{index}.{rest}"
        return canonical


_ROBERTA_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
                     "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 1}

FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert", model_types=("bert",), class_prefixes=("Bert",), encoder_prefix="bert.", keys=_BERT_KEYS,
        defaults={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                  "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                  "hidden_act": "gelu", "pad_token_id": 0},
        ignored_prefixes=("cls.",),
    ),
    Family(
        name="roberta", model_types=("roberta", "xlm-roberta", "camembert"),
        class_prefixes=("Roberta", "XLMRoberta", "Camembert"), encoder_prefix="roberta.", keys=_BERT_KEYS,
        # RobertaConfig's vocabulary is 50265; XLMRobertaConfig and CamembertConfig keep BertConfig's 30522
        defaults=_ROBERTA_DEFAULTS, positions_after_padding=True, token_types=False,
        head_names=(("classifier.dense.", "pooler.dense."), ("classifier.out_proj.", "classifier.")),
        ignored_prefixes=("lm_head.",),
    ),
    Family(
        name="distilbert", model_types=("distilbert",), class_prefixes=("DistilBert",), encoder_prefix="distilbert.",
        keys={"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
              "intermediate_size": "hidden_dim", "vocab_size": "vocab_size",
              "max_position_embeddings": "max_position_embeddings", "hidden_act": "activation"},
        defaults={"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072, "vocab_size": 30522,
                  "max_position_embeddings": 512, "activation": "gelu", "pad_token_id": 0},
        fixed={"layer_norm_eps": 1e-12, "type_vocab_size": 1},   # DistilBERT's LayerNorms are built with eps 1e-12
        token_type_table=False, token_types=False, pre_classifier="relu", layer_prefix="transformer.layer.",
        layer_names=(("attention.q_lin.", "attention.self.query."), ("attention.k_lin.", "attention.self.key."),
                     ("attention.v_lin.", "attention.self.value."), ("attention.out_lin.", "attention.output.dense."),
                     ("sa_layer_norm.", "attention.output.LayerNorm."), ("ffn.lin1.", "intermediate.dense."),
                     ("ffn.lin2.", "output.dense."), ("output_layer_norm.", "output.LayerNorm.")),
        ignored_prefixes=("vocab_transform.", "vocab_layer_norm.", "vocab_projector."),
    ),
    Family(
        name="electra", model_types=("electra",), class_prefixes=("Electra",), encoder_prefix="electra.",
        keys={**_BERT_KEYS, "embedding_size": "embedding_size"},
        defaults={"vocab_size": 30522, "embedding_size": 128, "hidden_size": 256, "num_hidden_layers": 12,
                  "num_attention_heads": 4, "intermediate_size": 1024, "max_position_embeddings": 512,
                  "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0},
        pre_classifier="gelu",   # ElectraClassificationHead: dense, get_activation("gelu"), out_proj
        head_names=(("classifier.dense.", "pre_classifier."), ("classifier.out_proj.", "classifier.")),
        ignored_prefixes=("discriminator_predictions.", "generator_predictions.", "generator_lm_head."),
    ),
    Family(
        name="mpnet", model_types=("mpnet",), class_prefixes=("MPNet",), encoder_prefix="mpnet.",
        keys={**{k: v for k, v in _BERT_KEYS.items() if k != "type_vocab_size"},
              "relative_attention_num_buckets": "relative_attention_num_buckets"},
        defaults={"vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "max_position_embeddings": 512, "layer_norm_eps": 1e-12,
                  "hidden_act": "gelu", "relative_attention_num_buckets": 32, "pad_token_id": 1},
        fixed={"type_vocab_size": 1},   # no token types: a zero row stands in
        positions_after_padding=True, positions_padding_idx=1,   # MPNetEmbeddings.padding_idx = 1
        token_type_table=False, token_types=False,
        layer_names=(("attention.attn.q.", "attention.self.query."), ("attention.attn.k.", "attention.self.key."),
                     ("attention.attn.v.", "attention.self.value."), ("attention.attn.o.", "attention.output.dense."),
                     ("attention.LayerNorm.", "attention.output.LayerNorm.")),
        head_names=(("classifier.dense.", "pooler.dense."), ("classifier.out_proj.", "classifier.")),
        ignored_prefixes=("lm_head.",),
    ),
)

_DEFAULT_VOCAB = {"roberta": 50265, "xlm-roberta": 30522, "camembert": 30522}


def family_of(model_type: str) -> Optional[Family]:
    """The family of a config.json model_type, or None if the engine runs no such family."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def default_value(family: Family, model_type: str, key: str) -> Any:
    """transformers' default for a config.json key of this model_type."""
    if key == "vocab_size" and model_type in _DEFAULT_VOCAB:
        return _DEFAULT_VOCAB[model_type]
    return family.defaults.get(key)


def supported_classes() -> list[str]:
    """Every architectures class name the engine runs, for error messages."""
    return [prefix + suffix for f in FAMILIES for prefix in f.class_prefixes for suffix in HEADS]
