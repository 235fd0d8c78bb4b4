// encoder.h: a whole BERT encoder (embeddings, D layers, optional pooler) run in one call, padding-free.
// Composes ops only: it runs the steps forward.h lists, each one op of ops.h, and owns the weights and the
// workspace. No intrinsics, no loops over rows, no chunking here; checks are the ops tier's. Two options serve the
// families whose layers differ from BERT's in one place: embeddings of another width E projected to H (ELECTRA's
// embeddings_project) and a relative position bias added to every layer's attention scores (MPNet's).
//
// Shapes: B = batch, T = padded tokens per row, Ntok = real tokens (mask 1) of the batch, H = hidden,
// I = intermediate, V = vocab, P = max positions, Tt = token types, E = embedding width (H unless projected).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "buffer.h"
#include "forward.h"
#include "isa.h"
#include "kernels.h"
#include "ops.h"
#include "warmer.h"

namespace bortengine {

struct EncoderConfig {
    int hidden = 0, layers = 0, heads = 0, intermediate = 0, vocab = 0, max_positions = 0, type_vocab = 0;
    float eps = 1e-12f;
    int embedding = 0;  // E, the embedding tables' width; 0: H. E != H: the embeddings are projected to H
};

// One layer's weights in torch layout ([out, in] for Linear), float32 contiguous, with their shapes (checked).
struct LayerWeights {
    ops::ArrayRef<float> q_w, q_b, k_w, k_b, v_w, v_b;  // [H,H], [H]
    ops::ArrayRef<float> ao_w, ao_b, ln1_w, ln1_b;      // [H,H], [H], [H], [H]
    ops::ArrayRef<float> i_w, i_b;                      // [I,H], [I]
    ops::ArrayRef<float> o_w, o_b, ln2_w, ln2_b;        // [H,I], [H], [H], [H]
};

// Pre-quantized weights of one layer's four linears: s8 [out, in] and per-output-channel scales [out]. FFN out,
// which int8 encoders run on bf16 kernels where those run on AMX tiles (forward.h int8_in_bf16), comes as bf16 bits
// in o_w_bf16 (bortengine export --dtype int8), or as s8 + scales in o_w and o_s (checkpoints exported before):
// each is converted for the kernels this encoder runs it on.
struct QuantizedLayerWeights {
    ops::ArrayRef<std::int8_t> q_w, k_w, v_w, ao_w, i_w, o_w;
    ops::ArrayRef<float> q_s, k_s, v_s, ao_s, i_s, o_s;
    ops::ArrayRef<std::uint16_t> o_w_bf16;
};

// bf16 weights of one layer's four linears as they are stored (a BF16 checkpoint): uint16 bits [out, in].
struct Bf16LayerWeights {
    ops::ArrayRef<std::uint16_t> q_w, k_w, v_w, ao_w, i_w, o_w;
};

class Encoder {
  public:
    // dtype (forward.h): int8: the four linears of every layer run on int8 kernels (weights per channel,
    // activations per token), FFN out on bf16 kernels where they run on AMX tiles (forward.h int8_in_bf16); bf16:
    // all four on bf16 kernels (weights rounded at packing, activations as each GEMM copies them). Embeddings,
    // LayerNorm, softmax and the pooler stay fp32; the attention products of int8 and bf16 encoders run in bf16
    // where that pays (isa.h has_bf16_attention, bf16_attention_for).
    Encoder(const EncoderConfig& cfg, int num_threads, const KernelTable& kt, DType dtype = DType::kFloat32);

    // Setters check every shape against the config (std::invalid_argument naming the array, with both shapes).
    // Embedding tables word [V,E], position [P,E], token_type [Tt,E] are referenced, not copied: they must outlive
    // the encoder (the bindings keep them); ln_w, ln_b [E] are copied.
    void set_embeddings(const ops::ArrayRef<float>& word, const ops::ArrayRef<float>& position,
                        const ops::ArrayRef<float>& token_type, const ops::ArrayRef<float>& ln_w,
                        const ops::ArrayRef<float>& ln_b);
    // Encoders with E != H only (and they need it): the Linear from the embeddings to the layers, w [H,E], b [H].
    // Packed for the fp32 GEMM in every dtype: it belongs to the embeddings, which stay fp32.
    void set_embedding_projection(const ops::ArrayRef<float>& w, const ops::ArrayRef<float>& b);
    // A relative position bias table [heads, 2P' - 1] with P' >= P (ops.h position_bias), copied: added to the
    // attention scores of every layer (MPNet). Without one, attention is BERT's.
    void set_position_bias(const ops::ArrayRef<float>& table);
    // Packs (copies) the weights for the kernels each linear runs on: quantized for int8, rounded to bf16 for bf16.
    // layer_dtype: the layer's own arithmetic, the encoder's dtype by default. Mixed precision, for the few layers
    // whose activations int8 rounds too coarsely (bortengine.export.calibrate_int8 finds them on the user's
    // texts): float32 in an int8 or bf16 encoder runs the layer as a float32 encoder would (its four linears on the
    // float32 kernels, its attention in float32); bf16 in an int8 encoder runs its four linears on the bf16 kernels
    // (8 significant bits whatever a row's range; the attention as the encoder's). Other choices throw.
    void set_layer(int index, const LayerWeights& w, DType layer_dtype);
    void set_layer(int index, const LayerWeights& w) { set_layer(index, w, dtype_); }
    // int8 encoders only: weights already quantized (the weights of `w` for q/k/v/ao/i/o are ignored and may be
    // absent; biases and LayerNorms are taken from `w`).
    void set_layer_quantized(int index, const LayerWeights& w, const QuantizedLayerWeights& q);
    // bf16 encoders only: weights already bf16 (as set_layer_quantized takes its int8 weights).
    void set_layer_bf16(int index, const LayerWeights& w, const Bf16LayerWeights& b);
    void set_pooler(const ops::ArrayRef<float>& w, const ops::ArrayRef<float>& b);  // [H,H], [H]

