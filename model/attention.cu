// Causal GQA flash attention (FlashAttention-2 split of the work) for head dims 32, 64 and 128.
// The CPU oracle is model/attention_ref.h.
//
// Every product is written for a warpgroup (4 warps, 64 rows of the result): on sm_90 it is one
// wgmma per 16-deep step, operands read by the tensor cores straight from swizzled shared
// memory (or A from registers); elsewhere (sm_80) the same call runs as ldmatrix + mma.sync per
// warp. Tiles arrive by cp.async, double-buffered.
//
// Forward: one block = 64 query rows of one (batch, query head), one warpgroup. Key/value tiles
// of 64 rows stream past; scores stay in registers and the softmax is online in fp32 base 2
// (log2(e)/sqrt(D) folded into one scale). The query tiles with the most key tiles are launched
// first across the whole grid, which keeps the last wave short.
//
// Backward: one block = 64 keys of one (batch, KV head) per warpgroup (three warpgroups at head
// dim 64, two at 128, one at 32), with dK, dV accumulating in registers while 64-query tiles
// of Q and dO of every query head in the group stream past. P and dS are rebuilt from lse and
// D_i = rowsum(dO * O); dS^T goes through shared memory so that each warpgroup's dQ share is
// one more product; the shares are summed in shared memory and the block's sum leaves as fp32
// vector atomics into the workspace. Blocks run in chunks of (batch, KV head) groups, heaviest
// key tiles first within a chunk: ordering the whole grid heaviest first sent the dQ atomics
// past L2 once the fp32 dQ outgrew it (25% slower at B = 24, T = 2048, 8 heads of 64).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "common/cuda_check.cuh"
#include "model/atomics.cuh"
#include "model/attention.cuh"
#include "model/wgmma.cuh"

