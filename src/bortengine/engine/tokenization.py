"""Text -> token ids for a model directory, with the `tokenizers` library (no transformers, no torch).

tokenizer.json is preferred (it is the exact pipeline the model was saved with), read as transformers reads it: its
BERT and RoBERTa tokenizer classes apply tokenizer_config.json's flags (do_lower_case, strip_accents,
tokenize_chinese_chars; add_prefix_space) over it. Otherwise vocab.txt builds a BERT WordPiece pipeline honouring
those flags. sentence_bert_config.json's do_lower_case adds a Lowercase step, as sentence-transformers does.
Truncation length, first found: sentence_bert_config.json max_seq_length (what sentence-transformers uses),
tokenizer_config.json model_max_length, config.json max_position_embeddings; never more than the last. Truncation
side, as transformers' tokenizer takes it: tokenizer_config.json truncation_side, else tokenizer.json's truncation
direction, else right ("left" keeps the end of a text, for models trained on the ends of long texts).
Padding is done here in NumPy, to the longest sequence of each batch, so the tokenizer itself never pads.
Text pairs ("[CLS] a [SEP] b [SEP]") are encoded by the tokenizer's own pair template and truncated as Hugging Face
does by default ('longest_first': tokens come off the longer text until the pair fits). Their token_type_ids are the
tokenizer's (Encoding.type_ids: 0 on the first text, 1 on the second, as transformers gives them, also to a "[SEP]"
typed inside the first text, which both read as the special token). Pair ids tokenized without them (training keeps
only ids) get types rebuilt from the ids (pair_type_ids: 0 up to and including the first separator, 1 after it),
which differ from the tokenizer's only for a first text holding the separator.
What the engine computes is tokenized and cut by `tokenizers` as encode() does (TextTokenizer.counted /
encode_counted); the texts it cut (their Encodings overflow) are read again whole for their count before the cut,
so texts within max_length, the common case, are tokenized once.

Shapes: B = batch, T = tokens of the longest sequence in the batch.
"""
from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Set as AbstractSet, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from tokenizers import BertWordPieceTokenizer, Encoding, Tokenizer, decoders
from tokenizers.models import Unigram, WordPiece
from tokenizers.normalizers import BertNormalizer, Lowercase, Precompiled, Sequence as NormalizerSequence
from tokenizers.pre_tokenizers import BertPreTokenizer, ByteLevel, Metaspace, Sequence as PreTokenizerSequence
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing

from bortengine.engine.config import MAX_CONFIG_BYTES, ModelConfig
from bortengine.engine.entities import TokenVocabulary
from bortengine.engine.pooling import sentence_transformers_config, transformer_directory
from bortengine.errors import InvalidInputError, ModelLoadError
from bortengine.files import is_regular_file, read_json

__all__ = ["TextTokenizer", "TokenizedTexts", "WHOLE_TEXT", "as_text_list", "characters"]

# The largest tokenizer.json read: an encoder's is at most tens of MB (XLM-R's, 250,002 tokens: 17 MB), and
# `tokenizers` takes ~6 times a file's size to read it.
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
# The largest vocab.txt read (a model without tokenizer.json): multilingual BERT's, 119,547 tokens, is 1 MB, and
# `tokenizers` takes ~60 times a vocab.txt's size to build its WordPiece model from it (a 195 MB one ended the
# process in an allocation failure; a single 300 MB line, in a Rust panic).
MAX_VOCAB_TXT_BYTES = 8 * 1024 * 1024
# Texts per call of `tokenizers` (TextTokenizer.encode): a Ctrl-C is answered between two calls.
ENCODE_PART = 4096
_UNKNOWN = object()


