// ops.h: the ops tier, between the kernels (kernels.h: raw pointers, no checks, no threads) and the encoder
// (encoder.h: composes ops). Here live the checks at the boundary (shapes and token ids, std::invalid_argument
// with both shapes), the packing of weights and of tokens, the workspaces kernels are handed (kernels never
// allocate), and the team ops: whole-tensor operations that cut their work into chunks (pool.h: chunk_count, the
// one rule) shared by the threads of a Team, and call one ISA's kernels. single_ops.h runs each op on its own for
// the bindings.
//
// Team ops run on the calling thread and spread each op's chunks over the thread pool (pool.h): an op returns
// once all its chunks are done, not once all threads have arrived, so a thread that the OS has descheduled — a
// busy machine, more threads than cores — delays nothing it has not claimed. Team ops check nothing: validate
// before calling them, and size their workspaces before.
//
// Shapes: M = rows, N = output columns, K = depth; B = batch, T = tokens per row, Ntok = real tokens of a batch,
// H = hidden, dh = head size.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "buffer.h"
#include "kernels.h"
#include "pool.h"

namespace bortengine {
namespace ops {

class Team;

// Shapes at the boundary. Arrays cross into the ops tier with their shapes (from the bindings); ops and the
// encoder check them and throw std::invalid_argument naming the argument with both shapes.
using Shape = std::vector<std::int64_t>;
// A borrowed contiguous row-major array and its shape; data null: the argument is absent.
template <class T>
struct ArrayRef {
    const T* data = nullptr;
    Shape shape;
    bool present() const { return data != nullptr; }
};
std::string shape_str(const Shape& s);  // "[2, 3]"
// Throws "<name> has shape [..], expected [..]" unless got == want.
void expect_shape(const Shape& got, const Shape& want, const std::string& name);
// Throws unless threads >= 1.
void check_threads(int threads);
// A relative position bias table [heads, 2P - 1] (kernels.h PositionBias) as the attention kernels read it.
// Throws unless it has that shape for some P >= min_len (the longest sequence it must serve).
PositionBias position_bias(const ArrayRef<float>& table, int heads, int min_len);

// A GEMM B operand packed once for one ISA: from a torch Linear weight w [N, K] (out x in).
struct PackedMatrix {
    const KernelTable* kt = nullptr;
    int K = 0, N = 0;
    AlignedBuffer data;
    std::size_t bytes() const { return data.bytes(); }
};
PackedMatrix pack_linear(const KernelTable& kt, const float* w, int N, int K);

// An int8 GEMM B operand: a torch Linear weight quantized per output channel (symmetric, s8 in [-127, 127]),
// packed for one int8 path, with its scales and per-channel sums (for the activations' zero points).
struct QuantizedMatrix {
    const Int8KernelTable* kt = nullptr;
    int K = 0, N = 0;
    AlignedArray<std::int8_t> data;
    std::vector<float> scale;       // [N]
    std::vector<std::int32_t> sum;  // [N] sum over k of the s8 weights
    std::size_t bytes() const { return data.bytes() + scale.size() * 4 + sum.size() * 4; }
};
// Per output channel: scale[n] = max|w[n, :]| / 127 (1 if the row is zero), q = clamp(nearbyint(w / scale),
// -127, 127). w float [N, K] -> q int8 [N, K], scale [N]. Throws on non-finite weights.
void quantize_weights(const float* w, int N, int K, std::int8_t* q, float* scale);
// From float w [N, K], quantized by quantize_weights.
QuantizedMatrix quantize_linear(const Int8KernelTable& kt, const float* w, int N, int K);
// From already quantized s8 w [N, K] and scales [N] (pre-quantized exports).
QuantizedMatrix pack_quantized_linear(const Int8KernelTable& kt, const std::int8_t* w, const float* scale, int N,
                                      int K);

// A bf16 GEMM B operand: a torch Linear weight as bf16, packed for one bf16 kernel variant.
struct Bf16Matrix {
    const Bf16KernelTable* kt = nullptr;
    int K = 0, N = 0;
    AlignedArray<std::uint16_t> data;
    std::size_t bytes() const { return data.bytes(); }
};
// From float w [N, K], rounded to bf16 (nearest even) by the variant's own rounding (Bf16KernelTable::round).
Bf16Matrix round_linear_bf16(const Bf16KernelTable& kt, const float* w, int N, int K);
// From bf16 w [N, K] (as uint16 bits: a BF16 checkpoint's tensor), packed as it is.
Bf16Matrix pack_linear_bf16(const Bf16KernelTable& kt, const std::uint16_t* w, int N, int K);

// Sequences packed end to end: sequence s is rows [start[s], start[s] + len[s]) of a packed [Ntok, ...] matrix.
struct SequenceLayout {
    std::vector<int> start, len;     // [B]
    std::vector<int> longest_first;  // [B] sequence indices by decreasing length (stable): attention's task order
    int max_len = 0, tokens = 0;     // the longest sequence's length, Ntok
};
// From lengths len [B]; throws std::invalid_argument if one is < 1.
void layout_sequences(const std::vector<int>& len, SequenceLayout& out);

// The real tokens (mask 1) of a batch packed end to end: every op after the embeddings runs over Ntok rows only.
struct PackedTokens {
    std::vector<int> id, pos, type;  // [Ntok] token id, position id (its column t in the batch), token type id
    SequenceLayout seqs;             // where each row's tokens are
};

// What check_tokens holds ids, token types and T against.
struct TokenLimits {
    int vocab, type_vocab, max_positions;
};
// ids, mask, types [B, T] (mask and types may be null: all ones / all zeros): B, T >= 1, T <= max_positions, ids
// in [0, vocab), types in [0, type_vocab), mask of 0 and 1 only with a 1 in every row. Throws
// std::invalid_argument naming the first bad element.
void check_tokens(const std::int64_t* ids, const std::int64_t* mask, const std::int64_t* types, int B, int T,
                  const TokenLimits& limits);
// The shapes check_tokens assumes: ids [B, T], mask and types (when not null) [B, T]. Returns {B, T}.
Shape check_token_shapes(const Shape& ids, const Shape* mask, const Shape* types);
// ids, mask, types [B, T] as check_tokens takes them (and has passed) -> out.
void pack_tokens(const std::int64_t* ids, const std::int64_t* mask, const std::int64_t* types, int B, int T,
                 PackedTokens& out);

// Workspaces. The ops tier sizes them before a parallel region (they grow only; allocation failure throws
// std::bad_alloc there, before any kernel runs) and hands each kernel call its own block: kernels never allocate.
// Their owner keeps them across calls: the encoder one set per encoder, a single op one set per call.

// Per-thread blocks of one 64-byte aligned buffer: team slot s (current_thread()) owns slot(s), `stride`
// elements (a multiple of 64 bytes) from the previous one.
template <class T>
struct PerThread {
    AlignedArray<T> data;
    std::size_t stride = 0;
    void reserve(int threads, std::size_t per_thread) {
        stride = round_up(per_thread, 64 / sizeof(T));
        data.resize(stride * static_cast<std::size_t>(threads));
    }
    T* slot(int s) { return data.data() + static_cast<std::size_t>(s) * stride; }
};

// gemm_team's workspace: per thread, the padded copy of A's blocks (KernelTable::gemm_work_floats).
struct GemmScratch {
    PerThread<float> a;
    // For GEMMs of up to M rows and depth K on `threads` threads.
    void reserve(const KernelTable& kt, int threads, int M, int K) { a.reserve(threads, kt.gemm_work_floats(M, K)); }
};

// gemm_int8_team's workspace: the quantized activations and their per-row scale and zero point, and per thread
// the kernel's own block (Int8KernelTable::gemm_work_bytes: AVX2's widened A).
struct QuantScratch {
    AlignedArray<std::uint8_t> q;
    AlignedArray<float> scale;
    AlignedArray<std::int32_t> zp;
    std::ptrdiff_t ldq = 0;
    PerThread<std::uint8_t> work;
    // For GEMMs of up to M rows and depth K on `threads` threads.
    void reserve(const Int8KernelTable& kt, int threads, int M, int K);
};

// gemm_bf16_team's workspace: per thread, the kernel's block of A rounded to bf16 (Bf16KernelTable::gemm_work_bytes).
struct Bf16Scratch {
    PerThread<std::uint8_t> a;
    // For GEMMs of up to M rows and depth K on `threads` threads.
    void reserve(const Bf16KernelTable& kt, int threads, int M, int K) {
        a.reserve(threads, kt.gemm_work_bytes(M, K));
    }
};

// attention_team's workspace: per thread, attention_scratch_floats(kt, max_len, dh) floats.
struct AttentionScratch {
    PerThread<float> blocks;
    // For sequences of up to max_len tokens and heads of dh columns on `threads` threads.
    void reserve(const KernelTable& kt, int threads, int max_len, int dh) {
        blocks.reserve(threads, attention_scratch_floats(kt, max_len, dh));
    }
};

// The threads of one call: team ops cut their work into chunks run by the caller and up to threads - 1 pool
// workers (pool.h). A Team is used from the calling thread only.
class Team {
  public:
    explicit Team(int threads) : threads_(threads < 1 ? 1 : threads) {}
    int threads() const { return threads_; }
    // Chunks an op of `items` items is cut into (pool.h, chunk_count: the one rule).
    int chunks(int items) const { return chunk_count(threads_, items); }
    // Runs fn(c) for every chunk c in [0, n); returns when all n are done: one team op, one barrier.
    template <class F>
    void parallel_for(int n, F&& fn) {
        ++barriers_;
        bortengine::parallel_for(n, threads_ - 1, ChunkFn(fn));
    }
    // Team ops run so far (the encoder's trace counts them per step against forward.h).
    int barriers() const { return barriers_; }
    // Runs fn(begin, end) for each of the chunks(items) nearly equal ranges of [0, items).
    template <class F>
    void parallel_ranges(int items, F&& fn) {
        const int n = chunks(items);
        parallel_for(n, [&](int c) { fn(chunk_begin(items, n, c), chunk_begin(items, n, c + 1)); });
    }

