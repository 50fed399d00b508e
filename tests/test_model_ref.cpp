// The whole CPU reference model (model/model_ref.h): full gradient checks in double on
// tiny configs (every switch on, SwiGLU, every switch off), causality, float against
// double, the init and the GPTQ calibration hook.
#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <numeric>
#include <utility>

#include "model/model_ref.h"
#include "tests/ref_check.h"

using namespace pg;
using pg::test::randn;
using pg::test::rel_err;

namespace {

// Every architectural switch on, at a size where a finite-difference sweep takes a second.
// Schedule with recurrence: 0 1 2 1 2 3 (U-Net: 3 encoder, 3 decoder entries); layers 2, 3
// are parallel and XSA, so layer 2 runs twice in both roles.
ModelConfig all_on() {
    ModelConfig c;
    c.vocab_size = 40;
    c.model_dim = 16;
    c.n_layers = 4;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;
    c.mlp_mult = 2;
    c.rope_dims = 2;
    c.qk_gain_init = 1.5f;
    c.logit_softcap = 2.0f;  // small, so the tanh is far from linear
    c.bigram_buckets = 11;
    c.bigram_dim = 6;
    c.smear_gate = c.value_residual = c.ln_scale = c.unet_skips = c.qk_norm = c.ortho_init = true;
    c.xsa_last = 2;
    c.recur_start = 1;
    c.recur_end = 2;
    c.recur_repeats = 2;
    c.parallel_from = 2;
    c.seq_len = 8;
    return c;
}

ModelConfig all_off() {
    ModelConfig c = all_on();
    c.bigram_buckets = 0;
    c.smear_gate = c.value_residual = c.ln_scale = c.unet_skips = c.qk_norm = c.ortho_init = false;
    c.xsa_last = 0;
    c.recur_repeats = 1;
    c.parallel_from = c.n_layers;
    c.logit_softcap = 0;
    return c;
}

std::vector<int32_t> random_tokens(size_t n, int vocab, std::mt19937_64& g) {
    std::vector<int32_t> t(n);
    for (auto& x : t) x = int32_t(g() % vocab);
    return t;
}

// init, then noise on every parameter so that no gate, mix or scale sits at a special value.
template <typename T>
void randomize(RefModel<T>& m, std::mt19937_64& g, double noise) {
    m.init(g());
    const std::vector<double> e = randn(m.params.size(), g, noise);
    for (size_t i = 0; i < e.size(); ++i) m.params[i] += T(e[i]);
}

// Gradient check of the whole model: for every parameter tensor, up to 6 random entries,
// analytic against fourth-order central differences of the mean loss (step 1e-5: rounding
// leaves ~1e-10 of absolute error; a larger step lets LeakyReLU^2's kink show through).
// Error per tensor: max |a - n| over its entries, relative to its largest checked entry or
// to 1e-3 of the model's largest gradient entry if that is larger (some tensors get
// gradients of 1e-5, where rounding alone reaches 1e-5 relative); it must stay below 1e-5.
// Every tensor must also get a non-zero gradient, except the first block run's v_mix (its
// v is v_first).
void check_model_gradients(const ModelConfig& c, bool recur, uint64_t seed) {
    INFO("seed " << seed);
    std::mt19937_64 g(seed);
    RefModel<double> m(c);
    randomize(m, g, 0.3);
    const int B = 2, Tn = 7;
    const auto in = random_tokens(B * Tn, c.vocab_size, g), tgt = random_tokens(B * Tn, c.vocab_size, g);
    m.zero_grad();
    m.forward(in.data(), tgt.data(), B, Tn, recur);
    m.backward();
    const std::string unused_v_mix = "blocks." + std::to_string(c.layer_schedule(recur)[0]) + ".v_mix";
    const double h = 1e-5;
    double global = 0;
    for (double x : m.grads) global = std::max(global, std::abs(x));
    for (const ParamSpec& p : m.layout().params) {
        INFO("parameter " << p.name);
        const double* grad = m.grads.data() + p.offset;
        double gmax = 0;
        for (size_t i = 0; i < p.numel(); ++i) gmax = std::max(gmax, std::abs(grad[i]));
        if (p.name != unused_v_mix) CHECK(gmax > 0);
        std::vector<size_t> pick(p.numel());
        std::iota(pick.begin(), pick.end(), size_t(0));
        std::shuffle(pick.begin(), pick.end(), g);
        pick.resize(std::min<size_t>(pick.size(), 6));
        std::vector<double> analytic, numeric;
        for (size_t i : pick) {
            double& w = m.params[p.offset + i];
            const double keep = w;
            auto loss_at = [&](double step) {
                w = keep + step;
                return m.forward(in.data(), tgt.data(), B, Tn, recur);
            };
            const double l2 = loss_at(2 * h), l1 = loss_at(h), m1 = loss_at(-h), m2 = loss_at(-2 * h);
            w = keep;
            numeric.push_back((8 * (l1 - m1) - (l2 - m2)) / (12 * h));
            analytic.push_back(grad[i]);
        }
        const double e = rel_err(analytic, numeric, 1e-3 * global);
        INFO("relative error " << e);
        CHECK(e < 1e-5);
    }
}

}  // namespace

