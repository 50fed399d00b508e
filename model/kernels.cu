// The kernels of model/kernels.cuh. All of them are memory-bound, so they share one shape:
// each thread moves 8 values at a time (16-byte accesses where the address allows, scalar
// ones otherwise, so that any row size and offset works), row statistics are reduced with
// warp shuffles, and parameter gradients that sum over rows go through per-block partial
// sums and a second pass, both in a fixed order, so that a step is reproducible bit for bit
// on one GPU model (the kernels that loop over rows size their grids to fill the device once).
#include "model/kernels.cuh"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cuda_check.cuh"  // PG_CHECK for CUDA calls, DeviceArray
#include "model/atomics.cuh"
#include "model/head_vec.cuh"  // ld8, st8, group_sum, rope8 and the rest of a head vector's arithmetic
#include "model/wgmma.cuh"  // cp.async, shared-memory addresses
#include "model/ops_ref.h"  // kRmsEps, kXsaNormFloor: the oracle's constants are the kernels' too

namespace pg {
namespace {

constexpr int kThreads = 256;

// p[j] += v[j] for j < cnt by fp32 atomics, two vectors of 4 where the chunk is whole and aligned.
__device__ __forceinline__ void atomic_add8(float* p, const float (&v)[8], int cnt) {
    if (cnt >= 8 && aligned16(p)) {
        atomic_add4(p, make_float4(v[0], v[1], v[2], v[3]));
        atomic_add4(p + 4, make_float4(v[4], v[5], v[6], v[7]));
        return;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
        if (j < cnt) atomicAdd(p + j, v[j]);
}

// v[j] = the bf16 value nearest v[j]: what a store to bf16 and a load back give.
__device__ __forceinline__ void round_bf16(float (&v)[8]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = __bfloat162float(__float2bfloat16_rn(v[j]));
}

// ---- loads issued ahead: a row loop's chunks of 8 values, fetched by cp.async into the
// thread's own shared-memory slots S iterations before their use, so that many loads are in
// flight without holding registers (fetched ahead, qkv_prep's backward went from 249 to 227 us
// at the record shape). A thread reads only its own slots, so no barrier is needed. A loop
// fetches its first S iterations, then each iteration waits, takes its chunks, and fetches
// iteration it + S into the slots it has just used up. Chunks that are partial or not 16-byte
// aligned are read from global memory when taken. ----

template <int S, int P>  // S iterations ahead, P 16-byte pieces an iteration
struct Ahead {
    static constexpr int kAhead = S;
    __host__ __device__ static size_t bytes(int threads) { return size_t(S) * P * threads * 16; }
    uint32_t mine;  // this thread's piece 0 of stage 0
    __device__ explicit Ahead(const void* smem) : mine(smem_addr(smem) + threadIdx.x * 16) {}
    __device__ uint32_t slot(int it, int q) const { return mine + ((it % S) * P + q) * blockDim.x * 16; }
    template <typename T>
    __device__ static bool whole(const T* p, int cnt) {
        return cnt >= 8 && aligned16(p);
    }
    // 8 values of T at p into pieces q.. of iteration it (bf16 one piece, fp32 two).
    template <typename T>
    __device__ void fetch(int it, int q, const T* p, int cnt) const {
        constexpr int n = sizeof(T) / 2;
        if (whole(p, cnt))
#pragma unroll
            for (int k = 0; k < n; ++k) cp_async16(slot(it, q + k), p + k * 8 / n, true);
    }
    __device__ static void commit() { cp_async_commit(); }
    __device__ static void wait() { cp_async_wait<S - 1>(); }  // this iteration's group landed
    template <typename T>
    __device__ void take(float (&v)[8], int it, int q, const T* p, int cnt) const {
        if (!whole(p, cnt)) {
            ld8(v, p, cnt);
        } else if constexpr (sizeof(T) == 2) {
            unpack8(v, lds16(slot(it, q)));
        } else {
            const uint4 a = lds16(slot(it, q)), b = lds16(slot(it, q + 1));
            const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = __uint_as_float(w[j]);
        }
    }
};

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + expf(-x)); }

// ---- reductions, all in a fixed order (xor butterflies give every lane the same sum) ----


// Sum over the block, returned to every thread; blockDim.x is a multiple of 32.
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    v = group_sum(v, 32);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = group_sum(lane < int(blockDim.x / 32) ? sh[lane] : 0.f, 32);
    __syncthreads();  // sh is free for the next call
    return v;
}

// The partial sums of a kernel's blocks, partial[p * ld + c] for parts p and columns c < C,
// into out[c * wstride] (+=): per column when wstride is 1, all into out[0] when it is 0.
// Up to kMaxSums such sums (same wstride; the launch's parts and ld, or a sum's own) take one
// launch, blockIdx.y picking the sum: a launch costs more than these few reads. Block (32, 32): 32 columns, each
// summed by 32 threads in 4 interleaved running sums (loads in flight), then across the
// threads; every order is fixed. With wstride 0 the one block takes every column, thread
// (x, y) the parts y mod 32 and columns x mod 32.
constexpr int kMaxSums = 8;
struct PartialSums {
    float* out[kMaxSums] = {};
    const float* partial[kMaxSums] = {};
    int C[kMaxSums] = {};
    int parts[kMaxSums] = {}, ld[kMaxSums] = {};  // a sum's own, where not 0; else the launch's
    int n = 0;
    void add(float* o, const float* p, int c, int own_parts = 0, int own_ld = 0) {
        PG_CHECK(n < kMaxSums);
        out[n] = o, partial[n] = p, C[n] = c, parts[n] = own_parts, ld[n++] = own_ld;
    }
};

__global__ void __launch_bounds__(1024) finish_kernel(const PartialSums f, int parts, int ld, int wstride) {
    __shared__ float sh[32][33];
    float* out = f.out[blockIdx.y];
    const float* partial = f.partial[blockIdx.y];
    const int C = f.C[blockIdx.y];
    if (f.parts[blockIdx.y]) parts = f.parts[blockIdx.y], ld = f.ld[blockIdx.y];
    if (wstride && int(blockIdx.x) * 32 >= C) return;  // the whole block: a shorter sum than the grid's widest
    const int x = threadIdx.x, y = threadIdx.y, c = blockIdx.x * 32 + x;
    float s[4] = {};
    if (wstride) {
        if (c < C)
            for (int p = y; p < parts; p += 128)
#pragma unroll
                for (int k = 0; k < 4; ++k)
                    if (p + 32 * k < parts) s[k] += partial[size_t(p + 32 * k) * ld + c];
    } else {
        for (int p = y; p < parts; p += 32)
            for (int c = x; c < C; c += 128)
#pragma unroll
                for (int k = 0; k < 4; ++k)
                    if (c + 32 * k < C) s[k] += partial[size_t(p) * ld + c + 32 * k];
    }
    sh[y][x] = (s[0] + s[1]) + (s[2] + s[3]);
    __syncthreads();
    if (y == 0) {
        float t = 0.f;
        for (int k = 0; k < 32; ++k) t += sh[k][x];
        if (wstride) {
            if (c < C) out[c] += t;
        } else {
            t = group_sum(t, 32);
            if (x == 0) out[0] += t;
        }
    }
}

void finish_partials(const PartialSums& f, int parts, int ld, int wstride, cudaStream_t stream) {
    if (f.n == 0) return;
    const int C = *std::max_element(f.C, f.C + f.n);
    finish_kernel<<<dim3(wstride ? (C + 31) / 32 : 1, f.n), dim3(32, 32), 0, stream>>>(f, parts, ld, wstride);
    PG_CHECK_LAUNCH();
}

// Room for the partial sums: a buffer per device, grown on demand. A grown buffer replaces
// the old one for later calls, but the old one is kept, never freed: a captured CUDA graph
// holds its address (and a free would wait for the device, which a capture forbids), so a
// caller that captures runs its work once first to grow it. Calls that use it are ordered
// on one stream.
float* scratch(size_t n) {
    static std::vector<std::vector<DeviceArray<float>>> buffers;
    int dev = 0;
    PG_CHECK(cudaGetDevice(&dev));
    if (buffers.size() <= size_t(dev)) buffers.resize(dev + 1);
    auto& mine = buffers[dev];
    if (mine.empty() || mine.back().size() < n) mine.emplace_back(n);
    return mine.back().get();
}

// Blocks for a kernel that loops over its work: as many as the device holds at once, so that
// they all run in one wave and none waits for a last, part-empty one (qkv_prep's backward ran
// 2.6 waves of a fixed 1,024-block grid, its last wave 60% idle), or `work` when that is fewer.
// The count, and with it the order of any per-block partial sums, depends on the device and the
// kernel, never on the data.
template <class Kernel>
int one_wave(Kernel kernel, int threads, size_t smem, int work) {
    int dev = 0, sms = 0, per_sm = 0;
    PG_CHECK(cudaGetDevice(&dev));
    PG_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    PG_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    return std::max(1, std::min(work, sms * std::max(per_sm, 1)));
}

// ---- flat elementwise passes: op(i, cnt) handles elements [i, i + cnt), cnt <= 8 ----

template <class Op>
__global__ void __launch_bounds__(kThreads) flat_kernel(const Op op, size_t n) {
    for (size_t i = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8; i < n; i += size_t(gridDim.x) * blockDim.x * 8)
        op(i, n - i < 8 ? int(n - i) : 8);
}

template <class Op>
void launch_flat(const Op& op, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    const size_t blocks = std::min<size_t>((n + kThreads * 8 - 1) / (kThreads * 8), size_t(1) << 16);
    flat_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(op, n);
    PG_CHECK_LAUNCH();
}

// The factor of convert's and accumulate's element i (kernels.cuh): v[i / row], v[0] (row 0),
// or none. A chunk of 8 never straddles two rows (row % 8 == 0).
struct Factor {
    const float* v;
    size_t row;
    __device__ void apply(float (&x)[8], size_t i) const {
        if (!v) return;
        const float k = v[row ? i / row : 0];
#pragma unroll
        for (int j = 0; j < 8; ++j) x[j] *= k;
    }
};

