// encoder.cc: see encoder.h. One forward runs on the calling thread as the steps of forward.h: check and pack the
// tokens, size the workspace, then one team op (ops.h) per step, whose chunks are shared with the pool's workers
// (pool.h). No thread is created per call and no op waits for a thread that has no work in it.
#include "encoder.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

namespace bortengine {

Encoder::Encoder(const EncoderConfig& cfg, int num_threads, const KernelTable& kt, DType dtype)
    : cfg_(cfg), kt_(kt), kt8_(int8_kernels_for(kt.isa)), kt16_(bf16_kernels_for(kt.isa)), dtype_(dtype),
      bf16_tiles_(bf16_on_tiles(kt.isa)), threads_(1),
      attention_(dtype != DType::kFloat32 ? bf16_attention_for(kt.isa, &attention_name_) : kt.attention),
      attention_f32_(kt.attention) {
    if (dtype == DType::kFloat32) attention_name_ = std::string(kt.isa) == "avx512" ? "attention_f32_avx512"
                                                    : std::string(kt.isa) == "avx2"  ? "attention_f32_avx2"
                                                                                     : "attention_f32_scalar";
    auto pos = [](int v, const char* name) {
        if (v <= 0) throw std::invalid_argument(std::string(name) + " must be positive, got " + std::to_string(v));
    };
    pos(cfg.hidden, "hidden_size");
    pos(cfg.layers, "num_hidden_layers");
    pos(cfg.heads, "num_attention_heads");
    pos(cfg.intermediate, "intermediate_size");
    pos(cfg.vocab, "vocab_size");
    pos(cfg.max_positions, "max_position_embeddings");
    pos(cfg.type_vocab, "type_vocab_size");
    if (cfg_.embedding == 0) cfg_.embedding = cfg.hidden;  // BERT's tables: H wide, nothing to project
    pos(cfg_.embedding, "embedding_size");
    if (cfg.hidden % cfg.heads != 0)
        throw std::invalid_argument("hidden_size " + std::to_string(cfg.hidden) +
                                    " is not divisible by num_attention_heads " + std::to_string(cfg.heads));
    if (!(cfg.eps > 0)) throw std::invalid_argument("layer_norm_eps must be positive");
    set_num_threads(num_threads);
    layers_.resize(cfg.layers);
}

void Encoder::set_num_threads(int n) {
    ops::check_threads(n);
    threads_.store(n, std::memory_order_relaxed);
}

void Encoder::set_embeddings(const ops::ArrayRef<float>& word, const ops::ArrayRef<float>& position,
                             const ops::ArrayRef<float>& token_type, const ops::ArrayRef<float>& ln_w,
                             const ops::ArrayRef<float>& ln_b) {
    const std::int64_t E = cfg_.embedding;
    ops::expect_shape(word.shape, {cfg_.vocab, E}, "word embeddings");
    ops::expect_shape(position.shape, {cfg_.max_positions, E}, "position embeddings");
    ops::expect_shape(token_type.shape, {cfg_.type_vocab, E}, "token type embeddings");
    ops::expect_shape(ln_w.shape, {E}, "embeddings LayerNorm weight");
    ops::expect_shape(ln_b.shape, {E}, "embeddings LayerNorm bias");
    std::unique_lock<std::shared_mutex> lock(mu_);
    word_ = word.data;
    pos_ = position.data;
    type_ = token_type.data;
    emb_ln_w_.assign(ln_w.data, ln_w.data + E);
    emb_ln_b_.assign(ln_b.data, ln_b.data + E);
}

Encoder::Linear Encoder::fp32_linear(const ops::ArrayRef<float>& w, const ops::ArrayRef<float>& b, int N, int K,
                                     const std::string& name) const {
    ops::expect_shape(w.shape, {N, K}, name + " weight");
    ops::expect_shape(b.shape, {N}, name + " bias");
    Linear l;
    l.f32 = ops::pack_linear(kt_, w.data, N, K);
    l.bias.assign(b.data, b.data + N);
    return l;
}

void Encoder::set_embedding_projection(const ops::ArrayRef<float>& w, const ops::ArrayRef<float>& b) {
    if (!projects_embeddings())
        throw std::invalid_argument("embedding_size is hidden_size (" + std::to_string(cfg_.hidden) +
                                    "): this encoder has no embedding projection");
    Linear p = fp32_linear(w, b, cfg_.hidden, cfg_.embedding, "embedding projection");
    std::unique_lock<std::shared_mutex> lock(mu_);
    projection_ = std::move(p);
    projection_set_ = true;
}

void Encoder::set_position_bias(const ops::ArrayRef<float>& table) {
    const PositionBias b = ops::position_bias(table, cfg_.heads, cfg_.max_positions);
    std::vector<float> copy(table.data, table.data + static_cast<std::size_t>(cfg_.heads) * (2 * b.max_len - 1));
    std::unique_lock<std::shared_mutex> lock(mu_);
    position_bias_ = std::move(copy);
    bias_len_ = b.max_len;
}

namespace {
// The six linear weights of a layer, in the order of check_linear_weights' shapes.
constexpr const char* kLinearNames[6] = {"q", "k", "v", "ao", "i", "o"};

// Q, K and V become one [3H, H] weight (and [3H] scales or bias): one GEMM produces all three.
template <class E>
std::vector<E> concat3(const E* a, const E* b, const E* c, std::size_t n) {
    std::vector<E> v(3 * n);
    std::memcpy(v.data(), a, sizeof(E) * n);
    std::memcpy(v.data() + n, b, sizeof(E) * n);
    std::memcpy(v.data() + 2 * n, c, sizeof(E) * n);
    return v;
}

// The values of n bf16 bits, widened exactly.
std::vector<float> widened(const std::uint16_t* bits, std::size_t n) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint32_t b = static_cast<std::uint32_t>(bits[i]) << 16;
        std::memcpy(&v[i], &b, sizeof(float));
    }
    return v;
}
}  // namespace

