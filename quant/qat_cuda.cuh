// STE QAT on the GPU: the forward weights of every Attn and Mlp matrix replaced by their
// quantize-dequantize, with the rounding of quant/quantize.h (SDClip scales rounded to fp16,
// round to nearest even of w / scale, clamp to [-qmax, qmax]); fake_quantize_model in
// quant/export.h is the CPU oracle. One block per matrix row. The row's sum of squares is
// taken in double as on the CPU, but in another order, so on rare rows its float square root
// (and then the scale) may differ by one rounding; everything after the scale is the same
// arithmetic and agrees bit for bit.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "common/config.h"
#include "common/cuda_check.cuh"
#include "model/params.h"

namespace pg {

class QatCuda {
public:
    QatCuda(const ParamLayout& layout, const QuantConfig& q);

    // out = fake_quantize(params) over every Attn / Mlp matrix of the layout, as Out (float, or
    // __nv_bfloat16 for the model's bf16 weights); every other element of out is left as it is.
    // params and out are [layout.total] device buffers. Enqueues on `stream`.
    template <typename Out>
    void apply(const float* params, Out* out, cudaStream_t stream) const;

    // A quantized matrix as the kernel sees it: where it lives, its recipe, and its first row
    // in the numbering of all quantized rows (one block each).
    struct Matrix {
        unsigned long long offset;
        int rows, cols, qmax, first_row;
        float clip;
    };

private:
    DeviceArray<Matrix> matrices_;
    int n_matrices_ = 0, total_rows_ = 0;
};

}  // namespace pg
