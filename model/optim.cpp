#include "model/optim.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/check.h"

namespace pg {

namespace {

constexpr float kNsA = 3.4445f, kNsB = -4.7750f, kNsC = 2.0315f;

// G = X X^T for X [m, n]. Every element is computed by one thread in a fixed order, so the
// result does not depend on the thread count.
void gram(const float* X, int m, int n, float* G) {
#pragma omp parallel for schedule(dynamic, 4)
    for (int i = 0; i < m; ++i) {
        const float* xi = X + size_t(i) * n;
        for (int j = i; j < m; ++j) {
            const float* xj = X + size_t(j) * n;
            float s = 0;
            for (int k = 0; k < n; ++k) s += xi[k] * xj[k];
            G[size_t(i) * m + j] = G[size_t(j) * m + i] = s;
        }
    }
}

void transpose(const float* X, int rows, int cols, float* T) {
#pragma omp parallel for schedule(static)
    for (int c = 0; c < cols; ++c)
        for (int r = 0; r < rows; ++r) T[size_t(c) * rows + r] = X[size_t(r) * cols + c];
}

// The quintic iteration on one wide matrix X [m, n], m <= n, already normalised.
void newton_schulz_wide(float* X, int m, int n, int steps, std::vector<float>& A,
                        std::vector<float>& A2, std::vector<float>& Y) {
    for (int s = 0; s < steps; ++s) {
        gram(X, m, n, A.data());
        gram(A.data(), m, m, A2.data());  // A is symmetric, so A A^T = A^2
        for (size_t e = 0; e < size_t(m) * m; ++e) A[e] = kNsB * A[e] + kNsC * A2[e];
#pragma omp parallel for schedule(static)
        for (int i = 0; i < m; ++i) {
            float* yi = Y.data() + size_t(i) * n;
            const float* xi = X + size_t(i) * n;
            for (int k = 0; k < n; ++k) yi[k] = kNsA * xi[k];
            for (int j = 0; j < m; ++j) {
                const float bij = A[size_t(i) * m + j];
                const float* xj = X + size_t(j) * n;
                for (int k = 0; k < n; ++k) yi[k] += bij * xj[k];
            }
        }
        std::copy(Y.begin(), Y.end(), X);
    }
}

// Byte (de)serialisation of optimizer state: a magic tag, counts, raw floats, all native
// little-endian; the reader checks every count against what this model needs.
struct Writer {
    std::vector<uint8_t> out;
    void raw(const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        out.insert(out.end(), b, b + n);
    }
    void u64(uint64_t v) { raw(&v, sizeof v); }
    void floats(const std::vector<float>& v) {
        u64(v.size());
        raw(v.data(), v.size() * sizeof(float));
    }
};

struct Reader {
    const std::vector<uint8_t>& in;
    const std::string& source;
    const char* what;
    size_t pos = 0;

