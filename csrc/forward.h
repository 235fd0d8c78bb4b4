// forward.h: the one description of an encoder forward: its steps in order, what each computes, the trace bucket
// its time is charged to (Encoder::last_trace, Engine.op_times) and the team barriers (parallel_for calls) it
// costs. The encoder runs exactly these steps (encoder.cc: its GEMMs take their epilogue and kernel dtype from
// here, and its trace names come from here); the native module exports the table as _core.forward_ops(), so the
// profiler's op list and latency model can be built from the same description. No intrinsics, no threads.
//
// Shapes: B = batch, Ntok = real tokens of the batch, H = hidden, I = intermediate, E = embedding width (H but in
// ELECTRA). A GEMM step is [rows, K] · [K, N] with rows Ntok ("tokens") or B ("sequences").
#pragma once
#include <string>

#include "kernels.h"
#include "ops.h"

namespace bortengine {

// The arithmetic of the encoder layers' four linear layers (load(dtype=...)); everything else runs in fp32.
enum class DType { kFloat32, kInt8, kBf16 };
constexpr DType kDTypes[] = {DType::kFloat32, DType::kInt8, DType::kBf16};
// "float32" | "int8" | "bf16" <-> DType (parse throws std::invalid_argument on other names).
DType parse_dtype(const std::string& name);
const char* dtype_name(DType d);

namespace forward {

// The steps, in forward order (kSteps[s].step == s).
enum Step : int {
    kEmbeddings,     // x = LayerNorm(word + position + token type embeddings) of the packed tokens (E wide)
    kEmbeddingsProject,  // x = e · Wp + b: ELECTRA's embeddings_project, E -> H, where E != H
    kQkv,            // qkv = x · Wqkv + b (Q, K and V in one GEMM)
    kAttention,      // ctx = softmax(Q K^T / sqrt(dh) (+ MPNet's relative position bias)) V per sequence and head
    kAttentionOut,   // y = ctx · Wo + b + x
    kLn1,            // y = LayerNorm(y)
    kFfnIn,          // h = gelu(y · Wi + b)
    kFfnOut,         // x = h · Wo2 + b + y
    kLn2,            // x = LayerNorm(x) (into the output on the last layer when there is no padding)
    kScatter,        // out [B, T, H] from the packed rows, zeros at padding
    kPoolerGather,   // the first token's row of each sequence
    kPooler,         // pooled = tanh(first rows · Wp + b)
    kStepCount
};

enum class Kind { kEmbeddings, kGemm, kAttention, kLayerNorm, kScatter, kGather };
enum class Scope {
    kForward,  // once per forward
    kLayer,    // once per encoder layer
    kPooler,   // once per forward that asks for the pooler output (models with a pooler)
};
enum class When {
    kAlways,
    kPadded,     // only when some position of the batch is padding (mask 0): else the last LayerNorm writes `out`
    kProjected,  // only in models whose embedding width E differs from the hidden size (ELECTRA): never in BERT
};
enum class Rows { kNone, kTokens, kSequences };  // a GEMM's rows: the batch's real tokens, or its sequences
enum class Dim { kNone, kH, k3H, kI, kE };      // a GEMM's K or N over the config's H, I and E

struct StepInfo {
    Step step;
    const char* name;   // unique
    const char* trace;  // the trace bucket (Engine.op_times key) this step's time is charged to
    Kind kind;
    Scope scope;
    When when;
    // GEMM steps only: [rows, K] · [K, N], the fused epilogue, and whether int8 and bf16 encoders run the GEMM on
    // low-precision kernels (the pooler and the embeddings' projection stay float32, as the embeddings do).
    Dim K = Dim::kNone, N = Dim::kNone;
    Epilogue::Kind epilogue = Epilogue::kNone;
    Rows rows = Rows::kNone;
    bool low_precision = false;
    // int8 encoders run this GEMM on the bf16 kernels where those run on AMX tiles (`bf16_tiles` below). FFN out's
    // input is the GELU output, whose few outlier channels (largest on [CLS] in fine-tuned models) set a per-token u8
    // scale that rounds every other channel to a handful of levels: with it in int8, trained classifiers lose up to
    // 0.03 of a token's cosine to float32 (bench/int8_simulate.py: every token >= 0.98 only with FFN out out of
    // int8). bf16 keeps 8 significant bits per value whatever the row's range. On tiles that costs an int8 forward
    // ~13%; without them a bf16 GEMM (vdpbf16ps: 2 products per lane where vpdpbusd makes 4) made int8 forwards
    // 1.3-2.0x slower (bench/paired_builds.py with BORTENGINE_AMX=0, an AMX Xeon as a CPU without tiles), so
    // there the GEMM stays int8.
    bool int8_in_bf16 = false;
};

// The kernels a step's GEMM runs on in an encoder of dtype d, on a path whose bf16 kernels run on AMX tiles
// (bf16_tiles) or not.
constexpr DType kernel_dtype(const StepInfo& s, DType d, bool bf16_tiles) {
    return !s.low_precision                                   ? DType::kFloat32
           : d == DType::kInt8 && s.int8_in_bf16 && bf16_tiles ? DType::kBf16
                                                              : d;
}

constexpr StepInfo kSteps[kStepCount] = {
    // step          name             trace            kind              scope          when
    {kEmbeddings,    "embeddings",    "embeddings",    Kind::kEmbeddings, Scope::kForward, When::kAlways},
    {kEmbeddingsProject, "embeddings_project", "embeddings", Kind::kGemm, Scope::kForward, When::kProjected,
     Dim::kE, Dim::kH, Epilogue::kNone, Rows::kTokens, false},
    {kQkv,           "qkv",           "qkv",           Kind::kGemm,       Scope::kLayer,   When::kAlways,
     Dim::kH, Dim::k3H, Epilogue::kNone, Rows::kTokens, true},
    {kAttention,     "attention",     "attention",     Kind::kAttention,  Scope::kLayer,   When::kAlways},
    {kAttentionOut,  "attention_out", "attention_out", Kind::kGemm,       Scope::kLayer,   When::kAlways,
     Dim::kH, Dim::kH, Epilogue::kResidual, Rows::kTokens, true},
    {kLn1,           "ln1",           "layernorm",     Kind::kLayerNorm,  Scope::kLayer,   When::kAlways},
    {kFfnIn,         "ffn_in",        "ffn_in",        Kind::kGemm,       Scope::kLayer,   When::kAlways,
     Dim::kH, Dim::kI, Epilogue::kGelu, Rows::kTokens, true},
    {kFfnOut,        "ffn_out",       "ffn_out",       Kind::kGemm,       Scope::kLayer,   When::kAlways,
     Dim::kI, Dim::kH, Epilogue::kResidual, Rows::kTokens, true, true},
    {kLn2,           "ln2",           "layernorm",     Kind::kLayerNorm,  Scope::kLayer,   When::kAlways},
    {kScatter,       "scatter",       "output",        Kind::kScatter,    Scope::kForward, When::kPadded},
    {kPoolerGather,  "pooler_gather", "output",        Kind::kGather,     Scope::kPooler,  When::kAlways},
    {kPooler,        "pooler",        "output",        Kind::kGemm,       Scope::kPooler,  When::kAlways,
     Dim::kH, Dim::kH, Epilogue::kTanh, Rows::kSequences, false},
};

// Team barriers (parallel_for calls) a step costs in a forward of that dtype: one per team op it runs (ops.h:
// an int8 GEMM is two, the row quantization and the GEMM; a bf16 GEMM rounds its input inside the GEMM).
constexpr int barriers(const StepInfo& s, DType d, bool bf16_tiles) {
    return s.kind != Kind::kGemm                               ? 1
           : kernel_dtype(s, d, bf16_tiles) == DType::kInt8    ? ops::kGemmInt8TeamOps
           : kernel_dtype(s, d, bf16_tiles) == DType::kBf16    ? ops::kGemmBf16TeamOps
                                                               : ops::kGemmTeamOps;
}

// Trace buckets: the distinct `trace` names of kSteps in order of first appearance (embeddings, qkv, attention,
// attention_out, layernorm, ffn_in, ffn_out, output; the embeddings' projection counts as embeddings), derived at
// compile time: there is no second list.
constexpr bool same_name(const char* a, const char* b) {
    while (*a != '\0' && *a == *b) {
        ++a;
        ++b;
    }
    return *a == *b;
}
struct TraceBuckets {
    int of_step[kStepCount] = {};  // the bucket of each step
    int first_step[kStepCount] = {};  // the step that names each bucket
    int count = 0;
};
constexpr TraceBuckets make_trace_buckets() {
    TraceBuckets t;
    for (int s = 0; s < kStepCount; ++s) {
        int bucket = -1;
        for (int b = 0; b < t.count && bucket < 0; ++b)
            if (same_name(kSteps[t.first_step[b]].trace, kSteps[s].trace)) bucket = b;
        if (bucket < 0) {
            bucket = t.count++;
            t.first_step[bucket] = s;
        }
        t.of_step[s] = bucket;
    }
    return t;
}
constexpr TraceBuckets kTraceBuckets = make_trace_buckets();
constexpr int kTraceBucketCount = kTraceBuckets.count;
constexpr int trace_bucket(Step s) { return kTraceBuckets.of_step[s]; }
constexpr const char* trace_name(int bucket) { return kSteps[kTraceBuckets.first_step[bucket]].trace; }

// Names of the enums as _core.forward_ops() spells them.
const char* kind_name(Kind k);
const char* scope_name(Scope s);
const char* when_name(When w);
const char* rows_name(Rows r);
const char* dim_name(Dim d);  // "H", "3H", "I", "E"

}  // namespace forward
}  // namespace bortengine
