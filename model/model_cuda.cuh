// The pgolf model on one GPU: RefModel (model/model_ref.h) op for op, forward and backward,
// with the precision of model/kernels.cuh: bf16 residual stream, GEMM operands and attention,
// fp32 parameters and gradients. Matrices are read from the bf16 copy of the
// weights (params_bf16(), refreshed by the optimizer), everything else from the fp32 master.
//
// Every activation the backward needs is kept per schedule entry, as RefModel keeps them;
// all buffers are allocated once, for max_rows sequences of cfg.seq_len, so a step allocates
// nothing and enqueues everything on the model's stream (forward and backward never wait for
// the host; loss() and per_token_loss() do). The backward's weight gradients, which nothing in
// the backward reads, run on a second stream forked from it and joined back before backward()'s
// last kernels, so that they overlap the chain of input gradients.
// The tied head runs in row chunks: bf16 logits of a
// chunk -> fused softcap + cross-entropy (loss and log-sum-exp, and in a forward for backward
// the bf16 dlogits written in place) -> dX and dE products, so the fp32 logits [N, vocab] never
// exist and are computed once. A forward for backward thus runs the head's backward too, at
// unit loss scale, into buffers of its own; backward() scales them by its loss scale (read from
// device memory) as it uses them, so that a second backward of one forward is still exact.
//
// Where RefModel runs op after op, the GPU fuses neighbours that would re-read the same
// tensors: the residual sums of a block with the RMSNorm that follows them (and their
// backward with the norm's), q/k/v preparation in one pass over one fused q|k|v projection
// (the three weight matrices gathered into one bf16 matrix per layer at each forward).
//
// CUDA graphs: the first forward (backward) of a shape (rows, tokens, recurrence, for backward) runs
// eagerly, which also makes the GEMM plans and the kernels' scratch; the second is captured
// into a graph, and later ones replay it. What changes between calls lives in device memory
// (tokens, the loss scale), so a replay is exact.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <tuple>
#include <vector>

#include "common/config.h"
#include "common/cuda_check.cuh"
#include "model/gemm.cuh"
#include "model/kernels.cuh"
#include "model/params.h"

namespace pg {

class CudaModel {
public:
    // max_rows: sequences of cfg.seq_len per forward (the micro-batch). Needs head_dim 64
    // (the flash-attention kernels' only head size).
    CudaModel(const ModelConfig& cfg, int max_rows, cudaStream_t stream = nullptr);
    ~CudaModel();
    CudaModel(const CudaModel&) = delete;
    CudaModel& operator=(const CudaModel&) = delete;

    const ModelConfig& config() const { return cfg_; }
    const ParamLayout& layout() const { return layout_; }
    cudaStream_t stream() const { return stream_; }
    Gemm& gemm() { return gemm_; }  // one cuBLASLt handle and workspace on stream(), for GPTQ calibration
    // Rows of one chunk of the head's logits (its GEMMs and softcap_ce run chunk by chunk), for a
    // forward of `tokens` rows at vocabulary V.
    static int head_chunk_rows(int tokens, int V);

    // Device buffers of layout().total values; the optimizer updates params and its bf16 copy.
    float* params() { return params_.get(); }
    bf16* params_bf16() { return params_bf16_.get(); }
    float* grads() { return grads_.get(); }
    void upload_params(const std::vector<float>& host);  // also refreshes the bf16 copy
    std::vector<float> download_params() const;
    std::vector<float> download_grads() const;
    void zero_grad();

    // inputs / targets: host int32 [B * Tn], B * Tn <= max_rows * seq_len.
    // Copies them up and enqueues the forward; keeps the activations for backward(), which
    // needs for_backward (the head's gradient is formed with the loss).
    void forward(const int32_t* inputs, const int32_t* targets, int B, int Tn, bool recur_active,
                 bool for_backward = false);
    float loss();                          // mean loss of the last forward (waits for the stream)
    void per_token_loss(float* host_out);  // [B * Tn] nats of the last forward (waits)
    // grads += loss_scale * d(mean loss of the last forward)/d(params).
    void backward(float loss_scale = 1.f);

