#include "model/optim_cuda.cuh"

#include <algorithm>
#include <cmath>

#include "model/optim.h"

namespace pg {

namespace {

constexpr float kNsA = 3.4445f, kNsB = -4.7750f, kNsC = 2.0315f;
constexpr int kThreads = 256;
constexpr size_t kFrobChunk = 16384; // floats per partial sum of a matrix's Frobenius norm
constexpr int kAdamChunk = 4096;

// Sum over the block in a fixed tree order, returned to every thread. `sh` holds one double
// per warp; blockDim.x is a multiple of 32, at most 1024.
__device__ double block_sum(double v, double* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < int(blockDim.x / 32) ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    v = sh[0];
    __syncthreads();
    return v;
}

unsigned grid_for(size_t n) { return unsigned(std::min<size_t>((n + kThreads - 1) / kThreads, 132 * 32)); }

__global__ void sumsq_partial_kernel(const float* x, size_t n, double* partial) {
    __shared__ double sh[32];
    double s = 0;
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        s += double(x[i]) * x[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sumsq_finish_kernel(const double* partial, double* sumsq, bool accumulate) {
    __shared__ double sh[32];
    const double s = block_sum(partial[threadIdx.x], sh);
    if (threadIdx.x == 0) *sumsq = accumulate ? *sumsq + s : s;
}

// clip = {norm, scale}: the CPU's clip_scale on the GPU.
__global__ void clip_kernel(const double* sumsq, float cap, float* clip) {
    const float norm = float(sqrt(*sumsq));
    clip[0] = norm;
    clip[1] = (cap > 0 && norm > cap) ? cap / norm : 1.f;
}

// One block per row: scale by the clip factor, optionally divide by the row norm (MuonEq-R),
// momentum and Nesterov. u is the Newton-Schulz input.
__global__ void muon_prep_kernel(const float* g, float* m, float* u, int cols, const float* clip, float mu,
                                 bool row_norm) {
    __shared__ double sh[32];
    const size_t base = size_t(blockIdx.x) * cols;
    g += base, m += base, u += base;
    const float s = clip[1];
    float denom = 1.f;
    if (row_norm) {
        double ss = 0;
        for (int k = threadIdx.x; k < cols; k += blockDim.x) {
            const float x = g[k] * s;
            ss += double(x) * x;
        }
        denom = float(sqrt(block_sum(ss, sh))) + 1e-7f;
    }
    for (int k = threadIdx.x; k < cols; k += blockDim.x) {
        float x = g[k] * s;
        if (row_norm) x /= denom;
        const float mk = mu * m[k] + x;
        m[k] = mk;
        u[k] = x + mu * mk;
    }
}

// f(i, n) for the n elements [i, i + n) of chunk c of a matrix, a thread's share in order. Where
// numel is a multiple of 4 (every model's banks), each matrix, and so each chunk, starts on a
// 16-byte boundary of the (cudaMalloc-aligned) bank, and a thread takes 4 elements at a time,
// several loads in flight: read one float at a time, these passes ran at 0.8-1.3 TB/s, and a
// bank of one small matrix (4 blocks) took 29 us.
template <class F>
__device__ __forceinline__ void frob_chunk(size_t numel, unsigned c, F&& f) {
    const size_t end = std::min(numel, (c + 1) * kFrobChunk);
    if (numel % 4 == 0) {
#pragma unroll 4
        for (size_t i = c * kFrobChunk + 4 * threadIdx.x; i < end; i += 4 * blockDim.x) f(i, 4);
    } else {
        for (size_t i = c * kFrobChunk + threadIdx.x; i < end; i += blockDim.x) f(i, 1);
    }
}

// Block (c, b): the sum of squares of chunk c of matrix b.
__global__ void frob_partial_kernel(const float* U, size_t numel, double* partial) {
    __shared__ double sh[32];
    const float* x = U + size_t(blockIdx.y) * numel;
    double s = 0;
    frob_chunk(numel, blockIdx.x, [&](size_t i, int n) {
        if (n == 4) {
            const float4 v = *reinterpret_cast<const float4*>(x + i);
            s += double(v.x) * v.x + double(v.y) * v.y + double(v.z) * v.z + double(v.w) * v.w;
        } else {
            s += double(x[i]) * x[i];
        }
    });
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[size_t(blockIdx.y) * gridDim.x + blockIdx.x] = s;
}

// X = U / (||U||_F + 1e-7) per matrix, rounded to bf16. Every thread adds its matrix's
// partials itself, in order: a few dozen cached reads, and no extra launch.
__global__ void frob_normalize_kernel(const float* U, size_t numel, const double* partial, bf16* X) {
    double ss = 0;
    for (unsigned c = 0; c < gridDim.x; ++c) ss += partial[size_t(blockIdx.y) * gridDim.x + c];
    const float denom = float(sqrt(ss)) + 1e-7f;
    const float* u = U + size_t(blockIdx.y) * numel;
    bf16* x = X + size_t(blockIdx.y) * numel;
    frob_chunk(numel, blockIdx.x, [&](size_t i, int n) {
        if (n == 4) {
            const float4 v = *reinterpret_cast<const float4*>(u + i);
            __nv_bfloat162 o[2] = {__floats2bfloat162_rn(v.x / denom, v.y / denom),
                                   __floats2bfloat162_rn(v.z / denom, v.w / denom)};
            *reinterpret_cast<uint2*>(x + i) = *reinterpret_cast<const uint2*>(o);
        } else {
            x[i] = __float2bfloat16(u[i] / denom);
        }
    });
}

// W = W * decay - step_size * O, and its bf16 copy.
__global__ void muon_apply_kernel(float* W, bf16* Wb, const bf16* O, size_t n, float decay, float step_size) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        const float w = W[i] * decay - step_size * __bfloat162float(O[i]);
        W[i] = w;
        Wb[i] = __float2bfloat16(w);
    }
}

struct AdamArgs {
    float b1, b2, eps, bc1, bc2, lr_embed, lr_scalar, wd;
};

__global__ void adam_kernel(const CudaOptimizer::AdamBlock* blocks, float* P, bf16* Pb, const float* G, float* M, float* V,
                            const float* clip, AdamArgs a) {
    const CudaOptimizer::AdamBlock blk = blocks[blockIdx.x];
    const float lr = blk.embedding ? a.lr_embed : a.lr_scalar;
    const float decay = 1.f - lr * a.wd, s = clip[1];
    for (int i = threadIdx.x; i < blk.n; i += blockDim.x) {
        const size_t e = blk.param + i, k = blk.state + i;
        const float gi = G[e] * s;
        const float m = a.b1 * M[k] + (1.f - a.b1) * gi;
        const float v = a.b2 * V[k] + (1.f - a.b2) * gi * gi;
        M[k] = m;
        V[k] = v;
        const float p = P[e] * decay - lr * (m / a.bc1) / (sqrtf(v / a.bc2) + a.eps);
        P[e] = p;
        Pb[e] = __float2bfloat16(p);
    }
}

__global__ void to_bf16_kernel(const float* x, bf16* y, size_t n) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}

// ema = d * ema + (1 - d) * p and swa += (p - swa) * w, each only where its pointer is set.
__global__ void average_kernel(const float* p, float* ema, float d, float* swa, float w, size_t n) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        const float x = p[i];
        if (ema) ema[i] = d * ema[i] + (1.f - d) * x;
        if (swa) swa[i] += (x - swa[i]) * w;
    }
}

}  // namespace

