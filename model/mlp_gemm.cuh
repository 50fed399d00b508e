// The MLP's LeakyReLU(slope)^2 fused into its matrix products (Hopper only): one GEMM kernel
// whose epilogue does what a separate elementwise pass over the [M, N] product would.
//
//   up forward     act = bf16(z^2), z = f > 0 ? f : slope f, f = bf16(x W^T); and f's sign bits
//   down backward  df = bf16(g * 2 sqrt(act) * (f < 0 ? -slope : 1)), g = dm Wp in fp32
//
// f itself is never stored: the derivative 2 f (f > 0 ? 1 : slope^2) is 2 sqrt(act) times 1 or
// -slope, so act and one sign bit an element give it back, within act's bf16 rounding (2^-9
// relative, halved by the root). That halves the forward's stores, which bound it. (Where f is
// zero, act is too, and the sign does not matter.)
//
// x, dm [M, K]; W [N, K]; Wp [K, N]; act, df [M, N]; all bf16 row-major, fp32 accumulation.
// signs: mlp_sign_words(M, N) words in the kernels' own order (mlp_sign_bit). The results
// equal cuBLAS's product followed by leaky_relu2_forward / leaky_relu2_backward of
// model/kernels.cuh, up to the order of the fp32 sums and act's rounding. CPU oracle:
// model/mlp_gemm_ref.h.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace pg {

using bf16 = __nv_bfloat16;

// Whether the current device and the shape can take the fused kernels: an sm_90 GPU, K a
// multiple of 32, N a multiple of 256, M >= 1 (any M).
bool mlp_gemm_supports(int M, int N, int K);

// f's sign bits (set where f < 0) are kept in the order the kernels' accumulators hold them, so
// that each thread moves its 128 bits of a 128 x 256 tile as one 16-byte word: tile
// (m / 128) (N / 256) + n / 256, then the thread (256 a tile) that holds element (m, n), then its
// 128 bits.
inline size_t mlp_sign_words(int M, int N) { return size_t((M + 127) / 128) * (N / 256) * 256 * 4; }
inline size_t mlp_sign_bit(int m, int n, int N) {
    const int r = m % 128, c = n % 256;
    const size_t tile = size_t(m / 128) * (N / 256) + n / 256;
    const int thread = r / 16 * 32 + r % 8 * 4 + c % 8 / 2;
    return (tile * 256 + thread) * 128 + c / 8 * 4 + r % 16 / 8 * 2 + c % 2;
}

void mlp_up_forward(bf16* act, uint32_t* signs, const bf16* x, const bf16* w, int M, int N, int K, float slope,
                    cudaStream_t stream);
void mlp_down_backward(bf16* df, const bf16* dm, const bf16* wp, const bf16* act, const uint32_t* signs, int M, int N,
                       int K, float slope, cudaStream_t stream);

}  // namespace pg
