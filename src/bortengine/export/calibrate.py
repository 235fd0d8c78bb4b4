"""int8 calibration: which encoder layers an int8 engine takes out of int8 (into bf16, or float32) so that every
token of the user's texts stays within a cosine target of the float32 engine (issue 18: >= 0.98).

Why per layer. The int8 engine rounds each token's activations to 256 levels of that token's range. In fine-tuned
classifiers a few channels grow outliers (largest on [CLS]), and the tokens that carry them lose up to 0.1 of their
cosine to float32 through the first layers, while the rest keep > 0.999 (bench/int8_simulate.py: on a teacher
fine-tuned on 500 reviews, 53 tokens under 0.98 with every layer in int8, none with layers 0-2 in float32 or in
bf16, while no choice of single GEMMs in those layers passes; the stock all-MiniLM-L6-v2 needs none). Which layers,
and how many, depends on the model, its fine-tuning and the CPU's int8 path (FFN out runs bf16 on AMX tiles), so it
is measured, not assumed: on the user's texts, on this CPU.

Into what. bf16 keeps 8 significant bits per value whatever a row's range, which is what the outliers take from
int8, and where the CPU's bf16 GEMMs outrun float32's (AMX tiles; vdpbf16ps on AMD Zen 4: 1.9x float32 at batch 1)
a bf16 layer costs about half a float32 one; elsewhere (Intel without tiles, AVX2) float32 is the faster.
fallback="auto" takes bf16 there and float32 elsewhere, and float32 when even every layer in bf16 misses.

How. The float32 engine's last hidden states of the calibration texts are the reference; a candidate set of layers
is measured by loading the int8 engine with them (load(bf16_layers=...) or load(float32_layers=...)) and taking
the smallest cosine over every real token. Greedy forward selection: each step takes out of int8 the layer that,
added to those taken, lifts that minimum most, until it reaches the target; then backward elimination gives back
to int8 each layer the target no longer needs: D + (D - 1) + ... + k measurements for k layers taken, rather than
the 2^D subsets. Ranking layers once by what each alone lifts the minimum to does not
work: an early layer's error reaches every later one, so on the teacher above layer 1 alone in float32 lifts
nothing (0.932 -> 0.930, ranked last) while layers 0-2 together pass (0.992 on the test split) and 0 and 2 without
1 do not (0.969). All D layers in float32 are exactly the float32 engine (cosine 1), so a target can always be met,
at float32's speed at worst.

The result goes into config.json under "bortengine_int8" (float32_layers, bf16_layers, the target and what was
measured), which bortengine.load(dtype="int8") applies by default and bortengine export --dtype int8 honours (those
layers stay float in the pre-quantized checkpoint). Torch-free: the engine and numpy.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bortengine.engine import (INT8_RECORD, BertWeights, Checkpoint, ModelConfig, bf16_runs_fast, load,
                               transformer_directory)
from bortengine.errors import InvalidInputError, ModelLoadError
from bortengine.files import atomic_write_json, read_json
from bortengine.progress import Progress

__all__ = ["Int8Calibration", "calibrate_int8", "is_prequantized", "DEFAULT_MIN_COSINE"]

DEFAULT_MIN_COSINE = 0.98   # issue 18: every real token's cosine to float32
DEFAULT_MAX_TOKENS = 32768  # real tokens kept as the reference: 100 MB of hidden states at H = 768
_BATCH = 64                 # texts per forward


FALLBACKS = ("auto", "bf16", "float32")


@dataclass
class Int8Calibration:
    """What calibrate_int8 measured. layers: the layers taken out of int8 (ascending), run in `fallback` (bf16 or
    float32); min_cosine: the smallest token cosine to float32 with them; all_int8_min_cosine: with every layer in
    int8; steps: each step of the search (the layers taken out, the minimum, and what every layer tried in that
    step gave); tokens / texts: what was measured; kernel: the int8 engine's GEMM kernel (the result holds for that
    CPU path)."""
    layers: list[int]
    fallback: str
    min_cosine: float
    all_int8_min_cosine: float
    target: float
    texts: int
    tokens: int
    kernel: str
    steps: list[dict] = field(default_factory=list)
    tokens_under_all_int8: int = 0
    seconds: float = 0.0

    @property
    def float32_layers(self) -> list[int]:
        return list(self.layers) if self.fallback == "float32" else []

    @property
    def bf16_layers(self) -> list[int]:
        return list(self.layers) if self.fallback == "bf16" else []

    def record(self) -> dict:
        """The config.json entry (bortengine_int8): float32_layers and bf16_layers, which load reads, and what was
        measured."""
        out = asdict(self)
        out.pop("layers")
        return {"float32_layers": self.float32_layers, "bf16_layers": self.bf16_layers, **out}

    def summary(self) -> dict:
        """The record without the search's steps: what a report shows."""
        return {k: v for k, v in self.record().items() if k != "steps"}


