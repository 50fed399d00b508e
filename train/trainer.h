// The device half of `pgolf train`. train.cu holds the one training loop (schedule, data,
// logs, checkpoints, wall-clock cap); a Trainer holds the model, the optimizers and the
// weight averages on one device: the CPU reference (RefModel + Optimizer + WeightAverage) or
// the GPU (CudaModel + CudaOptimizer + CudaWeightAverage). Both keep fp32 master weights in
// the flat layout of model/params.h and optimizer / average state in the layout of
// model/optim.h, so a checkpoint written by one resumes on the other.
//
// A step: forward_backward() (the loop checks the loss before anything is updated), then
// optimizer_step(), then update_average().
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "eval/bpb.h"
#include "eval/evaluate.h"
#include "model/optim.h"
#include "model/params.h"
#include "tokenizer/loader.h"

namespace pg {

class Comm;

// The next micro-batch of this rank (train.cu wraps next_batch with its rank and world).
using NextBatch = std::function<Batch()>;

// Which weights a validation scores.
enum class Weights { Master, Ema, Swa };

class Trainer {
public:
    virtual ~Trainer() = default;

    virtual const ParamLayout& layout() const = 0;
    virtual int micro_batch() const = 0;  // sequences per forward pass
    // How the device part was set up (micro-batch choice and the like), for the log.
    virtual std::string describe() const = 0;
    // Device memory in use now, for the log after the first step; empty on the CPU.
    virtual std::string memory_use() const = 0;

    virtual void set_master(const std::vector<float>& w) = 0;
    virtual std::vector<float> master() const = 0;

    // Gradients of the step's mean loss over grad_accum micro-batches taken from `next`
    // (each backward scaled by 1 / grad_accum); returns that mean loss. With qat, the forward
    // and backward see the fake-quantized Attn / Mlp matrices (quant/export.h) and the
    // gradients land on the master weights unchanged (straight-through).
    virtual double forward_backward(const NextBatch& next, int grad_accum, bool recur, bool qat) = 0;
    // The optimizer update from those gradients; returns the global gradient norm before
    // clipping. `step` is the 0-based step (Muon momentum warmup).
    virtual float optimizer_step(float lr_scale, int step) = 0;
    virtual void update_average(int step, bool swa_active) = 0;

    // On several ranks a collective (the Muon momentum is gathered): every rank calls it.
    virtual OptimizerState optimizer_state() = 0;
    virtual void set_optimizer_state(const OptimizerState& s) = 0;
    // Also the host copies of the EMA / SWA weights (AverageState::ema, ::swa).
    virtual AverageState average_state() const = 0;
    virtual void set_average_state(const AverageState& s) = 0;

    // val_loss / val_bpb of `w` (the raw master weights, never fake-quantized); the master
    // weights are in place again afterwards. Ema / Swa must have been updated at least once.
    // With comm, each rank scores its share of the windows and every rank gets the sums.
    BpbAccumulator validate(Weights w, bool recur, const std::vector<uint16_t>& tokens, const ByteTables& bytes,
                            const EvalOptions& opt, Comm* comm = nullptr);

protected:
    // Makes the forward read `w` (Master undoes an earlier Ema / Swa).
    virtual void load_weights(Weights w) = 0;
    // Scores with the weights loaded (eval/evaluate.h), micro_batch() rows at most.
    virtual ScoreFn score(bool recur) = 0;
};

// seqs: sequences of a whole step on this rank. The CPU runs micro_batch_seqs of them per forward, or all
// of them when it is 0; the GPU picks, for 0, the largest divisor of seqs that fits its free
// memory (pick_micro_batch). head dims the GPU attention lacks fail with one line. With comm
// (several ranks) the GPU optimizer step is Parallel Muon (dist/parallel_muon.h).
std::unique_ptr<Trainer> make_cpu_trainer(const Config& cfg, int seqs);
std::unique_ptr<Trainer> make_cuda_trainer(const Config& cfg, int seqs, Comm* comm = nullptr);

// Tokens of one micro-batch beyond which the GPU gains no throughput: on the H100, the record
// model ran 559K tok/s at 24 x 2048 tokens and 523K at 48 x 2048 (docs/benchmarks/gpu_vs_pytorch.md).
constexpr long kMaxMicroTokens = 24 * 2048;

// The largest divisor of `seqs` with at most max_tokens tokens (but at least one sequence)
// whose activations, per_seq_bytes a sequence, fit in available_bytes; fails when not even
// one sequence fits.
int pick_micro_batch(int seqs, int seq_len, size_t per_seq_bytes, size_t available_bytes, long max_tokens);

}  // namespace pg
