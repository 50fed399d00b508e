#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/check.h"
#include "quant/quantize.h"

namespace pg {

void accumulate_hessian(const float* x, size_t n, int cols, double* h) {
    // Tokens in chunks so that a chunk of x stays in cache while every row of h reads it.
    const size_t chunk = 256;
    for (size_t t0 = 0; t0 < n; t0 += chunk) {
        const size_t t1 = std::min(n, t0 + chunk);
#pragma omp parallel for schedule(dynamic, 8)
        for (int i = 0; i < cols; ++i) {
            double* hi = h + size_t(i) * cols;
            for (size_t t = t0; t < t1; ++t) {
                const float* xt = x + t * cols;
                const double xi = xt[i];
                if (xi == 0) continue;
                for (int j = 0; j < cols; ++j) hi[j] += xi * xt[j];
            }
        }
    }
}

// Both factorizations below work on panels of kPanel columns: the bulk of the work reads
// each row once per panel instead of once per column, which keeps a 2048x2048 problem
// from being bound by memory bandwidth.
constexpr int kPanel = 16;

static double dot_range(const double* x, const double* y, int from, int to) {
    double s = 0;
    for (int k = from; k < to; ++k) s += x[k] * y[k];
    return s;
}

void cholesky_lower(double* a, int n) {
    for (int j0 = 0; j0 < n; j0 += kPanel) {
        const int j1 = std::min(n, j0 + kPanel);
        // Columns left of the panel are final: subtract their share from the panel columns.
        // Four columns at a time give four independent sums (one would wait on FMA latency).
        // Rows of the diagonal block also update entries above the diagonal: never read, and
        // zeroed at the end.
#pragma omp parallel for schedule(static) if (n - j0 > 128)
        for (int i = j0; i < n; ++i) {
            double* ai = a + size_t(i) * n;
            int c = j0;
            for (; c + 4 <= j1; c += 4) {
                const double *a0 = a + size_t(c) * n, *a1 = a0 + n, *a2 = a1 + n, *a3 = a2 + n;
                double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
                for (int k = 0; k < j0; ++k) {
                    s0 += ai[k] * a0[k];
                    s1 += ai[k] * a1[k];
                    s2 += ai[k] * a2[k];
                    s3 += ai[k] * a3[k];
                }
                ai[c] -= s0;
                ai[c + 1] -= s1;
                ai[c + 2] -= s2;
                ai[c + 3] -= s3;
            }
            for (; c < j1; ++c) ai[c] -= dot_range(ai, a + size_t(c) * n, 0, j0);
        }
        // Factor the panel's diagonal block, then solve the rows below it against the block.
        for (int c = j0; c < j1; ++c) {
            double* ac = a + size_t(c) * n;
            for (int k = j0; k < c; ++k) ac[k] = (ac[k] - dot_range(ac, a + size_t(k) * n, j0, k)) / a[size_t(k) * n + k];
            const double d2 = ac[c] - dot_range(ac, ac, j0, c);
            if (!(d2 > 0)) fail("GPTQ: Hessian is not positive definite at column %d (raise the damping)", c);
            ac[c] = std::sqrt(d2);
        }
#pragma omp parallel for schedule(static) if (n - j1 > 128)
        for (int i = j1; i < n; ++i) {
            double* ai = a + size_t(i) * n;
            for (int c = j0; c < j1; ++c) {
                const double* ac = a + size_t(c) * n;
                ai[c] = (ai[c] - dot_range(ai, ac, j0, c)) / ac[c];
            }
        }
    }
    for (int i = 0; i < n; ++i) std::fill(a + size_t(i) * n + i + 1, a + size_t(i + 1) * n, 0.0);
}

// With J the reversal permutation and L = chol(J H J), H = (J L J)(J L J)^T where J L J is
// upper triangular, so H^-1 = U^T U with U = (J L J)^-1 = J L^-1 J: one Cholesky and one
// triangular inverse, no second factorization.
void inverse_upper_cholesky(const double* h, int n, double* u) {
    std::vector<double> l(size_t(n) * n);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) l[size_t(i) * n + j] = h[size_t(n - 1 - i) * n + (n - 1 - j)];
    cholesky_lower(l.data(), n);
    std::fill(u, u + size_t(n) * n, 0.0);
    // Columns of L^-1 by forward substitution (L x = e_c), a panel of them at once: each
    // step is one row of L times a [k, panel] block, vectorized across the panel. Panels
    // are independent. x[k][c] is zero above the diagonal (k < c).
#pragma omp parallel
    {
        std::vector<double> x(size_t(n) * kPanel);
#pragma omp for schedule(dynamic)
        for (int j0 = 0; j0 < n; j0 += kPanel) {
            const int w = std::min(kPanel, n - j0);
            std::fill(x.begin(), x.end(), 0.0);
            for (int i = j0; i < n; ++i) {
                const double* li = l.data() + size_t(i) * n;
                double acc[kPanel] = {};
                for (int k = j0; k < i; ++k) {
                    const double* xk = x.data() + size_t(k - j0) * kPanel;
#pragma omp simd
                    for (int c = 0; c < kPanel; ++c) acc[c] += li[k] * xk[c];
                }
                double* xi = x.data() + size_t(i - j0) * kPanel;
                for (int c = 0; c < w; ++c) xi[c] = ((i == j0 + c ? 1.0 : 0.0) - acc[c]) / li[i];
            }
            for (int i = j0; i < n; ++i)
                for (int c = 0; c < w && j0 + c <= i; ++c)
                    u[size_t(n - 1 - i) * n + (n - 1 - j0 - c)] = x[size_t(i - j0) * kPanel + c];
        }
    }
}

