// bindings.cc: the private module bortengine._core (the only file that includes pybind11). Converts and checks
// arrays while holding the GIL, then releases it for the compute. C++ std::invalid_argument -> ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "encoder.h"
#include "forward.h"
#include "isa.h"
#include "kernels_ref.h"
#include "ops.h"

namespace py = pybind11;
using namespace bortengine;

namespace {

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

std::string shape_str(const py::array& a) {
    std::string s = "[";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + "]";
}

void expect_shape(const py::array& a, std::vector<py::ssize_t> shape, const std::string& name) {
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (std::size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
    if (!ok) {
        std::string want = "[";
        for (std::size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
        throw std::invalid_argument(name + " has shape " + shape_str(a) + ", expected " + want + "]");
    }
}

void expect_finite(const FArray& a, const std::string& name) {
    const float* p = a.data();
    for (py::ssize_t i = 0; i < a.size(); ++i)
        if (!std::isfinite(p[i]))
            throw std::invalid_argument(name + " contains a non-finite value (NaN or inf) at flat index " +
                                        std::to_string(i));
}

// Holds the Python arrays the encoder references (embeddings) so they live as long as it does.
class PyEncoder {
  public:
    PyEncoder(int hidden, int layers, int heads, int inter, int vocab, int max_pos, int type_vocab, float eps,
              int threads, const std::string& isa, const std::string& dtype)
        : enc_(std::make_unique<Encoder>(EncoderConfig{hidden, layers, heads, inter, vocab, max_pos, type_vocab, eps},
                                         threads, kernels_for(isa), parse_dtype(dtype))) {}

    static DType parse_dtype(const std::string& d) {
        if (d == "float32") return DType::kFloat32;
        if (d == "int8") return DType::kInt8;
        throw std::invalid_argument("dtype must be 'float32' or 'int8', got '" + d + "'");
    }

    void set_embeddings(FArray word, FArray pos, FArray type, FArray ln_w, FArray ln_b) {
        const auto& c = enc_->config();
        expect_shape(word, {c.vocab, c.hidden}, "word embeddings");
        expect_shape(pos, {c.max_positions, c.hidden}, "position embeddings");
        expect_shape(type, {c.type_vocab, c.hidden}, "token type embeddings");
        expect_shape(ln_w, {c.hidden}, "embeddings LayerNorm weight");
        expect_shape(ln_b, {c.hidden}, "embeddings LayerNorm bias");
        enc_->set_embeddings(word.data(), pos.data(), type.data(), ln_w.data(), ln_b.data());
        keep_ = {word, pos, type};
    }

    void set_layer(int index, FArray q_w, FArray q_b, FArray k_w, FArray k_b, FArray v_w, FArray v_b, FArray ao_w,
                   FArray ao_b, FArray ln1_w, FArray ln1_b, FArray i_w, FArray i_b, FArray o_w, FArray o_b,
                   FArray ln2_w, FArray ln2_b) {
        const auto& c = enc_->config();
        const py::ssize_t H = c.hidden, I = c.intermediate;
        const std::string p = "layer " + std::to_string(index) + " ";
        expect_shape(q_w, {H, H}, p + "query weight");
        expect_shape(k_w, {H, H}, p + "key weight");
        expect_shape(v_w, {H, H}, p + "value weight");
        expect_shape(ao_w, {H, H}, p + "attention output weight");
        expect_shape(i_w, {I, H}, p + "intermediate weight");
        expect_shape(o_w, {H, I}, p + "output weight");
        for (auto* b : {&q_b, &k_b, &v_b, &ao_b, &ln1_w, &ln1_b, &o_b, &ln2_w, &ln2_b})
            expect_shape(*b, {H}, p + "bias/LayerNorm vector");
        expect_shape(i_b, {I}, p + "intermediate bias");
        LayerWeights w{q_w.data(), q_b.data(), k_w.data(), k_b.data(), v_w.data(), v_b.data(),
                       ao_w.data(), ao_b.data(), ln1_w.data(), ln1_b.data(), i_w.data(), i_b.data(),
                       o_w.data(), o_b.data(), ln2_w.data(), ln2_b.data()};
        py::gil_scoped_release release;
        enc_->set_layer(index, w);
    }

    void set_layer_quantized(int index, py::dict q, FArray q_b, FArray k_b, FArray v_b, FArray ao_b, FArray ln1_w,
                             FArray ln1_b, FArray i_b, FArray o_b, FArray ln2_w, FArray ln2_b) {
        const auto& c = enc_->config();
        const py::ssize_t H = c.hidden, I = c.intermediate;
        const std::string p = "layer " + std::to_string(index) + " ";
        using QArray = py::array_t<std::int8_t, py::array::c_style | py::array::forcecast>;
        std::vector<QArray> qs;
        std::vector<FArray> ss;
        const char* names[] = {"q", "k", "v", "ao", "i", "o"};
        const py::ssize_t shapes[][2] = {{H, H}, {H, H}, {H, H}, {H, H}, {I, H}, {H, I}};
        for (int t = 0; t < 6; ++t) {
            const std::string wn = std::string(names[t]) + "_w", sn = std::string(names[t]) + "_s";
            if (!q.contains(wn.c_str()) || !q.contains(sn.c_str()))
                throw std::invalid_argument(p + "quantized weights need '" + wn + "' and '" + sn + "'");
            py::array wa = q[wn.c_str()].cast<py::array>();
            if (wa.dtype().kind() != 'i' || wa.itemsize() != 1)
                throw std::invalid_argument(p + wn + " must be int8, got " + std::string(py::str(wa.dtype())));
            qs.push_back(QArray::ensure(wa));
            ss.push_back(FArray::ensure(q[sn.c_str()]));
            expect_shape(qs.back(), {shapes[t][0], shapes[t][1]}, p + wn);
            expect_shape(ss.back(), {shapes[t][0]}, p + sn);
        }
        for (auto* b : {&q_b, &k_b, &v_b, &ao_b, &ln1_w, &ln1_b, &o_b, &ln2_w, &ln2_b})
            expect_shape(*b, {H}, p + "bias/LayerNorm vector");
        expect_shape(i_b, {I}, p + "intermediate bias");
        LayerWeights w{nullptr, q_b.data(), nullptr, k_b.data(), nullptr, v_b.data(), nullptr, ao_b.data(),
                       ln1_w.data(), ln1_b.data(), nullptr, i_b.data(), nullptr, o_b.data(), ln2_w.data(), ln2_b.data()};
        QuantizedLayerWeights qw{qs[0].data(), qs[1].data(), qs[2].data(), qs[3].data(), qs[4].data(), qs[5].data(),
                                 ss[0].data(), ss[1].data(), ss[2].data(), ss[3].data(), ss[4].data(), ss[5].data()};
        py::gil_scoped_release release;
        enc_->set_layer_quantized(index, w, qw);
    }

    void set_pooler(FArray w, FArray b) {
        const py::ssize_t H = enc_->config().hidden;
        expect_shape(w, {H, H}, "pooler weight");
        expect_shape(b, {H}, "pooler bias");
        enc_->set_pooler(w.data(), b.data());
    }

    // Integer (or bool) arrays only: a float array would be truncated silently by a cast.
    static IArray int_array(py::object obj, const char* name) {
        py::array a = py::array::ensure(obj);
        if (!a) throw std::invalid_argument(std::string(name) + " must be an array of integers");
        const char kind = a.dtype().kind();
        if (kind != 'i' && kind != 'u' && kind != 'b')
            throw std::invalid_argument(std::string(name) + " must hold integers, got dtype " +
                                        std::string(py::str(a.dtype())));
        return IArray::ensure(a);
    }

    py::tuple forward(py::object ids_obj, py::object mask_obj, py::object types_obj, bool pooler) {
        IArray ids = int_array(ids_obj, "input_ids");
        if (ids.ndim() != 2)
            throw std::invalid_argument("input_ids must have shape [batch, tokens], got " + shape_str(ids));
        const int B = static_cast<int>(ids.shape(0)), T = static_cast<int>(ids.shape(1));
        IArray mask, types;
        if (!mask_obj.is_none()) {
            mask = int_array(mask_obj, "attention_mask");
            expect_shape(mask, {B, T}, "attention_mask");
        }
        if (!types_obj.is_none()) {
            types = int_array(types_obj, "token_type_ids");
            expect_shape(types, {B, T}, "token_type_ids");
        }
        const int H = enc_->config().hidden;
        if (pooler && !enc_->has_pooler()) throw std::invalid_argument("this model has no pooler");
        FArray out({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(H)});
        py::object pooled_obj = py::none();
        float* pooled = nullptr;
        if (pooler) {
            FArray p({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(H)});
            pooled = p.mutable_data();
            pooled_obj = p;
        }
        const int64_t* m = mask_obj.is_none() ? nullptr : mask.data();
        const int64_t* ty = types_obj.is_none() ? nullptr : types.data();
        float* o = out.mutable_data();
        {
            py::gil_scoped_release release;
            enc_->forward(ids.data(), m, ty, B, T, o, pooled);
        }
        return py::make_tuple(out, pooled_obj);
    }

    Encoder& enc() { return *enc_; }

  private:
    std::unique_ptr<Encoder> enc_;
    std::vector<FArray> keep_;
};

int check_threads(int n) {
    if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
    return n;
}

FArray run_gemm(const ops::PackedMatrix& B, FArray a, const float* bias, const std::string& epilogue,
                py::object residual_obj, int threads) {
    if (a.ndim() != 2 || a.shape(1) != B.K)
        throw std::invalid_argument("a has shape " + shape_str(a) + ", expected [M, " + std::to_string(B.K) + "]");
    const int M = static_cast<int>(a.shape(0));
    Epilogue ep;
    ep.kind = ops::parse_epilogue(epilogue);
    ep.bias = bias;
    FArray residual;
    if (ep.kind == Epilogue::kResidual) {
        if (residual_obj.is_none()) throw std::invalid_argument("epilogue 'residual' needs a residual array");
        residual = FArray::ensure(residual_obj);
        expect_shape(residual, {M, B.N}, "residual");
        ep.residual = residual.data();
        ep.ldr = B.N;
    }
    FArray c({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(B.N)});
    float* cp = c.mutable_data();
    const float* ap = a.data();
    check_threads(threads);
    {
        py::gil_scoped_release release;
        ops::GemmScratch ws;
        ws.reserve(*B.kt, threads, M, B.K);
        ops::run_team(threads, [&](ops::Team& t) { ops::gemm_team(t, M, ap, B.K, B, cp, B.N, ep, ws); });
    }
    return c;
}

class PyPackedLinear {
  public:
    PyPackedLinear(FArray w, py::object bias_obj, const std::string& isa) {
        if (w.ndim() != 2) throw std::invalid_argument("w must be [N, K], got " + shape_str(w));
        m_ = ops::pack_linear(kernels_for(isa), w.data(), static_cast<int>(w.shape(0)), static_cast<int>(w.shape(1)));
        if (!bias_obj.is_none()) {
            bias_ = FArray::ensure(bias_obj);
            expect_shape(bias_, {m_.N}, "bias");
            has_bias_ = true;
        }
    }
    FArray call(FArray a, const std::string& epilogue, py::object residual, int threads) {
        return run_gemm(m_, a, has_bias_ ? bias_.data() : nullptr, epilogue, residual, threads);
    }
    int N() const { return m_.N; }
    int K() const { return m_.K; }

  private:
    ops::PackedMatrix m_;
    FArray bias_;  // a default py::array_t is an empty array, not null: has_bias_ says whether it is set
    bool has_bias_ = false;
};

using QArray = py::array_t<std::int8_t, py::array::c_style | py::array::forcecast>;
using UArray = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>;

class PyQuantizedLinear {
  public:
    // w float [N, K] (quantized here) or int8 [N, K] with scale [N].
    PyQuantizedLinear(py::array w, py::object scale_obj, py::object bias_obj, const std::string& isa) {
        if (w.ndim() != 2) throw std::invalid_argument("w must be [N, K], got " + shape_str(w));
        const Int8KernelTable& kt = int8_kernels_for(isa);
        const int N = static_cast<int>(w.shape(0)), K = static_cast<int>(w.shape(1));
        if (w.dtype().kind() == 'i' && w.itemsize() == 1) {
            if (scale_obj.is_none()) throw std::invalid_argument("int8 weights need their per-channel scale [N]");
            FArray scale = FArray::ensure(scale_obj);
            expect_shape(scale, {N}, "scale");
            QArray q = QArray::ensure(w);
            m_ = ops::pack_quantized_linear(kt, q.data(), scale.data(), N, K);
        } else {
            FArray f = FArray::ensure(w);
            if (!f) throw std::invalid_argument("w must be a float or int8 array");
            m_ = ops::quantize_linear(kt, f.data(), N, K);
        }
        if (!bias_obj.is_none()) {
            bias_ = FArray::ensure(bias_obj);
            expect_shape(bias_, {N}, "bias");
            has_bias_ = true;
        }
    }

    py::array call(FArray a, const std::string& epilogue, py::object residual_obj, int threads, bool raw) {
        if (a.ndim() != 2 || a.shape(1) != m_.K)
            throw std::invalid_argument("a has shape " + shape_str(a) + ", expected [M, " + std::to_string(m_.K) + "]");
        check_threads(threads);
        const int M = static_cast<int>(a.shape(0)), N = m_.N;
        Epilogue ep;
        ep.kind = ops::parse_epilogue(epilogue);
        ep.bias = has_bias_ ? bias_.data() : nullptr;
        FArray residual;
        if (ep.kind == Epilogue::kResidual) {
            if (residual_obj.is_none()) throw std::invalid_argument("epilogue 'residual' needs a residual array");
            residual = FArray::ensure(residual_obj);
            expect_shape(residual, {M, N}, "residual");
            ep.residual = residual.data();
            ep.ldr = N;
        }
        py::array out = raw ? py::array(I32Array({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(N)}))
                            : py::array(FArray({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(N)}));
        float* c = static_cast<float*>(out.mutable_data());
        const float* ap = a.data();
        py::gil_scoped_release release;
        ops::QuantScratch qs;
        qs.reserve(*m_.kt, threads, M, m_.K);
        ops::run_team(threads, [&](ops::Team& t) { ops::gemm_int8_team(t, M, ap, m_.K, m_, c, N, ep, qs, raw); });
        return out;
    }
    int N() const { return m_.N; }
    int K() const { return m_.K; }
    std::string kernel() const { return m_.kt->gemm_name; }
    py::tuple weights() const {
        // the s8 weights as the kernels see them are not stored unpacked; expose scales and sums for tests
        return py::make_tuple(m_.scale, m_.sum);
    }

  private:
    ops::QuantizedMatrix m_;
    FArray bias_;
    bool has_bias_ = false;
};

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

    m.def("forward_ops", [] {
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
                d["quantized"] = s.quantized;
            }
            py::dict barriers;
            barriers["float32"] = forward::barriers(s, false);
            barriers["int8"] = forward::barriers(s, true);
            d["barriers"] = barriers;
            steps.append(d);
        }
        return steps;
    });
    m.def("available_isas", [] { return available_isas(); });
    m.def("default_isa", [] { return default_isa(); });
    m.def("kernel_name", [](const std::string& isa) { return std::string(kernels_for(isa).gemm_name); },
          py::arg("isa") = "");
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

