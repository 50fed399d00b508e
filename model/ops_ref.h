// The operations of the model, plain C++ on the CPU: the oracle for the CUDA kernels and
// the CPU training path. T is float (training) or double (gradient checks).
//
// Each op is a pair xxx_forward / xxx_backward over flat row-major arrays (N rows of C
// values unless said otherwise). Backward functions ADD into the gradients of their
// inputs and parameters (as in llm.c), so a tensor read by several ops collects all of its
// gradient; callers zero gradient buffers first. Inputs a backward needs are passed back
// in by the caller, who keeps the forward's activations.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pg {

// One epsilon for every RMS normalisation, inside the square root.
constexpr double kRmsEps = 1e-6;

// Ops run serially below this many elements: a parallel region costs microseconds, and
// far more when another process holds a core, which the many tiny ops of a
// gradient check would pay thousands of times.
constexpr size_t kParallelMin = size_t(1) << 15;

template <typename T>
T sigmoid(T x) {
    return T(1) / (T(1) + std::exp(-x));
}

// ---------------------------------------------------------------------------------------
// Matrix multiply. One blocked kernel serves the three products of a linear layer, taking
// A and B through (row stride, column stride) so that transposes cost nothing:
//   forward out = inp W^T;  backward dinp += dout W,  dW += dout^T inp.
// Blocks of A (MC x KC) and B (KC x NC) are packed into contiguous zero-padded panels, then
// a register tile of MR x NR outputs runs over the panel. The tile uses GCC vector
// extensions, which compile to AVX2 FMAs under -march=x86-64-v3; written as plain loops,
// GCC keeps the accumulators in memory and runs 20x slower.

template <typename T>
struct GemmTile {
    static constexpr int VL = 32 / int(sizeof(T));  // lanes of a 256-bit register
    static constexpr int MR = 6, NR = 2 * VL;       // 12 accumulator registers
    static constexpr int MC = 16 * MR, NC = 16 * NR, KC = 256;
};

// C[0:mr, 0:nr] += (packed A panel [kc][MR]) x (packed B panel [kc][NR]). Kept out of line:
// inlined into the packing loops, the accumulators no longer fit the registers.
template <typename T>
__attribute__((noinline)) void gemm_tile(int kc, const T* __restrict ap, const T* __restrict bp,
                                         T* __restrict c, ptrdiff_t ldc, int mr, int nr) {
    constexpr int VL = GemmTile<T>::VL, MR = GemmTile<T>::MR, NR = GemmTile<T>::NR, NV = NR / VL;
    typedef T V __attribute__((vector_size(32)));
    V acc[MR][NV] = {};
    for (int k = 0; k < kc; ++k) {
        V b[NV];
        for (int v = 0; v < NV; ++v) __builtin_memcpy(&b[v], bp + k * NR + v * VL, sizeof(V));
        for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] += ap[k * MR + r] * b[v];
    }
    for (int r = 0; r < mr; ++r)
        for (int j = 0; j < nr; ++j) c[r * ldc + j] += acc[r][j / VL][j % VL];
}

// C[M,N] += A[M,K] B[K,N]; A(m,k) = A[m*a_rs + k*a_cs], B(k,n) = B[k*b_rs + n*b_cs],
// C row-major with leading dimension ldc. Threads split C into MC x NC blocks; each C
// element sums its k terms in a fixed order, whatever the thread count or other rows.
template <typename T>
void gemm_acc(int M, int N, int K, const T* A, ptrdiff_t a_rs, ptrdiff_t a_cs, const T* B,
              ptrdiff_t b_rs, ptrdiff_t b_cs, T* C, ptrdiff_t ldc) {
    using G = GemmTile<T>;
    const int mblocks = (M + G::MC - 1) / G::MC, nblocks = (N + G::NC - 1) / G::NC;
    auto round_up = [](int x, int r) { return (x + r - 1) / r * r; };
    const size_t a_need = size_t(std::min(G::MC, round_up(M, G::MR))) * std::min(G::KC, K);
    const size_t b_need = size_t(std::min(G::NC, round_up(N, G::NR))) * std::min(G::KC, K);
#pragma omp parallel if (double(M) * N * K >= 64.0 * kParallelMin)
    {
        // Packing buffers live as long as the thread: small products are common and a fresh
        // allocation (page faults, zeroing) would cost more than the product.
        thread_local std::vector<T> Ap, Bp;
        if (Ap.size() < a_need) Ap.resize(a_need);
        if (Bp.size() < b_need) Bp.resize(b_need);
#pragma omp for collapse(2) schedule(dynamic)
        for (int mb = 0; mb < mblocks; ++mb)
            for (int nb = 0; nb < nblocks; ++nb) {
                const int m0 = mb * G::MC, m1 = std::min(M, m0 + G::MC);
                const int n0 = nb * G::NC, n1 = std::min(N, n0 + G::NC);
                for (int k0 = 0; k0 < K; k0 += G::KC) {
                    const int kc = std::min(G::KC, K - k0);
                    for (int mp = m0; mp < m1; mp += G::MR) {
                        T* ap = Ap.data() + size_t(mp - m0) * kc;
                        for (int k = 0; k < kc; ++k)
                            for (int r = 0; r < G::MR; ++r)
                                ap[k * G::MR + r] = mp + r < m1 ? A[(mp + r) * a_rs + (k0 + k) * a_cs] : T(0);
                    }
                    for (int np = n0; np < n1; np += G::NR) {
                        T* bp = Bp.data() + size_t(np - n0) * kc;
                        for (int k = 0; k < kc; ++k)
                            for (int j = 0; j < G::NR; ++j)
                                bp[k * G::NR + j] = np + j < n1 ? B[(k0 + k) * b_rs + (np + j) * b_cs] : T(0);
                    }
                    for (int np = n0; np < n1; np += G::NR)
                        for (int mp = m0; mp < m1; mp += G::MR)
                            gemm_tile(kc, Ap.data() + size_t(mp - m0) * kc, Bp.data() + size_t(np - n0) * kc,
                                      C + mp * ldc + np, ldc, std::min(G::MR, m1 - mp), std::min(G::NR, n1 - np));
                }
            }
    }
}

