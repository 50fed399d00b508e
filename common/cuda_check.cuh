// PG_CHECK for CUDA, cuBLAS and NCCL status codes: overloads of pg::ok / pg::why, found by
// the macro in common/check.h, so a failed library call becomes the usual one-line pg::Error.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <utility>
#include <vector>

#include "common/check.h"

namespace pg {

inline bool ok(cudaError_t e) { return e == cudaSuccess; }
inline const char* why(cudaError_t e) { return cudaGetErrorString(e); }
inline bool ok(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }
inline const char* why(cublasStatus_t s) { return cublasGetStatusString(s); }
inline bool ok(ncclResult_t r) { return r == ncclSuccess; }
inline const char* why(ncclResult_t r) { return ncclGetErrorString(r); }

// An owned device allocation of n elements of T (no managed memory).
template <class T>
class DeviceArray {
public:
    DeviceArray() = default;
    explicit DeviceArray(size_t n) : n_(n) {
        if (n_) PG_CHECK(cudaMalloc(&p_, n_ * sizeof(T)));
    }
    ~DeviceArray() {
        if (p_) cudaFree(p_);
    }
    DeviceArray(DeviceArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
    DeviceArray& operator=(DeviceArray&& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
        return *this;
    }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    T* get() const { return p_; }
    size_t size() const { return n_; }

    // Synchronous copies of the whole array (setup, checkpoints, tests).
    explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
    void upload(const std::vector<T>& host) {
        PG_CHECK(host.size() == n_);
        if (n_) PG_CHECK(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> download() const {
        std::vector<T> host(n_);
        if (n_) PG_CHECK(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }

private:
    T* p_ = nullptr;
    size_t n_ = 0;
};

}  // namespace pg

// After a kernel launch: a bad configuration (too much shared memory, a grid too large)
// shows only in cudaGetLastError, never in a return value.
#define PG_CHECK_LAUNCH() PG_CHECK(cudaGetLastError())
