// The fused MLP products of model/mlp_gemm.cuh in plain C++: the oracle of the CUDA kernels.
// Inputs are floats holding bf16 values; the product is summed in double and rounded to float.
// The forward rounds it to bf16 (f) and applies model/ops_ref.h's activation to that, its result
// rounded to bf16 again; the backward takes its derivative from act and f's sign, as the kernel
// does.
#pragma once
#include <cmath>
#include <cstddef>
#include <vector>

#include "model/ops_ref.h"
#include "quant/half.h"

namespace pg {

inline float round_to_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// c[M, N] = a b^T, summed in double and rounded to float as the GPU's fp32 sum is; a [M, K],
// b [N, K].
inline std::vector<float> mlp_product_ref(const float* a, const float* b, int M, int N, int K) {
    std::vector<float> c(size_t(M) * N);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double s = 0;
            for (int k = 0; k < K; ++k) s += double(a[size_t(i) * K + k]) * b[size_t(j) * K + k];
            c[size_t(i) * N + j] = float(s);
        }
    return c;
}

// f = bf16(x w^T), act = bf16(leaky_relu2(f)); x [M, K], w [N, K].
inline void mlp_up_forward_ref(float* f, float* act, const float* x, const float* w, int M, int N, int K, float slope) {
    const std::vector<float> p = mlp_product_ref(x, w, M, N, K);
    const size_t n = p.size();
    for (size_t i = 0; i < n; ++i) f[i] = round_to_bf16(p[i]);
    leaky_relu2_forward(act, f, n, slope);
    for (size_t i = 0; i < n; ++i) act[i] = round_to_bf16(act[i]);
}

// df = bf16(g * 2 sqrt(act) * (negative ? -slope : 1)), g = dm wp in float: leaky_relu2_backward
// with f given by act and its sign (model/mlp_gemm.cuh); dm [M, K], wp [K, N], act and negative
// (f < 0) [M, N]. Overwrites df.
inline void mlp_down_backward_ref(float* df, const float* dm, const float* wp, const float* act,
                                  const std::vector<bool>& negative, int M, int N, int K, float slope) {
    std::vector<float> wpt(size_t(N) * K);  // [N, K]: the product reads rows
    for (int k = 0; k < K; ++k)
        for (int j = 0; j < N; ++j) wpt[size_t(j) * K + k] = wp[size_t(k) * N + j];
    const std::vector<float> g = mlp_product_ref(dm, wpt.data(), M, N, K);
    for (size_t i = 0; i < g.size(); ++i)
        df[i] = round_to_bf16(g[i] * std::sqrt(act[i]) * (negative[i] ? -2.f * slope : 2.f));
}

}  // namespace pg