template <typename Src, typename Dst>
struct ConvertOp {
    Dst* dst;
    const Src* src;
    Factor k;
    __device__ void operator()(size_t i, int cnt) const {
        float v[8];
        ld8(v, src + i, cnt);
        k.apply(v, i);
        st8(dst + i, v, cnt);
    }
};

template <typename Src, typename Dst>
struct AccumulateOp {
    Dst* dst;
    const Src* src;
    Factor k;
    __device__ void operator()(size_t i, int cnt) const {
        float v[8];
        ld8(v, src + i, cnt);
        k.apply(v, i);
        add8(dst + i, v, cnt);
    }
};

// scaled_rows_backward: one block a row, thread i the chunks of 8 columns at (k * 128 + i) * 8.
constexpr int kRowThreads = 128;
__global__ void __launch_bounds__(kRowThreads) scaled_rows_backward_kernel(float* dW, float* ds, const float* g,
                                                                             const bf16* W, const float* s, int cols) {
    const size_t o = size_t(blockIdx.x) * cols;
    const float k = s[blockIdx.x];
    float dot = 0.f;
    for (int c = threadIdx.x * 8; c < cols; c += kRowThreads * 8) {
        float gv[8], wv[8];
        ld8(gv, g + o + c, cols - c);
        ld8(wv, W + o + c, cols - c);
        dot += dot8(gv, wv);
#pragma unroll
        for (int j = 0; j < 8; ++j) gv[j] *= k;
        add8(dW + o + c, gv, cols - c);
    }
    dot = block_sum(dot);
    if (threadIdx.x == 0) ds[blockIdx.x] += dot;
}

struct LeakyRelu2Forward {
    bf16* out;
    const bf16* inp;
    float slope;
    __device__ void operator()(size_t i, int cnt) const {
        float v[8];
        ld8(v, inp + i, cnt);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float z = v[j] > 0.f ? v[j] : slope * v[j];
            v[j] = z * z;
        }
        st8(out + i, v, cnt);
    }
};

struct LeakyRelu2Backward {
    bf16* dinp;
    const bf16* dout;
    const bf16* inp;
    float slope;
    __device__ void operator()(size_t i, int cnt) const {
        float x[8], g[8];
        ld8(x, inp + i, cnt);
        ld8(g, dout + i, cnt);
#pragma unroll
        for (int j = 0; j < 8; ++j) g[j] *= 2.f * x[j] * (x[j] > 0.f ? 1.f : slope * slope);
        st8(dinp + i, g, cnt);
    }
};

// ---- row passes over [N, C]: each thread takes a chunk of 8 columns and a stride of rows ----
// An op has kGrads (the number of parameter gradients it sums over rows), a per-thread column
// state `Cols cols(c0, cnt)` (weights read once, not once per row), and
// op(cols, n, c0, cnt, acc), which does row n's chunk and adds its parameter-gradient terms
// to acc[g][j]. Threads sum their rows, the block its threads, into partial[g][blockIdx.y][C].

template <int K>
using Acc = float[K > 0 ? K : 1][8];

struct NoCols {
    struct Cols {};
    __device__ Cols cols(int, int) const { return {}; }
};

// A per-column weight over a chunk's columns.
struct Weights {
    float v[8];
};

template <class Op>
__global__ void __launch_bounds__(kThreads) rows_kernel(const Op op, int N, int C, float* partial) {
    constexpr int kG = Op::kGrads;
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8, cnt = C - c0;
    Acc<kG> acc = {};
    if (cnt > 0) {
        const typename Op::Cols w = op.cols(c0, cnt);
        for (int n = blockIdx.y * blockDim.y + threadIdx.y; n < N; n += gridDim.y * blockDim.y) op(w, n, c0, cnt, acc);
    }
    if constexpr (kG > 0) {
        __shared__ float sh[kG][kThreads * 8];
        const int t = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
        for (int g = 0; g < kG; ++g)
#pragma unroll
            for (int j = 0; j < 8; ++j) sh[g][t * 8 + j] = acc[g][j];
        __syncthreads();
        if (threadIdx.y == 0 && cnt > 0)
            for (int g = 0; g < kG; ++g)
                for (int j = 0; j < 8 && j < cnt; ++j) {
                    float s = 0.f;
                    for (int y = 0; y < int(blockDim.y); ++y) s += sh[g][(y * blockDim.x + threadIdx.x) * 8 + j];
                    partial[(size_t(g) * gridDim.y + blockIdx.y) * C + c0 + j] = s;
                }
    }
}

// Launches op over [N, C]; then adds each summed parameter gradient into dw[g][c * wstride].
template <class Op>
void launch_rows(const Op& op, int N, int C, cudaStream_t stream, std::array<float*, Op::kGrads> dw = {},
                 int wstride = 1) {
    if (N <= 0 || C <= 0) return;
    const int chunks = (C + 7) / 8;
    int tx = 1;
    while (tx < chunks && tx < 32) tx *= 2;
    const int ty = kThreads / tx, cx = (chunks + tx - 1) / tx;
    const int parts = std::max(1, one_wave(rows_kernel<Op>, kThreads, 0, cx * ((N + ty - 1) / ty)) / cx);
    float* partial = Op::kGrads ? scratch(size_t(Op::kGrads) * parts * C) : nullptr;
    rows_kernel<<<dim3(cx, parts), dim3(tx, ty), 0, stream>>>(op, N, C, partial);
    PG_CHECK_LAUNCH();
    PartialSums f;
    for (int g = 0; g < Op::kGrads; ++g) f.add(dw[g], partial + size_t(g) * parts * C, C);
    finish_partials(f, parts, C, wstride, stream);
}

template <typename Out>
struct EmbeddingForward : NoCols {
    static constexpr int kGrads = 0;
    Out* out;
    const int32_t* idx;
    const float* table;
    int C;
    __device__ void operator()(Cols, int n, int c0, int cnt, Acc<0>&) const {
        float v[8];
        ld8(v, table + size_t(idx[n]) * C + c0, cnt);
        st8(out + size_t(n) * C + c0, v, cnt);
    }
};

template <typename G>
struct EmbeddingBackward : NoCols {
    static constexpr int kGrads = 0;
    float* dtable;
    const int32_t* idx;
    const G* dout;
    int C;
    __device__ void operator()(Cols, int n, int c0, int cnt, Acc<0>&) const {
        float v[8];
        ld8(v, dout + size_t(n) * C + c0, cnt);
        atomic_add8(dtable + size_t(idx[n]) * C + c0, v, cnt);
    }
};

// Rows of inp are [a | b], 2 * hidden values; C = hidden.
struct SwigluForward : NoCols {
    static constexpr int kGrads = 0;
    bf16* out;
    const bf16* inp;
    int hidden;
    __device__ void operator()(Cols, int n, int c0, int cnt, Acc<0>&) const {
        const bf16* a = inp + size_t(n) * 2 * hidden + c0;
        float va[8], vb[8];
        ld8(va, a, cnt);
        ld8(vb, a + hidden, cnt);
#pragma unroll
        for (int j = 0; j < 8; ++j) va[j] = va[j] * sigm(va[j]) * vb[j];
        st8(out + size_t(n) * hidden + c0, va, cnt);
    }
};

struct SwigluBackward : NoCols {
    static constexpr int kGrads = 0;
    bf16* dinp;
    const bf16* dout;
    const bf16* inp;
    int hidden;
    __device__ void operator()(Cols, int n, int c0, int cnt, Acc<0>&) const {
        const size_t o = size_t(n) * 2 * hidden + c0;
        float a[8], b[8], dy[8];
        ld8(a, inp + o, cnt);
        ld8(b, inp + o + hidden, cnt);
        ld8(dy, dout + size_t(n) * hidden + c0, cnt);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float s = sigm(a[j]);
            const float da = dy[j] * b[j] * s * (1.f + a[j] * (1.f - s));
            b[j] = dy[j] * a[j] * s;
            a[j] = da;
        }
        st8(dinp + o, a, cnt);
        st8(dinp + o + hidden, b, cnt);
    }
};

// g = sigmoid(gate) per column, and g (1 - g), the gate's derivative.
struct Gates {
    float g[8], dg[8];
};
__device__ __forceinline__ Gates load_gates(const float* gate, int c0, int cnt) {
    Gates r;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        r.g[j] = j < cnt ? sigm(gate[c0 + j]) : 0.f;
        r.dg[j] = r.g[j] * (1.f - r.g[j]);
    }
    return r;
}

struct SmearForward {
    static constexpr int kGrads = 0;
    using Cols = Gates;
    bf16* out;
    const bf16* inp;
    const float* gate;
    int Tn, C;
    __device__ Cols cols(int c0, int cnt) const { return load_gates(gate, c0, cnt); }
    __device__ void operator()(const Cols& w, int n, int c0, int cnt, Acc<0>&) const {
        const bf16* x = inp + size_t(n) * C + c0;
        float v[8], prev[8];
        ld8(v, x, cnt);
        ld8(prev, x - C, n % Tn ? cnt : 0);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = (1.f - w.g[j]) * v[j] + w.g[j] * prev[j];
        st8(out + size_t(n) * C + c0, v, cnt);
    }
};

struct SmearBackward {
    static constexpr int kGrads = 1;
    using Cols = Gates;
    bf16* dinp;
    const bf16 *dout, *dout_add;
    const bf16* inp;
    const float* gate;
    int Tn, C;
    bool add;
    __device__ Cols cols(int c0, int cnt) const { return load_gates(gate, c0, cnt); }
    // The output's gradient at row o, summed over dout and dout_add in fp32.
    __device__ void grad(float (&v)[8], size_t o, int cnt) const {
        ld8(v, dout + o, cnt);
        if (dout_add) add_raw8(v, raw8(dout_add + o, cnt));
    }
    __device__ void operator()(const Cols& w, int n, int c0, int cnt, Acc<1>& acc) const {
        const size_t o = size_t(n) * C + c0;
        const int t = n % Tn;
        float dy[8], next[8], x[8], prev[8];
        grad(dy, o, cnt);
        grad(next, o + C, t + 1 < Tn ? cnt : 0);
        ld8(x, inp + o, cnt);
        ld8(prev, inp + o - C, t > 0 ? cnt : 0);
        float dx[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            dx[j] = (1.f - w.g[j]) * dy[j] + w.g[j] * next[j];
            acc[0][j] += w.dg[j] * dy[j] * (prev[j] - x[j]);
        }
        add8(dinp + o, dx, cnt, add);
    }
};

