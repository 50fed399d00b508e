// Causal GQA flash attention (FlashAttention-2 scheme) on mma.sync m16n8k16 bf16 tensor cores,
// which run on sm_80 and sm_90. The CPU oracle is model/attention_ref.h.
//
// Forward: one block = 128 query rows of one (batch, query head); 4 warps own 32 rows each.
// Key/value tiles of 64 rows stream through shared memory (cp.async, double-buffered); scores
// stay in registers and the softmax is online in fp32 base 2 (log2(e)/sqrt(D) folded into one
// scale). Blocks with the most key tiles (late queries) are launched first.
//
// Backward: one block = 64 keys of one (batch, KV head); 4 warps own 16 keys each and keep
// their K, V fragments and dK, dV accumulators in registers while 64-query tiles of Q and dO
// of every query head in the group stream past. P and dS are rebuilt from lse and
// D_i = rowsum(dO * O); dS goes through shared memory once so that the block's dQ share
// (all 64 keys) leaves as one fp32 atomic add per element into the workspace. Two such blocks
// share an SM (registers allow no more); that measured 11% faster than one block of 8 warps
// over 128 keys, despite twice the dq atomics.
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "common/cuda_check.cuh"
#include "model/attention.cuh"

namespace pg {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ---- warp-level building blocks -------------------------------------------------------------

// Shared-memory tiles hold rows of W bf16 as 16-byte chunks; chunk c of row r is stored at
// c ^ (r & 7), so the 8 row addresses of one ldmatrix (same chunk column) hit distinct banks.
template <int W>
__device__ __forceinline__ uint32_t swz(int r, int c) {
    static_assert(W % 64 == 0, "rows must span at least 8 chunks for the swizzle");
    return uint32_t((r * (W / 8) + (c ^ (r & 7))) * 16);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return uint32_t(__cvta_generic_to_shared(p));
}

// Copies 16 bytes, or writes 16 zero bytes when !valid (rows past T read as zeros).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ROWS rows of D bf16 starting at global row row0 (row stride `stride` elements) into a
// swizzled tile; rows >= T become zeros.
template <int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(uint32_t s, const bf16* g, size_t stride, int row0,
                                          int T) {
    constexpr int CH = D / 8;
    static_assert(ROWS * CH % THREADS == 0, "tile must split evenly over the threads");
#pragma unroll
    for (int j = 0; j < ROWS * CH / THREADS; ++j) {
        const int i = threadIdx.x + j * THREADS, r = i / CH, c = i % CH;
        const bool valid = row0 + r < T;
        cp_async16(s + swz<D>(r, c), g + size_t(valid ? row0 + r : 0) * stride + c * 8, valid);
    }
}

// Four 8x8 bf16 matrices from shared memory; .trans delivers them transposed.
__device__ __forceinline__ void ldsm(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_t(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c[16x8] += a[16x16] * b[16x8]; bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// The accumulators of two adjacent 16x8 tiles (columns 16j..16j+15) are, element for element,
// the A fragment of a 16x16 operand: this is how P and dS feed the next product in registers.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                         const float (&c1)[4]) {
    a[0] = pack(c0[0], c0[1]);
    a[1] = pack(c0[2], c0[3]);
    a[2] = pack(c1[0], c1[1]);
    a[3] = pack(c1[2], c1[3]);
}

__device__ __forceinline__ float exp2_approx(float x) {  // exp2(-inf) = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// ldmatrix lane roles. Each lane names one row of one of the four 8x8 matrices (matrix
// lane / 8). "X" order covers (rows 0-7, chunk 0), (rows 8-15, chunk 0), (rows 0-7, chunk 1),
// (rows 8-15, chunk 1): an A operand stored [m][k], or a B operand stored [k][n] with .trans.
// "Y" order covers (rows 0-7, chunk 0), (0-7, 1), (8-15, 0), (8-15, 1): a B operand stored
// [n][k] (registers 0,1 feed n-block 0 and 2,3 n-block 1), or an A operand stored [k][m] with
// .trans.
struct Lane {
    int xr, xc, yr, yc;
    __device__ explicit Lane(int lane)
        : xr(lane & 15), xc(lane >> 4), yr((lane >> 4) * 8 + (lane & 7)), yc((lane >> 3) & 1) {}
};

// A warp stores ROWS staged rows (tile rows r0..) of D bf16 to global rows grow0.. (row stride
// `stride`) with 16-byte stores, skipping rows >= T.
template <int ROWS, int D>
__device__ __forceinline__ void store_rows(bf16* g, size_t stride, int grow0, int T,
                                           const unsigned char* tile, int r0, int lane) {
    constexpr int CH = D / 8;
    static_assert(ROWS * CH % 32 == 0, "rows must split evenly over the lanes");
#pragma unroll
    for (int j = 0; j < ROWS * CH / 32; ++j) {
        const int i = lane + j * 32, r = i / CH, c = i % CH;
        if (grow0 + r < T)
            *reinterpret_cast<uint4*>(g + size_t(grow0 + r) * stride + c * 8) =
                *reinterpret_cast<const uint4*>(tile + swz<D>(r0 + r, c));
    }
}

// Writes a 16x8-tile accumulator pair (rows g, g+8; columns 2t, 2t+1 of n-block nb) as bf16
// into a swizzled tile at rows r0.. .
template <int W>
__device__ __forceinline__ void stage_acc(unsigned char* tile, int r0, int nb, const float (&c)[4],
                                          float s, int g, int t) {
    *reinterpret_cast<uint32_t*>(tile + swz<W>(r0 + g, nb) + t * 4) = pack(c[0] * s, c[1] * s);
    *reinterpret_cast<uint32_t*>(tile + swz<W>(r0 + g + 8, nb) + t * 4) = pack(c[2] * s, c[3] * s);
}

// ---- forward ---------------------------------------------------------------------------------

constexpr int kFwdWarps = 4, kFwdMT = 2;  // 16-row m-tiles per warp
constexpr int kFwdBr = kFwdWarps * kFwdMT * 16, kFwdBc = 64;

template <int D>
constexpr int fwd_smem_bytes() {
    return (kFwdBr + 4 * kFwdBc) * D * 2;  // Q, then K[2], V[2]
}

template <int D>
__global__ void __launch_bounds__(kFwdWarps * 32)
    fwd_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
               bf16* __restrict__ out, float* __restrict__ lse, int T, int Hq, int Hkv,
               float scale_log2) {
    constexpr int MT = kFwdMT, Br = kFwdBr, Bc = kFwdBc, NT = kFwdWarps * 32;
    constexpr int KD = D / 16, NB = Bc / 8, DB = D / 8, TILE = Bc * D * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sQ = smem_addr(smem), sK = sQ + Br * D * 2, sV = sK + 2 * TILE;

    const int b = blockIdx.x / Hq, h = blockIdx.x % Hq, hk = h / (Hq / Hkv);
    const int q0 = (gridDim.y - 1 - blockIdx.y) * Br;  // heaviest query tiles first
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const Lane L(lane);
    const size_t qs = size_t(Hq) * D, ks = size_t(Hkv) * D;
    const bf16* qg = q + (size_t(b) * T * Hq + h) * D;
    const bf16* kg = k + (size_t(b) * T * Hkv + hk) * D;
    const bf16* vg = v + (size_t(b) * T * Hkv + hk) * D;
    const int n_kt = (min(q0 + Br, T) - 1) / Bc + 1;
    const int wr = warp * MT * 16;  // this warp's first row in the tile
    const int row0 = q0 + wr;

    load_tile<Br, D, NT>(sQ, qg, qs, q0, T);
    load_tile<Bc, D, NT>(sK, kg, ks, 0, T);
    load_tile<Bc, D, NT>(sV, vg, ks, 0, T);
    cp_async_commit();

    uint32_t qf[MT][KD][4];
    float o[MT][DB][4] = {};
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;

    for (int kt = 0; kt < n_kt; ++kt) {
        const int buf = kt & 1;
        if (kt + 1 < n_kt) {
            load_tile<Bc, D, NT>(sK + (buf ^ 1) * TILE, kg, ks, (kt + 1) * Bc, T);
            load_tile<Bc, D, NT>(sV + (buf ^ 1) * TILE, vg, ks, (kt + 1) * Bc, T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (kt == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int kk = 0; kk < KD; ++kk)
                    ldsm(qf[mt][kk], sQ + swz<D>(wr + mt * 16 + L.xr, 2 * kk + L.xc));
        }
        const int k0 = kt * Bc;
        // Tiles are in key order, so the first (key 0) is never skipped and m is finite after it.
        if (k0 <= row0 + MT * 16 - 1) {
            const uint32_t sKb = sK + buf * TILE, sVb = sV + buf * TILE;
            float s[MT][NB][4] = {};
#pragma unroll
            for (int kk = 0; kk < KD; ++kk)
#pragma unroll
                for (int nb = 0; nb < NB; nb += 2) {
                    uint32_t r[4];
                    ldsm(r, sKb + swz<D>(nb * 8 + L.yr, 2 * kk + L.yc));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma(s[mt][nb], qf[mt][kk], r[0], r[1]);
                        mma(s[mt][nb + 1], qf[mt][kk], r[2], r[3]);
                    }
                }
            if (k0 + Bc - 1 > row0) {  // some key may follow some row: causal mask (and keys >= T)
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            if (k0 + nb * 8 + 2 * t + (e & 1) > row0 + mt * 16 + g + (e >> 1) * 8)
                                s[mt][nb][e] = -INFINITY;
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {  // rows g and g + 8
                    float mx = -INFINITY;
#pragma unroll
                    for (int nb = 0; nb < NB; ++nb)
                        mx = fmaxf(mx, fmaxf(s[mt][nb][2 * hr], s[mt][nb][2 * hr + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    const float m_new = fmaxf(m[mt][hr], mx * scale_log2);
                    // A row with every key masked so far keeps m = -inf; subtract 0, not -inf.
                    const float m_use = m_new == -INFINITY ? 0.f : m_new;
                    const float corr = exp2_approx(m[mt][hr] - m_use);
                    m[mt][hr] = m_new;
                    l[mt][hr] *= corr;
#pragma unroll
                    for (int db = 0; db < DB; ++db) o[mt][db][2 * hr] *= corr, o[mt][db][2 * hr + 1] *= corr;
#pragma unroll
                    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                        for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                            const float p = exp2_approx(fmaf(s[mt][nb][e], scale_log2, -m_use));
                            s[mt][nb][e] = p;
                            l[mt][hr] += p;
                        }
                }
#pragma unroll
            for (int kk = 0; kk < Bc / 16; ++kk) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) acc_to_a(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
                for (int db = 0; db < DB; db += 2) {
                    uint32_t r[4];
                    ldsm_t(r, sVb + swz<D>(kk * 16 + L.xr, db + L.xc));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma(o[mt][db], a[mt], r[0], r[1]);
                        mma(o[mt][db + 1], a[mt], r[2], r[3]);
                    }
                }
            }
        }
        __syncthreads();
    }

    // Normalise, save lse, and stage this warp's rows in its own part of the Q tile (read only
    // by this warp, at kt == 0) for 16-byte stores.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float inv[2];
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            float sum = l[mt][hr];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            inv[hr] = 1.f / sum;
            const int row = row0 + mt * 16 + g + hr * 8;
            if (t == 0 && row < T) lse[size_t(blockIdx.x) * T + row] = (m[mt][hr] + __log2f(sum)) / kLog2e;
        }
#pragma unroll
        for (int db = 0; db < DB; ++db) {
            const float c[4] = {o[mt][db][0] * inv[0], o[mt][db][1] * inv[0], o[mt][db][2] * inv[1],
                                o[mt][db][3] * inv[1]};
            stage_acc<D>(smem, wr + mt * 16, db, c, 1.f, g, t);
        }
    }
    __syncwarp();
    store_rows<MT * 16, D>(out + (size_t(b) * T * Hq + h) * D, qs, row0, T, smem, wr, lane);
}

// ---- backward --------------------------------------------------------------------------------

constexpr int kBwdWarps = 4;
constexpr int kBwdBc = kBwdWarps * 16, kBwdBr = 64;  // keys per block, queries per step

template <int D>
constexpr int bwd_smem_bytes() {
    // K, V, Q[2], dO[2], dS^T (keys x queries), then lse*log2(e) and D_i for 2 stages.
    return (2 * kBwdBc * D + 4 * kBwdBr * D + kBwdBc * kBwdBr) * 2 + 2 * 2 * kBwdBr * 4;
}

// D_i = rowsum(dO * O) for every query row, and the dq accumulator zeroed. D / 8 threads a row.
template <int D>
__global__ void bwd_prep_kernel(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                float* __restrict__ delta, float* __restrict__ dq_acc, int rows,
                                int T, int Hq) {
    constexpr int TPR = D / 8;
    static_assert(TPR <= 32 && 32 % TPR == 0, "a row's threads must sit in one warp");
    const size_t gt = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t r = gt / TPR;
    const int c = int(gt % TPR);
    float s = 0.f;
    if (r < size_t(rows)) {
        const uint4 a = *reinterpret_cast<const uint4*>(out + r * D + c * 8);
        const uint4 d = *reinterpret_cast<const uint4*>(dout + r * D + c * 8);
        const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a);
        const __nv_bfloat162* d2 = reinterpret_cast<const __nv_bfloat162*>(&d);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 x = __bfloat1622float2(a2[i]), y = __bfloat1622float2(d2[i]);
            s += x.x * y.x + x.y * y.y;
        }
        float4* z = reinterpret_cast<float4*>(dq_acc + r * D + c * 8);
        z[0] = z[1] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int off = TPR / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (r < size_t(rows) && c == 0) {  // r = (b*T + i)*Hq + h  ->  delta[(b*Hq + h)*T + i]
        const size_t h = r % Hq, i = (r / Hq) % T, b = r / (size_t(Hq) * T);
        delta[(b * Hq + h) * T + i] = s;
    }
}

