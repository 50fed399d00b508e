// Optimizers, schedule and weight averages. Every case draws fresh random inputs (the seed
// is printed on failure) and states its tolerance.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/check.h"
#include "common/config.h"
#include "model/optim.h"
#include "model/params.h"
#include "model/schedule.h"
#include "tests/ref_check.h"

using namespace pg;
using test::gaussian;
using test::same_bits;

namespace {

using Mat = std::vector<double>;  // row-major

uint64_t fresh_seed() { return std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}(); }

// A small real layout: banks 16x16 (x4), 8x16 (x4, wide), 32x16 (x2, tall), 16x32 (x2),
// 16x4 (x1, tall 4:1), plus embeddings and vectors.
ParamLayout small_layout() {
    ModelConfig m;
    m.vocab_size = 32;
    m.model_dim = 16;
    m.n_layers = 2;
    m.n_heads = 2;
    m.n_kv_heads = 1;
    m.head_dim = 8;
    m.mlp_mult = 2;
    m.rope_dims = 4;
    m.bigram_buckets = 8;
    m.bigram_dim = 4;
    m.xsa_last = 1;
    m.recur_start = 0;
    m.recur_end = 1;
    m.seq_len = 8;
    return make_layout(m);
}

TrainConfig small_train() {
    TrainConfig t;
    t.muon_momentum_warmup = 4;  // the momentum changes over the few steps a test takes
    t.muon_wd = 0.1f;
    t.adam_wd = 0.05f;
    return t;
}

// Eigenvalues of a symmetric n x n matrix by cyclic Jacobi rotations, in double.
std::vector<double> jacobi_eigenvalues(Mat A, int n) {
    for (int sweep = 0; sweep < 100; ++sweep) {
        double off = 0;
        for (int i = 0; i < n; ++i)
            for (int j = i + 1; j < n; ++j) off += A[i * n + j] * A[i * n + j];
        if (off < 1e-30) break;
        for (int p = 0; p < n; ++p)
            for (int q = p + 1; q < n; ++q) {
                const double apq = A[p * n + q];
                if (std::fabs(apq) < 1e-300) continue;
                const double theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
                const double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
                const double c = 1 / std::sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; ++k) {  // A <- A J
                    const double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - s * akq;
                    A[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; ++k) {  // A <- J^T A
                    const double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - s * aqk;
                    A[q * n + k] = s * apk + c * aqk;
                }
            }
    }
    std::vector<double> ev(n);
    for (int i = 0; i < n; ++i) ev[i] = A[i * n + i];
    return ev;
}

// The min(rows, cols) singular values of X, ascending, via the eigenvalues of its smaller Gram matrix.
std::vector<double> singular_values(const float* X, int rows, int cols) {
    const bool wide = rows <= cols;
    const int m = wide ? rows : cols, n = wide ? cols : rows;
    auto at = [&](int i, int k) { return double(wide ? X[size_t(i) * cols + k] : X[size_t(k) * cols + i]); };
    Mat G(size_t(m) * m, 0.0);
    for (int i = 0; i < m; ++i)
        for (int j = 0; j < m; ++j)
            for (int k = 0; k < n; ++k) G[i * m + j] += at(i, k) * at(j, k);
    std::vector<double> sv = jacobi_eigenvalues(G, m);
    for (double& s : sv) s = std::sqrt(std::max(0.0, s));
    std::sort(sv.begin(), sv.end());
    return sv;
}

Mat mul(const Mat& A, int ar, int ac, const Mat& B, int bc) {
    Mat C(size_t(ar) * bc, 0.0);
    for (int i = 0; i < ar; ++i)
        for (int k = 0; k < ac; ++k)
            for (int j = 0; j < bc; ++j) C[i * bc + j] += A[i * ac + k] * B[k * bc + j];
    return C;
}

Mat transposed(const Mat& A, int r, int c) {
    Mat T(A.size());
    for (int i = 0; i < r; ++i)
        for (int j = 0; j < c; ++j) T[j * r + i] = A[i * c + j];
    return T;
}