def as_text_list(texts: Any, what: str = "texts", ordered: bool = True) -> tuple[list[str], bool]:
    """(list of texts, True if a single string was given). Rejects anything but str or a sequence of str (a list,
    tuple, NumPy array, pandas Series: an ordered collection with a length). ordered=False (a set of labels, whose
    order means nothing) takes sets too."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, (bytes, bytearray)):
        raise InvalidInputError(f"{what} must be str, got bytes; decode it first (e.g. data.decode('utf-8'))")
    wanted = "a string or a sequence of strings (list, tuple, NumPy array)"
    given = type(texts).__name__
    # Each of these iterates without error and would give results that do not line up with what the caller meant
    if isinstance(texts, Mapping):
        raise InvalidInputError(f"{what} must be {wanted}, got a {given}, whose keys would be read as the texts; "
                                f"pass list(d.values()) for its values, or list(d) for its keys")
    if ordered and isinstance(texts, AbstractSet):
        raise InvalidInputError(f"{what} must be {wanted}, got a {given}, which has no order: the results could not "
                                f"be matched to the texts; pass a list (e.g. sorted(...))")
    if isinstance(texts, Iterator):
        raise InvalidInputError(f"{what} must be {wanted}, got a {given}, which can be read only once and has no "
                                f"length; pass list(...) of it")
    if isinstance(texts, np.ndarray):
        if texts.ndim == 0:     # tolist() would give its one string, read as a sequence of characters
            raise InvalidInputError(f"{what} must be {wanted}, got a 0-d array; pass str(a) or a 1-d array")
        texts = texts.tolist()
    if not isinstance(texts, Iterable) or not isinstance(texts, Sized):
        raise InvalidInputError(f"{what} must be {wanted}, got {given}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidInputError(
                f"{what}[{i}] is {type(t).__name__}, not str; pass a string or a list of strings "
                f"(for token ids call the engine directly: engine(input_ids, attention_mask))")
    return texts, False


def _special_id(tokenizer: Tokenizer, tok_config: dict, key: str, default: Optional[str]) -> Optional[int]:
    """The id of a special token named in tokenizer_config.json (a string or an AddedToken object), or None."""
    token = tok_config.get(key, default)
    if isinstance(token, dict):  # AddedToken serialisation
        token = token.get("content", default)
    return tokenizer.token_to_id(token) if isinstance(token, str) else None


def _check_padding_not_in_template(tokenizer: Tokenizer, config: ModelConfig, model_dir: Path, pad_id: int) -> None:
    """A model that numbers positions after the padding id (RoBERTa) reads that id in a text as padding: when the
    tokenizer puts it around every text (a config.json whose pad_token_id is <s>'s 0, or null read as 0), every call
    would be refused, so the model is, where it loads. pad_id: the tokenizer's own padding token's id."""
    if not config.family.positions_after_padding:
        return
    pad = config.positions_padding_id
    empty = tokenizer.encode("")   # the tokens every text gets: not the padding a tokenizer.json may ask for
    template = [i for i, real in zip(empty.ids, empty.attention_mask) if real]
    if pad in template:
        fix = (f"pad_token_id to {pad_id}, the id of the tokenizer's padding token {tokenizer.id_to_token(pad_id)!r}"
               if pad_id not in template else "pad_token_id to the id of the tokenizer's padding token")
        raise ModelLoadError(
            f"{model_dir / 'config.json'}: pad_token_id is {pad}, the id of {tokenizer.id_to_token(pad)!r}, which the "
            f"tokenizer puts in every text; a {config.model_type} model numbers positions after its padding id, so "
            f"no text could be read. Set {fix}")


def characters(texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> int:
    """Characters to tokenize: what tokenizing costs is in proportion to them."""
    return sum(map(len, texts)) + (sum(map(len, pairs)) if pairs else 0)


# A max_length no text reaches: the texts are read whole (counting tokens before truncation).
WHOLE_TEXT = 1 << 30


@dataclass(frozen=True)
class TokenizedTexts:
    """Texts tokenized once, to be computed by Engine.encode/classify (or their asyncio forms) in their place.

    ids: each text's ids, truncated to max_length; counts: its tokens before truncation (special tokens and the pair
    included); pairs: whether the ids are of text pairs; single: the texts were one string (a result of one row);
    type_ids: each pair's token types as the tokenizer gave them (one per id), or None: 0 for single texts, and for
    pairs rebuilt from the ids (TextTokenizer.pair_type_ids)."""

    ids: list[list[int]]
    counts: list[int]
    max_length: int
    pairs: bool = False
    single: bool = False
    type_ids: Optional[list[list[int]]] = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tokens(self) -> int:
        """Tokens the model reads: after truncation."""
        return sum(map(len, self.ids))

    @property
    def truncated(self) -> list[int]:
        """Indices of the texts cut to max_length."""
        return [i for i, n in enumerate(self.counts) if n > self.max_length]


# The flags transformers' tokenizer classes build their pipeline from (tokenizer_config.json's, else the class's
# default), by the attribute each sets in `tokenizers`: BERT's normaliser (BertTokenizer, also DistilBERT's and
# ELECTRA's, and MPNetTokenizer), RoBERTa's byte-level pre-tokenizer, XLM-R's and CamemBERT's Metaspace.
_NORMALIZER_FLAGS = {"do_lower_case": ("lowercase", True), "strip_accents": ("strip_accents", None),
                     "tokenize_chinese_chars": ("handle_chinese_chars", True)}
_BERT_CLASSES = ("BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer", "MPNetTokenizer")
_BYTE_LEVEL_CLASSES = ("RobertaTokenizer",)
_SENTENCEPIECE_CLASSES = ("XLMRobertaTokenizer", "CamembertTokenizer")
# AutoTokenizer's class for a model type when tokenizer_config.json names none
_CLASS_OF_MODEL_TYPE = {"bert": "BertTokenizer", "distilbert": "BertTokenizer", "electra": "BertTokenizer",
                        "mpnet": "MPNetTokenizer", "roberta": "RobertaTokenizer",
                        "xlm-roberta": "XLMRobertaTokenizer", "camembert": "CamembertTokenizer"}


def _tokenizer_config(model_dir: Path) -> dict:
    """tokenizer_config.json ({} without one), its flags checked: each true, false or null (the class's default)."""
    path = model_dir / "tokenizer_config.json"
    tok_config = read_json(path, ModelLoadError, missing_ok=True, max_bytes=MAX_CONFIG_BYTES)
    if tok_config is None:
        return {}
    if not isinstance(tok_config, dict):
        raise ModelLoadError(f"{path} must be a JSON object")
    for key in (*_NORMALIZER_FLAGS, "add_prefix_space"):
        value = tok_config.get(key)
        if value is not None and not isinstance(value, bool):
            raise ModelLoadError(f"{path}: {key} must be true or false, got {value!r}")
    flags = {*_NORMALIZER_FLAGS, "add_prefix_space"} - {"strip_accents"}   # (strip_accents' default is null)
    return {key: value for key, value in tok_config.items() if value is not None or key not in flags}


def _flags_of_the_config(tokenizer: Tokenizer, tok_config: dict, model_type: str) -> None:
    """tokenizer.json as transformers reads it: its tokenizer classes (tokenizer_config.json's tokenizer_class, else
    the model type's) build the pipeline from their flags (tokenizer_config.json's, else the class's defaults:
    BertTokenizer lower-cases unless do_lower_case is false), so where tokenizer.json disagrees with them (files
    edited apart, a tokenizer.json saved by another tool, another normaliser), the flags decide: the model was
    trained on what transformers gave it. The generic class (TokenizersBackend) takes tokenizer.json as it is."""
    named = tok_config.get("tokenizer_class")
    kind = str(named).removesuffix("Fast") if named else _CLASS_OF_MODEL_TYPE.get(model_type, "")
    pre_tokenizer = tokenizer.pre_tokenizer
    if kind in _BERT_CLASSES:
        # built whole, whatever tokenizer.json holds (transformers 5): a Lowercase step that sentence-transformers
        # 6.3 saved there for Transformer(do_lower_case=True) is dropped, as SentenceTransformer(dir) drops it
        tokenizer.normalizer = BertNormalizer(clean_text=True, **{
            attribute: tok_config.get(key, default) for key, (attribute, default) in _NORMALIZER_FLAGS.items()})
        if isinstance(tokenizer.model, WordPiece):     # (a tokenizer.json saved without its decoder: "cu ##rie")
            tokenizer.pre_tokenizer = BertPreTokenizer()
            tokenizer.decoder = decoders.WordPiece(prefix=tokenizer.model.continuing_subword_prefix)
    if kind in _BYTE_LEVEL_CLASSES and isinstance(pre_tokenizer, ByteLevel):
        pre_tokenizer.add_prefix_space = tok_config.get("add_prefix_space", False)
    if kind in _SENTENCEPIECE_CLASSES and isinstance(tokenizer.model, Unigram):
        _sentencepiece_pipeline(tokenizer, tok_config)


def _sentencepiece_pipeline(tokenizer: Tokenizer, tok_config: dict) -> None:
    """XLMRobertaTokenizer's and CamembertTokenizer's pipeline, as transformers 5 builds it around tokenizer.json's
    vocabulary: of its normaliser only the Precompiled charsmap (xlm-roberta-base's Replace of space runs goes), a
    whitespace split then Metaspace (a "▁" before each word unless add_prefix_space is false), and the classes'
    template "<s> A </s>", "<s> A </s> </s> B </s>". A word's token then starts at the word, not at the space before
    it (classify_tokens' offsets), and tabs and newlines part words as spaces do."""
    normalizer = tokenizer.normalizer
    steps = list(normalizer) if isinstance(normalizer, NormalizerSequence) else [normalizer]
    tokenizer.normalizer = next((step for step in steps if isinstance(step, Precompiled)), None)
    prepend = "always" if tok_config.get("add_prefix_space", True) else "never"
    tokenizer.pre_tokenizer = PreTokenizerSequence([WhitespaceSplit(),
                                                    Metaspace(replacement="▁", prepend_scheme=prepend, split=True)])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend)
    bos, eos = _special_id(tokenizer, tok_config, "bos_token", "<s>"), _special_id(tokenizer, tok_config, "eos_token",
                                                                                     "</s>")
    if bos is not None and eos is not None:
        b, e = tokenizer.id_to_token(bos), tokenizer.id_to_token(eos)
        tokenizer.post_processor = TemplateProcessing(single=f"{b} $A {e}", pair=f"{b} $A {e} {e} $B {e}",
                                                      special_tokens=[(b, bos), (e, eos)])