template <int D>
__global__ void __launch_bounds__(kBwdWarps * 32)
    bwd_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
               const bf16* __restrict__ dout, const float* __restrict__ lse,
               const float* __restrict__ delta, float* __restrict__ dq_acc, bf16* __restrict__ dk,
               bf16* __restrict__ dv, int T, int Hq, int Hkv, float scale_log2, float scale) {
    constexpr int Bc = kBwdBc, Br = kBwdBr, NT = kBwdWarps * 32;
    constexpr int KD = D / 16, NB = Br / 8, DB = D / 8, QTILE = Br * D * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* const pK = smem;
    unsigned char* const pV = pK + Bc * D * 2;
    const uint32_t sK = smem_addr(pK), sV = smem_addr(pV);
    const uint32_t sQ = sV + Bc * D * 2, sdO = sQ + 2 * QTILE, sdS = sdO + 2 * QTILE;
    unsigned char* const pdS = pV + Bc * D * 2 + 4 * QTILE;
    float* const stats = reinterpret_cast<float*>(pdS + Bc * Br * 2);  // [2][lse | D_i]

    const int group = Hq / Hkv;
    const int b = blockIdx.x / Hkv, hk = blockIdx.x % Hkv;
    const int k0 = blockIdx.y * Bc;  // blockIdx.y = 0 has the most query tiles: launched first
    const int qt0 = k0 / Br, per_head = (T + Br - 1) / Br - qt0, n_it = group * per_head;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const Lane L(lane);
    const int kw = warp * 16;  // this warp's first key in the tile
    const size_t qs = size_t(Hq) * D, ks = size_t(Hkv) * D;
    const bf16* kg = k + (size_t(b) * T * Hkv + hk) * D;
    const bf16* vg = v + (size_t(b) * T * Hkv + hk) * D;

    // Step `it` visits query head hk*group + it / per_head, query tile qt0 + it % per_head.
    auto head = [&](int it) { return hk * group + it / per_head; };
    auto qrow0 = [&](int it) { return (qt0 + it % per_head) * Br; };
    auto issue = [&](int it, int buf) {
        const size_t off = (size_t(b) * T * Hq + head(it)) * D;
        load_tile<Br, D, NT>(sQ + buf * QTILE, q + off, qs, qrow0(it), T);
        load_tile<Br, D, NT>(sdO + buf * QTILE, dout + off, qs, qrow0(it), T);
        cp_async_commit();
    };
    // Threads 0..Br-1 fetch lse (in log2 units; +inf past T so P = 0), Br..2Br-1 fetch D_i.
    auto fetch_stat = [&](int it) {
        const int i = threadIdx.x % Br, row = qrow0(it) + i;
        const size_t at = (size_t(b) * Hq + head(it)) * T + row;
        if (threadIdx.x < Br) return row < T ? lse[at] * kLog2e : INFINITY;
        return row < T ? delta[at] : 0.f;
    };

    load_tile<Bc, D, NT>(sK, kg, ks, k0, T);
    load_tile<Bc, D, NT>(sV, vg, ks, k0, T);
    issue(0, 0);
    if (threadIdx.x < 2 * Br) stats[threadIdx.x] = fetch_stat(0);

    uint32_t kf[KD][4], vf[KD][4];
    float dka[DB][4] = {}, dva[DB][4] = {};

    for (int it = 0; it < n_it; ++it) {
        const int buf = it & 1, h = head(it), q0 = qrow0(it);
        float next_stat = 0.f;
        if (it + 1 < n_it) {
            issue(it + 1, buf ^ 1);
            if (threadIdx.x < 2 * Br) next_stat = fetch_stat(it + 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < KD; ++kk) {
                ldsm(kf[kk], sK + swz<D>(kw + L.xr, 2 * kk + L.xc));
                ldsm(vf[kk], sV + swz<D>(kw + L.xr, 2 * kk + L.xc));
            }
        }
        const uint32_t sQb = sQ + buf * QTILE, sdOb = sdO + buf * QTILE;
        const float* sl = stats + buf * 2 * Br;
        const float* sd = sl + Br;

        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x Br queries.
        float st[NB][4] = {}, dpt[NB][4] = {};
#pragma unroll
        for (int kk = 0; kk < KD; ++kk)
#pragma unroll
            for (int nb = 0; nb < NB; nb += 2) {
                uint32_t r[4];
                ldsm(r, sQb + swz<D>(nb * 8 + L.yr, 2 * kk + L.yc));
                mma(st[nb], kf[kk], r[0], r[1]);
                mma(st[nb + 1], kf[kk], r[2], r[3]);
                ldsm(r, sdOb + swz<D>(nb * 8 + L.yr, 2 * kk + L.yc));
                mma(dpt[nb], vf[kk], r[0], r[1]);
                mma(dpt[nb + 1], vf[kk], r[2], r[3]);
            }
        // P^T = exp2(S^T * scale_log2 - lse_log2), masked; dS^T = P^T * (dP^T - D_i).
        const bool masked = k0 + kw + 15 > q0;  // some key of this warp may follow some query
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int qi = nb * 8 + 2 * t + (e & 1);
                float p = exp2_approx(fmaf(st[nb][e], scale_log2, -sl[qi]));
                if (masked && k0 + kw + g + (e >> 1) * 8 > q0 + qi) p = 0.f;
                st[nb][e] = p;
                dpt[nb][e] = p * (dpt[nb][e] - sd[qi]);
            }
        // dV += P^T dO and dK += dS^T Q (scaled at the end).
#pragma unroll
        for (int kq = 0; kq < Br / 16; ++kq) {
            uint32_t ap[4], ads[4];
            acc_to_a(ap, st[2 * kq], st[2 * kq + 1]);
            acc_to_a(ads, dpt[2 * kq], dpt[2 * kq + 1]);
#pragma unroll
            for (int db = 0; db < DB; db += 2) {
                uint32_t r[4];
                ldsm_t(r, sdOb + swz<D>(kq * 16 + L.xr, db + L.xc));
                mma(dva[db], ap, r[0], r[1]);
                mma(dva[db + 1], ap, r[2], r[3]);
                ldsm_t(r, sQb + swz<D>(kq * 16 + L.xr, db + L.xc));
                mma(dka[db], ads, r[0], r[1]);
                mma(dka[db + 1], ads, r[2], r[3]);
            }
        }
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) stage_acc<Br>(pdS, kw, nb, dpt[nb], 1.f, g, t);
        __syncthreads();

        // dQ share = dS K over the block's Bc keys: warp -> 16 queries x D / DSPLIT columns.
        {
            constexpr int MQ = Br / 16, DSPLIT = kBwdWarps / MQ, DW = DB / DSPLIT;
            static_assert(kBwdWarps % MQ == 0, "warps must cover the query m-tiles evenly");
            const int mq = warp % MQ, dh = (warp / MQ) * DW;
            float dqa[DW][4] = {};
#pragma unroll
            for (int kk = 0; kk < Bc / 16; ++kk) {
                uint32_t a[4];
                ldsm_t(a, sdS + swz<Br>(kk * 16 + L.yr, 2 * mq + L.yc));
#pragma unroll
                for (int db = 0; db < DW; db += 2) {
                    uint32_t r[4];
                    ldsm_t(r, sK + swz<D>(kk * 16 + L.xr, dh + db + L.xc));
                    mma(dqa[db], a, r[0], r[1]);
                    mma(dqa[db + 1], a, r[2], r[3]);
                }
            }
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int row = q0 + mq * 16 + g + hr * 8;
                if (row >= T) continue;
                float* dst = dq_acc + ((size_t(b) * T + row) * Hq + h) * D + dh * 8 + 2 * t;
#pragma unroll
                for (int db = 0; db < DW; ++db) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                    atomicAdd(reinterpret_cast<float2*>(dst + db * 8),
                              make_float2(dqa[db][2 * hr], dqa[db][2 * hr + 1]));
#else
                    atomicAdd(dst + db * 8, dqa[db][2 * hr]);
                    atomicAdd(dst + db * 8 + 1, dqa[db][2 * hr + 1]);
#endif
                }
            }
        }
        // The other stage's stats were last read before this step's first barrier.
        if (it + 1 < n_it && threadIdx.x < 2 * Br) stats[(buf ^ 1) * 2 * Br + threadIdx.x] = next_stat;
    }

    __syncthreads();  // every warp is done with K (dQ) before the tiles are reused for staging
