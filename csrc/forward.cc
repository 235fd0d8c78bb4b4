// forward.cc: see forward.h. Compile-time checks that the step table is well formed, and the names of its enums.
#include "forward.h"

#include <stdexcept>

namespace bortengine {

DType parse_dtype(const std::string& name) {
    for (DType d : kDTypes)
        if (name == dtype_name(d)) return d;
    throw std::invalid_argument("dtype must be 'float32', 'int8' or 'bf16', got '" + name + "'");
}

const char* dtype_name(DType d) {
    switch (d) {
        case DType::kFloat32: return "float32";
        case DType::kInt8: return "int8";
        case DType::kBf16: return "bf16";
    }
    return "";
}

namespace forward {

namespace {
constexpr bool steps_in_order() {
    for (int s = 0; s < kStepCount; ++s)
        if (kSteps[s].step != s) return false;
    return true;
}
constexpr bool names_unique() {
    for (int s = 0; s < kStepCount; ++s)
        for (int r = 0; r < s; ++r)
            if (same_name(kSteps[r].name, kSteps[s].name)) return false;
    return true;
}
constexpr bool gemm_fields_only_on_gemms() {
    for (const StepInfo& s : kSteps)
        if ((s.kind == Kind::kGemm) != (s.K != Dim::kNone && s.N != Dim::kNone && s.rows != Rows::kNone))
            return false;
    return true;
}
static_assert(steps_in_order(), "kSteps[s].step must be s");
static_assert(names_unique(), "step names must be unique");
static_assert(gemm_fields_only_on_gemms(), "K, N and rows are set exactly on the GEMM steps");
// The trace keys are public API (Engine.op_times): embeddings, qkv, attention, attention_out, layernorm, ffn_in,
// ffn_out, output.
static_assert(kTraceBucketCount == 8, "the trace buckets changed: Engine.op_times keys are public API");
}  // namespace

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::kEmbeddings: return "embeddings";
        case Kind::kGemm: return "gemm";
        case Kind::kAttention: return "attention";
        case Kind::kLayerNorm: return "layernorm";
        case Kind::kScatter: return "scatter";
        case Kind::kGather: return "gather";
    }
    return "";
}

const char* scope_name(Scope s) {
    switch (s) {
        case Scope::kForward: return "forward";
        case Scope::kLayer: return "layer";
        case Scope::kPooler: return "pooler";
    }
    return "";
}

const char* when_name(When w) {
    switch (w) {
        case When::kAlways: return "always";
        case When::kPadded: return "padded";
        case When::kProjected: return "projected";
    }
    return "";
}

const char* rows_name(Rows r) {
    switch (r) {
        case Rows::kNone: return "";
        case Rows::kTokens: return "tokens";
        case Rows::kSequences: return "sequences";
    }
    return "";
}

const char* dim_name(Dim d) {
    switch (d) {
        case Dim::kNone: return "";
        case Dim::kH: return "H";
        case Dim::k3H: return "3H";
        case Dim::kI: return "I";
        case Dim::kE: return "E";
    }
    return "";
}

}  // namespace forward
}  // namespace bortengine