// Newton-Schulz in double, written the other way round for tall matrices: instead of
// transposing, X <- a X + X (b A + c A^2) with A = X^T X.
Mat newton_schulz_double(Mat X, int r, int c, int steps) {
    const double a = 3.4445, b = -4.7750, cc = 2.0315;
    double fro = 0;
    for (double x : X) fro += x * x;
    fro = std::sqrt(fro) + 1e-7;
    for (double& x : X) x /= fro;
    const bool wide = r <= c;
    const int m = wide ? r : c;
    for (int s = 0; s < steps; ++s) {
        Mat A = wide ? mul(X, r, c, transposed(X, r, c), r) : mul(transposed(X, r, c), c, r, X, c);
        Mat A2 = mul(A, m, m, A, m);
        Mat B(A.size());
        for (size_t e = 0; e < B.size(); ++e) B[e] = b * A[e] + cc * A2[e];
        Mat BX = wide ? mul(B, m, m, X, c) : mul(X, r, c, B, c);
        for (size_t e = 0; e < X.size(); ++e) X[e] = a * X[e] + BX[e];
    }
    return X;
}

double quintic5(double x, int steps) {
    for (int s = 0; s < steps; ++s) x = 3.4445 * x - 4.7750 * x * x * x + 2.0315 * x * x * x * x * x;
    return x;
}

}  // namespace

TEST_CASE("muon: newton-schulz singular values follow the quintic and land in its band") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    // The scalar map sends every normalised input in [2e-3, 1] into [0.6818, 1.2024]; over 30
    // runs of these shapes fp32 outputs matched it within 4.6e-6 and stayed inside that band.
    const double kMapTol = 5e-5, kBandLo = 0.68, kBandHi = 1.21, kInputFloor = 2e-3;
    const int shapes[][2] = {{32, 32}, {48, 48}, {24, 72}, {72, 24}, {64, 128}, {100, 40}};
    for (const auto& sh : shapes) {
        const int r = sh[0], c = sh[1];
        CAPTURE(r);
        CAPTURE(c);
        std::vector<float> X = gaussian(rng, size_t(r) * c);
        std::vector<float> O = X;
        newton_schulz(O.data(), 1, r, c, 5);
        double fro = 0;
        for (float x : X) fro += double(x) * x;
        fro = std::sqrt(fro) + 1e-7;
        const std::vector<double> in = singular_values(X.data(), r, c), out = singular_values(O.data(), r, c);
        std::vector<double> expect;
        for (double s : in) expect.push_back(quintic5(s / fro, 5));
        std::sort(expect.begin(), expect.end());
        double worst = 0;
        for (size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::fabs(out[i] - expect[i]));
        CHECK(worst < kMapTol);
        // Every input above the floor must give one output in the band.
        const long qualified = std::count_if(in.begin(), in.end(), [&](double s) { return s / fro >= kInputFloor; });
        const long in_band = std::count_if(out.begin(), out.end(), [&](double o) { return o >= kBandLo && o <= kBandHi; });
        CHECK(in_band >= qualified);
        CHECK(qualified > 0);
        // Rectangular Gaussians have no tiny singular values: all of the output is in band.
        if (std::max(r, c) >= 2 * std::min(r, c)) {
            CHECK(in.front() / fro >= kInputFloor);
            CHECK(out.front() >= kBandLo);
            CHECK(out.back() <= kBandHi);
        }
    }
}

TEST_CASE("muon: batched newton-schulz equals one matrix at a time") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    const int shapes[][2] = {{24, 40}, {40, 24}, {16, 16}};
    for (const auto& sh : shapes) {
        const int r = sh[0], c = sh[1], count = 5;
        const size_t n = size_t(r) * c;
        std::vector<float> bank = gaussian(rng, count * n), single = bank;
        newton_schulz(bank.data(), count, r, c, 5);
        for (int i = 0; i < count; ++i) newton_schulz(single.data() + i * n, 1, r, c, 5);
        CHECK(same_bits(bank, single));
    }
}