TEST_CASE("ref model gradients, every switch on, recurrence active") {
    check_model_gradients(all_on(), true, test::fresh_seed());
}

TEST_CASE("ref model gradients, every switch on, recurrence not yet active") {
    check_model_gradients(all_on(), false, test::fresh_seed());
}

TEST_CASE("ref model gradients, every switch on with SwiGLU") {
    ModelConfig c = all_on();
    c.swiglu = true;
    check_model_gradients(c, true, test::fresh_seed());
}

TEST_CASE("ref model gradients, every switch off") {
    check_model_gradients(all_off(), false, test::fresh_seed());
}

TEST_CASE("ref model is causal: later tokens never change earlier logits") {
    const uint64_t seed = test::fresh_seed();
    INFO("seed " << seed);
    std::mt19937_64 g(seed);
    ModelConfig c = all_on();
    RefModel<float> m(c);
    randomize(m, g, 0.3);
    const int B = 2, Tn = 12, V = c.vocab_size;
    const auto base = random_tokens(B * Tn, V, g);
    std::vector<float> ref, got;
    m.logits(base.data(), B, Tn, true, ref);
    for (int t = 0; t + 1 < Tn; ++t) {
        INFO("changed from position " << t + 1);
        auto in = base;
        for (int b = 0; b < B; ++b)
            for (int u = t + 1; u < Tn; ++u) in[b * Tn + u] = int32_t((base[b * Tn + u] + 1 + g() % (V - 1)) % V);
        m.logits(in.data(), B, Tn, true, got);
        bool same_before = true, changed_after = false;
        for (int b = 0; b < B; ++b)
            for (int u = 0; u < Tn; ++u)
                for (int v = 0; v < V; ++v) {
                    const size_t i = (size_t(b) * Tn + u) * V + v;
                    if (u <= t) same_before &= got[i] == ref[i];  // bit-exact: rows never mix
                    else changed_after |= got[i] != ref[i];
                }
        CHECK(same_before);
        CHECK(changed_after);
    }
}

TEST_CASE("ref model float forward agrees with double; per-token losses match the logits") {
    const uint64_t seed = test::fresh_seed();
    INFO("seed " << seed);
    std::mt19937_64 g(seed);
    Config preset;
    apply_preset(preset, "tiny");
    const ModelConfig& c = preset.model;
    RefModel<double> md(c);
    randomize(md, g, 0.02);
    RefModel<float> mf(c);
    std::copy(md.params.begin(), md.params.end(), mf.params.begin());
    const int B = 2, Tn = 64, N = B * Tn, V = c.vocab_size;
    const auto in = random_tokens(N, V, g), tgt = random_tokens(N, V, g);
    std::vector<double> ld(N), logits_d;
    std::vector<float> lf(N), logits_f;
    const double loss_d = md.forward(in.data(), tgt.data(), B, Tn, true, ld.data());
    const float loss_f = mf.forward(in.data(), tgt.data(), B, Tn, true, lf.data());
    md.logits(in.data(), B, Tn, true, logits_d);
    mf.logits(in.data(), B, Tn, true, logits_f);
    const double e_logits = rel_err(std::vector<double>(logits_f.begin(), logits_f.end()), logits_d);
    const double e_loss = rel_err(std::vector<double>(lf.begin(), lf.end()), ld);
    INFO("logits relative error " << e_logits << ", per-token loss relative error " << e_loss);
    CHECK(e_logits < 1e-5);
    CHECK(e_loss < 1e-5);
    CHECK(std::abs(loss_f - loss_d) < 1e-5 * loss_d);

    double mean = 0;
    for (int n = 0; n < N; ++n) {
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < V; ++v) mx = std::max(mx, logits_d[size_t(n) * V + v]);
        for (int v = 0; v < V; ++v) sum += std::exp(logits_d[size_t(n) * V + v] - mx);
        CHECK(ld[n] == doctest::Approx(mx + std::log(sum) - logits_d[size_t(n) * V + tgt[n]]).epsilon(1e-12));
        mean += ld[n] / N;
    }
    CHECK(loss_d == doctest::Approx(mean).epsilon(1e-12));
    double max_logit = 0;
    for (double x : logits_d) max_logit = std::max(max_logit, std::abs(x));
    CHECK(max_logit <= c.logit_softcap);
}

