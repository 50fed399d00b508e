// Causal GQA flash attention for head dims 32, 64 and 128: FlashAttention-2 forward, warp-specialised backward.
// The CPU oracle is model/attention_ref.h.
//
// Every product is written for a warpgroup (4 warps, 64 rows of the result): on sm_90 it is one
// wgmma per 16-deep step, operands read by the tensor cores straight from swizzled shared
// memory (or A from registers); elsewhere (sm_80) the same call runs as ldmatrix + mma.sync per
// warp.
//
// Forward: one block = 64 query rows of one (batch, query head), one warpgroup. Key/value tiles
// of 64 rows stream past, double-buffered, brought by the TMA unit on sm_90 (by cp.async
// elsewhere); scores stay in registers and the softmax is online in fp32 base 2
// (log2(e)/sqrt(D) folded into one scale). The query tiles with the most key tiles are launched
// first across the whole grid, which keeps the last wave short.
//
// Backward: warp-specialised. One block = 64 keys of one (batch, KV head) per consumer
// warpgroup (three at head dims 32 and 64, two at 128) and a producer warpgroup that brings Q,
// dO, lse and D_i = rowsum(dO * O) of every query head in the group, 64 queries a step, into a
// ring of stages; dK, dV accumulate in registers. The consumers do not run in step (mbarriers,
// not block barriers), so the tensor cores serve one warpgroup's products while another rebuilds
// P and dS. Each step's dQ is one warpgroup's product over all the block's keys, in turn, one
// step late; the TMA unit adds it into an fp32 workspace (bulk reductions). bwd_kernel says more.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "common/cuda_check.cuh"
#include "model/atomics.cuh"
#include "model/attention.cuh"
#include "model/head_vec.cuh"  // k's and v's share of qkv_prep's backward, in the epilogue
#include "model/tensor_map.cuh"
#include "model/wgmma.cuh"

