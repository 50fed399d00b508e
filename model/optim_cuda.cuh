// The optimizers on the GPU: the same math as model/optim.h (read its header for every
// formula), over the same flat layout. fp32 master weights, momentum and Adam moments live on
// the GPU; after each update the bf16 copy that the forward pass reads is refreshed from the
// fp32 master. Newton-Schulz runs in bf16 with fp32 accumulation, one batched GEMM per stage
// for a whole bank (or bank slice). Where the CPU code transposes a tall matrix, this works
// on it in place instead: A = X^T X and X <- a X + X (b A + c A^2), the same product.
//
// Everything is enqueued on the optimizer's stream and nothing waits for the host, except
// grad_norm(). The clip factor stays on the GPU between the norm and the updates. Each bank's
// Muon update runs on a stream of its own, forked after the clip and joined by join_muon():
// a bank's Newton-Schulz products are small (one wave or less of the GPU's SMs), so the banks'
// products fill each other's idle SMs.
//
// Parallel Muon: each rank, after a reduce-scatter of its bank slices' gradients, calls
// grad_sumsq() over the gradients it holds reduced, all-reduces sumsq_device(), calls
// finish_clip(), then muon_update_bank_slice() for the slices of muon_partition(),
// adam_update() and join_muon(), and all-gathers the updated fp32 weights (then refresh_bf16()).
#pragma once
#include <memory>
#include <vector>

#include "common/config.h"
#include "model/gemm.cuh"
#include "model/optim.h"
#include "model/params.h"

namespace pg {

// Blocks of sum_squares_cuda's first pass: the size of its `partial` buffer.
constexpr int kSumSquaresBlocks = 1024;
// *sumsq = [*sumsq +] sum_squares(x, n) (model/optim.h) on the GPU, in a fixed order whatever
// the GPU: kSumSquaresBlocks partial sums in `partial`, then one block adds them. The global
// gradient norm of the optimizers here and of TTT (eval/ttt_cuda.cuh).
void sum_squares_cuda(const float* x, size_t n, double* partial, double* sumsq, bool accumulate, cudaStream_t stream);

// Orthogonalises `count` row-major [rows, cols] fp32 matrices (back to back) like newton_schulz()
// in model/optim.h, in bf16. Holds its buffers, sized for calls of at most `max_count` matrices,
// `max_numel` floats of input and `max_gram` Gram elements (count * min(rows, cols)^2).
class NewtonSchulzCuda {
public:
    NewtonSchulzCuda(size_t max_numel, size_t max_gram, int max_count);
    // Returns the result, bf16, same layout as U; valid until the next run(). U is not written.
    // sm_count: the SMs its products plan for (GemmArgs::sm_count; 0: all).
    const bf16* run(Gemm& gemm, const float* U, int count, int rows, int cols, int steps, cudaStream_t stream,
                    int sm_count = 0);

private:
    DeviceArray<bf16> x_[2], gram_, poly_;
    DeviceArray<double> partial_;
};

class CudaOptimizer {
public:
    CudaOptimizer(const ParamLayout& layout, const TrainConfig& cfg, cudaStream_t stream);
    ~CudaOptimizer();
    CudaOptimizer(const CudaOptimizer&) = delete;
    CudaOptimizer& operator=(const CudaOptimizer&) = delete;

    // One full update of every parameter, as Optimizer::step: params (fp32 master) and
    // params_bf16 are [layout.total] device buffers, grads (fp32) is read, never written.
    void step(float* params, bf16* params_bf16, const float* grads, float lr_scale, int step);

    // The pieces of step().
    // sumsq (device double) = [sumsq +] sum of squares of x[0, n), in a fixed order.
    void grad_sumsq(const float* x, size_t n, bool accumulate);
    double* sumsq_device() { return sumsq_.get(); }
    // norm = sqrt(sumsq) and the clip factor, on the GPU; the banks' streams start after it.
    void finish_clip();
    // On the bank's own stream, after finish_clip(); slices of one bank run one after another.
    void muon_update_bank_slice(int bank, int first, int count, float* params, bf16* params_bf16,
                                const float* grads, float lr_scale, int step);
    // The optimizer's stream waits for the Muon updates enqueued since finish_clip().
    void join_muon();
    void adam_update(float* params, bf16* params_bf16, const float* grads, float lr_scale);
    // params_bf16[offset, offset + n) = bf16(params[...]).
    void refresh_bf16(const float* params, bf16* params_bf16, size_t offset, size_t n);

    // The last global gradient norm before clipping; waits for the stream.
    float grad_norm() const;
    long adam_steps() const { return adam_t_; }

    // Momentum, Adam moments and step count in the CPU optimizer's layout (model/optim.h), so
    // checkpoints move between devices. state() waits for the stream; set_state() fails when
    // the sizes are not this layout's.
    OptimizerState state() const;
    void set_state(const OptimizerState& s);

    // A run of consecutive elements of one AdamW parameter: the unit of the AdamW kernel's blocks.
    struct AdamBlock {
        unsigned long long param, state;  // offsets into the flat buffer and into the moments
        int n, embedding;
    };

private:
    // What one bank's update needs of its own to run beside the others.
    struct Lane {
        Lane(size_t numel, size_t gram, int count);
        ~Lane();
        cudaStream_t stream = nullptr;
        cudaEvent_t done = nullptr;  // recorded after the lane's last update
        Gemm gemm;
        DeviceArray<float> u;  // the Nesterov update (NS input)
        NewtonSchulzCuda ns;
    };

    ParamLayout layout_;
    TrainConfig cfg_;
    cudaStream_t stream_;
    cudaEvent_t clipped_ = nullptr;
    std::vector<size_t> bank_state_;  // offset of each bank's momentum in muon_m_
    DeviceArray<float> muon_m_;       // momentum
    std::vector<std::unique_ptr<Lane>> lanes_;  // one per bank
    int ns_sms_ = 0;  // the SMs each lane's Newton-Schulz products plan for (0: all)
    DeviceArray<AdamBlock> adam_blocks_;
    int n_adam_blocks_ = 0;
    DeviceArray<float> adam_m_, adam_v_;
    long adam_t_ = 0;
    DeviceArray<double> sumsq_, partial_;
    DeviceArray<float> clip_;  // {norm, scale}
};

// EMA and SWA of the weights on the GPU, as WeightAverage (model/optim.h).
class CudaWeightAverage {
public:
    CudaWeightAverage(size_t n, const TrainConfig& cfg, cudaStream_t stream);
    void update(const float* params, int step, bool swa_active);
    const float* ema() const { return ema_steps_ > 0 ? ema_.get() : nullptr; }
    const float* swa() const { return swa_count_ > 0 ? swa_.get() : nullptr; }
    long swa_count() const { return swa_count_; }
    // As WeightAverage::state(): empty vectors for an average that is off. state() waits for
    // the stream; set_state() fails when the sizes do not match.
    AverageState state() const;
    void set_state(const AverageState& s);

private:
    size_t n_;
    float decay_;
    int swa_every_;
    cudaStream_t stream_;
    DeviceArray<float> ema_, swa_;
    long ema_steps_ = 0, swa_count_ = 0;
};

}  // namespace pg