void Encoder::check_layer(int index, const LayerWeights& w, bool converted) const {
    if (index < 0 || index >= cfg_.layers)
        throw std::invalid_argument("layer index " + std::to_string(index) + " out of range [0, " +
                                    std::to_string(cfg_.layers) + ")");
    const std::int64_t H = cfg_.hidden, I = cfg_.intermediate;
    const std::string p = "layer " + std::to_string(index) + " ";
    if (!converted) {
        ops::expect_shape(w.q_w.shape, {H, H}, p + "query weight");
        ops::expect_shape(w.k_w.shape, {H, H}, p + "key weight");
        ops::expect_shape(w.v_w.shape, {H, H}, p + "value weight");
        ops::expect_shape(w.ao_w.shape, {H, H}, p + "attention output weight");
        ops::expect_shape(w.i_w.shape, {I, H}, p + "intermediate weight");
        ops::expect_shape(w.o_w.shape, {H, I}, p + "output weight");
    }
    for (const auto* v : {&w.q_b, &w.k_b, &w.v_b, &w.ao_b, &w.ln1_w, &w.ln1_b, &w.o_b, &w.ln2_w, &w.ln2_b})
        ops::expect_shape(v->shape, {H}, p + "bias/LayerNorm vector");
    ops::expect_shape(w.i_b.shape, {I}, p + "intermediate bias");
}

void Encoder::check_linear_weights(int index, const ops::Shape* const (&got)[6]) const {
    const std::int64_t H = cfg_.hidden, I = cfg_.intermediate;
    const ops::Shape want[6] = {{H, H}, {H, H}, {H, H}, {H, H}, {I, H}, {H, I}};
    for (int t = 0; t < 6; ++t)
        ops::expect_shape(*got[t], want[t], "layer " + std::to_string(index) + " " + kLinearNames[t] + "_w");
}

void Encoder::store_layer(int index, Layer&& L, const LayerWeights& w) {
    const int H = cfg_.hidden, I = cfg_.intermediate;
    L.qkv.bias = concat3(w.q_b.data, w.k_b.data, w.v_b.data, H);
    L.ao.bias.assign(w.ao_b.data, w.ao_b.data + H);
    L.ln1_w.assign(w.ln1_w.data, w.ln1_w.data + H);
    L.ln1_b.assign(w.ln1_b.data, w.ln1_b.data + H);
    L.ffn_in.bias.assign(w.i_b.data, w.i_b.data + I);
    L.ffn_out.bias.assign(w.o_b.data, w.o_b.data + H);
    L.ln2_w.assign(w.ln2_w.data, w.ln2_w.data + H);
    L.ln2_b.assign(w.ln2_b.data, w.ln2_b.data + H);
    L.set = true;
    std::unique_lock<std::shared_mutex> lock(mu_);
    layers_[index] = std::move(L);
}