namespace pg {
namespace {


// ---- tiles in and out of shared memory (model/wgmma.cuh has the layout and the products) ----

// ROWS rows of D bf16 starting at global row row0 (row stride `stride` elements) into a tile;
// rows >= T become zeros. tid: this thread's index among the THREADS that load the tile.
template <int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(uint32_t s, const bf16* g, size_t stride, int row0, int T, int tid) {
    constexpr int CH = D / 8;
#pragma unroll
    for (int j = 0; j < (ROWS * CH + THREADS - 1) / THREADS; ++j) {
        const int i = tid + j * THREADS, r = i / CH, c = i % CH;
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
    return Tile<kFwdBr, D>::BYTES + 4 * Tile<kFwdBc, D>::BYTES + 2 * 8 + kSmemSlack;  // Q, K[2], V[2], 2 mbarriers
}

// ROWS rows from row r0 of head `head` of sequence b ([B][T][heads * D], tensor_map's rank-3 map)
// into a tile by the TMA unit, one box a column block; rows past T arrive as zeros. One thread
// issues a tile: with the forward's K/V tiles as cp.async, 8 copies a thread and tile, it ran at
// 355 TFLOP/s, against 443 with no loads at all and 395 so (B = 24, T = 2048, D = 64; session 20).
template <int ROWS, int D>
__device__ __forceinline__ void tma_tile(uint32_t dst, const CUtensorMap* map, int head, int r0, int b, uint32_t bar) {
    using TT = Tile<ROWS, D>;
#pragma unroll
    for (int cb = 0; cb < D / TT::CW; ++cb) tma_load(dst + cb * TT::BLOCK, map, head * D + cb * TT::CW, r0, b, bar);
}

// The map that tma_tile<ROWS, D> reads a [B][T][heads * D] tensor through.
template <int ROWS, int D>
CUtensorMap head_map(const bf16* p, int B, int T, int heads) {
    return tensor_map(p, T, heads * D, ROWS, Tile<ROWS, D>::CW, B);
}

// Four blocks share an SM where registers allow (D <= 64: 128 registers a thread). The grid
// runs in chunks of `chunk` (batch, head) pairs, as the backward's does; inside a chunk the
// query tiles go heaviest (most key tiles) first: the last tile of each pair of the chunk, then
// the one before, and so on. The K/V rows that a chunk's blocks read then stay in L2 (ordered
// heaviest first over the whole grid, every pair's K/V was in use at once).
template <int D>
__global__ void __launch_bounds__(128, D <= 64 ? 4 : 1)
    fwd_kernel(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
               const __grid_constant__ CUtensorMap map_v, const bf16* __restrict__ q, const bf16* __restrict__ k,
               const bf16* __restrict__ v, bf16* __restrict__ out, float* __restrict__ lse, int T, int Hq, int Hkv,
               int chunk, float scale_log2) {
    constexpr int Br = kFwdBr, Bc = kFwdBc, NT = 128;
    constexpr int NB = Bc / 8, DB = D / 8, DN = D < 64 ? D : 64;
    using TQ = Tile<Br, D>;
    using TK = Tile<Bc, D>;
    unsigned char* const smem = aligned_smem();
    const uint32_t sQ = smem_addr(smem), sK = sQ + TQ::BYTES, sV = sK + 2 * TK::BYTES;
    auto full = [&](int buf) { return sV + 2 * TK::BYTES + 8 * buf; };  // K/V buffer buf landed (TMA)

    const int n_qt = (T + Br - 1) / Br, pairs = gridDim.x / n_qt;
    const int c = blockIdx.x / (chunk * n_qt), r = blockIdx.x % (chunk * n_qt);
    const int in_chunk = min(chunk, pairs - c * chunk);
    const int bh = c * chunk + r % in_chunk, b = bh / Hq, h = bh % Hq, hk = h / (Hq / Hkv);
    const int q0 = (n_qt - 1 - r / in_chunk) * Br;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const size_t qs = size_t(Hq) * D, ks = size_t(Hkv) * D;
    const bf16* qg = q + (size_t(b) * T * Hq + h) * D;
    const bf16* kg = k + (size_t(b) * T * Hkv + hk) * D;
    const bf16* vg = v + (size_t(b) * T * Hkv + hk) * D;
    const int n_kt = (min(q0 + Br, T) - 1) / Bc + 1;
    const int wr = warp * 16;  // this warp's first row in the tile
    const int row0 = q0 + wr;

    if constexpr (PG_SM90) {
        if (threadIdx.x == 0) {
            mbar_init(full(0), 1);
            mbar_init(full(1), 1);
            mbar_init_fence();
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            mbar_arrive_expect_tx(full(0), TQ::BYTES + 2 * TK::BYTES);
            tma_tile<Br, D>(sQ, &map_q, h, q0, b, full(0));
            tma_tile<Bc, D>(sK, &map_k, hk, 0, b, full(0));
            tma_tile<Bc, D>(sV, &map_v, hk, 0, b, full(0));
        }
    } else {
        load_tile<Br, D, NT>(sQ, qg, qs, q0, T, threadIdx.x);
        load_tile<Bc, D, NT>(sK, kg, ks, 0, T, threadIdx.x);
        load_tile<Bc, D, NT>(sV, vg, ks, 0, T, threadIdx.x);
        cp_async_commit();
    }

    float o[DB][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int kt = 0; kt < n_kt; ++kt) {
        const int buf = kt & 1, next = buf ^ 1;
        if constexpr (PG_SM90) mbar_wait(full(buf), (kt >> 1) & 1);
        else cp_async_wait<0>();
        __syncthreads();  // tile kt visible; every warp is done with tile kt - 1
        if (kt + 1 < n_kt) {
            if constexpr (PG_SM90) {
                if (threadIdx.x == 0) {
                    mbar_arrive_expect_tx(full(next), 2 * TK::BYTES);
                    tma_tile<Bc, D>(sK + next * TK::BYTES, &map_k, hk, (kt + 1) * Bc, b, full(next));
                    tma_tile<Bc, D>(sV + next * TK::BYTES, &map_v, hk, (kt + 1) * Bc, b, full(next));
                }
            } else {
                load_tile<Bc, D, NT>(sK + next * TK::BYTES, kg, ks, (kt + 1) * Bc, T, threadIdx.x);
                load_tile<Bc, D, NT>(sV + next * TK::BYTES, vg, ks, (kt + 1) * Bc, T, threadIdx.x);
                cp_async_commit();
            }
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

constexpr int kBwdBr = 64;      // queries per step
constexpr int kBwdStages = 2;   // Q / dO stages in flight
constexpr int kBwdDsSlots = 2;  // dS^T tiles in flight

// Consumer warpgroups per block (one block an SM), 64 keys each. More keys a block mean fewer
// reads of Q and dO and fewer dQ reductions per key (with one warpgroup at D = 64 an earlier
// kernel was L2-bound); the count is what the registers allow.
template <int D>
constexpr int bwd_warpgroups() {
    return D == 128 ? 2 : 3;
}

// Registers a thread. The launch gives every thread the same count; the producer warpgroup,
// which only issues copies, hands most of its own to the consumers, whose dK and dV accumulators
// and scores would otherwise spill. The consumers' increase must fit in what the producer frees
// (a block's pool: asking for more hangs).
template <int D>
struct BwdRegs {
    static constexpr int WG = bwd_warpgroups<D>(), threads = 128 * (WG + 1);
    static constexpr int launch = 65536 / threads / 8 * 8;
    static constexpr int producer = 32;
    static constexpr int consumer = std::min(240, (launch + (launch - producer) / WG) / 8 * 8);
    static_assert(WG * (consumer - launch) <= launch - producer, "register pool");
};

// Shared memory of the backward, in this order: K and V of the block's keys; the Q and dO
// stages; the dS^T slots; each consumer warpgroup's fp32 dQ staging (64 columns at a time,
// rows padded by 8 floats so that a half-warp's 8-byte accumulator stores hit distinct banks);
// lse * log2(e) and D_i of each stage; the mbarriers.
template <int D>
struct BwdSmem {
    static constexpr int WG = bwd_warpgroups<D>(), Bc = 64 * WG, Br = kBwdBr, S = kBwdStages, NS = kBwdDsSlots;
    static constexpr int DN = D < 64 ? D : 64, PS = DN + 8;
    using TK = Tile<Bc, D>;
    using TQ = Tile<Br, D>;
    using TS = Tile<Bc, Br>;
    static constexpr int K = 0, V = TK::BYTES, Q = 2 * TK::BYTES, dO = Q + S * TQ::BYTES, dS = dO + S * TQ::BYTES;
    static constexpr int staging = dS + NS * TS::BYTES, stats = staging + WG * Br * PS * 4;
    static constexpr int bars = stats + S * 2 * Br * 4, n_bars = 2 * S + 2 * NS;
    static constexpr int bytes = bars + n_bars * 8 + kSmemSlack;
};

// D_i = rowsum(dO * O) for every query row, and the dq accumulator zeroed unless dq_acc is null.
// D / 8 threads a row.
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
        if (dq_acc) {
            float4* z = reinterpret_cast<float4*>(dq_acc + r * D + c * 8);
            z[0] = z[1] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
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
// Waits for the N consumer threads (the producer has left by then).
template <int N>
__device__ __forceinline__ void consumers_barrier() {
    asm volatile("bar.sync 4, %0;\n" ::"n"(N) : "memory");
}

// The L2 lines of what kv_grad_rows reads besides the staged tiles, for `rows` keys from k0 of
// sequence b, KV head hk, prefetched by the producer's 128 threads once their last stage is
// issued: a block's epilogue otherwise waits on DRAM with its SM's tensor cores idle.
template <int D>
__device__ void kv_grad_prefetch(const KvGradEpilogue& e, int b, int hk, int k0, int rows, int T, int tid) {
    const QkvGrad& d = e.d;
    const QkvIn& p = e.p;
    const int H = e.s.H, Hkv = e.s.Hkv, width = (H + 2 * Hkv) * D;
    constexpr int kLines = (D * 2 + 127) / 128;  // a head vector's lines
    const bf16* const from[4] = {d.dv_add, d.dv_add2, p.v_mix ? p.v_first : nullptr,
                                 p.v_mix && d.add_dv_first ? d.dv_first : nullptr};
    for (int i = tid; i < rows * kLines; i += 128) {
        const int pos = k0 + i / kLines, line = i % kLines;
        if (pos >= T) break;
        const size_t n = size_t(b) * T + pos, o = (n * Hkv + hk) * D + line * 64;
        const bf16* const raw = p.qkv + n * width + (H + hk) * D + line * 64;
        prefetch_l2(raw);
        if (p.v_mix) prefetch_l2(raw + Hkv * D);
        for (const bf16* f : from)
            if (f) prefetch_l2(f + o);
        if (e.s.norm && line == 0) prefetch_l2(p.k_rstd + n * Hkv + hk);
    }
}

// k's and v's share of qkv_prep's backward (model/kernels.cuh KvGradEpilogue) on a warp's 16
// staged rows r0.. of dK (pK, scaled) and dV (pV), keys k0 + r0.. of sequence b, KV head hk:
// dqkv's k and v columns, dv_first's share. D / 8 lanes hold a row's vector, 8 values a lane,
// as in kernels.cu's qkv_prep_backward_kernel. Returns the lane's shares of v_mix's two sums
// (dv . v_raw, dv . v_first). The global reads of up to 4 rows a lane are issued together
// before any store: between dqkv's stores, which the compiler cannot tell apart from them, each
// row's reads waited on memory in turn (the epilogue then added 48 us a call at the record shape).
template <bool ALIGNED, int TROWS, int D>
__device__ float2 kv_grad_rows(const KvGradEpilogue& e, const unsigned char* pK, const unsigned char* pV, int r0,
                               int k0, int b, int hk, int T, int lane) {
    constexpr int CH = D / 8, RPI = 32 / CH, ITS = 16 / RPI, BATCH = ITS < 4 ? ITS : 4;  // lanes a row, rows an it.
    const QkvGrad& d = e.d;
    const QkvIn& p = e.p;
    const int H = e.s.H, Hkv = e.s.Hkv, width = (H + 2 * Hkv) * D, c = lane % CH, c0 = c * 8;
    const bool mix = p.v_mix, add_first = mix && d.add_dv_first;
    const float vm0 = mix ? p.v_mix[0] : 1.f, vm1 = mix ? p.v_mix[1] : 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float2 sums = make_float2(0.f, 0.f);
#pragma unroll
    for (int i0 = 0; i0 < ITS; i0 += BATCH) {
        int pos[BATCH], cnt[BATCH];
        size_t o[BATCH], ok[BATCH];  // the row's chunk in v_first and the like; k's in its qkv row (v's: + Hkv D)
        uint4 kx[BATCH], vx[BATCH], add1[BATCH], add2[BATCH], vf[BATCH], dvf[BATCH];
        float rs[BATCH];
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            pos[j] = k0 + r0 + (i0 + j) * RPI + lane / CH, cnt[j] = pos[j] < T ? 8 : 0;
            const size_t n = size_t(b) * T + pos[j];
            o[j] = (n * Hkv + hk) * D + c0, ok[j] = n * width + (H + hk) * D + c0;
            kx[j] = raw8(p.qkv + ok[j], cnt[j]);
            rs[j] = e.s.norm && cnt[j] ? p.k_rstd[n * Hkv + hk] : 1.f;
            add1[j] = d.dv_add ? raw8(d.dv_add + o[j], cnt[j]) : zero;
            add2[j] = d.dv_add2 ? raw8(d.dv_add2 + o[j], cnt[j]) : zero;
            vx[j] = mix ? raw8(p.qkv + ok[j] + Hkv * D, cnt[j]) : zero;
            vf[j] = mix ? raw8(p.v_first + o[j], cnt[j]) : zero;
            dvf[j] = add_first ? raw8(d.dv_first + o[j], cnt[j]) : zero;
        }
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            const int r = pos[j] - k0;
            float vd[8], xn[8];
            float2 cs[8];
            unpack8(vd, *reinterpret_cast<const uint4*>(pK + Tile<TROWS, D>::off(r, c)));
            unpack8(xn, kx[j]);
#pragma unroll
            for (int k = 0; k < 8; ++k) xn[k] *= rs[j];
            rope_angles<ALIGNED>(cs, e.rope, cnt[j] ? e.rope.dims : 0, c0, pos[j]);
            qk_backward<ALIGNED>(vd, xn, cs, e.rope, e.rope.dims, c0, 1.f, rs[j], e.s.norm, CH, D);
            st8(d.dqkv + ok[j], vd, cnt[j]);

            unpack8(vd, *reinterpret_cast<const uint4*>(pV + Tile<TROWS, D>::off(r, c)));
            if (d.dv_add) add_raw8(vd, add1[j]);
            if (d.dv_add2) add_raw8(vd, add2[j]);
            if (mix) {
                float v[8], f[8], df[8];
                unpack8(v, vx[j]);
                unpack8(f, vf[j]);
                sums.x += dot8(vd, v);
                sums.y += dot8(vd, f);
                unpack8(df, dvf[j]);  // zeros unless added to
#pragma unroll
                for (int k = 0; k < 8; ++k) df[k] += vm1 * vd[k], vd[k] *= vm0;
                st8(d.dv_first + o[j], df, cnt[j]);
            }
            st8(d.dqkv + ok[j] + Hkv * D, vd, cnt[j]);
        }
    }
    return sums;
}

// One block = 64 keys of one (batch, KV head) per consumer warpgroup, with dK and dV
// accumulating in registers while 64-query steps of Q and dO of every query head of the group
// stream past. In lockstep (one block barrier a step, FlashAttention-2 style) the tensor cores
// waited while every warpgroup rebuilt P and dS at once: 0.97 ms at B = 24, T = 2048, 8/4 heads
// of 64 on an H100, against 0.78 ms so.
//   producer  one warpgroup: K, V and each step's Q and dO by the TMA unit (cp.async off
//             sm_90), lse and D_i by its threads, into a ring of stages (mbarriers full / empty);
//   consumers S^T = K Q^T and dP^T = V dO^T, P^T and dS^T = P^T (dP^T - D_i) rebuilt from lse
//             and D_i, dV += P^T dO, dK += dS^T Q; dS^T goes to a slot in shared memory
//             (mbarriers ds_full / ds_empty). Step `it`'s dQ = dS K over all the block's keys
//             is warpgroup it % WG's product, run after that warpgroup's products of step
//             it + 1 (run at once, it waited for the slowest warpgroup's dS^T: 0.93 ms). It
//             stages the fp32 result and the TMA unit adds it into the workspace, one bulk
//             reduction a query row; a reduction of each warpgroup's own share instead, three
//             times the traffic into L2, took 1.02 ms.
// A warpgroup whose keys all follow the step's queries skips the step's products, and the dQ
// product leaves out its keys. The grid runs in chunks of `chunk` (batch, KV head) groups;
// inside a chunk the key tiles go heaviest (most query tiles) first: tile 0 of each group of the
// chunk, then tile 1, and so on. The dQ rows that a chunk's blocks add into then fit in L2
// (ordering the whole grid heaviest first sent the reductions past L2 once the fp32 dQ outgrew
// it: 25% slower at B = 24, T = 2048, 8 heads of 64), and the work inside a chunk stays balanced.
template <int D>
__global__ void __launch_bounds__(BwdRegs<D>::threads, 1)
    bwd_kernel(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
               const __grid_constant__ CUtensorMap map_v, const __grid_constant__ CUtensorMap map_do,
               const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
               const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
               float* __restrict__ dq_acc, float* __restrict__ zero_next, bf16* __restrict__ dk,
               bf16* __restrict__ dv, const KvGradEpilogue e, int T, int Hq, int Hkv, int chunk, float scale_log2,
               float scale) {
    using L = BwdSmem<D>;
    constexpr int WG = L::WG, Bc = L::Bc, Br = L::Br, S = L::S, NS = L::NS, DN = L::DN, PS = L::PS;
    static_assert(WG >= 1 && WG <= 3, "wg_barrier names three warpgroups");
    static_assert(2 * Br == 128, "one producer thread per statistic");
    constexpr int NB = Br / 8, DB = D / 8;
    // At D = 128 dK and dV take 128 registers a thread: dP^T's product then waits until P^T is
    // packed, so that S^T and dP^T are not both held in fp32.
    constexpr bool kLateDp = D > 64;
    using TK = typename L::TK;
    using TQ = typename L::TQ;
    using TS = typename L::TS;
    unsigned char* const smem = aligned_smem();
    const uint32_t base = smem_addr(smem);
    const uint32_t sK = base + L::K, sV = base + L::V, sQ = base + L::Q, sdO = base + L::dO, sdS = base + L::dS;
    float* const stats = reinterpret_cast<float*>(smem + L::stats);  // [S][lse | D_i]
    const uint32_t bars = base + L::bars;
    auto full = [&](int s) { return bars + 8 * s; };
    auto empty = [&](int s) { return bars + 8 * (S + s); };
    auto ds_full = [&](int j) { return bars + 8 * (2 * S + j); };
    auto ds_empty = [&](int j) { return bars + 8 * (2 * S + NS + j); };

    const int group = Hq / Hkv;
    const int n_kt = (T + Bc - 1) / Bc, n_groups = gridDim.x / n_kt;
    const int c = blockIdx.x / (chunk * n_kt), r = blockIdx.x % (chunk * n_kt);
    const int in_chunk = min(chunk, n_groups - c * chunk);
    const int k0 = r / in_chunk * Bc, grp = c * chunk + r % in_chunk;
    const int b = grp / Hkv, hk = grp % Hkv;
    const int qt0 = k0 / Br, per_head = (T + Br - 1) / Br - qt0, n_it = group * per_head;
    // The warpgroup, by shuffle: the compiler then knows it is the same in every lane, and the
    // products under conditions on it (or on nk below) stay asynchronous.
    const int wg = __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0), tid = threadIdx.x % 128;
    const size_t qs = size_t(Hq) * D, ks = size_t(Hkv) * D;
    // Step `it` visits query head hk*group + it / per_head, query tile qt0 + it % per_head.
    auto head = [&](int it) { return hk * group + it / per_head; };
    auto qrow0 = [&](int it) { return (qt0 + it % per_head) * Br; };

    if (threadIdx.x == 0) {
        // Consumers arrive one a warp, each after its own wait: a warpgroup's product runs on
        // the four warps' tensor cores, and one warp's wait does not cover the others' reads.
        // A stage is full once its copies have landed and the 128 producer threads stored its
        // statistics: on sm_90 the copies count as one arrival (the expected bytes).
        for (int s = 0; s < S; ++s) mbar_init(full(s), PG_SM90 ? 128 + 1 : 2 * 128), mbar_init(empty(s), 4 * WG);
        for (int j = 0; j < NS; ++j) mbar_init(ds_full(j), 4 * WG), mbar_init(ds_empty(j), 4);
        mbar_init_fence();
    }
    __syncthreads();

    if (wg == WG) {  // the producer
        wg_reg_dealloc<BwdRegs<D>::producer>();
        if constexpr (!PG_SM90) {
            load_tile<Bc, D, 128>(sK, k + (size_t(b) * T * Hkv + hk) * D, ks, k0, T, tid);
            load_tile<Bc, D, 128>(sV, v + (size_t(b) * T * Hkv + hk) * D, ks, k0, T, tid);
        }
        for (int it = 0; it < n_it; ++it) {
            const int s = it % S, row = qrow0(it) + tid % Br;
            mbar_wait(empty(s), (it / S & 1) ^ 1);
            if constexpr (PG_SM90) {
                if (tid == 0) {  // K and V come with the first stage
                    mbar_arrive_expect_tx(full(s), 2 * TQ::BYTES + (it == 0 ? 2 * TK::BYTES : 0));
                    if (it == 0) {
                        tma_tile<Bc, D>(sK, &map_k, hk, k0, b, full(s));
                        tma_tile<Bc, D>(sV, &map_v, hk, k0, b, full(s));
                    }
                    tma_tile<Br, D>(sQ + s * TQ::BYTES, &map_q, head(it), qrow0(it), b, full(s));
                    tma_tile<Br, D>(sdO + s * TQ::BYTES, &map_do, head(it), qrow0(it), b, full(s));
                }
            } else {
                const size_t off = (size_t(b) * T * Hq + head(it)) * D;
                load_tile<Br, D, 128>(sQ + s * TQ::BYTES, q + off, qs, qrow0(it), T, tid);
                load_tile<Br, D, 128>(sdO + s * TQ::BYTES, dout + off, qs, qrow0(it), T, tid);
                cp_async_mbar_arrive(full(s));
            }
            // lse in log2 units (+inf past T, so that P = 0 there), then D_i.
            const size_t at = (size_t(b) * Hq + head(it)) * T + row;
            stats[s * 2 * Br + tid] = tid < Br ? (row < T ? lse[at] * kLog2e : INFINITY) : (row < T ? delta[at] : 0.f);
            mbar_arrive(full(s));
        }
        if constexpr (!PG_SM90) cp_async_wait<0>();
        if (e.d.dqkv) kv_grad_prefetch<D>(e, b, hk, k0, Bc, T, tid);
        // The next call's accumulator (AttnBwdPlan::zero_other): this block's share, by streaming
        // stores, so that the zeros do not push the dQ rows being added into out of L2.
        if (zero_next) {
            const size_t n4 = size_t(n_groups / Hkv) * T * Hq * D / 4, per = (n4 + gridDim.x - 1) / gridDim.x;
            float4* const z = reinterpret_cast<float4*>(zero_next);
            for (size_t i = blockIdx.x * per + tid, end = min(n4, (blockIdx.x + 1) * per); i < end; i += 128)
                __stcs(z + i, make_float4(0.f, 0.f, 0.f, 0.f));
        }
        return;
    }
    wg_reg_alloc<BwdRegs<D>::consumer>();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kw = warp * 16;  // this warp's first key in the tile
    float* const staging = reinterpret_cast<float*>(smem + L::staging) + wg * Br * PS;
    float dka[DB][4] = {}, dva[DB][4] = {};

    // Warpgroups 0..nk(it)-1 have keys at or before some query of step it.
    auto nk = [&](int it) { return min(WG, (qrow0(it) - k0) / 64 + 1); };
    // Iteration it runs step it's products (every warpgroup with keys at or before some query of
    // the step), then step it - 1's dQ product if it is this warpgroup's turn: one step late, so
    // that the warpgroup does not wait for the others' dS^T of the step it has just finished.
    for (int it = 0; it <= n_it; ++it) {
        if (it < n_it) {
            const int s = it % S, j = it % NS, q0 = qrow0(it);
            const uint32_t sQb = sQ + s * TQ::BYTES, sdOb = sdO + s * TQ::BYTES;
            mbar_wait(full(s), it / S & 1);
            if (wg < nk(it)) {
                const float* sl = stats + s * 2 * Br;
                const float* sd = sl + Br;
                // S^T = K Q^T and dP^T = V dO^T: 64 keys x Br queries.
                float st[NB][4], dpt[NB][4];
                auto dp_product = [&] {
                    wg_fence();
#pragma unroll
                    for (int kk = 0; kk < D / 16; ++kk)
                        wg_mma<Br>(dpt, Smem<TK, false>{sV, 64 * wg, kk * 16}, Smem<TQ, false>{sdOb, 0, kk * 16},
                                   kk > 0);
                    wg_commit();
                };
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk)
                    wg_mma<Br>(st, Smem<TK, false>{sK, 64 * wg, kk * 16}, Smem<TQ, false>{sQb, 0, kk * 16}, kk > 0);
                wg_commit();
                if constexpr (!kLateDp) dp_product();
                // P^T = exp2(S^T * scale_log2 - lse_log2), masked (while dP^T is being computed).
                wg_wait<kLateDp ? 0 : 1>();
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
                uint32_t ap[Br / 16][4], ads[Br / 16][4];
#pragma unroll
                for (int kq = 0; kq < Br / 16; ++kq) acc_to_a(ap[kq], st[2 * kq], st[2 * kq + 1]);
                if constexpr (kLateDp) dp_product();
                // dS^T = P^T * (dP^T - D_i), P^T in fp32, or as rounded for its product where its
                // fp32 registers were let go.
                wg_wait<0>();
                pin(dpt);
#pragma unroll
                for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float p = st[nb][e];
                        if constexpr (kLateDp) {
                            const float2 pp = unpack(ap[nb / 2][nb % 2 * 2 + (e >> 1)]);
                            p = e & 1 ? pp.y : pp.x;
                        }
                        dpt[nb][e] = p * (dpt[nb][e] - sd[nb * 8 + 2 * t + (e & 1)]);
                    }

                // dV += P^T dO and dK += dS^T Q (scaled at the end).
#pragma unroll
                for (int kq = 0; kq < Br / 16; ++kq) acc_to_a(ads[kq], dpt[2 * kq], dpt[2 * kq + 1]);
                wg_fence();
#pragma unroll
                for (int kq = 0; kq < Br / 16; ++kq)
#pragma unroll
                    for (int n0 = 0; n0 < D; n0 += DN) {
                        wg_mma<DN>(cols<DN, D>(dva, n0), RegA{ap[kq]}, Smem<TQ, true>{sdOb, n0, kq * 16}, true);
                        wg_mma<DN>(cols<DN, D>(dka, n0), RegA{ads[kq]}, Smem<TQ, true>{sQb, n0, kq * 16}, true);
                    }
                wg_commit();

                // dS^T into its slot once step it - NS's dQ product has read the slot (its bf16 A
                // fragments are exactly the values to store).
                mbar_wait(ds_empty(j), (it / NS & 1) ^ 1);
                unsigned char* const pdS = smem + L::dS + j * TS::BYTES;
#pragma unroll
                for (int kq = 0; kq < Br / 16; ++kq)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        *reinterpret_cast<uint32_t*>(pdS + TS::off(kw + g + (i & 1) * 8, 2 * kq + (i >> 1)) + t * 4) =
                            ads[kq][i];
                fence_smem_for_tensor_cores();
                wg_wait<0>();
                pin(dka);
                pin(dva);
                pin(ap);
                pin(ads);
            } else {
                // No dS^T to store, but the arrival below must not count towards step it - NS's slot.
                mbar_wait(ds_empty(j), (it / NS & 1) ^ 1);
            }
            __syncwarp();
            if (lane == 0) mbar_arrive(ds_full(j));
            if (lane == 0) mbar_arrive(empty(s));  // this warp's products have read the stage
        }
        const int p = it - 1;
        if (p < 0 || p % WG != wg) continue;

        // Step p's dQ = dS K over keys 0..64 nk - 1, DN columns at a time, staged in fp32 and
        // added into the workspace by bulk reductions, one a query row.
        const int j = p % NS, h = head(p), q0 = qrow0(p), n = nk(p);
        const uint32_t sdSj = sdS + j * TS::BYTES;
        mbar_wait(ds_full(j), p / NS & 1);
#pragma unroll
        for (int n0 = 0; n0 < D; n0 += DN) {
            float dqa[DN / 8][4];
            // 16-deep steps over the keys of warpgroups 0..nk-1: unrolled, so that the products
            // stay asynchronous (in a loop the compiler serialises them).
            auto product = [&](auto steps) {
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < decltype(steps)::value; ++kk)
                    wg_mma<DN>(dqa, Smem<TS, true>{sdSj, 0, kk * 16}, Smem<TK, true>{sK, n0, kk * 16}, kk > 0);
                wg_commit();
            };
            if (n == 1) product(std::integral_constant<int, 4>{});
            else if (WG > 1 && n == 2) product(std::integral_constant<int, 8>{});
            else if (WG > 2) product(std::integral_constant<int, 12>{});
            if (tid < Br) bulk_wait<0, true>();  // the last reductions have read the staging
            wg_barrier(wg);
            wg_wait<0>();
            pin(dqa);
            if (n0 + DN == D && lane == 0) mbar_arrive(ds_empty(j));
            const int qr = (warp % 4) * 16 + g;  // this thread's first query row
#pragma unroll
            for (int jb = 0; jb < DN / 8; ++jb) {
                const int col = jb * 8 + 2 * t;
                *reinterpret_cast<float2*>(staging + qr * PS + col) = make_float2(dqa[jb][0], dqa[jb][1]);
                *reinterpret_cast<float2*>(staging + (qr + 8) * PS + col) = make_float2(dqa[jb][2], dqa[jb][3]);
            }
            fence_smem_for_tensor_cores();  // the TMA unit reads the staging next
            wg_barrier(wg);
            float* const dst = dq_acc + (size_t(b) * T + q0) * Hq * D + size_t(h) * D + n0;
#if PG_SM90
            if (tid < Br) {
                if (q0 + tid < T) bulk_add_f32(dst + size_t(tid) * Hq * D, smem_addr(staging + tid * PS), DN * 4);
                bulk_commit();
            }
#else
            for (int i = tid; i < Br * DN / 4; i += 128) {
                const int row = i / (DN / 4), col = i % (DN / 4) * 4;
                if (q0 + row < T)
                    atomic_add4(dst + size_t(row) * Hq * D + col,
                                *reinterpret_cast<const float4*>(staging + row * PS + col));
            }
#endif
        }
    }
    if (tid < Br) bulk_wait<0, false>();

