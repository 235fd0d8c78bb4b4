// kernels.h: the table of raw-pointer kernels each ISA path provides, and the GEMM epilogue descriptor.
//
// Three tiers (see STYLE.md): kernels (this table, one per ISA, pointers in, no checks, no threads, no
// allocation: workspaces are passed in), ops (ops.h: shape checks, workspaces, work split across threads, kernel
// choice), the encoder (encoder.h: composes ops only).
//
// Shape legend used across csrc/: M = rows (tokens), N = output columns, K = reduction depth, H = hidden size,
// T = tokens of one sequence, dh = head size. All matrices are row-major float32 with an explicit leading
// dimension (ld*, in elements).
//
// GEMM naming: gemm_f32_<isa>_<MR>x<NR>, MR = rows of C per microkernel call (each a broadcast of A),
// NR = columns of C per call (NR/W vector registers of width W).
#pragma once
#include <cstddef>
#include <cstdint>

namespace bortengine {

// What the GEMM does to each finished C element c = alpha * (A·B)[i,j]:
//   c *= row_scale[i]            (if row_scale)   -- attention: 1/softmax-denominator per query row
//   c += bias[j]                 (if bias)
//   c = gelu(c) | tanh(c) | c + residual[i,j]      (by kind)
// Pointers are already offset to the block the kernel computes.
struct Epilogue {
    enum Kind : int { kNone = 0, kGelu = 1, kTanh = 2, kResidual = 3 };
    Kind kind = kNone;
    float alpha = 1.0f;
    const float* bias = nullptr;       // [N]
    const float* residual = nullptr;   // [M, N] with leading dimension ldr
    std::ptrdiff_t ldr = 0;
    const float* row_scale = nullptr;  // [M]
};

struct KernelTable {
    const char* isa;        // "avx512", "avx2", "scalar"
    const char* gemm_name;  // e.g. "gemm_f32_avx512_14x32"
    int mr;                 // rows per microkernel
    int nr;                 // columns per packed B panel

    // Packs B (K x N; element (k, n) at b[k*ldk + n*ldn]) into ceil(N/nr) panels, each [K][nr] contiguous,
    // zero-padded past N. `packed` holds packed_b_floats(K, N) floats.
    void (*pack_b)(int K, int N, const float* b, std::ptrdiff_t ldk, std::ptrdiff_t ldn, float* packed);

    // C[M,N] = epilogue(A[M,K] · B) on one thread. Bp is packed by pack_b with panel stride K*nr; a column
    // block starting at panel p is Bp + p*K*nr. work: this call's own gemm_work_floats(M, K) floats, 64-byte
    // aligned (the padded copies of A's blocks); the kernel allocates nothing.
    void (*gemm)(int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* Bp, float* C,
                 std::ptrdiff_t ldc, const Epilogue& ep, float* work);
    std::size_t (*gemm_work_floats)(int M, int K);

    // y[i] = LayerNorm(x[i] (+ r[i])) * g + b over rows of length N. y may alias x. r may be null.
    void (*layernorm)(int M, int N, const float* x, std::ptrdiff_t ldx, const float* r, std::ptrdiff_t ldr,
                      const float* g, const float* b, float eps, float* y, std::ptrdiff_t ldy);

    // Self-attention of one sequence and one head: q, k, v point at the head's first column of row 0 of a
    // [T, ld] buffer (the QKV GEMM output); out[T, dh] with leading dimension ldo. scratch holds
    // attention_scratch_floats(T, dh) floats. bias: null, or the head's relative position bias (MPNet) at
    // distance 0 (PositionBias::head): bias[j - i] is added to the scaled score of query i and key j, so it is
    // read from bias[-(T-1)] to bias[T-1].
    void (*attention)(int T, int dh, const float* q, const float* k, const float* v, std::ptrdiff_t ld,
                      float scale, const float* bias, float* out, std::ptrdiff_t ldo, float* scratch);

    // y[i] = x[i] * 0.5 * (1 + erf(x[i] / sqrt(2))), exact-erf GELU as BERT uses.
    void (*gelu)(std::ptrdiff_t n, const float* x, float* y);
    // y[i] = tanh(x[i])
    void (*tanh)(std::ptrdiff_t n, const float* x, float* y);

