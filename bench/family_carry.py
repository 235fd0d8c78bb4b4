"""Carry a trained BERT sequence classifier into the Hugging Face layout of another encoder family, so that the
family's model computes the same function on the same token ids: issue 18's int8 measurement (family_int8.py) then
runs trained weights through each family's own loading path (position numbering, tensor names, embeddings, head).

    carry(bert_dir, out_dir, "roberta")     # or "xlm-roberta", "mpnet", "electra", "distilbert"

Every family here runs BERT's encoder (learned absolute positions, post-LayerNorm blocks, erf GELU, scores scaled by
1/sqrt(head size)); what differs around it is carried exactly:

- RoBERTa, XLM-R: positions numbered from padding_idx + 1, with pad_token_id the WordPiece [PAD] (0), so BERT's
  position table moves down one row (row 0, the padding's, is zeros: no real token reads it); one token type
  (type_vocab_size 1: BERT's type-0 row). RobertaClassificationHead (dense + tanh + out_proj on the first token)
  is BERT's pooler + classifier under other names.
- MPNet: positions from a padding index fixed at 1 (MPNetEmbeddings.padding_idx, whatever pad_token_id says), so
  the table moves down two rows; no token types, so BERT's type-0 row is added into every position row (the sum
  before the embeddings' LayerNorm is the same); the relative position bias is zeroed, so it adds nothing to the
  scores; attention linears become attn.q/k/v/o and their LayerNorm attention.LayerNorm. The head is RoBERTa's.
- ELECTRA: embedding_size = hidden_size (no embeddings_project), BERT's names under electra.
- DistilBERT: no token types (the type-0 row folded into the positions, as MPNet's), positions from 0, its own names
  (q_lin, sa_layer_norm, ffn.lin1, ...), LayerNorm eps fixed at 1e-12 (the BERT classifier's must be that too).

ELECTRA's head is dense + GELU + out_proj and DistilBERT's pre_classifier + ReLU + classifier: no setting of those
computes BERT's dense + tanh, so for them the encoder is carried exactly and the head is not: its dense layer gets
the pooler's weights and its last layer BERT's classifier as a placeholder, which `fit_head` replaces by a logistic
regression on features the carried model computes (family_int8.py does it on Rotten Tomatoes train texts).

The tokenizer is BERT's WordPiece carried as is (tokenizer.json, vocab.txt, special tokens): the ids the weights
were trained on, [CLS] text [SEP] from its own template, [PAD] (0) as padding. tokenizer_config.json gets
model_max_length = the classifier's truncation length (sentence_bert_config.json max_seq_length, if it has one),
so the carried directory cuts texts where the classifier does.

`compare` checks a carry with transformers: the carried model's hidden states against BERT's, and its logits against
BERT's (tanh heads) or against its own head's layers applied to BERT's hidden states (fitted heads).

Shapes: B = texts, T = tokens, H = hidden size, P = BERT's positions, L = labels.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

FAMILIES = ("roberta", "xlm-roberta", "mpnet", "electra", "distilbert")
# family -> (its dense layer on the first token, the activation, its last layer): the heads carried from BERT's
# pooler + classifier exactly (tanh), and those whose last layer is fitted (fit_head)
HEADS = {
    "bert": ("bert.pooler.dense", "tanh", "classifier"),
    "roberta": ("classifier.dense", "tanh", "classifier.out_proj"),
    "xlm-roberta": ("classifier.dense", "tanh", "classifier.out_proj"),
    "mpnet": ("classifier.dense", "tanh", "classifier.out_proj"),
    "electra": ("classifier.dense", "gelu", "classifier.out_proj"),
    "distilbert": ("pre_classifier", "relu", "classifier"),
}
FITTED_HEADS = ("electra", "distilbert")
_CLASSES = {"roberta": "RobertaForSequenceClassification", "xlm-roberta": "XLMRobertaForSequenceClassification",
            "mpnet": "MPNetForSequenceClassification", "electra": "ElectraForSequenceClassification",
            "distilbert": "DistilBertForSequenceClassification", "bert": "BertForSequenceClassification"}
# rows before a real token's first position: RoBERTa's pad_token_id (0 here) + 1, MPNet's fixed padding index 1 + 1
_POSITION_OFFSET = {"roberta": 1, "xlm-roberta": 1, "mpnet": 2, "electra": 0, "distilbert": 0}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "special_tokens_map.json")
_LAYER = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
          "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
_MPNET_LAYER = dict(zip(_LAYER, ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o",
                                 "attention.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")))
_DISTILBERT_LAYER = dict(zip(_LAYER, ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
                                      "sa_layer_norm", "ffn.lin1", "ffn.lin2", "output_layer_norm")))


def _bert_config(src: Path) -> dict:
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("architectures") != [_CLASSES["bert"]]:
        raise ValueError(f"{src}: carry needs a BertForSequenceClassification, got model_type "
                         f"{config.get('model_type')!r}, architectures {config.get('architectures')}")
    if config.get("position_embedding_type", "absolute") != "absolute" or config.get("hidden_act") != "gelu":
        raise ValueError(f"{src}: every family here has absolute positions and erf GELU; this BERT has "
                         f"{config.get('position_embedding_type')!r} positions and {config.get('hidden_act')!r}")
    return config


def family_config(family: str, bert: dict):
    """The family's transformers config holding the BERT classifier's sizes."""
    import transformers

    labels = dict(num_labels=len(bert["id2label"]), id2label={int(k): v for k, v in bert["id2label"].items()},
                  label2id=bert["label2id"], architectures=[_CLASSES[family]])
    positions = bert["max_position_embeddings"] + _POSITION_OFFSET[family]
    if family == "distilbert":
        if bert["layer_norm_eps"] != 1e-12:
            raise ValueError(f"DistilBERT's LayerNorms have eps 1e-12, this BERT's {bert['layer_norm_eps']}: "
                             f"the carry would not be the same function")
        return transformers.DistilBertConfig(
            vocab_size=bert["vocab_size"], dim=bert["hidden_size"], n_layers=bert["num_hidden_layers"],
            n_heads=bert["num_attention_heads"], hidden_dim=bert["intermediate_size"],
            max_position_embeddings=positions, activation="gelu", sinusoidal_pos_embds=False,
            pad_token_id=bert.get("pad_token_id", 0), **labels)
    sizes = dict(vocab_size=bert["vocab_size"], hidden_size=bert["hidden_size"],
                 num_hidden_layers=bert["num_hidden_layers"], num_attention_heads=bert["num_attention_heads"],
                 intermediate_size=bert["intermediate_size"], max_position_embeddings=positions,
                 layer_norm_eps=bert["layer_norm_eps"], hidden_act="gelu", pad_token_id=bert.get("pad_token_id", 0))
    if family == "electra":
        return transformers.ElectraConfig(embedding_size=bert["hidden_size"], type_vocab_size=bert["type_vocab_size"],
                                          **sizes, **labels)
    if family == "mpnet":
        return transformers.MPNetConfig(**sizes, **labels)
    cls = transformers.RobertaConfig if family == "roberta" else transformers.XLMRobertaConfig
    return cls(type_vocab_size=1, **sizes, **labels)


def carried_weights(family: str, bert: dict, w: dict) -> dict:
    """The family's tensors (transformers' names) computing what the BERT classifier's `w` computes.

    Shapes: w holds BERT's tensors, e.g. bert.embeddings.position_embeddings.weight [P,H]."""
    e = "bert.embeddings."
    positions, type0 = w[e + "position_embeddings.weight"], w[e + "token_type_embeddings.weight"][:1]
    offset = _POSITION_OFFSET[family]
    prefix = {"xlm-roberta": "roberta."}.get(family, family + ".")
    out = {prefix + "embeddings.word_embeddings.weight": w[e + "word_embeddings.weight"],
           prefix + "embeddings.LayerNorm.weight": w[e + "LayerNorm.weight"],
           prefix + "embeddings.LayerNorm.bias": w[e + "LayerNorm.bias"]}
    if family in ("mpnet", "distilbert"):   # no token types: the type-0 row joins every position
        positions = positions + type0
    else:
        out[prefix + "embeddings.token_type_embeddings.weight"] = \
            type0 if family != "electra" else w[e + "token_type_embeddings.weight"]
    table = np.zeros((offset + len(positions), positions.shape[1]), dtype=positions.dtype)
    table[offset:] = positions          # the rows before are the padding's, never read by a real token
    out[prefix + "embeddings.position_embeddings.weight"] = table

    layer_names = {"mpnet": _MPNET_LAYER, "distilbert": _DISTILBERT_LAYER}.get(family, {n: n for n in _LAYER})
    layers = "transformer.layer." if family == "distilbert" else "encoder.layer."
    for i in range(bert["num_hidden_layers"]):
        for ours, theirs in layer_names.items():
            for p in ("weight", "bias"):
                out[f"{prefix}{layers}{i}.{theirs}.{p}"] = w[f"bert.encoder.layer.{i}.{ours}.{p}"]
    if family == "mpnet":   # zero bias: the scores are BERT's
        out[prefix + "encoder.relative_attention_bias.weight"] = np.zeros(
            (32, bert["num_attention_heads"]), dtype=positions.dtype)

    dense, _, last = HEADS[family]
    for p in ("weight", "bias"):
        out[f"{dense}.{p}"] = w[f"bert.pooler.dense.{p}"]
        out[f"{last}.{p}"] = w[f"classifier.{p}"]   # exact for tanh heads, a placeholder for the fitted ones
    return out