namespace pg {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ---- tiles in and out of shared memory (model/wgmma.cuh has the layout and the products) ----

// ROWS rows of D bf16 starting at global row row0 (row stride `stride` elements) into a tile;
// rows >= T become zeros.
template <int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(uint32_t s, const bf16* g, size_t stride, int row0, int T) {
    constexpr int CH = D / 8;
#pragma unroll
    for (int j = 0; j < (ROWS * CH + THREADS - 1) / THREADS; ++j) {
        const int i = threadIdx.x + j * THREADS, r = i / CH, c = i % CH;
        if (ROWS * CH % THREADS != 0 && i >= ROWS * CH) break;
        const bool valid = row0 + r < T;
        cp_async16(s + Tile<ROWS, D>::off(r, c), g + size_t(valid ? row0 + r : 0) * stride + c * 8, valid);
    }
}

// The accumulators of two adjacent 8-column blocks (columns 16j..16j+15) are, element for
// element, the A fragment of a 16x16 operand: this is how P and dS feed the next product.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
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

// The accumulator columns n0..n0+N-1 of a wider accumulator, as an N-wide accumulator.
template <int N, int W>
__device__ __forceinline__ float (&cols(float (&acc)[W / 8][4], int n0))[N / 8][4] {
    return *reinterpret_cast<float(*)[N / 8][4]>(&acc[n0 / 8]);
}

// A warp stores ROWS staged tile rows (r0..) to global rows grow0.. (row stride `stride`)
// with 16-byte stores, skipping rows >= T.
template <int TROWS, int D, int ROWS>
__device__ __forceinline__ void store_rows(bf16* g, size_t stride, int grow0, int T, const unsigned char* tile,
                                           int r0, int lane) {
    constexpr int CH = D / 8;
    static_assert(ROWS * CH % 32 == 0, "rows must split evenly over the lanes");
#pragma unroll
    for (int j = 0; j < ROWS * CH / 32; ++j) {
        const int i = lane + j * 32, r = i / CH, c = i % CH;
        if (grow0 + r < T)
            *reinterpret_cast<uint4*>(g + size_t(grow0 + r) * stride + c * 8) =
                *reinterpret_cast<const uint4*>(tile + Tile<TROWS, D>::off(r0 + r, c));
    }
}

// Writes a warp's accumulator (rows r0 + g, r0 + g + 8; every n-block) as bf16 times s into a tile.
template <int TROWS, int W>
__device__ __forceinline__ void stage_acc(unsigned char* tile, int r0, const float (&c)[W / 8][4], float s,
                                          int g, int t) {
#pragma unroll
    for (int nb = 0; nb < W / 8; ++nb) {
        *reinterpret_cast<uint32_t*>(tile + Tile<TROWS, W>::off(r0 + g, nb) + t * 4) = pack(c[nb][0] * s, c[nb][1] * s);
        *reinterpret_cast<uint32_t*>(tile + Tile<TROWS, W>::off(r0 + g + 8, nb) + t * 4) =
            pack(c[nb][2] * s, c[nb][3] * s);
    }
}

// ---- forward -----------------------------------------------------------------------------------

constexpr int kFwdBr = 64, kFwdBc = 64;  // query rows per block (one warpgroup), keys per tile

template <int D>
constexpr int fwd_smem_bytes() {
    return Tile<kFwdBr, D>::BYTES + 4 * Tile<kFwdBc, D>::BYTES + kSmemSlack;  // Q, K[2], V[2]
}

// Four blocks share an SM where registers allow (D <= 64: 128 registers a thread).
template <int D>
__global__ void __launch_bounds__(128, D <= 64 ? 4 : 1)
    fwd_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
               bf16* __restrict__ out, float* __restrict__ lse, int T, int Hq, int Hkv, float scale_log2) {
    constexpr int Br = kFwdBr, Bc = kFwdBc, NT = 128;
    constexpr int NB = Bc / 8, DB = D / 8, DN = D < 64 ? D : 64;
    using TQ = Tile<Br, D>;
    using TK = Tile<Bc, D>;
    unsigned char* const smem = aligned_smem();
    const uint32_t sQ = smem_addr(smem), sK = sQ + TQ::BYTES, sV = sK + 2 * TK::BYTES;

    const int bh = blockIdx.x, b = bh / Hq, h = bh % Hq, hk = h / (Hq / Hkv);
    const int q0 = (gridDim.y - 1 - blockIdx.y) * Br;  // blockIdx.y = 0, the most key tiles, first
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const size_t qs = size_t(Hq) * D, ks = size_t(Hkv) * D;
    const bf16* qg = q + (size_t(b) * T * Hq + h) * D;
    const bf16* kg = k + (size_t(b) * T * Hkv + hk) * D;
    const bf16* vg = v + (size_t(b) * T * Hkv + hk) * D;
    const int n_kt = (min(q0 + Br, T) - 1) / Bc + 1;
    const int wr = warp * 16;  // this warp's first row in the tile
    const int row0 = q0 + wr;

    load_tile<Br, D, NT>(sQ, qg, qs, q0, T);
    load_tile<Bc, D, NT>(sK, kg, ks, 0, T);
    load_tile<Bc, D, NT>(sV, vg, ks, 0, T);
    cp_async_commit();

    float o[DB][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int kt = 0; kt < n_kt; ++kt) {
        const int buf = kt & 1;
        cp_async_wait<0>();
        fence_smem_for_tensor_cores();
        __syncthreads();  // tile kt visible; every warp is done with tile kt - 1
        if (kt + 1 < n_kt) {
            load_tile<Bc, D, NT>(sK + (buf ^ 1) * TK::BYTES, kg, ks, (kt + 1) * Bc, T);
            load_tile<Bc, D, NT>(sV + (buf ^ 1) * TK::BYTES, vg, ks, (kt + 1) * Bc, T);
            cp_async_commit();
        }
        const int k0 = kt * Bc;
        const uint32_t sKb = sK + buf * TK::BYTES, sVb = sV + buf * TK::BYTES;
        float s[NB][4];
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            wg_mma<Bc>(s, Smem<TQ, false>{sQ, 0, kk * 16}, Smem<TK, false>{sKb, 0, kk * 16}, kk > 0);
        wg_commit();
        wg_wait<0>();
        pin(s);
        // Tiles are in key order, so the first (key 0) is never fully masked and m is finite after it.
        if (k0 + Bc - 1 > row0) {  // some key may follow some row: causal mask (and keys >= T)
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (k0 + nb * 8 + 2 * t + (e & 1) > row0 + g + (e >> 1) * 8) s[nb][e] = -INFINITY;
        }
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {  // rows g and g + 8
            float mx = -INFINITY;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * hr], s[nb][2 * hr + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[hr], mx * scale_log2);
            // A row with every key masked so far keeps m = -inf; subtract 0, not -inf.
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            const float corr = exp2_approx(m[hr] - m_use);
            m[hr] = m_new;
            l[hr] *= corr;
#pragma unroll
            for (int db = 0; db < DB; ++db) o[db][2 * hr] *= corr, o[db][2 * hr + 1] *= corr;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                    const float p = exp2_approx(fmaf(s[nb][e], scale_log2, -m_use));
                    s[nb][e] = p;
                    l[hr] += p;
                }
        }
        uint32_t pf[Bc / 16][4];