    // GPTQ calibration, as RefModel::on_linear_input: forward() calls it with the bf16 input
    // x [rows, cols] (device memory) of every linear map, param its index in layout() (tok_emb
    // for the tied head), when x is ready on stream(); the observer enqueues its work there.
    // While an observer is set, forwards run eagerly (a graph would replay the observer's
    // launches, not call it).
    using InputObserver = std::function<void(int param, const bf16* x, int rows, int cols)>;
    void set_input_observer(InputObserver f) { observer_ = std::move(f); }
    // With false, every forward and backward runs eagerly, launch by launch (for a caller that
    // hooks into the forward, or a profiler); on by default.
    void use_graphs(bool on) { graphs_on_ = on; }

    // Bytes of every buffer sized by max_rows (activations, backward scratch, head chunk,
    // attention workspace); parameters, gradients and their bf16 copy not included.
    size_t activation_bytes() const { return arena_.size(); }

private:
    // The buffers of one schedule entry: what RefModel's BlockActs holds. x_in is kept for the
    // attention's product to add into; the backward's norm forms it again from x and x0 in fp32,
    // as the forward normed it, except in the first block, whose pass normed x_in as stored.
    struct Slot {
        // The residual stream [N, D]: x only written after a skip mix; x_in the block's input
        // after resid_mix, x_mid after the attention's branch, x_out after the MLP's.
        bf16 *x, *x_in, *x_mid, *x_out;
        float *rstd1, *rstd2, *q_rstd, *k_rstd, *lse;
        bf16 *h, *qkv, *q, *k, *v, *y, *y_xsa, *u, *f, *act;  // qkv: [N, (H + 2 Hkv) hd]
        uint32_t* f_signs;  // in place of f where the MLP is fused (model/mlp_gemm.cuh)
    };
    // How the last forward ran one schedule entry.
    struct Entry {
        int layer = 0;
        int skip = -1, skip_src = -1;  // U-Net row mixed in before the block, and whose output
        const bf16* x = nullptr;       // residual entering the block
    };
    // Captured graphs of one direction, by (rows, tokens, recurrence, for backward).
    using GraphKey = std::tuple<int, int, bool, bool>;
    struct Graphs {
        std::set<GraphKey> seen;
        std::map<GraphKey, cudaGraphExec_t> exec;
    };

    float* P(int i) const { return params_.get() + layout_.params[i].offset; }
    const bf16* W(int i) const { return params_bf16_.get() + layout_.params[i].offset; }
    float* G(int i) const { return grads_.get() + layout_.params[i].offset; }
    const bf16* Wqkv(int l) const { return wqkv_.get() + size_t(l) * qkv_width() * cfg_.model_dim; }
    bf16* wo_scaled(int l) const {
        return wo_scaled_.get() + size_t(l) * cfg_.model_dim * cfg_.n_heads * cfg_.head_dim;
    }
    bf16* proj_scaled(int l) const { return proj_scaled_.get() + size_t(l) * cfg_.model_dim * cfg_.hidden_dim(); }
    int qkv_width() const { return (cfg_.n_heads + 2 * cfg_.n_kv_heads) * cfg_.head_dim; }
    float ln_scale(int l) const { return cfg_.ln_scale ? 1.f / std::sqrt(float(l + 1)) : 1.f; }
    bool parallel(int l) const { return l >= cfg_.parallel_from; }
    bool xsa(int l) const { return l >= cfg_.n_layers - cfg_.xsa_last; }
    void observe(int param, const bf16* x, int cols) const {
        if (observer_) observer_(param, x, N_, cols);
    }
    QkvShape qkv_shape() const;
    QkvIn qkv_in(int i) const;

    // Runs body (which enqueues on st_) eagerly, or as the captured graph of key (above).
    void run(Graphs& graphs, const GraphKey& key, const std::function<void()>& body);
    void forward_body();
    void backward_body();
    void block_forward(int i);
    void block_backward(int i);
    // The weight gradients run on side_, beside the backward's chain, which does not read them.
    // to_side(): side_ starts its next work after what st_ has enqueued so far. Entry i's side
    // work reads the gradient buffers of parity i & 1; side_done(i & 1) marks its end, and
    // wait_side(b) holds st_ until the last side work on buffers b is done, before it rewrites them.
    void to_side();
    void side_done(int b);
    void wait_side(int b);
    void join_side();
    // Rows [r0, r0 + rows) of the tied head: losses; with grads, also their gradients at unit
    // loss scale into dxf_ and dhead_.
    void head_chunk(int r0, int rows, bool grads);