def _lowercased(tokenizer: Tokenizer) -> None:
    """sentence_bert_config.json's do_lower_case, as sentence-transformers applies it: a Lowercase normalizer before
    the tokenizer's own, unless that has one. It runs after the special tokens are split out ("[SEP]" in a text stays
    the token), and offsets still point into the text as given."""
    normalizer = tokenizer.normalizer
    if normalizer is None:
        tokenizer.normalizer = Lowercase()
        return
    steps = list(normalizer) if isinstance(normalizer, NormalizerSequence) else [normalizer]
    if not any(isinstance(step, Lowercase) for step in steps):
        tokenizer.normalizer = NormalizerSequence([Lowercase(), *steps])


def _mpnet_template(tokenizer: Tokenizer) -> None:
    """MPNetTokenizer's special tokens on a WordPiece vocabulary: "<s> A </s>", and a pair "<s> A </s></s> B </s>" (as
    RoBERTa's), where BertWordPieceTokenizer's template gives BERT's "<s> A </s> B </s>"."""
    bert = json.loads(tokenizer.post_processor.__getstate__())     # {"cls": [token, id], "sep": [token, id]}
    (cls, cls_id), (sep, sep_id) = bert["cls"], bert["sep"]
    tokenizer.post_processor = TemplateProcessing(single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}",
                                                  special_tokens=[(cls, cls_id), (sep, sep_id)])