    // ids, mask, types: [B,T] (mask and types may be null: all ones / all zeros). out [B,T,H] (zeros where the
    // mask is 0), pooled [B,H] or null. threads: the threads this forward's ops are shared over, at most
    // num_threads() (0: num_threads()). Validates everything first; throws std::invalid_argument. Thread-safe:
    // concurrent forwards run side by side, each in a workspace of its own (two forwards of 1 thread each on 2
    // cores, rather than one of 2 threads, spend no time in the ops' joins: batching's lanes); the setters wait for
    // running forwards.
    void forward(const int64_t* ids, const int64_t* mask, const int64_t* types, int B, int T, float* out,
                 float* pooled, int threads = 0);

    // Tracing (off by default): the steps of forward.h each forward runs, timed by the calling thread after each
    // step (so a step's time includes waiting for its slowest chunk). last_trace: seconds per trace bucket of the
    // last traced forward (forward::trace_name; summed over layers and over the steps of a bucket).
    // last_barriers: team ops (parallel_for calls) per step (forward::Step) of the last traced forward, summed over
    // layers: what forward::barriers must add up to.
    void set_trace(bool on) { trace_ = on; }
    bool trace() const { return trace_; }
    std::vector<double> last_trace() const {
        std::lock_guard<std::mutex> lock(spare_mu_);
        return last_trace_;
    }
    std::vector<int> last_barriers() const {
        std::lock_guard<std::mutex> lock(spare_mu_);
        return last_barriers_;
    }

    const EncoderConfig& config() const { return cfg_; }
    const KernelTable& kernels() const { return kt_; }
    // The kernels the GEMM of a forward.h step runs on in this encoder.
    DType kernel_dtype(forward::Step step) const {
        return forward::kernel_dtype(forward::kSteps[step], dtype_, bf16_tiles_);
    }
    DType dtype() const { return dtype_; }
    // The arithmetic of each layer's linears (set_layer's layer_dtype; the encoder's for layers not yet set).
    std::vector<DType> layer_dtypes() const;
    // The attention kernel the layers run (int8 and bf16 encoders use bf16 dot products where the CPU has them).
    const char* attention_name() const { return attention_name_; }
    // The GEMM kernel the layers' linears run: the fp32, int8 or bf16 one (an int8 encoder's FFN out may run the
    // bf16 one of its path: kernel_dtype, Engine.kernels).
    const char* gemm_name() const {
        return dtype_ == DType::kInt8 ? kt8_.gemm_name : dtype_ == DType::kBf16 ? kt16_.gemm_name : kt_.gemm_name;
    }
    int num_threads() const { return threads_.load(std::memory_order_relaxed); }
    void set_num_threads(int n);
    bool ready() const;
    bool has_pooler() const { return pooler_set_; }
    bool projects_embeddings() const { return cfg_.embedding != cfg_.hidden; }
    bool has_position_bias() const { return !position_bias_.empty(); }
    std::size_t packed_bytes() const;

    // Starts reading the packed weights (and the layers' biases and LayerNorms) back into the caches on a
    // background thread, on another CPU than the caller's, in the order a forward reads them, if no forward is
    // running and none has ended, nor reads started, for min_idle_s seconds; returns at once, saying whether it
    // started (not on a caller allowed one CPU only). A forward that starts meanwhile stops it. For a call that
    // finds the engine idle, while its text is tokenized (warmer.h: why).
    bool warm_caches(double min_idle_s);
    const Warmer& warmer() const { return warmer_; }

  private:
    // One Linear of the model: its weight packed for the encoder's dtype (float32, or int8 / bf16 for the layers'
    // four linears of an int8 / bf16 encoder) and its bias.
    struct Linear {
        ops::PackedMatrix f32;
        ops::QuantizedMatrix i8;
        ops::Bf16Matrix bf16;
        std::vector<float> bias;
        std::size_t bytes() const { return f32.bytes() + i8.bytes() + bf16.bytes(); }
    };
    struct Layer {
        Linear qkv, ao, ffn_in, ffn_out;
        std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;
        DType dtype = DType::kFloat32;  // the encoder's dtype, or the one set_layer gave this layer
        bool set = false;
    };
    class StepTrace;  // encoder.cc