    void raw(void* p, size_t n) {
        if (in.size() - pos < n) fail("%s: %s state is truncated", source.c_str(), what);
        std::memcpy(p, in.data() + pos, n);
        pos += n;
    }
    uint64_t u64() {
        uint64_t v;
        raw(&v, sizeof v);
        return v;
    }
    void magic(const char (&tag)[9]) {
        char got[8];
        raw(got, 8);
        if (std::memcmp(got, tag, 8) != 0) fail("%s: not a pgolf %s state", source.c_str(), what);
    }
    void floats(std::vector<float>& v) {
        const uint64_t n = u64();
        if (n != v.size())
            fail("%s: %s state holds %llu values where this model needs %zu", source.c_str(), what,
                 static_cast<unsigned long long>(n), v.size());
        raw(v.data(), v.size() * sizeof(float));
    }
    void end() {
        if (pos != in.size()) fail("%s: %s state has %zu trailing bytes", source.c_str(), what, in.size() - pos);
    }
};

constexpr char kOptimTag[9] = "PGOPTIM1";
constexpr char kAverageTag[9] = "PGAVERG1";

}  // namespace

void newton_schulz(float* X, int count, int rows, int cols, int steps) {
    const bool tall = rows > cols;
    const int m = tall ? cols : rows, n = tall ? rows : cols;
    const size_t numel = size_t(rows) * cols;
    std::vector<float> A(size_t(m) * m), A2(size_t(m) * m), Y(numel), T(tall ? numel : 0);
    for (int b = 0; b < count; ++b) {
        float* M = X + b * numel;
        float* W = M;
        if (tall) {
            transpose(M, rows, cols, T.data());
            W = T.data();
        }
        const float denom = float(std::sqrt(sum_squares(W, numel))) + 1e-7f;
        for (size_t e = 0; e < numel; ++e) W[e] /= denom;
        newton_schulz_wide(W, m, n, steps, A, A2, Y);
        if (tall) transpose(W, m, n, M);
    }
}

float muon_momentum_at(int step, const TrainConfig& cfg) {
    if (cfg.muon_momentum_warmup <= 0) return cfg.muon_momentum;
    const float frac = std::min(1.f, float(step) / float(cfg.muon_momentum_warmup));
    return cfg.muon_momentum_start + (cfg.muon_momentum - cfg.muon_momentum_start) * frac;
}

double sum_squares(const float* x, size_t n) {
    // Fixed chunks summed in a fixed order: deterministic whatever OpenMP does.
    constexpr size_t kChunk = size_t(1) << 16;
    const long chunks = long((n + kChunk - 1) / kChunk);
    std::vector<double> part(chunks);
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (long c = 0; c < chunks; ++c) {
        const size_t end = std::min(n, size_t(c + 1) * kChunk);
        double s = 0;
        for (size_t e = size_t(c) * kChunk; e < end; ++e) s += double(x[e]) * x[e];
        part[c] = s;
    }
    double s = 0;
    for (double p : part) s += p;
    return s;
}

float clip_scale(float norm, float cap) { return (cap > 0 && norm > cap) ? cap / norm : 1.f; }

std::vector<BankSlice> muon_partition(const ParamLayout& layout, int rank, int world) {
    PG_CHECK(world >= 1 && rank >= 0 && rank < world);
    std::vector<BankSlice> out;
    for (int b = 0; b < int(layout.banks.size()); ++b) {
        const int count = layout.banks[b].count;
        const int chunk = (count + world - 1) / world;
        const int first = std::min(count, rank * chunk), end = std::min(count, first + chunk);
        if (end > first) out.push_back({b, first, end - first});
    }
    return out;
}

Optimizer::Optimizer(const ParamLayout& layout, const TrainConfig& cfg) : layout_(layout), cfg_(cfg) {
    if (cfg.ns_steps < 1) fail("--ns-steps must be >= 1 (got %d)", cfg.ns_steps);
    size_t muon_n = 0, adam_n = 0;
    for (const Bank& b : layout_.banks) {
        bank_state_.push_back(muon_n);
        muon_n += size_t(b.count) * b.rows * b.cols;
    }
    for (int i = 0; i < int(layout_.params.size()); ++i) {
        const ParamSpec& p = layout_.params[i];
        if (p.kind == ParamKind::Matrix) {
            PG_CHECK(p.bank >= 0);
            continue;
        }
        adam_params_.push_back(i);
        adam_state_.push_back(adam_n);
        adam_n += p.numel();
    }
    st_.muon_m.assign(muon_n, 0.f);
    st_.adam_m.assign(adam_n, 0.f);
    st_.adam_v.assign(adam_n, 0.f);
}

float Optimizer::step(float* params, const float* grads, float lr_scale, int step) {
    const float norm = float(std::sqrt(sum_squares(grads, layout_.total)));
    const float grad_scale = clip_scale(norm, cfg_.grad_clip);
    for (int b = 0; b < int(layout_.banks.size()); ++b)
        muon_update_bank_slice(b, 0, layout_.banks[b].count, params, grads, lr_scale, step, grad_scale);
    adam_update(params, grads, lr_scale, grad_scale);
    return norm;
}

void Optimizer::muon_update_bank_slice(int bank, int first, int count, float* params, const float* grads,
                                       float lr_scale, int step, float grad_scale) {
    PG_CHECK(bank >= 0 && bank < int(layout_.banks.size()));
    const Bank& B = layout_.banks[bank];
    PG_CHECK(first >= 0 && count >= 0 && first + count <= B.count);
    if (count == 0) return;
    const int cols = B.cols;
    const size_t numel = size_t(B.rows) * cols, begin = B.offset + size_t(first) * numel;
    float* mom = st_.muon_m.data() + bank_state_[bank] + size_t(first) * numel;
    const float mu = muon_momentum_at(step, cfg_);
    const bool row_norm = cfg_.muon_row_norm;

    std::vector<float> U(size_t(count) * numel);
    const long total_rows = long(count) * B.rows;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < total_rows; ++r) {
        const float* g = grads + begin + size_t(r) * cols;
        float* m = mom + size_t(r) * cols;
        float* u = U.data() + size_t(r) * cols;
        for (int k = 0; k < cols; ++k) u[k] = g[k] * grad_scale;
        if (row_norm) {
            const float denom = float(std::sqrt(sum_squares(u, cols))) + 1e-7f;
            for (int k = 0; k < cols; ++k) u[k] /= denom;
        }
        for (int k = 0; k < cols; ++k) {
            m[k] = mu * m[k] + u[k];
            u[k] = u[k] + mu * m[k];
        }
    }
    newton_schulz(U.data(), count, B.rows, cols, cfg_.ns_steps);

