// The MLP's LeakyReLU(slope)^2 fused into its matrix products (Hopper only): one GEMM kernel
// whose epilogue does what a separate elementwise pass over the [M, N] product would.
//
//   up forward     f = bf16(x W^T), act = bf16(z^2), z = f > 0 ? f : slope f   (from bf16 f)
//   down backward  df = bf16(g * 2 f * (f > 0 ? 1 : slope^2)), g = bf16(dm Wp)
//
// x, dm [M, K]; W [N, K]; Wp [K, N]; f, act, df [M, N]; all bf16 row-major, fp32 accumulation.
// The results equal cuBLAS's product followed by leaky_relu2_forward / leaky_relu2_backward of
// model/kernels.cuh, up to the order of the fp32 sums. CPU oracle: model/mlp_gemm_ref.h.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace pg {

using bf16 = __nv_bfloat16;

// Whether the current device and the shape can take the fused kernels: an sm_90 GPU, K a
// multiple of 32, N a multiple of 256, M >= 1 (any M).
bool mlp_gemm_supports(int M, int N, int K);

void mlp_up_forward(bf16* f, bf16* act, const bf16* x, const bf16* w, int M, int N, int K, float slope,
                    cudaStream_t stream);
void mlp_down_backward(bf16* df, const bf16* dm, const bf16* wp, const bf16* f, int M, int N, int K, float slope,
                       cudaStream_t stream);

}  // namespace pg