// ---- RMSNorm: one block per row; its first 8 * blockDim values stay in registers ----

int norm_threads(int C) { return std::clamp(((C + 7) / 8 + 31) / 32 * 32, 32, 1024); }

template <typename In, typename Out>
__global__ void rmsnorm_forward_kernel(Out* out, float* rstd, const In* inp, int C, float scale) {
    const size_t row = blockIdx.x;
    const In* x = inp + row * C;
    Out* y = out + row * C;
    const int c0 = threadIdx.x * 8, stride = blockDim.x * 8;
    float v[8];
    ld8(v, x + c0, C - c0);
    float ss = dot8(v, v);
    for (int c = c0 + stride; c < C; c += stride) {
        float t[8];
        ld8(t, x + c, C - c);
        ss += dot8(t, t);
    }
    const float r = 1.f / sqrtf(block_sum(ss) / C + float(kRmsEps));
    if (threadIdx.x == 0) rstd[row] = r;
    auto write = [&](float(&t)[8], int c) {
#pragma unroll
        for (int j = 0; j < 8; ++j) t[j] *= r * scale;
        st8(y + c, t, C - c);
    };
    write(v, c0);
    for (int c = c0 + stride; c < C; c += stride) {
        float t[8];
        ld8(t, x + c, C - c);
        write(t, c);
    }
}

template <typename In, typename G>
__global__ void rmsnorm_backward_kernel(In* dinp, const G* dout, const In* inp, const float* rstd, int C, float scale,
                                        const float* dscale, bool add) {
    const size_t row = blockIdx.x;
    const In* x = inp + row * C;
    const G* dy = dout + row * C;
    In* dx = dinp + row * C;
    const int c0 = threadIdx.x * 8, stride = blockDim.x * 8;
    float vx[8], vg[8];
    ld8(vx, x + c0, C - c0);
    ld8(vg, dy + c0, C - c0);
    float dot = dot8(vx, vg);
    for (int c = c0 + stride; c < C; c += stride) {
        float t[8], u[8];
        ld8(t, x + c, C - c);
        ld8(u, dy + c, C - c);
        dot += dot8(t, u);
    }
    const float r = rstd[row];
    const float k = r * r * block_sum(dot) / C, sr = (dscale ? scale * *dscale : scale) * r;
    auto write = [&](const float(&tx)[8], float(&tg)[8], int c) {
#pragma unroll
        for (int j = 0; j < 8; ++j) tg[j] = sr * (tg[j] - tx[j] * k);
        add8(dx + c, tg, C - c, add);
    };
    write(vx, vg, c0);
    for (int c = c0 + stride; c < C; c += stride) {
        float t[8], u[8];
        ld8(t, x + c, C - c);
        ld8(u, dy + c, C - c);
        write(t, u, c);
    }
}

// ---- the residual stream: one warp per row; lane l holds the chunks of 8 columns at
// (k * 32 + l) * 8, k < K, so a row of up to K * 256 values sits in the warp's registers ----

constexpr int kResWarps = 8, kMaxResChunks = 4;

// Shared-memory tables of per-column values (GradAcc's sums, ColTables) are laid out by lane:
// lane l's 16-byte pieces q = 2k, 2k + 1 of its chunk k sit at float4 q * 32 + l, so that no two
// lanes share a bank phase. Column c (chunk c / 256 of lane (c / 8) % 32, piece (c / 4) % 2,
// element c % 4) is float number:
__device__ __forceinline__ int lane_piece_float(int c) {
    return ((c / 256 * 2 + c / 4 % 2) * 32 + c / 8 % 32) * 4 + c % 4;
}

// Calls f with std::integral_constant<int, K> for the row's chunks per lane K (1, 2 or 4).
template <typename F>
void with_res_chunks(int C, F&& f) {
    const int k = (C + 255) / 256;
    if (k > kMaxResChunks)
        fail("the residual-stream kernels take rows of up to %d values (model_dim %d)", kMaxResChunks * 256, C);
    if (k <= 1) f(std::integral_constant<int, 1>{});
    else if (k <= 2) f(std::integral_constant<int, 2>{});
    else f(std::integral_constant<int, 4>{});
}

// A residual pass's per-column values, formed once a block in shared memory rather than read
// from global memory at every row: the terms' weights (tables kX, kX0, kA), the skip's
// g = sigmoid(gate) and w, and the next block's resid_mix. K * 256 floats a table
// (lane_piece_float), zeros past C, so a lane reads its chunk's 8 as two conflict-free 16-byte
// loads. From global memory a lane's 32 bytes sat 32 bytes from its neighbour's: ncu counted 78%
// of the first block pass's sectors excessive (session 26); and the skip's sigmoids, 8 a chunk
// and row, made its backward issue ~3,100 instructions a row (session 17). The gate's derivative
// g (1 - g) is formed from g where it is read.
struct ColTables {
    enum Table { kX, kX0, kA, kGate, kSkipW, kNextX, kNext0, kCount };
    const float4* base;  // this lane's piece 0 of table 0
    int stride;          // float4s from one table to the next
    __device__ ColTables(const float4* tables, int K) : base(tables + threadIdx.x % 32), stride(K * 64) {}
    // Table t from w, when w is given (kGate: the sigmoid of w); the caller syncs before use.
    __device__ static void fill(float4* tables, Table t, const float* w, int C, int K) {
        if (!w) return;
        float* f = reinterpret_cast<float*>(tables) + size_t(t) * K * 256;
        for (int c = threadIdx.x; c < K * 256; c += blockDim.x)
            f[lane_piece_float(c)] = c < C ? (t == kGate ? sigm(w[c]) : w[c]) : 0.f;
    }
    __device__ void get(float (&v)[8], Table t, int k) const {
        const float4* p = base + t * stride + 2 * k * 32;
        const float4 lo = p[0], hi = p[32];
        v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
    }
    // A weight of chunk k: its table's values (per column), w[0] in every column (one scalar), or
    // 1 (no weight).
    __device__ void weight(float (&v)[8], Table t, const float* w, int wstride, int k) const {
        if (!w) {
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = 1.f;
        } else if (wstride) {
            get(v, t, k);
        } else {
            const float x = w[0];
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = x;
        }
    }
    __device__ Gates gates(int k) const {
        Gates r;
        get(r.g, kGate, k);
#pragma unroll
        for (int j = 0; j < 8; ++j) r.dg[j] = r.g[j] * (1.f - r.g[j]);
        return r;
    }
    __device__ Weights weights(int k) const {
        Weights r;
        get(r.v, kSkipW, k);
        return r;
    }
    // The tables of a pass's terms (per-column weights only).
    __device__ static void fill_terms(float4* tables, const ResidualIn& t, int C, int K) {
        if (!t.wstride) return;
        fill(tables, kX, t.wx, C, K);
        fill(tables, kX0, t.w0, C, K);
        fill(tables, kA, t.wa, C, K);
    }
};
constexpr size_t col_tables_smem(int K) { return size_t(ColTables::kCount) * K * 256 * sizeof(float); }

// The residual passes issue a chunk's loads before they use any of them (raw_at, TermChunk):
// with each value used as soon as it was loaded, inside ld8's branch, the loads of a chunk were
// round trips one after another. Step 51.0 -> 50.0 ms (session 18, call 3).
// p[o..o+8) as loaded, or zeros for a null tensor.
__device__ __forceinline__ uint4 raw_at(const bf16* p, size_t o, int cnt) {
    return p ? raw8(p + o, cnt) : make_uint4(0u, 0u, 0u, 0u);
}

// One chunk of the terms x, x0, a of a ResidualIn as loaded: those of bits 0-2 of want.
struct TermChunk {
    uint4 x, x0, a;
    TermChunk() = default;
    __device__ __forceinline__ TermChunk(const ResidualIn& t, size_t o, int cnt, unsigned want)
        : x(raw_at(want & 1 ? t.x : nullptr, o, cnt)), x0(raw_at(want & 2 ? t.x0 : nullptr, o, cnt)),
          a(raw_at(want & 4 ? t.a : nullptr, o, cnt)) {}
};

// s += w * v over chunk k (a null term adds nothing); w's table is t.
__device__ __forceinline__ void add_term(float (&s)[8], const void* term, const uint4& v, const ColTables& tb,
                                         ColTables::Table t, const float* w, int wstride, int k) {
    if (!term) return;
    float f[8], wv[8];
    unpack8(f, v);
    tb.weight(wv, t, w, wstride, k);
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j] += wv[j] * f[j];
}

// Chunk k of the terms' sum.
__device__ __forceinline__ void sum_terms(float (&s)[8], const ResidualIn& t, const TermChunk& v, const ColTables& tb,
                                          int k) {
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j] = 0.f;
    add_term(s, t.x, v.x, tb, ColTables::kX, t.wx, t.wstride, k);
    add_term(s, t.x0, v.x0, tb, ColTables::kX0, t.w0, t.wstride, k);
    add_term(s, t.a, v.a, tb, ColTables::kA, t.wa, t.wstride, k);
}

// The U-Net skip mix over a chunk, y = g x + (1 - g) w s; the forward's and, formed again,
// the backward's.
__device__ __forceinline__ void skip_mix(float (&y)[8], const float (&x)[8], const float (&s)[8], const Gates& g,
                                         const Weights& w) {
#pragma unroll
    for (int j = 0; j < 8; ++j) y[j] = g.g[j] * x[j] + (1.f - g.g[j]) * w.v[j] * s[j];
}


// The next block's input from chunk k of the sum y, in place (ResidualNext); s and x0 are the
// chunk's skip source and x0 as loaded, the source being y itself when own.
__device__ __forceinline__ void next_input(float (&y)[8], const ResidualNext& nx, const ColTables& tb, int k,
                                           const uint4& s, bool own, const uint4& x0, size_t o, int cnt) {
    if (nx.s) {
        float v[8];
        if (own)
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = y[j];
        else
            unpack8(v, s);
        skip_mix(y, y, v, tb.gates(k), tb.weights(k));
        round_bf16(y);
        st8(nx.skip_out + o, y, cnt);
    }
    float wx[8];
    tb.weight(wx, ColTables::kNextX, nx.wx, 1, k);
#pragma unroll
    for (int j = 0; j < 8; ++j) y[j] *= wx[j];
    add_term(y, nx.x0, x0, tb, ColTables::kNext0, nx.w0, 1, k);
    if (nx.x_in) st8(nx.x_in + o, y, cnt);
}