void gptq_quantize(const float* w, int rows, int cols, const double* h, const float* scales, int bits,
                   const GptqOptions& opt, int8_t* q) {
    PG_CHECK(opt.block_size >= 1 && opt.percdamp >= 0);
    const int n = cols, qmax = qmax_for_bits(bits);
    std::vector<int> perm(n);
    std::iota(perm.begin(), perm.end(), 0);
    if (opt.act_order)
        std::stable_sort(perm.begin(), perm.end(),
                         [&](int a, int b) { return h[size_t(a) * n + a] > h[size_t(b) * n + b]; });

    // Permuted copies: column c of the working problem is column perm[c] of the layer.
    std::vector<double> hp(size_t(n) * n), wp(size_t(rows) * n);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) hp[size_t(i) * n + j] = h[size_t(perm[i]) * n + perm[j]];
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < n; ++c) wp[size_t(r) * n + c] = w[size_t(r) * cols + perm[c]];
    double mean_diag = 0;
    for (int i = 0; i < n; ++i) {
        double& d = hp[size_t(i) * n + i];
        if (d == 0) {  // a dead input: its weights do not matter, drop them
            d = 1;
            for (int r = 0; r < rows; ++r) wp[size_t(r) * n + i] = 0;
        }
        mean_diag += d / n;
    }
    for (int i = 0; i < n; ++i) hp[size_t(i) * n + i] += opt.percdamp * mean_diag;
    std::vector<double> u(size_t(n) * n);
    inverse_upper_cholesky(hp.data(), n, u.data());

    // Rows are independent; a tile of rows shares each row of U while it is in cache.
    const int B = opt.block_size, tile = 16;
#pragma omp parallel
    {
        std::vector<double> err(size_t(tile) * B);
#pragma omp for schedule(dynamic)
        for (int r0 = 0; r0 < rows; r0 += tile) {
            const int nr = std::min(tile, rows - r0);
            for (int i1 = 0; i1 < n; i1 += B) {
                const int i2 = std::min(n, i1 + B);
                for (int i = i1; i < i2; ++i) {
                    const double* ui = u.data() + size_t(i) * n;
                    for (int r = 0; r < nr; ++r) {
                        double* wr = wp.data() + size_t(r0 + r) * n;
                        const double s = scales[r0 + r];
                        double v = std::nearbyint(wr[i] / s);
                        v = std::min(double(qmax), std::max(-double(qmax), v));
                        q[size_t(r0 + r) * cols + perm[i]] = static_cast<int8_t>(v);
                        const double e = (wr[i] - v * s) / ui[i];
                        err[size_t(r) * B + (i - i1)] = e;
                        for (int j = i + 1; j < i2; ++j) wr[j] -= e * ui[j];
                    }
                }
                // Lazy batch: the block's errors reach the later columns in one pass.
                for (int k = i1; k < i2; ++k) {
                    const double* uk = u.data() + size_t(k) * n;
                    for (int r = 0; r < nr; ++r) {
                        double* wr = wp.data() + size_t(r0 + r) * n;
                        const double e = err[size_t(r) * B + (k - i1)];
                        for (int j = i2; j < n; ++j) wr[j] -= e * uk[j];
                    }
                }
            }
        }
    }
}

double weighted_error(const float* w, const int8_t* q, const float* scales, int rows, int cols, const double* h) {
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
        std::vector<double> e(cols);
#pragma omp for schedule(static)
        for (int r = 0; r < rows; ++r) {
            for (int c = 0; c < cols; ++c)
                e[c] = double(w[size_t(r) * cols + c]) - double(q[size_t(r) * cols + c]) * scales[r];
            if (!h) {
                for (int c = 0; c < cols; ++c) total += e[c] * e[c];
                continue;
            }
            for (int i = 0; i < cols; ++i) {
                const double* hi = h + size_t(i) * cols;
                double s = 0;
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < cols; ++j) s += hi[j] * e[j];
                total += e[i] * s;
            }
        }
    }
    return total;
}

std::vector<ClipTrial> try_clips(const std::vector<QuantTarget>& group, int bits, const std::vector<float>& ks,
                                 const GptqOptions* gptq) {
    std::vector<ClipTrial> trials;
    for (float k : ks) {
        ClipTrial t{k, 0, 0};
        std::vector<int8_t> all;
        for (const QuantTarget& g : group) {
            std::vector<float> scales(g.rows);
            sdclip_scales(g.w, g.rows, g.cols, k, bits, scales.data());
            std::vector<int8_t> q(size_t(g.rows) * g.cols);
            if (gptq && g.hessian)
                gptq_quantize(g.w, g.rows, g.cols, g.hessian, scales.data(), bits, *gptq, q.data());
            else
                quantize_rows(g.w, g.rows, g.cols, scales.data(), bits, q.data());
            t.error += weighted_error(g.w, q.data(), scales.data(), g.rows, g.cols, g.hessian);
            all.insert(all.end(), q.begin(), q.end());
        }
        t.bits_per_value = entropy_bits(all.data(), all.size());
        trials.push_back(t);
    }
    return trials;
}

float best_clip(const std::vector<ClipTrial>& trials, double max_bits_per_value) {
    PG_CHECK(!trials.empty());
    const ClipTrial* best = nullptr;
    for (const ClipTrial& t : trials)
        if ((max_bits_per_value <= 0 || t.bits_per_value <= max_bits_per_value) && (!best || t.error < best->error))
            best = &t;
    if (!best)
        for (const ClipTrial& t : trials)
            if (!best || t.bits_per_value < best->bits_per_value) best = &t;
    return best->k;
}

}  // namespace pg
