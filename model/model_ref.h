// The pgolf model on the CPU, forward and backward, in plain C++ (model/ops_ref.h holds
// the ops). It is the oracle for the CUDA model and the CPU training path. T is float for
// training, double for gradient checks. Weights are [out, in]: y = x W^T.
//
// Forward, per sequence of Tn tokens (B sequences, N = B * Tn rows):
//   x = tok_emb[idx] (+ bigram.scale * bigram.emb[hash(prev, cur)] bigram.proj^T)
//   x = rmsnorm(x); x = smear(x); x0 = x
//   for each entry i of the layer schedule (physical layer l; recurrence repeats a span):
//     U-Net: the first half pushes its outputs; the second half, before each block, pops
//     one and mixes it in through a sigmoid gate
//     x = block_l(x, x0)
//   logits = softcap(rmsnorm(x) tok_emb^T); loss = mean cross-entropy
// block_l (s = 1/sqrt(l+1) with ln_scale):
//   x_in = resid_mix[0] x + resid_mix[1] x0;  h = s * rmsnorm(x_in)
//   q, k, v = h Wq^T, h Wk^T, h Wv^T; q, k = rope(rmsnorm per head); q *= q_gain[head]
//   v = v_mix[0] v + v_mix[1] v_first (value residual; v_first is the first block run's v)
//   y = causal GQA attention; XSA on the last xsa_last physical layers; a = y Wo^T
//   parallel (l >= parallel_from): x_out = x_in + attn_scale a + mlp_scale mlp(h)
//   else: x_mid = x_in + attn_scale a; x_out = x_mid + mlp_scale mlp(s * rmsnorm(x_mid))
//   mlp(u) = act(u fc^T) proj^T, act = LeakyReLU(slope)^2 or SwiGLU.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/config.h"
#include "model/attention_ref.h"
#include "model/ops_ref.h"
#include "model/params.h"

namespace pg {

// N(0, 1) by Box-Muller on mt19937_64: std::normal_distribution differs between standard
// libraries, and an init must be the same wherever it is built.
class NormalRng {
   public:
    explicit NormalRng(uint64_t seed) : gen_(seed) {}
    double next() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        double u1;
        do u1 = uniform(); while (u1 <= 0);
        const double r = std::sqrt(-2 * std::log(u1)), th = 6.283185307179586 * uniform();
        spare_ = r * std::sin(th);
        has_spare_ = true;
        return r * std::cos(th);
    }

   private:
    double uniform() { return double(gen_() >> 11) * 0x1.0p-53; }
    std::mt19937_64 gen_;
    bool has_spare_ = false;
    double spare_ = 0;
};

