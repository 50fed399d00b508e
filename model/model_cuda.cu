// CudaModel (model/model_cuda.cuh): RefModel's forward and backward (model/model_ref.h) on the
// GPU. The code follows RefModel line by line; the comments say where the GPU version differs.
#include "model/model_cuda.cuh"

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "model/attention.cuh"
#include "model/graph_memsets.cuh"
#include "model/mlp_gemm.cuh"

namespace pg {

namespace {

constexpr size_t kAlign = 256;
// Values of one chunk of bf16 logits (128 MiB, 8192 rows at vocab 8192): the head's GEMMs fill the
// GPU, and fewer, larger ones run faster. At the record shape 64 MiB chunks took 0.1-0.3 ms more a
// step and 32 MiB ones more still; 256 MiB gained no more (session 16).
constexpr size_t kHeadChunkValues = size_t(1) << 26;

// The three products of a linear layer, W [out, in] (model/gemm.cuh).
// y [rows, out] = x W^T (+ add, before the one rounding), bf16.
void linear_forward(Gemm& g, bf16* y, const bf16* x, const bf16* w, int rows, int in, int out, cudaStream_t s,
                    const bf16* add = nullptr) {
    GemmArgs a;
    a.M = rows, a.N = out, a.K = in;
    a.a = x, a.b = w, a.trans_b = true;
    a.d = y, a.out_type = OutType::BF16;
    a.c = add, a.beta = add ? 1.f : 0.f;
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

// dw [out, in] = beta * dw + dy^T x, fp32.
void linear_backward_weight(Gemm& g, float* dw, const bf16* dy, const bf16* x, int rows, int in, int out,
                            cudaStream_t s, float beta = 1.f, int sm_count = 0) {
    GemmArgs a;
    a.sm_count = sm_count;
    a.M = out, a.N = in, a.K = rows;
    a.a = dy, a.trans_a = true, a.b = x;
    a.d = dw, a.out_type = OutType::F32, a.beta = beta;
    g.run(a, s);
}

void zero(float* p, size_t n, cudaStream_t s) { PG_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), s)); }

}  // namespace