template <int K, bool NEXT>
__global__ void __launch_bounds__(kResWarps * 32) residual_forward_kernel(bf16* sum, bf16* norm, float* rstd,
                                                                          const ResidualIn t, int N, int C,
                                                                          float scale, const ResidualNext nx) {
    extern __shared__ float4 col_smem[];  // ColTables
    const int lane = threadIdx.x % 32;
    ColTables::fill_terms(col_smem, t, C, K);
    if (NEXT) {
        if (nx.s) {
            ColTables::fill(col_smem, ColTables::kGate, nx.gate, C, K);
            ColTables::fill(col_smem, ColTables::kSkipW, nx.w, C, K);
        }
        ColTables::fill(col_smem, ColTables::kNextX, nx.wx, C, K);
        ColTables::fill(col_smem, ColTables::kNext0, nx.w0, C, K);
    }
    __syncthreads();
    const ColTables tb(col_smem, K);
    // The skip's source may be this pass's own sum (a skip from the block's own output), which
    // is not read but taken as stored.
    const bool own = nx.s == sum;
    for (int n = blockIdx.x * kResWarps + threadIdx.x / 32; n < N; n += gridDim.x * kResWarps) {
        const size_t row = size_t(n) * C;
        float s[K][8];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int c0 = (k * 32 + lane) * 8, cnt = C - c0;
            const size_t o = row + c0;
            const TermChunk v(t, o, cnt, 7u);
            const uint4 vs = raw_at(NEXT && !own ? nx.s : nullptr, o, cnt);
            const uint4 vx0 = raw_at(NEXT ? nx.x0 : nullptr, o, cnt);
            sum_terms(s[k], t, v, tb, k);
            // The stored sum may alias t.x: this lane read its chunk above. The norm goes on from
            // the stored (rounded) values, which the backward reads to form the norm's input again.
            if (sum) {
                round_bf16(s[k]);
                st8(sum + o, s[k], cnt);
            }
            if (NEXT && norm) next_input(s[k], nx, tb, k, vs, own, vx0, o, cnt);
        }
        if (!norm) continue;
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) ss += dot8(s[k], s[k]);
        const float r = 1.f / sqrtf(group_sum(ss, 32) / C + float(kRmsEps));
        if (lane == 0) rstd[n] = r;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int c0 = (k * 32 + lane) * 8;
#pragma unroll
            for (int j = 0; j < 8; ++j) s[k][j] *= r * scale;
            st8(norm + row + c0, s[k], C - c0);
        }
    }
}

constexpr int kResSlots = 5;  // the weight gradients a residual backward pass can sum

struct ResidualBackwardArgs {
    bf16* dres;
    const bf16 *dy, *dadd, *dnorm, *xn;
    const float* rstd;
    float scale;
    ResidualIn t;
    ResidualGrad d;
    ResidualPrev p;
    // Accumulator of each weight gradient, or -1 for none: t's x, x0, a; p's skip w and gate.
    int slot[kResSlots];
};

// The weight-gradient sums of a residual backward pass, in shared memory rather than
// registers: with two accumulators of a lane's row chunks in registers the kernel took 118
// registers (two blocks an SM) and moved 2.4 TB/s. acc[slot][warp][piece][lane]: a lane's own
// 16-byte pieces (2 a chunk), consecutive over lanes, so that no two lanes share a bank
// phase and no thread touches another's until the block's sum.
struct GradAcc {
    float4* base;  // this warp's and lane's piece 0 of slot 0
    int slot_stride;
    // slot's sums += g * v over chunk k (slot < 0: none).
    __device__ void add(int slot, int k, const float (&g)[8], const float (&v)[8]) const {
        if (slot < 0) return;
        float4* p = base + slot * slot_stride + 2 * k * 32;
        float4 lo = p[0], hi = p[32];
        lo.x += g[0] * v[0], lo.y += g[1] * v[1], lo.z += g[2] * v[2], lo.w += g[3] * v[3];
        hi.x += g[4] * v[4], hi.y += g[5] * v[5], hi.z += g[6] * v[6], hi.w += g[7] * v[7];
        p[0] = lo, p[32] = hi;
    }
};

// One term's gradients over a chunk: its weight's, from the term's values v (into the slot's
// accumulator), and its own, out = w g, plus old (out's values as loaded) when given.
__device__ __forceinline__ void term_backward(const GradAcc& acc, int slot, int k, const float (&g)[8],
                                              const void* term, const uint4& v, const ColTables& tb,
                                              ColTables::Table t, const float* w, int wstride, bf16* out,
                                              const uint4* old, size_t o, int cnt) {
    if (!term) return;
    if (slot >= 0) {
        float f[8];
        unpack8(f, v);
        acc.add(slot, k, g, f);
    }
    if (!out) return;
    float wv[8], dv[8];
    tb.weight(wv, t, w, wstride, k);
#pragma unroll
    for (int j = 0; j < 8; ++j) dv[j] = wv[j] * g[j];
    if (old) add_raw8(dv, *old);
    st8(out + o, dv, cnt);
}

// Shared memory of residual_backward_kernel<K> with `slots` accumulators, then its ColTables.
constexpr size_t residual_backward_smem(int K, int slots) {
    return size_t(slots) * kResWarps * K * 256 * sizeof(float) + col_tables_smem(K);
}

// partial[slot][blockIdx.x][C]: the block's sums of each accumulated weight gradient. PREV: the
// pass goes on to the previous entry (ResidualPrev); SKIP: through a skip (p.s given), t's x
// term being the skip mix of p.x and p.s. A kernel of its own, so that the passes without it
// keep their registers down. The blocks an SM asked of the compiler at K <= 2: three for the
// passes that stop at the block (80 registers; the norm-2 pass went from 164 to 139 us with
// three, session 17), two for those on to the previous entry, whose loads in flight take 112-128
// registers (at 80 they spilled). At one, the skip pass took over 128 registers and ran 1.5x
// slower (session 17).
template <int K, bool PREV, bool SKIP>
__global__ void __launch_bounds__(kResWarps * 32, K > 2 ? 1 : PREV ? 2 : 3)
    residual_backward_kernel(const ResidualBackwardArgs a, int N, int C, int slots, float* partial) {
    static_assert(PREV || !SKIP);
    extern __shared__ float4 acc_smem[];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const ResidualIn& t = a.t;
    const ResidualGrad& d = a.d;
    const ResidualPrev& p = a.p;
    const int slot_stride = kResWarps * K * 2 * 32;  // float4s
    const GradAcc acc{acc_smem + warp * K * 2 * 32 + lane, slot_stride};
    for (int s = 0; s < slots; ++s)
        for (int q = 0; q < 2 * K; ++q) acc.base[s * slot_stride + q * 32] = make_float4(0.f, 0.f, 0.f, 0.f);
    float4* const tables = acc_smem + slots * slot_stride;
    ColTables::fill_terms(tables, t, C, K);
    if (SKIP) {
        ColTables::fill(tables, ColTables::kGate, p.gate, C, K);
        ColTables::fill(tables, ColTables::kSkipW, p.w, C, K);
    }
    __syncthreads();
    const ColTables tb(tables, K);
    // The norm's input: xn, or formed from the terms (after a skip, t.x is its mix). A pass on
    // to the previous entry, a block's first norm, has no xn and terms x and x0 only.
    const bf16* const xn = PREV ? nullptr : a.xn;
    constexpr unsigned tmask = SKIP ? 2u : PREV ? 3u : 7u;
    // The terms read a second time, for their weights' gradients (bits as TermChunk's want).
    const unsigned want = (a.slot[0] >= 0) | (a.slot[1] >= 0) << 1 | (a.slot[2] >= 0) << 2;
    // A pass on to the previous entry holds what its first loop loaded for its second (the
    // terms, the skip's sources) and loads dx0's and dskip's old values with them, so that a
    // row waits on memory once: with the second loop loading them again, and dx0 and dskip
    // from DRAM, these passes ran at 1.85-2.1 TB/s against 2.7 for the others (session 26).
    struct Held {
        TermChunk v;
        uint4 x, s, dx0, dskip;
    };
    for (int n = blockIdx.x * kResWarps + warp; n < N; n += gridDim.x * kResWarps) {
        const size_t row = size_t(n) * C;
        float g[K][8], xs[K][8], dot = 0.f;  // the row's gradient; the norm's input
        uint4 dn[K];
        Held held[PREV ? K : 1];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int c0 = (k * 32 + lane) * 8, cnt = C - c0;
            const size_t o = row + c0;
            const uint4 vdy = raw_at(a.dy, o, cnt), vdadd = raw_at(a.dadd, o, cnt), vxn = raw_at(xn, o, cnt);
            dn[k] = raw_at(a.dnorm, o, cnt);
            // A first norm's input is its terms, read with the rest; other passes read terms
            // for their norm only without xn, after the rest, to hold fewer registers.
            TermChunk v(t, o, cnt, PREV ? tmask : 0u);
            const uint4 vx = raw_at(SKIP ? p.x : nullptr, o, cnt), vs = raw_at(SKIP ? p.s : nullptr, o, cnt);
            if constexpr (PREV)
                held[k] = {v, vx, vs, raw_at(d.add_dx0 ? d.dx0 : nullptr, o, cnt), raw_at(p.dskip, o, cnt)};
            unpack8(g[k], vdy);
            if (a.dadd) add_raw8(g[k], vdadd);
            if (!a.dnorm) continue;
            if (!PREV && !xn) v = TermChunk(t, o, cnt, tmask);
            if (xn) unpack8(xs[k], vxn);
            else sum_terms(xs[k], t, v, tb, k);
            if (SKIP) {  // the block's input, the skip mix, formed again (in bf16) where needed
                float x[8], s[8], xv[8], wx[8];
                unpack8(x, vx);
                unpack8(s, vs);
                skip_mix(xv, x, s, tb.gates(k), tb.weights(k));
                round_bf16(xv);
                tb.weight(wx, ColTables::kX, t.wx, 1, k);
#pragma unroll
                for (int j = 0; j < 8; ++j) xs[k][j] += wx[j] * xv[j];
            }
            float e[8];
            unpack8(e, dn[k]);
            dot += dot8(e, xs[k]);
        }
        if (a.dnorm) {
            const float r = a.rstd[n];
            const float kk = r * r * group_sum(dot, 32) / C, sr = a.scale * r;
#pragma unroll
            for (int k = 0; k < K; ++k) {
                float e[8];
                unpack8(e, dn[k]);
#pragma unroll
                for (int j = 0; j < 8; ++j) g[k][j] += sr * (e[j] - xs[k][j] * kk);
            }
        }
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int c0 = (k * 32 + lane) * 8, cnt = C - c0;
            const size_t o = row + c0;
            Held h;
            if constexpr (PREV) h = held[k];
            else h = {TermChunk(t, o, cnt, want & tmask), {}, {}, raw_at(d.add_dx0 ? d.dx0 : nullptr, o, cnt), {}};
            const TermChunk& v = h.v;
            const uint4 &vx = h.x, &vs = h.s, &vdx0 = h.dx0, &vdskip = h.dskip;
            if (a.dres) st8(a.dres + o, g[k], cnt);  // may alias dy: read above by this lane
            float x[8], s[8];  // skip: the previous output and the skip's source
            Gates gt;
            Weights w;
            if (SKIP) {
                unpack8(x, vx);
                unpack8(s, vs);
                gt = tb.gates(k);
                w = tb.weights(k);
                float xv[8];
                skip_mix(xv, x, s, gt, w);
                round_bf16(xv);
                acc.add(a.slot[0], k, g[k], xv);
            }
            term_backward(acc, a.slot[0], k, g[k], t.x, v.x, tb, ColTables::kX, t.wx, t.wstride, d.dx, nullptr, o,
                          cnt);
            term_backward(acc, a.slot[1], k, g[k], t.x0, v.x0, tb, ColTables::kX0, t.w0, t.wstride, d.dx0,
                          d.add_dx0 ? &vdx0 : nullptr, o, cnt);
            term_backward(acc, a.slot[2], k, g[k], t.a, v.a, tb, ColTables::kA, t.wa, t.wstride, d.da, nullptr, o,
                          cnt);
            if constexpr (PREV) {
                float gx[8];  // y = wx g, then the previous output's gradient
                tb.weight(gx, ColTables::kX, t.wx, 1, k);
#pragma unroll
                for (int j = 0; j < 8; ++j) gx[j] *= g[k][j];
                if (SKIP) {
                    float vw[8], vg[8], ds[8];
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        vw[j] = (1.f - gt.g[j]) * s[j];
                        vg[j] = gt.dg[j] * (x[j] - w.v[j] * s[j]);
                        ds[j] = (1.f - gt.g[j]) * w.v[j] * gx[j];
                    }
                    acc.add(a.slot[3], k, gx, vw);
                    acc.add(a.slot[4], k, gx, vg);
                    if (p.ds) st8(p.ds + o, ds, cnt);
#pragma unroll
                    for (int j = 0; j < 8; ++j) gx[j] = gt.g[j] * gx[j] + (p.ds ? 0.f : ds[j]);
                }
                if (p.dskip) add_raw8(gx, vdskip);
                st8(p.dres + o, gx, cnt);  // may alias dy: read above by this lane
            }
        }
    }
    if (slots == 0) return;
    __syncthreads();
    const float* sums = reinterpret_cast<const float*>(acc_smem);
    for (int s = 0; s < slots; ++s)
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const int at = lane_piece_float(c);
            float v = 0.f;
            for (int w = 0; w < kResWarps; ++w) v += sums[(s * kResWarps + w) * K * 256 + at];
            partial[(size_t(s) * gridDim.x + blockIdx.x) * C + c] = v;
        }
}