#pragma unroll
        for (int kk = 0; kk < Bc / 16; ++kk) acc_to_a(pf[kk], s[2 * kk], s[2 * kk + 1]);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < Bc / 16; ++kk)
#pragma unroll
            for (int n0 = 0; n0 < D; n0 += DN)
                wg_mma<DN>(cols<DN, D>(o, n0), RegA{pf[kk]}, Smem<TK, true>{sVb, n0, kk * 16}, true);
        wg_commit();
        wg_wait<0>();
        pin(o);
        pin(pf);
    }

    // Normalise, save lse, and stage this warp's rows in its own rows of the Q tile (every product
    // that read it has finished) for 16-byte stores.
    float inv[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        float sum = l[hr];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        inv[hr] = 1.f / sum;
        const int row = row0 + g + hr * 8;
        if (t == 0 && row < T) lse[size_t(bh) * T + row] = (m[hr] + __log2f(sum)) / kLog2e;
    }
#pragma unroll
    for (int db = 0; db < DB; ++db) {
        o[db][0] *= inv[0], o[db][1] *= inv[0];
        o[db][2] *= inv[1], o[db][3] *= inv[1];
    }
    stage_acc<Br, D>(smem, wr, o, 1.f, g, t);
    __syncwarp();
    store_rows<Br, D, 16>(out + (size_t(b) * T * Hq + h) * D, qs, row0, T, smem, wr, lane);
}

// ---- backward ----------------------------------------------------------------------------------

constexpr int kBwdBr = 64;  // queries per step

// Warpgroups per block, 64 keys each. More keys a block mean fewer reads of Q and dO and fewer
// dQ atomics per key: with one warpgroup at D = 64 the kernel was L2-bound. The count is what
// the registers allow in one block an SM (168 a thread for three, 250 for two at D = 128),
// except at D = 32, where one warpgroup runs three blocks an SM and is faster. Backward times
// at B = 24, T = 2048, 8/4 heads on an H100, one warpgroup -> this count:
// D = 64 1.13 -> 0.97-1.00 ms, D = 128 2.30 -> 1.67 ms, D = 32 0.67 ms (three: 0.70-0.72).
template <int D>
constexpr int bwd_warpgroups() {
    return D == 32 ? 1 : D == 64 ? 3 : 2;
}

// Row stride, in floats, of the warpgroups' fp32 dQ shares in shared memory: padded so that a
// half-warp's 8-byte accumulator stores hit distinct banks.
template <int D>
constexpr int dq_share_stride() {
    return D + 8;
}

template <int D>
constexpr int bwd_smem_bytes() {
    // K, V, Q[2], dO[2], dS^T (keys x queries), lse*log2(e) and D_i for 2 stages, dQ shares.
    constexpr int WG = bwd_warpgroups<D>(), Bc = 64 * WG;
    return 2 * Tile<Bc, D>::BYTES + 4 * Tile<kBwdBr, D>::BYTES + Tile<Bc, kBwdBr>::BYTES + 2 * 2 * kBwdBr * 4 +
           WG * kBwdBr * dq_share_stride<D>() * 4 + kSmemSlack;
}