TEST_CASE("ref model init: semi-orthogonal over several Gram-Schmidt blocks, wide and tall") {
    const uint64_t seed = test::fresh_seed();
    INFO("seed " << seed);
    // 150 and 130 vectors: two whole blocks of 64 and a part block, so every vector after the
    // first block is projected off the earlier blocks by the matrix products.
    for (const std::pair<int, int>& shape : {std::pair{150, 200}, std::pair{300, 130}}) {
        const int rows = shape.first, cols = shape.second;
        CAPTURE(rows);
        CAPTURE(cols);
        std::vector<double> w(size_t(rows) * cols), again(w.size());
        NormalRng r1(seed), r2(seed);
        semi_orthogonal_init(w.data(), rows, cols, r1);
        semi_orthogonal_init(again.data(), rows, cols, r2);
        CHECK(w == again);
        const int n = std::min(rows, cols), len = std::max(rows, cols);
        auto at = [&](int vec, int e) { return rows <= cols ? w[size_t(vec) * cols + e] : w[size_t(e) * cols + vec]; };
        double worst = 0;
        for (int i = 0; i < n; ++i)
            for (int j = 0; j <= i; ++j) {
                double s = 0;
                for (int e = 0; e < len; ++e) s += at(i, e) * at(j, e);
                worst = std::max(worst, std::abs(s - (i == j ? 1.0 : 0.0)));
            }
        CHECK(worst < 1e-12);
    }
}

TEST_CASE("ref model init: deterministic, orthogonal matrices, scaled output projections") {
    const uint64_t seed = test::fresh_seed();
    INFO("seed " << seed);
    ModelConfig c = all_on();
    c.model_dim = 32;
    c.head_dim = 8;
    RefModel<double> a(c), b(c), d(c);
    a.init(seed);
    b.init(seed);
    d.init(seed + 1);
    CHECK(a.params == b.params);
    CHECK(a.params != d.params);
    const double out_scale = 1 / std::sqrt(2.0 * c.n_layers);
    for (const ParamSpec& p : a.layout().params) {
        INFO("parameter " << p.name);
        const double* w = a.params.data() + p.offset;
        if (p.kind == ParamKind::Matrix) {
            // W W^T (rows <= cols) or W^T W must be s^2 I.
            const bool out_proj = p.name.find(".attn.wo") != std::string::npos || p.name.find(".mlp.proj") != std::string::npos;
            const double s2 = out_proj ? out_scale * out_scale : 1.0;
            const int n = std::min(p.rows, p.cols), len = std::max(p.rows, p.cols);
            auto at = [&](int vec, int e) { return p.rows <= p.cols ? w[size_t(vec) * p.cols + e] : w[size_t(e) * p.cols + vec]; };
            double worst = 0;
            for (int i = 0; i < n; ++i)
                for (int j = 0; j < n; ++j) {
                    double s = 0;
                    for (int e = 0; e < len; ++e) s += at(i, e) * at(j, e);
                    worst = std::max(worst, std::abs(s - (i == j ? s2 : 0.0)));
                }
            CHECK(worst < 1e-12);
        } else if (p.kind == ParamKind::Embedding) {
            double ss = 0;
            for (size_t i = 0; i < p.numel(); ++i) ss += w[i] * w[i];
            CHECK(std::sqrt(ss / p.numel()) == doctest::Approx(c.embed_init_std).epsilon(0.15));
        }
    }
    auto vec = [&](const std::string& name) {
        const ParamSpec& p = a.layout().get(name);
        return std::vector<double>(a.params.begin() + p.offset, a.params.begin() + p.offset + p.numel());
    };
    const int D = c.model_dim;
    CHECK(vec("bigram.scale") == std::vector<double>{double(0.05)});
    CHECK(vec("blocks.1.attn_scale") == std::vector<double>(D, 1.0));
    CHECK(vec("blocks.2.mlp_scale") == std::vector<double>(D, 1.0));
    std::vector<double> rm(2 * D, 0.0);
    std::fill(rm.begin(), rm.begin() + D, 1.0);
    CHECK(vec("blocks.3.resid_mix") == rm);
    CHECK(vec("blocks.0.q_gain") == std::vector<double>(c.n_heads, double(c.qk_gain_init)));
    CHECK(vec("blocks.1.v_mix") == std::vector<double>{0.5, 0.5});
    CHECK(vec("skip.weights") == std::vector<double>(size_t(c.max_skips()) * D, 1.0));
    CHECK(vec("skip.gates") == std::vector<double>(size_t(c.max_skips()) * D, 0.0));
    CHECK(vec("smear.gate") == std::vector<double>(D, 0.0));

    // Without ortho_init: N(0, 1/sqrt(in)).
    c.ortho_init = false;
    c.model_dim = 64;
    RefModel<double> gm(c);
    gm.init(seed);
    const ParamSpec& fc = gm.layout().get("blocks.0.mlp.fc");
    double ss = 0;
    for (size_t i = 0; i < fc.numel(); ++i) ss += gm.params[fc.offset + i] * gm.params[fc.offset + i];
    CHECK(std::sqrt(ss / fc.numel()) == doctest::Approx(1 / std::sqrt(double(fc.cols))).epsilon(0.1));
}

