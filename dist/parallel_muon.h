// The optimizer step of data-parallel training: every rank holds the same weights and its own
// gradient (the mean over its share of the global batch); after step() every rank holds the
// weights that CudaOptimizer::step would give on the mean of all ranks' gradients.
//
//   AdamW params (embeddings, vectors): all-reduced (average), every rank updates all of them.
//   Muon banks: bank b is padded to world * chunk matrices (chunk = ceil(count / world), the
//   cut of muon_partition) and reduce-scattered (average), so rank r holds the reduced
//   gradients of its chunk alone; rank r runs momentum + Newton-Schulz on that chunk; the updated
//   fp32 weights are all-gathered and the bf16 copy refreshed.
//   Clipping: the global norm is the sum of every rank's squares over what it holds reduced (its
//   chunks; rank 0 also the AdamW part), all-reduced, so each element counts once.
//
// Same result as CudaOptimizer::step on the averaged gradients. With one rank it is the same
// arithmetic in the same order: bit for bit (the chunks are whole banks, and the sum of squares
// runs over one contiguous range as in step()). With several ranks: the average is NCCL's (for 2
// ranks exactly (g0 + g1) / 2 in fp32); the norm's double sum runs in another order (a float norm
// that can differ in the last bit); and Newton-Schulz runs on chunks of a bank, a batch count for
// which cuBLASLt may pick another algorithm (model/optim.h argues the per-matrix arithmetic is
// the same). The 2-rank test states the tolerances.
//
// Overlap with the backward (a later step): reduce_bank() is the hook. It may be called for each
// bank as soon as that bank's gradients are final on the stream, in any order, before update().
// Banks hold one matrix kind across all layers, though, so with today's layout every bank is
// final only at the end of the backward (layer 0 holds one matrix of each bank). Real overlap
// needs finer pieces: CudaModel would record an event when the backward has passed the last
// visit (under recurrence) of each physical layer, and the reduction of bank b's chunk r would
// start (on a communication stream waiting on that event, in the last micro-step only) once all
// of the chunk's layers are final. docs/multi_gpu.md has the plan.
#pragma once
#include <vector>

#include "common/config.h"
#include "dist/comm.h"
#include "model/optim.h"
#include "model/optim_cuda.cuh"
#include "model/params.h"

namespace pg {

class ParallelMuon {
public:
    // layout must be make_layout's order: banks back to back from offset 0, then every AdamW
    // parameter. `stream` carries every collective; the Muon updates run on the optimizer's bank
    // streams (CudaOptimizer) and join it before the weights are gathered.
    ParallelMuon(const ParamLayout& layout, const TrainConfig& cfg, cudaStream_t stream, Comm& comm);

    // One step: params (fp32 master) and params_bf16 are [layout.total] and equal on every rank;
    // grads is this rank's gradient, read only.
    void step(float* params, bf16* params_bf16, const float* grads, float lr_scale, int step);

    // The pieces of step(): reduce_bank for every bank (any order) and reduce_adam, then update.
    void reduce_bank(int bank, const float* grads);
    void reduce_adam(const float* grads);
    void update(float* params, bf16* params_bf16, float lr_scale, int step);

    // The last global gradient norm before clipping; waits for the stream through the communicator.
    float grad_norm();
    // This rank's optimizer: Adam moments and step count as on one GPU; Muon momentum valid on this
    // rank's chunks only (gather_momentum).
    CudaOptimizer& local() { return opt_; }
    const std::vector<BankSlice>& slices() const { return slices_; }

    // For checkpoints: muon_m (OptimizerState::muon_m layout, this rank's view, valid on its own
    // chunks) becomes the whole momentum, the same on every rank. Every rank calls it, between steps.
    void gather_momentum(std::vector<float>& muon_m);

private:
    // Bank b in the arena: `chunk` matrices of `numel` floats a rank, from arena offset `at`.
    struct Padded {
        int chunk = 0;
        size_t numel = 0, at = 0;
    };
    // Rank r's chunk of bank b, in arena_; and the copy of every rank's updated weights into params.
    float* own_chunk(int bank) { return arena_.get() + pad_[bank].at + size_t(comm_.rank()) * pad_[bank].chunk * pad_[bank].numel; }
    int own_count(int bank) const;
    void gather_weights(float* params, bf16* params_bf16);

    ParamLayout layout_;
    Comm& comm_;
    cudaStream_t stream_;
    CudaOptimizer opt_;
    std::vector<BankSlice> slices_;  // muon_partition(layout, rank, world)
    std::vector<Padded> pad_;
    size_t muon_end_ = 0;   // AdamW params are [muon_end_, layout.total)
    size_t adam_at_ = 0;    // where they sit in arena_
    // Reduced gradients, laid out as the flat buffer with each bank padded; a bank's run carries
    // the gathered weights at the end of the step.
    DeviceArray<float> arena_;
    std::vector<bool> reduced_;  // per bank, then AdamW: reduced in this step
};

}  // namespace pg
