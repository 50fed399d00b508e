// The model's matrix products, through cuBLASLt: bf16 operands, fp32 accumulation, bf16 or
// fp32 output, in the row-major terms the model is written in.
//
//   D[M,N] = alpha * op(A) op(B) + beta * C        op(A) [M,K], op(B) [K,N], C and D [M,N]
//
// The three forms the model uses (W [N,K] a weight, x [M,K] activations):
//   forward   y = x W^T          a = x,  b = W, trans_b
//   backward  dX = dY W          a = dY, b = W
//   weights   dW (+)= dY^T X     a = dY, trans_a, b = X, beta = 1 to accumulate
// Batched: `batch` products with fixed strides between matrices (one parameter bank at once).
// Each distinct shape gets its descriptors and heuristic once; later calls reuse them.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "common/check.h"

// ---- Shared CUDA helpers, meant for common/cuda_check.cuh (until it is merged) ----
namespace pg {
inline bool ok(cudaError_t e) { return e == cudaSuccess; }
inline const char* why(cudaError_t e) { return cudaGetErrorString(e); }
inline bool ok(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }
inline const char* why(cublasStatus_t s) { return cublasGetStatusString(s); }

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
#define PG_CHECK_LAUNCH() PG_CHECK(cudaGetLastError())

// Meant for tests/gpu.h: GPU test cases start with PG_REQUIRE_GPU(), which passes with a
// visible doctest MESSAGE where no CUDA device is visible (CI).
inline bool gpu_available() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // no driver: clear the sticky error for later calls
        return false;
    }
    return n > 0;
}
#define PG_REQUIRE_GPU()                             \
    do {                                             \
        if (!gpu_available()) {                      \
            MESSAGE("skipped: no CUDA GPU visible"); \
            return;                                  \
        }                                            \
    } while (0)
// ---- end of shared helpers ----

namespace pg {

using bf16 = __nv_bfloat16;

enum class OutType { BF16, F32 };

struct GemmArgs {
    int M = 0, N = 0, K = 0;
    const bf16* a = nullptr;  // [M,K] row-major, or [K,M] when trans_a
    const bf16* b = nullptr;  // [K,N] row-major, or [N,K] when trans_b
    bool trans_a = false, trans_b = false;
    void* d = nullptr;        // [M,N], of out_type
    OutType out_type = OutType::BF16;
    const void* c = nullptr;  // added as beta * C, same type and layout as D; nullptr: D itself
    float alpha = 1.f, beta = 0.f;
    int lda = 0, ldb = 0, ldd = 0;  // row strides in elements; 0: packed
    int batch = 1;
    long long stride_a = 0, stride_b = 0, stride_d = 0;  // between batch entries, in elements; 0: packed
};

class Gemm {
public:
    explicit Gemm(size_t workspace_bytes = size_t(32) << 20);
    ~Gemm();
    Gemm(const Gemm&) = delete;
    Gemm& operator=(const Gemm&) = delete;

    void run(const GemmArgs& args, cudaStream_t stream);

private:
    // Everything that decides the descriptors and the algorithm, pointer alignments included.
    using Key = std::tuple<int, int, int, bool, bool, int, int, int, int, long long, long long, long long, int,
                           unsigned, unsigned, unsigned, unsigned>;
    struct Plan {
        cublasLtMatmulDesc_t desc = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
        cublasLtMatmulAlgo_t algo{};
    };
    const Plan& plan(const Key& key);

    cublasLtHandle_t handle_ = nullptr;
    DeviceArray<unsigned char> workspace_;
    std::map<Key, Plan> plans_;
};

}  // namespace pg