    // What one forward writes besides its outputs: the activations of the packed tokens and the ops' scratch,
    // sized for the forward's tokens and threads. A forward takes one from the encoder's spares (or makes one) and
    // gives it back: concurrent forwards never share one, and a steady load reuses them.
    struct Workspace {
        AlignedBuffer x, qkv, ctx, y, h, pool_in, emb;  // emb: [Ntok, E] before the projection
        ops::GemmScratch gemm;
        ops::AttentionScratch attention;
        ops::QuantScratch quant;
        ops::Bf16Scratch bf16;
        ops::PackedTokens tokens;
    };
    std::unique_ptr<Workspace> take_workspace();
    void give_back(std::unique_ptr<Workspace> ws);

    // The kernels the GEMM of step `step` runs on in a layer of dtype d.
    DType kernel_dtype(forward::Step step, DType d) const {
        return forward::kernel_dtype(forward::kSteps[step], d, bf16_tiles_);
    }
    // Packs the weight [N, K] of the linear of GEMM step `step` for the kernels it runs on in a layer of dtype d.
    void pack(Linear& l, forward::Step step, DType d, const float* w, int N, int K) const;
    // Layer `index` = L (of dtype L.dtype) with w's biases and LayerNorms.
    void store_layer(int index, Layer&& L, const LayerWeights& w);
    // Checks the index and the shapes of w's biases and LayerNorms (and of its weights unless `converted`: they
    // come in another dtype, checked with check_linear_weights).
    void check_layer(int index, const LayerWeights& w, bool converted) const;
    // The shapes of the six linear weights of layer `index` (q, k, v, ao, i, o), converted to another dtype.
    void check_linear_weights(int index, const ops::Shape* const (&got)[6]) const;
    // A Linear kept in fp32 whatever the dtype (the pooler, the embeddings' projection): w [N,K], b [N], checked
    // (`name` in the message).
    Linear fp32_linear(const ops::ArrayRef<float>& w, const ops::ArrayRef<float>& b, int N, int K,
                       const std::string& name) const;
    // warm_caches' job: one load per cache line of everything a forward reads of the model but the embedding
    // tables (a short text reads a few of their rows), until stop.
    void read_weights(const std::atomic<bool>& stop) const;
    // Sizes ws for its packed tokens (B sequences) on `threads` threads.
    void reserve_workspace(Workspace& ws, int B, bool pooled, int threads) const;
    // One encoder layer over the packed rows ws.x [Ntok, H]; its last LayerNorm writes dst (ws.x, or `out`).
    void run_layer(ops::Team& team, Workspace& ws, const Layer& L, float* dst, StepTrace& trace) const;
    // C [M, N] = epilogue(A [M, K] · W + bias (+ residual [M, N])): the GEMM step `step` of forward.h, which says
    // its epilogue and whether int8 encoders run it on the int8 kernels, in a layer of dtype d.
    void linear(ops::Team& team, Workspace& ws, forward::Step step, DType d, int M, const float* A, int lda,
                const Linear& W, const float* residual, float* C, int ldc) const;

    EncoderConfig cfg_;
    const KernelTable& kt_;
    const Int8KernelTable& kt8_;
    const Bf16KernelTable& kt16_;
    DType dtype_;
    bool bf16_tiles_;  // kt16_ runs on AMX tiles (forward.h kernel_dtype)
    std::atomic<int> threads_;
    const char* attention_name_ = "";
    AttentionFn attention_;
    AttentionFn attention_f32_;  // the float32 attention: float32 encoders' and the float32 layers' of others
    const float *word_ = nullptr, *pos_ = nullptr, *type_ = nullptr;
    std::vector<float> emb_ln_w_, emb_ln_b_;
    Linear projection_;
    bool projection_set_ = false;
    std::vector<float> position_bias_;  // [heads, 2 * bias_len_ - 1] or empty
    int bias_len_ = 0;
    std::vector<Layer> layers_;
    Linear pooler_;
    bool pooler_set_ = false;

    std::atomic<bool> trace_{false};
    std::vector<double> last_trace_;
    std::vector<int> last_barriers_;

    // Forwards hold it shared, the setters exclusive: a setter waits for the forwards running, not the reverse.
    mutable std::shared_mutex mu_;
    mutable std::mutex spare_mu_;  // guards spare_ and the last trace
    std::vector<std::unique_ptr<Workspace>> spare_;

    // What warm_caches asks of the forwards: how many run, and when the last one ended (steady clock ns, 0: none).
    std::atomic<int> forwards_running_{0};
    std::atomic<std::int64_t> last_forward_end_{0};
    std::atomic<std::int64_t> last_warm_{0};  // when warm_caches last started the reads
    mutable std::atomic<std::uint64_t> read_sink_{0};  // read_weights' loads go somewhere
    // Last: destroyed (its thread stopped and joined) before anything it reads.
    Warmer warmer_{[this](const std::atomic<bool>& stop) { read_weights(stop); }};
};

}  // namespace bortengine