TEST_CASE("ref model calibration hook sees the input of every linear map") {
    const uint64_t seed = test::fresh_seed();
    INFO("seed " << seed);
    std::mt19937_64 g(seed);
    const ModelConfig c = all_on();
    RefModel<float> m(c);
    m.init(seed);
    const int B = 2, Tn = 5;
    std::map<std::string, int> calls;
    bool shapes_ok = true;
    m.on_linear_input = [&](const std::string& w, const float*, int rows, int in) {
        ++calls[w];
        shapes_ok &= rows == B * Tn && in == m.layout().get(w).cols;
    };
    const auto in = random_tokens(B * Tn, c.vocab_size, g);
    m.forward(in.data(), in.data(), B, Tn, true);
    CHECK(shapes_ok);
    const std::vector<int> sched = c.layer_schedule(true);
    for (const ParamSpec& p : m.layout().params) {
        INFO("parameter " << p.name);
        if (p.kind != ParamKind::Matrix) continue;
        int runs = 1;  // bigram.proj
        if (p.name.rfind("blocks.", 0) == 0) runs = int(std::count(sched.begin(), sched.end(), std::stoi(p.name.substr(7))));
        CHECK(calls[p.name] == runs);
    }
    CHECK(calls["tok_emb"] == 1);
}

// Speed of the CPU path (not a check; run with --no-skip): matmul GFLOP/s on the tiny
// preset's shapes, and one forward+backward of the tiny preset (32 x 128 tokens) in float.
TEST_CASE("ref model benchmark" * doctest::skip()) {
    using clock = std::chrono::steady_clock;
    std::mt19937_64 g(1);
    auto best_of = [](int reps, const std::function<void()>& f) {
        double best = 1e30;
        for (int r = 0; r < reps; ++r) {
            const auto t0 = clock::now();
            f();
            best = std::min(best, std::chrono::duration<double>(clock::now() - t0).count());
        }
        return best;
    };
    const int N = 4096;
    for (auto [in, out] : std::vector<std::pair<int, int>>{{128, 128}, {128, 512}, {512, 128}, {128, 1024}}) {
        const auto xd = randn(size_t(N) * in, g), wd = randn(size_t(out) * in, g), dyd = randn(size_t(N) * out, g);
        std::vector<float> x(xd.begin(), xd.end()), w(wd.begin(), wd.end()), dy(dyd.begin(), dyd.end());
        std::vector<float> y(size_t(N) * out), dx(x.size()), dw(w.size());
        const double flop = 2.0 * N * in * out;
        const double tf = best_of(10, [&] { matmul_forward(y.data(), x.data(), w.data(), N, in, out); });
        const double tb = best_of(10, [&] { matmul_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), N, in, out); });
        MESSAGE("matmul " << N << "x" << in << " -> " << out << ": forward " << flop / tf * 1e-9 << " GFLOP/s, backward "
                          << 2 * flop / tb * 1e-9 << " GFLOP/s");
    }
    Config preset;
    apply_preset(preset, "tiny");
    RefModel<float> m(preset.model);
    m.init(1);
    const int B = 32, Tn = preset.model.seq_len;
    const auto in = random_tokens(size_t(B) * Tn, preset.model.vocab_size, g);
    const auto tgt = random_tokens(size_t(B) * Tn, preset.model.vocab_size, g);
    for (bool recur : {false, true}) {
        double tfwd = 1e30, tall = 1e30;
        for (int r = 0; r < 3; ++r) {
            const auto t0 = clock::now();
            m.forward(in.data(), tgt.data(), B, Tn, recur);
            const auto t1 = clock::now();
            m.backward();
            const auto t2 = clock::now();
            tfwd = std::min(tfwd, std::chrono::duration<double>(t1 - t0).count());
            tall = std::min(tall, std::chrono::duration<double>(t2 - t0).count());
        }
        MESSAGE("tiny preset, " << B << "x" << Tn << " tokens, recurrence " << std::string(recur ? "on" : "off") << ": forward "
                                << tfwd << " s, forward+backward " << tall << " s");
    }
}