    consumers_barrier<128 * WG>();  // every dQ product has read K before its tile is reused for staging
    unsigned char* const pK = smem + L::K;
    unsigned char* const pV = smem + L::V;
    stage_acc<Bc, D>(pK, kw, dka, scale, g, t);
    stage_acc<Bc, D>(pV, kw, dva, 1.f, g, t);
    __syncwarp();
    if (!e.d.dqkv) {
        const size_t kv_off = (size_t(b) * T * Hkv + hk) * D;
        store_rows<Bc, D, 16>(dk + kv_off, ks, k0 + kw, T, pK, kw, lane);
        store_rows<Bc, D, 16>(dv + kv_off, ks, k0 + kw, T, pV, kw, lane);
        return;
    }
    const float2 part = e.rope.half % 8 == 0 ? kv_grad_rows<true, Bc, D>(e, pK, pV, kw, k0, b, hk, T, lane)
                                             : kv_grad_rows<false, Bc, D>(e, pK, pV, kw, k0, b, hk, T, lane);
    if (!e.p.v_mix) return;
    // v_mix's sums, the warps' in a fixed order (stats is free: the producer has left).
    const float s0 = group_sum(part.x, 32), s1 = group_sum(part.y, 32);
    if (lane == 0) stats[2 * warp] = s0, stats[2 * warp + 1] = s1;
    consumers_barrier<128 * WG>();
    if (threadIdx.x < 2) {
        float sum = 0.f;
        for (int w = 0; w < 4 * WG; ++w) sum += stats[2 * w + threadIdx.x];
        e.partial[2 * blockIdx.x + threadIdx.x] = sum;
    }
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
    const unsigned blocks = unsigned(B * Hq) * unsigned((T + kFwdBr - 1) / kFwdBr);
    // Chunks of (batch, head) pairs whose K/V take a third of L2 (at least one pair).
    const size_t pair_kv_bytes = size_t(2) * T * D * sizeof(bf16) / (Hq / Hkv);
    const int chunk = int(std::max<size_t>(1, l2_bytes() / 3 / pair_kv_bytes));
    const float scale_log2 = kLog2e / std::sqrt(float(D));
    const CUtensorMap map_q = head_map<kFwdBr, D>(q, B, T, Hq);
    const CUtensorMap map_k = head_map<kFwdBc, D>(k, B, T, Hkv), map_v = head_map<kFwdBc, D>(v, B, T, Hkv);
    fwd_kernel<D><<<blocks, 128, smem, stream>>>(map_q, map_k, map_v, q, k, v, out, lse, T, Hq, Hkv, chunk,
                                                 scale_log2);
    PG_CHECK_LAUNCH();
}

// Part i of a backward workspace: the dq accumulators of slots 0 and 1, then D_i (i = 2).
float* workspace_part(void* workspace, int i, int B, int T, int Hq, int D) {
    return static_cast<float*>(workspace) + size_t(i) * B * T * Hq * D;
}

template <int D>
void launch_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* out, const float* lse,
                     const bf16* dout, bf16* dq, bf16* dk, bf16* dv, void* workspace, int B, int T, int Hq,
                     int Hkv, AttnBwdPlan plan, KvGradEpilogue* kv, cudaStream_t stream) {
    const int rows = B * T * Hq;
    float* dq_acc = flash_attention_dq_accumulator(workspace, plan.slot, B, T, Hq, D);
    float* zero_next =
        plan.zero_other ? flash_attention_dq_accumulator(workspace, 1 - plan.slot, B, T, Hq, D) : nullptr;
    float* delta = flash_attention_delta(workspace, B, T, Hq, D);
    const float scale = 1.f / std::sqrt(float(D));

    if (plan.have_delta && !plan.zeroed) {
        PG_CHECK(cudaMemsetAsync(dq_acc, 0, size_t(rows) * D * sizeof(float), stream));
    } else if (!plan.have_delta) {
        const int prep_threads = 256;
        const size_t prep_total = size_t(rows) * (D / 8);
        bwd_prep_kernel<D><<<unsigned((prep_total + prep_threads - 1) / prep_threads), prep_threads, 0, stream>>>(
            out, dout, delta, plan.zeroed ? nullptr : dq_acc, rows, T, Hq);
        PG_CHECK_LAUNCH();
    }

    constexpr int smem = BwdSmem<D>::bytes;
    set_smem(bwd_kernel<D>, smem);
    // Chunks of (batch, KV head) groups whose fp32 dQ rows take a third of L2 (at least one group).
    const size_t group_dq_bytes = size_t(Hq / Hkv) * T * D * sizeof(float);
    const int chunk = int(std::max<size_t>(1, l2_bytes() / 3 / group_dq_bytes));
    constexpr int WG = bwd_warpgroups<D>();
    const unsigned blocks = unsigned((T + 64 * WG - 1) / (64 * WG)) * unsigned(B * Hkv);
    constexpr int Bc = BwdSmem<D>::Bc;
    const CUtensorMap map_q = head_map<kBwdBr, D>(q, B, T, Hq), map_do = head_map<kBwdBr, D>(dout, B, T, Hq);
    const CUtensorMap map_k = head_map<Bc, D>(k, B, T, Hkv), map_v = head_map<Bc, D>(v, B, T, Hkv);
    if (kv) kv->parts = int(blocks);
    bwd_kernel<D><<<blocks, BwdRegs<D>::threads, smem, stream>>>(map_q, map_k, map_v, map_do, q, k, v, dout, lse, delta,
                                                                 dq_acc, zero_next, dk, dv,
                                                                 kv ? *kv : KvGradEpilogue{}, T, Hq, Hkv, chunk,
                                                                 scale * kLog2e, scale);
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
    return size_t(B) * T * Hq * (2 * size_t(D) + 1) * sizeof(float);
}

