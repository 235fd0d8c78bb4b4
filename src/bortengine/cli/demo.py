"""`bortengine demo`: the real all-MiniLM-L6-v2 on the engine, in five steps: load it; embed five sentences (their
cosine similarities, one pair checked against sentence-transformers' published figure); load PyTorch +
transformers on the same weights; check last_hidden_state against them; time the engine (float32 and int8) beside
PyTorch eager.

torch and transformers are imported only in steps 3 to 5 (they are the optional `bench` extra); without them the
demo still embeds and times the engine, and says what it skipped.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from bortengine.cli.arguments import positive_int, shape
from bortengine.engine import Engine, available_cpus, load

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
    demo.add_argument("--isa", default=None, help="force a kernel path (see `bortengine info`)")
    demo.add_argument("--model", default=None, help="model directory (default: the installed all-MiniLM-L6-v2)")


def run(args) -> int:
    threads = args.threads or available_cpus()
    if args.model is None:
        from bortengine.training import default_teacher_path

        model = default_teacher_path()  # a ModelLoadError that says how to install it, or pass --model DIR
    else:
        model = args.model
    engine = _load_engine(model, threads, args.isa)
    vectors, pair_ok = _embed(engine)
    reference = _load_reference(model, threads)
    hidden_ok = _check_hidden_states(engine, reference)
    _time_shapes(engine, _load_int8(model, threads, args.isa, vectors, args.repeats), reference, args.batch,
                 args.repeats)
    ok = pair_ok and hidden_ok
    print("demo " + ("passed" if ok else "FAILED: outputs do not match the reference"))
    return 0 if ok else 1


@dataclass
class TorchReference:
    """transformers' BertModel on the same weights, run by PyTorch eager."""

    torch: Any
    model: Any

    def hidden_states(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(**{k: self.torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()

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


def _embed(engine: Engine) -> tuple[np.ndarray, bool]:
    """The sentences' unit embeddings, and whether the first pair's cosine is the published one."""
    _step(2, f"embedding {len(DEMO_SENTENCES)} sentences; cosine similarity matrix:")
    vectors = engine.encode(DEMO_SENTENCES, normalize=True)
    sims = vectors @ vectors.T
    for i, sentence in enumerate(DEMO_SENTENCES):
        print(f"      {' '.join(f'{s:6.3f}' for s in sims[i])}   {sentence}")
    pair = float(sims[0, 1])
    pair_ok = abs(pair - EXPECTED_PAIR) <= PAIR_TOL
    print(f"      '{DEMO_SENTENCES[0]}' vs '{DEMO_SENTENCES[1]}': {pair:.4f} (expected {EXPECTED_PAIR}) "
          f"{'ok' if pair_ok else 'MISMATCH'}")
    return vectors, pair_ok


def _load_reference(model, threads: int) -> Optional[TorchReference]:
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
    hf = BertModel.from_pretrained(str(model)).eval()
    print(f"      transformers BertModel, PyTorch {torch.__version__} eager, "
          f"attention {hf.config._attn_implementation!r}, {torch.get_num_threads()} thread(s)")
    return TorchReference(torch, hf)


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
    positions = engine.config.max_position_embeddings
    for b, t in shapes:
        if t > positions:
            print(f"      {b}x{t}: skipped (longer than max_position_embeddings={positions})")
            continue
        ids = rng.integers(1000, engine.config.vocab_size, size=(b, t), dtype=np.int64)  # ids, mask: [B,T]
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
