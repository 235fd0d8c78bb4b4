// single_ops.cc: see single_ops.h.
#include "single_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <utility>

#include "isa.h"
#include "kernels_ref.h"

namespace bortengine {
namespace ops {

namespace {
// Throws "<name> must be <dims>, got [..]" unless s has two dimensions.
void expect_matrix(const Shape& s, const std::string& name, const char* dims) {
    if (s.size() != 2) throw std::invalid_argument(name + " must be " + dims + ", got " + shape_str(s));
}

std::int64_t elements(const Shape& s) {
    std::int64_t n = 1;
    for (std::int64_t d : s) n *= d;
    return n;
}

// a [M, K] against a linear of depth K and width N; residual [M, N] for the residual epilogue. Returns [M, N].
Shape check_linear_input(int K, int N, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                         const ArrayRef<float>& residual) {
    if (a.shape.size() != 2 || a.shape[1] != K)
        throw std::invalid_argument("a has shape " + shape_str(a.shape) + ", expected [M, " + std::to_string(K) +
                                    "]");
    const std::int64_t M = a.shape[0];
    if (kind == Epilogue::kResidual) {
        if (!residual.present()) throw std::invalid_argument("epilogue 'residual' needs a residual array");
        expect_shape(residual.shape, {M, N}, "residual");
    }
    check_threads(threads);
    return {M, N};
}

Epilogue linear_epilogue(const float* bias, Epilogue::Kind kind, const ArrayRef<float>& residual, int N) {
    Epilogue ep;
    ep.kind = kind;
    ep.bias = bias;
    if (kind == Epilogue::kResidual) {
        ep.residual = residual.data;
        ep.ldr = N;
    }
    return ep;
}

// A [N, K] weight and its optional bias [N]; returns {N, K}.
std::pair<int, int> check_weight(const ArrayRef<float>& bias, const Shape& w) {
    expect_matrix(w, "w", "[N, K]");
    if (bias.present()) expect_shape(bias.shape, {w[0]}, "bias");
    return {static_cast<int>(w[0]), static_cast<int>(w[1])};
}

// A single-op Linear (fp32, int8 or bf16) of weight w [N, K] packed by pack(w.data, N, K), and its borrowed bias [N].
template <class Linear, class W, class Pack>
Linear make_linear(const ArrayRef<W>& w, const ArrayRef<float>& bias, Pack&& pack) {
    const auto nk = check_weight(bias, w.shape);
    Linear lin;
    lin.w = pack(w.data, nk.first, nk.second);
    lin.bias = bias.data;
    return lin;
}

// c [M, N] = epilogue(a · lin), on the team op gemm_team of lin's dtype, in lin's kept workspace.
template <class Linear>
void run_linear(const Linear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                const ArrayRef<float>& residual, float* c) {
    const int M = static_cast<int>(check_linear(lin, threads, a, kind, residual)[0]), K = lin.w.K, N = lin.w.N;
    const Epilogue ep = linear_epilogue(lin.bias, kind, residual, N);
    std::lock_guard<std::mutex> lock(lin.work->mu);
    auto& ws = lin.work->scratch;
    ws.reserve(*lin.w.kt, threads, M, K);
    run_team(threads, [&](Team& t) { gemm_team(t, M, a.data, K, lin.w, c, N, ep, ws); });
}
}  // namespace

// ----- float32

PackedLinear make_packed_linear(const KernelTable& kt, const ArrayRef<float>& w, const ArrayRef<float>& bias) {
    return make_linear<PackedLinear>(w, bias, [&](const float* d, int N, int K) { return pack_linear(kt, d, N, K); });
}

Shape check_linear(const PackedLinear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                   const ArrayRef<float>& residual) {
    return check_linear_input(lin.w.K, lin.w.N, threads, a, kind, residual);
}

void linear(const PackedLinear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
            const ArrayRef<float>& residual, float* c) {
    run_linear(lin, threads, a, kind, residual, c);
}

Shape check_gemm_ref(const ArrayRef<float>& a, const ArrayRef<float>& w, const ArrayRef<float>& bias,
                     Epilogue::Kind kind, const ArrayRef<float>& residual) {
    if (a.shape.size() != 2 || w.shape.size() != 2 || a.shape[1] != w.shape[1])
        throw std::invalid_argument("a " + shape_str(a.shape) + " and w " + shape_str(w.shape) +
                                    " must be [M, K] and [N, K]");
    const std::int64_t M = a.shape[0], N = w.shape[0];
    if (bias.present()) expect_shape(bias.shape, {N}, "bias");
    if (kind == Epilogue::kResidual) {
        if (!residual.present()) throw std::invalid_argument("epilogue 'residual' needs a residual array");
        expect_shape(residual.shape, {M, N}, "residual");
    }
    return {M, N};
}

void gemm_ref(const ArrayRef<float>& a, const ArrayRef<float>& w, const ArrayRef<float>& bias, Epilogue::Kind kind,
              const ArrayRef<float>& residual, float* c) {
    const Shape out = check_gemm_ref(a, w, bias, kind, residual);
    ref::gemm(static_cast<int>(out[0]), static_cast<int>(out[1]), static_cast<int>(a.shape[1]), a.data, w.data,
              bias.data, kind, kind == Epilogue::kResidual ? residual.data : nullptr, c);
}

Shape check_layernorm(int threads, const ArrayRef<float>& x, const ArrayRef<float>& g, const ArrayRef<float>& b,
                      const ArrayRef<float>& r) {
    expect_matrix(x.shape, "x", "[M, N]");
    const std::int64_t M = x.shape[0], N = x.shape[1];
    expect_shape(g.shape, {N}, "weight");
    expect_shape(b.shape, {N}, "bias");
    if (r.present()) expect_shape(r.shape, {M, N}, "residual");
    check_threads(threads);
    return {M, N};
}

void layernorm(const KernelTable& kt, int threads, const ArrayRef<float>& x, const ArrayRef<float>& g,
               const ArrayRef<float>& b, float eps, const ArrayRef<float>& r, float* y) {
    const Shape s = check_layernorm(threads, x, g, b, r);
    const int M = static_cast<int>(s[0]), N = static_cast<int>(s[1]);
    run_team(threads, [&](Team& t) { layernorm_team(t, kt, M, N, x.data, r.data, g.data, b.data, eps, y); });
}

void layernorm_ref(const ArrayRef<float>& x, const ArrayRef<float>& g, const ArrayRef<float>& b, float eps,
                   const ArrayRef<float>& r, float* y) {
    const Shape s = check_layernorm(1, x, g, b, r);
    ref::layernorm(static_cast<int>(s[0]), static_cast<int>(s[1]), x.data, r.data, g.data, b.data, eps, y);
}

namespace {
// The bias of an attention call checked against its sequences (no table when absent).
PositionBias attention_bias(const ArrayRef<float>& bias, int heads, const std::vector<int>& seq_lens) {
    if (!bias.present()) return {};
    return position_bias(bias, heads, *std::max_element(seq_lens.begin(), seq_lens.end()));
}
}  // namespace

Shape check_attention(int threads, const ArrayRef<float>& qkv, const std::vector<int>& seq_lens, int heads,
                      const ArrayRef<float>& bias) {
    if (qkv.shape.size() != 2 || qkv.shape[1] % 3 != 0)
        throw std::invalid_argument("qkv must be [Ntok, 3H], got " + shape_str(qkv.shape));
    const std::int64_t H = qkv.shape[1] / 3;
    if (heads < 1 || H % heads != 0)
        throw std::invalid_argument("H = " + std::to_string(H) + " is not divisible by num_heads = " +
                                    std::to_string(heads));
    std::int64_t total = 0;
    for (int l : seq_lens) {
        if (l < 1) throw std::invalid_argument("every sequence length must be >= 1");
        total += l;
    }
    if (seq_lens.empty() || total != qkv.shape[0])
        throw std::invalid_argument("seq_lens sum to " + std::to_string(total) + " but qkv has " +
                                    std::to_string(qkv.shape[0]) + " rows");
    attention_bias(bias, heads, seq_lens);
    check_threads(threads);
    return {qkv.shape[0], H};
}

AttentionFn attention_kernel(const std::string& isa, bool bf16, const std::string& kernel) {
    const KernelTable& kt = kernels_for(isa);
    if (!bf16) return kt.attention;
    const std::vector<NamedAttention> variants = bf16_attention_variants();
    if (std::string(kt.isa) != "avx512" || variants.empty())
        throw std::invalid_argument("bf16 attention needs the avx512 path on a CPU with AVX512_BF16");
    if (kernel.empty()) return variants.front().fn;  // asked for bf16: the best that runs, as the encoders may not
    std::string names;
    for (const NamedAttention& a : variants) {
        if (kernel == a.name) return a.fn;
        names += (names.empty() ? "" : ", ") + std::string(a.name);
    }
    throw std::invalid_argument("bf16 attention '" + kernel + "' does not run here; it runs: " + names);
}

void attention(const KernelTable& kt, AttentionFn kernel, int threads, const ArrayRef<float>& qkv,
               const std::vector<int>& seq_lens, int heads, const ArrayRef<float>& bias, float* ctx) {
    const int H = static_cast<int>(check_attention(threads, qkv, seq_lens, heads, bias)[1]);
    const PositionBias b = attention_bias(bias, heads, seq_lens);
    SequenceLayout seqs;
    layout_sequences(seq_lens, seqs);
    AttentionScratch ws;
    ws.reserve(kt, threads, seqs.max_len, H / heads);
    run_team(threads, [&](Team& t) { attention_team(t, kernel, qkv.data, H, heads, seqs, b, ctx, ws); });
}

void attention_ref(const ArrayRef<float>& qkv, const std::vector<int>& seq_lens, int heads,
                   const ArrayRef<float>& bias, float* ctx) {
    const int H = static_cast<int>(check_attention(1, qkv, seq_lens, heads, bias)[1]);
    ref::attention(qkv.data, H, heads, seq_lens, attention_bias(bias, heads, seq_lens), ctx);
}

Shape check_embed_layernorm(int threads, const ArrayRef<std::int64_t>& ids, const ArrayRef<std::int64_t>& positions,
                            const ArrayRef<std::int64_t>& types, const ArrayRef<float>& word,
                            const ArrayRef<float>& position, const ArrayRef<float>& token_type,
                            const ArrayRef<float>& g, const ArrayRef<float>& b) {
    expect_matrix(word.shape, "word embeddings", "[V, H]");
    const std::int64_t n = elements(ids.shape), H = word.shape[1];
    expect_shape(ids.shape, {n}, "ids");
    expect_shape(positions.shape, {n}, "positions");
    expect_shape(types.shape, {n}, "token types");
    if (position.shape.size() != 2 || position.shape[1] != H)
        throw std::invalid_argument("position embeddings must be [P, H] with H = " + std::to_string(H) + ", got " +
                                    shape_str(position.shape));
    if (token_type.shape.size() != 2 || token_type.shape[1] != H)
        throw std::invalid_argument("type embeddings must be [Tt, H] with H = " + std::to_string(H) + ", got " +
                                    shape_str(token_type.shape));
    expect_shape(g.shape, {H}, "LayerNorm weight");
    expect_shape(b.shape, {H}, "LayerNorm bias");
    auto in_table = [](const ArrayRef<std::int64_t>& v, std::int64_t i, std::int64_t rows, const char* name) {
        if (v.data[i] < 0 || v.data[i] >= rows)
            throw std::invalid_argument(std::string(name) + "[" + std::to_string(i) + "] = " +
                                        std::to_string(v.data[i]) + " is out of range [0, " + std::to_string(rows) +
                                        ")");
    };
    for (std::int64_t i = 0; i < n; ++i) {
        in_table(ids, i, word.shape[0], "ids");
        in_table(positions, i, position.shape[0], "positions");
        in_table(types, i, token_type.shape[0], "token types");
    }
    check_threads(threads);
    return {n, H};
}

void embed_layernorm(const KernelTable& kt, int threads, const ArrayRef<std::int64_t>& ids,
                     const ArrayRef<std::int64_t>& positions, const ArrayRef<std::int64_t>& types,
                     const ArrayRef<float>& word, const ArrayRef<float>& position, const ArrayRef<float>& token_type,
                     const ArrayRef<float>& g, const ArrayRef<float>& b, float eps, float* y) {
    const Shape s = check_embed_layernorm(threads, ids, positions, types, word, position, token_type, g, b);
    const int n = static_cast<int>(s[0]), H = static_cast<int>(s[1]);
    run_team(threads, [&](Team& t) {
        embed_layernorm_team(t, kt, n, ids.data, positions.data, types.data, H, word.data, position.data,
                             token_type.data, g.data, b.data, eps, y);
    });
}

void gelu(const KernelTable& kt, std::ptrdiff_t n, const float* x, float* y) { kt.gelu(n, x, y); }

void gelu_ref(std::ptrdiff_t n, const float* x, float* y) {
    for (std::ptrdiff_t i = 0; i < n; ++i) y[i] = ref::gelu(x[i]);
}

// ----- int8

QuantizedLinear make_quantized_linear(const Int8KernelTable& kt, const ArrayRef<float>& w,
                                      const ArrayRef<float>& bias) {
    return make_linear<QuantizedLinear>(w, bias,
                                        [&](const float* d, int N, int K) { return quantize_linear(kt, d, N, K); });
}

QuantizedLinear make_quantized_linear(const Int8KernelTable& kt, const ArrayRef<std::int8_t>& w,
                                      const ArrayRef<float>& scale, const ArrayRef<float>& bias) {
    const auto nk = check_weight(bias, w.shape);
    if (!scale.present()) throw std::invalid_argument("int8 weights need their per-channel scale [N]");
    expect_shape(scale.shape, {nk.first}, "scale");
    QuantizedLinear lin;
    lin.w = pack_quantized_linear(kt, w.data, scale.data, nk.first, nk.second);
    lin.bias = bias.data;
    return lin;
}

Shape check_quantized_linear(const QuantizedLinear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                             const ArrayRef<float>& residual) {
    return check_linear_input(lin.w.K, lin.w.N, threads, a, kind, residual);
}

void quantized_linear(const QuantizedLinear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                      const ArrayRef<float>& residual, bool raw, void* c) {
    const int M = static_cast<int>(check_quantized_linear(lin, threads, a, kind, residual)[0]);
    const int K = lin.w.K, N = lin.w.N;
    const Epilogue ep = linear_epilogue(lin.bias, kind, residual, N);
    std::lock_guard<std::mutex> lock(lin.work->mu);
    QuantScratch& qs = lin.work->scratch;
    qs.reserve(*lin.w.kt, threads, M, K);
    run_team(threads, [&](Team& t) {
        gemm_int8_team(t, M, a.data, K, lin.w, static_cast<float*>(c), N, ep, qs, raw);
    });
}

Shape check_quantize_weights(const ArrayRef<float>& w) {
    expect_matrix(w.shape, "w", "[N, K]");
    return w.shape;
}

void quantize_weights(const ArrayRef<float>& w, std::int8_t* q, float* scale) {
    const Shape s = check_quantize_weights(w);
    quantize_weights(w.data, static_cast<int>(s[0]), static_cast<int>(s[1]), q, scale);
}

Shape check_quantize_rows(const Int8KernelTable& kt, const ArrayRef<float>& a) {
    expect_matrix(a.shape, "a", "[M, K]");
    return {a.shape[0], static_cast<std::int64_t>(round_up(static_cast<std::size_t>(a.shape[1]), kt.kgroup))};
}

void quantize_rows(const Int8KernelTable& kt, const ArrayRef<float>& a, std::uint8_t* q, float* scale,
                   std::int32_t* zp) {
    const Shape s = check_quantize_rows(kt, a);
    const int M = static_cast<int>(s[0]), K = static_cast<int>(a.shape[1]);
    kt.quantize_rows(M, K, a.data, K, q, s[1], scale, zp);
}

Shape check_quantize_rows_ref(const ArrayRef<float>& a) {
    expect_matrix(a.shape, "a", "[M, K]");
    return a.shape;
}

void quantize_rows_ref(const ArrayRef<float>& a, std::uint8_t* q, float* scale, std::int32_t* zp) {
    const Shape s = check_quantize_rows_ref(a);
    ref::quantize_rows(static_cast<int>(s[0]), static_cast<int>(s[1]), a.data, q, scale, zp);
}

Shape check_gemm_u8s8_i32_ref(const ArrayRef<std::uint8_t>& qa, const ArrayRef<std::int32_t>& zp,
                              const ArrayRef<std::int8_t>& w) {
    if (qa.shape.size() != 2 || w.shape.size() != 2 || qa.shape[1] != w.shape[1])
        throw std::invalid_argument("qa " + shape_str(qa.shape) + " and w " + shape_str(w.shape) +
                                    " must be [M, K], [N, K]");
    expect_shape(zp.shape, {qa.shape[0]}, "zp");
    return {qa.shape[0], w.shape[0]};
}

void gemm_u8s8_i32_ref(const ArrayRef<std::uint8_t>& qa, const ArrayRef<std::int32_t>& zp,
                       const ArrayRef<std::int8_t>& w, std::int32_t* c) {
    const Shape s = check_gemm_u8s8_i32_ref(qa, zp, w);
    ref::gemm_u8s8_i32(static_cast<int>(s[0]), static_cast<int>(s[1]), static_cast<int>(qa.shape[1]), qa.data,
                       zp.data, w.data, c);
}

// ----- bf16

Bf16Linear make_bf16_linear(const Bf16KernelTable& kt, const ArrayRef<float>& w, const ArrayRef<float>& bias) {
    return make_linear<Bf16Linear>(w, bias,
                                   [&](const float* d, int N, int K) { return round_linear_bf16(kt, d, N, K); });
}

Bf16Linear make_bf16_linear(const Bf16KernelTable& kt, const ArrayRef<std::uint16_t>& w,
                            const ArrayRef<float>& bias) {
    return make_linear<Bf16Linear>(
        w, bias, [&](const std::uint16_t* d, int N, int K) { return pack_linear_bf16(kt, d, N, K); });
}

Shape check_linear(const Bf16Linear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                   const ArrayRef<float>& residual) {
    return check_linear_input(lin.w.K, lin.w.N, threads, a, kind, residual);
}

void linear(const Bf16Linear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
            const ArrayRef<float>& residual, float* c) {
    run_linear(lin, threads, a, kind, residual, c);
}

void round_bf16(const Bf16KernelTable& kt, const ArrayRef<float>& x, std::uint16_t* y) {
    kt.round(elements(x.shape), x.data, y);
}

void round_bf16_ref(const ArrayRef<float>& x, std::uint16_t* y) {
    const std::int64_t n = elements(x.shape);
    for (std::int64_t i = 0; i < n; ++i) y[i] = ref::bf16(x.data[i]);
}

// ----- sentence pooling

Shape check_pool(const ArrayRef<float>& hidden, const ArrayRef<std::int64_t>& mask,
                 const std::vector<PoolMode>& modes) {
    if (hidden.shape.size() != 3)
        throw std::invalid_argument("hidden has shape " + shape_str(hidden.shape) + ", expected [B, T, H]");
    const std::int64_t B = hidden.shape[0], T = hidden.shape[1], H = hidden.shape[2];
    expect_shape(mask.shape, {B, T}, "mask");
    if (modes.empty()) throw std::invalid_argument("pooling needs at least one mode");
    if (T < 1 && std::find(modes.begin(), modes.end(), PoolMode::Cls) != modes.end())
        throw std::invalid_argument("cls pooling needs at least one token per row");
    return {B, H * static_cast<std::int64_t>(modes.size())};
}

// Sums run over the tokens in order, in float32, as NumPy's sum over that axis does; the norm in double.
void pool(const ArrayRef<float>& hidden, const ArrayRef<std::int64_t>& mask, const std::vector<PoolMode>& modes,
          bool normalize, float* out) {
    const Shape s = check_pool(hidden, mask, modes);
    const std::int64_t B = hidden.shape[0], T = hidden.shape[1], H = hidden.shape[2], W = s[1];
    std::vector<float> total(static_cast<std::size_t>(H));
    for (std::int64_t b = 0; b < B; ++b) {
        const float* rows = hidden.data + b * T * H;
        const std::int64_t* m = mask.data + b * T;
        float* o = out + b * W;
        for (std::size_t k = 0; k < modes.size(); ++k, o += H) {
            const PoolMode mode = modes[k];
            if (mode == PoolMode::Cls) {
                std::copy(rows, rows + H, o);
            } else if (mode == PoolMode::Max) {
                std::fill(o, o + H, -std::numeric_limits<float>::infinity());
                for (std::int64_t t = 0; t < T; ++t) {
                    const float* x = rows + t * H;
                    for (std::int64_t h = 0; h < H; ++h) {
                        const float v = m[t] > 0 ? x[h] : -1e9f;
                        if (v > o[h] || std::isnan(v)) o[h] = v;   // a NaN stays, as NumPy's max keeps it
                    }
                }
            } else {
                float count = 0.0f;
                std::fill(total.begin(), total.end(), 0.0f);
                for (std::int64_t t = 0; t < T; ++t) {
                    const float w = static_cast<float>(m[t]);
                    const float* x = rows + t * H;
                    for (std::int64_t h = 0; h < H; ++h) total[h] += x[h] * w;
                    count += w;
                }
                count = std::max(count, 1e-9f);
                const float d = mode == PoolMode::Mean ? count : std::sqrt(count);
                for (std::int64_t h = 0; h < H; ++h) o[h] = total[h] / d;
            }
        }
        if (normalize) {  // torch.nn.functional.normalize(p=2, eps=1e-12)
            float* row = out + b * W;
            double squares = 0.0;
            for (std::int64_t j = 0; j < W; ++j) squares += static_cast<double>(row[j]) * row[j];
            const float norm = std::max(static_cast<float>(std::sqrt(squares)), 1e-12f);
            for (std::int64_t j = 0; j < W; ++j) row[j] /= norm;
        }
    }
}

}  // namespace ops
}  // namespace bortengine