// w [rows, cols] = a random (semi-)orthogonal matrix: the rows (rows <= cols) or the
// columns (rows > cols) of a Gaussian matrix, orthonormalised by block Gram-Schmidt run twice
// (BCGS2). Each block of kBlock vectors loses its projections on all earlier vectors through
// two matrix products, twice, then is orthonormalised within itself one vector at a time
// (classical Gram-Schmidt, twice); that keeps it orthogonal to ~1e-15. Run vector by vector,
// the projections streamed all earlier vectors from memory once per vector; by blocks, once
// per kBlock vectors, which matters for the record model's 512 x 2048 matrices.
template <typename T>
void semi_orthogonal_init(T* w, int rows, int cols, NormalRng& rng) {
    constexpr int kBlock = 64;
    const int n = std::min(rows, cols), len = std::max(rows, cols);
    std::vector<double> m(size_t(n) * len), c(size_t(kBlock) * n);
    for (double& v : m) v = rng.next();
    for (int i0 = 0; i0 < n; i0 += kBlock) {
        const int bs = std::min(kBlock, n - i0);
        double* const blk = m.data() + size_t(i0) * len;
        for (int pass = 0; pass < 2 && i0 > 0; ++pass) {
            // c = blk prev^T, then blk -= c prev, with prev the i0 finished vectors.
            std::fill(c.begin(), c.begin() + size_t(bs) * i0, 0.0);
            gemm_acc<double>(bs, i0, len, blk, len, 1, m.data(), 1, len, c.data(), i0);
            for (size_t k = 0; k < size_t(bs) * i0; ++k) c[k] = -c[k];
            gemm_acc<double>(bs, len, i0, c.data(), i0, 1, m.data(), len, 1, blk, len);
        }
        for (int i = 0; i < bs; ++i) {
            double* v = blk + size_t(i) * len;
            for (int pass = 0; pass < 2; ++pass) {
                for (int j = 0; j < i; ++j) {
                    double d = 0;
                    for (int e = 0; e < len; ++e) d += blk[size_t(j) * len + e] * v[e];
                    c[j] = d;
                }
                for (int j = 0; j < i; ++j)
                    for (int e = 0; e < len; ++e) v[e] -= c[j] * blk[size_t(j) * len + e];
            }
            double ss = 0;
            for (int e = 0; e < len; ++e) ss += v[e] * v[e];
            for (int e = 0; e < len; ++e) v[e] /= std::sqrt(ss);
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int col = 0; col < cols; ++col)
            w[size_t(r) * cols + col] = T(rows <= cols ? m[size_t(r) * len + col] : m[size_t(col) * len + r]);
}

template <typename T>
class RefModel {
   public:
    explicit RefModel(const ModelConfig& cfg);
    const ModelConfig& config() const { return cfg_; }
    const ParamLayout& layout() const { return layout_; }

    std::vector<T> params, grads;  // flat, in layout order; backward() adds into grads
    void zero_grad() { std::fill(grads.begin(), grads.end(), T(0)); }
    void init(uint64_t seed);

    // Mean cross-entropy over the B*Tn positions; per_token_loss[B*Tn] (nats) filled if
    // non-null. Keeps the activations for backward().
    T forward(const int32_t* inputs, const int32_t* targets, int B, int Tn, bool recur_active,
              T* per_token_loss = nullptr);
    void backward();  // adds d(mean loss)/d(params) into grads
    // Softcapped logits [B*Tn, vocab].
    void logits(const int32_t* inputs, int B, int Tn, bool recur_active, std::vector<T>& out);

    // GPTQ calibration: called during the forward with the input X [rows, in] of every
    // linear map, keyed by its weight's parameter name (tok_emb for the tied head). A
    // layer that the recurrence runs twice reports both inputs.
    std::function<void(const std::string& weight, const T* X, int rows, int in)> on_linear_input;

   private:
    // What one run of a block keeps for the backward (one per schedule entry).
    struct BlockActs {
        int layer = 0;
        int skip = -1, skip_src = -1;  // U-Net row mixed in before the block, and whose output
        std::vector<T> x;              // residual entering the block (after any skip mix)
        std::vector<T> x_in, h, rstd1;
        std::vector<T> q_raw, k_raw, v_raw, q_rstd, k_rstd, qn, kn, q_rope, q, k, v;
        std::vector<T> y, lse, y_xsa, a, x_mid, u, rstd2, f, act, m, x_out;
    };

    T* P(int i) { return params.data() + layout_.params[i].offset; }
    T* G(int i) { return grads.data() + layout_.params[i].offset; }
    void linear_input(int weight, const T* X, int rows, int in) {
        if (on_linear_input) on_linear_input(layout_.params[weight].name, X, rows, in);
    }
    T ln_scale(int l) const { return cfg_.ln_scale ? T(1) / std::sqrt(T(l + 1)) : T(1); }
    bool parallel(int l) const { return l >= cfg_.parallel_from; }
    bool xsa(int l) const { return l >= cfg_.n_layers - cfg_.xsa_last; }

    void run(const int32_t* inputs, int B, int Tn, bool recur_active);  // up to logits_
    void block_forward(int i);
    void block_backward(int i, const T* dx_out, T* dx, T* dx0, T* dv_first);

    ModelConfig cfg_;
    ParamLayout layout_;
    ParamIndex ix_;  // where each named parameter sits in layout_

    // Activations of the last forward.
    int B_ = 0, Tn_ = 0, N_ = 0, n_enc_ = 0;
    std::vector<int> schedule_;
    std::vector<int32_t> inputs_, targets_, buckets_;
    std::vector<T> x_emb_, big_e_, big_p_, rstd_emb_, x_norm_, x0_, xf_, rstd_f_, logits_;
    std::vector<BlockActs> acts_;

    // Gradient buffers of backward(), named after their activations; kept between steps
    // since fresh allocations of this size page-fault on every step.
    struct Grads {
        std::vector<T> logits, logits_raw, xf, x, x0, v_first, block, norm, emb;
        std::vector<std::vector<T>> skip;
        std::vector<T> x_mid, m, act, f, u, h, x_in, a, y_xsa, y, v, q, k, v_att, v_raw, q_rope, qn, kn, q_raw, k_raw;
    } d_;
    static T* zeroed(std::vector<T>& v, size_t n) {
        v.assign(n, T(0));
        return v.data();
    }
};

template <typename T>
RefModel<T>::RefModel(const ModelConfig& cfg) : cfg_(cfg), layout_(make_layout(cfg)) {
    ix_ = index_params(layout_, cfg_.n_layers);
    params.assign(layout_.total, T(0));
    grads.assign(layout_.total, T(0));
}

template <typename T>
void RefModel<T>::init(uint64_t seed) {
    NormalRng rng(seed);
    auto ends_with = [](const std::string& s, const char* suf) {
        const size_t n = std::char_traits<char>::length(suf);
        return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
    };
    for (const ParamSpec& p : layout_.params) {
        T* w = params.data() + p.offset;
        const size_t n = p.numel();
        if (p.kind == ParamKind::Embedding) {
            for (size_t i = 0; i < n; ++i) w[i] = T(cfg_.embed_init_std * rng.next());
        } else if (p.kind == ParamKind::Matrix) {
            if (cfg_.ortho_init) {
                semi_orthogonal_init(w, p.rows, p.cols, rng);
                // Output projections write into the residual stream once per layer.
                if (ends_with(p.name, ".attn.wo") || ends_with(p.name, ".mlp.proj"))
                    for (size_t i = 0; i < n; ++i) w[i] *= T(1 / std::sqrt(2.0 * cfg_.n_layers));
            } else {
                for (size_t i = 0; i < n; ++i) w[i] = T(rng.next() / std::sqrt(double(p.cols)));
            }
        } else if (p.name == "bigram.scale") {
            w[0] = T(0.05);
        } else if (ends_with(p.name, "attn_scale") || ends_with(p.name, "mlp_scale") || p.name == "skip.weights") {
            std::fill(w, w + n, T(1));
        } else if (ends_with(p.name, "resid_mix")) {
            std::fill(w, w + p.cols, T(1));
            std::fill(w + p.cols, w + n, T(0));
        } else if (ends_with(p.name, "q_gain")) {
            std::fill(w, w + n, T(cfg_.qk_gain_init));
        } else if (ends_with(p.name, "v_mix")) {
            std::fill(w, w + n, T(0.5));
        } else if (p.name == "skip.gates" || p.name == "smear.gate") {
            std::fill(w, w + n, T(0));
        } else {
            fail("RefModel::init: no init rule for parameter '%s'", p.name.c_str());
        }
    }
}

// ----------------------------------------------------------------------------- forward

template <typename T>
T RefModel<T>::forward(const int32_t* inputs, const int32_t* targets, int B, int Tn, bool recur_active,
                       T* per_token_loss) {
    run(inputs, B, Tn, recur_active);
    targets_.assign(targets, targets + N_);
    for (int32_t t : targets_)
        if (t < 0 || t >= cfg_.vocab_size) fail("RefModel: target id %d outside the vocabulary of %d", t, cfg_.vocab_size);
    std::vector<T> losses(N_);
    crossentropy_forward(losses.data(), logits_.data(), targets, N_, cfg_.vocab_size);
    double sum = 0;
    for (T v : losses) sum += v;
    if (per_token_loss) std::copy(losses.begin(), losses.end(), per_token_loss);
    return T(sum / N_);
}

template <typename T>
void RefModel<T>::logits(const int32_t* inputs, int B, int Tn, bool recur_active, std::vector<T>& out) {
    run(inputs, B, Tn, recur_active);
    out = logits_;
}

template <typename T>
void RefModel<T>::run(const int32_t* inputs, int B, int Tn, bool recur_active) {
    const int D = cfg_.model_dim, V = cfg_.vocab_size;
    if (B < 1 || Tn < 1) fail("RefModel: empty batch (%d sequences of %d tokens)", B, Tn);
    B_ = B, Tn_ = Tn, N_ = B * Tn;
    const int N = N_;
    inputs_.assign(inputs, inputs + N);
    for (int n = 0; n < N; ++n)
        if (inputs[n] < 0 || inputs[n] >= V) fail("RefModel: token id %d outside the vocabulary of %d", inputs[n], V);

    x_emb_.resize(size_t(N) * D);
    embedding_forward(x_emb_.data(), inputs, P(ix_.tok_emb), N, D);
    if (cfg_.bigram_buckets > 0) {
        const int bd = cfg_.bigram_dim;
        buckets_.resize(N);
        big_e_.resize(size_t(N) * bd);
        big_p_.resize(size_t(N) * D);
        bigram_hash(buckets_.data(), inputs, B, Tn, cfg_.bigram_buckets);
        bigram_forward(x_emb_.data(), big_e_.data(), big_p_.data(), buckets_.data(), P(ix_.bigram_emb), P(ix_.bigram_proj),
                       P(ix_.bigram_scale), N, bd, D);
        linear_input(ix_.bigram_proj, big_e_.data(), N, bd);
    }
    x_norm_.resize(size_t(N) * D);
    rstd_emb_.resize(N);
    rmsnorm_forward(x_norm_.data(), rstd_emb_.data(), x_emb_.data(), N, D);
    x0_.resize(size_t(N) * D);
    if (cfg_.smear_gate) smear_forward(x0_.data(), x_norm_.data(), P(ix_.smear_gate), B, Tn, D);
    else x0_ = x_norm_;

    schedule_ = cfg_.layer_schedule(recur_active);
    const int S = int(schedule_.size());
    n_enc_ = cfg_.unet_skips ? S / 2 : 0;
    acts_.resize(S);
    std::vector<int> stack;  // schedule entries whose outputs wait for their decoder skip
    for (int i = 0; i < S; ++i) {
        BlockActs& A = acts_[i];
        A.layer = schedule_[i];
        A.skip = A.skip_src = -1;
        const std::vector<T>& x = i == 0 ? x0_ : acts_[i - 1].x_out;
        A.x.resize(size_t(N) * D);
        if (i >= n_enc_ && !stack.empty()) {
            A.skip = i - n_enc_;
            A.skip_src = stack.back();
            stack.pop_back();
            skip_mix_forward(A.x.data(), x.data(), acts_[A.skip_src].x_out.data(), P(ix_.skip_weights) + size_t(A.skip) * D,
                             P(ix_.skip_gates) + size_t(A.skip) * D, N, D);
        } else {
            A.x = x;
        }
        block_forward(i);
        if (i < n_enc_) stack.push_back(i);
    }

    xf_.resize(size_t(N) * D);
    rstd_f_.resize(N);
    rmsnorm_forward(xf_.data(), rstd_f_.data(), acts_.back().x_out.data(), N, D);
    linear_input(ix_.tok_emb, xf_.data(), N, D);
    logits_.resize(size_t(N) * V);
    matmul_forward(logits_.data(), xf_.data(), P(ix_.tok_emb), N, D, V);
    if (cfg_.logit_softcap > 0) softcap_forward(logits_.data(), logits_.data(), logits_.size(), T(cfg_.logit_softcap));
}

template <typename T>
void RefModel<T>::block_forward(int i) {
    BlockActs& A = acts_[i];
    const ParamIndex::Block& L = ix_.blocks[A.layer];
    const int N = N_, D = cfg_.model_dim, H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, hd = cfg_.head_dim;
    const int QD = H * hd, KVD = Hkv * hd, hidden = cfg_.hidden_dim(), F = cfg_.swiglu ? 2 * hidden : hidden;
    const T s = ln_scale(A.layer);
    auto sized = [](std::vector<T>& v, size_t n) -> T* {
        v.resize(n);
        return v.data();
    };

    mix_forward(sized(A.x_in, size_t(N) * D), A.x.data(), x0_.data(), P(L.resid_mix), P(L.resid_mix) + D, N, D, 1);
    rmsnorm_forward(sized(A.h, size_t(N) * D), sized(A.rstd1, N), A.x_in.data(), N, D, s);

    // Attention.
    linear_input(L.wq, A.h.data(), N, D);
    linear_input(L.wk, A.h.data(), N, D);
    linear_input(L.wv, A.h.data(), N, D);
    matmul_forward(sized(A.q_raw, size_t(N) * QD), A.h.data(), P(L.wq), N, D, QD);
    matmul_forward(sized(A.k_raw, size_t(N) * KVD), A.h.data(), P(L.wk), N, D, KVD);
    matmul_forward(sized(A.v_raw, size_t(N) * KVD), A.h.data(), P(L.wv), N, D, KVD);
    const T* qn = A.q_raw.data();
    const T* kn = A.k_raw.data();
    if (cfg_.qk_norm) {
        rmsnorm_forward(sized(A.qn, size_t(N) * QD), sized(A.q_rstd, size_t(N) * H), A.q_raw.data(), N * H, hd);
        rmsnorm_forward(sized(A.kn, size_t(N) * KVD), sized(A.k_rstd, size_t(N) * Hkv), A.k_raw.data(), N * Hkv, hd);
        qn = A.qn.data(), kn = A.kn.data();
    }
    rope_forward(sized(A.q_rope, size_t(N) * QD), qn, B_, Tn_, H, hd, cfg_.rope_dims, double(cfg_.rope_base));
    rope_forward(sized(A.k, size_t(N) * KVD), kn, B_, Tn_, Hkv, hd, cfg_.rope_dims, double(cfg_.rope_base));
    head_gain_forward(sized(A.q, size_t(N) * QD), A.q_rope.data(), P(L.q_gain), N, H, hd);
    if (cfg_.value_residual && i > 0)
        mix_forward(sized(A.v, size_t(N) * KVD), A.v_raw.data(), acts_[0].v.data(), P(L.v_mix), P(L.v_mix) + 1, N, KVD, 0);
    else
        A.v = A.v_raw;
    attention_forward_ref(A.q.data(), A.k.data(), A.v.data(), sized(A.y, size_t(N) * QD), sized(A.lse, size_t(N) * H),
                          B_, Tn_, H, Hkv, hd);
    const T* y = A.y.data();
    if (xsa(A.layer)) {
        xsa_forward(sized(A.y_xsa, size_t(N) * QD), A.y.data(), A.v.data(), N, H, Hkv, hd);
        y = A.y_xsa.data();
    }
    linear_input(L.wo, y, N, QD);
    matmul_forward(sized(A.a, size_t(N) * D), y, P(L.wo), N, QD, D);
    add_scaled_forward(sized(A.x_mid, size_t(N) * D), A.x_in.data(), A.a.data(), P(L.attn_scale), N, D, 1);

    // MLP, on the attention's input (parallel residuals) or on the updated residual.
    const T* u = A.h.data();
    if (!parallel(A.layer)) {
        rmsnorm_forward(sized(A.u, size_t(N) * D), sized(A.rstd2, N), A.x_mid.data(), N, D, s);
        u = A.u.data();
    }
    linear_input(L.fc, u, N, D);
    matmul_forward(sized(A.f, size_t(N) * F), u, P(L.fc), N, D, F);
    sized(A.act, size_t(N) * hidden);
    if (cfg_.swiglu) swiglu_forward(A.act.data(), A.f.data(), N, hidden);
    else leaky_relu2_forward(A.act.data(), A.f.data(), A.act.size(), T(cfg_.leaky_slope));
    linear_input(L.proj, A.act.data(), N, hidden);
    matmul_forward(sized(A.m, size_t(N) * D), A.act.data(), P(L.proj), N, hidden, D);
    add_scaled_forward(sized(A.x_out, size_t(N) * D), A.x_mid.data(), A.m.data(), P(L.mlp_scale), N, D, 1);
}

// ---------------------------------------------------------------------------- backward

template <typename T>
void RefModel<T>::backward() {
    PG_CHECK(N_ > 0 && targets_.size() == size_t(N_));
    const int N = N_, D = cfg_.model_dim, V = cfg_.vocab_size, KVD = cfg_.n_kv_heads * cfg_.head_dim;
    const size_t ND = size_t(N) * D;

    T* dlogits = zeroed(d_.logits, size_t(N) * V);
    crossentropy_backward(dlogits, logits_.data(), targets_.data(), T(1) / T(N), N, V);
    if (cfg_.logit_softcap > 0) {
        T* draw = zeroed(d_.logits_raw, size_t(N) * V);
        softcap_backward(draw, dlogits, logits_.data(), size_t(N) * V, T(cfg_.logit_softcap));
        dlogits = draw;
    }
    T* dxf = zeroed(d_.xf, ND);
    T* dx = zeroed(d_.x, ND);
    matmul_backward(dxf, G(ix_.tok_emb), dlogits, xf_.data(), P(ix_.tok_emb), N, D, V);
    rmsnorm_backward(dx, dxf, acts_.back().x_out.data(), rstd_f_.data(), N, D);

    // Blocks in reverse. d_.skip[i] collects the gradient of encoder entry i's output
    // through its decoder skip; the decoder runs later, so it is complete when i is reached.
    d_.skip.resize(n_enc_);
    for (auto& v : d_.skip) zeroed(v, ND);
    T* dx0 = zeroed(d_.x0, ND);
    T* dv_first = zeroed(d_.v_first, size_t(N) * KVD);
    T* dblock = zeroed(d_.block, ND);
    for (int i = int(schedule_.size()) - 1; i >= 0; --i) {
        const BlockActs& A = acts_[i];
        if (i < n_enc_)
            for (size_t e = 0; e < ND; ++e) dx[e] += d_.skip[i][e];
        std::fill(dblock, dblock + ND, T(0));
        block_backward(i, dx, dblock, dx0, dv_first);
        if (A.skip >= 0) {
            std::fill(dx, dx + ND, T(0));
            skip_mix_backward(dx, d_.skip[A.skip_src].data(), G(ix_.skip_weights) + size_t(A.skip) * D,
                              G(ix_.skip_gates) + size_t(A.skip) * D, dblock, acts_[i - 1].x_out.data(),
                              acts_[A.skip_src].x_out.data(), P(ix_.skip_weights) + size_t(A.skip) * D,
                              P(ix_.skip_gates) + size_t(A.skip) * D, N, D);
        } else {
            std::swap(dx, dblock);
        }
    }
    // x0 feeds the first block and every resid_mix.
    for (size_t e = 0; e < ND; ++e) dx[e] += dx0[e];

    T* dnorm = dx;
    if (cfg_.smear_gate) {
        dnorm = zeroed(d_.norm, ND);
        smear_backward(dnorm, G(ix_.smear_gate), dx, x_norm_.data(), P(ix_.smear_gate), B_, Tn_, D);
    }
    T* demb = zeroed(d_.emb, ND);
    rmsnorm_backward(demb, dnorm, x_emb_.data(), rstd_emb_.data(), N, D);
    if (cfg_.bigram_buckets > 0)
        bigram_backward(G(ix_.bigram_emb), G(ix_.bigram_proj), G(ix_.bigram_scale), demb, big_e_.data(), big_p_.data(),
                        buckets_.data(), P(ix_.bigram_proj), P(ix_.bigram_scale), N, cfg_.bigram_dim, D);
    embedding_backward(G(ix_.tok_emb), inputs_.data(), demb, N, D);
}

// dx_out: gradient of the block's output. Adds the gradient of its input residual into dx,
// of x0 into dx0, and of the first block's values into dv_first.
template <typename T>
void RefModel<T>::block_backward(int i, const T* dx_out, T* dx, T* dx0, T* dv_first) {
    const BlockActs& A = acts_[i];
    const ParamIndex::Block& L = ix_.blocks[A.layer];
    const int N = N_, D = cfg_.model_dim, H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, hd = cfg_.head_dim;
    const int QD = H * hd, KVD = Hkv * hd, hidden = cfg_.hidden_dim(), F = cfg_.swiglu ? 2 * hidden : hidden;
    const size_t ND = size_t(N) * D, NQ = size_t(N) * QD, NKV = size_t(N) * KVD;
    const T s = ln_scale(A.layer);
    Grads& d = d_;

    // MLP.
    T* dx_mid = zeroed(d.x_mid, ND);
    T* dm = zeroed(d.m, ND);
    add_scaled_backward(dx_mid, dm, G(L.mlp_scale), dx_out, A.m.data(), P(L.mlp_scale), N, D, 1);
    T* dact = zeroed(d.act, size_t(N) * hidden);
    matmul_backward(dact, G(L.proj), dm, A.act.data(), P(L.proj), N, hidden, D);
    T* df = zeroed(d.f, size_t(N) * F);
    if (cfg_.swiglu) swiglu_backward(df, dact, A.f.data(), N, hidden);
    else leaky_relu2_backward(df, dact, A.f.data(), size_t(N) * hidden, T(cfg_.leaky_slope));
    const bool par = parallel(A.layer);
    T* du = zeroed(d.u, ND);
    matmul_backward(du, G(L.fc), df, par ? A.h.data() : A.u.data(), P(L.fc), N, D, F);
    T* dh = du;  // parallel residuals: the MLP read h itself
    if (!par) {
        rmsnorm_backward(dx_mid, du, A.x_mid.data(), A.rstd2.data(), N, D, s);
        dh = zeroed(d.h, ND);
    }

    // Attention.
    T* dx_in = zeroed(d.x_in, ND);
    T* da = zeroed(d.a, ND);
    add_scaled_backward(dx_in, da, G(L.attn_scale), dx_mid, A.a.data(), P(L.attn_scale), N, D, 1);
    T* dy = zeroed(d.y, NQ);
    T* dv = zeroed(d.v, NKV);
    if (xsa(A.layer)) {
        T* dy_xsa = zeroed(d.y_xsa, NQ);
        matmul_backward(dy_xsa, G(L.wo), da, A.y_xsa.data(), P(L.wo), N, QD, D);
        xsa_backward(dy, dv, dy_xsa, A.y.data(), A.v.data(), N, H, Hkv, hd);
    } else {
        matmul_backward(dy, G(L.wo), da, A.y.data(), P(L.wo), N, QD, D);
    }
    // attention_backward_ref overwrites its outputs.
    d.q.resize(NQ), d.k.resize(NKV), d.v_att.resize(NKV);
    attention_backward_ref(A.q.data(), A.k.data(), A.v.data(), A.y.data(), A.lse.data(), dy, d.q.data(), d.k.data(),
                           d.v_att.data(), B_, Tn_, H, Hkv, hd);
    for (size_t e = 0; e < NKV; ++e) dv[e] += d.v_att[e];
    T* dv_raw = zeroed(d.v_raw, NKV);
    if (cfg_.value_residual && i > 0) {
        mix_backward(dv_raw, dv_first, G(L.v_mix), G(L.v_mix) + 1, dv, A.v_raw.data(), acts_[0].v.data(), P(L.v_mix),
                     P(L.v_mix) + 1, N, KVD, 0);
    } else {
        for (size_t e = 0; e < NKV; ++e) dv_raw[e] = dv[e] + (cfg_.value_residual ? dv_first[e] : T(0));
    }
    T* dq_rope = zeroed(d.q_rope, NQ);
    head_gain_backward(dq_rope, G(L.q_gain), d.q.data(), A.q_rope.data(), P(L.q_gain), N, H, hd);
    T* dq_raw = zeroed(d.qn, NQ);
    T* dk_raw = zeroed(d.kn, NKV);
    rope_backward(dq_raw, dq_rope, B_, Tn_, H, hd, cfg_.rope_dims, double(cfg_.rope_base));
    rope_backward(dk_raw, d.k.data(), B_, Tn_, Hkv, hd, cfg_.rope_dims, double(cfg_.rope_base));
    if (cfg_.qk_norm) {
        const T* dqn = dq_raw;
        const T* dkn = dk_raw;
        dq_raw = zeroed(d.q_raw, NQ), dk_raw = zeroed(d.k_raw, NKV);
        rmsnorm_backward(dq_raw, dqn, A.q_raw.data(), A.q_rstd.data(), N * H, hd);
        rmsnorm_backward(dk_raw, dkn, A.k_raw.data(), A.k_rstd.data(), N * Hkv, hd);
    }
    matmul_backward(dh, G(L.wq), dq_raw, A.h.data(), P(L.wq), N, D, QD);
    matmul_backward(dh, G(L.wk), dk_raw, A.h.data(), P(L.wk), N, D, KVD);
    matmul_backward(dh, G(L.wv), dv_raw, A.h.data(), P(L.wv), N, D, KVD);
    rmsnorm_backward(dx_in, dh, A.x_in.data(), A.rstd1.data(), N, D, s);
    mix_backward(dx, dx0, G(L.resid_mix), G(L.resid_mix) + D, dx_in, A.x.data(), x0_.data(), P(L.resid_mix),
                 P(L.resid_mix) + D, N, D, 1);
}

extern template class RefModel<float>;
extern template class RefModel<double>;

}  // namespace pg