def carry(src: str | Path, dst: str | Path, family: str) -> Path:
    """Write the BERT sequence classifier in src as a `family` classifier in dst (replaced if it exists); see the
    module's docstring for what is exact. Returns dst."""
    import torch
    import transformers
    from safetensors.numpy import load_file

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    src, dst = Path(src), Path(dst)
    bert = _bert_config(src)
    config = family_config(family, bert)
    weights = carried_weights(family, bert, load_file(str(src / "model.safetensors")))
    model = getattr(transformers, _CLASSES[family])(config).eval()
    # strict: every tensor of the family's model is set, and nothing carried is left over
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}, strict=True)
    if dst.exists():
        shutil.rmtree(dst)
    model.save_pretrained(dst, safe_serialization=True)
    for name in _TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    tok_config = json.loads((src / "tokenizer_config.json").read_text()) \
        if (src / "tokenizer_config.json").exists() else {}
    st_config = src / "sentence_bert_config.json"
    if st_config.exists():   # the classifier's truncation length; the engine reads no such file of a family model
        tok_config["model_max_length"] = json.loads(st_config.read_text())["max_seq_length"]
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return dst


def activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0)
    from scipy.special import erf  # exact (erf) GELU, as ELECTRA's get_activation("gelu")

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def head_features(path: Path, family: str, first: np.ndarray) -> np.ndarray:
    """What the head's last layer reads: activation(dense(first token)). Shapes: first [N,H] -> [N,H]."""
    from safetensors.numpy import load_file

    dense, act, _ = HEADS[family]
    w = load_file(str(path / "model.safetensors"))
    return activation(act, first.astype(np.float64) @ w[dense + ".weight"].T.astype(np.float64) + w[dense + ".bias"])


