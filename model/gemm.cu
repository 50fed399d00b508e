#include "model/gemm.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace pg {

namespace {

// cuBLASLt's first heuristic choice is often not its fastest kernel for the model's shapes (the
// K = 512 products, the split-K weight gradients), so up to this many are timed once per shape.
constexpr int kCandidates = 16;

// Largest power of two (up to 256) dividing every batch entry's start address and every row
// start: what the heuristic may assume about the operand's alignment.
unsigned alignment(const void* p, long long ld, long long stride, int batch, size_t elem) {
    uint64_t bits = reinterpret_cast<uintptr_t>(p) | uint64_t(ld * elem) | 256u;
    if (batch > 1) bits |= uint64_t(stride * elem);
    return unsigned(bits & (~bits + 1));
}

// A row-major [rows, cols] matrix with row stride ld is, to cuBLASLt, column-major [cols, rows].
cublasLtMatrixLayout_t layout(cudaDataType_t type, int rows, int cols, int ld, int batch, long long stride) {
    cublasLtMatrixLayout_t l;
    PG_CHECK(cublasLtMatrixLayoutCreate(&l, type, uint64_t(cols), uint64_t(rows), int64_t(ld)));
    if (batch > 1) {
        const int32_t n = batch;
        const int64_t s = stride;
        PG_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof n));
        PG_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &s, sizeof s));
    }
    return l;
}

// The chosen algorithm per (device, shape), for the whole process: every Gemm (each model of a
// test, the optimizer's) then runs the same kernel on the same shape and gives the same bits.
template <class Key>
std::map<std::pair<int, Key>, cublasLtMatmulAlgo_t>& tuned() {
    static std::map<std::pair<int, Key>, cublasLtMatmulAlgo_t> m;
    return m;
}

}  // namespace

int half_sms() {
    int dev = 0, sms = 0;
    PG_CHECK(cudaGetDevice(&dev));
    PG_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms > 64 ? sms / 2 : 0;
}

Gemm::Gemm(size_t workspace_bytes) : workspace_(workspace_bytes) { PG_CHECK(cublasLtCreate(&handle_)); }

Gemm::~Gemm() {
    for (auto& kv : plans_) {
        cublasLtMatrixLayoutDestroy(kv.second.a);
        cublasLtMatrixLayoutDestroy(kv.second.b);
        cublasLtMatrixLayoutDestroy(kv.second.d);
        cublasLtMatmulDescDestroy(kv.second.desc);
    }
    cublasLtDestroy(handle_);
}

// Row-major D = op(A) op(B) is column-major D^T = op(B)^T op(A)^T, and cuBLASLt sees each
// row-major operand as its transpose already: so it gets (b, a) in that order, flags unchanged.
const Gemm::Plan& Gemm::plan(const Key& key, const GemmArgs& args, cudaStream_t stream) {
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    const auto [M, N, K, ta, tb, lda, ldb, ldd, batch, sa, sb, sd, out, al_a, al_b, al_c, al_d, sms] = key;
    const cudaDataType_t dt = out == int(OutType::F32) ? CUDA_R_32F : CUDA_R_16BF;
    Plan p;
    p.key = key;
    PG_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    PG_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
    PG_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
    if (sms > 0) {
        const int32_t target = sms;
        PG_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &target, sizeof target));
    }
    p.b = layout(CUDA_R_16BF, tb ? N : K, tb ? K : N, ldb, batch, sb);
    p.a = layout(CUDA_R_16BF, ta ? K : M, ta ? M : K, lda, batch, sa);
    p.d = layout(dt, M, N, ldd, batch, sd);

    cublasLtMatmulPreference_t pref;
    PG_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = workspace_.size();
    PG_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    const uint32_t aligns[4] = {al_b, al_a, al_c, al_d};  // cuBLASLt's A is our b
    const cublasLtMatmulPreferenceAttributes_t which[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; ++i)
        PG_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &aligns[i], sizeof aligns[i]));
    cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.b, p.a, p.d, p.d, pref, kCandidates, results, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0)
        fail("cuBLASLt has no algorithm for a %dx%dx%d GEMM (trans_a %d, trans_b %d, batch %d): %s", M, N, K,
             int(ta), int(tb), batch, cublasGetStatusString(st));
    int dev = 0;
    PG_CHECK(cudaGetDevice(&dev));
    auto& chosen = tuned<Key>();
    const auto at = chosen.find({dev, key});
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    PG_CHECK(cudaStreamIsCapturing(stream, &capturing));
    if (at != chosen.end())
        p.algo = at->second;
    else if (found == 1 || capturing != cudaStreamCaptureStatusNone)  // nothing to choose, or no timing allowed
        p.algo = results[0].algo;
    else
        p.algo = chosen[{dev, key}] = fastest(p, results, found, args, stream);
    return plans_.emplace(key, p).first->second;
}

