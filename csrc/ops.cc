// ops.cc: see ops.h.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>

namespace bortengine {
namespace ops {

namespace {
// How a GEMM is shared: column chunks (each thread reads a disjoint slice of the weights: the dominant memory
// traffic at small M) unless there are too few panels to share, or M is large (batch x tokens >= kRowSplitM):
// then the weights are read once per thread at little cost, and row chunks keep each thread's A block in its
// own L2 across all N panels instead of one chunk's few. Measured paired on this 2-core machine (2 threads,
// bench-style A/B of whole forwards): MiniLM 8x128 +3% float32 and +8% int8, Bort 8x128 +0-3%, 1x128 unchanged.
constexpr int kRowSplitM = 512;
inline bool split_by_rows(int threads, int panels, int M, int mr) {
    return threads > 1 && (panels < 2 * threads || M >= kRowSplitM) && M >= 2 * threads * mr;
}

// One team op for a GEMM of M rows and N columns (panels of nr, micro-kernel rows mr), cut into chunks of column
// panels or of row blocks as split_by_rows says: chunk c runs run(m0, m1, p0, n0, n1, e) for rows [m0, m1),
// panels from p0, columns [n0, n1), with the epilogue e offset to them. The one split of every GEMM dtype.
template <class Run>
void split_gemm(Team& team, int M, int N, int mr, int nr, const Epilogue& ep, Run&& run) {
    const int panels = (N + nr - 1) / nr;
    const bool split_rows = split_by_rows(team.threads(), panels, M, mr);
    const int blocks = (M + mr - 1) / mr;
    const int chunks = team.chunks(split_rows ? blocks : panels);
    team.parallel_for(chunks, [&](int c) {
        int m0 = 0, m1 = M, p0 = 0, p1 = panels;
        if (split_rows) {
            m0 = chunk_begin(blocks, chunks, c) * mr;
            m1 = std::min(M, chunk_begin(blocks, chunks, c + 1) * mr);
        } else {
            p0 = chunk_begin(panels, chunks, c);
            p1 = chunk_begin(panels, chunks, c + 1);
        }
        const int n0 = p0 * nr, n1 = std::min(N, p1 * nr);
        Epilogue e = ep;
        if (e.bias) e.bias += n0;
        if (e.residual) e.residual += m0 * e.ldr + n0;
        if (e.row_scale) e.row_scale += m0;
        run(m0, m1, p0, n0, n1, e);
    });
}
}  // namespace

std::string shape_str(const Shape& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

void expect_shape(const Shape& got, const Shape& want, const std::string& name) {
    if (got != want)
        throw std::invalid_argument(name + " has shape " + shape_str(got) + ", expected " + shape_str(want));
}

void check_threads(int threads) {
    if (threads < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(threads));
}

PositionBias position_bias(const ArrayRef<float>& table, int heads, int min_len) {
    const Shape& s = table.shape;
    const std::int64_t width = 2 * static_cast<std::int64_t>(min_len) - 1;
    if (s.size() != 2 || s[0] != heads || s[1] % 2 == 0 || s[1] < width)
        throw std::invalid_argument("position bias has shape " + shape_str(s) + ", expected [" +
                                    std::to_string(heads) + ", 2P - 1] (heads, distances -(P-1)..P-1) with P >= " +
                                    std::to_string(min_len));
    return {table.data, static_cast<int>((s[1] + 1) / 2)};
}

namespace {
void check_linear_size(int N, int K) {
    if (N <= 0 || K <= 0)
        throw std::invalid_argument("linear weight must have positive sizes, got [" + std::to_string(N) + ", " +
                                    std::to_string(K) + "]");
}

// An empty packed operand of a linear weight [N, K] for kernel table kt (fp32, int8 or bf16).
template <class Matrix, class Table>
Matrix linear_operand(const Table& kt, int N, int K) {
    check_linear_size(N, K);
    Matrix m;
    m.kt = &kt;
    m.K = K;
    m.N = N;
    return m;
}
}  // namespace

PackedMatrix pack_linear(const KernelTable& kt, const float* w, int N, int K) {
    PackedMatrix m = linear_operand<PackedMatrix>(kt, N, K);
    m.data.resize(packed_b_floats(kt, K, N));
    kt.pack_b(K, N, w, 1, K, m.data.data());  // element (k, n) of B = w[n][k]
    return m;
}

void gemm_team(Team& team, int M, const float* A, std::ptrdiff_t lda, const PackedMatrix& B, float* C,
               std::ptrdiff_t ldc, const Epilogue& ep, GemmScratch& ws) {
    const KernelTable& kt = *B.kt;
    const std::ptrdiff_t panel = static_cast<std::ptrdiff_t>(B.K) * kt.nr;  // floats per packed panel
    split_gemm(team, M, B.N, kt.mr, kt.nr, ep, [&](int m0, int m1, int p0, int n0, int n1, const Epilogue& e) {
        kt.gemm(m1 - m0, n1 - n0, B.K, A + m0 * lda, lda, B.data.data() + p0 * panel, C + m0 * ldc + n0, ldc, e,
                ws.a.slot(current_slot()));
    });
}

QuantizedMatrix pack_quantized_linear(const Int8KernelTable& kt, const std::int8_t* w, const float* scale, int N,
                                      int K) {
    QuantizedMatrix m = linear_operand<QuantizedMatrix>(kt, N, K);
    m.data.resize(kt.packed_b_bytes(K, N));
    kt.pack_b(K, N, w, m.data.data());
    m.scale.assign(scale, scale + N);
    m.sum.assign(N, 0);
    for (int n = 0; n < N; ++n) {
        std::int32_t s = 0;
        for (int k = 0; k < K; ++k) {
            const int v = w[static_cast<std::ptrdiff_t>(n) * K + k];
            if (v < -127 || v > 127)
                throw std::invalid_argument("quantized weights must lie in [-127, 127], got " + std::to_string(v));
            s += v;
        }
        m.sum[n] = s;
    }
    return m;
}

void quantize_weights(const float* w, int N, int K, std::int8_t* q, float* scale) {
    for (int n = 0; n < N; ++n) {
        const float* row = w + static_cast<std::ptrdiff_t>(n) * K;
        float mx = 0.0f;
        for (int k = 0; k < K; ++k) {
            if (!std::isfinite(row[k]))
                throw std::invalid_argument("weight row " + std::to_string(n) + " has a non-finite value");
            mx = std::max(mx, std::fabs(row[k]));
        }
        const float s = mx > 0.0f ? mx / 127.0f : 1.0f;
        scale[n] = s;
        for (int k = 0; k < K; ++k)
            q[static_cast<std::ptrdiff_t>(n) * K + k] =
                static_cast<std::int8_t>(std::max(-127.0f, std::min(127.0f, std::nearbyint(row[k] / s))));
    }
}

QuantizedMatrix quantize_linear(const Int8KernelTable& kt, const float* w, int N, int K) {
    check_linear_size(N, K);
    std::vector<std::int8_t> q(static_cast<std::size_t>(N) * K);
    std::vector<float> scale(N);
    quantize_weights(w, N, K, q.data(), scale.data());
    return pack_quantized_linear(kt, q.data(), scale.data(), N, K);
}

void QuantScratch::reserve(const Int8KernelTable& kt, int threads, int M, int K) {
    ldq = static_cast<std::ptrdiff_t>(round_up(static_cast<std::size_t>(K), 64)) + 64;  // + 64: no 4 KiB aliasing
    q.resize(static_cast<std::size_t>(M) * ldq);
    scale.resize(M);
    zp.resize(M);
    work.reserve(threads, kt.gemm_work_bytes(M, K));
}

void gemm_int8_team(Team& team, int M, const float* A, std::ptrdiff_t lda, const QuantizedMatrix& B, float* C,
                    std::ptrdiff_t ldc, const Epilogue& ep, QuantScratch& qs, bool raw_int32) {
    const Int8KernelTable& kt = *B.kt;
    team.parallel_ranges(M, [&](int m0, int m1) {  // quantize the rows of A
        kt.quantize_rows(m1 - m0, B.K, A + m0 * lda, lda, qs.q.data() + m0 * qs.ldq, qs.ldq, qs.scale.data() + m0,
                         qs.zp.data() + m0);
    });
    const std::size_t panel_bytes = kt.packed_b_bytes(B.K, kt.nr);
    split_gemm(team, M, B.N, kt.mr, kt.nr, ep, [&](int m0, int m1, int p0, int n0, int n1, const Epilogue& e) {
        kt.gemm(m1 - m0, n1 - n0, B.K, qs.q.data() + m0 * qs.ldq, qs.ldq, qs.scale.data() + m0, qs.zp.data() + m0,
                B.data.data() + p0 * panel_bytes, B.scale.data() + n0, B.sum.data() + n0, C + m0 * ldc + n0, ldc, e,
                raw_int32, qs.work.slot(current_slot()));
    });
}

Bf16Matrix pack_linear_bf16(const Bf16KernelTable& kt, const std::uint16_t* w, int N, int K) {
    Bf16Matrix m = linear_operand<Bf16Matrix>(kt, N, K);
    m.data.resize(packed_b_bf16_elems(kt, K, N));
    kt.pack_b(K, N, w, m.data.data());
    return m;
}

Bf16Matrix round_linear_bf16(const Bf16KernelTable& kt, const float* w, int N, int K) {
    check_linear_size(N, K);
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(N) * K);
    kt.round(static_cast<std::ptrdiff_t>(bits.size()), w, bits.data());
    return pack_linear_bf16(kt, bits.data(), N, K);
}

void gemm_team(Team& team, int M, const float* A, std::ptrdiff_t lda, const Bf16Matrix& B, float* C,
               std::ptrdiff_t ldc, const Epilogue& ep, Bf16Scratch& ws) {
    const Bf16KernelTable& kt = *B.kt;
    const std::ptrdiff_t panel = static_cast<std::ptrdiff_t>(round_up(B.K, kt.kgroup)) * kt.nr;  // bf16 per panel
    split_gemm(team, M, B.N, kt.mr, kt.nr, ep, [&](int m0, int m1, int p0, int n0, int n1, const Epilogue& e) {
        kt.gemm(m1 - m0, n1 - n0, B.K, A + m0 * lda, lda, B.data.data() + p0 * panel, C + m0 * ldc + n0, ldc, e,
                ws.a.slot(current_slot()));
    });
}

void layernorm_team(Team& team, const KernelTable& kt, int M, int N, const float* x, const float* r,
                    const float* g, const float* b, float eps, float* y) {
    team.parallel_ranges(M, [&](int m0, int m1) {
        kt.layernorm(m1 - m0, N, x + static_cast<std::ptrdiff_t>(m0) * N, N,
                     r ? r + static_cast<std::ptrdiff_t>(m0) * N : nullptr, N, g, b, eps,
                     y + static_cast<std::ptrdiff_t>(m0) * N, N);
    });
}

void attention_team(Team& team, AttentionFn attention, const float* qkv, int H, int heads, const SequenceLayout& seqs,
                    const PositionBias& bias, float* ctx, AttentionScratch& ws) {
    const int dh = H / heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
    const std::ptrdiff_t ld = 3 * static_cast<std::ptrdiff_t>(H);
    team.parallel_for(static_cast<int>(seqs.longest_first.size()) * heads, [&](int t) {
        float* mine = ws.blocks.slot(current_slot());
        const int s = seqs.longest_first[t / heads], h = t % heads;
        const float* base = qkv + seqs.start[s] * ld + h * dh;
        attention(seqs.len[s], dh, base, base + H, base + 2 * H, ld, scale, bias.head(h),
                  ctx + seqs.start[s] * H + h * dh, H, mine);
    });
}

template <class Index>
void embed_layernorm_team(Team& team, const KernelTable& kt, int n, const Index* id, const Index* pos,
                          const Index* type, int H, const float* word, const float* position,
                          const float* token_type, const float* g, const float* b, float eps, float* x) {
    team.parallel_ranges(n, [&](int i0, int i1) {
        for (int i = i0; i < i1; ++i)
            kt.embed_layernorm(H, word + static_cast<std::ptrdiff_t>(id[i]) * H,
                               position + static_cast<std::ptrdiff_t>(pos[i]) * H,
                               token_type + static_cast<std::ptrdiff_t>(type[i]) * H, g, b, eps,
                               x + static_cast<std::ptrdiff_t>(i) * H);
    });
}
template void embed_layernorm_team<int>(Team&, const KernelTable&, int, const int*, const int*, const int*, int,
                                        const float*, const float*, const float*, const float*, const float*, float,
                                        float*);
template void embed_layernorm_team<std::int64_t>(Team&, const KernelTable&, int, const std::int64_t*,
                                                 const std::int64_t*, const std::int64_t*, int, const float*,
                                                 const float*, const float*, const float*, const float*, float,
                                                 float*);

void scatter_rows_team(Team& team, const SequenceLayout& seqs, const std::int64_t* mask, int T, int H,
                       const float* x, float* out) {
    team.parallel_ranges(static_cast<int>(seqs.start.size()), [&](int b0, int b1) {
        for (int b = b0; b < b1; ++b) {
            int k = seqs.start[b];
            for (int t = 0; t < T; ++t) {
                float* o = out + (static_cast<std::ptrdiff_t>(b) * T + t) * H;
                if (mask[static_cast<std::size_t>(b) * T + t])
                    std::memcpy(o, x + static_cast<std::ptrdiff_t>(k++) * H, sizeof(float) * H);
                else
                    std::memset(o, 0, sizeof(float) * H);
            }
        }
    });
}

void gather_rows_team(Team& team, int n, const int* rows, int H, const float* x, float* y) {
    team.parallel_for(1, [&](int) {
        for (int i = 0; i < n; ++i)
            std::memcpy(y + static_cast<std::ptrdiff_t>(i) * H, x + static_cast<std::ptrdiff_t>(rows[i]) * H,
                        sizeof(float) * H);
    });
}

namespace {
std::string at(int b, int t) { return "[" + std::to_string(b) + ", " + std::to_string(t) + "]"; }

// start, longest_first, max_len and tokens from len.
void finish_layout(SequenceLayout& s) {
    const int B = static_cast<int>(s.len.size());
    s.start.resize(B);
    int next = 0;
    for (int b = 0; b < B; ++b) {
        s.start[b] = next;
        next += s.len[b];
    }
    s.tokens = next;
    s.longest_first.resize(B);
    std::iota(s.longest_first.begin(), s.longest_first.end(), 0);
    std::stable_sort(s.longest_first.begin(), s.longest_first.end(),
                     [&](int a, int b) { return s.len[a] > s.len[b]; });
    s.max_len = B > 0 ? s.len[s.longest_first[0]] : 0;
}
}  // namespace

void layout_sequences(const std::vector<int>& len, SequenceLayout& out) {
    for (int l : len)
        if (l < 1) throw std::invalid_argument("every sequence length must be >= 1");
    out.len = len;
    finish_layout(out);
}

void check_tokens(const std::int64_t* ids, const std::int64_t* mask, const std::int64_t* types, int B, int T,
                  const TokenLimits& limits) {
    if (B < 1 || T < 1)
        throw std::invalid_argument("input_ids must be a non-empty [batch, tokens] array, got [" + std::to_string(B) +
                                    ", " + std::to_string(T) + "]");
    if (T > limits.max_positions)
        throw std::invalid_argument("sequence length " + std::to_string(T) + " exceeds max_position_embeddings " +
                                    std::to_string(limits.max_positions) + "; truncate the input");
    for (int b = 0; b < B; ++b) {
        int real = 0;
        for (int t = 0; t < T; ++t) {
            const std::size_t i = static_cast<std::size_t>(b) * T + t;
            if (ids[i] < 0 || ids[i] >= limits.vocab)
                throw std::invalid_argument("input_ids" + at(b, t) + " = " + std::to_string(ids[i]) +
                                            " is outside the vocabulary [0, " + std::to_string(limits.vocab) + ")");
            if (types && (types[i] < 0 || types[i] >= limits.type_vocab))
                throw std::invalid_argument("token_type_ids" + at(b, t) + " = " + std::to_string(types[i]) +
                                            " is outside [0, " + std::to_string(limits.type_vocab) + ")");
            if (mask && mask[i] != 0 && mask[i] != 1)
                throw std::invalid_argument("attention_mask" + at(b, t) + " = " + std::to_string(mask[i]) +
                                            "; the mask must hold only 0 and 1");
            real += mask ? static_cast<int>(mask[i]) : 1;
        }
        if (real == 0)
            throw std::invalid_argument("attention_mask row " + std::to_string(b) +
                                        " has no token with mask 1; every sequence needs at least one token");
    }
}

Shape check_token_shapes(const Shape& ids, const Shape* mask, const Shape* types) {
    if (ids.size() != 2)
        throw std::invalid_argument("input_ids must have shape [batch, tokens], got " + shape_str(ids));
    if (mask) expect_shape(*mask, ids, "attention_mask");
    if (types) expect_shape(*types, ids, "token_type_ids");
    return ids;
}

void pack_tokens(const std::int64_t* ids, const std::int64_t* mask, const std::int64_t* types, int B, int T,
                 PackedTokens& out) {
    out.id.clear();
    out.pos.clear();
    out.type.clear();
    out.seqs.len.assign(B, 0);
    for (int b = 0; b < B; ++b) {
        const std::size_t before = out.id.size();
        for (int t = 0; t < T; ++t) {
            const std::size_t i = static_cast<std::size_t>(b) * T + t;
            if (mask && mask[i] == 0) continue;
            out.id.push_back(static_cast<int>(ids[i]));
            out.pos.push_back(t);
            out.type.push_back(types ? static_cast<int>(types[i]) : 0);
        }
        out.seqs.len[b] = static_cast<int>(out.id.size() - before);
    }
    finish_layout(out.seqs);
}

Epilogue::Kind parse_epilogue(const std::string& name) {
    if (name == "none") return Epilogue::kNone;
    if (name == "gelu") return Epilogue::kGelu;
    if (name == "tanh") return Epilogue::kTanh;
    if (name == "residual") return Epilogue::kResidual;
    throw std::invalid_argument("unknown epilogue '" + name + "'; expected one of: none, gelu, tanh, residual");
}

const char* epilogue_name(Epilogue::Kind kind) {
    switch (kind) {
        case Epilogue::kNone: return "none";
        case Epilogue::kGelu: return "gelu";
        case Epilogue::kTanh: return "tanh";
        case Epilogue::kResidual: return "residual";
    }
    return "";
}

}  // namespace ops
}  // namespace bortengine