void Encoder::set_layer(int index, const LayerWeights& w, DType layer_dtype) {
    if (layer_dtype != dtype_ && layer_dtype != DType::kFloat32 &&
        !(dtype_ == DType::kInt8 && layer_dtype == DType::kBf16))
        throw std::invalid_argument(std::string("a layer of a ") + dtype_name(dtype_) + " encoder runs in " +
                                    dtype_name(dtype_) + " or float32" + (dtype_ == DType::kInt8 ? " or bf16" : "") +
                                    ", not " + dtype_name(layer_dtype));
    check_layer(index, w, false);
    const int H = cfg_.hidden, I = cfg_.intermediate;
    const std::size_t HH = static_cast<std::size_t>(H) * H;
    Layer L;
    L.dtype = layer_dtype;
    const std::vector<float> qkv = concat3(w.q_w.data, w.k_w.data, w.v_w.data, HH);
    pack(L.qkv, forward::kQkv, L.dtype, qkv.data(), 3 * H, H);
    pack(L.ao, forward::kAttentionOut, L.dtype, w.ao_w.data, H, H);
    pack(L.ffn_in, forward::kFfnIn, L.dtype, w.i_w.data, I, H);
    pack(L.ffn_out, forward::kFfnOut, L.dtype, w.o_w.data, H, I);
    store_layer(index, std::move(L), w);
}

std::vector<DType> Encoder::layer_dtypes() const {
    std::shared_lock<std::shared_mutex> lock(mu_);
    std::vector<DType> out;
    for (const auto& L : layers_) out.push_back(L.set ? L.dtype : dtype_);
    return out;
}

void Encoder::pack(Linear& l, forward::Step step, DType d, const float* w, int N, int K) const {
    const std::size_t n = static_cast<std::size_t>(N) * K;
    switch (kernel_dtype(step, d)) {
        case DType::kInt8:
            if (forward::kSteps[step].int8_in_bf16) {
                // run int8 on this CPU, but stored as bf16 by an int8 export (int8_in_bf16): quantized from their
                // bf16 values here too, so an export and the weights it came from load to the same encoder
                std::vector<std::uint16_t> bits(n);
                kt16_.round(static_cast<std::ptrdiff_t>(n), w, bits.data());
                l.i8 = ops::quantize_linear(kt8_, widened(bits.data(), n).data(), N, K);
            } else {
                l.i8 = ops::quantize_linear(kt8_, w, N, K);
            }
            break;
        case DType::kBf16: l.bf16 = ops::round_linear_bf16(kt16_, w, N, K); break;
        case DType::kFloat32: l.f32 = ops::pack_linear(kt_, w, N, K); break;
    }
}