NewtonSchulzCuda::NewtonSchulzCuda(size_t max_numel, size_t max_gram, int max_count)
    : x_{DeviceArray<bf16>(max_numel), DeviceArray<bf16>(max_numel)},
      gram_(max_gram),
      poly_(max_gram),
      partial_(max_numel / kFrobChunk + size_t(max_count)) {}

const bf16* NewtonSchulzCuda::run(Gemm& gemm, const float* U, int count, int rows, int cols, int steps,
                                  cudaStream_t stream, int sm_count) {
    const bool tall = rows > cols;
    const int m = tall ? cols : rows, n = tall ? rows : cols;
    const size_t numel = size_t(rows) * cols;
    const unsigned chunks = unsigned((numel + kFrobChunk - 1) / kFrobChunk);
    PG_CHECK(count >= 1 && steps >= 1);
    PG_CHECK(count * numel <= x_[0].size() && size_t(count) * m * m <= gram_.size() &&
             size_t(count) * chunks <= partial_.size());

    const dim3 grid(chunks, unsigned(count));
    frob_partial_kernel<<<grid, kThreads, 0, stream>>>(U, numel, partial_.get());
    PG_CHECK_LAUNCH();
    frob_normalize_kernel<<<grid, kThreads, 0, stream>>>(U, numel, partial_.get(), x_[0].get());
    PG_CHECK_LAUNCH();

    int cur = 0;
    for (int s = 0; s < steps; ++s) {
        bf16* X = x_[cur].get();
        GemmArgs g;  // A = X X^T (wide) or X^T X (tall), [m, m]
        g.M = g.N = m;
        g.K = n;
        g.a = g.b = X;
        g.trans_a = tall;
        g.trans_b = !tall;
        g.d = gram_.get();
        g.batch = count;
        g.sm_count = sm_count;
        g.stride_a = g.stride_b = (long long)numel;
        g.stride_d = (long long)m * m;
        gemm.run(g, stream);

        GemmArgs p;  // P = c A A + b A
        p.M = p.N = p.K = m;
        p.a = p.b = gram_.get();
        p.c = gram_.get();
        p.d = poly_.get();
        p.alpha = kNsC;
        p.beta = kNsB;
        p.batch = count;
        p.sm_count = sm_count;
        gemm.run(p, stream);

        GemmArgs x;  // X <- a X + P X (wide) or a X + X P (tall)
        x.M = rows;
        x.N = cols;
        x.K = m;
        x.a = tall ? X : poly_.get();
        x.b = tall ? poly_.get() : X;
        x.c = X;
        x.d = x_[cur ^ 1].get();
        x.beta = kNsA;
        x.batch = count;
        x.sm_count = sm_count;
        x.stride_a = tall ? (long long)numel : (long long)m * m;
        x.stride_b = tall ? (long long)m * m : (long long)numel;
        gemm.run(x, stream);
        cur ^= 1;
    }
    return x_[cur].get();
}

