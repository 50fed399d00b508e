// Fused MLP products (model/mlp_gemm.cuh): a persistent, warp-specialised wgmma GEMM.
//
// One block an SM walks output tiles of 128 x 256 (tile t: rows 128 (t / (N/256)), columns
// 256 (t % (N/256)), so the blocks at work share few A rows and all of B stays in L2). Three
// roles, one block:
//   producer   one thread: a ring of 4 K stages (32 deep, TMA, 64-byte swizzle) of A and B;
//   consumers  two warpgroups, each 64 rows x 256 columns of the tile (m64n256k16, fp32
//              accumulators in registers); each hands a stage back as soon as its products have
//              read it, then runs the epilogue math into a shared-memory buffer;
//   movers     three warps that take the finished buffer to global memory (and, backward, bring
//              the act of a later tile into it), while the consumers run the next tile.
// The epilogue is what the kernel is about: at the record shape it moves 4x the bytes of the
// mainloop's operands. With the consumers storing it themselves (TMA stores), every block's
// tensor cores waited on the write bursts, all blocks at once: 236 us forward, 275 us backward
// at M = 49152, K = 512, N = 2048 on an H100, against 147 us for the products alone (184 us
// backward while TMA also brought f: stage loads apparently queue behind it). The movers use plain
// 16-byte loads and stores (cp.async for act), off the TMA queue that feeds the ring: backward
// 249 us (cuBLAS + elementwise: 341 us), forward 275 us while it stored f and act, 128 KB a
// tile, no better than cuBLAS + elementwise (276 us). Storing act and f's signs in place of f
// (model/mlp_gemm.cuh), 68 KB a tile, took the forward to 206 us. The movers are no place for
// the activation's arithmetic: given it, they held both forms back (216 / 331 us). Nor do they
// hold the backward back: with act brought in by TMA instead of their cp.async, it ran at the
// same 253 us.
//
// Shared memory holds two tiles' epilogues, 64 KB each, so the consumers fill one while the
// movers empty the other: forward, act; backward, the act that the movers brought in, df written
// over it in place. Slots are 64 columns of 128-byte swizzled rows, written conflict-free from
// the accumulator layout and read as whole rows. The signs go between the consumers' registers
// and global memory directly, one 16-byte word a thread and tile.
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "common/cuda_check.cuh"
#include "model/mlp_gemm.cuh"
#include "model/tensor_map.cuh"
#include "model/wgmma.cuh"

