"""`bortengine demo`: the real all-MiniLM-L6-v2 on the engine, in five steps: load it; embed five sentences (their
cosine similarities, one pair checked against sentence-transformers' published figure); load PyTorch +
transformers on the same weights; check last_hidden_state against them; time the engine (float32 and int8) beside
PyTorch eager.

With --model DIR (the user's own model: a fine-tuned classifier, a student, any BERT the engine loads) the
published figure belongs to another model, so the pair's cosine is only shown, and step 4 checks every output the
model has against transformers on the same weights: last_hidden_state, pooler_output, the pooled sentence
embeddings, and a classifier's logits, on the sentences and (if the model has token types) on sentence pairs. The
demo passes or fails on that agreement.

torch and transformers are imported only in steps 3 to 5 (they are the optional `bench` extra); without them the
demo still embeds and times the engine, and says what it skipped.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from bortengine.cli.arguments import kernel_path, positive_int, shape
from bortengine.engine import BertWeights, Checkpoint, Engine, available_cpus, load

__all__ = ["COMMANDS", "add_parsers", "run", "DEMO_SENTENCES", "EXPECTED_PAIR"]

COMMANDS = ("demo",)

DEMO_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A man is playing a guitar.",
    "The cat sits outside.",
]
# cosine similarity of the first two sentences under all-MiniLM-L6-v2 (sentence-transformers' published example)
EXPECTED_PAIR = 0.7553
PAIR_TOL = 1e-3
HIDDEN_TOL = 1e-4
STEPS = 5


def add_parsers(sub) -> None:
    demo = sub.add_parser("demo", help="all-MiniLM-L6-v2: embeddings, check vs transformers, latency vs PyTorch")
    demo.add_argument("--threads", type=positive_int, default=None,
                      help="threads for both engines (default: all CPUs)")
    demo.add_argument("--batch", nargs="+", type=shape, default=[(1, 32), (1, 128), (8, 128)], metavar="BxT",
                      help="batch x tokens shapes to time (default: 1x32 1x128 8x128)")
    demo.add_argument("--repeats", type=positive_int, default=20, help="timed runs per shape (median reported)")
    demo.add_argument("--isa", type=kernel_path, default=None, help="force a kernel path (see `bortengine info`)")
    demo.add_argument("--model", default=None,
                      help="model directory (default: the installed all-MiniLM-L6-v2); your own model's outputs are "
                           "checked against transformers on its weights")


def run(args) -> int:
    threads = args.threads or available_cpus()
    own = args.model is not None  # the user's model: checked against transformers, not against MiniLM's figure
    if own:
        model = args.model
    else:
        from bortengine.training import default_teacher_path

        model = default_teacher_path()  # a ModelLoadError that says how to install it, or pass --model DIR
    engine = _load_engine(model, threads, args.isa)
    vectors, pair_ok = _embed(engine, check_pair=not own)
    reference = _load_reference(model, threads, engine if own else None)
    if own:
        outputs_ok = _check_outputs(engine, reference)
    else:
        outputs_ok = _check_hidden_states(engine, reference)
    _time_shapes(engine, _load_int8(model, threads, args.isa, vectors, args.repeats), reference, args.batch,
                 args.repeats)
    if own and reference is None:
        print("demo done; the model was NOT checked against transformers (see step 3)")
        return 0
    ok = pair_ok and outputs_ok
    print("demo " + ("passed" if ok else "FAILED: outputs do not match the reference"))
    return 0 if ok else 1


@dataclass
class TorchReference:
    """transformers' encoder (BertModel, RobertaModel, ...) on the same weights, run by PyTorch eager; for the user's
    classifier, also the ...ForSequenceClassification / ...ForTokenClassification around it (its logits).
    token_types: the model reads token_type_ids (RoBERTa's and DistilBERT's take none)."""

    torch: Any
    model: Any
    classifier: Any = None
    token_types: bool = True

    def hidden_states(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.outputs(batch)["last_hidden_state"]

    def outputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """last_hidden_state [B,T,H], and pooler_output [B,H] / logits [B,L] when the model has them."""
        inputs = {k: self.torch.from_numpy(v) for k, v in batch.items()
                  if k != "token_type_ids" or self.token_types}
        with self.torch.inference_mode():
            out = self.model(**inputs)
            found = {"last_hidden_state": out.last_hidden_state.numpy()}
            if getattr(out, "pooler_output", None) is not None:  # DistilBERT's output has no such field
                found["pooler_output"] = out.pooler_output.numpy()
            if self.classifier is not None:
                found["logits"] = self.classifier(**inputs).logits.numpy()
        return found

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> Callable[[], None]:
        """One timed call: the forward on these ids and mask."""
        tids, tmask = self.torch.from_numpy(ids), self.torch.from_numpy(mask)

        def call() -> None:
            with self.torch.inference_mode():
                self.model(input_ids=tids, attention_mask=tmask)

        return call


def _step(n: int, text: str) -> None:
    print(f"[{n}/{STEPS}] {text}", flush=True)


def _load_engine(model, threads: int, isa: Optional[str]) -> Engine:
    _step(1, f"loading {model} ({threads} thread(s))")
    start = time.perf_counter()
    engine = load(model, num_threads=threads, isa=isa)
    print(f"      {engine}\n      loaded in {time.perf_counter() - start:.2f} s")
    return engine


def _embed(engine: Engine, check_pair: bool = True) -> tuple[np.ndarray, bool]:
    """The sentences' unit embeddings, and whether the first pair's cosine is the published one (check_pair=False:
    the user's model, whose cosine is shown only)."""
    _step(2, f"embedding {len(DEMO_SENTENCES)} sentences; cosine similarity matrix:")
    vectors = engine.encode(DEMO_SENTENCES, normalize=True)
    sims = vectors @ vectors.T
    for i, sentence in enumerate(DEMO_SENTENCES):
        print(f"      {' '.join(f'{s:6.3f}' for s in sims[i])}   {sentence}")
    pair = float(sims[0, 1])
    if not check_pair:
        print(f"      '{DEMO_SENTENCES[0]}' vs '{DEMO_SENTENCES[1]}': {pair:.4f} (for information; all-MiniLM-L6-v2 "
              f"gives {EXPECTED_PAIR}; this model is checked against transformers in step 4)")
        return vectors, True
    pair_ok = abs(pair - EXPECTED_PAIR) <= PAIR_TOL
    print(f"      '{DEMO_SENTENCES[0]}' vs '{DEMO_SENTENCES[1]}': {pair:.4f} (expected {EXPECTED_PAIR}) "
          f"{'ok' if pair_ok else 'MISMATCH'}")
    return vectors, pair_ok


def _load_reference(model, threads: int, own: Optional[Engine] = None) -> Optional[TorchReference]:
    """transformers on the model's weights; own: the engine of the user's model (then its head is loaded too, in
    float32 as the engine computes, and a directory transformers cannot load is reported, not raised)."""
    _step(3, "loading PyTorch + transformers on the same weights (optional `bench` extra)")
    try:
        import torch
        from transformers import BertModel
    except ImportError as e:
        print(f"      skipped the comparison with PyTorch: {e}. Install with pip install 'bortengine[bench]'")
        return None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    if own is None:
        reference = TorchReference(torch, BertModel.from_pretrained(str(model)).eval())
    else:
        reference = _load_own_reference(model, own, torch)
        if reference is None:
            return None
    print(f"      transformers {type(reference.classifier or reference.model).__name__}, PyTorch "
          f"{torch.__version__} eager, attention {reference.model.config._attn_implementation!r}, "
          f"{torch.get_num_threads()} thread(s)")
    return reference


def _load_own_reference(model, engine: Engine, torch: Any) -> Optional[TorchReference]:
    import inspect

    import transformers

    config = engine.config
    try:
        if BertWeights(Checkpoint.open(model), config).quantized:
            print("      skipped: this is a pre-quantized int8 checkpoint (bortengine export --dtype int8), which "
                  "transformers would read as float weights; run the demo on the float32 model it came from")
            return None
        cls = getattr(transformers, config.kind)  # the class config.json names: BertModel, RobertaFor..., ...
        if config.head != "encoder":
            classifier = cls.from_pretrained(str(model)).float().eval()
            return TorchReference(torch, classifier.base_model, classifier, config.token_types)
        pooler = {"add_pooling_layer": engine.has_pooler} if "add_pooling_layer" in inspect.signature(cls).parameters \
            else {}
        return TorchReference(torch, cls.from_pretrained(str(model), **pooler).float().eval(), None, config.token_types)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... for a directory it cannot read
        print(f"      skipped: transformers cannot load {model}: {' '.join(str(e).split())}")
        return None


def _check_hidden_states(engine: Engine, reference: Optional[TorchReference]) -> bool:
    if reference is None:
        _step(4, "skipped (no transformers)")
        return True
    _step(4, "checking last_hidden_state against transformers (unmasked positions)")
    batch = engine.tokenize(DEMO_SENTENCES)
    ours = engine(**batch).last_hidden_state
    mask = batch["attention_mask"].astype(bool)
    diff = float(np.abs(ours - reference.hidden_states(batch))[mask].max())
    ok = diff <= HIDDEN_TOL
    print(f"      max abs diff {diff:.2e} (tolerance {HIDDEN_TOL:.0e}) {'ok' if ok else 'MISMATCH'}")
    return ok


def _check_outputs(engine: Engine, reference: Optional[TorchReference]) -> bool:
    """The user's model: every output it has, on the sentences and on sentence pairs, against transformers."""
    if reference is None:
        _step(4, "skipped (no reference)")
        return True
    inputs = [(DEMO_SENTENCES, None)]
    # the second sentence of a pair reads the token type 1 embeddings (of the families that have token types)
    if engine.config.type_vocab_size >= 2 or not engine.config.token_types:
        inputs.append((DEMO_SENTENCES[:-1], DEMO_SENTENCES[1:]))
    _step(4, f"checking the model's outputs against transformers on {len(DEMO_SENTENCES)} sentences"
             + (f" and {len(DEMO_SENTENCES) - 1} sentence pairs" if len(inputs) > 1 else "")
             + " (unmasked positions)")
    diffs: dict[str, float] = {}
    for texts, pairs in inputs:
        batch = engine.tokenize(texts, pairs)
        ours, theirs = engine(**batch), reference.outputs(batch)
        mask = batch["attention_mask"].astype(bool)
        found = {"last_hidden_state": np.abs(ours.last_hidden_state - theirs["last_hidden_state"])[mask].max()}
        if ours.pooler_output is not None and "pooler_output" in theirs:
            found["pooler_output"] = np.abs(ours.pooler_output - theirs["pooler_output"]).max()
        # the model's pooling, on the engine's encode() path against transformers' token states
        pooled = engine.pooling(theirs["last_hidden_state"], batch["attention_mask"], normalize=True)
        found["embeddings"] = np.abs(engine.encode(texts, pairs, normalize=True) - pooled).max()
        if ours.logits is not None and "logits" in theirs:  # token classifiers: at unmasked positions
            diff = np.abs(ours.logits - theirs["logits"])
            found["logits"] = (diff[mask] if diff.ndim == 3 else diff).max()
        for name, diff in found.items():
            diffs[name] = max(diffs.get(name, 0.0), float(diff))
    for name, diff in diffs.items():
        print(f"      {name:<18} max abs diff {diff:.2e} (tolerance {HIDDEN_TOL:.0e}) "
              f"{'ok' if diff <= HIDDEN_TOL else 'MISMATCH'}")
    return all(diff <= HIDDEN_TOL for diff in diffs.values())


def _load_int8(model, threads: int, isa: Optional[str], vectors: np.ndarray, repeats: int) -> Engine:
    _step(5, f"median latency over {repeats} runs, {threads} thread(s); int8 = load(dtype='int8')")
    engine8 = load(model, num_threads=threads, isa=isa, dtype="int8")
    cos8 = float(np.min(np.sum(engine8.encode(DEMO_SENTENCES, normalize=True) * vectors, axis=1)))
    print(f"      int8 kernel {engine8.kernel}; embeddings vs float32: min cosine {cos8:.4f}")
    return engine8


def _time_shapes(engine: Engine, engine8: Engine, reference: Optional[TorchReference],
                 shapes: list[tuple[int, int]], repeats: int) -> None:
    """One row per BxT shape: median ms of the engine, its int8 path and PyTorch, and the speed-up over PyTorch."""
    print(f"      {'shape':>8}  {'bortengine':>12}  {'int8':>12}  {'PyTorch':>12}  {'speed-up':>8}")
    rng = np.random.default_rng(0)
    positions, vocab = engine.config.max_positions, engine.config.vocab_size
    for b, t in shapes:
        if t > positions:
            print(f"      {b}x{t}: skipped (longer than the model's {positions} positions)")
            continue
        ids = rng.integers(min(1000, vocab // 2), vocab, size=(b, t), dtype=np.int64)  # ids, mask: [B,T]
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones_like(ids)
        ours_ms = _median_ms(lambda: engine(ids, mask), repeats)
        int8_ms = _median_ms(lambda: engine8(ids, mask), repeats)
        line = f"      {f'{b}x{t}':>8}  {ours_ms:9.2f} ms  {int8_ms:9.2f} ms"
        if reference is not None:
            torch_ms = _median_ms(reference.forward(ids, mask), repeats)
            line += f"  {torch_ms:9.2f} ms  {torch_ms / ours_ms:7.2f}x"
        print(line, flush=True)


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