def fit_head(path: Path, family: str, features: np.ndarray, labels: np.ndarray) -> float:
    """Replace the last layer of path's head by a logistic regression of labels on features (head_features of the
    carried model's float32 hidden states); two labels. Returns the fit set's accuracy. Shapes: features [N,H],
    labels [N]."""
    from safetensors.numpy import load_file, save_file
    from sklearn.linear_model import LogisticRegressionCV

    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    # L2 strength by 5-fold cross-validation: the regularisation a classifier fitted for held-out error has
    reg = LogisticRegressionCV(Cs=10, cv=5, scoring="accuracy", max_iter=5000).fit((features - mean) / std, labels)
    coef = reg.coef_[0] / std            # the standardisation folded into the weights
    bias = reg.intercept_[0] - coef @ mean
    weights = load_file(str(path / "model.safetensors"))
    last = HEADS[family][2]
    # logit(1) - logit(0) = the regression's decision function
    weights[last + ".weight"] = np.stack([-coef / 2, coef / 2]).astype(np.float32)
    weights[last + ".bias"] = np.array([-bias / 2, bias / 2], dtype=np.float32)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return float(reg.score((features - mean) / std, labels))


def compare(bert_dir: Path, carried_dir: Path, family: str, input_ids: np.ndarray, attention_mask: np.ndarray,
            ) -> dict:
    """transformers' carried model against transformers' BERT on the same ids: max |d| of the last hidden states
    at real tokens and of the logits (expected: BERT's for tanh heads; the carried head's own dense, activation and
    last layer applied to BERT's first hidden state for fitted heads), and the carried model's logits.

    Shapes: input_ids, attention_mask [B,T] (right padding with [PAD]); logits [B,L]."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForSequenceClassification

    ids, mask = torch.from_numpy(np.asarray(input_ids, dtype=np.int64)), torch.from_numpy(
        np.asarray(attention_mask, dtype=np.int64))
    outputs = []
    for path in (bert_dir, carried_dir):
        model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        outputs.append((out.hidden_states[-1].numpy(), out.logits.numpy()))
    (h_bert, l_bert), (h_family, l_family) = outputs
    real = mask.numpy().astype(bool)
    if family in FITTED_HEADS:
        dense, act, last = HEADS[family]
        w = load_file(str(carried_dir / "model.safetensors"))
        feats = activation(act, h_bert[:, 0].astype(np.float64) @ w[dense + ".weight"].T + w[dense + ".bias"])
        l_bert = feats @ w[last + ".weight"].T + w[last + ".bias"]
    return {"max_abs_hidden": float(np.abs(h_family[real] - h_bert[real]).max()),
            "max_abs_logits": float(np.abs(l_family - l_bert).max()), "logits": l_family}
