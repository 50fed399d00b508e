// The optimizers, plain C++ over the flat fp32 parameter buffer: Muon on the Matrix banks,
// AdamW on Embedding and Vector parameters, global-norm clipping, and EMA/SWA weight
// averages. This is the reference the GPU optimizer is checked against, so every formula
// is spelled out here once.
//
// Muon, per matrix W [rows, cols] with gradient G (after clipping):
//   g = G, or with muon_row_norm ("MuonEq-R") each row of G divided by (its L2 norm + 1e-7),
//       so every output unit contributes a unit-length row before momentum;
//   m = mu * m + g                      (momentum buffer, starts at 0)
//   u = g + mu * m                      (Nesterov)
//   O = NS(u)                           (newton_schulz below)
//   W = W * (1 - lr * muon_wd) - lr * sqrt(max(1, rows / cols)) * O,   lr = matrix_lr * lr_scale
// mu warms up linearly from muon_momentum_start to muon_momentum over muon_momentum_warmup steps.
//
// AdamW, per element, t = number of Adam updates so far including this one:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p * (1 - lr * adam_wd) - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//   lr = embed_lr * lr_scale (Embedding) or scalar_lr * lr_scale (Vector).
//
// Parallel Muon: a bank's matrices can be updated in slices (muon_update_bank_slice); each
// rank takes the slices muon_partition gives it, after a reduce-scatter of the bank's
// gradients, and all-gathers the updated weights. Slices touch disjoint weights and momentum,
// and the per-matrix arithmetic is the same whatever the slicing, so the union of all ranks'
// slices equals one whole-bank update bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/config.h"
#include "model/params.h"

namespace pg {

// Orthogonalises `count` row-major [rows, cols] matrices stored back to back in X, in place:
// X <- X / (||X||_F + 1e-7), transposed to the wide orientation when rows > cols, then `steps`
// iterations of X <- a X + (b A + c A^2) X with A = X X^T and (a, b, c) = (3.4445, -4.7750,
// 2.0315). Each singular value s/||X||_F goes through the scalar map x -> a x + b x^3 + c x^5;
// after 5 steps every input in [2e-3, 1] of the Frobenius norm lands in [0.68, 1.21] (smaller
// ones, which square random matrices can have, come out below).
void newton_schulz(float* X, int count, int rows, int cols, int steps);

// Muon momentum at a given (0-based) step: linear warmup, then muon_momentum.
float muon_momentum_at(int step, const TrainConfig& cfg);

// Sum of squares of n floats, accumulated in double; the same bits whatever the thread count.
double sum_squares(const float* x, size_t n);

// Factor that brings a gradient of global norm `norm` down to `cap` (1 when under it or cap == 0).
float clip_scale(float norm, float cap);

// A contiguous run of matrices inside one bank: matrices [first, first + count) of `bank`.
struct BankSlice {
    int bank = 0, first = 0, count = 0;
};

// The Muon work of `rank` out of `world`: each bank is cut into `world` chunks of
// ceil(count / world) matrices (the last ones shorter or empty), rank r taking chunk r.
// Equal chunk sizes are what a reduce-scatter over the (padded) bank needs.
std::vector<BankSlice> muon_partition(const ParamLayout& layout, int rank, int world);

// What the optimizer carries from step to step. The CPU and GPU optimizers hold the same
// layout (momentum bank by bank; Adam moments parameter by parameter in layout order), so a
// checkpoint written on either resumes on either.
struct OptimizerState {
    long adam_t = 0;  // Adam updates so far (bias correction)
    std::vector<float> muon_m, adam_m, adam_v;
};

// EMA / SWA accumulators (empty vectors when off).
struct AverageState {
    long ema_steps = 0, swa_count = 0;
    std::vector<float> ema, swa;
};

// Exact byte forms for checkpoints. load_* fail with a message naming `source` when the
// bytes do not match the sizes already in `into`.
std::vector<uint8_t> save_state(const OptimizerState& s);
void load_state(OptimizerState& into, const std::vector<uint8_t>& bytes, const std::string& source);
std::vector<uint8_t> save_state(const AverageState& s);
void load_state(AverageState& into, const std::vector<uint8_t>& bytes, const std::string& source);

class Optimizer {
public:
    Optimizer(const ParamLayout& layout, const TrainConfig& cfg);

    // One full update of every parameter. `step` is the 0-based training step (drives the
    // momentum warmup); `lr_scale` is the schedule's multiplier. Returns the global gradient
    // norm before clipping. grads are read, never written.
    float step(float* params, const float* grads, float lr_scale, int step);

    // The pieces of step(), for Parallel Muon. grad_scale is the clip factor (clip_scale).
    void muon_update_bank_slice(int bank, int first, int count, float* params, const float* grads,
                                float lr_scale, int step, float grad_scale);
    void adam_update(float* params, const float* grads, float lr_scale, float grad_scale);

    // Momentum, Adam moments and the Adam step count (save_state / load_state above).
    OptimizerState& state() { return st_; }
    const OptimizerState& state() const { return st_; }
    long adam_steps() const { return st_.adam_t; }

private:
    ParamLayout layout_;
    TrainConfig cfg_;
    std::vector<size_t> bank_state_;  // offset of each bank's momentum in st_.muon_m
    std::vector<int> adam_params_;     // indices of Embedding / Vector params
    std::vector<size_t> adam_state_;   // offset of each of those in st_.adam_m / st_.adam_v
    OptimizerState st_;
};

// EMA and SWA of the weights, over the flat buffer. Call update() after every optimizer step.
//   EMA (ema_decay > 0): the first update copies the weights, then ema = d * ema + (1 - d) * w.
//   SWA (swa_from > 0): when the schedule says SWA is active and step % swa_every == 0, the
//   weights join a uniform running mean of all snapshots so far.
class WeightAverage {
public:
    WeightAverage(size_t n, const TrainConfig& cfg);

    void update(const float* params, int step, bool swa_active);
    const float* ema() const { return st_.ema_steps > 0 ? st_.ema.data() : nullptr; }
    const float* swa() const { return st_.swa_count > 0 ? st_.swa.data() : nullptr; }
    long swa_count() const { return st_.swa_count; }
    AverageState& state() { return st_; }
    const AverageState& state() const { return st_; }

private:
    size_t n_;
    float decay_;
    int swa_every_;
    AverageState st_;
};

}  // namespace pg