TEST_CASE("muon: bank slices and rank partitions equal the whole-bank update bit for bit") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    const ParamLayout L = small_layout();
    TrainConfig t = small_train();
    t.muon_row_norm = true;
    const std::vector<float> init = gaussian(rng, L.total, 0.1f);
    std::vector<std::vector<float>> grads;
    for (int s = 0; s < 3; ++s) grads.push_back(gaussian(rng, L.total));

    Optimizer whole(L, t);
    std::vector<float> pw = init;
    for (int s = 0; s < 3; ++s) whole.step(pw.data(), grads[s].data(), 0.7f, s);

    // Every bank cut in two (uneven) slices, updated second half first.
    Optimizer halves(L, t);
    std::vector<float> ph = init;
    for (int s = 0; s < 3; ++s) {
        const float gs = clip_scale(float(std::sqrt(sum_squares(grads[s].data(), L.total))), t.grad_clip);
        for (int b = 0; b < int(L.banks.size()); ++b) {
            const int cnt = L.banks[b].count, cut = cnt / 2;
            halves.muon_update_bank_slice(b, cut, cnt - cut, ph.data(), grads[s].data(), 0.7f, s, gs);
            halves.muon_update_bank_slice(b, 0, cut, ph.data(), grads[s].data(), 0.7f, s, gs);
        }
        halves.adam_update(ph.data(), grads[s].data(), 0.7f, gs);
    }
    CHECK(same_bits(pw, ph));
    CHECK(save_state(whole.state()) == save_state(halves.state()));

    // Parallel Muon as 2 or 3 ranks would do it: each rank its partition, on one shared buffer.
    for (int world : {2, 3}) {
        CAPTURE(world);
        Optimizer ranks(L, t);
        std::vector<float> pr = init;
        int slices = 0;
        for (int s = 0; s < 3; ++s) {
            const float gs = clip_scale(float(std::sqrt(sum_squares(grads[s].data(), L.total))), t.grad_clip);
            for (int r = 0; r < world; ++r)
                for (const BankSlice& sl : muon_partition(L, r, world)) {
                    ranks.muon_update_bank_slice(sl.bank, sl.first, sl.count, pr.data(), grads[s].data(), 0.7f, s, gs);
                    slices += s == 0;
                }
            ranks.adam_update(pr.data(), grads[s].data(), 0.7f, gs);
        }
        CHECK(slices > int(L.banks.size()));  // some bank really was split
        CHECK(same_bits(pw, pr));
    }
}

TEST_CASE("muon: optimizer step matches a double-precision re-implementation") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    const ParamLayout L = small_layout();
    TrainConfig t = small_train();
    t.grad_clip = 0.5f;  // random unit gradients are far above it: clipping is active
    bool row_norm = false;
    SUBCASE("plain") { row_norm = false; }
    SUBCASE("row-normalised") { row_norm = true; }
    t.muon_row_norm = row_norm;
    CAPTURE(row_norm);

    const int steps = 4;
    const float lr_scales[steps] = {0.25f, 1.f, 1.f, 0.6f};
    std::vector<float> p = gaussian(rng, L.total, 0.1f);
    std::vector<double> pd(p.begin(), p.end()), mom(L.total, 0.0);
    Optimizer opt(L, t);
    for (int s = 0; s < steps; ++s) {
        const std::vector<float> g = gaussian(rng, L.total);
        opt.step(p.data(), g.data(), lr_scales[s], s);

        double norm = 0;
        for (float x : g) norm += double(x) * x;
        norm = std::sqrt(norm);
        const double scale = norm > t.grad_clip ? t.grad_clip / norm : 1.0;
        const double mu = t.muon_momentum_start +
                          (t.muon_momentum - t.muon_momentum_start) * std::min(1.0, double(s) / t.muon_momentum_warmup);
        const double lr = double(t.matrix_lr) * lr_scales[s];
        for (const ParamSpec& P : L.params) {
            if (P.kind != ParamKind::Matrix) continue;
            const int r = P.rows, c = P.cols;
            Mat u(P.numel());
            for (int i = 0; i < r; ++i) {
                double rn = 0;
                for (int j = 0; j < c; ++j) rn += std::pow(scale * g[P.offset + i * c + j], 2);
                const double div = row_norm ? std::sqrt(rn) + 1e-7 : 1.0;
                for (int j = 0; j < c; ++j) {
                    const size_t e = P.offset + i * c + j;
                    const double gij = scale * g[e] / div;
                    mom[e] = mu * mom[e] + gij;
                    u[i * c + j] = gij + mu * mom[e];
                }
            }
            const Mat o = newton_schulz_double(u, r, c, t.ns_steps);
            const double shape = std::sqrt(std::max(1.0, double(r) / c));
            for (size_t e = 0; e < P.numel(); ++e)
                pd[P.offset + e] = pd[P.offset + e] * (1 - lr * t.muon_wd) - lr * shape * o[e];
        }
    }
    // fp32 vs double over 4 steps: measured worst 3.3e-6 of matrix_lr (30 runs).
    double worst = 0;
    for (const ParamSpec& P : L.params)
        if (P.kind == ParamKind::Matrix)
            for (size_t e = P.offset; e < P.offset + P.numel(); ++e) worst = std::max(worst, std::fabs(p[e] - pd[e]));
    CHECK(worst < 1e-4 * t.matrix_lr);
}