  private:
    int threads_;
    int barriers_ = 0;
};

// Runs fn(team) on the calling thread with a team of `threads` threads.
template <class F>
void run_team(int threads, F&& fn) {
    Team team(threads);
    fn(team);
}

// Team ops (barriers) of one gemm_team (fp32 or bf16) and gemm_int8_team call; every other team op below is one.
constexpr int kGemmTeamOps = 1, kGemmInt8TeamOps = 2, kGemmBf16TeamOps = 1;

// C[M, B.N] = epilogue(A[M, B.K] · B). Splits columns (panels) into chunks, each streaming only its share of the
// weights, when there are enough of them and M is not large; else rows (ops.cc, split_by_rows). ws reserved for
// M rows of depth B.K.
void gemm_team(Team& team, int M, const float* A, std::ptrdiff_t lda, const PackedMatrix& B, float* C,
               std::ptrdiff_t ldc, const Epilogue& ep, GemmScratch& ws);

// C[M, B.N] = epilogue(dequant(quantize(A) · B)): rows of A are quantized by the team, then the GEMM is split
// like gemm_team. raw_int32 stores the exact int32 sums (tests). qs reserved for M rows of depth B.K.
void gemm_int8_team(Team& team, int M, const float* A, std::ptrdiff_t lda, const QuantizedMatrix& B, float* C,
                    std::ptrdiff_t ldc, const Epilogue& ep, QuantScratch& qs, bool raw_int32 = false);

// C[M, B.N] = epilogue(bf16(A) · B): the kernel rounds A to bf16 as it copies A's blocks (no team op of its own),
// split as for fp32. ws reserved for M rows of depth B.K.
void gemm_team(Team& team, int M, const float* A, std::ptrdiff_t lda, const Bf16Matrix& B, float* C,
               std::ptrdiff_t ldc, const Epilogue& ep, Bf16Scratch& ws);

// y[M, N] = LayerNorm(x (+ r)) row-wise; rows split into chunks. y may alias x.
void layernorm_team(Team& team, const KernelTable& kt, int M, int N, const float* x, const float* r, const float* g,
                    const float* b, float eps, float* y);

// ctx[Ntok, H] = self-attention of the packed sequences of `seqs` over qkv [Ntok, 3H], one task per (sequence,
// head), longest sequences first; with bias's table (max_len >= seqs.max_len), each head's relative position bias
// added to its scores. ws reserved for seqs.max_len and dh = H / heads.
void attention_team(Team& team, AttentionFn attention, const float* qkv, int H, int heads, const SequenceLayout& seqs,
                    const PositionBias& bias, float* ctx, AttentionScratch& ws);

// x[n, H] = LayerNorm(word[id[i]] + position[pos[i]] + token_type[type[i]]) * g + b, row by row (word [V, H],
// position [P, H], token_type [Tt, H], g, b [H]); rows split into chunks. Index: int (the encoder's packed tokens)
// or std::int64_t (the single op).
template <class Index>
void embed_layernorm_team(Team& team, const KernelTable& kt, int n, const Index* id, const Index* pos,
                          const Index* type, int H, const float* word, const float* position,
                          const float* token_type, const float* g, const float* b, float eps, float* x);

// out [B, T, H] from the packed rows x [Ntok, H]: position t of row b takes sequence b's next packed row where
// mask[b, t] (not null) is 1, and zeros where it is 0. Sequences split into chunks.
void scatter_rows_team(Team& team, const SequenceLayout& seqs, const std::int64_t* mask, int T, int H,
                       const float* x, float* out);

// y[n, H] = x[rows[i]] for i < n (x [*, H]): the pooler's first token of each sequence. One chunk: n rows of H
// floats are a few KiB, less than it costs to wake a worker.
void gather_rows_team(Team& team, int n, const int* rows, int H, const float* x, float* y);

// The calling thread's slot in the op it runs (0 = the caller), for per-thread scratch.
inline int current_thread() { return current_slot(); }

// "none", "gelu", "tanh", "residual" <-> Epilogue::Kind (parse throws std::invalid_argument on other names).
Epilogue::Kind parse_epilogue(const std::string& name);
const char* epilogue_name(Epilogue::Kind kind);

}  // namespace ops
}  // namespace bortengine