namespace pg {
namespace {

constexpr int kBM = 128, kBN = 256, kBK = 32, kStages = 4, kChunk = 64, kChunks = kBN / kChunk;
constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
constexpr int kMovers = 96;    // warps 1-3 of the producer warpgroup
// Registers a thread: 168 at launch (65536 / 384, rounded down to 8); the producer warpgroup
// gives some to the consumers, whose 128 accumulators and operand addresses would otherwise
// spill. The consumers' increase waits for registers the producers have released (a block's
// pool, not the SM's): asking for more than that hangs.
constexpr int kLaunchRegs = 168, kProducerRegs = 56, kConsumerRegs = 216;
static_assert(256 * (kConsumerRegs - kLaunchRegs) <= 128 * (kLaunchRegs - kProducerRegs), "register pool");

using TileA = Tile<kBM, kBK>;
using TileE = Tile<kBM, kChunk>;  // one epilogue slot: 64 columns of the tile
constexpr int kStageBytes = TileA::BYTES + kBN * kBK * 2;
constexpr int kBufs = 2;  // epilogue buffers: the consumers fill one while the movers empty the other
constexpr int kBufBytes = kChunks * TileE::BYTES, kEpiBytes = kBufs * kBufBytes;
constexpr int kBarriers = 2 * kStages + 4;
constexpr int kSmemBytes = kStages * kStageBytes + kEpiBytes + kBarriers * 8 + kSmemSlack;

// Mover thread i takes the 16-byte pieces i, i + kMovers, ... of a tile's slots: slot s holds
// columns n0 + 64 s, rows m0..m0+127. A warp covers four 128-byte row segments.
struct Piece {
    int s, r, c;  // slot, row, 16-byte chunk of the row
    __device__ explicit Piece(int j) : s(j / (TileE::BYTES / 16)), r(j / 8 % kBM), c(j % 8) {}
    __device__ uint32_t smem(uint32_t buf) const { return buf + s * TileE::BYTES + TileE::off(r, c); }
    __device__ size_t global(int N, int m0, int n0) const {
        return size_t(m0 + r) * N + n0 + s * kChunk + c * 8;
    }
};

// Out of shared memory by 16-byte stores; rows past M stay unwritten. Plain stores: streaming
// ones (__stcs, evict-first) measured slower, 297 / 260 us against 275 / 249 us.
__device__ __forceinline__ void store_slots(uint32_t buf, bf16* out, int M, int N, int m0, int n0, int i) {
#pragma unroll 4
    for (int j = i; j < kChunks * (TileE::BYTES / 16); j += kMovers) {
        const Piece p(j);
        const uint4 v = lds16(p.smem(buf));
        if (m0 + p.r < M) *reinterpret_cast<uint4*>(out + p.global(N, m0, n0)) = v;
    }
}

// The two forms: B's layout in its stage and the epilogue. The consumers' part takes the tile's
// accumulators (wgmma_ss layout) one 64-column chunk at a time into its shared-memory slot, with
// f's signs (thread rows r, r + 8, lane % 4 = t; bit 4 nb + 2 h + e of `neg` is the sign bit of
// acc[nb][2 h + e]); the movers' part takes the tile's results to global memory and readies the
// buffer for the block's tile after next. The consumers' tensor cores wait while they run it,
// hence the bit arithmetic.
struct UpForward {
    using TileB = Tile<kBN, kBK>;  // W: rows over N, K contiguous
    static constexpr bool kBMN = false, kForward = true;
    __device__ static void load_b(uint32_t dst, const CUtensorMap* map, int n0, int k0, uint32_t bar) {
        tma_load(dst, map, k0, n0, bar);
    }
    __device__ static void chunk(int c, const float (&acc)[kChunk / 8][4], unsigned char* buf, int r, int t,
                                 float slope, uint32_t& neg) {
        unsigned char* const s = buf + c * TileE::BYTES;
        neg = 0;
#pragma unroll
        for (int nb = 0; nb < kChunk / 8; ++nb)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint32_t fb = pack(acc[nb][2 * h], acc[nb][2 * h + 1]);
                const float2 f = unpack(fb);
                const float z0 = f.x > 0.f ? f.x : slope * f.x, z1 = f.y > 0.f ? f.y : slope * f.y;
                const int bit = 4 * nb + 2 * h;  // the bf16 pair's sign bits 15 and 31 to bit, bit + 1
                neg |= (bit < 15 ? fb >> (15 - bit) : fb << (bit - 15)) & (1u << bit) |
                       (bit < 30 ? fb >> (30 - bit) : fb << (bit - 30)) & (2u << bit);
                *reinterpret_cast<uint32_t*>(s + TileE::off(r + 8 * h, nb) + 4 * t) = pack(z0 * z0, z1 * z1);
            }
    }
    __device__ static void prime(uint32_t, uint32_t ready, const bf16*, int, int, int, int, int) {
        mbar_arrive(ready);
    }
    // The buffer is free again once its contents are in registers.
    __device__ static void move(uint32_t buf, uint32_t ready, int, const bf16*, bf16* act, int M, int N, int m0,
                                int n0, int i) {
        store_slots(buf, act, M, N, m0, n0, i);
        mbar_arrive(ready);
    }
};

struct DownBackward {
    using TileB = Tile<kBK, kBN>;  // Wp: rows over K, N contiguous, in 64-column blocks
    static constexpr bool kBMN = true, kForward = false;
    __device__ static void load_b(uint32_t dst, const CUtensorMap* map, int n0, int k0, uint32_t bar) {
#pragma unroll
        for (int b = 0; b < kBN / 64; ++b) tma_load(dst + b * TileB::BLOCK, map, n0 + 64 * b, k0, bar);
    }
    // df written over act in place; g is taken in fp32, not rounded to bf16 first.
    __device__ static void chunk(int c, const float (&acc)[kChunk / 8][4], unsigned char* buf, int r, int t,
                                 float slope, uint32_t& neg) {
        unsigned char* const s = buf + c * TileE::BYTES;
        auto df = [&](float g, float a, int bit) { return g * sqrt_approx(a) * (neg >> bit & 1 ? -2.f * slope : 2.f); };
#pragma unroll
        for (int nb = 0; nb < kChunk / 8; ++nb)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                uint32_t* const p = reinterpret_cast<uint32_t*>(s + TileE::off(r + 8 * h, nb) + 4 * t);
                const float2 a = unpack(*p);
                const int bit = 4 * nb + 2 * h;
                *p = pack(df(acc[nb][2 * h], a.x, bit), df(acc[nb][2 * h + 1], a.y, bit + 1));
            }
    }
    // act of a tile into a buffer by cp.async (rows past M as zeros), arriving on `ready` when
    // landed. Each mover writes only pieces it has itself read out before (the same Piece numbering).
    __device__ static void prime(uint32_t buf, uint32_t ready, const bf16* act, int M, int N, int m0, int n0,
                                 int i) {
        for (int j = i; j < kChunks * (TileE::BYTES / 16); j += kMovers) {
            const Piece p(j);
            const bool valid = m0 + p.r < M;
            cp_async16(p.smem(buf), act + (valid ? p.global(N, m0, n0) : 0), valid);
        }
        cp_async_mbar_arrive(ready);
    }
    __device__ static void move(uint32_t buf, uint32_t ready, int next_tile, const bf16* act, bf16* df, int M, int N,
                                int m0, int n0, int i) {
        store_slots(buf, df, M, N, m0, n0, i);
        const int tiles_n = N / kBN;
        if (next_tile < (M + kBM - 1) / kBM * tiles_n)
            prime(buf, ready, act, M, N, next_tile / tiles_n * kBM, next_tile % tiles_n * kBN, i);
    }
};

