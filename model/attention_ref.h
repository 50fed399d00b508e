// Causal grouped-query attention, plain C++: the oracle for the CUDA flash-attention
// kernels and the attention of the CPU reference model. T is float (training) or double
// (gradient checks).
//
// Layout (row-major): q, out: [B, Tn, Hq, D]; k, v: [B, Tn, Hkv, D]. Query head h reads
// KV head h / (Hq / Hkv). Scores are q.k / sqrt(D), causal (key j <= query i).
// lse: [B, Hq, Tn], the natural-log sum-exp of each query's scaled scores; the forward
// saves it so the backward can rebuild the probabilities without storing them.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace pg {

template <typename T>
void attention_forward_ref(const T* q, const T* k, const T* v, T* out, T* lse, int B, int Tn,
                           int Hq, int Hkv, int D) {
    const int group = Hq / Hkv;
    const T scale = T(1) / std::sqrt(T(D));
// Small problems (gradient checks) stay serial: starting threads would cost more than the work.
#pragma omp parallel for collapse(2) schedule(static) if (size_t(B) * Hq * Tn * Tn * D > (1u << 18))
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < Hq; ++h) {
            std::vector<T> p(Tn);
            const int hk = h / group;
            for (int i = 0; i < Tn; ++i) {
                const T* qi = q + ((size_t(b) * Tn + i) * Hq + h) * D;
                T mx = -INFINITY;
                for (int j = 0; j <= i; ++j) {
                    const T* kj = k + ((size_t(b) * Tn + j) * Hkv + hk) * D;
                    T s = 0;
#pragma omp simd reduction(+ : s)
                    for (int d = 0; d < D; ++d) s += qi[d] * kj[d];
                    p[j] = s * scale;
                    mx = std::max(mx, p[j]);
                }
                T sum = 0;
                for (int j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
                T* oi = out + ((size_t(b) * Tn + i) * Hq + h) * D;
                for (int d = 0; d < D; ++d) oi[d] = 0;
                for (int j = 0; j <= i; ++j) {
                    const T* vj = v + ((size_t(b) * Tn + j) * Hkv + hk) * D;
                    const T w = p[j] / sum;
                    for (int d = 0; d < D; ++d) oi[d] += w * vj[d];
                }
                lse[(size_t(b) * Hq + h) * Tn + i] = mx + std::log(sum);
            }
        }
}

// Gradients of the forward above; dq, dk, dv are overwritten. With P = softmax(S) and
// dP = dout . v^T: dS = P * (dP - rowsum(dout * out)), dq = dS k / sqrt(D), dk = dS^T q / sqrt(D),
// dv = P^T dout. KV heads sum the contributions of every query head in their group.
template <typename T>
void attention_backward_ref(const T* q, const T* k, const T* v, const T* out, const T* lse,
                            const T* dout, T* dq, T* dk, T* dv, int B, int Tn, int Hq, int Hkv,
                            int D) {
    const int group = Hq / Hkv;
    const T scale = T(1) / std::sqrt(T(D));
    std::fill(dq, dq + size_t(B) * Tn * Hq * D, T(0));
    std::fill(dk, dk + size_t(B) * Tn * Hkv * D, T(0));
    std::fill(dv, dv + size_t(B) * Tn * Hkv * D, T(0));
    // Parallel over (batch, kv head): each task owns its dk/dv slice, so no races.
#pragma omp parallel for collapse(2) schedule(static) if (size_t(B) * Hq * Tn * Tn * D > (1u << 18))
    for (int b = 0; b < B; ++b)
        for (int hk = 0; hk < Hkv; ++hk)
            for (int h = hk * group; h < (hk + 1) * group; ++h)
                for (int i = 0; i < Tn; ++i) {
                    const size_t qo = ((size_t(b) * Tn + i) * Hq + h) * D;
                    const T* qi = q + qo;
                    const T* doi = dout + qo;
                    T delta = 0;
                    // Summed in the same order as dp below: where the probabilities are one-hot
                    // (T = 1), dp - delta is then exactly 0, as it is mathematically.
#pragma omp simd reduction(+ : delta)
                    for (int d = 0; d < D; ++d) delta += doi[d] * out[qo + d];
                    const T l = lse[(size_t(b) * Hq + h) * Tn + i];
                    for (int j = 0; j <= i; ++j) {
                        const size_t ko = ((size_t(b) * Tn + j) * Hkv + hk) * D;
                        T s = 0, dp = 0;
#pragma omp simd reduction(+ : s, dp)
                        for (int d = 0; d < D; ++d) {
                            s += qi[d] * k[ko + d];
                            dp += doi[d] * v[ko + d];
                        }
                        const T p = std::exp(s * scale - l);
                        const T ds = p * (dp - delta) * scale;
                        for (int d = 0; d < D; ++d) {
                            dq[qo + d] += ds * k[ko + d];
                            dk[ko + d] += ds * qi[d];
                            dv[ko + d] += p * doi[d];
                        }
                    }
                }
}

}  // namespace pg