// out[N, out_dim] = inp[N, in] W^T with W [out_dim, in].
template <typename T>
void matmul_forward(T* out, const T* inp, const T* w, int N, int in, int out_dim) {
    std::fill(out, out + size_t(N) * out_dim, T(0));
    gemm_acc<T>(N, out_dim, in, inp, in, 1, w, 1, in, out, out_dim);
}

template <typename T>
void matmul_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, int N, int in, int out_dim) {
    gemm_acc<T>(N, in, out_dim, dout, out_dim, 1, w, in, 1, dinp, in);
    gemm_acc<T>(out_dim, in, N, dout, 1, out_dim, inp, in, 1, dw, in);
}

// A per-row scale s folded into a matrix W [rows, cols] (a product reads diag(s) W): from g, the
// gradient of diag(s) W, W's gradient dW += diag(s) g and the scale's ds[r] += W[r, :] . g[r, :].
template <typename T>
void scaled_rows_backward(T* dW, T* ds, const T* g, const T* W, const T* s, int rows, int cols) {
    for (int r = 0; r < rows; ++r) {
        const size_t o = size_t(r) * cols;
        T dot = 0;
        for (int c = 0; c < cols; ++c) {
            dW[o + c] += s[r] * g[o + c];
            dot += W[o + c] * g[o + c];
        }
        ds[r] += dot;
    }
}

// ---------------------------------------------------------------------------------------
// Embedding lookup: out[n] = table[idx[n]].

template <typename T>
void embedding_forward(T* out, const int32_t* idx, const T* table, int N, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n) std::copy_n(table + size_t(idx[n]) * C, C, out + size_t(n) * C);
}

// Serial: rows with the same id add into the same table row.
template <typename T>
void embedding_backward(T* dtable, const int32_t* idx, const T* dout, int N, int C) {
    for (int n = 0; n < N; ++n) {
        T* d = dtable + size_t(idx[n]) * C;
        const T* g = dout + size_t(n) * C;
        for (int c = 0; c < C; ++c) d[c] += g[c];
    }
}

// ---------------------------------------------------------------------------------------
// RMSNorm without weight: out = scale * x * r, r = 1 / sqrt(mean(x^2) + eps), per row.
// rstd[N] keeps r for the backward. Per-head QK norm is the same op with rows = heads.

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, int N, int C, T scale = T(1)) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const T* x = inp + size_t(n) * C;
        T ss = 0;
        for (int c = 0; c < C; ++c) ss += x[c] * x[c];
        const T r = T(1) / std::sqrt(ss / T(C) + T(kRmsEps));
        rstd[n] = r;
        T* y = out + size_t(n) * C;
        for (int c = 0; c < C; ++c) y[c] = x[c] * r * scale;
    }
}

// dx = scale * r * (dy - x * r^2 * mean(dy * x)).
template <typename T>
void rmsnorm_backward(T* dinp, const T* dout, const T* inp, const T* rstd, int N, int C, T scale = T(1)) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const T* x = inp + size_t(n) * C;
        const T* dy = dout + size_t(n) * C;
        const T r = rstd[n];
        T dot = 0;
        for (int c = 0; c < C; ++c) dot += dy[c] * x[c];
        const T k = r * r * dot / T(C);
        T* dx = dinp + size_t(n) * C;
        for (int c = 0; c < C; ++c) dx[c] += scale * r * (dy[c] - x[c] * k);
    }
}

// ---------------------------------------------------------------------------------------
// Partial rotary embedding on [B, Tn, H, hd] (position = index within the sequence). For
// i < rope_dims/2 the pair (x_i, x_{i+half}) turns by angle pos * base^(-2i/rope_dims), in
// the records' sign convention: x_i' = x_i cos + x_{i+half} sin,
// x_{i+half}' = -x_i sin + x_{i+half} cos. Dims from rope_dims on pass through. The
// angles are computed in double so that float and double runs see the same rotation.
// The backward is the transposed rotation (dir = -1). out must not alias inp.

