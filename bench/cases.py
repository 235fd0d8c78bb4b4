"""The one case list of the benchmark suite: models, input shapes, runtimes and GEMM shapes.

Every encoder row is a (model, shape, runtime) triple; rows of one (model, shape) run back to back so the runtimes
compared in one table row see the same machine state. Correctness checks and timings use the same inputs.

Shapes: B = batch, T = tokens per sequence (padded length), H = hidden size, M/N/K = GEMM rows/cols/depth.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"


@dataclass(frozen=True)
class ModelCase:
    """An encoder to benchmark: the real all-MiniLM-L6-v2, or a random-weight directory built on first use (a BERT,
    or a model of another family with that family's own layout, config and kind of tokenizer)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    real: bool = False  # True: the shipped all-MiniLM-L6-v2; False: built by bortengine.testing
    smoke: bool = False  # tiny model for the harness smoke test, kept out of the aggregates
    # config.json model_type. "bert": make_random_bert (MiniLM's WordPiece tokenizer); the others:
    # make_random_encoder, with `vocab_size` rows of word embeddings (the real model's count; its small trained
    # tokenizer covers only the first few hundred, the bench's random ids all of them).
    family: str = "bert"
    vocab_size: int = 30522

    def path(self) -> Path:
        """The Hugging Face directory of the model (built once, then reused from bench/.cache/models/)."""
        from bortengine import testing

        if self.real:
            return testing.minilm_path()
        if self.family == "bert":
            return testing.make_random_bert(
                CACHE_DIR / "models" / self.name, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
                num_attention_heads=self.num_heads, intermediate_size=self.intermediate_size,
                max_position_embeddings=512, head="pooler", seed=0,
            )
        return testing.make_random_encoder(
            CACHE_DIR / "models" / self.name, model_type=self.family, head="model", hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size, max_positions=512, vocab_size=self.vocab_size, seed=0,
        )

    def config(self) -> dict:
        return json.loads((self.path() / "config.json").read_text())

    def sizes(self) -> dict:
        """The encoder's sizes under BERT's config.json keys (DistilBERT spells them dim, n_layers, hidden_dim)."""
        return {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads}

    @property
    def token_types(self) -> bool:
        """Whether the family reads token_type_ids (BERT, ELECTRA); the others' tokenizers give none, so no runtime
        is given them."""
        from bortengine.engine import ModelConfig

        return ModelConfig.from_dict({"model_type": self.family}).token_types

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask") + (("token_type_ids",) if self.token_types else ())

    def encoder_inputs(self, shape: "ShapeCase") -> "EncoderInputs":
        """The shape's seeded batch in this model's ids. BERT's are drawn from the whole vocabulary and padded with 0,
        as they always were; the other families' avoid the special ids 0..4 (a padding id 1 inside a RoBERTa or
        MPNet text would shift transformers' positions) and are padded with the family's padding id, as their
        tokenizers pad."""
        if self.family == "bert":
            return shape.inputs(self.vocab_size)
        pad = self.config().get("pad_token_id", 0)
        return shape.inputs(self.vocab_size, pad_id=pad, first_id=5, token_types=self.token_types)


@dataclass(frozen=True)
class ShapeCase:
    """A batch of random token ids: B sequences padded to T tokens; ragged batches draw lengths in [min_len, T]."""

    name: str
    batch: int
    tokens: int
    min_len: int | None = None  # None: every sequence has T real tokens (attention_mask all ones)
    seed: int = 0

    def inputs(self, vocab_size: int, pad_id: int = 0, first_id: int = 0, token_types: bool = True
               ) -> "EncoderInputs":
        """Seeded ids in [first_id, vocab_size), mask and token types (zeros; token_types: whether the model reads
        them); ragged batches are padded to their longest sequence with pad_id."""
        rng = np.random.default_rng(self.seed)
        if self.min_len is None:
            lengths = np.full(self.batch, self.tokens)
        else:
            lengths = rng.integers(self.min_len, self.tokens + 1, size=self.batch)
        t = int(lengths.max())
        input_ids = rng.integers(first_id, vocab_size, size=(self.batch, t), dtype=np.int64)
        attention_mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
        input_ids[attention_mask == 0] = pad_id
        token_type_ids = np.zeros((self.batch, t), dtype=np.int64)
        return EncoderInputs(input_ids, attention_mask, token_type_ids, token_types)


@dataclass(frozen=True)
class EncoderInputs:
    """input_ids, attention_mask, token_type_ids: [B,T] int64, C-contiguous. Every runtime gets the first two, and
    token_type_ids when the model reads them (token_types; BERT and ELECTRA)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    token_types: bool = True

    def feeds(self) -> dict[str, np.ndarray]:
        """The arrays by input name, as every runtime takes them (token_type_ids only for a model that reads them)."""
        feeds = dict(input_ids=self.input_ids, attention_mask=self.attention_mask)
        if self.token_types:
            feeds["token_type_ids"] = self.token_type_ids
        return feeds

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def lengths(self) -> np.ndarray:
        """[B] real tokens per sequence."""
        return self.attention_mask.sum(axis=1)


def encoder_flops(config: dict, lengths) -> int:
    """Floating-point operations (a multiply-add = 2) of a padding-free encoder forward over sequences of `lengths`.

    Per layer: the four weight GEMMs over the n real tokens, 2·n·(3H·H + H·H + H·I + I·H), and attention's two
    batched products per sequence, 2·2·L²·H (Q·Kᵀ and P·V over all heads). Embeddings, softmax, LayerNorm, GELU
    and the pooler are left out: they are O(n·H), under 1% of the total at these sizes. This is the work any
    runtime has to do; one that computes padding does more.
    """
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    per_layer = 2 * n * (4 * h * h + 2 * h * i) + 4 * int((lengths * lengths).sum()) * h
    return layers * per_layer


# The runtimes, in the order they run within one (model, shape) row.
ENGINE = "bortengine"
ORT = "onnxruntime"
TORCH_EAGER = "torch-eager"
TORCH_SDPA = "torch-sdpa"
ENGINE_INT8 = "bortengine-int8"  # bortengine.load(..., dtype="int8")
ORT_INT8 = "onnxruntime-int8"  # quantize_dynamic (s8 weights) of the BERT-fused graph
ENGINE_BF16 = "bortengine-bf16"  # bortengine.load(..., dtype="bf16")
TORCH_BF16 = "torch-bf16"  # PyTorch sdpa under torch.autocast("cpu", dtype=torch.bfloat16): ORT has no bf16 BERT here
RUNTIMES = (ENGINE, ORT, TORCH_EAGER, TORCH_SDPA, ENGINE_INT8, ORT_INT8, ENGINE_BF16, TORCH_BF16)
# Issue 18 asks the families for the BERT rows' float32 and int8 comparisons; bf16 is not among them.
FAMILY_RUNTIMES = (ENGINE, ORT, TORCH_EAGER, TORCH_SDPA, ENGINE_INT8, ORT_INT8)
INT8_RUNTIMES = (ENGINE_INT8, ORT_INT8)
BF16_RUNTIMES = (ENGINE_BF16, TORCH_BF16)
ENGINES = (ENGINE, ENGINE_INT8, ENGINE_BF16)  # the engine's rows: masked positions must be zeros
# The engine's reduced-precision paths, each with its table's ratio suffix and the runtimes compared with it (a peer
# in the same precision, and the engine's own float32 path).
LOW_PRECISION = {ENGINE_INT8: ("8", (ORT_INT8, ENGINE)), ENGINE_BF16: ("16", (TORCH_BF16, ENGINE))}
REFERENCE = TORCH_EAGER  # the engine (and every other runtime) is checked against this one

MODELS = (
    ModelCase("minilm-l6", hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, real=True),
    ModelCase("bert-base", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    ModelCase("bort", hidden_size=1024, num_layers=4, num_heads=8, intermediate_size=768),
)
SMOKE_MODEL = ModelCase("tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, smoke=True)

# Issue 18's families at their real sizes, random weights (bortengine.testing.make_random_encoder): the published
# base checkpoints' config.json sizes and vocabularies (RoBERTa's and MPNet's position tables hold 514 rows: 512
# positions after their padding index). Their rows run FAMILY_RUNTIMES and get their own summary lines.
FAMILY_MODELS = (
    ModelCase("roberta-base", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
              family="roberta", vocab_size=50265),
    ModelCase("xlm-roberta-base", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
              family="xlm-roberta", vocab_size=250002),
    ModelCase("distilbert-base", hidden_size=768, num_layers=6, num_heads=12, intermediate_size=3072,
              family="distilbert", vocab_size=30522),
    ModelCase("electra-base", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
              family="electra", vocab_size=30522),   # the discriminator: embedding_size 768, no projection
    ModelCase("mpnet-base", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
              family="mpnet", vocab_size=30527),
)
# The same families, tiny, for the smoke test (vocabularies of a few hundred: the tokenizers' own).
SMOKE_FAMILY_MODELS = tuple(
    ModelCase(f"tiny-{m.family}", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, smoke=True,
              family=m.family, vocab_size=400) for m in FAMILY_MODELS)

SHAPES = (
    ShapeCase("1x32", batch=1, tokens=32),
    ShapeCase("1x128", batch=1, tokens=128),
    ShapeCase("8x128", batch=8, tokens=128),
    ShapeCase("8x16-128", batch=8, tokens=128, min_len=16, seed=1),  # ragged: lengths uniform over 16..128
)
SMOKE_SHAPE = ShapeCase("3x5-24", batch=3, tokens=24, min_len=5, seed=2)

# GEMM shapes of a Bort layer at 128 tokens: (M, K, N) for a [M,K] @ w[N,K]^T.
GEMM_SHAPES = (
    (128, 1024, 3072),  # fused QKV projection
    (128, 1024, 1024),  # attention output projection
    (128, 1024, 768),   # FFN up (intermediate 768)
    (128, 768, 1024),   # FFN down
)
PEAK_SIZE = 2048  # square GEMM used to measure the machine's peak: large enough to be compute bound
GEMM_TARGET = 0.80  # each layer shape should reach this fraction of the measured peak

# Accuracy of each runtime against PyTorch eager at unmasked positions (max abs diff of last_hidden_state).
FLAG_ATOL = 1e-4  # above this the table flags the row
FAIL_ATOL = 1e-2  # above this the result is wrong, not just rounded differently: the row's test fails

# int8 and bf16 runtimes are checked by the cosine of each real token's hidden state to PyTorch's float32 one: their
# difference is rounding error, not a bug, and a max-abs-diff bound would not say which. The bench feeds random
# token ids, far from text (MiniLM's outlier tokens then lose the most), so this is a sanity check of the engine's
# int8 and bf16 paths (mean over tokens); their accuracy targets on real sentences are bench/accuracy.py's. The
# peers' cosines (ONNX Runtime int8, PyTorch bf16) are recorded, not asserted: their accuracy is not this suite's
# to enforce.
MIN_MEAN_COSINE = {ENGINE_INT8: 0.98, ENGINE_BF16: 0.999}

# Issue 18's speed target for every family: ORT/engine (float32, and ORT-int8/engine-int8) of at least this geometric
# mean over the bench shapes, and never below FAMILY_MIN_RATIO on one shape.
FAMILY_GEOMEAN_RATIO = 1.25
FAMILY_MIN_RATIO = 1.0

# Families whose attention onnxruntime's optimizer cannot fuse, and why: their ORT peer runs fused
# SkipLayerNormalization and BiasGelu, and attention as the exported MatMul/Softmax ops. The fusion check expects
# no Attention for them (so a later onnxruntime that fuses it is noticed) instead of failing the suite.
ORT_UNFUSED_ATTENTION = {
    "mpnet": "onnxruntime's optimizer (model_type 'bert', its only encoder type) does not match MPNet's attention: "
             "the relative position bias added to the scores is not in its Attention pattern, and it has no MPNet "
             "fusion",
}

# A row is marked busy when other processes took more than this share of the machine's CPU while it was timed.
BUSY_SHARE = 0.10

MEMORY_MODEL = MODELS[1]  # bert-base
MEMORY_SLACK_BYTES = 64 << 20  # budget = 1.2 x fp32 weights + 64 MiB
MEMORY_FACTOR = 1.2


def encoder_rows(models=MODELS, shapes=SHAPES, runtimes=RUNTIMES):
    """(model, shape, runtime) triples, runtime innermost so one table row's timings are taken together."""
    return [(m, s, r) for m in models for s in shapes for r in runtimes]


def row_id(row) -> str:
    model, shape, runtime = row
    return f"{model.name}-{shape.name}-{runtime}"
