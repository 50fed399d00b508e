// PG_CHECK for CUDA, cuBLAS and NCCL status codes: overloads of pg::ok / pg::why, found by
// the macro in common/check.h, so a failed library call becomes the usual one-line pg::Error.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "common/check.h"

namespace pg {

inline bool ok(cudaError_t e) { return e == cudaSuccess; }
inline const char* why(cudaError_t e) { return cudaGetErrorString(e); }
inline bool ok(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }
inline const char* why(cublasStatus_t s) { return cublasGetStatusString(s); }
inline bool ok(ncclResult_t r) { return r == ncclSuccess; }
inline const char* why(ncclResult_t r) { return ncclGetErrorString(r); }

}  // namespace pg

// After a kernel launch: a bad configuration (too much shared memory, a grid too large)
// shows only in cudaGetLastError, never in a return value.
#define PG_CHECK_LAUNCH() PG_CHECK(cudaGetLastError())