template <typename T>
void rope_rotate(T* out, const T* inp, int B, int Tn, int H, int hd, int rope_dims, double base, int dir,
                 bool accumulate) {
    const int half = rope_dims / 2;
    std::vector<T> cs(size_t(Tn) * half), sn(size_t(Tn) * half);
    for (int t = 0; t < Tn; ++t)
        for (int i = 0; i < half; ++i) {
            const double ang = t * std::pow(base, -2.0 * i / rope_dims);
            cs[size_t(t) * half + i] = T(std::cos(ang));
            sn[size_t(t) * half + i] = T(dir * std::sin(ang));
        }
#pragma omp parallel for collapse(2) schedule(static) if (size_t(B) * Tn * H * hd >= kParallelMin)
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t)
            for (int h = 0; h < H; ++h) {
                const size_t o = ((size_t(b) * Tn + t) * H + h) * hd;
                const T* x = inp + o;
                T* y = out + o;
                const T* c = cs.data() + size_t(t) * half;
                const T* s = sn.data() + size_t(t) * half;
                for (int i = 0; i < hd; ++i) {
                    T v = x[i];
                    if (i < half) v = x[i] * c[i] + x[i + half] * s[i];
                    else if (i < rope_dims) v = -x[i - half] * s[i - half] + x[i] * c[i - half];
                    y[i] = accumulate ? y[i] + v : v;
                }
            }
}

template <typename T>
void rope_forward(T* out, const T* inp, int B, int Tn, int H, int hd, int rope_dims, double base) {
    rope_rotate(out, inp, B, Tn, H, hd, rope_dims, base, +1, false);
}

template <typename T>
void rope_backward(T* dinp, const T* dout, int B, int Tn, int H, int hd, int rope_dims, double base) {
    rope_rotate(dinp, dout, B, Tn, H, hd, rope_dims, base, -1, true);
}

// ---------------------------------------------------------------------------------------
// Per-head gain (q_gain): out[n, h, :] = gain[h] * inp[n, h, :].

template <typename T>
void head_gain_forward(T* out, const T* inp, const T* gain, int N, int H, int hd) {
#pragma omp parallel for schedule(static) if (size_t(N) * H * hd >= kParallelMin)
    for (int n = 0; n < N; ++n)
        for (int h = 0; h < H; ++h)
            for (int d = 0; d < hd; ++d) {
                const size_t i = (size_t(n) * H + h) * hd + d;
                out[i] = gain[h] * inp[i];
            }
}

template <typename T>
void head_gain_backward(T* dinp, T* dgain, const T* dout, const T* inp, const T* gain, int N, int H, int hd) {
#pragma omp parallel for schedule(static) if (size_t(N) * H * hd >= kParallelMin)
    for (int h = 0; h < H; ++h) {
        T g = 0;
        for (int n = 0; n < N; ++n)
            for (int d = 0; d < hd; ++d) {
                const size_t i = (size_t(n) * H + h) * hd + d;
                dinp[i] += gain[h] * dout[i];
                g += dout[i] * inp[i];
            }
        dgain[h] += g;
    }
}

// ---------------------------------------------------------------------------------------
// XSA, Exclusive Self Attention (arXiv 2603.09078), as in the parameter-golf records: the
// attention output of each query head loses its component along its own token's value.
// For row n, query head h and its KV head hk = h / (H / Hkv):
//   vn = v[n, hk] / max(||v[n, hk]||, 1e-12)      (torch's F.normalize)
//   out[n, h] = y[n, h] - (y[n, h] . vn) vn
// y, out: [N, H, hd]; v: [N, Hkv, hd] (the values the attention read).

constexpr double kXsaNormFloor = 1e-12;

template <typename T>
void xsa_forward(T* out, const T* y, const T* v, int N, int H, int Hkv, int hd) {
    const int group = H / Hkv;
#pragma omp parallel for schedule(static) if (size_t(N) * H * hd >= kParallelMin)
    for (int n = 0; n < N; ++n)
        for (int hk = 0; hk < Hkv; ++hk) {
            const T* vv = v + (size_t(n) * Hkv + hk) * hd;
            T ss = 0;
            for (int d = 0; d < hd; ++d) ss += vv[d] * vv[d];
            const T inv = T(1) / std::max(std::sqrt(ss), T(kXsaNormFloor));
            for (int h = hk * group; h < (hk + 1) * group; ++h) {
                const size_t o = (size_t(n) * H + h) * hd;
                T dot = 0;
                for (int d = 0; d < hd; ++d) dot += y[o + d] * vv[d] * inv;
                for (int d = 0; d < hd; ++d) out[o + d] = y[o + d] - dot * vv[d] * inv;
            }
        }
}

