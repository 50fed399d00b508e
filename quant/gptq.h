// GPTQ (Frantar et al., 2022) on the CPU in double. A linear layer y = x W^T, W [rows, cols],
// sees inputs X [n, cols]; its output error for a quantized W^ is ||X (W - W^)^T||^2 =
// sum_r e_r^T H e_r with H = X^T X. GPTQ quantizes W one column at a time and spreads each
// column's rounding error over the columns not yet quantized, using the upper Cholesky
// factor of H^-1. Rows are independent, so the per-row scales are fixed before the column
// loop (SDClip, clip searched per tensor group) and act-order is a plain column permutation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pg {

struct GptqOptions {
    int block_size = 128;   // columns per lazy batch; the result does not depend on it
    double percdamp = 0.01;  // H += percdamp * mean(diag H) * I before factoring
    bool act_order = true;   // quantize columns by decreasing diag(H)
};

// h [cols, cols] += x^T x for x row-major [n, cols].
void accumulate_hessian(const float* x, size_t n, int cols, double* h);

// Quantizes w [rows, cols] with the given per-row scales; q gets [rows, cols] in
// [-qmax, qmax]. Columns whose diag(H) is zero never see input and are quantized to 0.
void gptq_quantize(const float* w, int rows, int cols, const double* h, const float* scales, int bits,
                   const GptqOptions& opt, int8_t* q);

// Output error sum_r e_r^T H e_r of e = w - q * scale; with h null, the plain ||e||^2.
double weighted_error(const float* w, const int8_t* q, const float* scales, int rows, int cols, const double* h);

// In place: a [n, n] symmetric positive definite -> its lower Cholesky factor L (upper part
// zeroed). pg::fail when a pivot is not positive.
void cholesky_lower(double* a, int n);
// u [n, n] = the upper triangular U with H^-1 = U^T U, the factor GPTQ reads row by row.
void inverse_upper_cholesky(const double* h, int n, double* u);

// One tensor of a group for the clip search; hessian may be null (plain reconstruction error).
struct QuantTarget {
    const float* w;
    int rows, cols;
    const double* hessian;
};
struct ClipTrial {
    float k;
    double error;           // summed over the group
    double bits_per_value;  // entropy of the group's quantized values
};
// Quantizes the whole group at each SDClip k (GPTQ where a hessian is given and gptq is not
// null, otherwise round-to-nearest) and records its error and entropy.
std::vector<ClipTrial> try_clips(const std::vector<QuantTarget>& group, int bits, const std::vector<float>& ks,
                                 const GptqOptions* gptq);
// The k of least error among trials within max_bits_per_value (0 = no size limit); when no
// trial is within the limit, the k of fewest bits.
float best_clip(const std::vector<ClipTrial>& trials, double max_bits_per_value);

}  // namespace pg
