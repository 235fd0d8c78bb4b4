"""The inference API: load() a Hugging Face encoder directory (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT,
ELECTRA, MPNet) into an Engine, then call it on ids or texts.

The Engine composes the parts: ModelConfig (config.json), BertWeights (safetensors, read one tensor at a time and
handed straight to the native encoder, so loading never holds the model twice), TextTokenizer, Pooling, the
model's head (engine/heads.py) and, for RoBERTa's and MPNet's positions, PositionLayout (engine/positions.py).
Everything users pass in is validated here, before the native module sees it, and rejected with an
InvalidInputError that says what is wrong and how to fix it. Texts longer than max_length are cut (truncation=True,
the default: counted in Engine.truncated_texts, a TruncationWarning once per Engine) or refused before anything is
computed (truncation=False: TextTooLongError naming the first). This module imports only NumPy, tokenizers and the
native extension: serving a model never needs torch.

Shapes: B = batch, T = tokens per sequence, H = hidden size, L = number of labels, N = number of texts.
"""
from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from bortengine.engine.batching import DEFAULT_MAX_BATCH_TOKENS, ForwardQueue, RowsThen
from bortengine.engine.config import ModelConfig, check_layer_list
from bortengine.engine.entities import check_aggregation, token_entities
from bortengine.engine.heads import ClassifierHead, Linear, relevance_scores
from bortengine.engine.native import available_cpus, core as _core, forward_ops, native_call
from bortengine.engine.outputs import ClassificationResult, EncoderOutput, RankedDocument, TokenEntity, softmax
from bortengine.engine.pooling import Pooling, transformer_directory
from bortengine.engine.positions import PositionLayout, check_contiguous_mask, position_layout
from bortengine.engine.tokenization import WHOLE_TEXT, TextTokenizer, TokenizedTexts, as_text_list, characters
from bortengine.engine.weights import BertWeights, Checkpoint
from bortengine.errors import (BortEngineError, InvalidInputError, ModelLoadError, PerformanceWarning, PromptWarning,
                               TextTooLongError, TruncationWarning, UnknownOptionError)

__all__ = ["load", "Engine", "traced_forwards", "DTYPES"]

DTYPES = ("float32", "int8", "bf16")  # load(dtype=...): the arithmetic of the encoder layers' linear layers

INLINE_CHARS = 4096         # asyncio calls tokenize texts of at most this many characters on the event loop,
INLINE_TEXTS = 64           # and at most this many texts (a text costs the tokenizer ~5 us however short it is);
INLINE_TOKENIZED = 256      # texts tokenized already are padded on the loop up to this many
# A text-taking call that finds the encoder idle this long (no forward running or ended since) first has its weights
# read back into the caches on another core while it tokenizes (warm_caches).
WARM_AFTER_IDLE_S = 0.005
MAX_THREADS = 4096          # num_threads beyond this is a mistake: each thread's workspace is allocated
RERANKED = "documents[{i}] with the query"  # how a pair refused by truncation=False is named

_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


class _Batch(NamedTuple):
    """One forward's inputs: as the encoder runs them (native: ids, mask, types) and what turns its outputs back
    into the caller's (mask: the caller's [B,T], for the heads; layout: RoBERTa positions laid out, or None)."""

    native: tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]
    mask: Optional[np.ndarray]
    layout: Optional[PositionLayout]


def _check_num_threads(num_threads: Any) -> int:
    if (isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1
            or num_threads > MAX_THREADS):
        raise InvalidInputError(f"num_threads must be an integer from 1 to {MAX_THREADS}, or None (all available "
                                f"CPUs), got {num_threads!r}")
    cpus = available_cpus()
    if num_threads > cpus:
        warnings.warn(f"num_threads={num_threads} is more than the {cpus} CPU(s) this process may run on; "
                      f"threads will share cores and every call will be slower. Use num_threads={cpus} or fewer.",
                      RuntimeWarning, stacklevel=3)
    return int(num_threads)


def traced_forwards(encoder: Any, forward: Any, runs: int) -> tuple[dict[str, float], float]:
    """Runs forward() `runs` times with the native encoder's own per-op trace on (Encoder.trace / last_trace):
    the median milliseconds per op kind, in forward order, and the median forward's wall-clock milliseconds."""
    parts: dict[str, list[float]] = {}
    totals = []
    encoder.trace = True
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            forward()
            totals.append(1e3 * (time.perf_counter() - t0))
            for name, seconds in dict(encoder.last_trace).items():
                parts.setdefault(name, []).append(1e3 * float(seconds))
    finally:
        encoder.trace = False
    return {name: float(np.median(v)) for name, v in parts.items()}, float(np.median(totals))


_INT32_MAX = 2**31 - 1   # the native encoder's sizes are C ints

# What the engine calls the options of sentence-transformers' encode / CrossEncoder.rank and transformers' pipelines
# that users reach for, or why it has none: said when one is passed, rather than Python's bare "unexpected keyword".
_FOREIGN_KEYWORDS = {
    "normalize_embeddings": "normalize=True or False; the default, None, follows the model's Normalize module, which "
                            "sentence-transformers applies whatever normalize_embeddings says (so normalize=False "
                            "is not its normalize_embeddings=False)",
    "convert_to_numpy": "the embeddings are a numpy array already",
    "convert_to_tensor": "the embeddings are a numpy array: torch.from_numpy(...) makes a tensor of it",
    "output_value": "each token's vectors are engine(**engine.tokenize(texts)).last_hidden_state",
    "prompt": "put the prompt before each text: encode([prompt + text for text in texts])",
    "prompt_name": "put the prompt before each text: encode([prompt + text for text in texts])",
    "precision": "the arithmetic is chosen at load (bortengine.load(..., dtype='int8')); the embeddings are float32",
    "device": "the engine runs on this CPU (bortengine.load(..., num_threads=N) sets how many cores)",
    "show_progress_bar": "it shows no progress bar",
    "convert_to_list": "the result is a numpy array: .tolist()",
    "top_k": "every label's probability is in the result (ClassificationResult.probabilities)",
    "function_to_apply": "probabilities are the softmax of the logits, or their sigmoid for a multi-label model; the "
                         "logits themselves are ClassificationResult.logits",
    "return_documents": "each RankedDocument has the document's .text",
}


