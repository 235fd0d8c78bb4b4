// kernels_ref.cc: see kernels_ref.h.
#include "kernels_ref.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

namespace bortengine {
namespace ref {

float gelu(float x) { return static_cast<float>(0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)))); }

void gemm(int M, int N, int K, const float* a, const float* w, const float* bias, Epilogue::Kind kind,
          const float* residual, float* c) {
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double s = 0;
            for (int k = 0; k < K; ++k) s += static_cast<double>(a[i * K + k]) * w[j * K + k];
            if (bias) s += bias[j];
            switch (kind) {
                case Epilogue::kGelu: s = 0.5 * s * (1.0 + std::erf(s / std::sqrt(2.0))); break;
                case Epilogue::kTanh: s = std::tanh(s); break;
                case Epilogue::kResidual: s += residual[i * N + j]; break;
                default: break;
            }
            c[i * N + j] = static_cast<float>(s);
        }
}

void layernorm(int M, int N, const float* x, const float* r, const float* g, const float* b, float eps, float* y) {
    std::vector<double> v(N);
    for (int i = 0; i < M; ++i) {
        double mean = 0, var = 0;
        for (int j = 0; j < N; ++j) {
            v[j] = static_cast<double>(x[i * N + j]) + (r ? r[i * N + j] : 0.0f);
            mean += v[j];
        }
        mean /= N;
        for (int j = 0; j < N; ++j) var += (v[j] - mean) * (v[j] - mean);
        var /= N;
        const double rstd = 1.0 / std::sqrt(var + eps);
        for (int j = 0; j < N; ++j) y[i * N + j] = static_cast<float>((v[j] - mean) * rstd * g[j] + b[j]);
    }
}

void attention(const float* qkv, int H, int heads, const std::vector<int>& seq_lens, const PositionBias& bias,
               float* ctx) {
    const int dh = H / heads;
    const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
    const std::ptrdiff_t ld = 3 * H;
    int start = 0;
    for (int T : seq_lens) {
        std::vector<double> p(T);
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < T; ++i) {
                const float* b = bias.head(h);
                const float* q = qkv + (start + i) * ld + h * dh;
                double mx = -1e300;
                for (int j = 0; j < T; ++j) {
                    const float* k = qkv + (start + j) * ld + H + h * dh;
                    double s = 0;
                    for (int d = 0; d < dh; ++d) s += static_cast<double>(q[d]) * k[d];
                    p[j] = s * scale + (b ? b[j - i] : 0.0f);
                    mx = p[j] > mx ? p[j] : mx;
                }
                double sum = 0;
                for (int j = 0; j < T; ++j) sum += (p[j] = std::exp(p[j] - mx));
                for (int d = 0; d < dh; ++d) {
                    double o = 0;
                    for (int j = 0; j < T; ++j) o += p[j] * qkv[(start + j) * ld + 2 * H + h * dh + d];
                    ctx[(start + i) * H + h * dh + d] = static_cast<float>(o / sum);
                }
            }
        start += T;
    }
}

void quantize_rows(int M, int K, const float* a, std::uint8_t* q, float* scale, std::int32_t* zp) {
    for (int i = 0; i < M; ++i) {
        const float* ai = a + static_cast<std::ptrdiff_t>(i) * K;
        float mn = 0.0f, mx = 0.0f;
        for (int k = 0; k < K; ++k) {
            mn = ai[k] < mn ? ai[k] : mn;
            mx = ai[k] > mx ? ai[k] : mx;
        }
        float s = (mx - mn) / 255.0f;
        if (!(s > 0.0f)) s = 1.0f;
        const float inv = 1.0f / s;
        const int z = static_cast<int>(std::nearbyint(-mn * inv));
        scale[i] = s;
        zp[i] = z;
        for (int k = 0; k < K; ++k) {
            float v = std::nearbyint(ai[k] * inv) + static_cast<float>(z);
            v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
            q[static_cast<std::ptrdiff_t>(i) * K + k] = static_cast<std::uint8_t>(v);
        }
    }
}

void gemm_u8s8_i32(int M, int N, int K, const std::uint8_t* qa, const std::int32_t* zp, const std::int8_t* w,
                   std::int32_t* c) {
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            std::int64_t s = 0;
            for (int k = 0; k < K; ++k)
                s += static_cast<std::int64_t>(qa[static_cast<std::ptrdiff_t>(i) * K + k] - zp[i]) *
                     w[static_cast<std::ptrdiff_t>(j) * K + k];
            c[static_cast<std::ptrdiff_t>(i) * N + j] = static_cast<std::int32_t>(s);
        }
}

std::uint16_t bf16(float x) {
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    if (std::isnan(x)) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    if (std::isinf(x)) return static_cast<std::uint16_t>(u >> 16);
    if (std::fabs(x) < FLT_MIN) return std::signbit(x) ? 0x8000u : 0u;
    // the neighbours: x cut to its top 16 bits (toward zero), and the next bf16 away from zero (2^128 past the
    // largest finite one: rounding to it overflows to infinity)
    const std::uint32_t lo = u & 0xFFFF0000u, hi = lo + 0x10000u;
    auto value = [](std::uint32_t bits) {
        if ((bits & 0x7FFFFFFFu) == 0x7F800000u) return std::copysign(std::ldexp(1.0, 128), bits >> 31 ? -1.0 : 1.0);
        float f;
        std::memcpy(&f, &bits, 4);
        return static_cast<double>(f);
    };
    const double below = std::fabs(x - value(lo)), above = std::fabs(value(hi) - x);
    const bool up = above < below || (above == below && ((lo >> 16) & 1u));
    return static_cast<std::uint16_t>((up ? hi : lo) >> 16);
}

}  // namespace ref
}  // namespace bortengine