    const float lr = cfg_.matrix_lr * lr_scale;
    const float decay = 1.f - lr * cfg_.muon_wd;
    const float step_size = lr * std::sqrt(std::max(1.f, float(B.rows) / float(cols)));
    float* W = params + begin;
    const long total = long(count) * long(numel);
#pragma omp parallel for schedule(static)
    for (long e = 0; e < total; ++e) W[e] = W[e] * decay - step_size * U[e];
}

void Optimizer::adam_update(float* params, const float* grads, float lr_scale, float grad_scale) {
    ++st_.adam_t;
    const float b1 = cfg_.adam_beta1, b2 = cfg_.adam_beta2, eps = cfg_.adam_eps;
    const float bc1 = float(1.0 - std::pow(double(b1), double(st_.adam_t)));
    const float bc2 = float(1.0 - std::pow(double(b2), double(st_.adam_t)));
    for (size_t i = 0; i < adam_params_.size(); ++i) {
        const ParamSpec& P = layout_.params[adam_params_[i]];
        const float lr = (P.kind == ParamKind::Embedding ? cfg_.embed_lr : cfg_.scalar_lr) * lr_scale;
        const float decay = 1.f - lr * cfg_.adam_wd;
        float* p = params + P.offset;
        const float* g = grads + P.offset;
        float* m = st_.adam_m.data() + adam_state_[i];
        float* v = st_.adam_v.data() + adam_state_[i];
        const long n = long(P.numel());
#pragma omp parallel for schedule(static) if (n > 4096)
        for (long e = 0; e < n; ++e) {
            const float gi = g[e] * grad_scale;
            m[e] = b1 * m[e] + (1.f - b1) * gi;
            v[e] = b2 * v[e] + (1.f - b2) * gi * gi;
            p[e] = p[e] * decay - lr * (m[e] / bc1) / (std::sqrt(v[e] / bc2) + eps);
        }
    }
}

std::vector<uint8_t> save_state(const OptimizerState& s) {
    Writer w;
    w.raw(kOptimTag, 8);
    w.u64(uint64_t(s.adam_t));
    w.floats(s.muon_m);
    w.floats(s.adam_m);
    w.floats(s.adam_v);
    return std::move(w.out);
}

void load_state(OptimizerState& into, const std::vector<uint8_t>& bytes, const std::string& source) {
    Reader r{bytes, source, "optimizer"};
    r.magic(kOptimTag);
    into.adam_t = long(r.u64());
    r.floats(into.muon_m);
    r.floats(into.adam_m);
    r.floats(into.adam_v);
    r.end();
}

WeightAverage::WeightAverage(size_t n, const TrainConfig& cfg)
    : n_(n), decay_(cfg.ema_decay), swa_every_(cfg.swa_every) {
    if (!(decay_ >= 0 && decay_ < 1)) fail("--ema-decay must be in [0, 1) (got %g)", double(decay_));
    if (decay_ > 0) st_.ema.assign(n_, 0.f);
    if (cfg.swa_from > 0) {
        if (swa_every_ < 1) fail("--swa-every must be >= 1 (got %d)", swa_every_);
        st_.swa.assign(n_, 0.f);
    }
}

void WeightAverage::update(const float* params, int step, bool swa_active) {
    const long n = long(n_);
    if (!st_.ema.empty()) {
        const float d = st_.ema_steps == 0 ? 0.f : decay_;
        float* e = st_.ema.data();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; ++i) e[i] = d * e[i] + (1.f - d) * params[i];
        ++st_.ema_steps;
    }
    if (!st_.swa.empty() && swa_active && step % swa_every_ == 0) {
        ++st_.swa_count;
        const float w = 1.f / float(st_.swa_count);
        float* s = st_.swa.data();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; ++i) s[i] += (params[i] - s[i]) * w;
    }
}

std::vector<uint8_t> save_state(const AverageState& s) {
    Writer w;
    w.raw(kAverageTag, 8);
    w.u64(uint64_t(s.ema_steps));
    w.u64(uint64_t(s.swa_count));
    w.floats(s.ema);
    w.floats(s.swa);
    return std::move(w.out);
}

void load_state(AverageState& into, const std::vector<uint8_t>& bytes, const std::string& source) {
    Reader r{bytes, source, "weight-average"};
    r.magic(kAverageTag);
    into.ema_steps = long(r.u64());
    into.swa_count = long(r.u64());
    r.floats(into.ema);
    r.floats(into.swa);
    r.end();
}

}  // namespace pg