// ---- per-head kernels (q/k/v prep, XSA): a group of tpv lanes (a power of two, hd <= 8 tpv)
// holds one head vector, 8 dims per lane; a block holds rpb whole rows of `heads` vectors,
// padded to whole warps (padding lanes compute on zeros and store nothing). ----

struct HeadLaunch {
    int tpv, rpb, threads, work;  // work: blocks of rpb rows that cover N (the grid is one_wave's)
};

HeadLaunch head_launch(int N, int heads, int hd) {
    PG_CHECK(hd > 0 && hd <= 256);
    int tpv = 1;
    while (tpv * 8 < hd) tpv *= 2;
    PG_CHECK(heads > 0 && heads * tpv <= 512);
    const int rpb = std::max(1, kThreads / (heads * tpv));
    return {tpv, rpb, (rpb * heads * tpv + 31) / 32 * 32, (N + rpb - 1) / rpb};
}

// The rotary angles: cos and sin of t * base^(-2i / rope_dims) for positions t < Tn and
// pairs i < half, formed on the host in double as ops_ref.h does and rounded to fp32. A table
// serves every call with its rope_dims and base and up to its Tn; it lives as long as the
// process (a captured graph holds its address), and a caller that captures makes it first.
Rope make_rope(int rope_dims, int hd, float base, int Tn) {
    PG_CHECK(rope_dims >= 0 && rope_dims % 2 == 0 && rope_dims <= hd);
    Rope r;
    r.half = rope_dims / 2;
    r.dims = rope_dims;
    if (r.half == 0) return r;
    struct Table {
        int dims, dev;
        float base;
        int Tn;
        DeviceArray<float2> values;
    };
    static std::vector<Table> tables;
    int dev = 0;
    PG_CHECK(cudaGetDevice(&dev));
    for (auto it = tables.rbegin(); it != tables.rend(); ++it)
        if (it->dims == rope_dims && it->dev == dev && it->base == base && it->Tn >= Tn) {
            r.table = it->values.get();
            return r;
        }
    std::vector<float2> h(size_t(Tn) * r.half);
    for (int t = 0; t < Tn; ++t)
        for (int i = 0; i < r.half; ++i) {
            const double ang = t * std::pow(double(base), -2.0 * i / rope_dims);
            h[size_t(t) * r.half + i] = make_float2(float(std::cos(ang)), float(std::sin(ang)));
        }
    tables.push_back({rope_dims, dev, base, Tn, DeviceArray<float2>(h)});
    r.table = tables.back().values.get();
    return r;
}

// The vectors of a qkv row, in order: H of q, Hkv of k, Hkv of v. A vector's role, its head
// within its tensor, and where it is read from (qkv) and written to (q, k or v).
struct QkvVec {
    int role;  // 0 q, 1 k, 2 v
    int head, heads;
    __device__ QkvVec(int j, int H, int Hkv) {
        role = j < H ? 0 : j < H + Hkv ? 1 : 2;
        head = role == 0 ? j : role == 1 ? j - H : j - H - Hkv;
        heads = role == 0 ? H : Hkv;
    }
};

// Where a lane's chunk of a qkv_prep row loop's iteration lies: iteration it takes rows from
// (blockIdx.x + it gridDim.x) rpb on, `per` vectors of each (the first of the row's nv); the
// lane's row n, its chunk's offset o in q, k or v and oi in qkv, and its valid values cnt (0
// past N and on padding lanes).
struct QkvAt {
    int n, cnt;
    size_t o, oi;
    __device__ QkvAt(int it, const QkvVec& r, int N, int per, int nv, int hd, int rpb, int vec, int j, int c0) {
        n = (blockIdx.x + it * gridDim.x) * rpb + vec / per;
        cnt = vec < rpb * per && n < N ? hd - c0 : 0;
        o = (size_t(n) * r.heads + r.head) * hd + c0;
        oi = size_t(n) * nv * hd + size_t(j) * hd + c0;
    }
};
using QkvFwdAhead = Ahead<3, 2>;  // qkv; v_first
using QkvBwdAhead = Ahead<3, 3>;  // qkv; dq (fp32)
// Three blocks an SM, up to 80 registers: at four (64 registers) both kernels spilled (the
// backward 36-44 bytes a thread, which ncu showed as local loads missing L1), and the record
// shape took 103 / 211 us against 100 / 202 (session 26 call 3).
constexpr int kQkvBlocks = 3;

// Every lane of a warp runs the same shuffles (group_sum, rope8) whatever its vector's role;
// the roles differ only in straight-line code between them.
template <bool ALIGNED>
__global__ void __launch_bounds__(kThreads, kQkvBlocks)
    qkv_prep_forward_kernel(const QkvIn p, int N, int Tn, int H, int Hkv, int hd, int tpv, int rpb, const Rope rope,
                            bool norm) {
    extern __shared__ __align__(16) unsigned char ahead_smem[];
    const int nv = H + 2 * Hkv;
    const int vec = threadIdx.x / tpv, c0 = (threadIdx.x % tpv) * 8, j = vec % nv;
    const QkvVec r(j, H, Hkv);
    const int dims = r.role < 2 ? rope.dims : 0;
    const float g = r.role == 0 && p.q_gain ? p.q_gain[r.head] : 1.f;
    const float vm0 = p.v_mix ? p.v_mix[0] : 1.f, vm1 = p.v_mix ? p.v_mix[1] : 0.f;
    const bool mix = r.role == 2 && p.v_mix;
    const QkvFwdAhead ahead(ahead_smem);
    auto fetch = [&](int it) {
        const QkvAt a(it, r, N, nv, nv, hd, rpb, vec, j, c0);
        ahead.fetch(it, 0, p.qkv + a.oi, a.cnt);
        if (mix) ahead.fetch(it, 1, p.v_first + a.o, a.cnt);
        ahead.commit();
    };
    for (int it = 0; it < QkvFwdAhead::kAhead; ++it) fetch(it);
    for (int it = 0; (blockIdx.x + it * gridDim.x) * rpb < N; ++it) {
        const QkvAt a(it, r, N, nv, nv, hd, rpb, vec, j, c0);
        float v[8];
        float2 cs[8];
        ahead.wait();
        ahead.take(v, it, 0, p.qkv + a.oi, a.cnt);
        rope_angles<ALIGNED>(cs, rope, a.cnt > 0 ? dims : 0, c0, a.n % Tn);
        const float ss = group_sum(dot8(v, v), tpv);
        if (r.role < 2 && norm) {
            const float rs = 1.f / sqrtf(ss / hd + float(kRmsEps));
            if (a.cnt > 0 && c0 == 0) (r.role == 0 ? p.q_rstd : p.k_rstd)[size_t(a.n) * r.heads + r.head] = rs;
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] *= rs;
        }
        rope8<ALIGNED>(v, cs, rope.half, dims, c0, 1.f);
        if (r.role < 2) {
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] *= g;
            st8((r.role == 0 ? p.q : p.k) + a.o, v, a.cnt);
        } else {
            if (mix) {
                float f[8];
                ahead.take(f, it, 1, p.v_first + a.o, a.cnt);
#pragma unroll
                for (int k = 0; k < 8; ++k) v[k] = vm0 * v[k] + vm1 * f[k];
            }
            st8(p.v + a.o, v, a.cnt);
        }
        fetch(it + QkvFwdAhead::kAhead);
    }
}

