// Legal score-first test-time training (TTT), as the challenge allows it: the model may
// learn from validation tokens only after it has scored them.
//
// The targets are cut into chunks of chunk_tokens. For chunk c = 0, 1, ...:
//   1. score: every target of the chunk, once, with the current weights, from the same
//      sliding window that evaluate() would score it from (a window that crosses the
//      chunk's end scores only its targets inside the chunk here; it is run again, with
//      the adapted weights, for the rest in the next chunk);
//   2. adapt: unless c is the last chunk, `epochs` passes of SGD with momentum over the
//      chunk's whole seq_len sequences (a remainder shorter than seq_len is not trained
//      on), batch_seqs a step, at lr_c = lr * (1 + cos(pi c / n_chunks)) / 2, with the
//      global gradient norm clipped to `clip`.
// A target is thus never trained on before it is scored, and nothing is rescored. The
// weights start from those loaded (the dequantized artifact or the checkpoint); the
// momentum buffer starts at zero and carries across chunks, as one optimizer would.
//
// Several GPUs (opt.eval.rank / world): each rank scores its share of each chunk's windows
// and holds its share of each training step's sequences (the model sums the gradients);
// every rank sees every chunk, so all keep the same weights.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "eval/bpb.h"
#include "eval/evaluate.h"
#include "model/model_ref.h"

namespace pg {

struct TttOptions {
    EvalOptions eval;          // the window schedule (seq_len, stride, batch_seqs, max_tokens)
    long chunk_tokens = 32768; // targets a chunk; at least eval.seq_len
    int epochs = 3;            // 0: plain sliding evaluation
    float lr = 0.005f, momentum = 0.9f;
    float clip = 1.0f;         // global gradient-norm clip; 0 = off
    int batch_seqs = 32;       // training sequences a step
};
// pg::fail with one line naming the flag when an option is out of range.
void check_ttt_options(const TttOptions& opt);

// The model side of TTT, so that the CPU reference and the GPU model plug in alike.
// The model owns its weights and its optimizer state.
struct TttModel {
    virtual ~TttModel() = default;
    // nll[rows * seq]: natural-log loss of each target of inputs/targets [rows, seq].
    virtual void score(const int32_t* inputs, const int32_t* targets, int rows, int seq, float* nll) = 0;
    // One step on the mean loss of a batch of total_rows sequences of which this rank holds
    // inputs/targets [rows, seq] (rows == total_rows in one process; rows may be 0 on a rank
    // when total_rows < world): g = d(mean loss)/d(params), summed over the ranks; then
    // sgd_momentum_step() below. Returns the mean loss of this rank's rows before the step
    // (0 without rows).
    virtual float train_step(const int32_t* inputs, const int32_t* targets, int rows, int seq, int total_rows,
                             float lr, float momentum, float clip) = 0;
};

// The TTT update on flat arrays, the oracle of the GPU kernels (eval/ttt_cuda.cuh):
// g scaled by clip_scale(|g|, clip) (model/optim.h; |g| over all n values, summed in
// double by sum_squares); v = momentum v + g; w -= lr v.
void sgd_momentum_step(float* w, float* v, const float* g, size_t n, float lr, float momentum, float clip);

// TTT on the CPU reference model, in one process; adapts model.params in place.
class RefTttModel : public TttModel {
   public:
    RefTttModel(RefModel<float>& model, bool recur_active) : model_(model), recur_(recur_active) {}
    void score(const int32_t* inputs, const int32_t* targets, int rows, int seq, float* nll) override;
    float train_step(const int32_t* inputs, const int32_t* targets, int rows, int seq, int total_rows, float lr,
                     float momentum, float clip) override;

   private:
    RefModel<float>& model_;
    bool recur_;
    std::vector<float> velocity_;
};

// Several GPUs: sums the ranks' gradients (device fp32 [n]) in place, enqueued on `stream` (the
// model's), between the backward and the norm. Each rank's gradient is already its rows' share
// of the batch mean (train_step), so the sum is the one-GPU step's gradient.
using GradReduce = std::function<void(float* grads, size_t n, cudaStream_t stream)>;

// TTT on the GPU (eval/ttt_cuda.cuh): a CudaTttModel loaded with params (flat,
// make_layout(cfg) order) with room for max_tokens tokens a forward pass; `reduce` (if set)
// sums each step's gradients over the ranks.
std::unique_ptr<TttModel> make_cuda_ttt_model(const ModelConfig& cfg, const std::vector<float>& params,
                                              long max_tokens, bool recur_active, GradReduce reduce = nullptr);

struct TttChunk {
    long first_target = 0, targets = 0;  // targets [first_target, first_target + targets)
    BpbAccumulator score;                // of this rank's targets of the chunk, before training on them
    float lr = 0;                        // lr_c; 0 for the last chunk, which is not trained on
    int steps = 0;
    float train_loss = 0;                // mean loss of this rank's rows in the last epoch
    double score_seconds = 0, train_seconds = 0;
};

struct TttResult {
    BpbAccumulator total;  // this rank's targets, summed in evaluate()'s order
    std::vector<TttChunk> chunks;
};

// Runs score-first TTT over the split. on_chunk (if set) sees each chunk when it is done;
// on_loss (if set) sees each scored target and its loss as it is scored.
TttResult evaluate_ttt(TttModel& model, const std::vector<uint16_t>& tokens, const ByteTables& bytes,
                       const TttOptions& opt, const std::function<void(const TttChunk&)>& on_chunk = nullptr,
                       const LossFn& on_loss = nullptr);

}  // namespace pg
