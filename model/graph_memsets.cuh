// Small memset nodes of a captured CUDA graph as kernel nodes.
//
// cuBLASLt's persistent kernels (nvjet "tst") zero a few bytes of their workspace before each
// call, and a captured graph keeps that as a memset node between two kernels. In the step's
// graphs (nsys, session 25) each such node held the GPU idle for ~11 us from the end of the
// kernel before it to the start of the product after it, against ~0.3 us between two kernel
// nodes: 0.7 ms a step over the ~60 products on the chain.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace pg {

// Replaces each memset node of `graph` of at most kMemsetAsKernelMaxBytes by a kernel node that writes the
// same bytes, with the same dependencies. Returns how many it replaced.
constexpr size_t kMemsetAsKernelMaxBytes = size_t(1) << 16;
int memsets_as_kernels(cudaGraph_t graph);

}  // namespace pg