// q's share of the backward (k's and v's is the attention backward's epilogue): dqkv's q
// columns, and partial[blockIdx.x][H], the block's sums of dq . (rotated normed q) per head
// (q_gain's gradient; qk_backward says why one transposed rotation serves both).
template <bool ALIGNED>
__global__ void __launch_bounds__(kThreads, kQkvBlocks)
    qkv_prep_backward_kernel(const QkvGrad d, const QkvIn p, float* partial, int N, int Tn, int H, int Hkv, int hd,
                             int tpv, int rpb, const Rope rope, bool norm) {
    extern __shared__ __align__(16) unsigned char ahead_smem[];  // the loads ahead, then sums
    const int nv = H + 2 * Hkv;
    float* const sums = reinterpret_cast<float*>(ahead_smem + QkvBwdAhead::bytes(blockDim.x));  // [vectors]
    const int vec = threadIdx.x / tpv, c0 = (threadIdx.x % tpv) * 8, j = vec % H;
    const QkvVec r(j, H, Hkv);
    const float g = p.q_gain ? p.q_gain[j] : 1.f;
    const QkvBwdAhead ahead(ahead_smem);
    auto fetch = [&](int it) {
        const QkvAt a(it, r, N, H, nv, hd, rpb, vec, j, c0);
        ahead.fetch(it, 0, p.qkv + a.oi, a.cnt);
        ahead.fetch(it, 1, d.dq + a.o, a.cnt);
        ahead.commit();
    };
    for (int it = 0; it < QkvBwdAhead::kAhead; ++it) fetch(it);
    float s0 = 0.f;
    for (int it = 0; (blockIdx.x + it * gridDim.x) * rpb < N; ++it) {
        const QkvAt a(it, r, N, H, nv, hd, rpb, vec, j, c0);
        float xn[8], vd[8];
        float2 cs[8];
        ahead.wait();
        ahead.take(xn, it, 0, p.qkv + a.oi, a.cnt);
        ahead.take(vd, it, 1, d.dq + a.o, a.cnt);
        rope_angles<ALIGNED>(cs, rope, a.cnt > 0 ? rope.dims : 0, c0, a.n % Tn);
        const float rs = norm && a.cnt > 0 ? p.q_rstd[size_t(a.n) * H + j] : 1.f;
#pragma unroll
        for (int k = 0; k < 8; ++k) vd[k] *= d.dq_scale, xn[k] *= rs;
        s0 += qk_backward<ALIGNED>(vd, xn, cs, rope, rope.dims, c0, g, rs, norm, tpv, hd);
        st8(d.dqkv + a.oi, vd, a.cnt);
        fetch(it + QkvBwdAhead::kAhead);
    }
    s0 = group_sum(s0, tpv);
    if (c0 == 0) sums[vec] = s0;
    __syncthreads();
    if (threadIdx.x < H) {
        float s = 0.f;
        for (int k = threadIdx.x; k < rpb * H; k += H) s += sums[k];
        partial[size_t(blockIdx.x) * H + threadIdx.x] = s;
    }
}

// One group of lanes per (row, KV head), looping over the query heads that share it.
__global__ void xsa_forward_kernel(bf16* out, const bf16* y, const bf16* v, int N, int H, int Hkv, int hd, int tpv,
                                   int rpb) {
    const int vec = threadIdx.x / tpv, c0 = (threadIdx.x % tpv) * 8, hk = vec % Hkv, group = H / Hkv;
    for (int n0 = blockIdx.x * rpb; n0 < N; n0 += gridDim.x * rpb) {
        const int n = n0 + vec / Hkv;
        const int cnt = vec < rpb * Hkv && n < N ? hd - c0 : 0;
        float vn[8];
        ld8(vn, v + (size_t(n) * Hkv + hk) * hd + c0, cnt);
        const float inv = 1.f / fmaxf(sqrtf(group_sum(dot8(vn, vn), tpv)), float(kXsaNormFloor));
#pragma unroll
        for (int j = 0; j < 8; ++j) vn[j] *= inv;
        for (int h = hk * group; h < (hk + 1) * group; ++h) {
            const size_t o = (size_t(n) * H + h) * hd + c0;
            float vy[8];
            ld8(vy, y + o, cnt);
            const float d = group_sum(dot8(vy, vn), tpv);
#pragma unroll
            for (int j = 0; j < 8; ++j) vy[j] -= d * vn[j];
            st8(out + o, vy, cnt);
        }
    }
}

__global__ void xsa_backward_kernel(bf16* dy, bf16* dv, float* delta, const bf16* dout, const bf16* y, const bf16* v,
                                    int N, int T, int H, int Hkv, int hd, int tpv, int rpb, bool add) {
    const int vec = threadIdx.x / tpv, c0 = (threadIdx.x % tpv) * 8, hk = vec % Hkv, group = H / Hkv;
    for (int n0 = blockIdx.x * rpb; n0 < N; n0 += gridDim.x * rpb) {
        const int n = n0 + vec / Hkv;
        const int cnt = vec < rpb * Hkv && n < N ? hd - c0 : 0;
        const size_t ov = (size_t(n) * Hkv + hk) * hd + c0;
        float vn[8];
        ld8(vn, v + ov, cnt);
        const float norm = sqrtf(group_sum(dot8(vn, vn), tpv));
        const bool floored = norm < float(kXsaNormFloor);
        const float inv = 1.f / (floored ? float(kXsaNormFloor) : norm);
#pragma unroll
        for (int j = 0; j < 8; ++j) vn[j] *= inv;
        float dvn[8] = {};
        for (int h = hk * group; h < (hk + 1) * group; ++h) {
            const size_t o = (size_t(n) * H + h) * hd + c0;
            float vy[8], vg[8];
            ld8(vy, y + o, cnt);
            ld8(vg, dout + o, cnt);
            const float ny = group_sum(dot8(vn, vy), tpv), ng = group_sum(dot8(vn, vg), tpv);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                dvn[j] -= ny * vg[j] + ng * vy[j];
                vg[j] -= ng * vn[j];
            }
            st8(dy + o, vg, cnt);
            if (delta) {  // of dy as stored
                round_bf16(vg);
                const float dd = group_sum(dot8(vg, vy), tpv);
                if (c0 == 0 && cnt > 0) delta[(size_t(n / T) * H + h) * T + n % T] = dd;
            }
        }
        const float nd = floored ? 0.f : group_sum(dot8(vn, dvn), tpv);
#pragma unroll
        for (int j = 0; j < 8; ++j) dvn[j] = (dvn[j] - vn[j] * nd) * inv;
        add8(dv + ov, dvn, cnt, add);
    }
}

// ---- softcap + cross-entropy: one block per row. The kernel keeps the first
// kCeCached * 8 * kCeThreads values (8192) in registers through its reduction (running max and
// sum of exp) and the gradient's pass after it; longer rows are read again. It is bound by its
// issue slots (77% busy in ncu at the record shape, DRAM 37%), so the per-logit arithmetic is
// written for instruction count: exponentials as exp2 with the log2(e) factors folded into one
// FMA, no per-element tests of the row's end or of the target. ----

constexpr int kCeThreads = 256, kCeCached = 4;

// |cap tanh(z / cap)| = cap - 2 cap / (exp(2 |z| / cap) + 1), given z's sign: an exp2, a
// reciprocal and three other instructions, with k2 = 2 log2(e) / cap. Where the exponential
// overflows, 1 / inf = 0 and the value is cap; a NaN logit stays NaN (a clamp by fminf would
// cap it, and a model poisoned by NaN weights would then report a finite loss and train on).
// Absolute error a few 1e-7 cap. Without CAP, z itself.
template <bool CAP>
__device__ __forceinline__ float softcap(float z, float cap, float k2) {
    if constexpr (!CAP) return z;
    return copysignf(fmaf(-2.f * cap, rcp_approx(exp2_approx(fabsf(z) * k2) + 1.f), cap), z);
}

// (m, l) = running max and sum of exp(s - m); symmetric, so xor butterflies agree on every lane.
__device__ __forceinline__ void lse_merge(float& m, float& l, float m2, float l2) {
    const float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return;
    l = l * __expf(m - mx) + l2 * __expf(m2 - mx);
    m = mx;
}