TEST_CASE("adam: step equals a hand-computed AdamW step") {
    // One embedding [1, 2] and one vector [2]; betas 0.9 / 0.95, eps 1e-8, wd 0.1,
    // embed lr 0.01 and scalar lr 0.02, both at lr_scale 0.5.
    ParamLayout L;
    L.params.resize(2);
    L.params[0] = {"emb", 1, 2, ParamKind::Embedding, QuantGroup::None, 0, -1};
    L.params[1] = {"vec", 1, 2, ParamKind::Vector, QuantGroup::None, 2, -1};
    L.total = 4;
    TrainConfig t;
    t.embed_lr = 0.01f;
    t.scalar_lr = 0.02f;
    t.adam_wd = 0.1f;
    t.grad_clip = 0;
    Optimizer opt(L, t);
    std::vector<float> p = {0.5f, -1.f, 2.f, 0.25f};
    const std::vector<float> g1 = {0.2f, -0.4f, 1e-3f, 0.f}, g2 = {-0.1f, 0.3f, 2e-3f, 0.f};
    // Step 1: m/(1-b1) = g and v/(1-b2) = g^2, so each moves by lr * sign(g) after decay:
    //   0.5 * (1 - 0.005 * 0.1) - 0.005 = 0.49475;  0.25 (g = 0) only decays: 0.25 * 0.999 = 0.24975.
    opt.step(p.data(), g1.data(), 0.5f, 0);
    const double want1[] = {0.49475000025, -0.9945000001250001, 1.988000099999, 0.24975};
    for (int i = 0; i < 4; ++i) CHECK(p[i] == doctest::Approx(want1[i]).epsilon(1e-6));
    // Step 2, first element: m = 0.9 * 0.02 - 0.01 = 0.008, v = 0.95 * 0.002 + 0.05 * 0.01 = 0.0024,
    //   0.49475 * 0.9995 - 0.005 * (0.008 / 0.19) / sqrt(0.0024 / 0.0975) = 0.4931607781.
    opt.step(p.data(), g2.data(), 0.5f, 1);
    const double want2[] = {0.4931607780949822, -0.9935545445396894, 1.9764323013318128, 0.24950025};
    for (int i = 0; i < 4; ++i) CHECK(p[i] == doctest::Approx(want2[i]).epsilon(1e-6));
    CHECK(opt.adam_steps() == 2);
}