void Encoder::set_layer_quantized(int index, const LayerWeights& w, const QuantizedLayerWeights& q) {
    if (dtype_ != DType::kInt8) throw std::invalid_argument("pre-quantized weights need an int8 encoder");
    check_layer(index, w, true);
    const std::int64_t H = cfg_.hidden, I = cfg_.intermediate;
    const bool ffn_out_bf16 = q.o_w_bf16.present();
    check_linear_weights(index, {&q.q_w.shape, &q.k_w.shape, &q.v_w.shape, &q.ao_w.shape, &q.i_w.shape,
                                 ffn_out_bf16 ? &q.o_w_bf16.shape : &q.o_w.shape});
    const ops::ArrayRef<float>* scales[] = {&q.q_s, &q.k_s, &q.v_s, &q.ao_s, &q.i_s, &q.o_s};
    const std::int64_t outs[] = {H, H, H, H, I, H};
    for (int t = 0; t < (ffn_out_bf16 ? 5 : 6); ++t)
        ops::expect_shape(scales[t]->shape, {outs[t]},
                          "layer " + std::to_string(index) + " " + kLinearNames[t] + "_s");
    static_assert(!forward::kSteps[forward::kQkv].int8_in_bf16 &&
                      !forward::kSteps[forward::kAttentionOut].int8_in_bf16 &&
                      !forward::kSteps[forward::kFfnIn].int8_in_bf16,
                  "set_layer_quantized packs QKV, attention out and FFN in for the int8 kernels; FFN out as "
                  "kernel_dtype says");
    const std::size_t HH = static_cast<std::size_t>(H) * H;
    Layer L;
    L.dtype = dtype_;
    const std::vector<std::int8_t> qkv = concat3(q.q_w.data, q.k_w.data, q.v_w.data, HH);
    const std::vector<float> qkv_s = concat3(q.q_s.data, q.k_s.data, q.v_s.data, static_cast<std::size_t>(H));
    L.qkv.i8 = ops::pack_quantized_linear(kt8_, qkv.data(), qkv_s.data(), 3 * H, H);
    L.ao.i8 = ops::pack_quantized_linear(kt8_, q.ao_w.data, q.ao_s.data, H, H);
    L.ffn_in.i8 = ops::pack_quantized_linear(kt8_, q.i_w.data, q.i_s.data, I, H);
    const bool run_bf16 = kernel_dtype(forward::kFfnOut) == DType::kBf16;
    if (ffn_out_bf16 && run_bf16) {
        L.ffn_out.bf16 = ops::pack_linear_bf16(kt16_, q.o_w_bf16.data, H, I);
    } else if (!ffn_out_bf16 && !run_bf16) {
        L.ffn_out.i8 = ops::pack_quantized_linear(kt8_, q.o_w.data, q.o_s.data, H, I);
    } else if (ffn_out_bf16) {  // bf16 weights run int8 (no tiles): their values quantized, as pack() does
        L.ffn_out.i8 = ops::quantize_linear(kt8_, widened(q.o_w_bf16.data, static_cast<std::size_t>(H) * I).data(),
                                            H, I);
    } else {  // an export from before FFN out left int8, run on tiles: its s8 weights times their scales, rounded
        std::vector<float> o(static_cast<std::size_t>(H) * I);
        for (std::size_t i = 0; i < o.size(); ++i) o[i] = q.o_w.data[i] * q.o_s.data[i / static_cast<std::size_t>(I)];
        L.ffn_out.bf16 = ops::round_linear_bf16(kt16_, o.data(), H, I);
    }
    store_layer(index, std::move(L), w);
}

void Encoder::set_layer_bf16(int index, const LayerWeights& w, const Bf16LayerWeights& b) {
    if (dtype_ != DType::kBf16) throw std::invalid_argument("bf16 weights need a bf16 encoder");
    check_layer(index, w, true);
    check_linear_weights(index,
                         {&b.q_w.shape, &b.k_w.shape, &b.v_w.shape, &b.ao_w.shape, &b.i_w.shape, &b.o_w.shape});
    const int H = cfg_.hidden, I = cfg_.intermediate;
    Layer L;
    L.dtype = dtype_;
    const std::vector<std::uint16_t> qkv =
        concat3(b.q_w.data, b.k_w.data, b.v_w.data, static_cast<std::size_t>(H) * H);
    L.qkv.bf16 = ops::pack_linear_bf16(kt16_, qkv.data(), 3 * H, H);
    L.ao.bf16 = ops::pack_linear_bf16(kt16_, b.ao_w.data, H, H);
    L.ffn_in.bf16 = ops::pack_linear_bf16(kt16_, b.i_w.data, I, H);
    L.ffn_out.bf16 = ops::pack_linear_bf16(kt16_, b.o_w.data, H, I);
    store_layer(index, std::move(L), w);
}

void Encoder::set_pooler(const ops::ArrayRef<float>& w, const ops::ArrayRef<float>& b) {
    Linear p = fp32_linear(w, b, cfg_.hidden, cfg_.hidden, "pooler");
    std::unique_lock<std::shared_mutex> lock(mu_);
    pooler_ = std::move(p);
    pooler_set_ = true;
}

bool Encoder::ready() const {
    if (!word_ || (projects_embeddings() && !projection_set_)) return false;
    for (const auto& L : layers_)
        if (!L.set) return false;
    return true;
}