// map_a: x or dm; map_b: W or Wp; in: act (backward; unused forward); out: act or df. signs:
// f's, written (forward) or read (backward), one 16-byte word a consumer thread and tile.
template <class Form>
__global__ void __launch_bounds__(kThreads, 1)
    mlp_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                    const bf16* in, bf16* out, uint4* signs, int M, int N, int K, float slope) {
#if !PG_SM90
    __trap();  // never launched: mlp_gemm_supports is false off sm_90
#endif
    using TileB = typename Form::TileB;
    unsigned char* const smem = aligned_smem();
    unsigned char* const epi = smem + kStages * kStageBytes;
    const uint32_t s0 = smem_addr(smem), bars = smem_addr(epi) + kEpiBytes;
    auto stage_a = [&](int s) { return s0 + s * kStageBytes; };
    auto stage_b = [&](int s) { return s0 + s * kStageBytes + TileA::BYTES; };
    auto full = [&](int s) { return bars + 8 * s; };
    auto empty = [&](int s) { return bars + 8 * (kStages + s); };
    // Epilogue buffer b: ready for the consumers (free, or act landed), filled with a tile's results.
    auto ready = [&](int b) { return bars + 8 * (2 * kStages + b); };
    auto filled = [&](int b) { return bars + 8 * (2 * kStages + 2 + b); };

    const int tiles_n = N / kBN, tiles = (M + kBM - 1) / kBM * tiles_n, kbs = K / kBK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbar_init(full(s), 1);
            mbar_init(empty(s), 8);  // lane 0 of each consumer warp
        }
        for (int b = 0; b < kBufs; ++b) {
            mbar_init(ready(b), kMovers);
            mbar_init(filled(b), 256);  // every consumer thread
        }
        mbar_init_fence();
    }
    __syncthreads();

    // The block's it-th tile is tile blockIdx.x + it gridDim.x. It uses stages q = it kbs + kb
    // (slot q % kStages, phase parity (q / kStages) & 1) and epilogue buffer it % kBufs, that
    // buffer's u-th use (u = it / kBufs, parity u & 1).
    const int wg = int(threadIdx.x) / 128 - 1;  // consumer warpgroup; -1: the producer's
    if (wg < 0) {
        wg_reg_dealloc<kProducerRegs>();
        if (threadIdx.x == 0) {  // producer
            int q = 0;
            for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                const int m0 = tile / tiles_n * kBM, n0 = tile % tiles_n * kBN;
                for (int kb = 0; kb < kbs; ++kb, ++q) {
                    const int s = q % kStages;
                    mbar_wait(empty(s), ((q / kStages) & 1) ^ 1);
                    mbar_arrive_expect_tx(full(s), kStageBytes);
                    tma_load(stage_a(s), &map_a, kb * kBK, m0, full(s));
                    Form::load_b(stage_b(s), &map_b, n0, kb * kBK, full(s));
                }
            }
        } else if (threadIdx.x >= 32) {  // movers
            const int i = threadIdx.x - 32;
            const uint32_t buf = smem_addr(epi);
            for (int b = 0; b < kBufs; ++b) {
                const int tile = blockIdx.x + b * gridDim.x;
                if (tile < tiles)
                    Form::prime(buf + b * kBufBytes, ready(b), in, M, N, tile / tiles_n * kBM, tile % tiles_n * kBN, i);
            }
            for (int tile = blockIdx.x, it = 0; tile < tiles; tile += gridDim.x, ++it) {
                const int b = it % kBufs;
                mbar_wait(filled(b), (it / kBufs) & 1);
                Form::move(buf + b * kBufBytes, ready(b), tile + kBufs * gridDim.x, in, out, M, N, tile / tiles_n * kBM,
                           tile % tiles_n * kBN, i);
            }
        }
        return;
    }

    wg_reg_alloc<kConsumerRegs>();
    const int warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32;
    const int r = 64 * wg + 16 * warp + lane / 4;  // this thread's tile rows: r, r + 8
    float acc[kBN / 8][4];
    int q = 0;
    for (int tile = blockIdx.x, it = 0; tile < tiles; tile += gridDim.x, ++it) {
        uint4* const tile_signs = signs + size_t(tile) * 256 + threadIdx.x - 128;
        uint32_t neg[kChunks];  // read while the products run
        if constexpr (!Form::kForward) {
            const uint4 v = __ldg(tile_signs);
            neg[0] = v.x, neg[1] = v.y, neg[2] = v.z, neg[3] = v.w;
        }
        for (int kb = 0; kb < kbs; ++kb, ++q) {
            const int s = q % kStages;
            mbar_wait(full(s), (q / kStages) & 1);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < kBK / 16; ++kk)
                wg_mma<kBN>(acc, Smem<TileA, false>{stage_a(s), 64 * wg, 16 * kk},
                            Smem<TileB, Form::kBMN>{stage_b(s), 0, 16 * kk}, kb > 0 || kk > 0);
            wg_commit();
            // One group stays in flight; the stage before this one is read and goes back.
            wg_wait<1>();
            if (kb > 0 && lane == 0) mbar_arrive(empty((q - 1) % kStages));
        }
        wg_wait<0>();
        pin(acc);
        if (lane == 0) mbar_arrive(empty((q - 1) % kStages));

        const int b = it % kBufs;
        mbar_wait(ready(b), (it / kBufs) & 1);