CudaModel::CudaModel(const ModelConfig& cfg, int max_rows, cudaStream_t stream)
    : cfg_(cfg), layout_(make_layout(cfg)), stream_(stream), st_(stream) {
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
    // Each forward gathers wq, wk, wv of every layer with one strided copy per kind, so each
    // kind must sit layer after layer at a fixed stride, as its parameter bank does.
    wqkv_ = DeviceArray<bf16>(size_t(cfg_.n_layers) * qkv_width() * cfg_.model_dim);
    for (int l = 0; l < cfg_.n_layers; ++l)
        for (auto w : {&ParamIndex::Block::wq, &ParamIndex::Block::wk, &ParamIndex::Block::wv}) {
            const ParamSpec& p = layout_.params[ix_.blocks[l].*w], &p0 = layout_.params[ix_.blocks[0].*w];
            PG_CHECK(p.offset == p0.offset + size_t(l) * p0.numel());
        }
    wo_scaled_ = DeviceArray<bf16>(size_t(cfg_.n_layers) * cfg_.model_dim * cfg_.n_heads * cfg_.head_dim);
    proj_scaled_ = DeviceArray<bf16>(size_t(cfg_.n_layers) * cfg_.model_dim * cfg_.hidden_dim());

    // Every buffer sized by max_rows comes from one allocation: first the requests, then the
    // pointers into it.
    const size_t N = max_tokens_, D = cfg_.model_dim, V = cfg_.vocab_size;
    const size_t QD = size_t(cfg_.n_heads) * cfg_.head_dim, KVD = size_t(cfg_.n_kv_heads) * cfg_.head_dim;
    const size_t hidden = cfg_.hidden_dim(), F = cfg_.swiglu ? 2 * hidden : hidden, QKV = qkv_width();
    const size_t H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, bd = cfg_.bigram_buckets > 0 ? cfg_.bigram_dim : 0;
    head_rows_ = head_chunk_rows(int(N), int(V));
    // LeakyReLU² in the MLP's products (model/mlp_gemm.cuh) where the GPU and the shape allow: it
    // saves the elementwise passes over the [N, hidden] products, the buffer of dact, and f's
    // (act and f's signs stand in for it).
    fused_mlp_ = !cfg_.swiglu && mlp_gemm_supports(1, int(hidden), int(D));
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
    want(rstd_emb_, N), want(rstd_f_, N), want(losses_, N), want(lse_, N), want(loss_scale_, 1);
    want(big_e_, N * bd), want(big_p_, bd ? N * D : 0), want(xf_, N * D);
    want(logits_, size_t(head_rows_) * V);
    unsigned char* ws = nullptr;
    want(ws, flash_attention_backward_workspace_bytes(1, int(N), int(H), cfg_.head_dim));
    for (Slot& s : slots_) {
        want(s.rstd1, N), want(s.rstd2, N), want(s.q_rstd, N * H), want(s.k_rstd, N * Hkv), want(s.lse, N * H);
        for (bf16** p : {&s.x, &s.x_in, &s.x_mid, &s.x_out, &s.h, &s.u}) want(*p, N * D);
        for (bf16** p : {&s.q, &s.y, &s.y_xsa}) want(*p, N * QD);
        for (bf16** p : {&s.k, &s.v}) want(*p, N * KVD);
        want(s.qkv, N * QKV), want(s.act, N * hidden);
        want(s.f, fused_mlp_ ? 0 : N * F), want(s.f_signs, fused_mlp_ ? mlp_sign_words(int(N), int(hidden)) : 0);
    }
    for (bf16** p : {&dx_, &dblock_, &dx0_}) want(*p, N * D);
    want(dxf_, N * D);
    want(dhead_, V * D);
    for (bf16** p : {&dv_first_, &dv_}) want(*p, N * KVD);
    for (bf16*& p : dskip_) want(p, N * D);
    for (int b = 0; b < 2; ++b)
        want(dout_[b], N * D), want(dmid_[b], N * D), want(df_[b], N * F), want(dqkv_[b], N * QKV);
    want(dh_, N * D);
    want(dact_, fused_mlp_ ? 0 : N * hidden);
    for (bf16** p : {&dyo_, &dy_}) want(*p, N * QD);
    want(dw_, std::max({QKV * D, D * hidden, D * QD})), want(dbig_e_, N * bd);

    size_t total = 0;
    for (const auto& w : wants) total += w.first;
    arena_ = DeviceArray<unsigned char>(total);
    size_t at = 0;
    for (const auto& w : wants) {
        w.second(arena_.get() + at);
        at += w.first;
    }
    attn_ws_ = ws;
    x0_ = cfg_.smear_gate ? x_smear_ : x_norm_;
    // NaN (all bits set, in fp32 and bf16) until written: a read of a buffer the forward did
    // not fill shows in the loss and the gradients.
    PG_CHECK(cudaMemset(arena_.get(), 0xFF, total));

    PG_CHECK(cudaMallocHost(&host_tokens_, 2 * N * sizeof(int32_t)));
    PG_CHECK(cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming));
    PG_CHECK(cudaStreamCreateWithFlags(&capture_, cudaStreamNonBlocking));
    PG_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    for (cudaEvent_t* e : {&fork_, &join_, &side_done_[0], &side_done_[1]})
        PG_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    // The side products plan for half the SMs, which the chain's kernels then find free. On an
    // H100 (132 SMs): planned for all 132, the step took no less than on one stream; 0.4 ms less
    // at 100 (docs/benchmarks/logs/2026-11-24_session21/call5_side_ab); the backward another
    // 0.15-0.25 ms less at 66, and 1 ms more at 40
    // (docs/benchmarks/logs/2026-11-25_session29/call5, call6). Small GPUs keep them all.
    side_sms_ = half_sms();
}

CudaModel::~CudaModel() {
    for (Graphs* g : {&fwd_graphs_, &bwd_graphs_})
        for (auto& kv : g->exec) cudaGraphExecDestroy(kv.second);
    for (cudaEvent_t e : {fork_, join_, side_done_[0], side_done_[1]})
        if (e) cudaEventDestroy(e);
    if (side_) cudaStreamDestroy(side_);
    if (capture_) cudaStreamDestroy(capture_);
    if (staged_) cudaEventDestroy(staged_);
    if (host_tokens_) cudaFreeHost(host_tokens_);
}

