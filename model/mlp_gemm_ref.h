// The fused MLP products of model/mlp_gemm.cuh in plain C++: the oracle of the CUDA kernels.
// Inputs are floats holding bf16 values; the product is summed in double, rounded to bf16 as
// the GPU's bf16 output is, and the activation of model/ops_ref.h runs on the rounded values in
// float, its result rounded to bf16 again.
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

#include "model/ops_ref.h"
#include "quant/half.h"

namespace pg {

inline float round_to_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// c[M, N] = bf16(a b^T) with a [M, K], b [N, K].
inline std::vector<float> mlp_product_ref(const float* a, const float* b, int M, int N, int K) {
    std::vector<float> c(size_t(M) * N);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double s = 0;
            for (int k = 0; k < K; ++k) s += double(a[size_t(i) * K + k]) * b[size_t(j) * K + k];
            c[size_t(i) * N + j] = round_to_bf16(float(s));
        }
    return c;
}

// f = bf16(x w^T), act = bf16(leaky_relu2(f)); x [M, K], w [N, K].
inline void mlp_up_forward_ref(float* f, float* act, const float* x, const float* w, int M, int N, int K, float slope) {
    const std::vector<float> p = mlp_product_ref(x, w, M, N, K);
    const size_t n = p.size();
    std::copy(p.begin(), p.end(), f);
    leaky_relu2_forward(act, f, n, slope);
    for (size_t i = 0; i < n; ++i) act[i] = round_to_bf16(act[i]);
}

// df = bf16(leaky_relu2_backward(g = bf16(dm wp), f)); dm [M, K], wp [K, N]. Overwrites df.
inline void mlp_down_backward_ref(float* df, const float* dm, const float* wp, const float* f, int M, int N, int K,
                                  float slope) {
    std::vector<float> wpt(size_t(N) * K);  // [N, K]: the loop above reads rows
    for (int k = 0; k < K; ++k)
        for (int j = 0; j < N; ++j) wpt[size_t(j) * K + k] = wp[size_t(k) * N + j];
    const std::vector<float> g = mlp_product_ref(dm, wpt.data(), M, N, K);
    const size_t n = g.size();
    std::fill(df, df + n, 0.f);
    leaky_relu2_backward(df, g.data(), f, n, slope);
    for (size_t i = 0; i < n; ++i) df[i] = round_to_bf16(df[i]);
}

}  // namespace pg