TEST_CASE("adam: random steps match the formula in double") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    const ParamLayout L = small_layout();
    TrainConfig t = small_train();
    t.grad_clip = 0;
    Optimizer opt(L, t);
    std::vector<float> p = gaussian(rng, L.total, 0.1f);
    std::vector<double> pd(p.begin(), p.end()), m(L.total, 0.0), v(L.total, 0.0);
    for (int s = 1; s <= 5; ++s) {
        const std::vector<float> g = gaussian(rng, L.total, 0.01f);
        opt.step(p.data(), g.data(), 0.8f, s - 1);
        for (const ParamSpec& P : L.params) {
            if (P.kind == ParamKind::Matrix) continue;
            const double lr = (P.kind == ParamKind::Embedding ? t.embed_lr : t.scalar_lr) * 0.8;
            for (size_t e = P.offset; e < P.offset + P.numel(); ++e) {
                m[e] = t.adam_beta1 * m[e] + (1 - double(t.adam_beta1)) * g[e];
                v[e] = t.adam_beta2 * v[e] + (1 - double(t.adam_beta2)) * g[e] * g[e];
                const double mh = m[e] / (1 - std::pow(double(t.adam_beta1), s));
                const double vh = v[e] / (1 - std::pow(double(t.adam_beta2), s));
                pd[e] = pd[e] * (1 - lr * t.adam_wd) - lr * mh / (std::sqrt(vh) + t.adam_eps);
            }
        }
    }
    double worst = 0;  // fp32 rounding of a few ops per step: measured worst 1.1e-7 (30 runs)
    for (const ParamSpec& P : L.params)
        if (P.kind != ParamKind::Matrix)
            for (size_t e = P.offset; e < P.offset + P.numel(); ++e) worst = std::max(worst, std::fabs(p[e] - pd[e]));
    CHECK(worst < 1e-6);
}

TEST_CASE("optim: clipping brings the global norm to the cap and returns the pre-clip norm") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    const ParamLayout L = small_layout();
    std::vector<float> g = gaussian(rng, L.total);
    double ref = 0;
    for (float x : g) ref += double(x) * x;
    CHECK(sum_squares(g.data(), g.size()) == doctest::Approx(ref).epsilon(1e-12));
    const float norm = float(std::sqrt(ref));
    const float s = clip_scale(norm, 0.3f);
    double clipped = 0;
    for (float x : g) clipped += std::pow(double(x * s), 2);
    CHECK(std::sqrt(clipped) == doctest::Approx(0.3).epsilon(1e-5));
    CHECK(clip_scale(0.2f, 0.3f) == 1.f);
    CHECK(clip_scale(norm, 0.f) == 1.f);

    // A clipped step is the unclipped step on pre-scaled gradients, bit for bit.
    TrainConfig on = small_train(), off = small_train();
    on.grad_clip = 0.3f;
    off.grad_clip = 0;
    const std::vector<float> init = gaussian(rng, L.total, 0.1f);
    std::vector<float> pa = init, pb = init, gs = g;
    for (float& x : gs) x *= s;
    Optimizer a(L, on), b(L, off);
    CHECK(a.step(pa.data(), g.data(), 1.f, 0) == norm);
    b.step(pb.data(), gs.data(), 1.f, 0);
    CHECK(same_bits(pa, pb));
}

TEST_CASE("optim: state round trip resumes bit for bit") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    const ParamLayout L = small_layout();
    TrainConfig t = small_train();
    t.ema_decay = 0.9f;
    t.swa_from = 0.5f;
    t.swa_every = 2;
    const int total = 8, stop = 3;
    const std::vector<float> init = gaussian(rng, L.total, 0.1f);
    std::vector<std::vector<float>> grads;
    for (int s = 0; s < total; ++s) grads.push_back(gaussian(rng, L.total));
    auto run = [&](Optimizer& opt, WeightAverage& avg, std::vector<float>& p, int from, int to) {
        for (int s = from; s < to; ++s) {
            opt.step(p.data(), grads[s].data(), 1.f - 0.1f * s, s);
            avg.update(p.data(), s, s >= 2);
        }
    };
    Optimizer straight(L, t);
    WeightAverage straight_avg(L.total, t);
    std::vector<float> ps = init;
    run(straight, straight_avg, ps, 0, total);

    Optimizer first(L, t);
    WeightAverage first_avg(L.total, t);
    std::vector<float> pr = init;
    run(first, first_avg, pr, 0, stop);
    const std::vector<uint8_t> opt_bytes = save_state(first.state()), avg_bytes = save_state(first_avg.state());
    Optimizer resumed(L, t);
    WeightAverage resumed_avg(L.total, t);
    load_state(resumed.state(), opt_bytes, "ckpt");
    load_state(resumed_avg.state(), avg_bytes, "ckpt");
    CHECK(resumed.adam_steps() == stop);
    run(resumed, resumed_avg, pr, stop, total);

    CHECK(same_bits(ps, pr));
    CHECK(save_state(straight.state()) == save_state(resumed.state()));
    CHECK(save_state(straight_avg.state()) == save_state(resumed_avg.state()));
    REQUIRE(resumed_avg.swa() != nullptr);
    CHECK(std::memcmp(straight_avg.swa(), resumed_avg.swa(), L.total * sizeof(float)) == 0);
}