// With P = I - vn vn^T: dy = P dout (P is symmetric);
// dvn = -((vn . y) dout + (vn . dout) y) summed over the group; dv = (dvn - vn (vn . dvn)) / ||v||
// (just dvn / 1e-12 where the floor is active, since vn is then linear in v).
template <typename T>
void xsa_backward(T* dy, T* dv, const T* dout, const T* y, const T* v, int N, int H, int Hkv, int hd) {
    const int group = H / Hkv;
#pragma omp parallel for schedule(static) if (size_t(N) * H * hd >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        std::vector<T> vn(hd), dvn(hd);
        for (int hk = 0; hk < Hkv; ++hk) {
            const T* vv = v + (size_t(n) * Hkv + hk) * hd;
            T ss = 0;
            for (int d = 0; d < hd; ++d) ss += vv[d] * vv[d];
            const T norm = std::sqrt(ss);
            const bool floored = norm < T(kXsaNormFloor);
            const T inv = T(1) / (floored ? T(kXsaNormFloor) : norm);
            for (int d = 0; d < hd; ++d) vn[d] = vv[d] * inv, dvn[d] = 0;
            for (int h = hk * group; h < (hk + 1) * group; ++h) {
                const size_t o = (size_t(n) * H + h) * hd;
                T vy = 0, vg = 0;
                for (int d = 0; d < hd; ++d) vy += vn[d] * y[o + d], vg += vn[d] * dout[o + d];
                for (int d = 0; d < hd; ++d) {
                    dy[o + d] += dout[o + d] - vg * vn[d];
                    dvn[d] -= vy * dout[o + d] + vg * y[o + d];
                }
            }
            T vd = 0;
            if (!floored)
                for (int d = 0; d < hd; ++d) vd += vn[d] * dvn[d];
            T* dvv = dv + (size_t(n) * Hkv + hk) * hd;
            for (int d = 0; d < hd; ++d) dvv[d] += (dvn[d] - vn[d] * vd) * inv;
        }
    }
}

// ---------------------------------------------------------------------------------------
// MLP activations. LeakyReLU(slope)^2: z > 0 ? z^2 : (slope z)^2, elementwise over n values.

template <typename T>
void leaky_relu2_forward(T* out, const T* inp, size_t n, T slope) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
        const T z = inp[i] > 0 ? inp[i] : slope * inp[i];
        out[i] = z * z;
    }
}

template <typename T>
void leaky_relu2_backward(T* dinp, const T* dout, const T* inp, size_t n, T slope) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i)
        dinp[i] += dout[i] * T(2) * inp[i] * (inp[i] > 0 ? T(1) : slope * slope);
}

// SwiGLU: inp rows are [a | b] of 2*hidden values, out = silu(a) * b with silu(a) = a sigmoid(a).
template <typename T>
void swiglu_forward(T* out, const T* inp, int N, int hidden) {
#pragma omp parallel for schedule(static) if (size_t(N) * hidden >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const T* a = inp + size_t(n) * 2 * hidden;
        const T* b = a + hidden;
        T* y = out + size_t(n) * hidden;
        for (int j = 0; j < hidden; ++j) y[j] = a[j] * sigmoid(a[j]) * b[j];
    }
}

template <typename T>
void swiglu_backward(T* dinp, const T* dout, const T* inp, int N, int hidden) {
#pragma omp parallel for schedule(static) if (size_t(N) * hidden >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const T* a = inp + size_t(n) * 2 * hidden;
        const T* b = a + hidden;
        T* da = dinp + size_t(n) * 2 * hidden;
        T* db = da + hidden;
        const T* dy = dout + size_t(n) * hidden;
        for (int j = 0; j < hidden; ++j) {
            const T s = sigmoid(a[j]);
            da[j] += dy[j] * b[j] * s * (T(1) + a[j] * (T(1) - s));
            db[j] += dy[j] * a[j] * s;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Logit softcap: out = cap * tanh(inp / cap), elementwise; out may alias inp.

template <typename T>
void softcap_forward(T* out, const T* inp, size_t n, T cap) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) out[i] = cap * std::tanh(inp[i] / cap);
}

// d/dx cap*tanh(x/cap) = 1 - tanh^2 = 1 - (out/cap)^2: the backward needs only the output.
template <typename T>
void softcap_backward(T* dinp, const T* dout, const T* out, size_t n, T cap) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
        const T t = out[i] / cap;
        dinp[i] += dout[i] * (T(1) - t * t);
    }
}

// Cross-entropy of each row of logits [N, V] against its target: logsumexp - logit[target].
template <typename T>
void crossentropy_forward(T* losses, const T* logits, const int32_t* targets, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const T* z = logits + size_t(n) * V;
        const T mx = *std::max_element(z, z + V);
        T sum = 0;
        for (int v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
        losses[n] = mx + std::log(sum) - z[targets[n]];
    }
}

// dlogits += dloss * (softmax(logits) - onehot(target)); dloss is d(objective)/d(each row's
// loss), 1/N for a mean.
template <typename T>
void crossentropy_backward(T* dlogits, const T* logits, const int32_t* targets, T dloss, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const T* z = logits + size_t(n) * V;
        T* dz = dlogits + size_t(n) * V;
        const T mx = *std::max_element(z, z + V);
        T sum = 0;
        for (int v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
        for (int v = 0; v < V; ++v) dz[v] += dloss * std::exp(z[v] - mx) / sum;
        dz[targets[n]] -= dloss;
    }
}

// ---------------------------------------------------------------------------------------
// BigramHash: an extra embedding indexed by a hash of (previous token, token).
// The first position of a sequence has no previous token and gets the last bucket.

inline void bigram_hash(int32_t* buckets, const int32_t* idx, int B, int Tn, int n_buckets) {
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t) {
            const size_t i = size_t(b) * Tn + t;
            if (t == 0) {
                buckets[i] = n_buckets - 1;
                continue;
            }
            const uint32_t cur = uint32_t(idx[i]), prev = uint32_t(idx[i - 1]);
            buckets[i] = int32_t(((36313u * cur) ^ (27191u * prev)) % uint32_t(n_buckets - 1));
        }
}