def _explains_unknown_keywords(method: Callable) -> Callable:
    """method, refusing a keyword argument it does not take with an UnknownOptionError (a TypeError) that says what
    the engine calls it (_FOREIGN_KEYWORDS) or which keywords it takes."""
    import inspect

    taken = [n for n, p in inspect.signature(method).parameters.items()
             if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def check(kwargs: dict) -> None:
        for name in kwargs:
            if name not in taken:
                hint = _FOREIGN_KEYWORDS.get(name)
                raise UnknownOptionError(f"Engine.{method.__name__}() takes no keyword argument {name!r}"
                                         + (f": {hint}" if hint else f"; it takes {', '.join(taken)}"))

    if asyncio.iscoroutinefunction(method):
        @functools.wraps(method)
        async def checked_async(self, *args: Any, **kwargs: Any) -> Any:
            check(kwargs)
            return await method(self, *args, **kwargs)
        return checked_async

    @functools.wraps(method)
    def checked(self, *args: Any, **kwargs: Any) -> Any:
        check(kwargs)
        return method(self, *args, **kwargs)
    return checked


def load(path: str | os.PathLike, num_threads: Optional[int] = None, isa: Optional[str] = None,
         dtype: str = "float32", *, batching: bool = True, max_batch_tokens: Optional[int] = None,
         worker_nice: int = 0, float32_layers: Optional[Sequence[int]] = None,
         bf16_layers: Optional[Sequence[int]] = None) -> "Engine":
    """Load a Hugging Face encoder directory (config.json + model.safetensors [+ tokenizer, sentence-transformers
    pooling]) into an Engine: BertModel, RobertaModel, XLMRobertaModel, CamembertModel, DistilBertModel,
    ElectraModel, MPNetModel, each also ...ForSequenceClassification and ...ForTokenClassification.

    num_threads: threads per call; None means every CPU this process may use. isa: kernel path to force (one of
    bortengine.available_isas()); None means the best one (or $BORTENGINE_ISA). dtype: "float32"; "int8" to run
    the four linear layers of every encoder layer on int8 kernels (weights quantized per output channel at load,
    activations per token at run time); or "bf16" to run them on bf16 kernels (weights rounded to bf16 at load, or
    read as they are from a BF16 checkpoint; activations rounded as each GEMM reads them; fp32 accumulation).
    Embeddings, LayerNorm, softmax and the pooler stay float32 (DTYPES; README, "int8" and "bf16").
    float32_layers: int8 and bf16 engines only: encoder layers (indices) to run in float32 instead, linears and
    attention (mixed precision); bf16_layers: int8 engines only: layers whose linears run on the bf16 kernels
    instead. None (both): for int8, the layers the model's int8 calibration chose (config.json "bortengine_int8",
    written by bortengine.export.calibrate_int8 on the user's texts: the fewest layers that keep every token's cosine
    to float32 >= its target), else none; [] runs every layer in dtype.
    batching: combine the forwards of concurrent callers (threads, or tasks awaiting aencode/aclassify/acall) into
    one of at most max_batch_tokens real tokens (default DEFAULT_MAX_BATCH_TOKENS), oldest request first; results
    are those of separate calls, bit for bit, and a lone caller waits for nothing; under load, forwards run side by
    side in lanes of a share of num_threads each (engine/batching.py). False: one request per forward, one at a
    time, in arrival order.
    worker_nice: niceness (0-19, Linux) added to the threads that lead forwards for asyncio callers, so that the
    event loop feeding them keeps its share of the cores under load (`bortengine serve` uses 5).
    """
    return Engine(path, num_threads=num_threads, isa=isa, dtype=dtype, batching=batching,
                  max_batch_tokens=max_batch_tokens, worker_nice=worker_nice, float32_layers=float32_layers,
                  bf16_layers=bf16_layers)


class Engine:
    """A loaded encoder (and its head).

    Thread-safe (tests/test_threads.py, tests/test_batching.py hold it to that): threads and coroutines may call
    one Engine at once. Validation, tokenization and pooling run concurrently; calls that arrive while a forward
    runs share the next, and under load forwards run side by side in lanes, each on a share of num_threads
    (engine/batching.py; the native encoder gives each concurrent forward its own workspace). For throughput from
    many callers on a big machine, load one Engine per worker with num_threads = CPUs / workers.
    """

    def __init__(self, path: str | os.PathLike, num_threads: Optional[int] = None, isa: Optional[str] = None,
                 dtype: str = "float32", *, batching: bool = True, max_batch_tokens: Optional[int] = None,
                 worker_nice: int = 0, float32_layers: Optional[Sequence[int]] = None,
                 bf16_layers: Optional[Sequence[int]] = None):
        core = _core()
        batching = _check_flag(batching, "batching")
        budget = _check_max_batch_tokens(max_batch_tokens)
        if isinstance(worker_nice, bool) or not isinstance(worker_nice, (int, np.integer)) or \
                not 0 <= worker_nice <= 19:
            raise InvalidInputError(f"worker_nice must be an integer from 0 (the callers' priority) to 19, got "
                                    f"{worker_nice!r}")
        if dtype not in DTYPES:
            raise InvalidInputError(f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {dtype!r}")
        if not isinstance(path, (str, os.PathLike)):
            raise ModelLoadError(f"the model directory must be a path (str or pathlib.Path), got {path!r} "
                                 f"({type(path).__name__})")
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"model directory {path} does not exist (bortengine loads local directories; it "
                                 f"does not download from a model hub)")
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; pass the model directory that holds config.json and "
                                 f"model.safetensors")
        threads = available_cpus() if num_threads is None else _check_num_threads(num_threads)
        if isa is None:
            try:
                core.default_isa()  # fails if $BORTENGINE_ISA names a path this CPU cannot run
            except ValueError as e:
                raise InvalidInputError(str(e)) from None
        else:
            available = list(core.available_isas())
            if isa not in available:
                raise InvalidInputError(f"isa {isa!r} cannot run here; this CPU and build offer {available} "
                                        f"(or pass isa=None for the best)")

        self.path = path
        bert_dir = transformer_directory(path)
        self.config = ModelConfig.from_file(bert_dir)
        weights = BertWeights(Checkpoint.open(bert_dir), self.config)  # every name and shape checked, nothing read
        self.pooling = Pooling.load(path)
        self.embedding_dim = self.pooling.width(self.config.hidden_size)   # Dense modules checked to fit
        if self.pooling.default_prompt is not None:
            warnings.warn(PromptWarning(self.pooling.prompt_warning(path)), stacklevel=3)
        self.tokenizer = TextTokenizer.load(bert_dir, self.config)

        c = self.config
        layer_dtypes = _layer_dtypes(float32_layers, bf16_layers, dtype, c)
        sizes = {"hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
                 "intermediate_size": c.intermediate_size, "vocab_size": c.vocab_size,
                 "max_position_embeddings": c.max_positions, "type_vocab_size": c.type_vocab_size}
        past = [f"{k}={v}" for k, v in sizes.items() if v > _INT32_MAX]
        if past:   # (weights as large as the config says: pybind's bare TypeError for the native encoder)
            raise ModelLoadError(f"{path}: {', '.join(past)} is more than the engine's 32-bit sizes go to "
                                 f"({_INT32_MAX}), and more than any encoder has")
        try:
            encoder = core.Encoder(c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
                                   c.vocab_size, c.max_positions, c.type_vocab_size, c.layer_norm_eps,
                                   threads, isa or "", dtype, embedding_size=c.embedding_size)
        except ValueError as e:
            raise BortEngineError(f"the native encoder could not be created for this model: {e}") from e
        calibrated = c.int8_calibrated_kernel
        if dtype == "int8" and float32_layers is None and bf16_layers is None and calibrated and \
                calibrated != encoder.kernel:
            warnings.warn(f"{path}'s int8 calibration (the layers it runs in bf16 or float32) was measured with "
                          f"{calibrated}; this engine runs {encoder.kernel}, whose int8 rounding may differ (FFN out "
                          f"runs bf16 on AMX tiles): the accuracy it measured may not hold here. Calibrate again on "
                          f"this CPU (bortengine.export.calibrate_int8), or pass float32_layers / bf16_layers",
                          RuntimeWarning, stacklevel=_caller_stacklevel())
        slow = _slow_bf16(encoder.kernel, core.cpu_info().get("vendor", "")) if dtype == "bf16" else None
        if slow:
            warnings.warn(f"dtype='bf16' on this CPU: {slow}; load models with dtype='float32' (as fast or faster, and "
                          f"more precise), or dtype='int8' for speed. The encoder bench (python -m pytest "
                          f"bench/test_encoder_latency.py --benchmark-only) compares them on this CPU",
                          PerformanceWarning, stacklevel=_caller_stacklevel())
        # Embeddings are referenced by the encoder, not copied: keep the arrays alive as long as the engine.
        self._embeddings = weights.read_embeddings()
        encoder.set_embeddings(*self._embeddings)
        if c.projects_embeddings:
            encoder.set_embedding_projection(*weights.read_embedding_projection())
        if c.relative_attention_num_buckets:
            encoder.set_position_bias(weights.read_position_bias())
        for i in range(c.num_hidden_layers):
            _set_layer(encoder, weights, i, dtype, layer_dtypes.get(i, dtype))
        if weights.has_pooler:
            encoder.set_pooler(weights.read("pooler.dense.weight"), weights.read("pooler.dense.bias"))
        self._head = _head(weights, encoder.isa)
        # what every classify() reads, read from the config once (a call per text is the common case)
        self._multi_label = c.effective_problem_type == "multi_label_classification"
        # (a bare encoder's num_labels is checked against no weights: its names, unused, are not made)
        self._label_names = c.labels if self._head is not None else []
        self._contiguous_masks = bool(c.relative_attention_num_buckets)
        self._positions_laid_out = bool(c.position_offset)
        # a tokenizer with more ids than the model's vocabulary has its batches checked (its ids may be out of range)
        self._check_tokenizer_ids = self.tokenizer is None or self.tokenizer.largest_id >= c.vocab_size
        self._pooler_output = weights.has_pooler and not weights.head_in_pooler
        if not encoder.ready:
            raise BortEngineError("internal error: the native encoder is not ready after loading every tensor")
        self._encoder = encoder
        # on a single CPU the reads would take the core the call's own work runs on
        self._warms = available_cpus() > 1
        self._batching = batching
        # lanes (forwards side by side under load) with batching only: without it, calls keep to one at a time
        self._queue = ForwardQueue(self._native_forward, budget if batching else 0, threads=threads,
                                   lanes=None if batching else 1, worker_nice=int(worker_nice))
        self._cut_lock = threading.Lock()
        self._truncated_texts = 0
        self._truncation_warned = False

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def num_threads(self) -> int:
        return self._encoder.num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        self._encoder.num_threads = _check_num_threads(value)
        self._queue.set_threads(self._encoder.num_threads)

    @property
    def isa(self) -> str:
        """The kernel path this engine runs (e.g. 'avx512')."""
        return self._encoder.isa

    @property
    def kernel(self) -> str:
        """The GEMM microkernel this engine runs (e.g. 'gemm_f32_avx512_14x32'); an int8 engine's FFN out may run
        another (kernels)."""
        return self._encoder.kernel

    @property
    def kernels(self) -> dict[str, str]:
        """The kernel of each GEMM step of an encoder layer (qkv, attention_out, ffn_in, ffn_out: an int8 engine runs
        ffn_out on the bf16 GEMM where that runs on AMX tiles) and of attention, as the native forward's step table
        says for this engine's path on this CPU (_core.forward_ops): those of the layers that run in the engine's
        dtype (layer_dtypes names the others, which run float32's or bf16's)."""
        native, isa = _core(), self.isa
        names = {"float32": native.kernel_name, "int8": native.int8_kernel_name, "bf16": native.bf16_kernel_name}
        out = {step["name"]: names[step["kernels"][self.dtype]](isa) for step in forward_ops(isa)
               if step["kind"] == "gemm" and step["scope"] == "layer"}
        out["attention"] = self._encoder.attention_kernel
        return out

    @property
    def dtype(self) -> str:
        """'float32', 'int8' or 'bf16': the arithmetic of the encoder layers' linear layers."""
        return self._encoder.dtype

    @property
    def layer_dtypes(self) -> list[str]:
        """Each encoder layer's arithmetic: the engine's dtype, or float32 / bf16 where load's float32_layers /
        bf16_layers (or the model's int8 calibration) put it."""
        return list(self._encoder.layer_dtypes)

    @property
    def float32_layers(self) -> list[int]:
        """The encoder layers an int8 or bf16 engine runs in float32 (load's float32_layers); [] for float32."""
        return [] if self.dtype == "float32" else [i for i, d in enumerate(self.layer_dtypes) if d == "float32"]

    @property
    def bf16_layers(self) -> list[int]:
        """The encoder layers an int8 engine runs on the bf16 kernels (load's bf16_layers); [] for other dtypes."""
        return [] if self.dtype != "int8" else [i for i, d in enumerate(self.layer_dtypes) if d == "bf16"]

    @property
    def has_pooler(self) -> bool:
        return self._encoder.has_pooler

    @property
    def labels(self) -> Optional[list[str]]:
        """Label names of a (sequence or token) classifier, by class index; None for other models."""
        return self.config.labels if self._head is not None else None

    @property
    def max_length(self) -> int:
        """Tokens per text (special tokens and a pair included) that encode()/classify() keep by default: longer
        texts are cut (truncation=True) or refused (truncation=False)."""
        return self.tokenizer.max_length if self.tokenizer else self.config.max_positions

    @property
    def truncated_texts(self) -> int:
        """Texts (and pairs) this engine has cut to max_length since it was loaded: those of calls with
        truncation=True that it tokenized itself (TokenizedTexts were cut by engine.tokenized(), whose .truncated
        lists them)."""
        return self._truncated_texts

    def __reduce_ex__(self, protocol):
        # the packed weights and the threads are this process's: what another process needs is the directory
        raise TypeError(
            f"an Engine cannot be pickled or copied (its packed weights and threads belong to this process): "
            f"send the model's path and load it in each process, e.g. bortengine.load({str(self.path)!r}) in a "
            f"worker pool's initializer")

    def __repr__(self) -> str:
        c = self.config
        return (f"Engine(path='{self.path}', kind={c.kind}, hidden_size={c.hidden_size}, "
                f"layers={c.num_hidden_layers}, heads={c.num_attention_heads}, isa={self.isa!r}, "
                f"kernel={self.kernel!r}, num_threads={self.num_threads}, dtype={self.dtype!r}, "
                f"max_length={self.max_length})")

    # ------------------------------------------------------------------------------------------------- ids in
    def __call__(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> EncoderOutput:
        """Run the encoder on token ids.

        Shapes: input_ids [B,T] integers in [0, vocab_size); attention_mask [B,T] of 0/1 (int or bool) or None
        (all ones); token_type_ids [B,T] in [0, type_vocab_size) or None (zeros). Nested lists are accepted too,
        and so is one mapping with those keys (e.g. engine(engine.tokenize(texts))).
        Returns EncoderOutput: last_hidden_state [B,T,H] (zeros where the mask is 0), pooler_output [B,H] if the
        model has a pooler, logits [B,L] for a sequence classifier, [B,T,L] for a token classifier.
        """
        batch = self._prepared(*self._validate(*_unpacked(input_ids, attention_mask, token_type_ids)))
        return self._output(self._queue.run(*batch.native), batch)

    async def acall(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None, *,
                    deadline: Optional[float] = None) -> EncoderOutput:
        """engine(...) for asyncio: the same result, without blocking the event loop (engine/batching.py). Cancelling
        the awaiting task drops the request if it is still queued; deadline: seconds from now after which a
        request still queued is dropped with DeadlineExceeded."""
        inputs = _unpacked(input_ids, attention_mask, token_type_ids)
        prepared: list[_Batch] = []

        def prepare():
            prepared.append(self._prepared(*self._validate(*inputs)))
            return prepared[0].native

        return await self._queue.arun(prepare, _deadline(deadline), then=lambda forward: self._output(forward,
                                                                                                   prepared[0]))

    def _native_forward(self, ids: np.ndarray, mask: Optional[np.ndarray], types: Optional[np.ndarray],
                        threads: int = 0):
        try:
            with native_call():
                return self._encoder.forward(ids, mask, types, pooler=self._encoder.has_pooler, threads=threads)
        except ValueError as e:  # should not happen after _validate; keep the native message
            raise InvalidInputError(f"the native encoder rejected the input: {e}") from e

    def _prepared(self, ids: np.ndarray, mask: Optional[np.ndarray], types: Optional[np.ndarray]) -> _Batch:
        """Validated inputs as the encoder runs them: for RoBERTa's and MPNet's positions, laid out when the columns
        are not the positions; for MPNet's relative position bias, with no hole in a row's mask
        (engine/positions.py)."""
        if self._contiguous_masks:
            check_contiguous_mask(mask)
        if not self._positions_laid_out:
            return _Batch((ids, mask, types), mask, None)
        native, layout = position_layout(ids, mask, types, self.config.positions_padding_id)
        return _Batch(native, mask, layout)

    def _output(self, forward: tuple[np.ndarray, Optional[np.ndarray]], batch: _Batch) -> EncoderOutput:
        hidden, pooled = forward
        if batch.layout is not None:
            hidden = batch.layout.restore(hidden)
        logits = None if self._head is None else self._head.logits(hidden, pooled, batch.mask)
        return EncoderOutput(hidden, pooled if self._pooler_output else None, logits)

    # ------------------------------------------------------------------------------------------- batching
    @property
    def batching(self) -> bool:
        """Whether concurrent calls share forwards (load(batching=...))."""
        return self._batching

    @property
    def max_batch_tokens(self) -> int:
        """Real tokens a combined forward holds at most (0 without batching: one request per forward)."""
        return self._queue.max_batch_tokens

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a forward now."""
        return self._queue.depth

    def add_batch_listener(self, listener) -> None:
        """Call listener(BatchRecord) after every forward, in the thread that ran it (keep it cheap): sequences,
        real tokens and requests it combined, its seconds, and per request the seconds queued and tokenizing."""
        if not callable(listener):
            raise InvalidInputError(f"a batch listener must be callable, got {type(listener).__name__}")
        self._queue.add_listener(listener)

    def op_times(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None,
                 runs: int = 5) -> dict[str, float]:
        """Where a forward's time goes: median milliseconds per op kind over `runs` forwards of these inputs.

        Keys, in forward order: embeddings, qkv (the fused Q/K/V GEMM), attention (scores, softmax, weighted
        sum), attention_out, layernorm (both per layer), ffn_in (GEMM + GELU), ffn_out, output (scatter to
        [B, T, H] and the pooler), then total (the median forward, wall clock). Each op's time is read by the
        calling thread when the op's last chunk is done, so it includes waiting for the slowest thread. The
        inputs are checked as for a call. Meant for an otherwise idle engine: a concurrent call from another
        thread is traced too and may be the one read.
        """
        if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
            raise InvalidInputError(f"runs must be a positive integer, got {runs!r}")
        ids, mask, types = self._prepared(*self._validate(input_ids, attention_mask, token_type_ids)).native
        enc = self._encoder
        parts, total = traced_forwards(enc, lambda: enc.forward(ids, mask, types, pooler=enc.has_pooler), int(runs))
        return {**parts, "total": total}

    def _validate(self, input_ids: Any, attention_mask: Any, token_type_ids: Any):
        c = self.config
        ids = _as_int_array(input_ids, "input_ids")
        if ids.ndim == 1 and ids.size == 0:
            raise InvalidInputError("input_ids is an empty batch (0 sequences); pass at least one sequence")
        if ids.ndim != 2:
            raise InvalidInputError(
                f"input_ids must be 2-D [batch, tokens], got shape {list(ids.shape)}"
                + ("; for one sequence pass [ids] or ids[None, :]" if ids.ndim == 1 else ""))
        b, t = ids.shape
        if b == 0:
            raise InvalidInputError("input_ids is an empty batch (0 sequences); pass at least one sequence")
        if t == 0:
            raise InvalidInputError("input_ids has 0 tokens per sequence; each sequence needs at least one token")
        if t > c.max_positions:
            raise InvalidInputError(
                f"input_ids has {t} tokens per sequence but the model has positions for {c.max_positions} "
                f"(max_position_embeddings={c.max_position_embeddings}); truncate to {c.max_positions} tokens")
        _check_range(ids, "input_ids", c.vocab_size, "vocab_size",
                     "ids must come from this model's tokenizer (engine.tokenize)")

        mask = None
        if attention_mask is not None:
            mask = _as_int_array(attention_mask, "attention_mask", allow_bool=True)
            _check_shape(mask, "attention_mask", ids.shape)
            bad = (mask != 0) & (mask != 1)
            if bad.any():
                r, col = np.argwhere(bad)[0]
                raise InvalidInputError(
                    f"attention_mask must hold only 0 (padding) and 1 (token), but attention_mask[{r}, {col}] = "
                    f"{mask[r, col]}")
            empty = np.flatnonzero(~mask.any(axis=1))
            if empty.size:
                raise InvalidInputError(
                    f"attention_mask row(s) {_short(empty)} have no token with mask 1; every sequence needs at "
                    f"least one unmasked token (drop empty sequences from the batch)")
            mask = np.ascontiguousarray(mask, dtype=np.int64)

        types = None
        if token_type_ids is not None:
            types = _as_int_array(token_type_ids, "token_type_ids")
            _check_shape(types, "token_type_ids", ids.shape)
            _check_range(types, "token_type_ids", c.type_vocab_size, "type_vocab_size",
                         "single-sentence inputs use 0, the second sentence of a pair 1")
            types = np.ascontiguousarray(types, dtype=np.int64)
        return np.ascontiguousarray(ids, dtype=np.int64), mask, types

    # ------------------------------------------------------------------------------------------------ texts in
    @_explains_unknown_keywords
    def tokenize(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None,
                 max_length: Optional[int] = None, *, truncation: bool = True) -> dict[str, np.ndarray]:
        """Token ids of texts, padded to the longest: {'input_ids', 'attention_mask', 'token_type_ids'} int64 [B,T].
        Texts are truncated to max_length tokens (default: the model's, see Engine.max_length). text_pairs: the
        second text of each pair (a string for a single string), giving "[CLS] text [SEP] pair [SEP]" with
        token_type_ids 1 on the second text, the pair truncated longest-first to max_length, as transformers'
        tokenizer(texts, text_pairs, truncation=True, max_length=max_length) does. truncation=False: a text (pair)
        longer than max_length raises TextTooLongError instead (see encode())."""
        texts, pairs, single = self._text_inputs(texts, text_pairs)
        tokenized = self._tokenized_texts(texts, pairs, max_length, truncation, single)
        return self._text_tokenizer().pad(tokenized.ids, pairs=tokenized.pairs, type_ids=tokenized.type_ids)

    @_explains_unknown_keywords
    def encode(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None,
               batch_size: int = 32, normalize: Optional[bool] = None,
               max_length: Optional[int] = None, *, truncation: bool = True) -> np.ndarray:
        """Sentence embeddings with the model's pooling (sentence-transformers config, else mean).

        text_pairs: embed each (text, pair) as one input, tokenized as tokenize() does. normalize: L2-normalise;
        None follows the model (True if its modules.json has a Normalize module). Texts are sorted by length into
        batches of batch_size so little padding is computed; the output keeps the input order.
        max_length: tokens per text (pair), special tokens included; default Engine.max_length, at most the model's
        positions. truncation=True (the default) cuts longer texts to it (pairs longest-first), counts them
        (Engine.truncated_texts) and says so once per Engine with a TruncationWarning; truncation=False raises
        TextTooLongError (an InvalidInputError) naming the first longer text, its tokens and max_length, before
        anything is computed. Every text-taking method (classify, classify_tokens, rerank, tokenize, the asyncio
        forms) takes truncation the same way. Boolean options (normalize, truncation, lead_when_idle, load's
        batching) take True or False (normalize None too); anything else is refused with an InvalidInputError.
        Shapes: N texts -> [N,E] float32 (E = H x pooling modes); a single string -> [E].
        """
        texts, pairs, single = self._text_inputs(texts, text_pairs)
        normalize = self._encoding(normalize)
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        for rows, batch in self._batches(texts, pairs, batch_size, max_length, truncation, single):
            output = self._forward(batch)
            out[rows] = self.pooling(output.last_hidden_state, batch["attention_mask"], normalize=normalize)
        self._check_finite(out, "embeddings")
        return out[0] if single else out

    @_explains_unknown_keywords
    async def aencode(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None, *,
                      batch_size: int = 32, normalize: Optional[bool] = None, max_length: Optional[int] = None,
                      truncation: bool = True, deadline: Optional[float] = None,
                      lead_when_idle: bool = False) -> np.ndarray:
        """encode() for asyncio: the same embeddings, without blocking the event loop (tokenization and forwards
        run in the engine's threads, combined with other callers' forwards). Cancelling the awaiting task drops
        its queued work; deadline: seconds from now after which a request that no forward has taken yet is
        dropped with DeadlineExceeded (once its first batch is computed, the rest of it is not dropped).
        truncation=False raises TextTooLongError where it awaits, nothing computed.
        lead_when_idle: a short request (at most LOOP_LEAD_TOKENS = 32 tokens) that finds the engine idle (for
        IDLE_LEAD_S = 5 ms or more) runs its forward on the event loop instead, which then waits for it (about a
        millisecond for a short text on a small model): a lone request saves the hand-over to a thread and back,
        ~0.1-0.25 ms (`bortengine serve` asks for it). Under load nothing changes."""
        texts, pairs, single = self._text_inputs(texts, text_pairs)
        normalize = self._encoding(normalize)
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)

        def pooled(batch: dict[str, np.ndarray], output: EncoderOutput) -> np.ndarray:
            return self.pooling(output.last_hidden_state, batch["attention_mask"], normalize=normalize)

        def pooled_rows(hidden: np.ndarray, _: Optional[np.ndarray], mask: np.ndarray) -> np.ndarray:
            return self.pooling(hidden, mask, normalize=normalize)

        async for rows, embeddings in self._aforwards(texts, pairs, batch_size, max_length, truncation, single,
                                                      deadline, pooled, lead_when_idle,
                                                      rows=(("pooling", normalize), pooled_rows)):
            out[rows] = embeddings
        self._check_finite(out, "embeddings")
        return out[0] if single else out

    def _encoding(self, normalize: Optional[bool]) -> bool:
        """Whether encode() normalises; refuses a model whose pooling the engine would not reproduce."""
        if self.pooling.unsupported:
            raise BortEngineError(
                f"{self.path} has sentence-transformers module(s) the engine does not run: "
                f"{list(self.pooling.unsupported)}; encode() would not match the model. Call the engine on token "
                f"ids for the transformer outputs")
        normalize = _check_flag(normalize, "normalize", none_allowed=True)
        return bool(self.pooling.normalize if normalize is None else normalize)

    async def _aforwards(self, texts: list[str], pairs: Optional[list[str]], batch_size: int,
                         max_length: Optional[int], truncation: bool, single: bool, deadline: Optional[float],
                         reduce: Callable[[dict[str, np.ndarray], EncoderOutput], Any], lead_when_idle: bool = False,
                         rows: Optional[tuple[Any, Callable[..., Any]]] = None, name: Optional[str] = None):
        """(rows, reduce(batch, EncoderOutput)) of each batch _batches() gives, computed through the forward queue;
        reduce (the caller's pooling or head) runs in the thread that led the forward, off the event loop. The
        texts are tokenized with the first batch: on the event loop when they are short (INLINE_CHARS: tens of
        microseconds, less than a hand-over to a thread, and a busy engine then takes the request with no thread
        hop at all), else in the queue's worker thread; a text refused there (truncation=False) is raised where
        the caller awaits, before any of its forwards. rows: (key, rows(hidden, pooled, mask)): reduce as a function
        of each row of the encoder's outputs alone, which a combined forward then runs once for every request of
        the same key (batching.RowsThen); used where a batch needs no layout restored (RoBERTa's, MPNet's)."""
        until = _deadline(deadline)
        # checked here as well as where the texts are tokenized: a call with no texts tokenizes nothing
        truncation = _check_flag(truncation, "truncation")
        lead_when_idle = _check_flag(lead_when_idle, "lead_when_idle")
        # texts tokenized already (TokenizedTexts) are only padded here: microseconds per text
        inline = (len(texts) <= INLINE_TOKENIZED if isinstance(texts, TokenizedTexts) else
                  tokenized_on_loop(texts, pairs))
        batches = self._batches(texts, pairs, batch_size, max_length, truncation, single, name)
        for _ in range(-(-len(texts) // _check_batch_size(batch_size))):
            taken: list[Any] = []

            def prepare():
                indices, batch = next(batches)
                taken.extend((indices, batch, self._tokenizer_made(batch)))
                if rows is not None and taken[2].layout is None:
                    then.key = rows[0]
                return taken[2].native

            def reduced_alone(forward, taken=taken):
                return reduce(taken[1], self._output(forward, taken[2]))

            then = reduced_alone if rows is None else RowsThen(None, rows[1], reduced_alone)
            reduced = await self._queue.arun(prepare, until, inline=inline, then=then, lead_on_loop=lead_when_idle)
            # the deadline is for a request nobody works on: its later batches queue behind its own earlier ones,
            # and dropping them would throw away what was computed of a request that never waited for others
            until = None
            yield taken[0], reduced

    @_explains_unknown_keywords
    def classify(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None,
                 batch_size: int = 32, max_length: Optional[int] = None, *,
                 truncation: bool = True) -> ClassificationResult | tuple[str, np.ndarray]:
        """Labels and class probabilities of a sequence classifier.

        text_pairs: classify each (text, pair), e.g. (question, answer) or (premise, hypothesis), tokenized as
        tokenize() does. Returns a ClassificationResult (labels: N strings, probabilities [N,L], logits [N,L]); for
        a single string, the pair (label, probabilities [L]). Probabilities are the softmax of the logits, or their
        sigmoid for a multi-label model (then the label is the most likely one). Texts (pairs: together) are
        truncated to max_length tokens, by default Engine.max_length: the length the model was trained at when it
        was exported by bortengine (sentence_bert_config.json max_seq_length), so it reads what training read;
        truncation=False refuses a longer text instead (as encode() does).
        """
        texts, pairs, single = self._classifier_inputs(texts, text_pairs)
        logits = self._sequence_logits(texts, pairs, batch_size, max_length, truncation, single)
        return self._classification(logits, single)

    def _sequence_logits(self, texts: list[str], pairs: Optional[list[str]], batch_size: int,
                         max_length: Optional[int], truncation: bool, single: bool = False,
                         name: Optional[str] = None) -> np.ndarray:
        """A sequence classifier's logits [N,L] of texts (and their pairs), in input order."""
        logits = np.empty((len(texts), self.config.num_labels), dtype=np.float32)
        for rows, batch in self._batches(texts, pairs, batch_size, max_length, truncation, single, name):
            logits[rows] = self._forward(batch).logits
        self._check_finite(logits, "logits")
        return logits

    @_explains_unknown_keywords
    async def aclassify(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None, *,
                        batch_size: int = 32, max_length: Optional[int] = None, truncation: bool = True,
                        deadline: Optional[float] = None, lead_when_idle: bool = False
                        ) -> ClassificationResult | tuple[str, np.ndarray]:
        """classify() for asyncio, as aencode() is encode()'s (lead_when_idle as there)."""
        texts, pairs, single = self._classifier_inputs(texts, text_pairs)
        logits = await self._asequence_logits(texts, pairs, batch_size, max_length, truncation, single, deadline,
                                              lead_when_idle)
        return self._classification(logits, single)

    @_explains_unknown_keywords
    async def ascores(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None, *,
                      label: Optional[int | str] = None, batch_size: int = 32, max_length: Optional[int] = None,
                      truncation: bool = True, deadline: Optional[float] = None, lead_when_idle: bool = False
                      ) -> np.ndarray:
        """A cross-encoder's relevance score of each (text, pair), as rerank() scores (query, document), for
        asyncio: [N] float32 (deadline, lead_when_idle as aencode's). Order them with Engine.ranked."""
        self._cross_encoder()
        texts, pairs, single = self._text_inputs(texts, text_pairs)
        logits = await self._asequence_logits(texts, pairs, batch_size, max_length, truncation, single, deadline,
                                              lead_when_idle)
        return relevance_scores(logits, self.config, label)

    async def _asequence_logits(self, texts: list[str], pairs: Optional[list[str]], batch_size: int,
                                max_length: Optional[int], truncation: bool, single: bool,
                                deadline: Optional[float], lead_when_idle: bool,
                                name: Optional[str] = None) -> np.ndarray:
        logits = np.empty((len(texts), self.config.num_labels), dtype=np.float32)
        async for rows, batch_logits in self._aforwards(texts, pairs, batch_size, max_length, truncation, single,
                                                        deadline, lambda batch, output: output.logits,
                                                        lead_when_idle, name=name):
            logits[rows] = batch_logits
        self._check_finite(logits, "logits")
        return logits

    def _check_finite(self, values: np.ndarray, what: str) -> None:
        """Refuse outputs that are not all finite: finite weights far out of range (a LayerNorm weight of 3e38)
        pass load's check of every weight and make NaN and infinity out of every text, which classify() turned into
        a label and NaN probabilities without a word. One pass over the outputs the call returns."""
        if not np.isfinite(values).all():
            raise BortEngineError(f"{self.path} computed non-finite {what} (NaN or infinity): its weights, though "
                                  f"finite, are out of the range float32 arithmetic can carry through the model "
                                  f"(e.g. a LayerNorm weight near 3e38), so its outputs mean nothing; check the "
                                  f"checkpoint")

    def _classifier_inputs(self, texts: Any, text_pairs: Any) -> tuple[list[str], Optional[list[str]], bool]:
        if not self.config.is_classifier:
            hint = ("use classify_tokens() for its per-token labels" if self.config.is_token_classifier
                    else "use encode() for embeddings or engine(ids) for hidden states")
            raise BortEngineError(
                f"classify() needs a sequence classifier, but {self.path} is a {self.config.kind} (config.json "
                f"architectures); {hint}")
        if self.config.effective_problem_type == "regression":
            raise BortEngineError(
                f"classify() needs class labels, but {self.path} is a regression model (one output: num_labels=1 "
                f"or problem_type 'regression'); a cross-encoder's relevance scores come from "
                f"engine.rerank(query, documents), any other model's from engine(**engine.tokenize(texts)).logits")
        return self._text_inputs(texts, text_pairs)

    def _classification(self, logits: np.ndarray, single: bool) -> ClassificationResult | tuple[str, np.ndarray]:
        if self._multi_label:
            probs = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
        else:
            probs = softmax(logits).astype(np.float32)
        names = self._label_names
        labels = [names[i] for i in probs.argmax(axis=1).tolist()] if len(logits) else []
        result = ClassificationResult(labels, probs, logits)
        return result[0] if single else result

    @_explains_unknown_keywords
    def classify_tokens(self, texts: str | Sequence[str], aggregation: str = "none", *,
                        ignore_labels: Sequence[str] = ("O",), batch_size: int = 32, max_length: Optional[int] = None,
                        truncation: bool = True,
                        aggregation_strategy: Optional[str] = None) -> list[TokenEntity] | list[list[TokenEntity]]:
        """Labelled tokens, words or entities of a token classifier (NER, PII tagging), with character offsets: what
        transformers' pipeline("token-classification", aggregation_strategy=aggregation) gives, as TokenEntity.

        aggregation: "none" (every token and its label), "simple" (adjacent tokens of one entity type grouped; B-X
        starts a group), "first" / "average" / "max" (the tokens of a word take one label, its first token's, that
        of their averaged probabilities, or the most confident token's; then grouped). Words are found from the
        tokenizer's continuing-subword prefix (WordPiece's ##), else from the spaces before tokens, as transformers
        does. ignore_labels: labels left out ("O", outside any entity). Texts are truncated to max_length tokens
        (default Engine.max_length; the cut tokens get no label), or refused with truncation=False (as encode()
        does). aggregation_strategy: transformers' name for `aggregation` (either, not both; a name in any case).
        Returns a list of entities per text; for a single string, its list.
        """
        texts, single, aggregation, ignored, truncation = self._token_classifier_inputs(
            texts, aggregation, ignore_labels, truncation, aggregation_strategy)
        encodings, tokenized = self._token_encodings(texts, max_length, truncation, single)
        label = self._token_labeller(aggregation, ignored)
        results: list[list[TokenEntity]] = [[] for _ in texts]
        for rows, batch in self._batches(tokenized, None, batch_size, None, truncation):
            logits = self._forward(batch).logits                                  # [b,t,L]
            self._check_finite(logits, "token logits")     # (padding rows are zeros: finite)
            for row, i in enumerate(np.arange(len(texts))[rows]):
                results[i] = label(texts[i], encodings[i], logits[row])
        return results[0] if single else results

    @_explains_unknown_keywords
    async def aclassify_tokens(self, texts: str | Sequence[str], aggregation: str = "none", *,
                               ignore_labels: Sequence[str] = ("O",), batch_size: int = 32,
                               max_length: Optional[int] = None, truncation: bool = True,
                               aggregation_strategy: Optional[str] = None, deadline: Optional[float] = None,
                               lead_when_idle: bool = False) -> list[TokenEntity] | list[list[TokenEntity]]:
        """classify_tokens() for asyncio (deadline, lead_when_idle as aencode's). Short inputs are tokenized on the
        event loop, as aencode's; longer ones, and the labelling of each text's tokens, in a worker thread."""
        texts, single, aggregation, ignored, truncation = self._token_classifier_inputs(
            texts, aggregation, ignore_labels, truncation, aggregation_strategy)
        until = _deadline(deadline)             # from now: the tokenization in a thread counts against it
        short = tokenized_on_loop(texts)
        encoded = functools.partial(self._token_encodings, texts, max_length, truncation, single)
        encodings, tokenized = encoded() if short else await asyncio.to_thread(encoded)
        logits: list[Optional[np.ndarray]] = [None] * len(texts)

        def token_logits(batch: dict[str, np.ndarray], output: EncoderOutput) -> list[np.ndarray]:
            lengths = batch["attention_mask"].sum(axis=1)
            # copies: a combined forward's logits hold every request's rows
            return [output.logits[row, :n].copy() for row, n in enumerate(lengths.tolist())]

        left = None if until is None else max(until - time.monotonic(), 1e-6)
        async for rows, batch_logits in self._aforwards(tokenized, None, batch_size, None, truncation, single,
                                                        left, token_logits, lead_when_idle):
            for i, row_logits in zip(np.arange(len(texts))[rows].tolist(), batch_logits):
                logits[i] = row_logits

        for row_logits in logits:
            self._check_finite(row_logits, "token logits")

        def labelled() -> list[list[TokenEntity]]:
            label = self._token_labeller(aggregation, ignored)
            return [label(text, e, row) for text, e, row in zip(texts, encodings, logits)]
        results = labelled() if short else await asyncio.to_thread(labelled)
        return results[0] if single else results

    def _token_classifier_inputs(self, texts: Any, aggregation: str, ignore_labels: Any, truncation: Any,
                                 aggregation_strategy: Optional[str]):
        """(texts, single, aggregation, ignored labels, truncation) of a classify_tokens() call, checked."""
        if not self.config.is_token_classifier:
            raise BortEngineError(
                f"classify_tokens() needs a token classifier (...ForTokenClassification), but {self.path} is a "
                f"{self.config.kind}; use classify() for a sequence classifier, encode() for embeddings")
        aggregation = check_aggregation(aggregation, aggregation_strategy)
        ignored, _ = as_text_list(ignore_labels, "ignore_labels", ordered=False)
        texts, single = as_text_list(texts)
        return texts, single, aggregation, ignored, _check_flag(truncation, "truncation")

    def _token_encodings(self, texts: list[str], max_length: Optional[int], truncation: bool,
                         single: bool) -> tuple[list[Any], TokenizedTexts]:
        """Each text's `tokenizers` Encoding (its offsets label the tokens) and the same ids as TokenizedTexts, cut
        to max_length and let through by _within_length."""
        tokenizer, limit = self._text_tokenizer(), self._max_length(max_length)
        encodings, counts = tokenizer.encode_counted(texts, limit)
        tokenized = TokenizedTexts([e.ids for e in encodings], counts, limit, single=single)
        self._check_no_padding_token(tokenized, None)
        return encodings, self._within_length(tokenized, truncation)

    def _token_labeller(self, aggregation: str, ignored: Sequence[str]
                        ) -> Callable[[str, Any, np.ndarray], list[TokenEntity]]:
        """label(text, its Encoding, its tokens' logits [>= tokens, L]): the text's entities (padding rows ignored);
        the tokenizer's vocabulary read once for all the texts of a call."""
        labels, vocabulary = self.config.labels, self._text_tokenizer().token_vocabulary()

        def label(text: str, encoding: Any, logits: np.ndarray) -> list[TokenEntity]:
            return token_entities(text, encoding.ids, encoding.offsets, encoding.special_tokens_mask,
                                  logits[:len(encoding.ids)], labels, vocabulary, aggregation, ignored)
        return label

    @_explains_unknown_keywords
    def rerank(self, query: str, documents: Sequence[str], top_k: Optional[int] = None, *,
               label: Optional[int | str] = None, batch_size: int = 32, max_length: Optional[int] = None,
               truncation: bool = True) -> list[RankedDocument]:
        """The documents ordered by a cross-encoder's relevance to the query, best first (top_k of them; None: all).

        Each (query, document) pair is encoded with the tokenizer's pair template ("[CLS] q [SEP] d [SEP]", RoBERTa's
        "<s> q </s></s> d </s>"), truncated longest-first to max_length (truncation=False: a longer pair is refused,
        as encode() refuses a text), and scored as sentence-transformers'
        CrossEncoder.rank scores it: a one-label model's logit through its activation_fn (sigmoid unless its
        config.json names another); a model with more labels scores the probability of `label` (default: the second
        of two). Ties keep the documents' order. Returns RankedDocument(index, score, text) per document.
        """
        queries, documents, truncation = self._rerank_inputs(query, documents, top_k, truncation)
        if not documents:
            return []
        logits = self._sequence_logits(queries, documents, batch_size, max_length, truncation, name=RERANKED)
        return self.ranked(relevance_scores(logits, self.config, label), documents, top_k)

    @_explains_unknown_keywords
    async def arerank(self, query: str, documents: Sequence[str], top_k: Optional[int] = None, *,
                      label: Optional[int | str] = None, batch_size: int = 32, max_length: Optional[int] = None,
                      truncation: bool = True, deadline: Optional[float] = None,
                      lead_when_idle: bool = False) -> list[RankedDocument]:
        """rerank() for asyncio (deadline, lead_when_idle as aencode's)."""
        queries, documents, truncation = self._rerank_inputs(query, documents, top_k, truncation)
        _deadline(deadline)                  # refused with no documents too, as aencode refuses it with no texts
        if not documents:
            return []
        logits = await self._asequence_logits(queries, documents, batch_size, max_length, truncation, False,
                                              deadline, lead_when_idle, name=RERANKED)
        return self.ranked(relevance_scores(logits, self.config, label), documents, top_k)

    def _rerank_inputs(self, query: Any, documents: Any, top_k: Any, truncation: Any
                       ) -> tuple[list[str], list[str], bool]:
        """(the query once per document, the documents, truncation) of a rerank() call, checked."""
        self._cross_encoder()
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        documents, _ = as_text_list(documents, "documents")
        truncation = _check_flag(truncation, "truncation")  # refused with no documents too, as by the other methods
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise InvalidInputError(f"top_k must be a positive integer or None (every document), got {top_k!r}")
        queries, documents, _ = self._text_inputs([query] * len(documents), documents)
        return queries, documents, truncation

    def _cross_encoder(self) -> None:
        if not self.config.is_classifier:
            raise BortEngineError(
                f"rerank() needs a cross-encoder (a ...ForSequenceClassification scoring text pairs), but "
                f"{self.path} is a {self.config.kind}")

    @staticmethod
    def ranked(scores: np.ndarray, documents: Sequence[str], top_k: Optional[int] = None) -> list[RankedDocument]:
        """The documents by score, best first (top_k of them); ties keep the documents' order."""
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_k]
        return [RankedDocument(i, float(scores[i]), documents[i]) for i in order]

    @_explains_unknown_keywords
    def tokenized(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None,
                  max_length: Optional[int] = None, *, truncation: bool = True) -> TokenizedTexts:
        """The texts tokenized once, truncated to max_length (default Engine.max_length), with each text's tokens
        before truncation (.counts; .truncated: the texts cut): pass it to encode/classify/aencode/aclassify in
        place of the texts (with no text_pairs or max_length of its own) to compute it without tokenizing again.
        For a server that counts, or refuses, what it would cut before computing. Pairs keep the tokenizer's token
        types (.type_ids). truncation=False raises TextTooLongError for a longer text, as encode() does; cut texts
        are neither warned about nor counted in Engine.truncated_texts, here or when computed: the caller holds
        .truncated."""
        texts, pairs, single = self._text_inputs(texts, text_pairs)
        return self._tokenized_texts(texts, pairs, max_length, truncation, single, report=False)

    def count_tokens(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None) -> list[int]:
        """Tokens of each text (pair) before truncation, special tokens included: which texts max_length would
        cut (a server refuses or counts those)."""
        texts, pairs, _ = self._text_inputs(texts, text_pairs)
        return [len(ids) for ids in self._text_tokenizer().token_ids(texts, WHOLE_TEXT, pairs=pairs)]

    def warm_caches(self) -> bool:
        """If the engine has been idle a while (no forward for WARM_AFTER_IDLE_S), start reading the model's weights
        back into the CPU caches on a background thread, and return at once (True if it started). After a pause the
        weights have left the caches (other processes, other tenants of a VM): the next forward would fetch them
        from memory, which measured on a 2-vCPU VM doubled an int8 MiniLM forward of a short query (~0.49 ms back to
        back, ~1.06 ms after 50 ms idle). Read by another core while the call's text is prepared, they are in the
        shared cache when its forward starts; a forward that starts stops the reads. The text-taking calls do this
        themselves (encode, classify, rerank and their asyncio forms before they tokenize; classify_tokens and
        aclassify_tokens after); a server calls it as a request arrives, so that parsing it overlaps the reads
        too. Does nothing on a machine of one CPU."""
        return self._warms and self._encoder.warm_caches(WARM_AFTER_IDLE_S)

    def _text_inputs(self, texts: Any, text_pairs: Any) -> tuple[list[str], Optional[list[str]], bool]:
        """(texts, their pairs or None, True if texts is a single string), every mismatch refused. TokenizedTexts
        pass through (with no pairs of their own: theirs are in their ids)."""
        if isinstance(texts, TokenizedTexts):
            if text_pairs is not None:
                raise InvalidInputError("texts are TokenizedTexts, which hold their pairs' ids already; pass "
                                        "text_pairs to engine.tokenized(), not here")
            return texts, None, texts.single
        texts, single = as_text_list(texts)
        if text_pairs is None:
            return texts, None, single
        if isinstance(text_pairs, (bool, int, float, np.number)):
            raise InvalidInputError(
                f"text_pairs must be a string or a list of strings, got {type(text_pairs).__name__}; the arguments "
                f"after texts and text_pairs (batch_size, normalize, max_length) are passed by keyword, e.g. "
                f"encode(texts, batch_size=64)")
        if self.config.token_types and self.config.type_vocab_size < 2:
            raise InvalidInputError(
                f"{self.path} has type_vocab_size={self.config.type_vocab_size}: it has no token type for a second "
                f"text, so it cannot read text pairs; join each pair into one text, or use a model trained on pairs")
        pairs, single_pair = as_text_list(text_pairs, "text_pairs")
        if single != single_pair:
            given = "one string" if single_pair else f"a list of {len(pairs)}"
            wanted = "one string too" if single else f"a list of {len(texts)} strings, one per text"
            raise InvalidInputError(f"texts is {'one string' if single else f'a list of {len(texts)}'} but text_pairs "
                                    f"is {given}; text_pairs must be {wanted}")
        if len(pairs) != len(texts):
            raise InvalidInputError(f"texts has {len(texts)} text(s) but text_pairs has {len(pairs)}; pass one "
                                    f"second text per text (the i-th pair is (texts[i], text_pairs[i]))")
        return texts, pairs, single

    def _batches(self, texts: list[str], pairs: Optional[list[str]], batch_size: int, max_length: Optional[int],
                 truncation: bool, single: bool = False, name: Optional[str] = None):
        """Yield (indices into texts, padded batch) in order of decreasing token count, the texts tokenized (and
        checked against max_length) before the first; texts that fit one batch come as they are, their indices a
        slice of all. A pair is tokenized as one sequence, so sorting moves a text and its pair together."""
        _check_batch_size(batch_size)
        self.warm_caches()
        tokenized = self._tokenized_texts(texts, pairs, max_length, truncation, single, name)
        ids, types, tokenizer = tokenized.ids, tokenized.type_ids, self._text_tokenizer()
        if 0 < len(ids) <= batch_size:     # one batch (a call per text, the common case): nothing to order
            yield slice(None), tokenizer.pad(ids, pairs=tokenized.pairs, type_ids=types)
            return
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = np.array(order[start:start + batch_size], dtype=np.int64)
            yield rows, tokenizer.pad([ids[i] for i in rows], pairs=tokenized.pairs,
                                      type_ids=None if types is None else [types[i] for i in rows])

    def _tokenized_texts(self, texts: list[str] | TokenizedTexts, pairs: Optional[list[str]],
                         max_length: Optional[int], truncation: bool, single: bool = False,
                         name: Optional[str] = None, report: bool = True) -> TokenizedTexts:
        """The texts (and pairs) tokenized once, cut to max_length (default Engine.max_length) and let through by
        _within_length; TokenizedTexts are taken as they are (cut by engine.tokenized(), to their own max_length,
        so their cuts are the caller's to report)."""
        truncation = _check_flag(truncation, "truncation")
        if isinstance(texts, TokenizedTexts):
            if max_length is not None and max_length != texts.max_length:
                raise InvalidInputError(f"these TokenizedTexts were cut to {texts.max_length} tokens, not "
                                        f"max_length={max_length}; pass max_length to engine.tokenized()")
            if not self._check_tokenizer_ids and _outside(texts.ids, self.config.vocab_size):
                # not this tokenizer's ids: refused before they are queued, with the full check's message
                self._validate(self._text_tokenizer().pad(texts.ids)["input_ids"], None, None)
            if texts.type_ids is not None:
                _check_type_rows(texts, self.config.type_vocab_size)
            return self._within_length(texts, truncation, name, report=False)
        tokenized = self._text_tokenizer().counted(texts, self._max_length(max_length), pairs, single)
        self._check_no_padding_token(tokenized, name)
        return self._within_length(tokenized, truncation, name, report)

    def _check_no_padding_token(self, tokenized: TokenizedTexts, name: Optional[str]) -> None:
        """A text that holds the padding token as text ("<pad>", which RoBERTa's tokenizer reads as that token),
        named as the caller knows it, before anything is queued: a model that numbers positions after the padding
        id embeds it at the padding row, which the engine does not load (engine/positions.py), and the forward's
        own refusal named a row of the engine's length-sorted batch. Checked where texts are tokenized (so once for
        engine.tokenized(), whose TokenizedTexts are not checked again when computed)."""
        if not self._positions_laid_out:
            return
        pad = self.config.positions_padding_id
        i = next((i for i, ids in enumerate(tokenized.ids) if pad in ids), None)
        if i is None:
            return
        where = _text_name(tokenized, i, name)
        tokenizer = self._text_tokenizer()
        token = tokenizer.token_text(pad)
        if pad == tokenizer.unk_id and pad != tokenizer.pad_id:
            raise InvalidInputError(
                f"{where} holds characters its tokenizer does not know, read as {token!r} (id {pad}), the id "
                f"{self.path}'s config.json names as padding (pad_token_id): a {self.config.model_type} model embeds "
                f"that id at the padding position, which the engine does not compute, so nothing was. The config "
                f"is likely wrong: the tokenizer's padding token is {tokenizer.token_text(tokenizer.pad_id)!r} "
                f"(id {tokenizer.pad_id}); set pad_token_id to it")
        raise InvalidInputError(
            f"{where} holds {token!r}, this model's padding token, as text (its tokenizer reads the string as that "
            f"token, as transformers' does): a {self.config.model_type} model embeds it at the padding position, "
            f"which the engine does not compute, so nothing was. Remove it from the text or change it (\"< pad>\")")

    def _within_length(self, tokenized: TokenizedTexts, truncation: bool, name: Optional[str] = None,
                       report: bool = True) -> TokenizedTexts:
        """tokenized, if its texts over max_length may be cut: with truncation=False the first is refused
        (TextTooLongError, raised before anything is computed); with truncation=True they are counted in
        truncated_texts and, the first time this engine cuts any, a TruncationWarning says so (report=False: the
        caller cut them knowingly, with engine.tokenized()). name: how the error names text i, a format of i
        ("documents[{i}] with the query"; default texts[i], with text_pairs[i] for pairs)."""
        over = tokenized.truncated
        if not over:
            return tokenized
        if not truncation:
            raise self._too_long(tokenized, over, name)
        if report:
            with self._cut_lock:
                self._truncated_texts += len(over)
                warn, self._truncation_warned = not self._truncation_warned, True
            if warn:
                warnings.warn(self._cut_message(tokenized, over), TruncationWarning, stacklevel=_caller_stacklevel())
        return tokenized

    def _longer(self, limit: int) -> str:
        """How a caller keeps more than `limit` tokens of a text, if the model has the positions: a fix to list."""
        positions = self.config.max_positions
        return f"a larger max_length (this model reads up to {positions} tokens), " if limit < positions else ""

    def _too_long(self, tokenized: TokenizedTexts, over: list[int], name: Optional[str]) -> TextTooLongError:
        i, limit, tokens = over[0], tokenized.max_length, tokenized.counts[over[0]]
        where = _text_name(tokenized, i, name)
        others = f" ({len(over)} of the {len(tokenized)} texts are)" if len(over) > 1 and not tokenized.single else ""
        counted = "special tokens included" + (", the pair together" if tokenized.pairs else "")
        cut = f"cut it to {limit} tokens" + (" (longest-first)" if tokenized.pairs else "")
        return TextTooLongError(
            f"{where} has {tokens} tokens ({counted}), more than max_length={limit}{others}, and truncation=False: "
            f"nothing was computed. Pass truncation=True to {cut}, {self._longer(limit)}or shorten or split the "
            f"text", i, tokens, limit)

    def _cut_message(self, tokenized: TokenizedTexts, over: list[int]) -> str:
        i, limit = over[0], tokenized.max_length
        how = " (text pairs longest-first)" if tokenized.pairs else ""
        lost = "beginnings" if self.tokenizer is not None and self.tokenizer.truncation_side == "left" else "ends"
        return (f"{len(over)} of {len(tokenized)} texts had more than max_length={limit} tokens (the first is text "
                f"{i}, with {tokenized.counts[i]}) and were cut to {limit}{how}, so the model did not read their "
                f"{lost}. Pass truncation=False to get an error instead, {self._longer(limit)}or shorter texts. "
                f"Said once per Engine; engine.truncated_texts counts every text cut")

    def _tokenizer_made(self, batch: dict[str, np.ndarray]) -> _Batch:
        """The _Batch of a batch that TextTokenizer.pad made: its mask and types are right by construction, so
        only the ids are checked, in one pass, and only when the tokenizer has ids past the model's vocabulary
        (TokenizedTexts made elsewhere are checked by _tokenized_texts); out of range, they say the tokenizer
        files do not fit the weights."""
        ids = batch["input_ids"]
        if self._check_tokenizer_ids and ids.size and int(ids.max()) >= self.config.vocab_size:
            beyond = ids[ids >= self.config.vocab_size]
            # the engine's own tokenizer made them: "ids must come from this model's tokenizer" would be no advice
            raise InvalidInputError(
                f"the tokenizer of {self.path} turned the text into token id(s) {_short(np.unique(beyond))}, beyond "
                f"the model's vocab_size={self.config.vocab_size} (its ids go up to {self.tokenizer.largest_id}): "
                f"the tokenizer files (tokenizer.json, vocab.txt) are not those of these weights. Copy the tokenizer "
                f"of the model the weights come from into {self.path}")
        return self._prepared(ids, batch["attention_mask"], batch["token_type_ids"])

    def _forward(self, batch: dict[str, np.ndarray]) -> EncoderOutput:
        """The outputs of a batch that TextTokenizer.pad made, computed through the forward queue."""
        prepared = self._tokenizer_made(batch)
        return self._output(self._queue.run(*prepared.native), prepared)

    def _text_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise BortEngineError(
                f"{self.path} has no tokenizer (tokenizer.json or vocab.txt), so texts cannot be tokenized; copy "
                f"the model's tokenizer files there (a RoBERTa or XLM-R with only vocab.json/merges.txt or a "
                f"sentencepiece model: write tokenizer.json once with transformers' AutoTokenizer.from_pretrained(dir)"
                f".save_pretrained(dir)), or call the engine on token ids")
        return self.tokenizer

    def _max_length(self, max_length: Optional[int]) -> int:
        if max_length is None:
            return self.max_length
        limit = self.config.max_positions
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or not 1 <= max_length:
            raise InvalidInputError(f"max_length must be a positive integer, got {max_length!r}")
        if max_length > limit:
            raise InvalidInputError(
                f"max_length={max_length} exceeds the model's {limit} positions; use at most {limit}")
        return int(max_length)


def bf16_runs_fast(isa: Optional[str] = None) -> bool:
    """Whether the bf16 GEMMs of this CPU's kernel path (isa, default the best) outrun its float32 ones: AMX tiles,
    or vdpbf16ps on a CPU not Intel's (_slow_bf16)."""
    core = _core()
    return _slow_bf16(core.bf16_kernel_name(isa or core.default_isa()), core.cpu_info().get("vendor", "")) is None


def _slow_bf16(kernel: str, vendor: str) -> Optional[str]:
    """Why the bf16 GEMM kernel `kernel` runs slower than float32 on this CPU, or None where it is faster: on AMX
    tiles (3.4-3.7x float32, bench/README.md), and on vdpbf16ps of a CPU not Intel's (AMD Zen 4: 1.70x). On Intel
    cores without tiles vdpbf16ps measured 0.72x (a Xeon with AVX512_BF16, family 6 model 207) and 0.74x (an AMX
    Xeon with BORTENGINE_AMX=0): the rule by which the native core keeps their attention fp32 (has_bf16_attention);
    the emulations widen bf16 to run float32's FMAs: its speed at best."""
    variant = kernel.split("_")[2] if kernel.count("_") >= 2 else ""
    if variant == "amx" or (variant == "avx512bf16" and vendor != "GenuineIntel"):
        return None
    if variant == "avx512bf16":
        return ("its bf16 GEMMs run on vdpbf16ps without AMX tiles, measured 0.72-0.74x float32's speed on Intel "
                "CPUs (bench/README.md)")
    return (f"this kernel path has no bf16 instructions, so its bf16 GEMMs are an emulation ({kernel}: float32 "
            f"FMAs on widened bf16), float32's speed at best")


def _head(weights: BertWeights, isa: str) -> Optional[ClassifierHead]:
    """The model's head, from its weights (None for a bare encoder), on the encoder's ISA path."""
    config = weights.config
    if not weights.has_classifier:
        return None
    classifier = Linear(weights.read("classifier.weight"), weights.read("classifier.bias"), isa)
    activation = config.family.pre_classifier if config.is_classifier else None
    if not activation:
        return ClassifierHead(classifier, per_token=config.is_token_classifier)
    pre = Linear(weights.read("pre_classifier.weight"), weights.read("pre_classifier.bias"), isa)
    return ClassifierHead(classifier, pre_classifier=pre, activation=activation)


def _layer_dtypes(float32_layers: Optional[Sequence[int]], bf16_layers: Optional[Sequence[int]], dtype: str,
                  config: ModelConfig) -> dict[int, str]:
    """layer -> its dtype, for the layers that do not run in the engine's: load's float32_layers and bf16_layers,
    checked, or (both None) the model's int8 calibration."""
    if float32_layers is None and bf16_layers is None:
        if dtype != "int8":
            return {}
        return {**dict.fromkeys(config.int8_float32_layers, "float32"),
                **dict.fromkeys(config.int8_bf16_layers, "bf16")}
    chosen = {"float32": _layer_list(float32_layers, "float32_layers", config),
              "bf16": _layer_list(bf16_layers, "bf16_layers", config)}
    if dtype == "float32" and (chosen["float32"] or chosen["bf16"]):
        raise InvalidInputError("float32_layers and bf16_layers apply to int8 (and float32_layers to bf16) engines: a "
                                "float32 engine runs every layer in float32; drop them or pass dtype='int8'")
    if dtype == "bf16" and chosen["bf16"]:
        raise InvalidInputError("bf16_layers applies to int8 engines: a bf16 engine runs every layer in bf16")
    both = set(chosen["float32"]) & set(chosen["bf16"])
    if both:
        raise InvalidInputError(f"layers {sorted(both)} are in both float32_layers and bf16_layers; a layer runs in "
                                f"one of them")
    return {**dict.fromkeys(chosen["float32"], "float32"), **dict.fromkeys(chosen["bf16"], "bf16")}


def _layer_list(requested: Optional[Sequence[int]], what: str, config: ModelConfig) -> tuple[int, ...]:
    if requested is None:
        return ()
    values = list(requested) if isinstance(requested, range) else \
        requested.tolist() if isinstance(requested, np.ndarray) else requested
    try:
        return check_layer_list(values, config.num_hidden_layers, what)
    except ModelLoadError as e:
        raise InvalidInputError(str(e)) from None


def _set_layer(encoder: Any, weights: BertWeights, index: int, dtype: str, layer_dtype: str) -> None:
    """Hands layer `index` to the native encoder, one tensor read at a time: an int8 checkpoint's weights to an int8
    encoder and a BF16 checkpoint's to a bf16 encoder as they are stored, anything else as float32 (dequantized or
    widened; the encoder quantizes or rounds it for the layer's dtype, layer_dtype: the engine's, or float32 / bf16
    for a layer of mixed precision). Arrays are dropped once packed, before the next layer is read, to keep peak
    memory low."""
    rounded = layer_dtype in ("bf16", "int8")   # (an int8 layer may run FFN out on the bf16 kernels)
    if layer_dtype != dtype:
        encoder.set_layer(index, *weights.read_layer(index, to_bf16=rounded), dtype=layer_dtype)
    elif dtype == "int8" and weights.layer_is_quantized(index):
        encoder.set_layer_quantized(index, *_flat(weights.read_layer_quantized(index)))
    elif dtype == "bf16" and weights.layer_is_bf16(index):
        encoder.set_layer_bf16(index, *_flat(weights.read_layer_bf16(index)))
    else:
        encoder.set_layer(index, *weights.read_layer(index, to_bf16=rounded))


def _flat(layer: tuple[dict, list]) -> list:
    """(converted weights, vectors) -> the argument list of Encoder.set_layer_quantized / set_layer_bf16."""
    converted, vectors = layer
    return [converted, *vectors]


# ------------------------------------------------------------------------------------------- input validation
def _text_name(tokenized: TokenizedTexts, i: int, name: Optional[str]) -> str:
    """How an error names text i of a call: "the text (pair)" of a single one, else name (a format of i, as
    "documents[{i}] with the query") or texts[i] (with text_pairs[i])."""
    if tokenized.single:
        return "the text pair" if tokenized.pairs else "the text"
    return (name or ("texts[{i}] with text_pairs[{i}]" if tokenized.pairs else "texts[{i}]")).format(i=i)


def _unpacked(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, token_type_ids) of a call, which may pass one mapping of them (engine(engine.
    tokenize(texts)))."""
    if not isinstance(input_ids, Mapping):
        return input_ids, attention_mask, token_type_ids
    if attention_mask is not None or token_type_ids is not None:
        raise InvalidInputError("pass either a mapping of inputs or separate arrays, not both")
    unknown = set(input_ids) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown or "input_ids" not in input_ids:
        raise InvalidInputError(f"a mapping of inputs needs 'input_ids' and may have 'attention_mask' and "
                                f"'token_type_ids'; got keys {sorted(input_ids)}")
    return tuple(input_ids.get(k) for k in ("input_ids", "attention_mask", "token_type_ids"))


def _outside(ids: list[list[int]], vocab_size: int) -> bool:
    """Whether any id of these lists is outside [0, vocab_size)."""
    rows = [r for r in ids if r]
    return bool(rows) and (max(map(max, rows)) >= vocab_size or min(map(min, rows)) < 0)


# What True and False (and None, where it is allowed) mean for each boolean option of the public methods: the
# message that refuses another value says it.
_FLAGS = {
    "truncation": "True cuts texts longer than max_length, False refuses them",
    "normalize": "True L2-normalises the embeddings, False leaves them as pooled, None follows the model "
                 "(its modules.json Normalize)",
    "lead_when_idle": "True lets a short request on an idle engine run its forward on the event loop, False never",
    "batching": "True combines the forwards of concurrent callers, False runs one request per forward",
}


def _check_flag(value: Any, name: str, none_allowed: bool = False) -> Optional[bool]:
    """The boolean option `name` of a public method as a bool (None kept where none_allowed). Anything but True,
    False (NumPy's bool_ too) or an allowed None is refused: a truthy "no", "false" or 0.5 would otherwise pass for
    a choice the caller did not make."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value is None and none_allowed:
        return None
    accepted = "True, False or None" if none_allowed else "True or False"
    raise InvalidInputError(f"{name} must be {accepted} ({_FLAGS[name]}), got {value!r} "
                            f"({type(value).__name__})")


def _check_type_rows(tokenized: TokenizedTexts, type_vocab_size: int) -> None:
    """Refuses TokenizedTexts whose type_ids are not one type in [0, type_vocab_size) per id (TokenizedTexts made
    by engine.tokenized() always are)."""
    types = tokenized.type_ids
    if len(types) != len(tokenized.ids) or any(len(t) != len(i) for t, i in zip(types, tokenized.ids)):
        raise InvalidInputError("TokenizedTexts.type_ids must hold one type per id of each text (as "
                                "engine.tokenized() makes them), or be None")
    if _outside(types, type_vocab_size):
        raise InvalidInputError(f"TokenizedTexts.type_ids must lie in [0, {type_vocab_size}) (the model's "
                                f"type_vocab_size={type_vocab_size}): 0 on a pair's first text, 1 on its second")


def _caller_stacklevel() -> int:
    """warnings.warn's stacklevel for the first frame outside the engine package: a warning points at the caller's
    line, whichever public method it came through (in an asyncio call's worker thread, which holds no frame of the
    caller's, at the thread's outermost frame)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _ENGINE_DIR:
        frame, level = frame.f_back, level + 1
    return level


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _check_max_batch_tokens(value: Any) -> int:
    if value is None:
        return DEFAULT_MAX_BATCH_TOKENS
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"max_batch_tokens must be a positive integer (real tokens per combined forward), "
                                f"got {value!r}")
    return int(value)


def tokenized_on_loop(texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> bool:
    """Whether an asyncio call tokenizes these texts on the event loop: few and short enough (INLINE_TEXTS,
    INLINE_CHARS) to cost less than a hand-over to a thread. The server decides by it too."""
    return len(texts) <= INLINE_TEXTS and characters(texts, pairs) <= INLINE_CHARS


def _deadline(seconds: Any) -> Optional[float]:
    """A deadline in seconds from now as a time.monotonic() value."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.number)) or not seconds > 0:
        raise InvalidInputError(f"deadline must be a positive number of seconds from now, got {seconds!r}")
    return time.monotonic() + float(seconds)


def _as_int_array(value: Any, name: str, allow_bool: bool = False) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except ValueError as e:  # ragged nested lists
            raise InvalidInputError(
                f"{name} rows have different lengths ({e}); pad them to one length and pass attention_mask with 0 "
                f"at the padding") from None
        if value.dtype == object:
            if value.ndim == 0:
                raise InvalidInputError(f"{name} must be a [batch, tokens] array or nested list of integers, got "
                                        f"{type(value.item()).__name__}")
            raise InvalidInputError(
                f"{name} rows have different lengths or hold values that are not 64-bit integers; pad the rows to "
                f"one length (with attention_mask 0 at the padding) and pass integer ids")
        if value.size == 0 and value.dtype == np.float64:  # np.asarray([]) / [[]] : no dtype to complain about
            value = value.astype(np.int64)
    kind = value.dtype.kind
    if kind == "b" and allow_bool:
        return value
    if kind not in "iu":
        allowed = "integers (or bool)" if allow_bool else "integers"
        raise InvalidInputError(
            f"{name} must hold {allowed}, got dtype {value.dtype}; convert with np.asarray({name}, dtype=np.int64)")
    return value


def _check_shape(value: np.ndarray, name: str, shape: tuple[int, ...]) -> None:
    if value.shape != shape:
        raise InvalidInputError(f"{name} has shape {list(value.shape)} but input_ids has shape {list(shape)}; "
                                f"they must match")


def _check_range(value: np.ndarray, name: str, limit: int, field: str, hint: str) -> None:
    bad = (value < 0) | (value >= limit)
    if bad.any():
        r, col = np.argwhere(bad)[0]
        raise InvalidInputError(
            f"{name}[{r}, {col}] = {value[r, col]} is outside [0, {limit}) (the model's {field}={limit}); "
            f"{np.count_nonzero(bad)} value(s) out of range; {hint}")


def _short(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