__device__ void block_lse(float& m, float& l) {
    __shared__ float sm[32], sl[32];
    for (int o = 16; o > 0; o >>= 1) lse_merge(m, l, __shfl_xor_sync(kFull, m, o), __shfl_xor_sync(kFull, l, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) sm[warp] = m, sl[warp] = l;
    __syncthreads();
    const bool have = lane < int(blockDim.x / 32);
    m = have ? sm[lane] : -INFINITY;
    l = have ? sl[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) lse_merge(m, l, __shfl_xor_sync(kFull, m, o), __shfl_xor_sync(kFull, l, o));
}

// With GRAD, each thread also writes dlogits for the columns it read: from the registers for the
// cached ones, reading the rest again. The target's logit is read before the block's reduction,
// whose barrier orders it before any thread overwrites it (dlogits may be logits). Template
// parameters, so that the loss-only pass (evaluation) keeps its registers and the uncapped
// model pays nothing for the cap.
template <bool GRAD, bool CAP>
__global__ void __launch_bounds__(kCeThreads)
    softcap_ce_forward_kernel(float* losses, float* lse, const bf16* logits, const int32_t* targets, int V, float cap,
                              bf16* dlogits) {
    const size_t row = blockIdx.x;
    const bf16* z = logits + row * V;
    const int stride = kCeThreads * 8, target = targets[row];
    const float k2 = 2.f * kLog2e / cap;
    // Softcapped values of a chunk; past the row's end -inf, which the sums take as exp = 0.
    auto load = [&](float(&v)[8], int c) {
        ld8(v, z + c, V - c);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = softcap<CAP>(v[j], cap, k2);
        if (V - c < 8)
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (j >= V - c) v[j] = -INFINITY;
    };
    float m = -INFINITY, l = 0.f;
    auto absorb = [&](const float(&v)[8], int c) {
        if (c >= V) return;
        float mx = m;
#pragma unroll
        for (int j = 0; j < 8; ++j) mx = fmaxf(mx, v[j]);
        const float mxl = mx * kLog2e;
        l *= exp2_approx(fmaf(m, kLog2e, -mxl));
#pragma unroll
        for (int j = 0; j < 8; ++j) l += exp2_approx(fmaf(v[j], kLog2e, -mxl));
        m = mx;
    };
    float s[kCeCached][8];
#pragma unroll
    for (int k = 0; k < kCeCached; ++k) {
        const int c = k * stride + threadIdx.x * 8;
        load(s[k], c);
        absorb(s[k], c);
    }
    for (int c = kCeCached * stride + threadIdx.x * 8; c < V; c += stride) {
        float t[8];
        load(t, c);
        absorb(t, c);
    }
    const float zt = threadIdx.x == 0 ? softcap<CAP>(__bfloat162float(z[target]), cap, k2) : 0.f;
    block_lse(m, l);
    const float lz = m + logf(l);
    if (threadIdx.x == 0) {
        lse[row] = lz;
        losses[row] = lz - zt;
    }
    if constexpr (GRAD) {
        // d(loss)/dz = (softmax - the target's one-hot) (1 - (s / cap)^2), the last factor the
        // softcap's derivative; the one-hot is taken off the target's chunk alone.
        bf16* dz = dlogits + row * V;
        const float lzl = lz * kLog2e, icap2 = 1.f / (cap * cap);
        auto grad = [&](float(&v)[8], int c) {
            float d[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) d[j] = CAP ? fmaf(-v[j] * icap2, v[j], 1.f) : 1.f;
            if (unsigned(target - c) < 8u)
#pragma unroll
                for (int j = 0; j < 8; ++j)
                    if (c + j == target) v[j] = (exp2_approx(fmaf(v[j], kLog2e, -lzl)) - 1.f) * d[j];
                    else v[j] = exp2_approx(fmaf(v[j], kLog2e, -lzl)) * d[j];
            else
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = exp2_approx(fmaf(v[j], kLog2e, -lzl)) * d[j];
            st8(dz + c, v, V - c);
        };
#pragma unroll
        for (int k = 0; k < kCeCached; ++k) {
            const int c = k * stride + threadIdx.x * 8;
            if (c < V) grad(s[k], c);
        }
        for (int c = kCeCached * stride + threadIdx.x * 8; c < V; c += stride) {
            float t[8];
            load(t, c);
            grad(t, c);
        }
    }
}

__global__ void bigram_hash_kernel(int32_t* buckets, const int32_t* idx, int B, int Tn, int n_buckets) {
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= size_t(B) * Tn) return;
    if (i % Tn == 0) {
        buckets[i] = n_buckets - 1;
        return;
    }
    const uint32_t cur = uint32_t(idx[i]), prev = uint32_t(idx[i - 1]);
    buckets[i] = int32_t(((36313u * cur) ^ (27191u * prev)) % uint32_t(n_buckets - 1));
}

}  // namespace

// ---- the interface ----

static Factor factor(const float* scale, size_t row, size_t n) {
    if (scale && row && (row % 8 || n % row)) fail("convert: rows of %zu do not tile %zu values by 8s", row, n);
    return Factor{scale, row};
}

template <typename Src, typename Dst>
void convert(Dst* dst, const Src* src, size_t n, cudaStream_t stream, const float* scale, size_t row) {
    launch_flat(ConvertOp<Src, Dst>{dst, src, factor(scale, row, n)}, n, stream);
}

template <typename Src, typename Dst>
void accumulate(Dst* dst, const Src* src, size_t n, cudaStream_t stream, const float* scale) {
    launch_flat(AccumulateOp<Src, Dst>{dst, src, Factor{scale, 0}}, n, stream);
}

void scaled_rows_backward(float* dW, float* ds, const float* g, const bf16* W, const float* s, int rows, int cols,
                          cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return;
    scaled_rows_backward_kernel<<<rows, kRowThreads, 0, stream>>>(dW, ds, g, W, s, cols);
    PG_CHECK_LAUNCH();
}

template <typename Out>
void embedding_forward(Out* out, const int32_t* idx, const float* table, int N, int C, cudaStream_t stream) {
    launch_rows(EmbeddingForward<Out>{{}, out, idx, table, C}, N, C, stream);
}

template <typename G>
void embedding_backward(float* dtable, const int32_t* idx, const G* dout, int N, int C, cudaStream_t stream) {
    launch_rows(EmbeddingBackward<G>{{}, dtable, idx, dout, C}, N, C, stream);
}

void bigram_hash(int32_t* buckets, const int32_t* idx, int B, int Tn, int n_buckets, cudaStream_t stream) {
    const size_t n = size_t(B) * Tn;
    if (n == 0) return;
    PG_CHECK(n_buckets >= 2);
    bigram_hash_kernel<<<unsigned((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(buckets, idx, B, Tn,
                                                                                         n_buckets);
    PG_CHECK_LAUNCH();
}

template <typename In, typename Out>
void rmsnorm_forward(Out* out, float* rstd, const In* inp, int N, int C, float scale, cudaStream_t stream) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_forward_kernel<<<N, norm_threads(C), 0, stream>>>(out, rstd, inp, C, scale);
    PG_CHECK_LAUNCH();
}

template <typename In, typename G>
void rmsnorm_backward(In* dinp, const G* dout, const In* inp, const float* rstd, int N, int C, float scale,
                      cudaStream_t stream, const float* dscale, bool add) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_backward_kernel<<<N, norm_threads(C), 0, stream>>>(dinp, dout, inp, rstd, C, scale, dscale, add);
    PG_CHECK_LAUNCH();
}

// The forward's blocks: rows of all the qkv vectors.
HeadLaunch qkv_launch(const QkvShape& s) {
    PG_CHECK(s.B >= 1 && s.Tn >= 1 && s.H >= 1 && s.Hkv >= 1);
    return head_launch(s.N(), s.H + 2 * s.Hkv, s.hd);
}

// Calls f with std::bool_constant<ALIGNED> for the rotation's pairing (rope8).
template <typename F>
void with_rope_alignment(const Rope& rope, F&& f) {
    if (rope.half % 8 == 0) f(std::true_type{});
    else f(std::false_type{});
}

void qkv_prep_forward(const QkvIn& p, const QkvShape& s, cudaStream_t stream) {
    const HeadLaunch L = qkv_launch(s);
    PG_CHECK(!p.v_mix || p.v_first);
    const Rope rope = make_rope(s.rope_dims, s.hd, s.rope_base, s.Tn);
    with_rope_alignment(rope, [&](auto aligned) {
        const auto kernel = qkv_prep_forward_kernel<decltype(aligned)::value>;
        const size_t smem = QkvFwdAhead::bytes(L.threads);
        const int blocks = one_wave(kernel, L.threads, smem, L.work);
        kernel<<<blocks, L.threads, smem, stream>>>(p, s.N(), s.Tn, s.H, s.Hkv, s.hd, L.tpv, L.rpb, rope, s.norm);
        PG_CHECK_LAUNCH();
    });
}

// The attention backward's blocks hold 64 keys or more: at most this many of them.
size_t kv_grad_parts_max(const QkvShape& s) { return size_t(s.B) * s.Hkv * ((s.Tn + 63) / 64); }

// q's share of the backward: its launch, kernel and room for its partial sums, after the
// attention's in scratch.
struct QGradLaunch {
    HeadLaunch L;
    size_t smem;
    int blocks;
    size_t room;  // floats of scratch: the attention's sums, then q's
};
QGradLaunch q_grad_launch(const QkvShape& s, const Rope& rope) {
    PG_CHECK(s.B >= 1 && s.Tn >= 1 && s.H >= 1 && s.Hkv >= 1);
    QGradLaunch q;
    q.L = head_launch(s.N(), s.H, s.hd);
    q.smem = QkvBwdAhead::bytes(q.L.threads) + size_t(q.L.threads / q.L.tpv) * sizeof(float);
    with_rope_alignment(rope, [&](auto aligned) {
        q.blocks = one_wave(qkv_prep_backward_kernel<decltype(aligned)::value>, q.L.threads, q.smem, q.L.work);
    });
    q.room = 2 * kv_grad_parts_max(s) + size_t(q.blocks) * s.H;
    return q;
}

KvGradEpilogue kv_grad_epilogue(const QkvGrad& d, const QkvIn& p, const QkvShape& s) {
    PG_CHECK(!p.v_mix || (p.v_first && d.dv_first && d.dv_mix));
    KvGradEpilogue e;
    e.d = d, e.p = p, e.s = s;
    e.rope = make_rope(s.rope_dims, s.hd, s.rope_base, s.Tn);
    e.partial = scratch(q_grad_launch(s, e.rope).room);
    return e;
}