// x[N, D] += scale * (emb[bucket] proj^T), emb [n_buckets, bd], proj [D, bd], scale [1].
// e [N, bd] (the looked-up rows, proj's input) and p [N, D] (before scaling) are kept for
// the backward.
template <typename T>
void bigram_forward(T* x, T* e, T* p, const int32_t* buckets, const T* emb, const T* proj, const T* scale,
                    int N, int bd, int D) {
    embedding_forward(e, buckets, emb, N, bd);
    matmul_forward(p, e, proj, N, bd, D);
#pragma omp parallel for schedule(static) if (size_t(N) * D >= kParallelMin)
    for (size_t i = 0; i < size_t(N) * D; ++i) x[i] += scale[0] * p[i];
}

template <typename T>
void bigram_backward(T* demb, T* dproj, T* dscale, const T* dx, const T* e, const T* p, const int32_t* buckets,
                     const T* proj, const T* scale, int N, int bd, int D) {
    std::vector<T> dp(size_t(N) * D), de(size_t(N) * bd, T(0));
    T ds = 0;
    for (size_t i = 0; i < dp.size(); ++i) {
        dp[i] = scale[0] * dx[i];
        ds += dx[i] * p[i];
    }
    dscale[0] += ds;
    matmul_backward(de.data(), dproj, dp.data(), e, proj, N, bd, D);
    embedding_backward(demb, buckets, de.data(), N, bd);
}

// ---------------------------------------------------------------------------------------
// SmearGate on [B, Tn, C]: out_t = (1 - g) x_t + g x_{t-1} with g = sigmoid(gate) [C] and
// x_{-1} = 0 at the start of each sequence.

template <typename T>
void smear_forward(T* out, const T* inp, const T* gate, int B, int Tn, int C) {
#pragma omp parallel for collapse(2) schedule(static) if (size_t(B) * Tn * C >= kParallelMin)
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t) {
            const size_t o = (size_t(b) * Tn + t) * C;
            for (int c = 0; c < C; ++c) {
                const T g = sigmoid(gate[c]);
                const T prev = t > 0 ? inp[o - C + c] : T(0);
                out[o + c] = (T(1) - g) * inp[o + c] + g * prev;
            }
        }
}

template <typename T>
void smear_backward(T* dinp, T* dgate, const T* dout, const T* inp, const T* gate, int B, int Tn, int C) {
    std::vector<T> g(C), dg(C, T(0));
    for (int c = 0; c < C; ++c) g[c] = sigmoid(gate[c]);
#pragma omp parallel for collapse(2) schedule(static) if (size_t(B) * Tn * C >= kParallelMin)
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t) {
            const size_t o = (size_t(b) * Tn + t) * C;
            for (int c = 0; c < C; ++c) {
                const T next = t + 1 < Tn ? dout[o + C + c] : T(0);
                dinp[o + c] += (T(1) - g[c]) * dout[o + c] + g[c] * next;
            }
        }
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t) {
            const size_t o = (size_t(b) * Tn + t) * C;
            for (int c = 0; c < C; ++c) dg[c] += dout[o + c] * ((t > 0 ? inp[o - C + c] : T(0)) - inp[o + c]);
        }
    for (int c = 0; c < C; ++c) dgate[c] += dg[c] * g[c] * (T(1) - g[c]);
}

// ---------------------------------------------------------------------------------------
// U-Net skip, per channel: out = g x + (1 - g) (w s), g = sigmoid(gate); s is the saved
// encoder output, w and gate one row of skip.weights / skip.gates.

template <typename T>
void skip_mix_forward(T* out, const T* x, const T* s, const T* w, const T* gate, int N, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            const T g = sigmoid(gate[c]);
            out[i] = g * x[i] + (T(1) - g) * w[c] * s[i];
        }
}

template <typename T>
void skip_mix_backward(T* dx, T* ds, T* dw, T* dgate, const T* dout, const T* x, const T* s, const T* w,
                       const T* gate, int N, int C) {
    std::vector<T> g(C), gw(C, T(0)), gg(C, T(0));
    for (int c = 0; c < C; ++c) g[c] = sigmoid(gate[c]);
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            dx[i] += g[c] * dout[i];
            ds[i] += (T(1) - g[c]) * w[c] * dout[i];
        }
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            gw[c] += s[i] * dout[i];
            gg[c] += dout[i] * (x[i] - w[c] * s[i]);
        }
    for (int c = 0; c < C; ++c) {
        dw[c] += (T(1) - g[c]) * gw[c];
        dgate[c] += gg[c] * g[c] * (T(1) - g[c]);
    }
}

// ---------------------------------------------------------------------------------------
// Weighted sums with per-channel weights (wstride 1, weights [C]) or one scalar weight
// (wstride 0). Parameter gradients are summed over rows serially, in row order, so that
// they do not depend on the thread count. mix: out = wa a + wb b (resid_mix with x0, v_mix with the first V).
// add_scaled: out = x + w a (the residual branches, the bigram term); out may alias x.