std::size_t Encoder::packed_bytes() const {
    std::size_t n = pooler_.bytes() + projection_.bytes();
    for (const auto& L : layers_) n += L.qkv.bytes() + L.ao.bytes() + L.ffn_in.bytes() + L.ffn_out.bytes();
    return n;
}

namespace {
std::int64_t steady_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
}  // namespace

bool Encoder::warm_caches(double min_idle_s) {
    if (forwards_running_.load(std::memory_order_acquire) > 0 || warmer_.running()) return false;
    // idle since the last forward, and since the last reads: a call that finds the reads done needs no others
    const std::int64_t last = std::max(last_forward_end_.load(std::memory_order_acquire),
                                       last_warm_.load(std::memory_order_relaxed));
    const std::int64_t now = steady_ns();
    if (last != 0 && static_cast<double>(now - last) < min_idle_s * 1e9) return false;
    if (!warmer_.start()) return false;
    last_warm_.store(now, std::memory_order_relaxed);
    return true;
}

void Encoder::read_weights(const std::atomic<bool>& stop) const {
    std::shared_lock<std::shared_mutex> lock(mu_);  // the setters replace what is read here
    std::uint64_t sum = 0;
    // one load per 64-byte line (the hardware prefetchers follow the stream); stop is read every 64 KiB
    constexpr std::size_t kLine = 64, kBetweenStops = 64 << 10;
    auto read = [&](const void* p, std::size_t bytes) {
        const unsigned char* c = static_cast<const unsigned char*>(p);
        for (std::size_t at = 0; at < bytes; at += kBetweenStops) {
            if (stop.load(std::memory_order_relaxed)) return false;
            const std::size_t end = std::min(bytes, at + kBetweenStops);
            for (std::size_t i = at; i < end; i += kLine) sum += c[i];
        }
        return true;
    };
    auto vec = [&](const std::vector<float>& v) { return read(v.data(), v.size() * sizeof(float)); };
    auto linear = [&](const Linear& l) {
        return read(l.f32.data.data(), l.f32.data.bytes()) && read(l.i8.data.data(), l.i8.data.bytes()) &&
               read(l.i8.scale.data(), l.i8.scale.size() * 4) && read(l.i8.sum.data(), l.i8.sum.size() * 4) &&
               read(l.bf16.data.data(), l.bf16.data.bytes()) && vec(l.bias);
    };
    bool more = vec(emb_ln_w_) && vec(emb_ln_b_) && linear(projection_);
    for (std::size_t l = 0; more && l < layers_.size(); ++l) {
        const Layer& L = layers_[l];
        more = linear(L.qkv) && linear(L.ao) && vec(L.ln1_w) && vec(L.ln1_b) && linear(L.ffn_in) &&
               linear(L.ffn_out) && vec(L.ln2_w) && vec(L.ln2_b);
    }
    if (more) linear(pooler_);
    read_sink_.fetch_add(sum, std::memory_order_relaxed);
}

// Tracing: the calling thread reads the clock after each step (so a step's time includes waiting for its slowest
// chunk), charges it to the step's trace bucket, and counts the team ops the step ran. Does nothing when off.
class Encoder::StepTrace {
  public:
    StepTrace(bool on, const ops::Team& team, std::vector<double>& seconds, std::vector<int>& barriers)
        : on_(on), team_(team), seconds_(seconds), barriers_(barriers) {
        if (!on_) return;
        seconds_.assign(forward::kTraceBucketCount, 0.0);
        barriers_.assign(forward::kStepCount, 0);
        t_prev_ = clock::now();
        b_prev_ = team_.barriers();
    }
    void mark(forward::Step step) {
        if (!on_) return;
        const auto t = clock::now();
        seconds_[forward::trace_bucket(step)] += std::chrono::duration<double>(t - t_prev_).count();
        t_prev_ = t;
        barriers_[step] += team_.barriers() - b_prev_;
        b_prev_ = team_.barriers();
    }

  private:
    using clock = std::chrono::steady_clock;
    bool on_;
    const ops::Team& team_;
    std::vector<double>& seconds_;
    std::vector<int>& barriers_;
    clock::time_point t_prev_;
    int b_prev_ = 0;
};