namespace {

size_t muon_numel(const ParamLayout& L) {
    size_t n = 0;
    for (const Bank& b : L.banks) n += size_t(b.count) * b.rows * b.cols;
    return n;
}

}  // namespace

void sum_squares_cuda(const float* x, size_t n, double* partial, double* sumsq, bool accumulate, cudaStream_t stream) {
    sumsq_partial_kernel<<<kSumSquaresBlocks, kThreads, 0, stream>>>(x, n, partial);
    PG_CHECK_LAUNCH();
    sumsq_finish_kernel<<<1, kSumSquaresBlocks, 0, stream>>>(partial, sumsq, accumulate);
    PG_CHECK_LAUNCH();
}

CudaOptimizer::Lane::Lane(size_t numel, size_t gram, int count) : u(numel), ns(numel, gram, count) {
    PG_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    PG_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
}

CudaOptimizer::Lane::~Lane() {
    if (done) cudaEventDestroy(done);
    if (stream) cudaStreamDestroy(stream);
}

CudaOptimizer::CudaOptimizer(const ParamLayout& layout, const TrainConfig& cfg, cudaStream_t stream)
    : layout_(layout),
      cfg_(cfg),
      stream_(stream),
      muon_m_(muon_numel(layout)),
      sumsq_(1),
      partial_(kSumSquaresBlocks),
      clip_(2) {
    (void)Optimizer(ParamLayout{}, cfg);  // the CPU optimizer's checks of the flags, on an empty layout
    size_t muon_n = 0, adam_n = 0;
    for (const Bank& b : layout_.banks) {
        bank_state_.push_back(muon_n);
        muon_n += size_t(b.count) * b.rows * b.cols;
        const size_t m = size_t(std::min(b.rows, b.cols));
        lanes_.emplace_back(new Lane(size_t(b.count) * b.rows * b.cols, size_t(b.count) * m * m, b.count));
    }
    PG_CHECK(cudaEventCreateWithFlags(&clipped_, cudaEventDisableTiming));
    // Planned for all SMs, each bank's products fill the GPU and the lanes take turns; planned for
    // half, two banks' products run side by side. On an H100 (132 SMs) the optimizer took
    // 1.32-1.34 ms at 50, 66 or 80 against 1.44-1.48 at all; 33 gained nothing
    // (docs/benchmarks/logs/2026-11-25_session29/call5, call6). Small GPUs and a single bank keep
    // them all.
    ns_sms_ = lanes_.size() > 1 ? half_sms() : 0;
    std::vector<AdamBlock> blocks;
    for (const ParamSpec& p : layout_.params) {
        if (p.kind == ParamKind::Matrix) continue;
        for (size_t s = 0; s < p.numel(); s += kAdamChunk)
            blocks.push_back({p.offset + s, adam_n + s, int(std::min<size_t>(kAdamChunk, p.numel() - s)),
                              p.kind == ParamKind::Embedding});
        adam_n += p.numel();
    }
    n_adam_blocks_ = int(blocks.size());
    adam_blocks_ = DeviceArray<AdamBlock>(blocks);
    adam_m_ = DeviceArray<float>(adam_n);
    adam_v_ = DeviceArray<float>(adam_n);
    PG_CHECK(cudaMemsetAsync(muon_m_.get(), 0, muon_m_.size() * sizeof(float), stream_));
    PG_CHECK(cudaMemsetAsync(adam_m_.get(), 0, adam_n * sizeof(float), stream_));
    PG_CHECK(cudaMemsetAsync(adam_v_.get(), 0, adam_n * sizeof(float), stream_));
}

