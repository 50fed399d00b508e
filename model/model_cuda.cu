// CudaModel (model/model_cuda.cuh): RefModel's forward and backward (model/model_ref.h) on the
// GPU. The code follows RefModel line by line; the comments say where the GPU version differs.
#include "model/model_cuda.cuh"

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "model/attention.cuh"

namespace pg {

namespace {

constexpr size_t kAlign = 256;
// Values of one chunk of bf16 logits (64 MiB): large enough that the head's GEMMs fill the GPU.
constexpr size_t kHeadChunkValues = size_t(1) << 25;

// The three products of a linear layer, W [out, in] (model/gemm.cuh).
// y [rows, out] = x W^T, bf16.
void linear_forward(Gemm& g, bf16* y, const bf16* x, const bf16* w, int rows, int in, int out, cudaStream_t s) {
    GemmArgs a;
    a.M = rows, a.N = out, a.K = in;
    a.a = x, a.b = w, a.trans_b = true;
    a.d = y, a.out_type = OutType::BF16;
    g.run(a, s);
}

// dx [rows, in] = beta * dx + dy W; bf16 (beta 0) or fp32.
void linear_backward_input(Gemm& g, void* dx, OutType type, float beta, const bf16* dy, const bf16* w, int rows,
                           int in, int out, cudaStream_t s) {
    GemmArgs a;
    a.M = rows, a.N = in, a.K = out;
    a.a = dy, a.b = w;
    a.d = dx, a.out_type = type, a.beta = beta;
    g.run(a, s);
}

// dw [out, in] += dy^T x, fp32.
void linear_backward_weight(Gemm& g, float* dw, const bf16* dy, const bf16* x, int rows, int in, int out,
                            cudaStream_t s) {
    GemmArgs a;
    a.M = out, a.N = in, a.K = rows;
    a.a = dy, a.trans_a = true, a.b = x;
    a.d = dw, a.out_type = OutType::F32, a.beta = 1.f;
    g.run(a, s);
}

void zero(float* p, size_t n, cudaStream_t s) { PG_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), s)); }

}  // namespace