#pragma unroll
    for (int db = 0; db < DB; ++db) {
        stage_acc<D>(pK, kw, db, dka[db], scale, g, t);
        stage_acc<D>(pV, kw, db, dva[db], 1.f, g, t);
    }
    __syncwarp();
    const size_t kv_off = (size_t(b) * T * Hkv + hk) * D;
    store_rows<16, D>(dk + kv_off, ks, k0 + kw, T, pK, kw, lane);
    store_rows<16, D>(dv + kv_off, ks, k0 + kw, T, pV, kw, lane);
}

// dq = bf16(dq_acc * scale), 8 elements a thread.
__global__ void dq_convert_kernel(const float* __restrict__ dq_acc, bf16* __restrict__ dq, size_t n8,
                                  float scale) {
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    const float4* src = reinterpret_cast<const float4*>(dq_acc) + 2 * i;
    const float4 a = src[0], c = src[1];
    uint4 o;
    o.x = pack(a.x * scale, a.y * scale);
    o.y = pack(a.z * scale, a.w * scale);
    o.z = pack(c.x * scale, c.y * scale);
    o.w = pack(c.z * scale, c.w * scale);
    reinterpret_cast<uint4*>(dq)[i] = o;
}

// ---- host side -------------------------------------------------------------------------------

void check_shape(const char* what, int B, int T, int Hq, int Hkv, int D) {
    if (B < 1 || T < 1 || Hq < 1 || Hkv < 1)
        fail("%s: B, T, Hq, Hkv must be >= 1 (got B=%d T=%d Hq=%d Hkv=%d)", what, B, T, Hq, Hkv);
    if (Hq % Hkv != 0) fail("%s: Hq=%d is not a multiple of Hkv=%d", what, Hq, Hkv);
    if (D != 64) fail("%s: head dim D=%d is not supported (only 64)", what, D);
}