def _refuse_unencodable(texts: list[str], pairs: Optional[list[str]]) -> None:
    """InvalidInputError naming the first text `tokenizers` cannot take: a str with a lone surrogate (half of a
    UTF-16 pair, e.g. from surrogateescape decoding or a cut JSON \\ud83d) has no UTF-8 form; Rust strings are UTF-8.
    Looked for only after `tokenizers` refused the batch, with a TypeError that names no text."""
    for name, values in (("texts", texts), ("text_pairs", pairs or [])):
        for i, text in enumerate(values):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidInputError(
                    f"{name}[{i}] holds {text[e.start]!r} at character {e.start}, half of a UTF-16 surrogate pair "
                    f"with no UTF-8 form; decode the text with errors='replace' or drop the lone surrogate") from None


class TextTokenizer:
    """A `tokenizers.Tokenizer` set to truncate at max_length and never pad, plus the pad id for batching.

    token_types: the model reads token types (BERT): the second text of a pair gets type 1. RoBERTa's and
    DistilBERT's tokenizers give none (transformers passes no token_type_ids), so their pairs are all type 0.
    truncation_side: "right" cuts a text's end, "left" its beginning (a pair's texts, longest-first, alike)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int, lowercase_input: bool, source: str, *,
                 token_types: bool = True, unk_id: Optional[int] = None, truncation_side: str = "right"):
        self.max_length = max_length
        self.truncation_side = truncation_side
        self.pad_id = pad_id
        # sentence_bert_config.json do_lower_case: the tokenizer lowercases (load() gave it a Lowercase normalizer)
        self.lowercase_input = lowercase_input
        self.source = source
        self.token_types = token_types
        self.unk_id = unk_id
        self._base = tokenizer
        self._by_length: dict[int, Tokenizer] = {}
        # Truncation is tokenizer state; each length gets its own copy, made once, so calls never mutate a
        # tokenizer another thread is using.
        self._lock = threading.Lock()
        self._configured(max_length)
        # read from the pair template on first use (most models never see a pair); None: pairs are all type 0
        self._sep_id: Any = _UNKNOWN if token_types else None

    @classmethod
    def load(cls, model_dir: Path, config: ModelConfig) -> Optional["TextTokenizer"]:
        """The tokenizer of a model directory, or None if it has neither tokenizer.json nor vocab.txt."""
        tok_config = _tokenizer_config(model_dir)
        st_config = sentence_transformers_config(model_dir)
        if is_regular_file(model_dir / "tokenizer.json", ModelLoadError):
            source = str(model_dir / "tokenizer.json")
            size = os.path.getsize(source)
            if size > MAX_TOKENIZER_BYTES:   # `tokenizers` takes ~6 times the file's size to read it
                raise ModelLoadError(f"{source} is {size} bytes, more than the {MAX_TOKENIZER_BYTES} of any encoder's "
                                     f"tokenizer (XLM-R's 250,002 tokens: 17 MB); it is not one")
            try:
                tokenizer = Tokenizer.from_file(source)
            except Exception as e:  # the Rust library raises a bare Exception
                raise ModelLoadError(f"cannot read {source}: {e}; re-save it with tokenizer.save_pretrained") from e
            _flags_of_the_config(tokenizer, tok_config, config.model_type)
        elif is_regular_file(model_dir / "vocab.txt", ModelLoadError):
            source = str(model_dir / "vocab.txt")
            size = os.path.getsize(source)
            if size > MAX_VOCAB_TXT_BYTES:
                raise ModelLoadError(f"{source} is {size} bytes, more than the {MAX_VOCAB_TXT_BYTES} of any encoder's "
                                     f"WordPiece vocabulary (multilingual BERT's 119,547 tokens: 1 MB); it is not one")
            try:
                wordpiece = BertWordPieceTokenizer(
                    source, **{attribute: tok_config.get(key, default)
                               for key, (attribute, default) in _NORMALIZER_FLAGS.items()},
                    unk_token=tok_config.get("unk_token", "[UNK]"), sep_token=tok_config.get("sep_token", "[SEP]"),
                    cls_token=tok_config.get("cls_token", "[CLS]"), pad_token=tok_config.get("pad_token", "[PAD]"),
                    mask_token=tok_config.get("mask_token", "[MASK]"))
            except Exception as e:
                raise ModelLoadError(f"cannot build a WordPiece tokenizer from {source}: {e}") from e
            tokenizer = Tokenizer.from_str(wordpiece.to_str())
            if config.model_type == "mpnet":
                _mpnet_template(tokenizer)
        else:
            return None

        wordpiece = tokenizer.model
        if isinstance(wordpiece, WordPiece) and tokenizer.token_to_id(wordpiece.unk_token) is None:
            # (`tokenizers` raises a bare Exception at the first word it cannot spell, at encode time)
            raise ModelLoadError(f"{source}: its WordPiece vocabulary lacks its unknown token "
                                 f"{wordpiece.unk_token!r}, which every word it cannot spell is read as; add the "
                                 f"token to the vocabulary, or save the tokenizer again")
        limit = config.max_positions
        max_length = st_config.get("max_seq_length") or tok_config.get("model_max_length") or limit
        if (isinstance(max_length, bool) or not isinstance(max_length, (int, float)) or not max_length >= 1
                or not float(max_length).is_integer()):
            raise ModelLoadError(f"{model_dir}: max_seq_length / model_max_length must be a positive integer, "
                                 f"got {max_length!r}")
        # model_max_length is often a huge "no limit" sentinel (an integer, or a float such as 1e30)
        max_length = int(min(max_length, limit))

        pad_id = _special_id(tokenizer, tok_config, "pad_token", "[PAD]")
        if pad_id is None or not 0 <= pad_id < config.vocab_size:
            pad_id = config.pad_token_id if 0 <= config.pad_token_id < config.vocab_size else 0
        _check_padding_not_in_template(tokenizer, config, model_dir, pad_id)
        # a Unigram model (XLM-R's, CamemBERT's) names no unk token of its own: transformers' classes default to <unk>
        unk_id = _special_id(tokenizer, tok_config, "unk_token", getattr(tokenizer.model, "unk_token", None) or "<unk>")
        side = tok_config.get("truncation_side") or (tokenizer.truncation or {}).get("direction") or "right"
        if side not in ("left", "right"):
            raise ModelLoadError(f"{model_dir}: tokenizer_config.json truncation_side must be 'left' or 'right' (the "
                                 f"end a long text loses), got {side!r}")
        lowercase = bool(st_config.get("do_lower_case", False))
        if lowercase:
            _lowercased(tokenizer)
        return cls(tokenizer, max_length, pad_id, lowercase, source,
                   token_types=config.token_types, unk_id=unk_id, truncation_side=side)

    @classmethod
    def from_directory(cls, model_dir: str | os.PathLike, max_length: Optional[int] = None) -> "TextTokenizer":
        """The tokenizer load() builds for model_dir, for code that holds no ModelConfig (training: the ids a model
        is trained on are the ids it is served with). Only config.json's vocab_size, max_position_embeddings and
        pad_token_id are read, so the directory may hold a model the engine does not run (e.g. a masked-LM
        teacher) or no config.json at all (BERT's defaults then). A sentence-transformers directory that keeps its
        transformer in a sub-folder (0_Transformer/) is read there, as load() reads it (transformer_directory).
        max_length replaces the model's truncation length. Raises ModelLoadError when the directory has neither
        tokenizer.json nor vocab.txt."""
        model_dir = transformer_directory(model_dir)
        data = read_json(model_dir / "config.json", ModelLoadError, missing_ok=True) or {}
        limits = {k: data[k] for k in ("vocab_size", "max_position_embeddings", "pad_token_id") if k in data}
        tokenizer = cls.load(model_dir, ModelConfig.from_dict(limits, source=str(model_dir / "config.json")))
        if tokenizer is None:
            raise ModelLoadError(f"{model_dir} has no tokenizer (tokenizer.json or vocab.txt); copy the model's "
                                 f"tokenizer files there (e.g. from the teacher it was cut from)")
        if max_length is not None:
            tokenizer = cls(tokenizer._base, int(max_length), tokenizer.pad_id, tokenizer.lowercase_input,
                            tokenizer.source, token_types=tokenizer.token_types, unk_id=tokenizer.unk_id,
                            truncation_side=tokenizer.truncation_side)
        return tokenizer

    def __getstate__(self) -> dict:
        """Pickled (e.g. sent to a Ray worker with a model) as the base tokenizer and its settings; the copies per
        length, the lock and the pair template's answer are made again where it is unpickled."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_by_length", "_sep_id")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("truncation_side", "right")    # pickled by a version that only cut the end
        self._by_length, self._lock = {}, threading.Lock()
        self._configured(self.max_length)
        self._sep_id = _UNKNOWN if self.token_types else None

    def _configured(self, max_length: int) -> Tokenizer:
        tokenizer = self._by_length.get(max_length)
        if tokenizer is None:
            with self._lock:
                tokenizer = self._by_length.get(max_length)
                if tokenizer is None:
                    tokenizer = Tokenizer.from_str(self._base.to_str())
                    tokenizer.no_padding()
                    tokenizer.enable_truncation(max_length, direction=self.truncation_side)
                    self._by_length[max_length] = tokenizer
        return tokenizer

    def token_ids(self, texts: Sequence[str], max_length: Optional[int] = None,
                  pairs: Optional[Sequence[str]] = None) -> list[list[int]]:
        """Ids of each text with special tokens, truncated to max_length (default self.max_length). pairs: the
        second text of each pair (same length as texts), giving "[CLS] text [SEP] pair [SEP]" ids truncated
        longest-first; pad(ids, pairs=True) then gives their token_type_ids."""
        return [e.ids for e in self.encode(texts, max_length, pairs=pairs, offsets=False)]

    def counted(self, texts: Sequence[str], max_length: Optional[int] = None,
                pairs: Optional[Sequence[str]] = None, single: bool = False) -> "TokenizedTexts":
        """token_ids() together with each text's tokens before truncation (encode_counted), and for pairs of a model
        that reads token types their types: what a caller needs to count, or refuse, what max_length cuts and compute
        the rest."""
        max_length = self.max_length if max_length is None else max_length
        encodings, counts = self.encode_counted(texts, max_length, pairs, offsets=False)
        # sep_id is None where pairs are all type 0 (RoBERTa's template may still number its segments)
        types = [e.type_ids for e in encodings] if pairs is not None and self.sep_id is not None else None
        return TokenizedTexts([e.ids for e in encodings], counts, max_length, pairs is not None, single, types)

    def encode_counted(self, texts: Sequence[str], max_length: Optional[int] = None,
                       pairs: Optional[Sequence[str]] = None, offsets: bool = True
                       ) -> tuple[list[Encoding], list[int]]:
        """(encode()'s Encodings, each text's tokens before truncation: special tokens and its pair included). The
        texts are encoded as encode() does (cut in `tokenizers`, in parallel); only those it cut (their Encoding has
        overflowing parts) are read again whole to be counted: short texts, the common case, cost one pass, where
        reading every text whole and cutting it with post_process in Python took 1.25-1.3x as long (32 texts).
        offsets=False: as encode()'s."""
        encodings = self.encode(texts, max_length, pairs=pairs, offsets=offsets)
        counts = [len(e.ids) for e in encodings]
        cut = [i for i, e in enumerate(encodings) if e.overflowing]
        if cut:
            whole = self.token_ids([texts[i] for i in cut], WHOLE_TEXT,
                                   pairs=None if pairs is None else [pairs[i] for i in cut])
            for i, ids in zip(cut, whole):
                counts[i] = len(ids)
        return encodings, counts

    def encode(self, texts: Sequence[str], max_length: Optional[int] = None,
               add_special_tokens: bool = True, pairs: Optional[Sequence[str]] = None, offsets: bool = True
               ) -> list[Encoding]:
        """The `tokenizers` Encoding of each text (ids, tokens, offsets, word_ids), lower-cased and truncated as
        token_ids() does; add_special_tokens=False leaves out [CLS] and [SEP] (then max_length counts word pieces).
        pairs: the second text of each pair, as in token_ids(). offsets=False: Encodings for callers that read ids only
        (ids, type ids and overflowing parts as with offsets; no offsets, tokens or word ids): `tokenizers` then
        skips tracking them, ~15% of a short text's tokenization (encode_batch_fast)."""
        tokenizer, texts, pairs = self._inputs(texts, max_length, pairs, add_special_tokens)
        encode_batch = tokenizer.encode_batch if offsets else tokenizer.encode_batch_fast
        inputs = texts if pairs is None else list(zip(texts, pairs))
        try:
            # in parts: one call of `tokenizers` runs with no Python between, so Ctrl-C waited for all of it (9 s
            # for 100,000 texts); a part of ENCODE_PART texts takes tens of milliseconds
            return [e for start in range(0, len(inputs), ENCODE_PART)
                    for e in encode_batch(inputs[start:start + ENCODE_PART], add_special_tokens=add_special_tokens)]
        except TypeError:
            _refuse_unencodable(texts, pairs)
            raise


    def _inputs(self, texts: Sequence[str], max_length: Optional[int], pairs: Optional[Sequence[str]],
                add_special_tokens: bool = True) -> tuple[Tokenizer, list[str], Optional[list[str]]]:
        """(the tokenizer cutting at max_length, the texts, their pairs) as they are tokenized: one pair per text,
        and max_length refused when the template's special tokens alone pass it
        (`tokenizers` would then leave the texts uncut, longer than max_length)."""
        max_length = self.max_length if max_length is None else max_length
        tokenizer = self._configured(max_length)
        texts = list(texts)
        if pairs is not None:
            pairs = list(pairs)
            if len(pairs) != len(texts):
                raise InvalidInputError(f"{len(texts)} texts but {len(pairs)} pairs; pass one second text per text")
        special = tokenizer.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
        if max_length < special:
            what = "a text pair" if pairs is not None else "a text"
            raise InvalidInputError(f"max_length={max_length} cannot hold {what}, whose template alone adds "
                                    f"{special} special tokens; use max_length >= {special}")
        return tokenizer, texts, pairs

    def special_tokens(self, pair: bool = False) -> int:
        """The tokens the template adds to a text ([CLS] and [SEP]: 2), or to a text pair (pair=True: 3 for BERT)."""
        return self._base.num_special_tokens_to_add(pair)

    @property
    def sep_id(self) -> Optional[int]:
        """The id that ends the first text of a pair ([SEP] for BERT), read from the tokenizer's pair template;
        None when the template gives both texts token type 0 or the model reads no token types (then pairs have
        token_type_ids 0 throughout)."""
        if self._sep_id is _UNKNOWN:
            template = Tokenizer.from_str(self._base.to_str())  # the pair template alone: no truncation, no padding
            template.no_truncation()
            template.no_padding()
            empty = template.encode("", "")  # e.g. [CLS] [SEP] [SEP], types 0 0 1
            first = [i for i, kind in zip(empty.ids, empty.type_ids) if kind == 0]
            self._sep_id = first[-1] if first and 1 in empty.type_ids else None
        return self._sep_id

    def pair_type_ids(self, input_ids: Any, attention_mask: Any = None) -> np.ndarray:
        """token_type_ids int64 [B,T] of padded pair ids [B,T]: 0 up to and including each row's first sep_id, 1
        after it, 0 where attention_mask (default: all ones) is 0. For pair ids whose tokenizer types are not at
        hand (pad(type_ids=None)). Ids are all a rule can see: a "[SEP]" typed inside a first text, which the
        tokenizer reads as the special token, ends the first segment there (the tokenizer's own types, which
        transformers gives, keep it in segment 0)."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise InvalidInputError(f"pair_type_ids needs padded ids [batch, tokens], got shape {list(ids.shape)}")
        types = np.zeros(ids.shape, dtype=np.int64)
        if self.sep_id is None or ids.size == 0:
            return types
        is_sep = ids == self.sep_id
        after_first = np.cumsum(is_sep, axis=1) - is_sep > 0  # a separator strictly before this position
        types[after_first] = 1
        if attention_mask is not None:
            types[np.asarray(attention_mask) == 0] = 0
        return types

    def vocabulary(self) -> list[str]:
        """The token of each id (index = id; "" for an id the vocabulary skips)."""
        vocab = self._base.get_vocab()
        tokens = [""] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            tokens[i] = token
        return tokens

    @functools.cached_property
    def largest_id(self) -> int:
        """The largest id this tokenizer can give (added tokens included)."""
        return max(self._base.get_vocab(with_added_tokens=True).values(), default=-1)

    def token_vocabulary(self) -> TokenVocabulary:
        """Token strings, the decoder that joins them and whether the model marks word pieces: what token
        classification needs to find words (engine/entities.py)."""
        decoder = self._base.decoder
        word_aware = bool(getattr(self._base.model, "continuing_subword_prefix", None))
        return TokenVocabulary(self._base.id_to_token, decoder.decode if decoder is not None else " ".join,
                               word_aware, self.unk_id)

    def token_id(self, token: str) -> Optional[int]:
        """The id of a token ("[MASK]", "[CLS]", a word piece), None when the vocabulary has none."""
        return self._base.token_to_id(token)

    def token_text(self, token_id: int) -> Optional[str]:
        """The token of an id ("<pad>", "##ing"), None when the vocabulary has none."""
        return self._base.id_to_token(token_id)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (the tokenizer's decoder joins '##' pieces and drops special tokens)."""
        return self._base.decode(list(ids))

    def pad(self, ids: Sequence[Sequence[int]], pairs: bool = False,
            type_ids: Optional[Sequence[Sequence[int]]] = None) -> dict[str, np.ndarray]:
        """input_ids, attention_mask, token_type_ids, each int64 [B,T], padded right to the longest sequence.
        token_type_ids are type_ids (each sequence's, as the tokenizer gave them: TokenizedTexts.type_ids) with 0 on
        the padding; without them 0, or for pairs=True (ids from token_ids(texts, pairs=...)) pair_type_ids()."""
        if len(ids) == 1:     # one text, nothing to pad: a call per text is the common case of a service
            input_ids = np.array(ids, dtype=np.int64).reshape(1, -1)
            attention_mask = np.ones_like(input_ids)
        else:
            lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
            t = int(lengths.max()) if len(ids) else 0
            input_ids = np.full((len(ids), t), self.pad_id, dtype=np.int64)
            for row, seq in enumerate(ids):
                input_ids[row, : len(seq)] = seq
            attention_mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
        if type_ids is not None:
            token_type_ids = np.zeros_like(input_ids)
            for row, types in enumerate(type_ids):
                token_type_ids[row, :len(types)] = types
        elif pairs:
            token_type_ids = self.pair_type_ids(input_ids, attention_mask)
        else:
            token_type_ids = np.zeros_like(input_ids)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