CudaOptimizer::~CudaOptimizer() {
    if (clipped_) cudaEventDestroy(clipped_);
}

void CudaOptimizer::step(float* params, bf16* params_bf16, const float* grads, float lr_scale, int step) {
    grad_sumsq(grads, layout_.total, false);
    finish_clip();
    for (int b = 0; b < int(layout_.banks.size()); ++b)
        muon_update_bank_slice(b, 0, layout_.banks[b].count, params, params_bf16, grads, lr_scale, step);
    adam_update(params, params_bf16, grads, lr_scale);
    join_muon();
}

void CudaOptimizer::grad_sumsq(const float* x, size_t n, bool accumulate) {
    sum_squares_cuda(x, n, partial_.get(), sumsq_.get(), accumulate, stream_);
}

void CudaOptimizer::finish_clip() {
    clip_kernel<<<1, 1, 0, stream_>>>(sumsq_.get(), cfg_.grad_clip, clip_.get());
    PG_CHECK_LAUNCH();
    PG_CHECK(cudaEventRecord(clipped_, stream_));
}

// A lane that took no update since the last join holds an event already waited for (or never
// recorded): waiting on it again costs nothing.
void CudaOptimizer::join_muon() {
    for (auto& lane : lanes_) PG_CHECK(cudaStreamWaitEvent(stream_, lane->done, 0));
}

float CudaOptimizer::grad_norm() const {
    float norm = 0;
    PG_CHECK(cudaMemcpyAsync(&norm, clip_.get(), sizeof norm, cudaMemcpyDeviceToHost, stream_));
    PG_CHECK(cudaStreamSynchronize(stream_));
    return norm;
}

void CudaOptimizer::muon_update_bank_slice(int bank, int first, int count, float* params, bf16* params_bf16,
                                           const float* grads, float lr_scale, int step) {
    PG_CHECK(bank >= 0 && bank < int(layout_.banks.size()));
    const Bank& B = layout_.banks[bank];
    PG_CHECK(first >= 0 && count >= 0 && first + count <= B.count);
    if (count == 0) return;
    const size_t numel = size_t(B.rows) * B.cols, begin = B.offset + size_t(first) * numel;
    float* mom = muon_m_.get() + bank_state_[bank] + size_t(first) * numel;
    Lane& L = *lanes_[bank];
    const cudaStream_t st = L.stream;
    PG_CHECK(cudaStreamWaitEvent(st, clipped_, 0));
    muon_prep_kernel<<<unsigned(count * B.rows), 128, 0, st>>>(grads + begin, mom, L.u.get(), B.cols, clip_.get(),
                                                              muon_momentum_at(step, cfg_), cfg_.muon_row_norm);
    PG_CHECK_LAUNCH();
    const bf16* O = L.ns.run(L.gemm, L.u.get(), count, B.rows, B.cols, cfg_.ns_steps, st, ns_sms_);

    const float lr = cfg_.matrix_lr * lr_scale;
    const float decay = 1.f - lr * cfg_.muon_wd;
    const float step_size = lr * std::sqrt(std::max(1.f, float(B.rows) / float(B.cols)));
    const size_t n = count * numel;
    muon_apply_kernel<<<grid_for(n), kThreads, 0, st>>>(params + begin, params_bf16 + begin, O, n, decay, step_size);
    PG_CHECK_LAUNCH();
    PG_CHECK(cudaEventRecord(L.done, st));
}