template <typename T>
void mix_forward(T* out, const T* a, const T* b, const T* wa, const T* wb, int N, int C, int wstride) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            out[i] = wa[c * wstride] * a[i] + wb[c * wstride] * b[i];
        }
}

template <typename T>
void mix_backward(T* da, T* db, T* dwa, T* dwb, const T* dout, const T* a, const T* b, const T* wa, const T* wb,
                  int N, int C, int wstride) {
    std::vector<T> ga(C, T(0)), gb(C, T(0));
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            da[i] += wa[c * wstride] * dout[i];
            db[i] += wb[c * wstride] * dout[i];
        }
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            ga[c] += dout[i] * a[i];
            gb[c] += dout[i] * b[i];
        }
    for (int c = 0; c < C; ++c) {
        dwa[c * wstride] += ga[c];
        dwb[c * wstride] += gb[c];
    }
}

template <typename T>
void add_scaled_forward(T* out, const T* x, const T* a, const T* w, int N, int C, int wstride) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            out[i] = x[i] + w[c * wstride] * a[i];
        }
}

template <typename T>
void add_scaled_backward(T* dx, T* da, T* dw, const T* dout, const T* a, const T* w, int N, int C, int wstride) {
    std::vector<T> gw(C, T(0));
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            dx[i] += dout[i];
            da[i] += w[c * wstride] * dout[i];
        }
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) gw[c] += dout[size_t(n) * C + c] * a[size_t(n) * C + c];
    for (int c = 0; c < C; ++c) dw[c * wstride] += gw[c];
}

// ---------------------------------------------------------------------------------------
// Fused forms, as the GPU runs them (model/kernels.cuh): the oracles of those kernels, built
// from the ops above or written out where they only regroup them. RefModel runs the ops
// above one by one. Unlike the ops above, gradients that feed a GEMM (da, dqkv, dlogits)
// and the residual gradient dx of residual_backward are overwritten, not added to.

// The terms of a residual-stream sum, out = wx x + w0 x0 + wa a: x and x0 are streams of the
// residual, a an addend such as the bigram's projection (all bf16 on the GPU). A null term is
// absent, a null weight is 1; weights are [C] (wstride 1) or one scalar (wstride 0).
template <typename S, typename B, typename W>
struct ResidualTerms {
    const S *x = nullptr, *x0 = nullptr;
    const B* a = nullptr;
    const W *wx = nullptr, *w0 = nullptr, *wa = nullptr;
    int wstride = 1;
};

// The gradients residual_backward writes; null ones are skipped.
template <typename S, typename B, typename W>
struct ResidualGrads {
    S* dx = nullptr;                 // = wx g
    S* dx0 = nullptr;                // += w0 g (= when !add_dx0: the gradient's first writer)
    B* da = nullptr;                 // = wa g
    W *dwx = nullptr, *dw0 = nullptr, *dwa = nullptr;  // += sum over rows of g * term
    bool add_dx0 = true;
};

// Row n's sum of the terms into out[C].
template <typename S, typename B, typename W, typename T>
void residual_row(T* out, const ResidualTerms<S, B, W>& t, int n, int C) {
    const size_t o = size_t(n) * C;
    auto w = [&](const W* p, int c) { return p ? T(p[c * t.wstride]) : T(1); };
    for (int c = 0; c < C; ++c) {
        T s = 0;
        if (t.x) s += w(t.wx, c) * T(t.x[o + c]);
        if (t.x0) s += w(t.w0, c) * T(t.x0[o + c]);
        if (t.a) s += w(t.wa, c) * T(t.a[o + c]);
        out[c] = s;
    }
}

// sum (if non-null) = the terms' sum; norm (if non-null) = scale * rmsnorm(sum), rstd [N].
template <typename T>
void residual_forward(T* sum, T* norm, T* rstd, const ResidualTerms<T, T, T>& t, int N, int C, T scale) {
    std::vector<T> s(size_t(N) * C);
    for (int n = 0; n < N; ++n) residual_row(s.data() + size_t(n) * C, t, n, C);
    if (sum) std::copy(s.begin(), s.end(), sum);
    if (norm) rmsnorm_forward(norm, rstd, s.data(), N, C, scale);
}

// The backward of a residual sum whose gradient is dy (+ dadd) and which, when dnorm is
// given, also fed scale * rmsnorm (input xn, the stored sum; or, when xn is null, the terms'
// sum again; rstd from the forward):
//   g = dy + dadd + rmsnorm_backward(dnorm)
// dres (if non-null; may alias dy) = g, then each term's gradient from g (ResidualGrads).
template <typename T>
void residual_backward(T* dres, const T* dy, const T* dadd, const T* dnorm, const T* xn, const T* rstd, T scale,
                       const ResidualTerms<T, T, T>& t, const ResidualGrads<T, T, T>& d, int N, int C) {
    const size_t NC = size_t(N) * C;
    std::vector<T> g(dy, dy + NC);
    if (dadd)
        for (size_t i = 0; i < NC; ++i) g[i] += dadd[i];
    if (dnorm) {
        std::vector<T> s(NC);
        if (xn) std::copy(xn, xn + NC, s.begin());
        else
            for (int n = 0; n < N; ++n) residual_row(s.data() + size_t(n) * C, t, n, C);
        rmsnorm_backward(g.data(), dnorm, s.data(), rstd, N, C, scale);
    }
    if (dres) std::copy(g.begin(), g.end(), dres);
    auto w = [&](const T* p, int c) { return p ? p[c * t.wstride] : T(1); };
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            const size_t i = size_t(n) * C + c;
            if (d.dx) d.dx[i] = w(t.wx, c) * g[i];
            if (d.dx0) d.dx0[i] = (d.add_dx0 ? d.dx0[i] : T(0)) + w(t.w0, c) * g[i];
            if (d.da) d.da[i] = w(t.wa, c) * g[i];
            if (d.dwx) d.dwx[c * t.wstride] += g[i] * t.x[i];
            if (d.dw0) d.dw0[c * t.wstride] += g[i] * t.x0[i];
            if (d.dwa) d.dwa[c * t.wstride] += g[i] * t.a[i];
        }
}

