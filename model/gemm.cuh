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
// Each distinct shape gets its descriptors once and the fastest of cuBLASLt's candidate
// algorithms, timed on its first call; later calls reuse them.
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

#include "common/cuda_check.cuh"

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
    // SMs the product should plan for (cuBLASLt's SM count target): fewer than the GPU's leaves
    // the rest to kernels on another stream. 0: all.
    int sm_count = 0;
};

// The SM count target (GemmArgs::sm_count) for products that run beside other work on the
// GPU: half of the current device's SMs, so that the rest stays free for it; 0 (all) on GPUs of
// 64 SMs or fewer.
int half_sms();

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
                           unsigned, unsigned, unsigned, unsigned, int>;
    struct Plan {
        cublasLtMatmulDesc_t desc = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
        cublasLtMatmulAlgo_t algo{};
        Key key;
    };
    const Plan& plan(const Key& key, const GemmArgs& args, cudaStream_t stream);
    cublasLtMatmulAlgo_t fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* results, int found,
                                 const GemmArgs& args, cudaStream_t stream);

    cublasLtHandle_t handle_ = nullptr;
    DeviceArray<unsigned char> workspace_;
    std::map<Key, Plan> plans_;
};

}  // namespace pg