void flash_attention_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* out, const float* lse,
                              const bf16* dout, bf16* dq, bf16* dk, bf16* dv, void* workspace, int B, int T, int Hq,
                              int Hkv, int D, cudaStream_t stream, AttnBwdPlan plan, KvGradEpilogue* kv) {
    check_shape("flash_attention_backward", B, T, Hq, Hkv, D);
    check_aligned("flash_attention_backward", {q, k, v, out, lse, dout, dk, dv, workspace});
    if (dq) check_aligned("flash_attention_backward", {dq});
    if (kv) {
        const QkvShape& s = kv->s;
        if (s.B != B || s.Tn != T || s.H != Hq || s.Hkv != Hkv || s.hd != D || !kv->d.dqkv || !kv->p.qkv)
            fail("flash_attention_backward: the k/v gradient epilogue is for another shape, or has no qkv / dqkv");
    } else if (!dk || !dv) {
        fail("flash_attention_backward: dk and dv are needed without a k/v gradient epilogue");
    }
    with_head_dim(D, [&](auto hd) {
        launch_backward<decltype(hd)::value>(q, k, v, out, lse, dout, dq, dk, dv, workspace, B, T, Hq, Hkv, plan, kv,
                                             stream);
    });
}

float* flash_attention_dq_accumulator(void* workspace, int slot, int B, int T, int Hq, int D) {
    if (slot != 0 && slot != 1) fail("flash_attention_dq_accumulator: dq slot %d (0 or 1)", slot);
    return workspace_part(workspace, slot, B, T, Hq, D);
}

float* flash_attention_delta(void* workspace, int B, int T, int Hq, int D) {
    return workspace_part(workspace, 2, B, T, Hq, D);
}

}  // namespace pg
