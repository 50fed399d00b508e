// The GPU Trainer: CudaModel (model/model_cuda.cuh) with CudaOptimizer and CudaWeightAverage
// (model/optim_cuda.cuh) and the QAT kernel (quant/qat_cuda.cuh), all enqueued on one stream.
// The host waits for the GPU once per micro-batch (its loss) and once per step (the gradient
// norm), each time after the work is enqueued.
#include <cuda_runtime.h>

#include <memory>

#include "common/check.h"
#include "common/cuda_check.cuh"
#include "dist/parallel_muon.h"
#include "model/model_cuda.cuh"
#include "model/optim_cuda.cuh"
#include "quant/qat_cuda.cuh"
#include "train/trainer.h"

namespace pg {

namespace {

// Device bytes a parameter costs outside the activations, from above: fp32 master, gradient and
// bf16 copy (10); momentum or Adam moments (8); Newton-Schulz input and its two bf16 buffers,
// sized by the largest bank (8); EMA and SWA (8); the master's spare copy while an average is
// validated (4).
constexpr size_t kBytesPerParam = 40;

double gib(size_t bytes) { return bytes / double(size_t(1) << 30); }

// A stream that orders itself with the legacy default stream, which DeviceArray's whole-array
// copies use.
struct Stream {
    cudaStream_t s = nullptr;
    Stream() { PG_CHECK(cudaStreamCreate(&s)); }
    ~Stream() { cudaStreamDestroy(s); }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
};

class CudaTrainer final : public Trainer {
public:
    CudaTrainer(const Config& cfg, int micro, std::string how, Comm* comm)
        : micro_(micro),
          how_(std::move(how)),
          model_(cfg.model, micro, stream_.s),
          avg_(model_.layout().total, cfg.train, stream_.s),
          qat_(model_.layout(), cfg.quant) {
        if (comm)
            pmuon_ = std::make_unique<ParallelMuon>(model_.layout(), cfg.train, stream_.s, *comm);
        else
            opt_ = std::make_unique<CudaOptimizer>(model_.layout(), cfg.train, stream_.s);
    }

    const ParamLayout& layout() const override { return model_.layout(); }
    int micro_batch() const override { return micro_; }
    std::string describe() const override {
        return format("GPU, %d sequences per forward (%s), %.2f GiB of activations", micro_, how_.c_str(),
                      gib(model_.activation_bytes()));
    }
    std::string memory_use() const override {
        size_t free_b = 0, total_b = 0;
        PG_CHECK(cudaMemGetInfo(&free_b, &total_b));
        return format("%.2f GiB of %.2f GiB in use on the GPU", gib(total_b - free_b), gib(total_b));
    }

    void set_master(const std::vector<float>& w) override { model_.upload_params(w); }
    std::vector<float> master() const override { return model_.download_params(); }

    double forward_backward(const NextBatch& next, int grad_accum, bool recur, bool qat) override {
        // The optimizer leaves bf16(master) in the forward's copy of the matrices; QAT replaces it.
        if (qat) qat_.apply(model_.params(), model_.params_bf16(), model_.stream());
        model_.zero_grad();
        double loss = 0;
        for (int a = 0; a < grad_accum; ++a) {
            const Batch b = next();
            model_.forward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len, recur, true);
            model_.backward(1.f / float(grad_accum));
            loss += model_.loss();  // read once the backward is enqueued: the wait is the GPU's work
        }
        return loss / grad_accum;
    }

    // One GPU's whole update, or on several ranks Parallel Muon on the mean of their gradients.
    float optimizer_step(float lr_scale, int step) override {
        if (pmuon_) {
            pmuon_->step(model_.params(), model_.params_bf16(), model_.grads(), lr_scale, step);
            return pmuon_->grad_norm();
        }
        opt_->step(model_.params(), model_.params_bf16(), model_.grads(), lr_scale, step);
        return opt_->grad_norm();
    }
    void update_average(int step, bool swa_active) override { avg_.update(model_.params(), step, swa_active); }