// Times each candidate on a scratch output (the real one may hold a sum that beta = 1 adds to)
// and returns the fastest. Candidates that fail to launch are passed over. The candidates take
// turns, round after round, and each keeps its best round: timed one after another, three runs
// each, they gave one shape different kernels in different processes (the wo input gradient's
// product ran at 45 us in one profile of the step, at 63 us in another).
cublasLtMatmulAlgo_t Gemm::fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* results, int found,
                                   const GemmArgs& g, cudaStream_t stream) {
    const auto [M, N, K, ta, tb, lda, ldb, ldd, batch, sa, sb, sd, out, al_a, al_b, al_c, al_d, sms] = p.key;
    const size_t out_size = out == int(OutType::F32) ? 4 : 2;
    // Timed alone: what other streams have queued (the model's weight gradients run beside its
    // backward) finishes first.
    PG_CHECK(cudaDeviceSynchronize());
    // Alignment as in the real call: the scratch starts at the real output's offset from 256 bytes.
    const size_t lead = reinterpret_cast<uintptr_t>(g.d) % 256;
    DeviceArray<unsigned char> scratch(lead + (size_t(batch - 1) * sd + size_t(M - 1) * ldd + N) * out_size);
    void* d = scratch.get() + lead;
    PG_CHECK(cudaMemsetAsync(scratch.get(), 0, scratch.size(), stream));
    cudaEvent_t start, stop;
    PG_CHECK(cudaEventCreate(&start));
    PG_CHECK(cudaEventCreate(&stop));
    auto once = [&](const cublasLtMatmulAlgo_t& algo) {
        return cublasLtMatmul(handle_, p.desc, &g.alpha, g.b, p.b, g.a, p.a, &g.beta, d, p.d, d, p.d, &algo,
                              workspace_.get(), workspace_.size(), stream);
    };
    std::vector<float> best(found, INFINITY);
    std::vector<bool> runs(found);
    for (int i = 0; i < found; ++i) runs[i] = once(results[i].algo) == CUBLAS_STATUS_SUCCESS;  // warm-up
    constexpr int kRounds = 5, kReps = 2;
    for (int round = 0; round < kRounds; ++round)
        for (int i = 0; i < found; ++i) {
            if (!runs[i]) continue;
            PG_CHECK(cudaEventRecord(start, stream));
            for (int r = 0; r < kReps; ++r) PG_CHECK(once(results[i].algo));
            PG_CHECK(cudaEventRecord(stop, stream));
            PG_CHECK(cudaEventSynchronize(stop));
            float ms = 0.f;
            PG_CHECK(cudaEventElapsedTime(&ms, start, stop));
            best[i] = std::min(best[i], ms);
        }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    PG_CHECK(cudaStreamSynchronize(stream));  // before the scratch is freed
    return results[std::min_element(best.begin(), best.end()) - best.begin()].algo;
}

void Gemm::run(const GemmArgs& g, cudaStream_t stream) {
    PG_CHECK(g.M > 0 && g.N > 0 && g.K > 0 && g.batch > 0 && g.a && g.b && g.d);
    const size_t out_size = g.out_type == OutType::F32 ? 4 : 2;
    const int lda = g.lda ? g.lda : (g.trans_a ? g.M : g.K);
    const int ldb = g.ldb ? g.ldb : (g.trans_b ? g.K : g.N);
    const int ldd = g.ldd ? g.ldd : g.N;
    const long long sa = g.stride_a ? g.stride_a : (long long)lda * (g.trans_a ? g.K : g.M);
    const long long sb = g.stride_b ? g.stride_b : (long long)ldb * (g.trans_b ? g.N : g.K);
    const long long sd = g.stride_d ? g.stride_d : (long long)ldd * g.M;
    const void* c = g.c ? g.c : g.d;
    const Key key{g.M, g.N, g.K, g.trans_a, g.trans_b, lda, ldb, ldd, g.batch, sa, sb, sd, int(g.out_type),
                  alignment(g.a, lda, sa, g.batch, 2), alignment(g.b, ldb, sb, g.batch, 2),
                  alignment(c, ldd, sd, g.batch, out_size), alignment(g.d, ldd, sd, g.batch, out_size), g.sm_count};
    const Plan& p = plan(key, g, stream);
    PG_CHECK(cublasLtMatmul(handle_, p.desc, &g.alpha, g.b, p.b, g.a, p.a, &g.beta, c, p.d, g.d, p.d, &p.algo,
                            workspace_.get(), workspace_.size(), stream));
}

}  // namespace pg