std::unique_ptr<Encoder::Workspace> Encoder::take_workspace() {
    std::lock_guard<std::mutex> lock(spare_mu_);
    if (spare_.empty()) return std::make_unique<Workspace>();
    std::unique_ptr<Workspace> ws = std::move(spare_.back());
    spare_.pop_back();
    return ws;
}

void Encoder::give_back(std::unique_ptr<Workspace> ws) {
    std::lock_guard<std::mutex> lock(spare_mu_);
    spare_.push_back(std::move(ws));
}

void Encoder::reserve_workspace(Workspace& ws, int B, bool pooled, int threads) const {
    const std::size_t n = ws.tokens.seqs.tokens, H = cfg_.hidden, I = cfg_.intermediate;
    const int widest_k = std::max({cfg_.hidden, cfg_.intermediate, cfg_.embedding});
    if (projects_embeddings()) ws.emb.resize(n * cfg_.embedding);
    ws.x.resize(n * H);
    ws.qkv.resize(n * 3 * H);
    ws.ctx.resize(n * H);
    ws.y.resize(n * H);
    ws.h.resize(n * I);
    ws.attention.reserve(kt_, threads, ws.tokens.seqs.max_len, cfg_.hidden / cfg_.heads);
    ws.gemm.reserve(kt_, threads, ws.tokens.seqs.tokens, widest_k);  // the pooler and projection: fp32
    if (dtype_ == DType::kInt8) ws.quant.reserve(kt8_, threads, ws.tokens.seqs.tokens, widest_k);
    if (dtype_ != DType::kFloat32) ws.bf16.reserve(kt16_, threads, ws.tokens.seqs.tokens, widest_k);  // int8: FFN out
    if (pooled) ws.pool_in.resize(static_cast<std::size_t>(B) * H);
}

void Encoder::linear(ops::Team& team, Workspace& ws, forward::Step step, DType d, int M, const float* A, int lda,
                     const Linear& W, const float* residual, float* C, int ldc) const {
    const forward::StepInfo& s = forward::kSteps[step];
    Epilogue ep;
    ep.kind = s.epilogue;
    ep.bias = W.bias.data();
    ep.residual = residual;
    ep.ldr = ldc;
    switch (kernel_dtype(step, d)) {
        case DType::kInt8: ops::gemm_int8_team(team, M, A, lda, W.i8, C, ldc, ep, ws.quant); break;
        case DType::kBf16: ops::gemm_team(team, M, A, lda, W.bf16, C, ldc, ep, ws.bf16); break;
        case DType::kFloat32: ops::gemm_team(team, M, A, lda, W.f32, C, ldc, ep, ws.gemm); break;
    }
}

void Encoder::run_layer(ops::Team& team, Workspace& ws, const Layer& L, float* dst, StepTrace& trace) const {
    using namespace forward;
    const int n = ws.tokens.seqs.tokens, H = cfg_.hidden, I = cfg_.intermediate;
    const float eps = cfg_.eps;
    float *x = ws.x.data(), *qkv = ws.qkv.data(), *ctx = ws.ctx.data(), *y = ws.y.data(), *h = ws.h.data();
    const DType d = L.dtype;
    linear(team, ws, kQkv, d, n, x, H, L.qkv, nullptr, qkv, 3 * H);  // qkv = x·Wqkv + bqkv
    trace.mark(kQkv);
    const PositionBias bias{has_position_bias() ? position_bias_.data() : nullptr, bias_len_};
    ops::attention_team(team, d == DType::kFloat32 ? attention_f32_ : attention_, qkv, H, cfg_.heads,
                        ws.tokens.seqs, bias, ctx, ws.attention);
    trace.mark(kAttention);
    linear(team, ws, kAttentionOut, d, n, ctx, H, L.ao, x, y, H);  // y = ctx·Wo + bo + x
    trace.mark(kAttentionOut);
    ops::layernorm_team(team, kt_, n, H, y, nullptr, L.ln1_w.data(), L.ln1_b.data(), eps, y);
    trace.mark(kLn1);
    linear(team, ws, kFfnIn, d, n, y, H, L.ffn_in, nullptr, h, I);  // h = gelu(y·Wi + bi)
    trace.mark(kFfnIn);
    linear(team, ws, kFfnOut, d, n, h, I, L.ffn_out, y, x, H);  // x = h·Wo2 + bo2 + y
    trace.mark(kFfnOut);
    ops::layernorm_team(team, kt_, n, H, x, nullptr, L.ln2_w.data(), L.ln2_b.data(), eps, dst);
    trace.mark(kLn2);
}