// D_i = rowsum(dO * O) for every query row, and the dq accumulator zeroed. D / 8 threads a row.
template <int D>
__global__ void bwd_prep_kernel(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                float* __restrict__ delta, float* __restrict__ dq_acc, int rows, int T, int Hq) {
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

// Waits for the 4 warps of warpgroup wg: named barrier 1 + wg (0 is __syncthreads'). The ids
// are immediates, so that a block reserves only the barriers it names.
__device__ __forceinline__ void wg_barrier(int wg) {
    switch (wg) {
        case 0: asm volatile("bar.sync 1, 128;\n" ::: "memory"); break;
        case 1: asm volatile("bar.sync 2, 128;\n" ::: "memory"); break;
        default: asm volatile("bar.sync 3, 128;\n" ::: "memory"); break;
    }
}

// With one warpgroup, three blocks share an SM where registers allow (D <= 64: 168 registers a
// thread); with more, one block an SM. The grid runs in chunks of `chunk` (batch, KV head)
// groups; inside a chunk the key tiles go heaviest (most query tiles) first: tile 0 of each
// group of the chunk, then tile 1, and so on. The dQ rows that a chunk's blocks add into then
// fit in L2, and the work inside a chunk stays balanced.
template <int D>
__global__ void __launch_bounds__(128 * bwd_warpgroups<D>(), D <= 64 ? 3 / bwd_warpgroups<D>() : 1)
    bwd_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
               const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
               float* __restrict__ dq_acc, bf16* __restrict__ dk, bf16* __restrict__ dv, int T, int Hq, int Hkv,
               int chunk, float scale_log2, float scale) {
    constexpr int WG = bwd_warpgroups<D>(), Bc = 64 * WG, Br = kBwdBr, NT = 128 * WG;
    static_assert(WG >= 1 && WG <= 3, "wg_barrier names three warpgroups");
    constexpr int NB = Br / 8, DB = D / 8, DN = D < 64 ? D : 64;
    using TK = Tile<Bc, D>;
    using TQ = Tile<Br, D>;
    using TS = Tile<Bc, Br>;
    unsigned char* const smem = aligned_smem();
    unsigned char* const pK = smem;
    unsigned char* const pV = pK + TK::BYTES;
    unsigned char* const pdS = pV + TK::BYTES + 4 * TQ::BYTES;
    const uint32_t sK = smem_addr(pK), sV = smem_addr(pV);
    const uint32_t sQ = sV + TK::BYTES, sdO = sQ + 2 * TQ::BYTES, sdS = smem_addr(pdS);
    float* const stats = reinterpret_cast<float*>(pdS + TS::BYTES);  // [2][lse | D_i]
    constexpr int PS = dq_share_stride<D>();
    float* const shares = stats + 2 * 2 * Br;  // [WG][Br][PS]

    const int group = Hq / Hkv;
    const int n_kt = (T + Bc - 1) / Bc, n_groups = gridDim.x / n_kt;
    const int c = blockIdx.x / (chunk * n_kt), r = blockIdx.x % (chunk * n_kt);
    const int in_chunk = min(chunk, n_groups - c * chunk);
    const int k0 = r / in_chunk * Bc, grp = c * chunk + r % in_chunk;
    const int b = grp / Hkv, hk = grp % Hkv;
    const int qt0 = k0 / Br, per_head = (T + Br - 1) / Br - qt0, n_it = group * per_head;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wg = warp / 4, kw = warp * 16;  // this warp's warpgroup and first key in the tile
    const size_t qs = size_t(Hq) * D, ks = size_t(Hkv) * D;
    const bf16* kg = k + (size_t(b) * T * Hkv + hk) * D;
    const bf16* vg = v + (size_t(b) * T * Hkv + hk) * D;

    // Step `it` visits query head hk*group + it / per_head, query tile qt0 + it % per_head.
    auto head = [&](int it) { return hk * group + it / per_head; };
    auto qrow0 = [&](int it) { return (qt0 + it % per_head) * Br; };
    auto issue = [&](int it, int buf) {
        const size_t off = (size_t(b) * T * Hq + head(it)) * D;
        load_tile<Br, D, NT>(sQ + buf * TQ::BYTES, q + off, qs, qrow0(it), T);
        load_tile<Br, D, NT>(sdO + buf * TQ::BYTES, dout + off, qs, qrow0(it), T);
        cp_async_commit();
    };
    // Threads 0..Br-1 fetch lse (in log2 units; +inf past T so P = 0), Br..2Br-1 fetch D_i.
    auto fetch_stat = [&](int it) {
        const int i = threadIdx.x % Br, row = qrow0(it) + i;
        const size_t at = (size_t(b) * Hq + head(it)) * T + row;
        if (threadIdx.x < Br) return row < T ? lse[at] * kLog2e : INFINITY;
        return row < T ? delta[at] : 0.f;
    };
    static_assert(2 * Br <= NT, "one thread per statistic");

    load_tile<Bc, D, NT>(sK, kg, ks, k0, T);
    load_tile<Bc, D, NT>(sV, vg, ks, k0, T);
    issue(0, 0);
    if (threadIdx.x < 2 * Br) stats[threadIdx.x] = fetch_stat(0);

    float dka[DB][4] = {}, dva[DB][4] = {};

    for (int it = 0; it < n_it; ++it) {
        const int buf = it & 1, h = head(it), q0 = qrow0(it);
        cp_async_wait<0>();
        fence_smem_for_tensor_cores();
        __syncthreads();  // step it's tiles and stats visible; every warp is done with step it - 1
        float next_stat = 0.f;
        if (it + 1 < n_it) {
            issue(it + 1, buf ^ 1);
            if (threadIdx.x < 2 * Br) next_stat = fetch_stat(it + 1);
        }
        const uint32_t sQb = sQ + buf * TQ::BYTES, sdOb = sdO + buf * TQ::BYTES;
        const float* sl = stats + buf * 2 * Br;
        const float* sd = sl + Br;

        // S^T = K Q^T and dP^T = V dO^T: 64 keys x Br queries.
        float st[NB][4], dpt[NB][4];
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            wg_mma<Br>(st, Smem<TK, false>{sK, 64 * wg, kk * 16}, Smem<TQ, false>{sQb, 0, kk * 16}, kk > 0);
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            wg_mma<Br>(dpt, Smem<TK, false>{sV, 64 * wg, kk * 16}, Smem<TQ, false>{sdOb, 0, kk * 16}, kk > 0);
        wg_commit();
        // P^T = exp2(S^T * scale_log2 - lse_log2), masked, while dP^T is still being computed.
        wg_wait<1>();
        pin(st);
        const bool masked = k0 + kw + 15 > q0;  // some key of this warp may follow some query
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int qi = nb * 8 + 2 * t + (e & 1);
                float p = exp2_approx(fmaf(st[nb][e], scale_log2, -sl[qi]));
                if (masked && k0 + kw + g + (e >> 1) * 8 > q0 + qi) p = 0.f;
                st[nb][e] = p;
            }
        // dS^T = P^T * (dP^T - D_i).
        wg_wait<0>();
        pin(dpt);
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) dpt[nb][e] = st[nb][e] * (dpt[nb][e] - sd[nb * 8 + 2 * t + (e & 1)]);

        // dV += P^T dO and dK += dS^T Q (scaled at the end).
        uint32_t ap[Br / 16][4], ads[Br / 16][4];