// The shape of the attention's inputs: the fused projection qkv [N, (H + 2 Hkv) hd] holds
// each row's q | k | v; q is [N, H, hd], k and v [N, Hkv, hd], N = B * Tn.
struct QkvShape {
    int B = 0, Tn = 0, H = 0, Hkv = 0, hd = 0, rope_dims = 0;
    float rope_base = 10000.f;
    bool norm = true;  // QK norm
    int N() const { return B * Tn; }
    int width() const { return (H + 2 * Hkv) * hd; }
};

// F: the fp32 side (statistics, parameters and their gradients), A: the activations (bf16 on
// the GPU).
template <typename F, typename A>
struct QkvForward {
    A *q = nullptr, *k = nullptr, *v = nullptr;
    F *q_rstd = nullptr, *k_rstd = nullptr;  // [N, H], [N, Hkv]; written with norm
    const A* qkv = nullptr;
    const F* q_gain = nullptr;   // [H], or null
    const A* v_first = nullptr;  // with v_mix: the values v is mixed with
    const F* v_mix = nullptr;    // [2], or null: v = v_raw
};

template <typename F, typename A>
struct QkvBackward {
    A* dqkv = nullptr;                                          // overwritten
    F *dq_gain = nullptr, *dv_mix = nullptr;  // +=
    A* dv_first = nullptr;                     // += (= when !add_dv_first)
    // The attention's input gradients: q's is dq_scale * dq, in fp32 (the GPU takes the
    // attention backward's unscaled accumulator as it is, with no pass to round it).
    const F* dq = nullptr;
    F dq_scale = 1;
    const A *dk = nullptr, *dv = nullptr;
    const A *dv_add = nullptr, *dv_add2 = nullptr;  // more gradient of v, or null
    bool add_dv_first = true;
};

// The rows of qkv [N, width] cut into q [N, H*hd], k and v [N, Hkv*hd].
template <typename T>
void split_qkv(const T* qkv, const QkvShape& s, std::vector<T>& q, std::vector<T>& k, std::vector<T>& v) {
    const int N = s.N(), W = s.width(), QD = s.H * s.hd, KVD = s.Hkv * s.hd;
    q.resize(size_t(N) * QD), k.resize(size_t(N) * KVD), v.resize(size_t(N) * KVD);
    for (int n = 0; n < N; ++n) {
        const T* row = qkv + size_t(n) * W;
        std::copy(row, row + QD, q.begin() + size_t(n) * QD);
        std::copy(row + QD, row + QD + KVD, k.begin() + size_t(n) * KVD);
        std::copy(row + QD + KVD, row + W, v.begin() + size_t(n) * KVD);
    }
}

// q = q_gain * rope(rmsnorm(q_raw)) per head, k = rope(rmsnorm(k_raw)) (rmsnorm with norm
// only), v = v_mix[0] v_raw + v_mix[1] v_first (v_raw without v_mix): the block's q/k/v steps
// of model_ref.h in one.
template <typename T>
void qkv_prep_forward(const QkvForward<T, T>& p, const QkvShape& s) {
    const int N = s.N(), KVD = s.Hkv * s.hd;
    std::vector<T> q, k, v;
    split_qkv(p.qkv, s, q, k, v);
    if (s.norm) {
        rmsnorm_forward(q.data(), p.q_rstd, q.data(), N * s.H, s.hd);
        rmsnorm_forward(k.data(), p.k_rstd, k.data(), N * s.Hkv, s.hd);
    }
    std::vector<T> qr(q.size());
    rope_forward(qr.data(), q.data(), s.B, s.Tn, s.H, s.hd, s.rope_dims, double(s.rope_base));
    rope_forward(p.k, k.data(), s.B, s.Tn, s.Hkv, s.hd, s.rope_dims, double(s.rope_base));
    if (p.q_gain) head_gain_forward(p.q, qr.data(), p.q_gain, N, s.H, s.hd);
    else std::copy(qr.begin(), qr.end(), p.q);
    if (p.v_mix) mix_forward(p.v, v.data(), p.v_first, p.v_mix, p.v_mix + 1, N, KVD, 0);
    else std::copy(v.begin(), v.end(), p.v);
}