TEST_CASE("optim: state that does not fit is rejected with one clear line") {
    const ParamLayout L = small_layout();
    TrainConfig t = small_train();
    Optimizer opt(L, t);
    std::vector<uint8_t> bytes = save_state(opt.state());
    std::vector<uint8_t> cut(bytes.begin(), bytes.end() - 4);
    CHECK_THROWS_WITH_AS(load_state(opt.state(), cut, "run/ckpt.bin"), doctest::Contains("run/ckpt.bin"), Error);
    ParamLayout other;
    other.params = {{"v", 1, 3, ParamKind::Vector, QuantGroup::None, 0, -1}};
    other.total = 3;
    Optimizer small(other, t);
    CHECK_THROWS_AS(load_state(small.state(), bytes, "x"), Error);
    std::vector<uint8_t> junk(bytes.size(), 7);
    CHECK_THROWS_AS(load_state(opt.state(), junk, "x"), Error);
    WeightAverage avg(L.total, t);
    CHECK_THROWS_AS(load_state(avg.state(), bytes, "x"), Error);
}

TEST_CASE("schedule: warmup, flat, warmdown and floor") {
    TrainConfig t;
    t.iterations = 1000;
    t.max_wallclock_s = 0;
    t.warmup_steps = 10;
    t.warmdown_frac = 0.4f;
    t.lr_floor = 0.1f;
    const double tol = 1e-6;
    CHECK(lr_scale(0, 0, t) == doctest::Approx(0.1).epsilon(tol));  // (0 + 1) / 10
    CHECK(lr_scale(4, 0, t) == doctest::Approx(0.5).epsilon(tol));
    CHECK(lr_scale(9, 0, t) == doctest::Approx(1.0).epsilon(tol));
    CHECK(lr_scale(300, 0, t) == doctest::Approx(1.0).epsilon(tol));
    CHECK(lr_scale(600, 0, t) == doctest::Approx(1.0).epsilon(tol));   // warmdown starts at p = 0.6
    CHECK(lr_scale(800, 0, t) == doctest::Approx(0.55).epsilon(tol));  // halfway: (1 + 0.1) / 2
    CHECK(lr_scale(1000, 0, t) == doctest::Approx(0.1).epsilon(tol));
    CHECK(lr_scale(5000, 0, t) == doctest::Approx(0.1).epsilon(tol));  // clamped past the end
    for (int s = 600; s < 1000; ++s) CHECK(lr_scale(s + 1, 0, t) <= lr_scale(s, 0, t));
    t.warmdown_frac = 0;
    CHECK(lr_scale(999, 0, t) == 1.f);
}