void qkv_prep_backward(const KvGradEpilogue& e, cudaStream_t stream) {
    const QkvGrad& d = e.d;
    const QkvIn& p = e.p;
    const QkvShape& s = e.s;
    const QGradLaunch q = q_grad_launch(s, e.rope);
    PG_CHECK(e.parts > 0 && size_t(e.parts) <= kv_grad_parts_max(s));  // the attention backward ran with e
    float* const partial = scratch(q.room);
    PG_CHECK(partial == e.partial);  // no call in between grew the scratch
    float* const q_partial = partial + 2 * kv_grad_parts_max(s);
    with_rope_alignment(e.rope, [&](auto aligned) {
        qkv_prep_backward_kernel<decltype(aligned)::value><<<q.blocks, q.L.threads, q.smem, stream>>>(
            d, p, q_partial, s.N(), s.Tn, s.H, s.Hkv, s.hd, q.L.tpv, q.L.rpb, e.rope, s.norm);
        PG_CHECK_LAUNCH();
    });
    PartialSums f;
    if (p.q_gain && d.dq_gain) f.add(d.dq_gain, q_partial, s.H, q.blocks, s.H);
    if (p.v_mix) f.add(d.dv_mix, partial, 2, e.parts, 2);
    finish_partials(f, 0, 0, 1, stream);
}

void xsa_forward(bf16* out, const bf16* y, const bf16* v, int N, int H, int Hkv, int hd, cudaStream_t stream) {
    if (N <= 0) return;
    PG_CHECK(Hkv > 0 && H % Hkv == 0);
    const HeadLaunch L = head_launch(N, Hkv, hd);
    xsa_forward_kernel<<<one_wave(xsa_forward_kernel, L.threads, 0, L.work), L.threads, 0, stream>>>(
        out, y, v, N, H, Hkv, hd, L.tpv, L.rpb);
    PG_CHECK_LAUNCH();
}

void xsa_backward(bf16* dy, bf16* dv, const bf16* dout, const bf16* y, const bf16* v, int N, int H, int Hkv, int hd,
                  cudaStream_t stream, bool add, float* delta, int T) {
    if (N <= 0) return;
    PG_CHECK(Hkv > 0 && H % Hkv == 0);
    PG_CHECK(!delta || (T > 0 && N % T == 0));
    const HeadLaunch L = head_launch(N, Hkv, hd);
    xsa_backward_kernel<<<one_wave(xsa_backward_kernel, L.threads, 0, L.work), L.threads, 0, stream>>>(
        dy, dv, delta, dout, y, v, N, T, H, Hkv, hd, L.tpv, L.rpb, add);
    PG_CHECK_LAUNCH();
}

void leaky_relu2_forward(bf16* out, const bf16* inp, size_t n, float slope, cudaStream_t stream) {
    launch_flat(LeakyRelu2Forward{out, inp, slope}, n, stream);
}

void leaky_relu2_backward(bf16* dinp, const bf16* dout, const bf16* inp, size_t n, float slope, cudaStream_t stream) {
    launch_flat(LeakyRelu2Backward{dinp, dout, inp, slope}, n, stream);
}

void swiglu_forward(bf16* out, const bf16* inp, int N, int hidden, cudaStream_t stream) {
    launch_rows(SwigluForward{{}, out, inp, hidden}, N, hidden, stream);
}

void swiglu_backward(bf16* dinp, const bf16* dout, const bf16* inp, int N, int hidden, cudaStream_t stream) {
    launch_rows(SwigluBackward{{}, dinp, dout, inp, hidden}, N, hidden, stream);
}

void smear_forward(bf16* out, const bf16* inp, const float* gate, int B, int Tn, int C, cudaStream_t stream) {
    launch_rows(SmearForward{out, inp, gate, Tn, C}, B * Tn, C, stream);
}

void smear_backward(bf16* dinp, float* dgate, const bf16* dout, const bf16* inp, const float* gate, int B, int Tn,
                    int C, cudaStream_t stream, bool add, const bf16* dout_add) {
    launch_rows(SmearBackward{dinp, dout, dout_add, inp, gate, Tn, C, add}, B * Tn, C, stream, {dgate});
}

void residual_forward(bf16* sum, bf16* norm, float* rstd, const ResidualIn& t, int N, int C, float scale,
                      cudaStream_t stream, const ResidualNext* next) {
    if (N <= 0 || C <= 0) return;
    PG_CHECK(!norm || rstd);
    PG_CHECK(!next || (norm && (!next->s || (next->w && next->gate && next->skip_out))));
    auto launch = [&](auto kernel, int K) {
        const int threads = kResWarps * 32;
        const size_t smem = col_tables_smem(K);
        const int blocks = one_wave(kernel, threads, smem, (N + kResWarps - 1) / kResWarps);
        kernel<<<blocks, threads, smem, stream>>>(sum, norm, rstd, t, N, C, scale, next ? *next : ResidualNext{});
        PG_CHECK_LAUNCH();
    };
    with_res_chunks(C, [&](auto k) {
        constexpr int K = decltype(k)::value;
        if (next) launch(residual_forward_kernel<K, true>, K);
        else launch(residual_forward_kernel<K, false>, K);
    });
}

void residual_backward(bf16* dres, const bf16* dy, const bf16* dadd, const bf16* dnorm, const bf16* xn,
                       const float* rstd, float scale, const ResidualIn& t, const ResidualGrad& d, int N, int C,
                       cudaStream_t stream, const ResidualPrev* prev) {
    if (N <= 0 || C <= 0) return;
    PG_CHECK(!dnorm || rstd);
    if (prev) {
        PG_CHECK(prev->x && prev->dres && !d.dx && !xn && !t.a && t.wstride == 1);
        PG_CHECK(!prev->s || (prev->w && prev->gate && !t.x));
    }
    ResidualBackwardArgs a{dres, dy, dadd, dnorm, xn, rstd, scale, t, d, prev ? *prev : ResidualPrev{},
                           {-1, -1, -1, -1, -1}};
    float* const dw[kResSlots] = {d.dwx, d.dw0, d.dwa, a.p.dw, a.p.dgate};
    int slots = 0;
    for (int i = 0; i < kResSlots; ++i)
        if (dw[i]) a.slot[i] = slots++;
    auto launch = [&](auto kernel, int K) {
        const int threads = kResWarps * 32;
        const size_t smem = residual_backward_smem(K, slots);
        // The kernel's limit is what its most slots take (within the device's), not this call's:
        // a graph captured with a larger launch of it must still find that launch allowed (with
        // the limit lowered after capture, ncu's replay of such a launch failed).
        int dev = 0, optin = 0;
        PG_CHECK(cudaGetDevice(&dev));
        PG_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        const size_t limit = std::min(residual_backward_smem(K, kResSlots), size_t(optin));
        if (smem > limit)
            fail("residual_backward: %d weight gradients of rows of %d take too much shared memory", slots, C);
        PG_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
        const int blocks = one_wave(kernel, threads, smem, (N + kResWarps - 1) / kResWarps);
        float* partial = slots ? scratch(size_t(slots) * blocks * C) : nullptr;
        kernel<<<blocks, threads, smem, stream>>>(a, N, C, slots, partial);
        PG_CHECK_LAUNCH();
        PartialSums f;
        for (int i = 0; i < kResSlots; ++i)
            if (dw[i]) f.add(dw[i], partial + size_t(a.slot[i]) * blocks * C, C);
        finish_partials(f, blocks, C, t.wstride, stream);
    };
    with_res_chunks(C, [&](auto k) {
        constexpr int K = decltype(k)::value;
        if (!prev) launch(residual_backward_kernel<K, false, false>, K);
        else if (!prev->s) launch(residual_backward_kernel<K, true, false>, K);
        else launch(residual_backward_kernel<K, true, true>, K);
    });
}

void softcap_ce_forward(float* losses, float* lse, const bf16* logits, const int32_t* targets, int n, int V, float cap,
                        cudaStream_t stream, bf16* dlogits) {
    if (n <= 0) return;
    PG_CHECK(V > 0);
    const auto kernel = cap > 0.f ? (dlogits ? softcap_ce_forward_kernel<true, true>
                                             : softcap_ce_forward_kernel<false, true>)
                                  : (dlogits ? softcap_ce_forward_kernel<true, false>
                                             : softcap_ce_forward_kernel<false, false>);
    kernel<<<n, kCeThreads, 0, stream>>>(losses, lse, logits, targets, V, cap, dlogits);
    PG_CHECK_LAUNCH();
}

// ---- instantiations: the types kernels.cuh names ----

template void convert<float, float>(float*, const float*, size_t, cudaStream_t, const float*, size_t);
template void convert<float, bf16>(bf16*, const float*, size_t, cudaStream_t, const float*, size_t);
template void convert<bf16, float>(float*, const bf16*, size_t, cudaStream_t, const float*, size_t);
template void convert<bf16, bf16>(bf16*, const bf16*, size_t, cudaStream_t, const float*, size_t);
template void accumulate<float, float>(float*, const float*, size_t, cudaStream_t, const float*);
template void accumulate<bf16, float>(float*, const bf16*, size_t, cudaStream_t, const float*);
template void accumulate<bf16, bf16>(bf16*, const bf16*, size_t, cudaStream_t, const float*);

template void embedding_forward<float>(float*, const int32_t*, const float*, int, int, cudaStream_t);
template void embedding_forward<bf16>(bf16*, const int32_t*, const float*, int, int, cudaStream_t);
template void embedding_backward<float>(float*, const int32_t*, const float*, int, int, cudaStream_t);
template void embedding_backward<bf16>(float*, const int32_t*, const bf16*, int, int, cudaStream_t);

template void rmsnorm_forward<float, float>(float*, float*, const float*, int, int, float, cudaStream_t);
template void rmsnorm_forward<float, bf16>(bf16*, float*, const float*, int, int, float, cudaStream_t);
template void rmsnorm_forward<bf16, float>(float*, float*, const bf16*, int, int, float, cudaStream_t);
template void rmsnorm_forward<bf16, bf16>(bf16*, float*, const bf16*, int, int, float, cudaStream_t);
template void rmsnorm_backward<float, float>(float*, const float*, const float*, const float*, int, int, float,
                                             cudaStream_t, const float*, bool);
template void rmsnorm_backward<float, bf16>(float*, const bf16*, const float*, const float*, int, int, float,
                                            cudaStream_t, const float*, bool);
template void rmsnorm_backward<bf16, float>(bf16*, const float*, const bf16*, const float*, int, int, float,
                                            cudaStream_t, const float*, bool);
template void rmsnorm_backward<bf16, bf16>(bf16*, const bf16*, const bf16*, const float*, int, int, float,
                                           cudaStream_t, const float*, bool);

}  // namespace pg
