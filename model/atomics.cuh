// fp32 atomic adds for the kernels that scatter-add gradients (model/kernels.cu,
// model/attention.cu).
#pragma once
#include <cuda_runtime.h>

namespace pg {

// dst[0..3] += v (dst 16-byte aligned): one vector reduction on sm_90, four scalar atomics
// before it; a vector is one operation at the L2 instead of four.
__device__ __forceinline__ void atomic_add4(float* dst, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float4*>(dst), v);
#else
    atomicAdd(dst, v.x), atomicAdd(dst + 1, v.y), atomicAdd(dst + 2, v.z), atomicAdd(dst + 3, v.w);
#endif
}

}  // namespace pg