#pragma unroll
        for (int kq = 0; kq < Br / 16; ++kq) {
            acc_to_a(ap[kq], st[2 * kq], st[2 * kq + 1]);
            acc_to_a(ads[kq], dpt[2 * kq], dpt[2 * kq + 1]);
        }
        wg_fence();
#pragma unroll
        for (int kq = 0; kq < Br / 16; ++kq)
#pragma unroll
            for (int n0 = 0; n0 < D; n0 += DN) {
                wg_mma<DN>(cols<DN, D>(dva, n0), RegA{ap[kq]}, Smem<TQ, true>{sdOb, n0, kq * 16}, true);
                wg_mma<DN>(cols<DN, D>(dka, n0), RegA{ads[kq]}, Smem<TQ, true>{sQb, n0, kq * 16}, true);
            }
        wg_commit();

        // dS^T to shared memory (its bf16 A fragments are exactly the values to store). Each
        // warpgroup reads back only its own rows, so its own barrier suffices.
#pragma unroll
        for (int kq = 0; kq < Br / 16; ++kq)
#pragma unroll
            for (int i = 0; i < 4; ++i)
                *reinterpret_cast<uint32_t*>(pdS + TS::off(kw + g + (i & 1) * 8, 2 * kq + (i >> 1)) + t * 4) = ads[kq][i];
        fence_smem_for_tensor_cores();
        wg_barrier(wg);

        // This warpgroup's dQ share = dS K over its 64 keys (Br queries x D, in slices of DN), into
        // shared memory; then the block sums the shares and adds the sum into the workspace with
        // fp32 vector atomics, one per 4 columns of a row.
        float* const share = shares + wg * Br * PS;
        const int qr = (warp % 4) * 16 + g;  // this thread's first query row of the share