int CudaModel::head_chunk_rows(int tokens, int V) {
    return int(std::max<size_t>(1, std::min(size_t(tokens), kHeadChunkValues / size_t(V))));
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

// A graph holds at most this many shapes per direction; further shapes run eagerly.
constexpr size_t kMaxGraphs = 8;

void CudaModel::run(Graphs& graphs, const GraphKey& key, const std::function<void()>& body) {
    auto it = graphs.exec.find(key);
    if (it == graphs.exec.end()) {
        if (!graphs_on_ || observer_ || graphs.seen.insert(key).second || graphs.exec.size() >= kMaxGraphs) {
            body();
            return;
        }
        // Capture on the private stream; on an error end the capture before passing it on.
        st_ = capture_;
        PG_CHECK(cudaStreamBeginCapture(capture_, cudaStreamCaptureModeThreadLocal));
        cudaGraph_t graph = nullptr;
        try {
            body();
        } catch (...) {
            cudaStreamEndCapture(capture_, &graph);
            if (graph) cudaGraphDestroy(graph);
            st_ = stream_;
            throw;
        }
        st_ = stream_;
        PG_CHECK(cudaStreamEndCapture(capture_, &graph));
        memsets_as_kernels(graph);
        cudaGraphExec_t exec;
        PG_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        PG_CHECK(cudaGraphDestroy(graph));
        it = graphs.exec.emplace(key, exec).first;
    }
    PG_CHECK(cudaGraphLaunch(it->second, stream_));
}

QkvShape CudaModel::qkv_shape() const {
    QkvShape s;
    s.B = B_, s.Tn = Tn_, s.H = cfg_.n_heads, s.Hkv = cfg_.n_kv_heads, s.hd = cfg_.head_dim;
    s.rope_dims = cfg_.rope_dims, s.rope_base = cfg_.rope_base, s.norm = cfg_.qk_norm;
    return s;
}

QkvIn CudaModel::qkv_in(int i) const {
    const Slot& A = slots_[i];
    const ParamIndex::Block& L = ix_.blocks[entries_[i].layer];
    QkvIn p;
    p.q = A.q, p.k = A.k, p.v = A.v, p.q_rstd = A.q_rstd, p.k_rstd = A.k_rstd, p.qkv = A.qkv;
    p.q_gain = P(L.q_gain);
    if (cfg_.value_residual && i > 0) p.v_first = slots_[0].v, p.v_mix = P(L.v_mix);
    return p;
}

// ----------------------------------------------------------------------------- forward

void CudaModel::forward(const int32_t* inputs, const int32_t* targets, int B, int Tn, bool recur_active,
                        bool for_backward) {
    const int V = cfg_.vocab_size;
    if (B < 1 || Tn < 1 || size_t(B) * Tn > size_t(max_tokens_))
        fail("CudaModel: a batch of %d sequences of %d tokens does not fit the model's buffers (%d tokens)", B, Tn,
             max_tokens_);
    const int N = B * Tn;
    for (int n = 0; n < N; ++n) {
        if (inputs[n] < 0 || inputs[n] >= V) fail("CudaModel: token id %d outside the vocabulary of %d", inputs[n], V);
        if (targets[n] < 0 || targets[n] >= V)
            fail("CudaModel: target id %d outside the vocabulary of %d", targets[n], V);
    }
    B_ = B, Tn_ = Tn, N_ = N, recur_ = recur_active, for_backward_ = for_backward;

    // The staging buffer is free once the previous forward's copy has run (long ago, as a rule).
    PG_CHECK(cudaEventSynchronize(staged_));
    std::copy(inputs, inputs + N, host_tokens_);
    std::copy(targets, targets + N, host_tokens_ + max_tokens_);
    PG_CHECK(cudaMemcpyAsync(inputs_, host_tokens_, N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    PG_CHECK(cudaMemcpyAsync(targets_, host_tokens_ + max_tokens_, N * sizeof(int32_t), cudaMemcpyHostToDevice,
                             stream_));
    PG_CHECK(cudaEventRecord(staged_, stream_));

    // The schedule, and where each entry reads its residual from.
    schedule_ = cfg_.layer_schedule(recur_active);
    const int S = int(schedule_.size());
    n_enc_ = cfg_.unet_skips ? S / 2 : 0;
    entries_.assign(S, Entry{});
    std::vector<int> stack;  // schedule entries whose outputs wait for their decoder skip
    for (int i = 0; i < S; ++i) {
        Entry& E = entries_[i];
        E.layer = schedule_[i];
        E.x = i == 0 ? x0_ : slots_[i - 1].x_out;
        if (i >= n_enc_ && !stack.empty()) {
            E.skip = i - n_enc_;
            E.skip_src = stack.back();
            stack.pop_back();
            E.x = slots_[i].x;
        }
        if (i < n_enc_) stack.push_back(i);
    }
    run(fwd_graphs_, {B, Tn, recur_active, for_backward}, [this] { forward_body(); });
}

void CudaModel::forward_body() {
    const int N = N_, D = cfg_.model_dim;
    const cudaStream_t st = st_;

    // wo and proj with the branch scales folded in, beside the embeddings, from the bf16 weights
    // the forward reads (which QAT may have fake-quantized): the blocks' products add their
    // branches into the stream through them, forward, and read the stream's gradients, backward.
    to_side();
    const size_t QD = size_t(cfg_.n_heads) * cfg_.head_dim, hidden = cfg_.hidden_dim();
    for (int l = 0; l < cfg_.n_layers; ++l) {
        const ParamIndex::Block& L = ix_.blocks[l];
        convert(wo_scaled(l), W(L.wo), D * QD, side_, P(L.attn_scale), QD);
        convert(proj_scaled(l), W(L.proj), D * hidden, side_, P(L.mlp_scale), hidden);
    }

    // The fused q|k|v weights of every layer, from this step's bf16 weights.
    const size_t row_bytes = size_t(cfg_.model_dim) * sizeof(bf16);
    int at = 0;
    for (auto w : {&ParamIndex::Block::wq, &ParamIndex::Block::wk, &ParamIndex::Block::wv}) {
        const ParamSpec& p = layout_.params[ix_.blocks[0].*w];
        PG_CHECK(cudaMemcpy2DAsync(wqkv_.get() + size_t(at) * D, qkv_width() * row_bytes, W(ix_.blocks[0].*w),
                                   p.rows * row_bytes, p.rows * row_bytes, cfg_.n_layers, cudaMemcpyDeviceToDevice,
                                   st));
        at += p.rows;
    }

    embedding_forward(x_emb_, inputs_, P(ix_.tok_emb), N, D, st);
    if (cfg_.bigram_buckets > 0) {
        const int bd = cfg_.bigram_dim;
        bigram_hash(buckets_, inputs_, B_, Tn_, cfg_.bigram_buckets, st);
        embedding_forward(big_e_, buckets_, P(ix_.bigram_emb), N, bd, st);
        observe(ix_.bigram_proj, big_e_, bd);
        linear_forward(gemm_, big_p_, big_e_, W(ix_.bigram_proj), N, bd, D, st);
        ResidualIn t;
        t.x = x_emb_, t.a = big_p_, t.wa = P(ix_.bigram_scale), t.wstride = 0;
        residual_forward(x_emb_, nullptr, nullptr, t, N, D, 1.f, st);
    }
    rmsnorm_forward(x_norm_, rstd_emb_, x_emb_, N, D, 1.f, st);
    if (cfg_.smear_gate) smear_forward(x_smear_, x_norm_, P(ix_.smear_gate), B_, Tn_, D, st);

    join_side();
    for (int i = 0; i < int(schedule_.size()); ++i) block_forward(i);
    observe(ix_.tok_emb, xf_, D);
    for (int r0 = 0; r0 < N; r0 += head_rows_) head_chunk(r0, std::min(head_rows_, N - r0), for_backward_);
}

void CudaModel::block_forward(int i) {
    const Entry& E = entries_[i];
    const Slot& A = slots_[i];
    const ParamIndex::Block& L = ix_.blocks[E.layer];
    const int N = N_, D = cfg_.model_dim, H = cfg_.n_heads, hd = cfg_.head_dim, QD = H * hd;
    const int hidden = cfg_.hidden_dim(), F = cfg_.swiglu ? 2 * hidden : hidden;
    const float s = ln_scale(E.layer);
    const cudaStream_t st = st_;

    // x_in = resid_mix . (x, x0), stored, and h = s rmsnorm(x_in). After the first block, the
    // previous block's last pass formed both (and the skip mix into E.x).
    ResidualIn mix;
    mix.x = E.x, mix.wx = P(L.resid_mix), mix.x0 = x0_, mix.w0 = P(L.resid_mix) + D;
    if (i == 0) residual_forward(A.x_in, A.h, A.rstd1, mix, N, D, s, st);

    // Attention: one product for q|k|v, then QK norm, partial RoPE, q_gain and the value mix.
    for (int w : {L.wq, L.wk, L.wv}) observe(w, A.h, D);
    linear_forward(gemm_, A.qkv, A.h, Wqkv(E.layer), N, D, qkv_width(), st);
    qkv_prep_forward(qkv_in(i), qkv_shape(), st);
    flash_attention_forward(A.q, A.k, A.v, A.y, A.lse, B_, Tn_, H, cfg_.n_kv_heads, hd, st);
    const bf16* y = A.y;
    if (xsa(E.layer)) {
        xsa_forward(A.y_xsa, A.y, A.v, N, H, cfg_.n_kv_heads, hd, st);
        y = A.y_xsa;
    }
    // The branches add into the stream in their products' epilogues (beta = 1, the scales in
    // wo_scaled_ and proj_scaled_): x_mid = x_in + attn_scale a, x_out = x_mid + mlp_scale m.
    // a and m are never stored, and the passes around the products read one tensor of the
    // stream, not the terms of its sum.
    observe(L.wo, y, QD);
    linear_forward(gemm_, A.x_mid, y, wo_scaled(E.layer), N, QD, D, st, A.x_in);

    // MLP, on the attention's input (parallel residuals) or on x_mid's norm u, which is kept,
    // with x_mid, for the backward.
    const bf16* u = A.h;
    if (!parallel(E.layer)) {
        ResidualIn mid;
        mid.x = A.x_mid;
        residual_forward(nullptr, A.u, A.rstd2, mid, N, D, s, st);
        u = A.u;
    }
    observe(L.fc, u, D);
    if (fused_mlp_) {
        mlp_up_forward(A.act, A.f_signs, u, W(L.fc), N, F, D, cfg_.leaky_slope, st);
    } else {
        linear_forward(gemm_, A.f, u, W(L.fc), N, D, F, st);
        if (cfg_.swiglu) swiglu_forward(A.act, A.f, N, hidden, st);
        else leaky_relu2_forward(A.act, A.f, size_t(N) * hidden, cfg_.leaky_slope, st);
    }
    observe(L.proj, A.act, hidden);
    linear_forward(gemm_, A.x_out, A.act, proj_scaled(E.layer), N, hidden, D, st, A.x_mid);
    ResidualIn out;
    out.x = A.x_out;
    if (i + 1 == int(entries_.size())) {  // the head's norm
        residual_forward(nullptr, xf_, rstd_f_, out, N, D, 1.f, st);
        return;
    }
    // The next entry's input and its first norm, from x_out in the same pass.
    const Entry& E1 = entries_[i + 1];
    const ParamIndex::Block& L1 = ix_.blocks[E1.layer];
    ResidualNext next;
    if (E1.skip >= 0) {
        next.s = slots_[E1.skip_src].x_out, next.skip_out = slots_[i + 1].x;
        next.w = P(ix_.skip_weights) + size_t(E1.skip) * D, next.gate = P(ix_.skip_gates) + size_t(E1.skip) * D;
    }
    next.wx = P(L1.resid_mix), next.x0 = x0_, next.w0 = P(L1.resid_mix) + D, next.x_in = slots_[i + 1].x_in;
    residual_forward(nullptr, slots_[i + 1].h, slots_[i + 1].rstd1, out, N, D, ln_scale(E1.layer), st, &next);
}

// Logits of rows [r0, r0 + rows) into the chunk buffer, then their losses; with grads the same
// pass replaces the logits by d(loss of each row)/dz, and the rows of dxf_ and dhead_ follow.
void CudaModel::head_chunk(int r0, int rows, bool grads) {
    const int D = cfg_.model_dim, V = cfg_.vocab_size;
    const bf16* x = xf_ + size_t(r0) * D;
    linear_forward(gemm_, logits_, x, W(ix_.tok_emb), rows, D, V, st_);
    softcap_ce_forward(losses_ + r0, lse_ + r0, logits_, targets_ + r0, rows, V, cfg_.logit_softcap, st_,
                       grads ? logits_ : nullptr);
    if (!grads) return;
    linear_backward_input(gemm_, dxf_ + size_t(r0) * D, OutType::BF16, 0.f, logits_, W(ix_.tok_emb), rows, D, V, st_);
    linear_backward_weight(gemm_, dhead_, logits_, x, rows, D, V, st_, r0 > 0 ? 1.f : 0.f);
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
    if (!for_backward_) fail("CudaModel::backward: the last forward was not run for backward");
    // From pageable memory: the copy call returns once the value is staged, so the local may go.
    const float dloss = loss_scale / float(N_);
    PG_CHECK(cudaMemcpyAsync(loss_scale_, &dloss, sizeof dloss, cudaMemcpyHostToDevice, stream_));
    run(bwd_graphs_, {B_, Tn_, recur_, true}, [this] { backward_body(); });
}

void CudaModel::backward_body() {
    const int N = N_, D = cfg_.model_dim;
    const size_t ND = size_t(N) * D;
    const cudaStream_t st = st_;

    // The head's gradients, which the forward formed at unit scale. Gradients whose first
    // writer is known are overwritten by it, not zeroed first: the last entry's output gradient
    // here, dx0_ and dv_first_ by the last entry, dv_ by each XSA block, dblock_ and demb below.
    accumulate(G(ix_.tok_emb), dhead_, size_t(cfg_.vocab_size) * D, st, loss_scale_);
    // The last entry's output gradient, where that entry reads it (block_backward).
    const int S = int(schedule_.size());
    PG_CHECK(S - 1 >= n_enc_);  // an encoder entry's output would also feed a skip
    rmsnorm_backward(dout_[(S - 1) & 1], dxf_, slots_[S - 1].x_out, rstd_f_, N, D, 1.f, st, loss_scale_, false);

    // Blocks in reverse, down to the first block's input gradient in dx. The decoder entry that
    // pops encoder entry i runs first, and its skip backward writes dskip_[i], the gradient of
    // i's output through that skip.
    bf16* const dx = dx_;
    side_pending_[0] = side_pending_[1] = false;
    for (int i = S - 1; i >= 0; --i) block_backward(i);
    join_side();
    // x0 feeds the first block and every resid_mix: its gradient is dx + dx0_, which the smear
    // gate's backward sums as it reads them.
    const bf16* dnorm = dx;
    if (cfg_.smear_gate) {
        smear_backward(dblock_, G(ix_.smear_gate), dx, x_norm_, P(ix_.smear_gate), B_, Tn_, D, st, false, dx0_);
        dnorm = dblock_;
    } else {
        accumulate(dx, dx0_, ND, st);
    }
    bf16* demb = dx0_;  // free once read above
    rmsnorm_backward(demb, dnorm, x_emb_, rstd_emb_, N, D, 1.f, st, nullptr, false);
    if (cfg_.bigram_buckets > 0) {
        const int bd = cfg_.bigram_dim;
        ResidualIn t;
        t.a = big_p_, t.wa = P(ix_.bigram_scale), t.wstride = 0;
        ResidualGrad d;
        bf16* dp = dout_[0];  // free: the side stream has joined
        d.da = dp, d.dwa = G(ix_.bigram_scale);
        residual_backward(nullptr, demb, nullptr, nullptr, nullptr, nullptr, 1.f, t, d, N, D, st);
        linear_backward_input(gemm_, dbig_e_, OutType::BF16, 0.f, dp, W(ix_.bigram_proj), N, bd, D, st);
        linear_backward_weight(gemm_, G(ix_.bigram_proj), dp, big_e_, N, bd, D, st);
        embedding_backward(G(ix_.bigram_emb), buckets_, dbig_e_, N, bd, st);
    }
    embedding_backward(G(ix_.tok_emb), inputs_, demb, N, D, st);
}

// Each block's output gradient is in dout_ (by parity), formed by the block after it (the last
// block's by the head's norm), and a sequential block's x_mid gradient goes to dmid_. The
// products of the branches read those as they are, since the branch scales are in wo_scaled_ /
// proj_scaled_ and in the weight gradients' add; no pass writes a scaled copy. The scales'
// own gradients come from proj's and wo's weight gradients (scaled_rows_backward), so no pass
// reads the branches' outputs a and m. Adds the gradient of x0 into dx0_ and of the first
// block's values into dv_first_; the first block's input gradient goes to dx. The block's last
// pass also runs the U-Net skip's backward and takes the gradient on to the previous entry's
// output (ResidualPrev).
// GEMM operands (dout, dmid, df, dy, dk, dv, dqkv) are bf16, like the residual stream's
// gradients, and so are dh, the input gradient of the matrices that read h, and v's gradient
// sums (dv_first_ over the blocks, as the residual's over them; XSA's dv_). In a parallel block
// the second product adds into dh, which is one more rounding. dq is fp32: qkv_prep's backward
// reads the attention's fp32 accumulator (saving a pass that rounds it).
void CudaModel::block_backward(int i) {
    const Entry& E = entries_[i];
    const Slot& A = slots_[i];
    const ParamIndex::Block& L = ix_.blocks[E.layer];
    const int N = N_, D = cfg_.model_dim, H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, hd = cfg_.head_dim;
    const int QD = H * hd, KVD = Hkv * hd, QKV = qkv_width(), hidden = cfg_.hidden_dim();
    const int F = cfg_.swiglu ? 2 * hidden : hidden;
    const float s = ln_scale(E.layer);
    const bool par = parallel(E.layer), last = i + 1 == int(entries_.size());
    const cudaStream_t st = st_;
    const int b = i & 1;
    bf16 *const dout = dout_[b], *const dmid = dmid_[b], *const df = df_[b], *const dqkv = dqkv_[b];

    // MLP. dh collects the MLP's input gradient when the MLP read h (parallel residuals);
    // otherwise it is u's gradient, which goes back through the second norm into dmid.
    if (fused_mlp_) {
        mlp_down_backward(df, dout, proj_scaled(E.layer), A.act, A.f_signs, N, hidden, D, cfg_.leaky_slope, st);
    } else {
        linear_backward_input(gemm_, dact_, OutType::BF16, 0.f, dout, proj_scaled(E.layer), N, hidden, D, st);
        if (cfg_.swiglu) swiglu_backward(df, dact_, A.f, N, hidden, st);
        else leaky_relu2_backward(df, dact_, A.f, size_t(N) * hidden, cfg_.leaky_slope, st);
    }
    // The weight gradients on side_ (to_side), each once its output gradient is formed. proj's
    // and wo's are formed before their branch scale, which multiplies their rows as they are
    // added, and give that scale's gradient on the way.
    to_side();
    linear_backward_weight(gemm_side_, dw_, dout, A.act, N, hidden, D, side_, 0.f, side_sms_);
    scaled_rows_backward(G(L.proj), G(L.mlp_scale), dw_, W(L.proj), P(L.mlp_scale), D, hidden, side_);
    linear_backward_weight(gemm_side_, G(L.fc), df, par ? A.h : A.u, N, D, F, side_, 1.f, side_sms_);
    linear_backward_input(gemm_, dh_, OutType::BF16, 0.f, df, W(L.fc), N, D, F, st);
    if (!par)  // d x_mid = dout + s rmsnorm_backward(du)
        residual_backward(dmid, dout, nullptr, dh_, A.x_mid, A.rstd2, s, ResidualIn{}, ResidualGrad{}, N, D, st);
    const bf16* const dres = par ? dout : dmid;  // the gradient of the sum the attention adds into

    // Attention.
    const bool x = xsa(E.layer);
    if (!par) to_side();  // dmid is formed (parallel: dout was, before the block)
    linear_backward_weight(gemm_side_, dw_, dres, x ? A.y_xsa : A.y, N, QD, D, side_, 0.f, side_sms_);
    scaled_rows_backward(G(L.wo), G(L.attn_scale), dw_, W(L.wo), P(L.attn_scale), D, QD, side_);
    linear_backward_input(gemm_, dyo_, OutType::BF16, 0.f, dres, wo_scaled(E.layer), N, QD, D, st);
    const bf16* dy = dyo_;
    if (x) {  // which also forms the attention backward's D_i
        xsa_backward(dy_, dv_, dyo_, A.y, A.v, N, H, Hkv, hd, st, false,
                     flash_attention_delta(attn_ws_, B_, Tn_, H, hd), Tn_);
        dy = dy_;
    }
    // dq accumulates in slot i & 1, which entry i + 1's backward left zeroed (AttnBwdPlan). dk and
    // dv go on through q/k/v preparation's backward in the attention's own epilogue.
    QkvGrad d;
    d.dqkv = dqkv, d.dq_gain = G(L.q_gain);
    d.dq = flash_attention_dq_accumulator(attn_ws_, b, B_, Tn_, H, hd), d.dq_scale = 1.f / std::sqrt(float(hd));
    d.dv_add = x ? dv_ : nullptr;  // XSA's share of v's gradient
    if (cfg_.value_residual) {
        if (i > 0) d.dv_first = dv_first_, d.dv_mix = G(L.v_mix), d.add_dv_first = !last;
        else if (!last) d.dv_add2 = dv_first_;  // the first block's v is v_first itself
    }
    KvGradEpilogue kv = kv_grad_epilogue(d, qkv_in(i), qkv_shape());
    flash_attention_backward(A.q, A.k, A.v, A.y, A.lse, dy, nullptr, nullptr, nullptr, attn_ws_, B_, Tn_, H, Hkv, hd,
                             st, AttnBwdPlan{b, !last, i > 0, x}, &kv);
    qkv_prep_backward(kv, st);
    // One product for the three weights' gradients, then each added into its own bank: three
    // products of a few rows each split K over the SMs at ~390 TFLOP/s.
    to_side();
    linear_backward_weight(gemm_side_, dw_, dqkv, A.h, N, D, QKV, side_, 0.f, side_sms_);
    accumulate(G(L.wq), dw_, size_t(QD) * D, side_);
    accumulate(G(L.wk), dw_ + size_t(QD) * D, size_t(KVD) * D, side_);
    accumulate(G(L.wv), dw_ + size_t(QD + KVD) * D, size_t(KVD) * D, side_);
    side_done(b);
    linear_backward_input(gemm_, dh_, OutType::BF16, par ? 1.f : 0.f, dqkv, Wqkv(E.layer), N, D, QKV, st);

    // Through the first norm (x_in formed again from x and x0, as the forward normed it in fp32;
    // the first block's own pass normed x_in as stored) and resid_mix; the first block's
    // input gradient goes to dx_, every other's on through the previous entry's first pass.
    ResidualIn t;
    ResidualGrad g;
    t.wx = P(L.resid_mix), t.x0 = x0_, t.w0 = P(L.resid_mix) + D;
    g.dx0 = dx0_, g.dwx = G(L.resid_mix), g.dw0 = G(L.resid_mix) + D, g.add_dx0 = !last;
    if (i == 0) {
        t.x = E.x, g.dx = dx_;
        residual_backward(nullptr, dres, nullptr, dh_, A.x_in, A.rstd1, s, t, g, N, D, st);
        return;
    }
    // Entry i - 1 = p: its output fed this block (through the skip mix, which the pass forms
    // again) and maybe a skip of its own, whose gradient is in dskip_[p] unless it is this one.
    const int p = i - 1;
    ResidualPrev prev;
    prev.x = slots_[p].x_out, prev.dres = dout_[p & 1];
    bool own_skip = p < n_enc_;
    if (E.skip >= 0) {
        prev.s = slots_[E.skip_src].x_out;
        prev.w = P(ix_.skip_weights) + size_t(E.skip) * D, prev.gate = P(ix_.skip_gates) + size_t(E.skip) * D;
        prev.dw = G(ix_.skip_weights) + size_t(E.skip) * D, prev.dgate = G(ix_.skip_gates) + size_t(E.skip) * D;
        if (E.skip_src == p) own_skip = false;  // that skip is this one: its share adds in place
        else prev.ds = dskip_[E.skip_src];
    } else {
        t.x = E.x;
    }
    if (own_skip) prev.dskip = dskip_[p];
    wait_side(p & 1);  // entry i + 1's weight gradients read the buffers p's gradients go to
    residual_backward(nullptr, dres, nullptr, dh_, nullptr, A.rstd1, s, t, g, N, D, st, &prev);
}

void CudaModel::to_side() {
    PG_CHECK(cudaEventRecord(fork_, st_));
    PG_CHECK(cudaStreamWaitEvent(side_, fork_, 0));
}

void CudaModel::side_done(int b) {
    PG_CHECK(cudaEventRecord(side_done_[b], side_));
    side_pending_[b] = true;
}

void CudaModel::wait_side(int b) {
    if (side_pending_[b]) PG_CHECK(cudaStreamWaitEvent(st_, side_done_[b], 0));
}

void CudaModel::join_side() {
    PG_CHECK(cudaEventRecord(join_, side_));
    PG_CHECK(cudaStreamWaitEvent(st_, join_, 0));
}

}  // namespace pg
