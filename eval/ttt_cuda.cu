#include "eval/ttt_cuda.cuh"

#include <algorithm>

#include "model/optim_cuda.cuh"

namespace pg {

namespace {

constexpr int kThreads = 256;

__global__ void sgd_momentum_kernel(float* w, bf16* w_bf16, float* v, const float* g, size_t n, const double* sumsq,
                                    float lr, float momentum, float clip) {
    // clip_scale() of model/optim.h.
    const float norm = float(sqrt(*sumsq));
    const float scale = clip > 0 && norm > clip ? clip / norm : 1.f;
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        const float vi = momentum * v[i] + scale * g[i];
        const float wi = w[i] - lr * vi;
        v[i] = vi;
        w[i] = wi;
        w_bf16[i] = __float2bfloat16(wi);
    }
}

}  // namespace

void sgd_momentum_cuda(float* w, bf16* w_bf16, float* v, const float* g, size_t n, const double* sumsq, float lr,
                       float momentum, float clip, cudaStream_t stream) {
    const unsigned grid = unsigned(std::min<size_t>((n + kThreads - 1) / kThreads, 4096));
    sgd_momentum_kernel<<<std::max(grid, 1u), kThreads, 0, stream>>>(w, w_bf16, v, g, n, sumsq, lr, momentum, clip);
    PG_CHECK_LAUNCH();
}

CudaTttModel::CudaTttModel(const ModelConfig& cfg, const std::vector<float>& params, long max_tokens,
                           bool recur_active)
    : model_(cfg, int(std::max<long>(1, (max_tokens + cfg.seq_len - 1) / cfg.seq_len))),
      max_tokens_(max_tokens),
      recur_(recur_active),
      partial_(kSumSquaresBlocks),
      sumsq_(1) {
    model_.upload_params(params);
}

int CudaTttModel::rows_per_pass(int seq) const {
    if (seq < 1 || seq > max_tokens_) fail("eval: sequences of %d tokens do not fit the GPU model's %ld", seq, max_tokens_);
    return int(max_tokens_ / seq);
}

void CudaTttModel::score(const int32_t* inputs, const int32_t* targets, int rows, int seq, float* nll) {
    const int per = rows_per_pass(seq);
    for (int r0 = 0; r0 < rows; r0 += per) {
        const int n = std::min(per, rows - r0);
        const size_t at = size_t(r0) * seq;
        model_.forward(inputs + at, targets + at, n, seq, recur_);
        model_.per_token_loss(nll + at);
    }
}

float CudaTttModel::train_step(const int32_t* inputs, const int32_t* targets, int rows, int seq, int total_rows,
                               float lr, float momentum, float clip) {
    if (rows != total_rows && !reduce_)
        fail("eval: %d of a step's %d rows on this GPU, but no gradient reduction across ranks is set", rows,
             total_rows);
    const size_t n = model_.layout().total;
    if (velocity_.size() != n) {
        velocity_ = DeviceArray<float>(n);
        PG_CHECK(cudaMemsetAsync(velocity_.get(), 0, n * sizeof(float), model_.stream()));
    }
    model_.zero_grad();
    const int per = rows_per_pass(seq);
    double loss_sum = 0;
    for (int r0 = 0; r0 < rows; r0 += per) {
        const int k = std::min(per, rows - r0);
        const size_t at = size_t(r0) * seq;
        model_.forward(inputs + at, targets + at, k, seq, recur_, true);
        model_.backward(float(k) / float(total_rows));  // the pieces' gradients sum to the batch mean's
        loss_sum += double(model_.loss()) * k;         // the backward leaves the forward's losses
    }
    cudaStream_t st = model_.stream();
    if (reduce_) reduce_(model_.grads(), n, st);
    sum_squares_cuda(model_.grads(), n, partial_.get(), sumsq_.get(), false, st);
    sgd_momentum_cuda(model_.params(), model_.params_bf16(), velocity_.get(), model_.grads(), n, sumsq_.get(), lr,
                      momentum, clip, st);
    return rows ? float(loss_sum / rows) : 0.f;
}

std::unique_ptr<TttModel> make_cuda_ttt_model(const ModelConfig& cfg, const std::vector<float>& params,
                                              long max_tokens, bool recur_active, GradReduce reduce) {
    auto m = std::make_unique<CudaTttModel>(cfg, params, max_tokens, recur_active);
    m->set_grad_reduce(std::move(reduce));
    return m;
}

}  // namespace pg