#pragma unroll
        for (int n0 = 0; n0 < D; n0 += DN) {
            float dqa[DN / 8][4];
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                wg_mma<DN>(dqa, Smem<TS, true>{sdS, 0, 64 * wg + kk * 16}, Smem<TK, true>{sK, n0, 64 * wg + kk * 16},
                           kk > 0);
            wg_commit();
            wg_wait<0>();
            pin(dqa);
#pragma unroll
            for (int j = 0; j < DN / 8; ++j) {
                const int col = n0 + j * 8 + 2 * t;
                *reinterpret_cast<float2*>(share + qr * PS + col) = make_float2(dqa[j][0], dqa[j][1]);
                *reinterpret_cast<float2*>(share + (qr + 8) * PS + col) = make_float2(dqa[j][2], dqa[j][3]);
            }
        }
        __syncthreads();
        for (int i = threadIdx.x; i < Br * D / 4; i += NT) {
            const int r = i / (D / 4), c = i % (D / 4) * 4;
            float4 sum = *reinterpret_cast<const float4*>(shares + r * PS + c);
#pragma unroll
            for (int w = 1; w < WG; ++w) {
                const float4 x = *reinterpret_cast<const float4*>(shares + (w * Br + r) * PS + c);
                sum.x += x.x, sum.y += x.y, sum.z += x.z, sum.w += x.w;
            }
            if (q0 + r < T) atomic_add4(dq_acc + ((size_t(b) * T + q0 + r) * Hq + h) * D + c, sum);
        }
        pin(dka);
        pin(dva);
        pin(ap);
        pin(ads);
        // The other stage's stats were last read in step it - 1.
        if (it + 1 < n_it && threadIdx.x < 2 * Br) stats[(buf ^ 1) * 2 * Br + threadIdx.x] = next_stat;
    }

    __syncthreads();  // every warp is done with K and V before the tiles are reused for staging
    stage_acc<Bc, D>(pK, kw, dka, scale, g, t);
    stage_acc<Bc, D>(pV, kw, dva, 1.f, g, t);
    __syncwarp();
    const size_t kv_off = (size_t(b) * T * Hkv + hk) * D;
    store_rows<Bc, D, 16>(dk + kv_off, ks, k0 + kw, T, pK, kw, lane);
    store_rows<Bc, D, 16>(dv + kv_off, ks, k0 + kw, T, pV, kw, lane);
}

// dq = bf16(dq_acc * scale), 8 elements a thread.
__global__ void dq_convert_kernel(const float* __restrict__ dq_acc, bf16* __restrict__ dq, size_t n8, float scale) {
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

// ---- host side ---------------------------------------------------------------------------------

void check_shape(const char* what, int B, int T, int Hq, int Hkv, int D) {
    if (B < 1 || T < 1 || Hq < 1 || Hkv < 1)
        fail("%s: B, T, Hq, Hkv must be >= 1 (got B=%d T=%d Hq=%d Hkv=%d)", what, B, T, Hq, Hkv);
    if (Hq % Hkv != 0) fail("%s: Hq=%d is not a multiple of Hkv=%d", what, Hq, Hkv);
    if (!flash_attention_supports_head_dim(D))
        fail("%s: head dim D=%d is not supported (only 32, 64, 128)", what, D);
}

void check_aligned(const char* what, std::initializer_list<const void*> ptrs) {
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("%s: a tensor is not 16-byte aligned", what);
}

// L2 size of the current device, read once.
size_t l2_bytes() {
    static const size_t bytes = [] {
        int dev = 0, l2 = 0;
        PG_CHECK(cudaGetDevice(&dev));
        PG_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        return size_t(l2);
    }();
    return bytes;
}

template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
    PG_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// Calls f with std::integral_constant<int, D> for the run-time head dim D.
template <typename F>
void with_head_dim(int D, F&& f) {
    switch (D) {
        case 32: return f(std::integral_constant<int, 32>{});
        case 64: return f(std::integral_constant<int, 64>{});
        case 128: return f(std::integral_constant<int, 128>{});
    }
}

template <int D>
void launch_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int B, int T, int Hq,
                    int Hkv, cudaStream_t stream) {
    constexpr int smem = fwd_smem_bytes<D>();
    set_smem(fwd_kernel<D>, smem);
    const dim3 grid(B * Hq, (T + kFwdBr - 1) / kFwdBr);
    const float scale_log2 = kLog2e / std::sqrt(float(D));
    fwd_kernel<D><<<grid, 128, smem, stream>>>(q, k, v, out, lse, T, Hq, Hkv, scale_log2);
    PG_CHECK_LAUNCH();
}