CudaModel::CudaModel(const ModelConfig& cfg, int max_rows, cudaStream_t stream)
    : cfg_(cfg), layout_(make_layout(cfg)), stream_(stream) {
    ix_ = index_params(layout_, cfg_.n_layers);
    if (max_rows < 1) fail("CudaModel: max_rows must be >= 1 (got %d)", max_rows);
    if (!flash_attention_supports_head_dim(cfg_.head_dim))
        fail("CudaModel: head_dim %d is not supported on the GPU (flash attention has head dims 32, 64, 128)",
             cfg_.head_dim);
    max_tokens_ = max_rows * cfg_.seq_len;

    params_ = DeviceArray<float>(layout_.total);
    grads_ = DeviceArray<float>(layout_.total);
    params_bf16_ = DeviceArray<bf16>(layout_.total);
    PG_CHECK(cudaMemset(params_.get(), 0, layout_.total * sizeof(float)));
    PG_CHECK(cudaMemset(params_bf16_.get(), 0, layout_.total * sizeof(bf16)));
    PG_CHECK(cudaMemset(grads_.get(), 0, layout_.total * sizeof(float)));

    // Every buffer sized by max_rows comes from one allocation: first the requests, then the
    // pointers into it.
    const size_t N = max_tokens_, D = cfg_.model_dim, V = cfg_.vocab_size;
    const size_t QD = size_t(cfg_.n_heads) * cfg_.head_dim, KVD = size_t(cfg_.n_kv_heads) * cfg_.head_dim;
    const size_t hidden = cfg_.hidden_dim(), F = cfg_.swiglu ? 2 * hidden : hidden;
    const size_t H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, bd = cfg_.bigram_buckets > 0 ? cfg_.bigram_dim : 0;
    head_rows_ = int(std::max<size_t>(1, std::min(N, kHeadChunkValues / V)));
    const size_t max_entries = cfg_.layer_schedule(cfg_.recur_repeats > 1).size();
    slots_.resize(max_entries);
    dskip_.resize(cfg_.unet_skips ? max_entries / 2 : 0);

    std::vector<std::pair<size_t, std::function<void(unsigned char*)>>> wants;
    auto want = [&](auto*& p, size_t n) {
        using T = std::remove_reference_t<decltype(*p)>;
        wants.emplace_back((n * sizeof(T) + kAlign - 1) / kAlign * kAlign,
                           [&p](unsigned char* at) { p = reinterpret_cast<T*>(at); });
    };
    want(inputs_, N), want(targets_, N), want(buckets_, N);
    want(x_emb_, N * D), want(x_norm_, N * D), want(x_smear_, cfg_.smear_gate ? N * D : 0);
    want(rstd_emb_, N), want(rstd_f_, N), want(losses_, N);
    want(big_e_, N * bd), want(big_p_, bd ? N * D : 0), want(xf_, N * D);
    want(logits_, size_t(head_rows_) * V);
    unsigned char* ws = nullptr;
    want(ws, flash_attention_backward_workspace_bytes(1, int(N), int(H), cfg_.head_dim));
    for (Slot& s : slots_) {
        for (float** p : {&s.x, &s.x_in, &s.x_mid, &s.x_out}) want(*p, N * D);
        want(s.rstd1, N), want(s.rstd2, N), want(s.q_rstd, N * H), want(s.k_rstd, N * Hkv), want(s.lse, N * H);
        for (bf16** p : {&s.h, &s.a, &s.u, &s.m}) want(*p, N * D);
        for (bf16** p : {&s.q_raw, &s.q, &s.y, &s.y_xsa}) want(*p, N * QD);
        for (bf16** p : {&s.k_raw, &s.v_raw, &s.k, &s.v}) want(*p, N * KVD);
        want(s.f, N * F), want(s.act, N * hidden);
    }
    for (float** p : {&dx_, &dblock_, &dx0_, &dx_mid_, &dx_in_, &dh_}) want(*p, N * D);
    for (float** p : {&dv_first_, &dv_, &dv_raw32_}) want(*p, N * KVD);
    for (float*& p : dskip_) want(p, N * D);
    want(dbranch_, N * D), want(dact_, N * hidden), want(df_, N * F);
    for (bf16** p : {&dyo_, &dy_, &dq_, &dq_raw_}) want(*p, N * QD);
    for (bf16** p : {&dk_, &dv_att_, &dk_raw_, &dv_raw_}) want(*p, N * KVD);
    want(dbig_e_, N * bd);

    size_t total = 0;
    for (const auto& w : wants) total += w.first;
    arena_ = DeviceArray<unsigned char>(total);
    size_t at = 0;
    for (const auto& w : wants) {
        w.second(arena_.get() + at);
        at += w.first;
    }
    attn_ws_ = ws;
    // NaN (all bits set, in fp32 and bf16) until written: a read of a buffer the forward did
    // not fill shows in the loss and the gradients.
    PG_CHECK(cudaMemset(arena_.get(), 0xFF, total));

    PG_CHECK(cudaMallocHost(&host_tokens_, 2 * N * sizeof(int32_t)));
    PG_CHECK(cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming));
}

CudaModel::~CudaModel() {
    if (staged_) cudaEventDestroy(staged_);
    if (host_tokens_) cudaFreeHost(host_tokens_);
}

void CudaModel::upload_params(const std::vector<float>& host) {
    if (host.size() != layout_.total)
        fail("CudaModel: %zu parameters given, the model has %zu", host.size(), layout_.total);
    PG_CHECK(cudaStreamSynchronize(stream_));
    params_.upload(host);
    convert(params_bf16_.get(), params_.get(), layout_.total, stream_);
    PG_CHECK(cudaStreamSynchronize(stream_));
}

std::vector<float> CudaModel::download_params() const {
    PG_CHECK(cudaStreamSynchronize(stream_));
    return params_.download();
}

std::vector<float> CudaModel::download_grads() const {
    PG_CHECK(cudaStreamSynchronize(stream_));
    return grads_.download();
}

void CudaModel::zero_grad() { zero(grads_.get(), layout_.total, stream_); }

// ----------------------------------------------------------------------------- forward

