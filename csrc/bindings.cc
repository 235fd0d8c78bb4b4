// bindings.cc: the private module bortengine._core (the only file that includes pybind11). Bindings only convert:
// Python objects become typed contiguous arrays (ops::ArrayRef: pointer and shape) while the GIL is held, outputs
// are allocated in the shape the op's check returns, then the GIL is released and the op or encoder runs. Every
// check (shapes, values, thread counts) and every loop lives in the ops tier (ops.h, single_ops.h) or the encoder.
// C++ std::invalid_argument -> ValueError, std::bad_alloc -> MemoryError.
//
// One function per group: bind_info (CPU, ISAs, kernel names), bind_forward (the forward's step table),
// bind_encoder, bind_fp32_ops, bind_pool (sentence pooling), bind_int8_ops, bind_bf16_ops, bind_references (the
// plain-loop references tests compare with).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "encoder.h"
#include "forward.h"
#include "isa.h"
#include "ops.h"
#include "single_ops.h"

namespace py = pybind11;
using namespace bortengine;

namespace {

template <class T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;
using FArray = Array<float>;
using IArray = Array<std::int64_t>;
using QArray = Array<std::int8_t>;
using UArray = Array<std::uint8_t>;
using I32Array = Array<std::int32_t>;
using U16Array = Array<std::uint16_t>;  // bf16 values as their bits

ops::Shape shape_of(const py::array& a) { return ops::Shape(a.shape(), a.shape() + a.ndim()); }

template <class T>
ops::ArrayRef<T> ref(const Array<T>& a) {
    return {a.data(), shape_of(a)};
}

// An optional float array argument: None -> absent. `keep` holds the converted array while the op uses it.
ops::ArrayRef<float> optional_floats(const py::object& obj, FArray& keep, const char* name) {
    if (obj.is_none()) return {};
    keep = FArray::ensure(obj);
    if (!keep) throw std::invalid_argument(std::string(name) + " must be an array of numbers");
    return ref(keep);
}

// h as a C-contiguous array of T, converted (and copied) if it must be; the conversion's own Python error (a
// MemoryError, a ValueError) if it cannot be. Array<T>::ensure gave a null array there, which the callers that
// checked the dtype first then read: a segmentation fault (a 2^40-row broadcast view of ids, of int8 weights).
template <class T>
Array<T> converted(py::handle h) {
    return Array<T>(py::reinterpret_borrow<py::object>(h));
}

// Integer (or bool) arrays only: a float array would be truncated silently by a cast.
IArray int_array(const py::object& obj, const char* name) {
    py::array a = py::array::ensure(obj);
    if (!a) throw std::invalid_argument(std::string(name) + " must be an array of integers");
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u' && kind != 'b')
        throw std::invalid_argument(std::string(name) + " must hold integers, got dtype " +
                                    std::string(py::str(a.dtype())));
    return converted<std::int64_t>(a);
}

template <class T>
Array<T> new_array(const ops::Shape& shape) {
    return Array<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// ---------------------------------------------------------------------------------------------------------------

// The GEMM names of a path's kernel variants (int8 or bf16), best first.
template <class Table>
std::vector<std::string> gemm_names(const std::vector<const Table*>& variants) {
    std::vector<std::string> names;
    for (const Table* t : variants) names.push_back(t->gemm_name);
    return names;
}

void bind_info(py::module_& m) {
    m.def("available_isas", [] { return available_isas(); });
    m.def("default_isa", [] { return default_isa(); });
    m.def("kernel_name", [](const std::string& isa) { return std::string(kernels_for(isa).gemm_name); },
          py::arg("isa") = "");
    m.def("int8_kernel_name", [](const std::string& isa) { return std::string(int8_kernels_for(isa).gemm_name); },
          py::arg("isa") = "");
    m.def("int8_kernel_names", [](const std::string& isa) { return gemm_names(int8_kernel_variants(isa)); },
          py::arg("isa") = "");
    m.def("bf16_kernel_name", [](const std::string& isa) { return std::string(bf16_kernels_for(isa).gemm_name); },
          py::arg("isa") = "");
    m.def("bf16_kernel_names", [](const std::string& isa) { return gemm_names(bf16_kernel_variants(isa)); },
          py::arg("isa") = "");
    m.def("has_bf16_attention", [] { return has_bf16_attention(); });
    m.def("cpu_info", [] {
        const CpuInfo& ci = cpu_info();
        py::dict d;
        d["vendor"] = ci.vendor;
        d["model"] = ci.model;
        d["flags"] = ci.flags;
        d["available_isas"] = available_isas();
        d["logical_cpus"] = ci.logical_cpus;
        try {
            d["default_isa"] = default_isa();
        } catch (const std::invalid_argument& e) {
            d["default_isa"] = py::none();
            d["default_isa_error"] = std::string(e.what());
        }
        return d;
    });
}

void bind_forward(py::module_& m) {
    m.def("forward_ops", [](const std::string& isa) {
        const bool tiles = bf16_on_tiles(isa);  // validates the path's name
        py::list steps;
        for (const forward::StepInfo& s : forward::kSteps) {
            py::dict d;
            d["name"] = s.name;
            d["trace"] = s.trace;
            d["kind"] = forward::kind_name(s.kind);
            d["scope"] = forward::scope_name(s.scope);
            d["when"] = forward::when_name(s.when);
            if (s.kind == forward::Kind::kGemm) {
                d["K"] = forward::dim_name(s.K);
                d["N"] = forward::dim_name(s.N);
                d["epilogue"] = ops::epilogue_name(s.epilogue);
                d["rows"] = forward::rows_name(s.rows);
                d["low_precision"] = s.low_precision;
                d["int8_in_bf16"] = s.int8_in_bf16;
                py::dict kernels;  // the kernels the GEMM runs on, per encoder dtype, on this path of this CPU
                for (DType dt : kDTypes) kernels[dtype_name(dt)] = dtype_name(forward::kernel_dtype(s, dt, tiles));
                d["kernels"] = kernels;
            }
            py::dict barriers;
            for (DType dt : kDTypes) barriers[dtype_name(dt)] = forward::barriers(s, dt, tiles);
            d["barriers"] = barriers;
            steps.append(d);
        }
        return steps;
    }, py::arg("isa") = "");
}

// ---------------------------------------------------------------------------------------------------------------

// A layer's biases and LayerNorms, for the setters whose weights come in another dtype (int8, bf16).
LayerWeights layer_vectors(const FArray& q_b, const FArray& k_b, const FArray& v_b, const FArray& ao_b,
                           const FArray& ln1_w, const FArray& ln1_b, const FArray& i_b, const FArray& o_b,
                           const FArray& ln2_w, const FArray& ln2_b) {
    LayerWeights w;
    w.q_b = ref(q_b), w.k_b = ref(k_b), w.v_b = ref(v_b), w.ao_b = ref(ao_b), w.ln1_w = ref(ln1_w);
    w.ln1_b = ref(ln1_b), w.i_b = ref(i_b), w.o_b = ref(o_b), w.ln2_w = ref(ln2_w), w.ln2_b = ref(ln2_b);
    return w;
}

// Holds the Python arrays the encoder references (embeddings) so they live as long as it does.
class PyEncoder {
  public:
    PyEncoder(int hidden, int layers, int heads, int inter, int vocab, int max_pos, int type_vocab, float eps,
              int threads, const std::string& isa, const std::string& dtype, int embedding)
        : enc_(std::make_unique<Encoder>(
              EncoderConfig{hidden, layers, heads, inter, vocab, max_pos, type_vocab, eps, embedding}, threads,
              kernels_for(isa), parse_dtype(dtype))) {}

    void set_embeddings(FArray word, FArray pos, FArray type, FArray ln_w, FArray ln_b) {
        enc_->set_embeddings(ref(word), ref(pos), ref(type), ref(ln_w), ref(ln_b));
        keep_ = {word, pos, type};
    }

    void set_layer(int index, FArray q_w, FArray q_b, FArray k_w, FArray k_b, FArray v_w, FArray v_b, FArray ao_w,
                   FArray ao_b, FArray ln1_w, FArray ln1_b, FArray i_w, FArray i_b, FArray o_w, FArray o_b,
                   FArray ln2_w, FArray ln2_b, const std::string& dtype) {
        const LayerWeights w{ref(q_w),   ref(q_b),   ref(k_w), ref(k_b), ref(v_w), ref(v_b),   ref(ao_w),  ref(ao_b),
                             ref(ln1_w), ref(ln1_b), ref(i_w), ref(i_b), ref(o_w), ref(o_b), ref(ln2_w), ref(ln2_b)};
        const DType layer = dtype.empty() ? enc_->dtype() : parse_dtype(dtype);
        py::gil_scoped_release release;
        enc_->set_layer(index, w, layer);
    }

    // quantized: {q,k,v,ao,i,o}_w int8 [out, in] and {q,k,v,ao,i,o}_s float [out]; o_w may instead be uint16
    // (bf16 bits, no o_s): FFN out as int8 encoders run it (encoder.h QuantizedLayerWeights).
    void set_layer_quantized(int index, py::dict q, FArray q_b, FArray k_b, FArray v_b, FArray ao_b, FArray ln1_w,
                             FArray ln1_b, FArray i_b, FArray o_b, FArray ln2_w, FArray ln2_b) {
        const std::string p = "layer " + std::to_string(index) + " ";
        std::vector<QArray> qs;
        std::vector<FArray> ss;
        U16Array o_bf16;
        bool ffn_out_bf16 = false;
        if (q.contains("o_w")) {
            py::array wa = q["o_w"].cast<py::array>();
            ffn_out_bf16 = wa.dtype().kind() == 'u' && wa.itemsize() == 2;
            if (ffn_out_bf16) o_bf16 = converted<std::uint16_t>(wa);
        }
        for (const char* name : {"q", "k", "v", "ao", "i", "o"}) {
            const std::string wn = std::string(name) + "_w", sn = std::string(name) + "_s";
            if (ffn_out_bf16 && wn == "o_w") {
                qs.emplace_back();
                ss.emplace_back();
                continue;
            }
            if (!q.contains(wn.c_str()) || !q.contains(sn.c_str()))
                throw std::invalid_argument(p + "quantized weights need '" + wn + "' and '" + sn + "'");
            py::array wa = q[wn.c_str()].cast<py::array>();
            if (wa.dtype().kind() != 'i' || wa.itemsize() != 1)
                throw std::invalid_argument(p + wn + " must be int8, got " + std::string(py::str(wa.dtype())));
            qs.push_back(converted<std::int8_t>(wa));
            ss.push_back(FArray::ensure(q[sn.c_str()]));
            if (!ss.back()) throw std::invalid_argument(p + sn + " must be an array of numbers");
        }
        const LayerWeights w = layer_vectors(q_b, k_b, v_b, ao_b, ln1_w, ln1_b, i_b, o_b, ln2_w, ln2_b);
        QuantizedLayerWeights qw;
        qw.q_w = ref(qs[0]), qw.k_w = ref(qs[1]), qw.v_w = ref(qs[2]), qw.ao_w = ref(qs[3]), qw.i_w = ref(qs[4]);
        qw.q_s = ref(ss[0]), qw.k_s = ref(ss[1]), qw.v_s = ref(ss[2]), qw.ao_s = ref(ss[3]), qw.i_s = ref(ss[4]);
        if (ffn_out_bf16)
            qw.o_w_bf16 = ref(o_bf16);
        else
            qw.o_w = ref(qs[5]), qw.o_s = ref(ss[5]);
        py::gil_scoped_release release;
        enc_->set_layer_quantized(index, w, qw);
    }

    // bf16: {q,k,v,ao,i,o}_w uint16 [out, in], the bits of bf16 weights.
    void set_layer_bf16(int index, py::dict b, FArray q_b, FArray k_b, FArray v_b, FArray ao_b, FArray ln1_w,
                        FArray ln1_b, FArray i_b, FArray o_b, FArray ln2_w, FArray ln2_b) {
        std::vector<U16Array> ws;
        for (const char* name : {"q", "k", "v", "ao", "i", "o"}) {
            const std::string wn = std::string(name) + "_w";
            if (!b.contains(wn.c_str()))
                throw std::invalid_argument("layer " + std::to_string(index) + " bf16 weights need '" + wn + "'");
            py::array wa = b[wn.c_str()].cast<py::array>();
            if (wa.dtype().kind() != 'u' || wa.itemsize() != 2)
                throw std::invalid_argument("layer " + std::to_string(index) + " " + wn +
                                            " must be uint16 (bf16 bits), got " + std::string(py::str(wa.dtype())));
            ws.push_back(converted<std::uint16_t>(wa));
        }
        const LayerWeights w = layer_vectors(q_b, k_b, v_b, ao_b, ln1_w, ln1_b, i_b, o_b, ln2_w, ln2_b);
        const Bf16LayerWeights bw{ref(ws[0]), ref(ws[1]), ref(ws[2]), ref(ws[3]), ref(ws[4]), ref(ws[5])};
        py::gil_scoped_release release;
        enc_->set_layer_bf16(index, w, bw);
    }

    void set_pooler(FArray w, FArray b) { enc_->set_pooler(ref(w), ref(b)); }
    void set_embedding_projection(FArray w, FArray b) { enc_->set_embedding_projection(ref(w), ref(b)); }
    void set_position_bias(FArray table) { enc_->set_position_bias(ref(table)); }

    py::tuple forward(py::object ids_obj, py::object mask_obj, py::object types_obj, bool pooler, int threads) {
        const IArray ids = int_array(ids_obj, "input_ids");
        IArray mask, types;
        ops::Shape mask_shape, types_shape;
        if (!mask_obj.is_none()) mask_shape = shape_of(mask = int_array(mask_obj, "attention_mask"));
        if (!types_obj.is_none()) types_shape = shape_of(types = int_array(types_obj, "token_type_ids"));
        const ops::Shape bt = ops::check_token_shapes(shape_of(ids), mask_obj.is_none() ? nullptr : &mask_shape,
                                                      types_obj.is_none() ? nullptr : &types_shape);
        const int B = static_cast<int>(bt[0]), T = static_cast<int>(bt[1]);
        const std::int64_t H = enc_->config().hidden;
        FArray out = new_array<float>({bt[0], bt[1], H});
        py::object pooled_obj = py::none();
        float* pooled = nullptr;
        if (pooler) {
            FArray p = new_array<float>({bt[0], H});
            pooled = p.mutable_data();
            pooled_obj = p;
        }
        const std::int64_t* m = mask_obj.is_none() ? nullptr : mask.data();
        const std::int64_t* ty = types_obj.is_none() ? nullptr : types.data();
        float* o = out.mutable_data();
        {
            py::gil_scoped_release release;
            enc_->forward(ids.data(), m, ty, B, T, o, pooled, threads);
        }
        return py::make_tuple(out, pooled_obj);
    }

    bool warm_caches(double min_idle_s) {
        if (!(min_idle_s >= 0)) throw std::invalid_argument("min_idle_s must be >= 0 seconds");
        return enc_->warm_caches(min_idle_s);  // returns at once: no need to release the GIL
    }

    Encoder& enc() { return *enc_; }

  private:
    std::unique_ptr<Encoder> enc_;
    std::vector<FArray> keep_;
};

void bind_encoder(py::module_& m) {
    py::class_<PyEncoder>(m, "Encoder")
        .def(py::init<int, int, int, int, int, int, int, float, int, const std::string&, const std::string&, int>(),
             py::arg("hidden_size"), py::arg("num_layers"), py::arg("num_heads"), py::arg("intermediate_size"),
             py::arg("vocab_size"), py::arg("max_position_embeddings"), py::arg("type_vocab_size"),
             py::arg("layer_norm_eps"), py::arg("num_threads"), py::arg("isa") = "", py::arg("dtype") = "float32",
             py::arg("embedding_size") = 0)
        .def("set_embeddings", &PyEncoder::set_embeddings, py::arg("word"), py::arg("position"),
             py::arg("token_type"), py::arg("ln_weight"), py::arg("ln_bias"))
        .def("set_layer", &PyEncoder::set_layer, py::arg("index"), py::arg("q_w"), py::arg("q_b"), py::arg("k_w"),
             py::arg("k_b"), py::arg("v_w"), py::arg("v_b"), py::arg("ao_w"), py::arg("ao_b"), py::arg("ln1_w"),
             py::arg("ln1_b"), py::arg("i_w"), py::arg("i_b"), py::arg("o_w"), py::arg("o_b"), py::arg("ln2_w"),
             py::arg("ln2_b"), py::arg("dtype") = "")
        .def("set_layer_quantized", &PyEncoder::set_layer_quantized, py::arg("index"), py::arg("quantized"),
             py::arg("q_b"), py::arg("k_b"), py::arg("v_b"), py::arg("ao_b"), py::arg("ln1_w"), py::arg("ln1_b"),
             py::arg("i_b"), py::arg("o_b"), py::arg("ln2_w"), py::arg("ln2_b"))
        .def("set_layer_bf16", &PyEncoder::set_layer_bf16, py::arg("index"), py::arg("bf16"), py::arg("q_b"),
             py::arg("k_b"), py::arg("v_b"), py::arg("ao_b"), py::arg("ln1_w"), py::arg("ln1_b"), py::arg("i_b"),
             py::arg("o_b"), py::arg("ln2_w"), py::arg("ln2_b"))
        .def("set_pooler", &PyEncoder::set_pooler, py::arg("weight"), py::arg("bias"))
        .def("set_embedding_projection", &PyEncoder::set_embedding_projection, py::arg("weight"), py::arg("bias"))
        .def("set_position_bias", &PyEncoder::set_position_bias, py::arg("table"))
        .def("forward", &PyEncoder::forward, py::arg("input_ids"), py::arg("attention_mask") = py::none(),
             py::arg("token_type_ids") = py::none(), py::arg("pooler") = false, py::arg("threads") = 0)
        .def_property("num_threads", [](PyEncoder& e) { return e.enc().num_threads(); },
                      [](PyEncoder& e, int n) { e.enc().set_num_threads(n); })
        .def_property_readonly("isa", [](PyEncoder& e) { return std::string(e.enc().kernels().isa); })
        .def_property_readonly("kernel", [](PyEncoder& e) { return std::string(e.enc().gemm_name()); })
        .def_property_readonly("attention_kernel", [](PyEncoder& e) { return std::string(e.enc().attention_name()); })
        .def_property_readonly("dtype", [](PyEncoder& e) { return std::string(dtype_name(e.enc().dtype())); })
        .def_property_readonly("layer_dtypes",
                               [](PyEncoder& e) {
                                   std::vector<std::string> names;
                                   for (DType d : e.enc().layer_dtypes()) names.emplace_back(dtype_name(d));
                                   return names;
                               })
        .def_property_readonly("packed_bytes", [](PyEncoder& e) { return e.enc().packed_bytes(); })
        .def("warm_caches", &PyEncoder::warm_caches, py::arg("min_idle_s") = 0.0)
        .def_property_readonly("warm_stats",
                               [](PyEncoder& e) {
                                   const Warmer& w = e.enc().warmer();
                                   py::dict d;
                                   d["started"] = w.started();
                                   d["stopped"] = w.stopped();
                                   d["running"] = w.running();
                                   return d;
                               })
        .def_property_readonly("ready", [](PyEncoder& e) { return e.enc().ready(); })
        .def_property("trace", [](PyEncoder& e) { return e.enc().trace(); },
                      [](PyEncoder& e, bool on) { e.enc().set_trace(on); })
        .def_property_readonly("last_trace", [](PyEncoder& e) {
            py::dict d;
            const auto& t = e.enc().last_trace();
            for (std::size_t i = 0; i < t.size(); ++i) d[forward::trace_name(static_cast<int>(i))] = t[i];
            return d;
        })
        .def_property_readonly("last_trace_barriers", [](PyEncoder& e) {
            py::dict d;
            const auto& n = e.enc().last_barriers();
            for (std::size_t i = 0; i < n.size(); ++i) d[forward::kSteps[i].name] = n[i];
            return d;
        })
        .def_property_readonly("has_pooler", [](PyEncoder& e) { return e.enc().has_pooler(); })
        .def_property_readonly("projects_embeddings", [](PyEncoder& e) { return e.enc().projects_embeddings(); })
        .def_property_readonly("has_position_bias", [](PyEncoder& e) { return e.enc().has_position_bias(); });
}

// ---------------------------------------------------------------------------------------------------------------

// c [M, N] = a [M, K] through a packed linear op (ops::PackedLinear or ops::Bf16Linear), the GIL released for the
// GEMM.
template <class Linear>
FArray run_linear(const Linear& lin, FArray a, const std::string& epilogue, py::object residual_obj, int threads) {
    const Epilogue::Kind kind = ops::parse_epilogue(epilogue);
    FArray residual;
    const ops::ArrayRef<float> r = optional_floats(residual_obj, residual, "residual");
    FArray c = new_array<float>(ops::check_linear(lin, threads, ref(a), kind, r));
    float* cp = c.mutable_data();
    py::gil_scoped_release release;
    ops::linear(lin, threads, ref(a), kind, r, cp);
    return c;
}

class PyPackedLinear {
  public:
    PyPackedLinear(FArray w, py::object bias_obj, const std::string& isa)
        : lin_(ops::make_packed_linear(kernels_for(isa), ref(w), optional_floats(bias_obj, bias_, "bias"))) {}
    FArray call(FArray a, const std::string& epilogue, py::object residual_obj, int threads) const {
        return run_linear(lin_, a, epilogue, residual_obj, threads);
    }
    int N() const { return lin_.w.N; }
    int K() const { return lin_.w.K; }

  private:
    FArray bias_;  // referenced by lin_ (a default array_t is an empty array, not null: lin_.bias says if it is set)
    ops::PackedLinear lin_;
};

// Pooling runs with the GIL held below this many hidden values: for a served batch of short texts it takes a few
// microseconds, less than giving the GIL away and waiting to get it back from the event loop (4 MB of float32).
constexpr std::int64_t kPoolKeepsGil = 1 << 20;

ops::PoolMode pool_mode(const std::string& name) {
    if (name == "cls") return ops::PoolMode::Cls;
    if (name == "max") return ops::PoolMode::Max;
    if (name == "mean") return ops::PoolMode::Mean;
    if (name == "mean_sqrt_len") return ops::PoolMode::MeanSqrtLen;
    throw std::invalid_argument("unknown pooling mode '" + name + "'; the modes are cls, max, mean, mean_sqrt_len");
}

void bind_pool(py::module_& m) {
    m.def(
        "pool",
        [](FArray hidden, IArray mask, const std::vector<std::string>& names, bool normalize) {
            std::vector<ops::PoolMode> modes;
            for (const std::string& name : names) modes.push_back(pool_mode(name));
            FArray out = new_array<float>(ops::check_pool(ref(hidden), ref(mask), modes));
            float* o = out.mutable_data();
            if (hidden.size() >= kPoolKeepsGil) {
                py::gil_scoped_release release;
                ops::pool(ref(hidden), ref(mask), modes, normalize, o);
            } else {
                ops::pool(ref(hidden), ref(mask), modes, normalize, o);
            }
            return out;
        },
        py::arg("hidden"), py::arg("mask"), py::arg("modes"), py::arg("normalize"));
}

void bind_fp32_ops(py::module_& m) {
    py::class_<PyPackedLinear>(m, "PackedLinear")
        .def(py::init<FArray, py::object, const std::string&>(), py::arg("w"), py::arg("bias") = py::none(),
             py::arg("isa") = "")
        .def("__call__", &PyPackedLinear::call, py::arg("a"), py::arg("epilogue") = "none",
             py::arg("residual") = py::none(), py::arg("num_threads") = 1)
        .def_property_readonly("N", &PyPackedLinear::N)
        .def_property_readonly("K", &PyPackedLinear::K);

    m.def(
        "gemm",
        [](FArray a, FArray w, py::object bias, const std::string& epilogue, py::object residual, int threads,
           const std::string& isa) { return PyPackedLinear(w, bias, isa).call(a, epilogue, residual, threads); },
        py::arg("a"), py::arg("w"), py::arg("bias") = py::none(), py::arg("epilogue") = "none",
        py::arg("residual") = py::none(), py::arg("num_threads") = 1, py::arg("isa") = "");

    m.def(
        "layernorm",
        [](FArray x, FArray g, FArray b, float eps, py::object residual_obj, int threads, const std::string& isa) {
            FArray residual;
            const ops::ArrayRef<float> r = optional_floats(residual_obj, residual, "residual");
            const KernelTable& kt = kernels_for(isa);
            FArray y = new_array<float>(ops::check_layernorm(threads, ref(x), ref(g), ref(b), r));
            float* yp = y.mutable_data();
            py::gil_scoped_release release;
            ops::layernorm(kt, threads, ref(x), ref(g), ref(b), eps, r, yp);
            return y;
        },
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("residual") = py::none(),
        py::arg("num_threads") = 1, py::arg("isa") = "");

    m.def(
        "attention",
        [](FArray qkv, std::vector<int> lens, int heads, int threads, const std::string& isa, bool bf16,
           py::object bias_obj, const std::string& kernel) {
            FArray keep;
            const ops::ArrayRef<float> bias = optional_floats(bias_obj, keep, "position_bias");
            FArray ctx = new_array<float>(ops::check_attention(threads, ref(qkv), lens, heads, bias));
            const KernelTable& kt = kernels_for(isa);
            const AttentionFn fn = ops::attention_kernel(isa, bf16, kernel);
            float* c = ctx.mutable_data();
            py::gil_scoped_release release;
            ops::attention(kt, fn, threads, ref(qkv), lens, heads, bias, c);
            return ctx;
        },
        py::arg("qkv"), py::arg("seq_lens"), py::arg("num_heads"), py::arg("num_threads") = 1, py::arg("isa") = "",
        py::arg("bf16") = false, py::arg("position_bias") = py::none(), py::arg("kernel") = "");
    m.def("bf16_attention_names", [] {
        std::vector<std::string> names;
        for (const NamedAttention& a : bf16_attention_variants()) names.push_back(a.name);
        return names;
    });

    m.def(
        "embed_layernorm",
        [](IArray ids, IArray positions, IArray types, FArray word, FArray pos, FArray type, FArray g, FArray b,
           float eps, int threads, const std::string& isa) {
            FArray y = new_array<float>(ops::check_embed_layernorm(threads, ref(ids), ref(positions), ref(types),
                                                                   ref(word), ref(pos), ref(type), ref(g), ref(b)));
            const KernelTable& kt = kernels_for(isa);
            float* yp = y.mutable_data();
            py::gil_scoped_release release;
            ops::embed_layernorm(kt, threads, ref(ids), ref(positions), ref(types), ref(word), ref(pos), ref(type),
                                 ref(g), ref(b), eps, yp);
            return y;
        },
        py::arg("ids"), py::arg("positions"), py::arg("types"), py::arg("word"), py::arg("position"),
        py::arg("token_type"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("num_threads") = 1,
        py::arg("isa") = "");

    m.def(
        "gelu",
        [](FArray x, const std::string& isa) {
            const KernelTable& kt = kernels_for(isa);
            FArray y = new_array<float>(shape_of(x));
            ops::gelu(kt, x.size(), x.data(), y.mutable_data());
            return y;
        },
        py::arg("x"), py::arg("isa") = "");
}

// ---------------------------------------------------------------------------------------------------------------

class PyQuantizedLinear {
  public:
    // w float [N, K] (quantized here) or int8 [N, K] with scale [N].
    PyQuantizedLinear(py::array w, py::object scale_obj, py::object bias_obj, const std::string& isa,
                      const std::string& kernel) {
        const Int8KernelTable& kt = int8_kernels_for(isa, kernel);
        const ops::ArrayRef<float> bias = optional_floats(bias_obj, bias_, "bias");
        if (w.dtype().kind() == 'i' && w.itemsize() == 1) {
            FArray scale;
            const ops::ArrayRef<float> s = optional_floats(scale_obj, scale, "scale");
            lin_ = ops::make_quantized_linear(kt, ref(converted<std::int8_t>(w)), s, bias);
        } else {
            FArray f = FArray::ensure(w);
            if (!f) throw std::invalid_argument("w must be a float or int8 array");
            lin_ = ops::make_quantized_linear(kt, ref(f), bias);
        }
    }

    py::array call(FArray a, const std::string& epilogue, py::object residual_obj, int threads, bool raw) const {
        const Epilogue::Kind kind = ops::parse_epilogue(epilogue);
        FArray residual;
        const ops::ArrayRef<float> r = optional_floats(residual_obj, residual, "residual");
        const ops::Shape shape = ops::check_quantized_linear(lin_, threads, ref(a), kind, r);
        py::array out = raw ? py::array(new_array<std::int32_t>(shape)) : py::array(new_array<float>(shape));
        void* c = out.mutable_data();
        py::gil_scoped_release release;
        ops::quantized_linear(lin_, threads, ref(a), kind, r, raw, c);
        return out;
    }
    int N() const { return lin_.w.N; }
    int K() const { return lin_.w.K; }
    std::string kernel() const { return lin_.w.kt->gemm_name; }
    // the s8 weights as the kernels see them are not stored unpacked; expose scales and sums for tests
    py::tuple weights() const { return py::make_tuple(lin_.w.scale, lin_.w.sum); }

  private:
    FArray bias_;  // referenced by lin_
    ops::QuantizedLinear lin_;
};

void bind_int8_ops(py::module_& m) {
    py::class_<PyQuantizedLinear>(m, "QuantizedLinear")
        .def(py::init<py::array, py::object, py::object, const std::string&, const std::string&>(), py::arg("w"),
             py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("isa") = "",
             py::arg("kernel") = "")
        .def("__call__", &PyQuantizedLinear::call, py::arg("a"), py::arg("epilogue") = "none",
             py::arg("residual") = py::none(), py::arg("num_threads") = 1, py::arg("raw") = false)
        .def_property_readonly("N", &PyQuantizedLinear::N)
        .def_property_readonly("K", &PyQuantizedLinear::K)
        .def_property_readonly("kernel", &PyQuantizedLinear::kernel)
        .def_property_readonly("scale_and_sum", &PyQuantizedLinear::weights);

    m.def(
        "quantize_weights",
        [](FArray w) {
            const ops::Shape shape = ops::check_quantize_weights(ref(w));
            QArray q = new_array<std::int8_t>(shape);
            FArray s = new_array<float>({shape[0]});
            ops::quantize_weights(ref(w), q.mutable_data(), s.mutable_data());
            return py::make_tuple(q, s);
        },
        py::arg("w"));
    m.def(
        "quantize_rows",
        [](FArray a, const std::string& isa, const std::string& kernel) {
            const Int8KernelTable& kt = int8_kernels_for(isa, kernel);
            const ops::Shape shape = ops::check_quantize_rows(kt, ref(a));
            UArray q = new_array<std::uint8_t>(shape);
            FArray s = new_array<float>({shape[0]});
            I32Array z = new_array<std::int32_t>({shape[0]});
            ops::quantize_rows(kt, ref(a), q.mutable_data(), s.mutable_data(), z.mutable_data());
            return py::make_tuple(q, s, z);
        },
        py::arg("a"), py::arg("isa") = "", py::arg("kernel") = "");
}

// ---------------------------------------------------------------------------------------------------------------

class PyBf16Linear {
  public:
    // w float [N, K] (rounded here) or uint16 [N, K] (bf16 bits, as a BF16 checkpoint holds them).
    PyBf16Linear(py::array w, py::object bias_obj, const std::string& isa, const std::string& kernel) {
        const Bf16KernelTable& kt = bf16_kernels_for(isa, kernel);
        const ops::ArrayRef<float> bias = optional_floats(bias_obj, bias_, "bias");
        if (w.dtype().kind() == 'u' && w.itemsize() == 2) {
            lin_ = ops::make_bf16_linear(kt, ref(converted<std::uint16_t>(w)), bias);
        } else {
            FArray f = FArray::ensure(w);
            if (!f) throw std::invalid_argument("w must be a float array, or uint16 holding bf16 bits");
            lin_ = ops::make_bf16_linear(kt, ref(f), bias);
        }
    }

    FArray call(FArray a, const std::string& epilogue, py::object residual_obj, int threads) const {
        return run_linear(lin_, a, epilogue, residual_obj, threads);
    }
    int N() const { return lin_.w.N; }
    int K() const { return lin_.w.K; }
    std::string kernel() const { return lin_.w.kt->gemm_name; }

  private:
    FArray bias_;  // referenced by lin_
    ops::Bf16Linear lin_;
};

void bind_bf16_ops(py::module_& m) {
    py::class_<PyBf16Linear>(m, "Bf16Linear")
        .def(py::init<py::array, py::object, const std::string&, const std::string&>(), py::arg("w"),
             py::arg("bias") = py::none(), py::arg("isa") = "", py::arg("kernel") = "")
        .def("__call__", &PyBf16Linear::call, py::arg("a"), py::arg("epilogue") = "none",
             py::arg("residual") = py::none(), py::arg("num_threads") = 1)
        .def_property_readonly("N", &PyBf16Linear::N)
        .def_property_readonly("K", &PyBf16Linear::K)
        .def_property_readonly("kernel", &PyBf16Linear::kernel);

    m.def(
        "to_bf16",
        [](FArray x, const std::string& isa, const std::string& kernel) {
            const Bf16KernelTable& kt = bf16_kernels_for(isa, kernel);
            U16Array y = new_array<std::uint16_t>(shape_of(x));
            ops::round_bf16(kt, ref(x), y.mutable_data());
            return y;
        },
        py::arg("x"), py::arg("isa") = "", py::arg("kernel") = "");
}

// ---------------------------------------------------------------------------------------------------------------

void bind_references(py::module_& m) {
    m.def(
        "gemm_ref",
        [](FArray a, FArray w, py::object bias_obj, const std::string& epilogue, py::object residual_obj) {
            FArray bias, residual;
            const ops::ArrayRef<float> b = optional_floats(bias_obj, bias, "bias");
            const ops::ArrayRef<float> r = optional_floats(residual_obj, residual, "residual");
            const Epilogue::Kind kind = ops::parse_epilogue(epilogue);
            FArray c = new_array<float>(ops::check_gemm_ref(ref(a), ref(w), b, kind, r));
            ops::gemm_ref(ref(a), ref(w), b, kind, r, c.mutable_data());
            return c;
        },
        py::arg("a"), py::arg("w"), py::arg("bias") = py::none(), py::arg("epilogue") = "none",
        py::arg("residual") = py::none());

    m.def(
        "layernorm_ref",
        [](FArray x, FArray g, FArray b, float eps, py::object residual_obj) {
            FArray residual;
            const ops::ArrayRef<float> r = optional_floats(residual_obj, residual, "residual");
            FArray y = new_array<float>(ops::check_layernorm(1, ref(x), ref(g), ref(b), r));
            ops::layernorm_ref(ref(x), ref(g), ref(b), eps, r, y.mutable_data());
            return y;
        },
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("residual") = py::none());

    m.def(
        "attention_ref",
        [](FArray qkv, std::vector<int> lens, int heads, py::object bias_obj) {
            FArray keep;
            const ops::ArrayRef<float> bias = optional_floats(bias_obj, keep, "position_bias");
            FArray ctx = new_array<float>(ops::check_attention(1, ref(qkv), lens, heads, bias));
            ops::attention_ref(ref(qkv), lens, heads, bias, ctx.mutable_data());
            return ctx;
        },
        py::arg("qkv"), py::arg("seq_lens"), py::arg("num_heads"), py::arg("position_bias") = py::none());

    m.def(
        "gelu_ref",
        [](FArray x) {
            FArray y = new_array<float>(shape_of(x));
            ops::gelu_ref(x.size(), x.data(), y.mutable_data());
            return y;
        },
        py::arg("x"));

    m.def(
        "to_bf16_ref",
        [](FArray x) {
            U16Array y = new_array<std::uint16_t>(shape_of(x));
            ops::round_bf16_ref(ref(x), y.mutable_data());
            return y;
        },
        py::arg("x"));

    m.def(
        "quantize_rows_ref",
        [](FArray a) {
            const ops::Shape shape = ops::check_quantize_rows_ref(ref(a));
            UArray q = new_array<std::uint8_t>(shape);
            FArray s = new_array<float>({shape[0]});
            I32Array z = new_array<std::int32_t>({shape[0]});
            ops::quantize_rows_ref(ref(a), q.mutable_data(), s.mutable_data(), z.mutable_data());
            return py::make_tuple(q, s, z);
        },
        py::arg("a"));

    m.def(
        "gemm_u8s8_i32_ref",
        [](UArray qa, I32Array zp, QArray w) {
            I32Array c = new_array<std::int32_t>(ops::check_gemm_u8s8_i32_ref(ref(qa), ref(zp), ref(w)));
            ops::gemm_u8s8_i32_ref(ref(qa), ref(zp), ref(w), c.mutable_data());
            return c;
        },
        py::arg("qa"), py::arg("zp"), py::arg("w"));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "bortengine native kernels and encoder (private; use the bortengine package)";
    m.attr("__version__") = "0.1.0";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const std::invalid_argument& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });
    bind_info(m);
    bind_forward(m);
    bind_encoder(m);
    bind_fp32_ops(m);
    bind_pool(m);
    bind_int8_ops(m);
    bind_bf16_ops(m);
    bind_references(m);
}