#pragma unroll
        for (int c = 0; c < kChunks; ++c)
            Form::chunk(c, *reinterpret_cast<const float(*)[kChunk / 8][4]>(&acc[c * kChunk / 8]),
                        epi + b * kBufBytes, r, lane % 4, slope, neg[c]);
        mbar_arrive(filled(b));
        if constexpr (Form::kForward) *tile_signs = make_uint4(neg[0], neg[1], neg[2], neg[3]);
    }
}

// ---- host side ---------------------------------------------------------------------------------

void check_args(const char* what, int M, int N, int K, std::initializer_list<const void*> ptrs) {
    if (!mlp_gemm_supports(M, N, K))
        fail("%s: M=%d N=%d K=%d unsupported (needs an sm_90 GPU, K %% 32 == 0, N %% 256 == 0, M >= 1)", what, M, N, K);
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("%s: a tensor is not 16-byte aligned", what);
}

template <class Form>
void launch(const CUtensorMap& a, const CUtensorMap& b, const bf16* in, bf16* out, const uint32_t* signs, int M, int N,
            int K, float slope, cudaStream_t stream) {
    static const int sms = [] {
        int dev = 0, n = 0;
        PG_CHECK(cudaGetDevice(&dev));
        PG_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
        PG_CHECK(cudaFuncSetAttribute(mlp_gemm_kernel<Form>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
        return n;
    }();
    const int tiles = (M + kBM - 1) / kBM * (N / kBN);
    mlp_gemm_kernel<Form><<<std::min(tiles, sms), kThreads, kSmemBytes, stream>>>(
        a, b, in, out, reinterpret_cast<uint4*>(const_cast<uint32_t*>(signs)), M, N, K, slope);
    PG_CHECK_LAUNCH();
}

}  // namespace

bool mlp_gemm_supports(int M, int N, int K) {
    // sm_90a code runs on compute capability 9.0 only.
    static const bool sm90 = [] {
        int dev = 0, major = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        return major == 9;
    }();
    return sm90 && M >= 1 && N >= kBN && N % kBN == 0 && K >= kBK && K % kBK == 0;
}

void mlp_up_forward(bf16* act, uint32_t* signs, const bf16* x, const bf16* w, int M, int N, int K, float slope,
                    cudaStream_t stream) {
    check_args("mlp_up_forward", M, N, K, {act, signs, x, w});
    launch<UpForward>(tensor_map(x, M, K, kBM, kBK), tensor_map(w, N, K, kBN, kBK), nullptr, act, signs, M, N, K,
                      slope, stream);
}

void mlp_down_backward(bf16* df, const bf16* dm, const bf16* wp, const bf16* act, const uint32_t* signs, int M, int N,
                       int K, float slope, cudaStream_t stream) {
    check_args("mlp_down_backward", M, N, K, {df, dm, wp, act, signs});
    launch<DownBackward>(tensor_map(dm, M, K, kBM, kBK), tensor_map(wp, K, N, kBK, 64), act, df, signs, M, N, K,
                         slope, stream);
}

}  // namespace pg