    // x[N] = word[N] + pos[N] + type[N], then LayerNorm with g, b into y[N] (one token).
    void (*embed_layernorm)(int N, const float* word, const float* pos, const float* type, const float* g,
                            const float* b, float eps, float* y);
};

// int8 GEMM: activations quantized per row (token) to u8 with a zero point, weights per output channel to
// symmetric s8; int32 accumulation; dequantization fused into the epilogue:
//   c[i,j] = epilogue( float(sum_k q_a[i,k] * q_w[j,k] - zp[i] * wsum[j]) * a_scale[i] * w_scale[j] )
// Naming: gemm_u8s8_<isa>_<MR>x<NR>.
struct Int8KernelTable {
    const char* isa;        // "avx512vnni", "avx2", "scalar"
    const char* gemm_name;
    int mr, nr;
    int kgroup;             // K is padded to a multiple of this (products summed per int32 lane; AMX: a tile row)

    std::size_t (*packed_b_bytes)(int K, int N);
    // w: s8 [N, K] (a quantized torch Linear weight) -> packed panels for this path.
    void (*pack_b)(int K, int N, const std::int8_t* w, void* packed);
    // Per row of a [M, K]: mn = min(0, min a), mx = max(0, max a), scale = (mx - mn) / 255 (1 if 0),
    // zp = nearbyint(-mn / scale), q = clamp(nearbyint(a * (1 / scale)) + zp, 0, 255); row padding up to
    // round_up(K, kgroup) is zero. q rows are ldq bytes apart.
    void (*quantize_rows)(int M, int K, const float* a, std::ptrdiff_t lda, std::uint8_t* q, std::ptrdiff_t ldq,
                          float* scale, std::int32_t* zp);
    // C[M, N] = epilogue(dequantized q_a · B). raw_int32: store the int32 sums (minus zp * wsum) instead, for
    // exact tests. work: this call's own gemm_work_bytes(M, K) bytes, 64-byte aligned (AVX2: A widened to s16;
    // 0 bytes on the other paths); the kernel allocates nothing.
    void (*gemm)(int M, int N, int K, const std::uint8_t* qa, std::ptrdiff_t ldq, const float* a_scale,
                 const std::int32_t* a_zp, const void* Bp, const float* w_scale, const std::int32_t* w_sum, float* C,
                 std::ptrdiff_t ldc, const Epilogue& ep, bool raw_int32, void* work);
    std::size_t (*gemm_work_bytes)(int M, int K);
};

// bf16 GEMM: weights rounded to bf16 once (at load) and packed; each block of activations rounded to bf16 as it is
// packed (the A block copy every GEMM makes); a product of two bf16 is exact in fp32, products accumulate in fp32;
// the fp32 epilogue. Rounding everywhere: to nearest even, NaN kept (quiet), subnormals to a signed zero: what
// AVX512_BF16's vcvtneps2bf16 does (and its vdpbf16ps reads subnormal inputs as zero), so every variant sees the
// same bf16 operands. Variants (of one ISA path; isa.h bf16_kernels_for): "amx" (tdpbf16ps tiles), "avx512bf16"
// (vdpbf16ps), "avx512" and "avx2" (bf16 widened to fp32 by a 16-bit shift, then FMA: the same products, exactly),
// "scalar".
// Naming: gemm_bf16_<variant>_<MR>x<NR>.
// Packed B: ceil(N/nr) panels, each [D/2][nr][2] bf16 (as uint16 bits, D = K rounded up to kgroup): the 32-bit
// pair of column j for k-pair g holds k = 2g (low half) and 2g+1 (high half), zero-padded past K and N. One vector
// load then feeds vdpbf16ps directly, or widens into the fp32 columns of k = 2g and of k = 2g + 1; on AMX 16 pair
// rows of 16 columns are one B tile (rows 2 * nr bf16 apart).
struct Bf16KernelTable {
    const char* variant;    // "amx", "avx512bf16", "avx512", "avx2", "scalar"
    const char* isa;        // the path it belongs to: "avx512", "avx2", "scalar"
    const char* gemm_name;  // e.g. "gemm_bf16_avx512bf16_14x32"
    int mr, nr;
    int kgroup;             // panels are K rounded up to a multiple of this deep (2: a pair; AMX: a tile's 32)

