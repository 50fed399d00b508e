#include "quant/qat_cuda.cuh"

#include <cuda_fp16.h>

#include <vector>

#include "quant/export.h"
#include "quant/quantize.h"

namespace pg {

namespace {

constexpr int kThreads = 256;

__device__ void store(float* p, float v) { *p = v; }
__device__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// One block per quantized row: sdclip_scales, quantize_value and dequantize_rows of
// quant/quantize.cpp, operation for operation.
template <typename Out>
__global__ void fake_quantize_kernel(const QatCuda::Matrix* mats, int n_mats, const float* params, Out* out) {
    __shared__ double warp_sums[kThreads / 32];
    __shared__ float scale;
    const int row = blockIdx.x;
    int lo = 0, hi = n_mats - 1;  // the last matrix whose first row is <= row
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (mats[mid].first_row <= row) lo = mid;
        else hi = mid - 1;
    }
    const QatCuda::Matrix m = mats[lo];
    const size_t base = m.offset + size_t(row - m.first_row) * m.cols;
    const float* w = params + base;

    double ss = 0;
    for (int c = threadIdx.x; c < m.cols; c += kThreads) ss += double(w[c]) * w[c];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0;
        for (int i = 0; i < kThreads / 32; ++i) total += warp_sums[i];
        const float rms = float(sqrt(total / m.cols));
        const float qmax = float(m.qmax);
        const float s = __half2float(__float2half_rn(__fdiv_rn(__fmul_rn(m.clip, rms), qmax)));
        const float min_scale = 1.0f / 16384.0f;
        scale = s > min_scale ? s : min_scale;
    }
    __syncthreads();
    const float s = scale, qmax = float(m.qmax);
    for (int c = threadIdx.x; c < m.cols; c += kThreads) {
        float r = rintf(__fdiv_rn(w[c], s));
        r = r > qmax ? qmax : r;
        r = r < -qmax ? -qmax : r;
        // Through an int, as the CPU stores q: a small negative weight gives +0, not -0.
        store(out + base + c, __fmul_rn(float(int(r)), s));
    }
}

}  // namespace

QatCuda::QatCuda(const ParamLayout& layout, const QuantConfig& q) {
    std::vector<Matrix> mats;
    for (const ParamSpec& p : layout.params) {
        if (p.quant != QuantGroup::Attn && p.quant != QuantGroup::Mlp) continue;
        const int bits = quant_bits(q, p.quant);
        const float clip = quant_clip(q, p.quant);
        if (bits < 2 || bits > 8 || !(clip > 0))
            fail("QAT: %s needs 2..8 bits and a positive clip (got %d bits, clip %g)", p.name.c_str(), bits,
                 double(clip));
        mats.push_back({p.offset, p.rows, p.cols, qmax_for_bits(bits), total_rows_, clip});
        total_rows_ += p.rows;
    }
    n_matrices_ = int(mats.size());
    matrices_ = DeviceArray<Matrix>(mats);
}

template <typename Out>
void QatCuda::apply(const float* params, Out* out, cudaStream_t stream) const {
    if (total_rows_ == 0) return;
    fake_quantize_kernel<Out><<<total_rows_, kThreads, 0, stream>>>(matrices_.get(), n_matrices_, params, out);
    PG_CHECK_LAUNCH();
}

template void QatCuda::apply<float>(const float*, float*, cudaStream_t) const;
template void QatCuda::apply<__nv_bfloat16>(const float*, __nv_bfloat16*, cudaStream_t) const;

}  // namespace pg