    py::class_<PyEncoder>(m, "Encoder")
        .def(py::init<int, int, int, int, int, int, int, float, int, const std::string&, const std::string&>(), py::arg("hidden_size"),
             py::arg("num_layers"), py::arg("num_heads"), py::arg("intermediate_size"), py::arg("vocab_size"),
             py::arg("max_position_embeddings"), py::arg("type_vocab_size"), py::arg("layer_norm_eps"),
             py::arg("num_threads"), py::arg("isa") = "", py::arg("dtype") = "float32")
        .def("set_embeddings", &PyEncoder::set_embeddings, py::arg("word"), py::arg("position"),
             py::arg("token_type"), py::arg("ln_weight"), py::arg("ln_bias"))
        .def("set_layer", &PyEncoder::set_layer, py::arg("index"), py::arg("q_w"), py::arg("q_b"), py::arg("k_w"),
             py::arg("k_b"), py::arg("v_w"), py::arg("v_b"), py::arg("ao_w"), py::arg("ao_b"), py::arg("ln1_w"),
             py::arg("ln1_b"), py::arg("i_w"), py::arg("i_b"), py::arg("o_w"), py::arg("o_b"), py::arg("ln2_w"),
             py::arg("ln2_b"))
        .def("set_layer_quantized", &PyEncoder::set_layer_quantized, py::arg("index"), py::arg("quantized"),
             py::arg("q_b"), py::arg("k_b"), py::arg("v_b"), py::arg("ao_b"), py::arg("ln1_w"), py::arg("ln1_b"),
             py::arg("i_b"), py::arg("o_b"), py::arg("ln2_w"), py::arg("ln2_b"))
        .def("set_pooler", &PyEncoder::set_pooler, py::arg("weight"), py::arg("bias"))
        .def("forward", &PyEncoder::forward, py::arg("input_ids"), py::arg("attention_mask") = py::none(),
             py::arg("token_type_ids") = py::none(), py::arg("pooler") = false)
        .def_property("num_threads", [](PyEncoder& e) { return e.enc().num_threads(); },
                      [](PyEncoder& e, int n) { e.enc().set_num_threads(n); })
        .def_property_readonly("isa", [](PyEncoder& e) { return std::string(e.enc().kernels().isa); })
        .def_property_readonly("kernel", [](PyEncoder& e) { return std::string(e.enc().gemm_name()); })
        .def_property_readonly("attention_kernel", [](PyEncoder& e) { return std::string(e.enc().attention_name()); })
        .def_property_readonly("dtype", [](PyEncoder& e) {
            return std::string(e.enc().dtype() == DType::kInt8 ? "int8" : "float32");
        })
        .def_property_readonly("packed_bytes", [](PyEncoder& e) { return e.enc().packed_bytes(); })
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
        .def_property_readonly("has_pooler", [](PyEncoder& e) { return e.enc().has_pooler(); });

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
           const std::string& isa) {
            PyPackedLinear lin(w, bias, isa);
            return lin.call(a, epilogue, residual, threads);
        },
        py::arg("a"), py::arg("w"), py::arg("bias") = py::none(), py::arg("epilogue") = "none",
        py::arg("residual") = py::none(), py::arg("num_threads") = 1, py::arg("isa") = "");

    m.def(
        "gemm_ref",
        [](FArray a, FArray w, py::object bias_obj, const std::string& epilogue, py::object residual_obj) {
            if (a.ndim() != 2 || w.ndim() != 2 || a.shape(1) != w.shape(1))
                throw std::invalid_argument("a " + shape_str(a) + " and w " + shape_str(w) +
                                            " must be [M, K] and [N, K]");
            const int M = static_cast<int>(a.shape(0)), K = static_cast<int>(a.shape(1)),
                      N = static_cast<int>(w.shape(0));
            FArray bias, residual;
            if (!bias_obj.is_none()) { bias = FArray::ensure(bias_obj); expect_shape(bias, {N}, "bias"); }
            const Epilogue::Kind kind = ops::parse_epilogue(epilogue);
            if (kind == Epilogue::kResidual) {
                if (residual_obj.is_none()) throw std::invalid_argument("epilogue 'residual' needs a residual array");
                residual = FArray::ensure(residual_obj);
                expect_shape(residual, {M, N}, "residual");
            }
            FArray c({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(N)});
            ref::gemm(M, N, K, a.data(), w.data(), bias_obj.is_none() ? nullptr : bias.data(), kind,
                      kind == Epilogue::kResidual ? residual.data() : nullptr, c.mutable_data());
            return c;
        },
        py::arg("a"), py::arg("w"), py::arg("bias") = py::none(), py::arg("epilogue") = "none",
        py::arg("residual") = py::none());

    m.def(
        "layernorm",
        [](FArray x, FArray g, FArray b, float eps, py::object residual_obj, int threads, const std::string& isa) {
            if (x.ndim() != 2) throw std::invalid_argument("x must be [M, N], got " + shape_str(x));
            const int M = static_cast<int>(x.shape(0)), N = static_cast<int>(x.shape(1));
            expect_shape(g, {N}, "weight");
            expect_shape(b, {N}, "bias");
            FArray r;
            if (!residual_obj.is_none()) { r = FArray::ensure(residual_obj); expect_shape(r, {M, N}, "residual"); }
            const KernelTable& kt = kernels_for(isa);
            check_threads(threads);
            FArray y({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(N)});
            const float *xp = x.data(), *rp = residual_obj.is_none() ? nullptr : r.data(), *gp = g.data(), *bp = b.data();
            float* yp = y.mutable_data();
            py::gil_scoped_release release;
            ops::run_team(threads, [&](ops::Team& t) { ops::layernorm_team(t, kt, M, N, xp, rp, gp, bp, eps, yp); });
            return y;
        },
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("residual") = py::none(),
        py::arg("num_threads") = 1, py::arg("isa") = "");

    m.def(
        "layernorm_ref",
        [](FArray x, FArray g, FArray b, float eps, py::object residual_obj) {
            if (x.ndim() != 2) throw std::invalid_argument("x must be [M, N], got " + shape_str(x));
            const int M = static_cast<int>(x.shape(0)), N = static_cast<int>(x.shape(1));
            expect_shape(g, {N}, "weight");
            expect_shape(b, {N}, "bias");
            FArray r;
            if (!residual_obj.is_none()) { r = FArray::ensure(residual_obj); expect_shape(r, {M, N}, "residual"); }
            FArray y({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(N)});
            ref::layernorm(M, N, x.data(), residual_obj.is_none() ? nullptr : r.data(), g.data(), b.data(), eps, y.mutable_data());
            return y;
        },
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("residual") = py::none());

    auto check_attention = [](const FArray& qkv, const std::vector<int>& lens, int heads) {
        if (qkv.ndim() != 2 || qkv.shape(1) % 3 != 0)
            throw std::invalid_argument("qkv must be [Ntok, 3H], got " + shape_str(qkv));
        const int H = static_cast<int>(qkv.shape(1) / 3);
        if (heads < 1 || H % heads != 0)
            throw std::invalid_argument("H = " + std::to_string(H) + " is not divisible by num_heads = " +
                                        std::to_string(heads));
        long long total = 0;
        for (int l : lens) {
            if (l < 1) throw std::invalid_argument("every sequence length must be >= 1");
            total += l;
        }
        if (lens.empty() || total != qkv.shape(0))
            throw std::invalid_argument("seq_lens sum to " + std::to_string(total) + " but qkv has " +
                                        std::to_string(qkv.shape(0)) + " rows");
        return H;
    };

    m.def(
        "attention",
        [check_attention](FArray qkv, std::vector<int> lens, int heads, int threads, const std::string& isa,
                          bool bf16) {
            const int H = check_attention(qkv, lens, heads);
            const KernelTable& kt = kernels_for(isa);
            AttentionFn attn = kt.attention;
            if (bf16) {
                const char* name = "";
                attn = int8_attention_for(isa, &name);
                if (std::string(name).find("bf16") == std::string::npos)
                    throw std::invalid_argument("bf16 attention needs the avx512 path on a CPU with AVX512_BF16");
            }
            check_threads(threads);
            ops::SequenceLayout seqs;
            ops::layout_sequences(lens, seqs);
            ops::AttentionScratch scratch;
            scratch.reserve(kt, threads, seqs.max_len, H / heads);
            FArray ctx({static_cast<py::ssize_t>(seqs.tokens), static_cast<py::ssize_t>(H)});
            const float* q = qkv.data();
            float* c = ctx.mutable_data();
            py::gil_scoped_release release;
            ops::run_team(threads, [&](ops::Team& t) {
                ops::attention_team(t, attn, q, H, heads, seqs, c, scratch);
            });
            return ctx;
        },
        py::arg("qkv"), py::arg("seq_lens"), py::arg("num_heads"), py::arg("num_threads") = 1, py::arg("isa") = "",
        py::arg("bf16") = false);
    m.def("has_bf16_attention", [] {
        const auto& isas = available_isas();
        return cpu_info().avx512_bf16 && std::find(isas.begin(), isas.end(), "avx512") != isas.end();
    });

    m.def(
        "attention_ref",
        [check_attention](FArray qkv, std::vector<int> lens, int heads) {
            const int H = check_attention(qkv, lens, heads);
            FArray ctx({qkv.shape(0), static_cast<py::ssize_t>(H)});
            ref::attention(qkv.data(), H, heads, lens, ctx.mutable_data());
            return ctx;
        },
        py::arg("qkv"), py::arg("seq_lens"), py::arg("num_heads"));

    m.def(
        "embed_layernorm",
        [](IArray ids, IArray positions, IArray types, FArray word, FArray pos, FArray type, FArray g, FArray b,
           float eps, int threads, const std::string& isa) {
            if (word.ndim() != 2) throw std::invalid_argument("word embeddings must be [V, H], got " + shape_str(word));
            const py::ssize_t n = ids.size(), H = word.shape(1);
            expect_shape(ids, {n}, "ids");
            expect_shape(positions, {n}, "positions");
            expect_shape(types, {n}, "token types");
            if (pos.ndim() != 2 || pos.shape(1) != H) throw std::invalid_argument("position embeddings must be [P, H]");
            if (type.ndim() != 2 || type.shape(1) != H) throw std::invalid_argument("type embeddings must be [Tt, H]");
            expect_shape(g, {H}, "LayerNorm weight");
            expect_shape(b, {H}, "LayerNorm bias");
            for (py::ssize_t i = 0; i < n; ++i) {
                if (ids.data()[i] < 0 || ids.data()[i] >= word.shape(0)) throw std::invalid_argument("id out of range");
                if (positions.data()[i] < 0 || positions.data()[i] >= pos.shape(0))
                    throw std::invalid_argument("position out of range");
                if (types.data()[i] < 0 || types.data()[i] >= type.shape(0))
                    throw std::invalid_argument("token type out of range");
            }
            const KernelTable& kt = kernels_for(isa);
            check_threads(threads);
            FArray y({n, H});
            const int64_t *ip = ids.data(), *pp = positions.data(), *tp = types.data();
            const float *wp = word.data(), *posp = pos.data(), *typ = type.data(), *gp = g.data(), *bp = b.data();
            float* yp = y.mutable_data();
            py::gil_scoped_release release;
            ops::run_team(threads, [&](ops::Team& t) {
                ops::embed_layernorm_team(t, kt, static_cast<int>(n), ip, pp, tp, static_cast<int>(H), wp, posp, typ, gp,
                                          bp, eps, yp);
            });
            return y;
        },
        py::arg("ids"), py::arg("positions"), py::arg("types"), py::arg("word"), py::arg("position"),
        py::arg("token_type"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("num_threads") = 1,
        py::arg("isa") = "");

    py::class_<PyQuantizedLinear>(m, "QuantizedLinear")
        .def(py::init<py::array, py::object, py::object, const std::string&>(), py::arg("w"),
             py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("isa") = "")
        .def("__call__", &PyQuantizedLinear::call, py::arg("a"), py::arg("epilogue") = "none",
             py::arg("residual") = py::none(), py::arg("num_threads") = 1, py::arg("raw") = false)
        .def_property_readonly("N", &PyQuantizedLinear::N)
        .def_property_readonly("K", &PyQuantizedLinear::K)
        .def_property_readonly("kernel", &PyQuantizedLinear::kernel)
        .def_property_readonly("scale_and_sum", &PyQuantizedLinear::weights);

    m.def("int8_kernel_name", [](const std::string& isa) { return std::string(int8_kernels_for(isa).gemm_name); },
          py::arg("isa") = "");
    m.def(
        "quantize_weights",
        [](FArray w) {
            if (w.ndim() != 2) throw std::invalid_argument("w must be [N, K], got " + shape_str(w));
            const int N = static_cast<int>(w.shape(0)), K = static_cast<int>(w.shape(1));
            QArray q({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(K)});
            FArray s({static_cast<py::ssize_t>(N)});
            ops::quantize_weights(w.data(), N, K, q.mutable_data(), s.mutable_data());
            return py::make_tuple(q, s);
        },
        py::arg("w"));
    m.def(
        "quantize_rows",
        [](FArray a, const std::string& isa) {
            if (a.ndim() != 2) throw std::invalid_argument("a must be [M, K], got " + shape_str(a));
            const Int8KernelTable& kt = int8_kernels_for(isa);
            const int M = static_cast<int>(a.shape(0)), K = static_cast<int>(a.shape(1));
            const int kp = static_cast<int>(round_up(K, kt.kgroup));
            UArray q({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(kp)});
            FArray s({static_cast<py::ssize_t>(M)});
            I32Array z({static_cast<py::ssize_t>(M)});
            kt.quantize_rows(M, K, a.data(), K, q.mutable_data(), kp, s.mutable_data(), z.mutable_data());
            return py::make_tuple(q, s, z);
        },
        py::arg("a"), py::arg("isa") = "");
    m.def(
        "quantize_rows_ref",
        [](FArray a) {
            if (a.ndim() != 2) throw std::invalid_argument("a must be [M, K], got " + shape_str(a));
            const int M = static_cast<int>(a.shape(0)), K = static_cast<int>(a.shape(1));
            UArray q({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(K)});
            FArray s({static_cast<py::ssize_t>(M)});
            I32Array z({static_cast<py::ssize_t>(M)});
            ref::quantize_rows(M, K, a.data(), q.mutable_data(), s.mutable_data(), z.mutable_data());
            return py::make_tuple(q, s, z);
        },
        py::arg("a"));
    m.def(
        "gemm_u8s8_i32_ref",
        [](UArray qa, I32Array zp, QArray w) {
            if (qa.ndim() != 2 || w.ndim() != 2 || qa.shape(1) != w.shape(1))
                throw std::invalid_argument("qa " + shape_str(qa) + " and w " + shape_str(w) + " must be [M, K], [N, K]");
            const int M = static_cast<int>(qa.shape(0)), K = static_cast<int>(qa.shape(1)),
                      N = static_cast<int>(w.shape(0));
            expect_shape(zp, {M}, "zp");
            I32Array c({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(N)});
            ref::gemm_u8s8_i32(M, N, K, qa.data(), zp.data(), w.data(), c.mutable_data());
            return c;
        },
        py::arg("qa"), py::arg("zp"), py::arg("w"));

    m.def(
        "gelu",
        [](FArray x, const std::string& isa) {
            const KernelTable& kt = kernels_for(isa);
            py::array_t<float> y(x.request().shape);
            kt.gelu(x.size(), x.data(), y.mutable_data());
            return y;
        },
        py::arg("x"), py::arg("isa") = "");
    m.def(
        "gelu_ref",
        [](FArray x) {
            py::array_t<float> y(x.request().shape);
            for (py::ssize_t i = 0; i < x.size(); ++i) y.mutable_data()[i] = ref::gelu(x.data()[i]);
            return y;
        },
        py::arg("x"));
    (void)expect_finite;
}