    ModelConfig cfg_;
    ParamLayout layout_;
    int max_tokens_ = 0;
    cudaStream_t stream_;
    cudaStream_t st_;                  // where the bodies enqueue: stream_, or capture_ while capturing
    cudaStream_t capture_ = nullptr;  // graphs are captured here (a capture cannot use the legacy stream)
    cudaStream_t side_ = nullptr;     // the backward's weight gradients
    cudaEvent_t fork_ = nullptr, join_ = nullptr, side_done_[2] = {};
    bool side_pending_[2] = {};  // side_done_[b] recorded in this backward
    int side_sms_ = 0;           // the side products' SM count target (GemmArgs::sm_count)
    bool graphs_on_ = true;
    Graphs fwd_graphs_, bwd_graphs_;
    Gemm gemm_, gemm_side_;  // each stream its own cuBLASLt workspace
    ParamIndex ix_;  // where each named parameter sits in layout_
    int head_rows_ = 0;  // rows of one head chunk
    InputObserver observer_;

    DeviceArray<float> params_, grads_;
    DeviceArray<bf16> params_bf16_;
    DeviceArray<bf16> wqkv_;            // per layer [wq; wk; wv], gathered from params_bf16_ by each forward
    // Per layer diag(attn_scale) wo and diag(mlp_scale) proj from the bf16 weights, made beside
    // each forward's embeddings: a sequential block's proj product adds its branch into x_mid
    // through its copy, and the input gradients of both products are the products of the
    // unscaled residual gradients with these, so no pass writes the scaled ones.
    DeviceArray<bf16> wo_scaled_, proj_scaled_;
    DeviceArray<unsigned char> arena_;  // every buffer below, 256-byte aligned

    // Token staging: pinned, so the copy up needs no stream sync; `staged_` marks when the
    // last copy has left it.
    int32_t* host_tokens_ = nullptr;  // [2 * max_tokens]: inputs, targets
    cudaEvent_t staged_ = nullptr;

    // Forward state.
    int B_ = 0, Tn_ = 0, N_ = 0, n_enc_ = 0;
    bool recur_ = false, for_backward_ = false;
    bool fused_mlp_ = false;  // set by the constructor
    std::vector<int> schedule_;
    std::vector<Entry> entries_;
    std::vector<Slot> slots_;  // one per entry of the longest schedule
    int32_t *inputs_, *targets_, *buckets_;
    bf16 *x_emb_, *x_norm_, *x_smear_;
    float *rstd_emb_, *rstd_f_, *losses_, *lse_;
    float* loss_scale_;  // d(sum of losses)/d(each loss) of the current backward, on the device
    const bf16* x0_ = nullptr;  // x_smear_, or x_norm_ without the smear gate
    bf16 *big_e_, *big_p_, *xf_, *logits_;
    void* attn_ws_;

    // Backward scratch, named after the gradients they hold.
    bf16 *dx_, *dblock_, *dx0_;  // the residual stream's
    bf16 *dv_first_, *dv_;  // v's gradient: summed over the blocks for the first's, and XSA's share
    // One block's weight gradients on the side stream before they are added into the banks: its
    // proj and wo products before their branch scale, then its wq|wk|wv [q|k|v width, D].
    float* dw_;
    // The head's gradients at unit loss scale, from the forward: the final norm's output [N, D]
    // (bf16, as every product's input gradient) and the tied embedding's [vocab, D].
    bf16* dxf_;
    float* dhead_;
    std::vector<bf16*> dskip_;  // per encoder entry: the gradient of its output through its skip
    // By parity of the entry: the gradients of entry i's output (dout_) and of its x_mid (dmid_),
    // which its branches' products read as they are (the branch scales are in wo_scaled_ and
    // proj_scaled_, and in the side stream's add of the weight gradients), and df_, dqkv_. The
    // side stream's weight gradients of entry i read them while the chain goes on to entry i - 1.
    bf16 *dout_[2], *dmid_[2], *df_[2], *dqkv_[2];
    bf16 *dh_, *dact_, *dyo_, *dy_, *dbig_e_;
};

}  // namespace pg
