// Score-first TTT (eval/ttt.h) on the GPU: CudaTttModel scores and adapts a CudaModel.
// A training step is the reference's (RefTttModel::train_step): forward and backward into the
// fp32 gradients, the global gradient norm in double, SGD with momentum on the fp32 master
// weights, then the bf16 copy that the forward reads. The step stays on the GPU; the host
// waits only for the loss it returns. The update's kernels, sum_squares_cuda
// (model/optim_cuda.cuh) and sgd_momentum_cuda below, are held against their CPU oracles
// (sum_squares, sgd_momentum_step) in the tests.
#pragma once
#include <functional>
#include <vector>

#include "common/config.h"
#include "eval/ttt.h"
#include "model/model_cuda.cuh"

namespace pg {

class CudaTttModel : public TttModel {
public:
    // A CudaModel with room for max_tokens tokens a forward pass, loaded with params (flat,
    // make_layout(cfg) order). Calls of more rows than fit run in pieces: scoring piece by
    // piece, training with the gradients of the pieces summed, so any batch size works.
    CudaTttModel(const ModelConfig& cfg, const std::vector<float>& params, long max_tokens, bool recur_active);

    CudaModel& model() { return model_; }
    void score(const int32_t* inputs, const int32_t* targets, int rows, int seq, float* nll) override;
    float train_step(const int32_t* inputs, const int32_t* targets, int rows, int seq, int total_rows, float lr,
                     float momentum, float clip) override;

    // Needed when a step's rows are spread over ranks (eval/ttt.h).
    void set_grad_reduce(GradReduce f) { reduce_ = std::move(f); }

private:
    // Rows of `seq` tokens that fit one forward pass.
    int rows_per_pass(int seq) const;

    CudaModel model_;
    long max_tokens_;
    bool recur_;
    GradReduce reduce_;
    DeviceArray<float> velocity_;
    DeviceArray<double> partial_, sumsq_;
};

// sgd_momentum_step (eval/ttt.h) with the clip scale from *sumsq (device), and w_bf16 = bf16(w).
void sgd_momentum_cuda(float* w, bf16* w_bf16, float* v, const float* g, size_t n, const double* sumsq, float lr,
                       float momentum, float clip, cudaStream_t stream);

}  // namespace pg