void Encoder::forward(const int64_t* ids, const int64_t* mask, const int64_t* types, int B, int T, float* out,
                      float* pooled, int threads) {
    using namespace forward;
    if (threads < 0) throw std::invalid_argument("a forward's threads must be >= 0, got " + std::to_string(threads));
    // 0 or more than the encoder has (num_threads may be lowered while a caller's forward starts): all of them
    const int most = num_threads();
    if (threads == 0 || threads > most) threads = most;
    warmer_.stop();  // it would take a core this forward's threads run on
    forwards_running_.fetch_add(1, std::memory_order_acq_rel);
    struct Ended {  // whichever way the forward ends: warm_caches counts idle time from here
        Encoder& e;
        ~Ended() {
            e.last_forward_end_.store(steady_ns(), std::memory_order_release);
            e.forwards_running_.fetch_sub(1, std::memory_order_acq_rel);
        }
    } ended{*this};
    std::shared_lock<std::shared_mutex> lock(mu_);
    if (!ready()) throw std::invalid_argument("encoder weights are not fully set (embeddings and every layer)");
    if (pooled && !pooler_set_) throw std::invalid_argument("this model has no pooler");
    ops::check_tokens(ids, mask, types, B, T, {cfg_.vocab, cfg_.type_vocab, cfg_.max_positions});
    std::unique_ptr<Workspace> taken = take_workspace();
    Workspace& ws = *taken;
    ops::pack_tokens(ids, mask, types, B, T, ws.tokens);  // every step after the embeddings runs over Ntok rows
    reserve_workspace(ws, B, pooled != nullptr, threads);
    const int ntok = ws.tokens.seqs.tokens, H = cfg_.hidden, E = cfg_.embedding;
    const bool dense = ntok == B * T;  // no padding: the last LayerNorm writes straight into `out`
    float* x = ws.x.data();
    const bool traced = trace_;
    std::vector<double> seconds;
    std::vector<int> barriers;
    ops::run_team(threads, [&](ops::Team& team) {
        StepTrace trace(traced, team, seconds, barriers);
        float* e = projects_embeddings() ? ws.emb.data() : x;  // the embeddings, E wide
        ops::embed_layernorm_team(team, kt_, ntok, ws.tokens.id.data(), ws.tokens.pos.data(),
                                  ws.tokens.type.data(), E, word_, pos_, type_, emb_ln_w_.data(), emb_ln_b_.data(),
                                  cfg_.eps, e);
        trace.mark(kEmbeddings);
        if (projects_embeddings()) {
            linear(team, ws, kEmbeddingsProject, dtype_, ntok, e, E, projection_, nullptr, x, H);  // x = e·Wp + bp
            trace.mark(kEmbeddingsProject);
        }
        for (int l = 0; l < cfg_.layers; ++l)
            run_layer(team, ws, layers_[l], l + 1 == cfg_.layers && dense ? out : x, trace);
        const float* last = dense ? out : x;
        if (!dense) {
            ops::scatter_rows_team(team, ws.tokens.seqs, mask, T, H, last, out);
            trace.mark(kScatter);
        }
        if (pooled) {  // pooler_output = tanh(W · h[first token] + b) per sequence
            ops::gather_rows_team(team, B, ws.tokens.seqs.start.data(), H, last, ws.pool_in.data());
            trace.mark(kPoolerGather);
            linear(team, ws, kPooler, dtype_, B, ws.pool_in.data(), H, pooler_, nullptr, pooled, H);
            trace.mark(kPooler);
        }
    });
    give_back(std::move(taken));
    if (traced) {
        std::lock_guard<std::mutex> spare_lock(spare_mu_);
        last_trace_ = std::move(seconds);
        last_barriers_ = std::move(barriers);
    }
}

}  // namespace bortengine