def calibrate_int8(model_dir: str | os.PathLike, texts: Sequence[str], text_pairs: Optional[Sequence[str]] = None,
                   *, min_cosine: float = DEFAULT_MIN_COSINE, fallback: str = "auto",
                   max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0, num_threads: Optional[int] = None,
                   write: bool = True, progress: bool = True) -> Int8Calibration:
    """The fewest encoder layers (greedy, above) to take out of int8 so that every real token of `texts` keeps a
    cosine >= min_cosine between the int8 and the float32 engine's last hidden states. fallback: what those layers
    run in: "bf16" (8 significant bits whatever a row's range; on CPUs whose bf16 GEMMs outrun float32's: AMX tiles,
    AMD's vdpbf16ps), "float32", or "auto": bf16 where it is the faster, else float32 (and float32 if bf16 layers
    cannot meet the target even all of them). texts: the user's own (e.g. the training texts), tokenized as the
    engine does (cut at the model's max_length), with text_pairs the second text of each (pair tasks,
    cross-encoders); a seeded sample of at most max_tokens real tokens is measured. write: record the result in
    model_dir's config.json (what bortengine.load(dtype="int8") then applies). The model must be a float
    checkpoint (calibrate before bortengine export --dtype int8)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError("texts must be a list of strings (the calibration texts)")
    if not any(t.strip() for t in texts):
        raise InvalidInputError("calibrate_int8 needs at least one non-empty text")
    if text_pairs is not None and (isinstance(text_pairs, str) or len(text_pairs) != len(texts)
                                   or not all(isinstance(t, str) for t in text_pairs)):
        raise InvalidInputError("text_pairs must be a list of strings, one second text per text")
    if isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float)) or not 0 < min_cosine < 1:
        raise InvalidInputError(f"min_cosine must be a number in (0, 1), got {min_cosine!r}")
    if fallback not in FALLBACKS:
        raise InvalidInputError(f"fallback must be one of {list(FALLBACKS)}, got {fallback!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidInputError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if is_prequantized(model_dir):
        raise ModelLoadError(f"{model_dir} is a pre-quantized int8 checkpoint: calibration compares int8 with the "
                             f"float weights, so calibrate the float model, then export it with --dtype int8")
    started = time.monotonic()

    reference = load(model_dir, num_threads=num_threads, batching=False)
    batches = _sample(reference, list(texts), None if text_pairs is None else list(text_pairs), max_tokens, seed)
    inputs = [reference.tokenize(*b) for b in batches]   # tokenized once: every measurement runs the same tokens
    wanted = [_real_rows(reference, x) for x in inputs]
    layers = reference.config.num_hidden_layers
    bar = Progress([1.0] * (1 + layers), "int8 calibration", enabled=progress)

    def int8_engine(kept: Sequence[int], dtype: str):
        return load(model_dir, num_threads=num_threads, dtype="int8", batching=False,
                    float32_layers=list(kept) if dtype == "float32" else [],
                    bf16_layers=list(kept) if dtype == "bf16" else [])

    def cosines(engine) -> np.ndarray:
        return np.concatenate([_cosines(ref, _real_rows(engine, x)) for ref, x in zip(wanted, inputs)])

    def measure(kept: Sequence[int], dtype: str) -> np.ndarray:
        return cosines(int8_engine(kept, dtype))

    bar.step("all layers in int8")
    all_int8 = int8_engine([], "float32")
    base, kernel = cosines(all_int8), all_int8.kernel
    order = [fallback] if fallback != "auto" else ["bf16", "float32"] if bf16_runs_fast() else ["float32"]
    result = Int8Calibration(layers=[], fallback=order[0], min_cosine=float(base.min()),
                             all_int8_min_cosine=float(base.min()), target=float(min_cosine),
                             texts=sum(len(b[0]) for b in batches), tokens=sum(len(w) for w in wanted),
                             kernel=kernel, tokens_under_all_int8=int((base < min_cosine).sum()))
    for dtype in order:
        result.fallback, result.layers, result.min_cosine = dtype, [], float(base.min())
        # every layer in float32 is the float32 engine itself (cosine 1): no need to measure that last step
        last = layers - 1 if dtype == "float32" else layers
        while result.min_cosine < min_cosine and len(result.layers) < last:
            tried = {}
            for layer in (l for l in range(layers) if l not in result.layers):
                tried[layer] = float(measure(result.layers + [layer], dtype).min())
                bar.step(f"{dtype} {sorted(result.layers + [layer])}: {tried[layer]:.4f}")
            best = max(tried, key=lambda l: (tried[l], -l))
            result.layers = sorted(result.layers + [best])
            result.min_cosine = tried[best]
            result.steps.append({"fallback": dtype, "layers": result.layers, "min_cosine": tried[best],
                                 "tried": {str(l): v for l, v in tried.items()}})
            bar.extend(layers - len(result.layers) - 1)
        if result.min_cosine >= min_cosine:
            _prune(result, lambda kept: float(measure(kept, dtype).min()), min_cosine, bar)
            break
    if result.min_cosine < min_cosine:  # only every layer in float32 meets it: the float32 engine, exactly
        result.fallback, result.layers, result.min_cosine = "float32", list(range(layers)), 1.0
    result.seconds = round(time.monotonic() - started, 1)
    bar.finish(f"{result.fallback} layers {result.layers}: min cosine {result.min_cosine:.4f}")
    if write:
        _write_record(transformer_directory(Path(model_dir)) / "config.json", result)
    return result


def _prune(result: Int8Calibration, measure, min_cosine: float, bar: Progress) -> None:
    """Backward elimination after the greedy steps: a layer taken early can become unneeded once later ones are
    taken (on the teacher above, bf16: 0, then 5, 2 and 1 -> 0.993, where 0-2 alone pass), so each layer whose
    removal keeps the target is given back to int8, the one that keeps the highest minimum first, while any does."""
    while len(result.layers) > 1:
        bar.extend(len(result.layers))
        tried = {}
        for layer in result.layers:
            tried[layer] = measure([l for l in result.layers if l != layer])
            bar.step(f"without {layer}: {tried[layer]:.4f}")
        best = max(tried, key=lambda l: (tried[l], l))
        if tried[best] < min_cosine:
            return
        result.layers = [l for l in result.layers if l != best]
        result.min_cosine = tried[best]
        result.steps.append({"fallback": result.fallback, "layers": result.layers, "min_cosine": tried[best],
                             "removed": best, "tried": {str(l): v for l, v in tried.items()}})


def is_prequantized(model_dir: str | os.PathLike) -> bool:
    """Whether model_dir holds a pre-quantized int8 checkpoint (bortengine export --dtype int8): its float weights
    are gone, so there is nothing to calibrate against."""
    directory = transformer_directory(Path(model_dir))
    return BertWeights(Checkpoint.open(directory), ModelConfig.from_file(directory)).quantized


def _sample(engine, texts: list[str], pairs: Optional[list[str]], max_tokens: int, seed: int
            ) -> list[tuple[list[str], Optional[list[str]]]]:
    """Batches (texts, pairs or None) of a seeded shuffle of the non-empty texts, taken while their real tokens (as
    the engine cuts them) fit max_tokens (at least one text)."""
    def batches(rows: list[int]) -> list[tuple[list[str], Optional[list[str]]]]:
        return [([texts[i] for i in part], None if pairs is None else [pairs[i] for i in part])
                for part in (rows[j:j + _BATCH] for j in range(0, len(rows), _BATCH))]

    order = [i for i in range(len(texts)) if texts[i].strip()]
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    tokens = 0
    for start in range(0, len(order), 256):
        chunk = order[start:start + 256]
        inputs = engine.tokenize([texts[i] for i in chunk], None if pairs is None else [pairs[i] for i in chunk])
        for i, n in zip(chunk, np.asarray(inputs["attention_mask"]).sum(axis=1)):
            if chosen and tokens + n > max_tokens:
                return batches(chosen)
            chosen.append(i)
            tokens += int(n)
    return batches(chosen)


def _real_rows(engine, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The last hidden state of every real token (mask 1) of tokenized texts, [tokens, H]."""
    return engine(inputs).last_hidden_state[np.asarray(inputs["attention_mask"]).astype(bool)]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-30)


def _write_record(config_path: Path, result: Int8Calibration) -> None:
    data = read_json(config_path, ModelLoadError)
    data[INT8_RECORD] = result.record()
    atomic_write_json(config_path, data, indent=2)