template <int D>
void launch_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* out, const float* lse,
                     const bf16* dout, bf16* dq, bf16* dk, bf16* dv, void* workspace, int B, int T, int Hq,
                     int Hkv, cudaStream_t stream) {
    const int rows = B * T * Hq;
    float* dq_acc = static_cast<float*>(workspace);
    float* delta = dq_acc + size_t(rows) * D;
    const float scale = 1.f / std::sqrt(float(D));

    const int prep_threads = 256;
    const size_t prep_total = size_t(rows) * (D / 8);
    bwd_prep_kernel<D><<<unsigned((prep_total + prep_threads - 1) / prep_threads), prep_threads, 0, stream>>>(
        out, dout, delta, dq_acc, rows, T, Hq);
    PG_CHECK_LAUNCH();

    constexpr int smem = bwd_smem_bytes<D>();
    set_smem(bwd_kernel<D>, smem);
    // Chunks of (batch, KV head) groups whose fp32 dQ rows take a third of L2 (at least one group).
    const size_t group_dq_bytes = size_t(Hq / Hkv) * T * D * sizeof(float);
    const int chunk = int(std::max<size_t>(1, l2_bytes() / 3 / group_dq_bytes));
    constexpr int WG = bwd_warpgroups<D>();
    const unsigned blocks = unsigned((T + 64 * WG - 1) / (64 * WG)) * unsigned(B * Hkv);
    bwd_kernel<D><<<blocks, 128 * WG, smem, stream>>>(q, k, v, dout, lse, delta, dq_acc, dk, dv, T, Hq, Hkv,
                                                      chunk, scale * kLog2e, scale);
    PG_CHECK_LAUNCH();

    if (!dq) return;
    const size_t n8 = size_t(rows) * D / 8;
    dq_convert_kernel<<<unsigned((n8 + 255) / 256), 256, 0, stream>>>(dq_acc, dq, n8, scale);
    PG_CHECK_LAUNCH();
}

}  // namespace

bool flash_attention_supports_head_dim(int D) { return D == 32 || D == 64 || D == 128; }

void flash_attention_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int B, int T,
                             int Hq, int Hkv, int D, cudaStream_t stream) {
    check_shape("flash_attention_forward", B, T, Hq, Hkv, D);
    check_aligned("flash_attention_forward", {q, k, v, out, lse});
    with_head_dim(D, [&](auto hd) { launch_forward<decltype(hd)::value>(q, k, v, out, lse, B, T, Hq, Hkv, stream); });
}

size_t flash_attention_backward_workspace_bytes(int B, int T, int Hq, int D) {
    return size_t(B) * T * Hq * (size_t(D) + 1) * sizeof(float);
}

void flash_attention_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* out, const float* lse,
                              const bf16* dout, bf16* dq, bf16* dk, bf16* dv, void* workspace, int B, int T, int Hq,
                              int Hkv, int D, cudaStream_t stream) {
    check_shape("flash_attention_backward", B, T, Hq, Hkv, D);
    check_aligned("flash_attention_backward", {q, k, v, out, lse, dout, dk, dv, workspace});
    if (dq) check_aligned("flash_attention_backward", {dq});
    with_head_dim(D, [&](auto hd) {
        launch_backward<decltype(hd)::value>(q, k, v, out, lse, dout, dq, dk, dv, workspace, B, T, Hq, Hkv, stream);
    });
}

const float* flash_attention_dq_accumulator(const void* workspace) { return static_cast<const float*>(workspace); }

}  // namespace pg