    // w: bf16 [N, K] -> packed panels (packed_b_bf16_elems(K, N) uint16). Subnormals become signed zeros.
    void (*pack_b)(int K, int N, const std::uint16_t* w, std::uint16_t* packed);
    // C[M, N] = epilogue(bf16(A[M, K]) · Bp). work: this call's own gemm_work_bytes(M, K) bytes, 64-byte aligned
    // (A's blocks rounded to bf16, or for the emulations to bf16 values held as fp32); the kernel allocates nothing.
    void (*gemm)(int M, int N, int K, const float* A, std::ptrdiff_t lda, const std::uint16_t* Bp, float* C,
                 std::ptrdiff_t ldc, const Epilogue& ep, void* work);
    std::size_t (*gemm_work_bytes)(int M, int K);
    // dst[i] = bf16(src[i]) for n values, rounded as this variant rounds A (and the ops tier rounds weights).
    void (*round)(std::ptrdiff_t n, const float* src, std::uint16_t* dst);
};

inline std::size_t round_up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }
inline std::size_t packed_b_bf16_elems(const Bf16KernelTable& kt, int K, int N) {
    return round_up(static_cast<std::size_t>(K), kt.kgroup) * round_up(static_cast<std::size_t>(N), kt.nr);
}
inline std::size_t packed_b_floats(const KernelTable& kt, int K, int N) {
    return static_cast<std::size_t>(K) * round_up(static_cast<std::size_t>(N), kt.nr);
}
// Query rows processed per block in attention (the score block is kAttnQueryBlock x T).
constexpr int kAttnQueryBlock = 64;
// The bf16 attention's panels are at most this many columns wide (its GEMM tile, BE_BF16_NR, is a build option).
constexpr int kMaxBf16PanelWidth = 64;
// Scratch floats of one attention call of either kernel a path may run on a sequence of T tokens and a head of dh:
// the fp32 attention's (K^T and V packed in panels of kt.nr, the score block, 1 / row sums, the query block) or
// the bf16 one's (K^T, V, the query block and the probabilities in bf16 panels, the fp32 score block and sums),
// whichever is larger (with AMX's C block), plus the 64-byte alignments.
inline std::size_t attention_scratch_floats(const KernelTable& kt, int T, int dh) {
    const std::size_t QB = kAttnQueryBlock, t = T, d = dh;
    const std::size_t tp = round_up(t, kt.nr), dp = round_up(d, kt.nr);
    const std::size_t fp32 = d * tp + t * dp + QB * tp + QB + QB * d;
    const std::size_t t2 = round_up(t, 32), d2 = round_up(d, 32);  // whole k pairs, or AMX's tile rows of 32
    const std::size_t tb = t + kMaxBf16PanelWidth - 1, db = d + kMaxBf16PanelWidth - 1;  // >= any panel rounding
    const std::size_t stage = 32 * 32 + 16;  // AMX's staged C block, 64-byte aligned
    const std::size_t bf16 = (d2 * tb + t2 * db + QB * (d2 + t2) + 1) / 2 + QB * tb + QB + stage;
    return (fp32 > bf16 ? fp32 : bf16) + 64;
}

// An attention kernel (the signature of KernelTable::attention).
using AttentionFn = void (*)(int T, int dh, const float* q, const float* k, const float* v, std::ptrdiff_t ld,
                             float scale, const float* bias, float* out, std::ptrdiff_t ldo, float* scratch);

// A relative position bias (MPNet's): table [heads, 2P - 1], the same in every layer. Row h holds head h's bias
// for a key d = j - i tokens after its query (d in (-P, P), negative: before it) at column P - 1 + d. It depends on
// the distance only, so one table serves every sequence of up to P tokens, packed anywhere in a batch.
struct PositionBias {
    const float* table = nullptr;  // null: no bias (every other family)
    int max_len = 0;               // P
    // What an attention kernel takes for head h: its distance-0 entry (null without a table).
    const float* head(int h) const {
        return table ? table + static_cast<std::ptrdiff_t>(h) * (2 * max_len - 1) + (max_len - 1) : nullptr;
    }
};

// One table per compiled ISA (kernels_<isa>.cc, kernels_int8_<isa>.cc, kernels_bf16_<variant>.cc). Only call a
// table whose ISA isa.h says is runnable.
const KernelTable* scalar_kernels();
const Int8KernelTable* scalar_int8_kernels();
const Bf16KernelTable* scalar_bf16_kernels();
#if defined(BORTENGINE_X86)
const KernelTable* avx2_kernels();
const KernelTable* avx512_kernels();
const Int8KernelTable* avx2_int8_kernels();
const Int8KernelTable* avx512vnni_int8_kernels();
const Int8KernelTable* amx_int8_kernels();         // kernels_int8_amx.cc: needs AMX-INT8 and the OS's leave
const Bf16KernelTable* avx2_bf16_kernels();
const Bf16KernelTable* avx512_bf16_kernels();
const Bf16KernelTable* avx512bf16_bf16_kernels();  // kernels_bf16_avx512bf16.cc: needs AVX512_BF16
const Bf16KernelTable* amx_bf16_kernels();         // kernels_bf16_amx.cc: needs AMX-BF16 and the OS's leave
AttentionFn bf16_attention_avx512();                // kernels_bf16_avx512bf16.cc: needs AVX512_BF16
AttentionFn bf16_attention_amx();                   // kernels_bf16_amx.cc: needs AMX-BF16 and the OS's leave
#endif

}  // namespace bortengine