TEST_CASE("schedule: the wall clock drives progress when it is ahead of the step count") {
    TrainConfig t;
    t.iterations = 1000;
    t.max_wallclock_s = 100;
    t.warmup_steps = 0;
    t.warmdown_frac = 0.5f;
    t.lr_floor = 0;
    CHECK(train_progress(100, 50, t) == doctest::Approx(0.5));
    CHECK(train_progress(900, 10, t) == doctest::Approx(0.9));
    CHECK(lr_scale(10, 75, t) == doctest::Approx(0.5));  // p = 0.75: halfway down the warmdown
    TrainConfig steps_only = t;
    steps_only.max_wallclock_s = 0;
    CHECK(lr_scale(10, 75, t) == doctest::Approx(lr_scale(750, 0, steps_only)));
    Config c;
    c.train = t;
    CHECK_FALSE(phases_at(10, 99.9, c).done);
    CHECK(phases_at(10, 100, c).done);
    CHECK(phases_at(1000, 0, c).done);
    CHECK(phases_at(10, 100, c).lr_scale == doctest::Approx(0.0));
    // The cap is a bound: a step that would end past it, judged by the last one, is not taken.
    CHECK_FALSE(phases_at(10, 98.0, c, 1.5).done);
    CHECK(phases_at(10, 98.6, c, 1.5).done);
    CHECK_FALSE(phases_at(10, 98.6, c, 0).done);
    c.train.max_wallclock_s = 0;
    CHECK_FALSE(phases_at(10, 1e6, c, 1e6).done);  // no cap: only the step count ends training
}

TEST_CASE("schedule: phase predicates switch at their fractions and stay off when disabled") {
    Config c;
    c.train.iterations = 100;
    c.train.max_wallclock_s = 0;
    c.train.qat_from = 0.85f;
    c.train.swa_from = 0.5f;
    c.model.recur_from = 0.35f;
    c.model.recur_repeats = 2;
    Phases a = phases_at(34, 0, c), b = phases_at(35, 0, c);
    CHECK_FALSE(a.recur);
    CHECK(b.recur);
    CHECK_FALSE(phases_at(49, 0, c).swa);
    CHECK(phases_at(50, 0, c).swa);
    CHECK_FALSE(phases_at(84, 0, c).qat);
    CHECK(phases_at(85, 0, c).qat);
    CHECK(phases_at(99, 0, c).qat);
    c.train.qat_from = 1;
    c.train.swa_from = 0;
    c.model.recur_repeats = 1;
    Phases off = phases_at(99, 0, c);
    CHECK_FALSE(off.qat);
    CHECK_FALSE(off.swa);
    CHECK_FALSE(off.recur);
}

TEST_CASE("ema and swa: averages match their definitions") {
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    TrainConfig t;
    t.ema_decay = 0.9f;
    t.swa_from = 0.5f;
    t.swa_every = 3;
    const size_t n = 257;
    WeightAverage avg(n, t);
    CHECK(avg.ema() == nullptr);
    CHECK(avg.swa() == nullptr);
    std::vector<double> ema(n), swa(n, 0.0);
    int snaps = 0;
    for (int s = 0; s < 10; ++s) {
        const std::vector<float> w = gaussian(rng, n);
        const bool active = s >= 4;  // snapshots at steps 6 and 9
        avg.update(w.data(), s, active);
        for (size_t i = 0; i < n; ++i) ema[i] = s == 0 ? w[i] : 0.9 * ema[i] + 0.1 * w[i];
        if (active && s % 3 == 0) {
            ++snaps;
            for (size_t i = 0; i < n; ++i) swa[i] += w[i];
        }
    }
    REQUIRE(avg.ema() != nullptr);
    REQUIRE(avg.swa() != nullptr);
    CHECK(avg.swa_count() == 2);
    CHECK(snaps == 2);
    double worst_ema = 0, worst_swa = 0;  // fp32 rounding of ~10 updates of O(1) values: measured <= 5.1e-7
    for (size_t i = 0; i < n; ++i) {
        worst_ema = std::max(worst_ema, std::fabs(avg.ema()[i] - ema[i]));
        worst_swa = std::max(worst_swa, std::fabs(avg.swa()[i] - swa[i] / snaps));
    }
    CHECK(worst_ema < 5e-6);
    CHECK(worst_swa < 5e-6);

    TrainConfig off;
    off.ema_decay = 0;
    off.swa_from = 0;
    WeightAverage none(n, off);
    const std::vector<float> w = gaussian(rng, n);
    none.update(w.data(), 0, true);
    CHECK(none.ema() == nullptr);
    CHECK(none.swa() == nullptr);
    off.ema_decay = 1.f;
    CHECK_THROWS_AS(WeightAverage(n, off), Error);
}