// The backward of qkv_prep_forward with dv + dv_add + dv_add2 as the gradient of v: dqkv
// overwritten; dq_gain, and with v_mix dv_mix and dv_first, added to. q_rstd / k_rstd are
// the forward's.
template <typename T>
void qkv_prep_backward(const QkvBackward<T, T>& d, const QkvForward<T, T>& p, const QkvShape& s) {
    const int N = s.N(), W = s.width(), QD = s.H * s.hd, KVD = s.Hkv * s.hd;
    std::vector<T> qn, kn, v_raw;
    split_qkv(p.qkv, s, qn, kn, v_raw);
    std::vector<T> q_raw = qn, k_raw = kn;
    if (s.norm) {  // the normed q and k again, with the forward's rstd
        for (size_t i = 0; i < qn.size(); ++i) qn[i] *= p.q_rstd[i / s.hd];
        for (size_t i = 0; i < kn.size(); ++i) kn[i] *= p.k_rstd[i / s.hd];
    }
    std::vector<T> dqr(size_t(N) * QD, T(0)), dqn(size_t(N) * QD, T(0)), dkn(size_t(N) * KVD, T(0));
    std::vector<T> dq_in(d.dq, d.dq + dqr.size());
    for (T& x : dq_in) x *= d.dq_scale;
    if (p.q_gain) {
        std::vector<T> qr(qn.size());
        rope_forward(qr.data(), qn.data(), s.B, s.Tn, s.H, s.hd, s.rope_dims, double(s.rope_base));
        head_gain_backward(dqr.data(), d.dq_gain, dq_in.data(), qr.data(), p.q_gain, N, s.H, s.hd);
    } else {
        dqr = dq_in;
    }
    rope_backward(dqn.data(), dqr.data(), s.B, s.Tn, s.H, s.hd, s.rope_dims, double(s.rope_base));
    rope_backward(dkn.data(), d.dk, s.B, s.Tn, s.Hkv, s.hd, s.rope_dims, double(s.rope_base));
    std::vector<T> dq = dqn, dk = dkn;
    if (s.norm) {
        std::fill(dq.begin(), dq.end(), T(0));
        std::fill(dk.begin(), dk.end(), T(0));
        rmsnorm_backward(dq.data(), dqn.data(), q_raw.data(), p.q_rstd, N * s.H, s.hd);
        rmsnorm_backward(dk.data(), dkn.data(), k_raw.data(), p.k_rstd, N * s.Hkv, s.hd);
    }
    std::vector<T> dv(d.dv, d.dv + size_t(N) * KVD), dv_raw(dv.size(), T(0));
    for (size_t i = 0; i < dv.size(); ++i) dv[i] += (d.dv_add ? d.dv_add[i] : T(0)) + (d.dv_add2 ? d.dv_add2[i] : T(0));
    if (p.v_mix && !d.add_dv_first) std::fill(d.dv_first, d.dv_first + dv.size(), T(0));
    if (p.v_mix)
        mix_backward(dv_raw.data(), d.dv_first, d.dv_mix, d.dv_mix + 1, dv.data(), v_raw.data(), p.v_first, p.v_mix,
                     p.v_mix + 1, N, KVD, 0);
    else
        dv_raw = dv;
    for (int n = 0; n < N; ++n) {
        T* row = d.dqkv + size_t(n) * W;
        std::copy(dq.begin() + size_t(n) * QD, dq.begin() + size_t(n + 1) * QD, row);
        std::copy(dk.begin() + size_t(n) * KVD, dk.begin() + size_t(n + 1) * KVD, row + QD);
        std::copy(dv_raw.begin() + size_t(n) * KVD, dv_raw.begin() + size_t(n + 1) * KVD, row + QD + KVD);
    }
}

// The tied head's loss in two passes, as the GPU runs it: the forward keeps each row's
// log-sum-exp, so that the backward is one elementwise pass. s = softcap(z) (cap <= 0: none).
//   forward   losses[n] = lse[n] - s[n, t_n], lse[n] = logsumexp(s[n, :])
//   backward  dlogits = scale * (exp(s - lse) - onehot(t)) * ds/dz   (overwritten; may alias logits)
template <typename T>
T softcap_value(T z, T cap) {
    return cap > 0 ? cap * std::tanh(z / cap) : z;
}

template <typename T>
void softcap_ce_forward(T* losses, T* lse, const T* logits, const int32_t* targets, int n, int V, T cap) {
    std::vector<T> s(V);
    for (int r = 0; r < n; ++r) {
        for (int v = 0; v < V; ++v) s[v] = softcap_value(logits[size_t(r) * V + v], cap);
        T l;
        crossentropy_forward(&l, s.data(), targets + r, 1, V);
        losses[r] = l;
        lse[r] = l + s[targets[r]];
    }
}

template <typename T>
void softcap_ce_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets, int n, int V, T cap,
                         T scale) {
    for (int r = 0; r < n; ++r)
        for (int v = 0; v < V; ++v) {
            const size_t i = size_t(r) * V + v;
            const T s = softcap_value(logits[i], cap), t = cap > 0 ? s / cap : T(0);
            dlogits[i] = scale * (std::exp(s - lse[r]) - (v == targets[r] ? T(1) : T(0))) * (T(1) - t * t);
        }
}

}  // namespace pg