    // Each rank keeps the Muon momentum of its own chunks only; a checkpoint holds all of it.
    OptimizerState optimizer_state() override {
        OptimizerState s = local_opt().state();
        if (pmuon_) pmuon_->gather_momentum(s.muon_m);
        return s;
    }
    void set_optimizer_state(const OptimizerState& s) override { local_opt().set_state(s); }
    AverageState average_state() const override { return avg_.state(); }
    void set_average_state(const AverageState& s) override { avg_.set_state(s); }

protected:
    // An average is validated in place of the master weights, which wait in spare_. The bf16
    // copy is refreshed either way: under QAT it held the fake-quantized matrices.
    void load_weights(Weights w) override {
        const size_t n = layout().total, bytes = n * sizeof(float);
        cudaStream_t s = model_.stream();
        if (w == Weights::Master) {
            if (swapped_)
                PG_CHECK(cudaMemcpyAsync(model_.params(), spare_.get(), bytes, cudaMemcpyDeviceToDevice, s));
            swapped_ = false;
        } else {
            const float* src = w == Weights::Ema ? avg_.ema() : avg_.swa();
            PG_CHECK(src != nullptr);
            if (!swapped_) {
                if (spare_.size() != n) spare_ = DeviceArray<float>(n);
                PG_CHECK(cudaMemcpyAsync(spare_.get(), model_.params(), bytes, cudaMemcpyDeviceToDevice, s));
                swapped_ = true;
            }
            PG_CHECK(cudaMemcpyAsync(model_.params(), src, bytes, cudaMemcpyDeviceToDevice, s));
        }
        local_opt().refresh_bf16(model_.params(), model_.params_bf16(), 0, n);
    }
    ScoreFn score(bool recur) override {
        return [this, recur](const int32_t* in, const int32_t* tg, int rows, int seq, float* nll) {
            model_.forward(in, tg, rows, seq, recur);
            model_.per_token_loss(nll);
        };
    }

private:
    CudaOptimizer& local_opt() { return pmuon_ ? pmuon_->local() : *opt_; }

    int micro_;
    std::string how_;
    Stream stream_;
    CudaModel model_;
    std::unique_ptr<CudaOptimizer> opt_;  // one GPU
    std::unique_ptr<ParallelMuon> pmuon_;  // several ranks
    CudaWeightAverage avg_;
    QatCuda qat_;
    DeviceArray<float> spare_;
    bool swapped_ = false;
};

// micro_batch_seqs 0: measure one sequence's activations on a throwaway model (the buffers
// grow linearly with the rows, the head chunk less), then fit the free memory after the
// parameter-sized buffers and a headroom of 1 GiB + 5% (cuBLASLt, allocator slack).
int pick_on_gpu(const Config& cfg, int seqs, std::string& how) {
    size_t per_seq = 0;
    {
        CudaModel probe(cfg.model, 1);
        per_seq = probe.activation_bytes();
    }
    size_t free_b = 0, total_b = 0;
    PG_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const size_t fixed = make_layout(cfg.model).total * kBytesPerParam + (size_t(1) << 30) + total_b / 20;
    const size_t available = free_b > fixed ? free_b - fixed : 0;
    const int micro = pick_micro_batch(seqs, cfg.model.seq_len, per_seq, available, kMaxMicroTokens);
    how = format("picked to fit: %.3f GiB a sequence, %.1f GiB free, at most %ld tokens", gib(per_seq),
                 gib(free_b), kMaxMicroTokens);
    return micro;
}

}  // namespace

std::unique_ptr<Trainer> make_cuda_trainer(const Config& cfg, int seqs, Comm* comm) {
    std::string how = "--micro-batch-seqs";
    const int micro = cfg.train.micro_batch_seqs > 0 ? cfg.train.micro_batch_seqs : pick_on_gpu(cfg, seqs, how);
    return std::make_unique<CudaTrainer>(cfg, micro, how, comm);
}

}  // namespace pg