void CudaOptimizer::adam_update(float* params, bf16* params_bf16, const float* grads, float lr_scale) {
    ++adam_t_;
    if (n_adam_blocks_ == 0) return;
    AdamArgs a;
    a.b1 = cfg_.adam_beta1;
    a.b2 = cfg_.adam_beta2;
    a.eps = cfg_.adam_eps;
    a.bc1 = float(1.0 - std::pow(double(a.b1), double(adam_t_)));
    a.bc2 = float(1.0 - std::pow(double(a.b2), double(adam_t_)));
    a.lr_embed = cfg_.embed_lr * lr_scale;
    a.lr_scalar = cfg_.scalar_lr * lr_scale;
    a.wd = cfg_.adam_wd;
    adam_kernel<<<n_adam_blocks_, kThreads, 0, stream_>>>(adam_blocks_.get(), params, params_bf16, grads,
                                                          adam_m_.get(), adam_v_.get(), clip_.get(), a);
    PG_CHECK_LAUNCH();
}

namespace {

// Whole-array copies between a host vector and a device array of the same length; `what`
// names the state in the message when the lengths differ.
void upload_exact(DeviceArray<float>& to, const std::vector<float>& from, const char* what) {
    if (from.size() != to.size())
        fail("%s: %zu values given where this model needs %zu", what, from.size(), to.size());
    to.upload(from);
}

}  // namespace

OptimizerState CudaOptimizer::state() const {
    PG_CHECK(cudaStreamSynchronize(stream_));
    OptimizerState s;
    s.adam_t = adam_t_;
    s.muon_m = muon_m_.download();
    s.adam_m = adam_m_.download();
    s.adam_v = adam_v_.download();
    return s;
}

void CudaOptimizer::set_state(const OptimizerState& s) {
    PG_CHECK(cudaStreamSynchronize(stream_));
    upload_exact(muon_m_, s.muon_m, "optimizer state (Muon momentum)");
    upload_exact(adam_m_, s.adam_m, "optimizer state (Adam first moment)");
    upload_exact(adam_v_, s.adam_v, "optimizer state (Adam second moment)");
    adam_t_ = s.adam_t;
}

void CudaOptimizer::refresh_bf16(const float* params, bf16* params_bf16, size_t offset, size_t n) {
    if (n == 0) return;
    to_bf16_kernel<<<grid_for(n), kThreads, 0, stream_>>>(params + offset, params_bf16 + offset, n);
    PG_CHECK_LAUNCH();
}

CudaWeightAverage::CudaWeightAverage(size_t n, const TrainConfig& cfg, cudaStream_t stream)
    : n_(n), decay_(cfg.ema_decay), swa_every_(cfg.swa_every), stream_(stream) {
    (void)WeightAverage(0, cfg);  // the CPU class's checks of the flags, on no weights
    // Zeroed, as on the CPU: the first EMA update multiplies the old value by 0, and 0 * NaN is NaN.
    if (decay_ > 0) {
        ema_ = DeviceArray<float>(n_);
        PG_CHECK(cudaMemsetAsync(ema_.get(), 0, n_ * sizeof(float), stream_));
    }
    if (cfg.swa_from > 0) {
        swa_ = DeviceArray<float>(n_);
        PG_CHECK(cudaMemsetAsync(swa_.get(), 0, n_ * sizeof(float), stream_));
    }
}

AverageState CudaWeightAverage::state() const {
    PG_CHECK(cudaStreamSynchronize(stream_));
    AverageState s;
    s.ema_steps = ema_steps_;
    s.swa_count = swa_count_;
    s.ema = ema_.download();
    s.swa = swa_.download();
    return s;
}

void CudaWeightAverage::set_state(const AverageState& s) {
    PG_CHECK(cudaStreamSynchronize(stream_));
    upload_exact(ema_, s.ema, "weight-average state (EMA)");
    upload_exact(swa_, s.swa, "weight-average state (SWA)");
    ema_steps_ = s.ema_steps;
    swa_count_ = s.swa_count;
}

void CudaWeightAverage::update(const float* params, int step, bool swa_active) {
    float* ema = ema_.get();
    const float d = ema_steps_ == 0 ? 0.f : decay_;
    float* swa = nullptr;
    float w = 0;
    if (swa_.get() && swa_active && step % swa_every_ == 0) {
        swa = swa_.get();
        w = 1.f / float(++swa_count_);
    }
    if (ema) ++ema_steps_;
    if (!ema && !swa) return;
    average_kernel<<<grid_for(n_), kThreads, 0, stream_>>>(params, ema, d, swa, w, n_);
    PG_CHECK_LAUNCH();
}

}  // namespace pg