void check_aligned(const char* what, std::initializer_list<const void*> ptrs) {
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("%s: a tensor is not 16-byte aligned", what);
}

template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
    PG_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace

void flash_attention_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse,
                             int B, int T, int Hq, int Hkv, int D, cudaStream_t stream) {
    check_shape("flash_attention_forward", B, T, Hq, Hkv, D);
    check_aligned("flash_attention_forward", {q, k, v, out, lse});
    constexpr int HD = 64;
    const int smem = fwd_smem_bytes<HD>();
    set_smem(fwd_kernel<HD>, smem);
    const dim3 grid(B * Hq, (T + kFwdBr - 1) / kFwdBr);
    const float scale_log2 = kLog2e / std::sqrt(float(D));
    fwd_kernel<HD><<<grid, kFwdWarps * 32, smem, stream>>>(q, k, v, out, lse, T, Hq, Hkv, scale_log2);
    PG_CHECK_LAUNCH();
}

size_t flash_attention_backward_workspace_bytes(int B, int T, int Hq, int D) {
    return size_t(B) * T * Hq * (size_t(D) + 1) * sizeof(float);
}

void flash_attention_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* out,
                              const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv,
                              void* workspace, int B, int T, int Hq, int Hkv, int D,
                              cudaStream_t stream) {
    check_shape("flash_attention_backward", B, T, Hq, Hkv, D);
    check_aligned("flash_attention_backward", {q, k, v, out, lse, dout, dq, dk, dv, workspace});
    constexpr int HD = 64;
    const int rows = B * T * Hq;
    float* dq_acc = static_cast<float*>(workspace);
    float* delta = dq_acc + size_t(rows) * D;
    const float scale = 1.f / std::sqrt(float(D));

    const int prep_threads = 256;
    const size_t prep_total = size_t(rows) * (HD / 8);
    bwd_prep_kernel<HD><<<unsigned((prep_total + prep_threads - 1) / prep_threads), prep_threads, 0,
                          stream>>>(out, dout, delta, dq_acc, rows, T, Hq);
    PG_CHECK_LAUNCH();

    const int smem = bwd_smem_bytes<HD>();
    set_smem(bwd_kernel<HD>, smem);
    const dim3 grid(B * Hkv, (T + kBwdBc - 1) / kBwdBc);
    bwd_kernel<HD><<<grid, kBwdWarps * 32, smem, stream>>>(q, k, v, dout, lse, delta, dq_acc, dk, dv,
                                                          T, Hq, Hkv, scale * kLog2e, scale);
    PG_CHECK_LAUNCH();

    const size_t n8 = size_t(rows) * D / 8;
    dq_convert_kernel<<<unsigned((n8 + 255) / 256), 256, 0, stream>>>(dq_acc, dq, n8, scale);
    PG_CHECK_LAUNCH();
}

}  // namespace pg