void CudaModel::forward(const int32_t* inputs, const int32_t* targets, int B, int Tn, bool recur_active) {
    const int D = cfg_.model_dim, V = cfg_.vocab_size;
    if (B < 1 || Tn < 1 || size_t(B) * Tn > size_t(max_tokens_))
        fail("CudaModel: a batch of %d sequences of %d tokens does not fit the model's buffers (%d tokens)", B, Tn,
             max_tokens_);
    const int N = B * Tn;
    for (int n = 0; n < N; ++n) {
        if (inputs[n] < 0 || inputs[n] >= V) fail("CudaModel: token id %d outside the vocabulary of %d", inputs[n], V);
        if (targets[n] < 0 || targets[n] >= V)
            fail("CudaModel: target id %d outside the vocabulary of %d", targets[n], V);
    }
    B_ = B, Tn_ = Tn, N_ = N;

    // The staging buffer is free once the previous forward's copy has run (long ago, as a rule).
    PG_CHECK(cudaEventSynchronize(staged_));
    std::copy(inputs, inputs + N, host_tokens_);
    std::copy(targets, targets + N, host_tokens_ + max_tokens_);
    PG_CHECK(cudaMemcpyAsync(inputs_, host_tokens_, N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    PG_CHECK(cudaMemcpyAsync(targets_, host_tokens_ + max_tokens_, N * sizeof(int32_t), cudaMemcpyHostToDevice,
                             stream_));
    PG_CHECK(cudaEventRecord(staged_, stream_));

    embedding_forward(x_emb_, inputs_, P(ix_.tok_emb), N, D, stream_);
    if (cfg_.bigram_buckets > 0) {
        const int bd = cfg_.bigram_dim;
        bigram_hash(buckets_, inputs_, B, Tn, cfg_.bigram_buckets, stream_);
        embedding_forward(big_e_, buckets_, P(ix_.bigram_emb), N, bd, stream_);
        observe(ix_.bigram_proj, big_e_, bd);
        linear_forward(gemm_, big_p_, big_e_, W(ix_.bigram_proj), N, bd, D, stream_);
        add_scaled_forward(x_emb_, x_emb_, big_p_, P(ix_.bigram_scale), N, D, 0, stream_);
    }
    rmsnorm_forward(x_norm_, rstd_emb_, x_emb_, N, D, 1.f, stream_);
    x0_ = x_norm_;
    if (cfg_.smear_gate) {
        smear_forward(x_smear_, x_norm_, P(ix_.smear_gate), B, Tn, D, stream_);
        x0_ = x_smear_;
    }

    schedule_ = cfg_.layer_schedule(recur_active);
    const int S = int(schedule_.size());
    n_enc_ = cfg_.unet_skips ? S / 2 : 0;
    entries_.assign(S, Entry{});
    std::vector<int> stack;  // schedule entries whose outputs wait for their decoder skip
    for (int i = 0; i < S; ++i) {
        Entry& E = entries_[i];
        E.layer = schedule_[i];
        const float* x = i == 0 ? x0_ : slots_[i - 1].x_out;
        if (i >= n_enc_ && !stack.empty()) {
            E.skip = i - n_enc_;
            E.skip_src = stack.back();
            stack.pop_back();
            skip_mix_forward(slots_[i].x, x, slots_[E.skip_src].x_out, P(ix_.skip_weights) + size_t(E.skip) * D,
                             P(ix_.skip_gates) + size_t(E.skip) * D, N, D, stream_);
            x = slots_[i].x;
        }
        E.x = x;
        block_forward(i);
        if (i < n_enc_) stack.push_back(i);
    }

    rmsnorm_forward(xf_, rstd_f_, slots_[S - 1].x_out, N, D, 1.f, stream_);
    observe(ix_.tok_emb, xf_, D);
    for (int r0 = 0; r0 < N; r0 += head_rows_) head_chunk(r0, std::min(head_rows_, N - r0), nullptr, 0.f);
}

void CudaModel::block_forward(int i) {
    Entry& E = entries_[i];
    const Slot& A = slots_[i];
    const ParamIndex::Block& L = ix_.blocks[E.layer];
    const int N = N_, D = cfg_.model_dim, H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, hd = cfg_.head_dim;
    const int QD = H * hd, KVD = Hkv * hd, hidden = cfg_.hidden_dim(), F = cfg_.swiglu ? 2 * hidden : hidden;
    const float s = ln_scale(E.layer);
    cudaStream_t st = stream_;

    mix_forward(A.x_in, E.x, x0_, P(L.resid_mix), P(L.resid_mix) + D, N, D, 1, st);
    rmsnorm_forward(A.h, A.rstd1, A.x_in, N, D, s, st);

    // Attention. The q/k kernel does QK norm, partial RoPE and q_gain in one pass.
    for (int w : {L.wq, L.wk, L.wv}) observe(w, A.h, D);
    linear_forward(gemm_, A.q_raw, A.h, W(L.wq), N, D, QD, st);
    linear_forward(gemm_, A.k_raw, A.h, W(L.wk), N, D, KVD, st);
    linear_forward(gemm_, A.v_raw, A.h, W(L.wv), N, D, KVD, st);
    qk_prep_forward(A.q, A.q_rstd, A.q_raw, P(L.q_gain), B_, Tn_, H, hd, cfg_.rope_dims, cfg_.rope_base, cfg_.qk_norm,
                    st);
    qk_prep_forward(A.k, A.k_rstd, A.k_raw, nullptr, B_, Tn_, Hkv, hd, cfg_.rope_dims, cfg_.rope_base, cfg_.qk_norm,
                    st);
    E.v = A.v_raw;
    if (cfg_.value_residual && i > 0) {
        mix_forward(A.v, A.v_raw, entries_[0].v, P(L.v_mix), P(L.v_mix) + 1, N, KVD, 0, st);
        E.v = A.v;
    }
    flash_attention_forward(A.q, A.k, E.v, A.y, A.lse, B_, Tn_, H, Hkv, hd, st);
    const bf16* y = A.y;
    if (xsa(E.layer)) {
        xsa_forward(A.y_xsa, A.y, E.v, N, H, Hkv, hd, st);
        y = A.y_xsa;
    }
    observe(L.wo, y, QD);
    linear_forward(gemm_, A.a, y, W(L.wo), N, QD, D, st);
    add_scaled_forward(A.x_mid, A.x_in, A.a, P(L.attn_scale), N, D, 1, st);

    // MLP, on the attention's input (parallel residuals) or on the updated residual.
    const bf16* u = A.h;
    if (!parallel(E.layer)) {
        rmsnorm_forward(A.u, A.rstd2, A.x_mid, N, D, s, st);
        u = A.u;
    }
    observe(L.fc, u, D);
    linear_forward(gemm_, A.f, u, W(L.fc), N, D, F, st);
    if (cfg_.swiglu) swiglu_forward(A.act, A.f, N, hidden, st);
    else leaky_relu2_forward(A.act, A.f, size_t(N) * hidden, cfg_.leaky_slope, st);
    observe(L.proj, A.act, hidden);
    linear_forward(gemm_, A.m, A.act, W(L.proj), N, hidden, D, st);
    add_scaled_forward(A.x_out, A.x_mid, A.m, P(L.mlp_scale), N, D, 1, st);
}

// Logits of rows [r0, r0 + rows) into the chunk buffer, then their losses; in the backward
// (dxf given) dlogits (dlogit_scale d(sum of losses)/dz) replace the logits, and the rows of
// dxf and the tied embedding's gradient follow from them.
void CudaModel::head_chunk(int r0, int rows, float* dxf, float dlogit_scale) {
    const int D = cfg_.model_dim, V = cfg_.vocab_size;
    const bf16* x = xf_ + size_t(r0) * D;
    linear_forward(gemm_, logits_, x, W(ix_.tok_emb), rows, D, V, stream_);
    const bool grad = dxf != nullptr;
    softcap_ce(losses_ + r0, grad ? logits_ : nullptr, logits_, targets_ + r0, rows, V, cfg_.logit_softcap,
               dlogit_scale, stream_);
    if (!grad) return;
    linear_backward_input(gemm_, dxf + size_t(r0) * D, OutType::F32, 0.f, logits_, W(ix_.tok_emb), rows, D, V, stream_);
    linear_backward_weight(gemm_, G(ix_.tok_emb), logits_, x, rows, D, V, stream_);
}

float CudaModel::loss() {
    PG_CHECK(N_ > 0);
    std::vector<float> l(N_);
    per_token_loss(l.data());
    double sum = 0;
    for (float v : l) sum += v;
    return float(sum / N_);
}

void CudaModel::per_token_loss(float* host_out) {
    PG_CHECK(N_ > 0);
    PG_CHECK(cudaMemcpyAsync(host_out, losses_, size_t(N_) * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    PG_CHECK(cudaStreamSynchronize(stream_));
}

// ---------------------------------------------------------------------------- backward

void CudaModel::backward(float loss_scale) {
    PG_CHECK(N_ > 0);
    const int N = N_, D = cfg_.model_dim, KVD = cfg_.n_kv_heads * cfg_.head_dim;
    const size_t ND = size_t(N) * D;
    cudaStream_t st = stream_;

    float* dxf = dh_;
    for (int r0 = 0; r0 < N; r0 += head_rows_) head_chunk(r0, std::min(head_rows_, N - r0), dxf, loss_scale / N);
    float* dx = dx_;
    float* dblock = dblock_;
    zero(dx, ND, st);
    rmsnorm_backward(dx, dxf, slots_[schedule_.size() - 1].x_out, rstd_f_, N, D, 1.f, st);

    // Blocks in reverse. dskip_[i] collects the gradient of encoder entry i's output through
    // its decoder skip; the decoder runs later, so it is complete when i is reached.
    for (int i = 0; i < n_enc_; ++i) zero(dskip_[i], ND, st);
    zero(dx0_, ND, st);
    zero(dv_first_, size_t(N) * KVD, st);
    for (int i = int(schedule_.size()) - 1; i >= 0; --i) {
        const Entry& E = entries_[i];
        if (i < n_enc_) accumulate(dx, dskip_[i], ND, st);
        zero(dblock, ND, st);
        block_backward(i, dx, dblock);
        if (E.skip >= 0) {
            zero(dx, ND, st);
            skip_mix_backward(dx, dskip_[E.skip_src], G(ix_.skip_weights) + size_t(E.skip) * D,
                              G(ix_.skip_gates) + size_t(E.skip) * D, dblock, slots_[i - 1].x_out,
                              slots_[E.skip_src].x_out, P(ix_.skip_weights) + size_t(E.skip) * D,
                              P(ix_.skip_gates) + size_t(E.skip) * D, N, D, st);
        } else {
            std::swap(dx, dblock);
        }
    }
    // x0 feeds the first block and every resid_mix.
    accumulate(dx, dx0_, ND, st);

    const float* dnorm = dx;
    if (cfg_.smear_gate) {
        zero(dblock, ND, st);
        smear_backward(dblock, G(ix_.smear_gate), dx, x_norm_, P(ix_.smear_gate), B_, Tn_, D, st);
        dnorm = dblock;
    }
    float* demb = dx_mid_;
    zero(demb, ND, st);
    rmsnorm_backward(demb, dnorm, x_emb_, rstd_emb_, N, D, 1.f, st);
    if (cfg_.bigram_buckets > 0) {
        const int bd = cfg_.bigram_dim;
        // add_scaled_backward also adds demb into its dx; the tok_emb path reads demb itself,
        // so that copy goes to a scratch buffer nothing reads.
        add_scaled_backward(dx_in_, dbranch_, G(ix_.bigram_scale), demb, big_p_, P(ix_.bigram_scale), N, D, 0, st);
        linear_backward_input(gemm_, dbig_e_, OutType::BF16, 0.f, dbranch_, W(ix_.bigram_proj), N, bd, D, st);
        linear_backward_weight(gemm_, G(ix_.bigram_proj), dbranch_, big_e_, N, bd, D, st);
        embedding_backward(G(ix_.bigram_emb), buckets_, dbig_e_, N, bd, st);
    }
    embedding_backward(G(ix_.tok_emb), inputs_, demb, N, D, st);
}

// dx_out: gradient of the block's output. Adds the gradient of its input residual into dx
// (zeroed by the caller), of x0 into dx0_, and of the first block's values into dv_first_.
// GEMM operands (dm, da, dact, df, dy, dq, dk, dv) are bf16; residual-stream gradients and
// dh, which sums four products, fp32.
void CudaModel::block_backward(int i, const float* dx_out, float* dx) {
    const Entry& E = entries_[i];
    const Slot& A = slots_[i];
    const ParamIndex::Block& L = ix_.blocks[E.layer];
    const int N = N_, D = cfg_.model_dim, H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, hd = cfg_.head_dim;
    const int QD = H * hd, KVD = Hkv * hd, hidden = cfg_.hidden_dim(), F = cfg_.swiglu ? 2 * hidden : hidden;
    const size_t ND = size_t(N) * D, NKV = size_t(N) * KVD;
    const float s = ln_scale(E.layer);
    cudaStream_t st = stream_;

    // MLP.
    zero(dx_mid_, ND, st);
    bf16* dm = dbranch_;
    add_scaled_backward(dx_mid_, dm, G(L.mlp_scale), dx_out, A.m, P(L.mlp_scale), N, D, 1, st);
    linear_backward_input(gemm_, dact_, OutType::BF16, 0.f, dm, W(L.proj), N, hidden, D, st);
    linear_backward_weight(gemm_, G(L.proj), dm, A.act, N, hidden, D, st);
    if (cfg_.swiglu) swiglu_backward(df_, dact_, A.f, N, hidden, st);
    else leaky_relu2_backward(df_, dact_, A.f, size_t(N) * hidden, cfg_.leaky_slope, st);
    const bool par = parallel(E.layer);
    // dh collects the MLP's input gradient when the MLP read h (parallel residuals); otherwise
    // it passes through the second norm and the attention's products start dh afresh.
    linear_backward_input(gemm_, dh_, OutType::F32, 0.f, df_, W(L.fc), N, D, F, st);
    linear_backward_weight(gemm_, G(L.fc), df_, par ? A.h : A.u, N, D, F, st);
    float dh_beta = 1.f;
    if (!par) {
        rmsnorm_backward(dx_mid_, dh_, A.x_mid, A.rstd2, N, D, s, st);
        dh_beta = 0.f;
    }

    // Attention.
    zero(dx_in_, ND, st);
    bf16* da = dbranch_;
    add_scaled_backward(dx_in_, da, G(L.attn_scale), dx_mid_, A.a, P(L.attn_scale), N, D, 1, st);
    const bool x = xsa(E.layer);
    linear_backward_input(gemm_, dyo_, OutType::BF16, 0.f, da, W(L.wo), N, QD, D, st);
    linear_backward_weight(gemm_, G(L.wo), da, x ? A.y_xsa : A.y, N, QD, D, st);
    zero(dv_, NKV, st);
    const bf16* dy = dyo_;
    if (x) {
        xsa_backward(dy_, dv_, dyo_, A.y, E.v, N, H, Hkv, hd, st);
        dy = dy_;
    }
    flash_attention_backward(A.q, A.k, E.v, A.y, A.lse, dy, dq_, dk_, dv_att_, attn_ws_, B_, Tn_, H, Hkv, hd, st);
    accumulate(dv_, dv_att_, NKV, st);
    const float* dv_raw = dv_;
    if (cfg_.value_residual && i > 0) {
        zero(dv_raw32_, NKV, st);
        mix_backward(dv_raw32_, dv_first_, G(L.v_mix), G(L.v_mix) + 1, dv_, A.v_raw, entries_[0].v, P(L.v_mix),
                     P(L.v_mix) + 1, N, KVD, 0, st);
        dv_raw = dv_raw32_;
    } else if (cfg_.value_residual) {
        accumulate(dv_, dv_first_, NKV, st);  // the first block's v is v_first itself
    }
    convert(dv_raw_, dv_raw, NKV, st);
    qk_prep_backward(dq_raw_, G(L.q_gain), dq_, A.q_raw, A.q_rstd, P(L.q_gain), B_, Tn_, H, hd, cfg_.rope_dims,
                     cfg_.rope_base, cfg_.qk_norm, st);
    qk_prep_backward(dk_raw_, nullptr, dk_, A.k_raw, A.k_rstd, nullptr, B_, Tn_, Hkv, hd, cfg_.rope_dims,
                     cfg_.rope_base, cfg_.qk_norm, st);
    linear_backward_input(gemm_, dh_, OutType::F32, dh_beta, dq_raw_, W(L.wq), N, D, QD, st);
    linear_backward_weight(gemm_, G(L.wq), dq_raw_, A.h, N, D, QD, st);
    linear_backward_input(gemm_, dh_, OutType::F32, 1.f, dk_raw_, W(L.wk), N, D, KVD, st);
    linear_backward_weight(gemm_, G(L.wk), dk_raw_, A.h, N, D, KVD, st);
    linear_backward_input(gemm_, dh_, OutType::F32, 1.f, dv_raw_, W(L.wv), N, D, KVD, st);
    linear_backward_weight(gemm_, G(L.wv), dv_raw_, A.h, N, D, KVD, st);
    rmsnorm_backward(dx_in_, dh_, A.x_in, A.rstd1, N, D, s, st);
    mix_backward(dx, dx0_, G(L.resid_mix), G(L.resid_mix) + D, dx_in_, E.x, x0_, P(L.resid_mix),
                 P(L.resid_mix) + D, N, D, 1, st);
}

}  // namespace pg
