// Hopper (sm_90a) building blocks for matrix products: swizzled shared-memory tiles, wgmma on
// operands in shared memory, TMA and cp.async copies and the mbarriers that track them. On
// sm_80, wg_mma runs as ldmatrix + mma.sync per warp and the mbarriers and cp.async work as
// they do on sm_90; the other sm_90-only functions compile to nothing there (their callers run
// on sm_90 only, or have an sm_80 path of their own).
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PG_SM90 1
#else
#define PG_SM90 0
#endif

namespace pg {

// ROWS rows of W bf16. Columns come in blocks of CW = min(W, 64) (a block row is 64 or 128
// bytes), stored one block after another; inside a block, 16-byte chunk c of row r sits at
// c ^ (r & 7) for 128-byte rows and c ^ ((r >> 1) & 3) for 64-byte rows. These are the 128- and
// 64-byte swizzles of wgmma's descriptors and of TMA (tile bases 1024-byte aligned), and they put
// the 8 rows of one 4-byte-per-lane warp access in distinct banks.
template <int ROWS, int W>
struct Tile {
    static_assert(W == 32 || W % 64 == 0, "tile rows must be 64 bytes or a multiple of 128");
    static_assert(ROWS % 16 == 0, "tiles hold whole 16-row steps");
    static constexpr int CW = W < 64 ? W : 64, RB = CW * 2, CPR = CW / 8, BLOCK = ROWS * RB;
    static constexpr int BYTES = ROWS * W * 2;
    __device__ static uint32_t off(int r, int c) {
        const int sw = RB == 128 ? (r & 7) : ((r >> 1) & 3);
        return uint32_t((c / CPR) * BLOCK + r * RB + (((c % CPR) ^ sw) << 4));
    }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// Dynamic shared memory, rounded up to the 1024-byte alignment of the 128-byte swizzle.
__device__ __forceinline__ unsigned char* aligned_smem() {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t a = smem_addr(smem_raw);
    return smem_raw + ((1024 - (a & 1023)) & 1023);
}
constexpr int kSmemSlack = 1024;

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ float2 unpack(uint32_t u) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u));
}

// One MUFU operation each (relative error ~2^-22), for kernels bound by their per-element
// arithmetic: exp2(-inf) = 0, 1 / inf = 0, NaN stays NaN. exp(x) = exp2(x kLog2e).
constexpr float kLog2e = 1.4426950408889634f;
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float rcp_approx(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
// Not sqrtf's correctly rounded sequence: the MLP backward's epilogue takes a root an element
// (error ~2^-23 against act's 2^-9).
__device__ __forceinline__ float sqrt_approx(float x) {
    float y;
    asm("sqrt.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Registers that an asynchronous product reads or writes: the empty asm pins their values, so
// the compiler neither reads an accumulator before the wait nor reuses an A fragment early.
template <int N>
__device__ __forceinline__ void pin(float (&r)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(r[i][j])::"memory");
}
template <int N>
__device__ __forceinline__ void pin(uint32_t (&r)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// ---- warpgroup products: acc[64 x N] (+)= A[64 x 16] * B[16 x N] -------------------------------
//
// acc[j][e] is the mma.m16n8 accumulator layout of each warp's 16 rows (warp w of the group has
// rows 16w..16w+15), n-block j: rows g, g+8 (g = lane / 4), columns 8j + 2t, +1 (t = lane % 4).
// wgmma's m64nN accumulators are laid out the same way.

// A from registers: the mma.m16n8k16 A fragment of the warp's 16 rows.
struct RegA {
    const uint32_t (&r)[4];
};
// An operand in a tile: MN = false when tile rows run over the operand's M (or N) and columns
// over K ("K-major"), true when rows run over K. (mn0, k0): the operand's first M/N index and
// first K index in the tile.
template <class TileT, bool MN>
struct Smem {
    using Layout = TileT;
    static constexpr bool kMN = MN;
    uint32_t base;
    int mn0, k0;
};

#if PG_SM90
// Shared-memory matrix descriptor: start address, leading and stride byte offsets, swizzle.
// The stride offset is the step between 8-row groups. The leading offset matters only for an
// MN-major operand wider than one column block: it is the step between column blocks.
template <class TileT, bool MN>
__device__ __forceinline__ uint64_t descriptor(const Smem<TileT, MN>& o) {
    using L = TileT;
    const uint32_t start = MN ? o.base + (o.mn0 / L::CW) * L::BLOCK + (o.mn0 % L::CW) * 2 + o.k0 * L::RB
                              : o.base + (o.k0 / L::CW) * L::BLOCK + (o.k0 % L::CW) * 2 + o.mn0 * L::RB;
    const uint64_t step = (8 * L::RB) >> 4, lead = MN ? uint64_t(L::BLOCK >> 4) : step;
    return uint64_t((start >> 4) & 0x3FFF) | (lead << 16) | (step << 32) | (uint64_t(L::RB == 128 ? 1 : 2) << 62);
}

#define PG_ACC4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define PG_ACC8(d, i) PG_ACC4(d, i), PG_ACC4(d, i + 1)
#define PG_ACC16(d, i) PG_ACC8(d, i), PG_ACC8(d, i + 2)
#define PG_ACC32(d, i) PG_ACC16(d, i), PG_ACC16(d, i + 4)
#define PG_ACC64(d, i) PG_ACC32(d, i), PG_ACC32(d, i + 8)
#define PG_ACC128(d, i) PG_ACC64(d, i), PG_ACC64(d, i + 16)
#define PG_REGS8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define PG_REGS16 PG_REGS8 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define PG_REGS32 PG_REGS16 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define PG_REGS64                                                                                     \
    PG_REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, " \
              "%49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define PG_REGS128                                                                                          \
    PG_REGS64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, " \
              "%82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, "   \
              "%100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, "   \
              "%115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
// Operand numbers after the R accumulators: SS: desc A, desc B, scale-d, trans A, trans B;
// RS: a0..a3, desc B, scale-d, trans B.
#define PG_WGMMA_SS(NN, REGS, ACC, A, B, S, TA, TB)                                                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" S ", 0;\n"                                     \
                 "wgmma.mma_async.sync.aligned.m64n" #NN "k16.f32.bf16.bf16 {" REGS "}, %" A ", %" B \
                 ", p, 1, 1, %" TA ", %" TB ";\n}\n"                                                 \
                 : ACC                                                                               \
                 : "l"(da), "l"(db), "r"(scale_d), "n"(int(TRANS_A)), "n"(int(TRANS_B)))
#define PG_WGMMA_RS(NN, REGS, ACC, A0, A1, A2, A3, B, S, TB)                                           \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" S ", 0;\n"                                       \
                 "wgmma.mma_async.sync.aligned.m64n" #NN "k16.f32.bf16.bf16 {" REGS "}, {%" A0 ", %" A1 \
                 ", %" A2 ", %" A3 "}, %" B ", p, 1, 1, %" TB ";\n}\n"                                 \
                 : ACC                                                                                 \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d), "n"(int(TRANS_B)))

// scale_d = 0 overwrites the accumulator.
template <int N, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db, int scale_d) {
    if constexpr (N == 16) PG_WGMMA_SS(16, PG_REGS8, PG_ACC8(d, 0), "8", "9", "10", "11", "12");
    if constexpr (N == 32) PG_WGMMA_SS(32, PG_REGS16, PG_ACC16(d, 0), "16", "17", "18", "19", "20");
    if constexpr (N == 64) PG_WGMMA_SS(64, PG_REGS32, PG_ACC32(d, 0), "32", "33", "34", "35", "36");
    if constexpr (N == 128) PG_WGMMA_SS(128, PG_REGS64, PG_ACC64(d, 0), "64", "65", "66", "67", "68");
    if constexpr (N == 256) PG_WGMMA_SS(256, PG_REGS128, PG_ACC128(d, 0), "128", "129", "130", "131", "132");
}
template <int N, bool TRANS_B>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t db, int scale_d) {
    if constexpr (N == 16) PG_WGMMA_RS(16, PG_REGS8, PG_ACC8(d, 0), "8", "9", "10", "11", "12", "13", "14");
    if constexpr (N == 32) PG_WGMMA_RS(32, PG_REGS16, PG_ACC16(d, 0), "16", "17", "18", "19", "20", "21", "22");
    if constexpr (N == 64) PG_WGMMA_RS(64, PG_REGS32, PG_ACC32(d, 0), "32", "33", "34", "35", "36", "37", "38");
    if constexpr (N == 128) PG_WGMMA_RS(128, PG_REGS64, PG_ACC64(d, 0), "64", "65", "66", "67", "68", "69", "70");
}
#else
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
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ldmatrix lane roles. Each lane names one row of one of the four 8x8 matrices. "X" order
// covers (rows 0-7, chunk 0), (rows 8-15, chunk 0), (rows 0-7, chunk 1), (rows 8-15, chunk 1):
// an A operand stored [m][k], or a B operand stored [k][n] with .trans. "Y" order covers
// (rows 0-7, chunk 0), (0-7, 1), (8-15, 0), (8-15, 1): a B operand stored [n][k] (registers
// 0,1 feed n-block 0 and 2,3 n-block 1), or an A operand stored [k][m] with .trans.
struct Lane {
    int xr, xc, yr, yc;
    __device__ explicit Lane(int lane)
        : xr(lane & 15), xc(lane >> 4), yr((lane >> 4) * 8 + (lane & 7)), yc((lane >> 3) & 1) {}
};
#endif

__device__ __forceinline__ void wg_fence() {
#if PG_SM90
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#if PG_SM90
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N committed groups of this warpgroup's products are still running.
template <int N>
__device__ __forceinline__ void wg_wait() {
#if PG_SM90
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// One 16-deep step of a warpgroup product; with !accumulate, acc is overwritten. A is RegA or
// Smem, B is Smem. Elsewhere than sm_90 it runs as ldmatrix + mma.sync per warp.
template <int N, class A, class B>
__device__ __forceinline__ void wg_mma(float (&acc)[N / 8][4], const A& a, const B& b, bool accumulate) {
    constexpr bool kRegA = std::is_same<A, RegA>::value;
#if PG_SM90
    if constexpr (kRegA)
        wgmma_rs<N, B::kMN>(acc, a.r, descriptor(b), accumulate);
    else
        wgmma_ss<N, A::kMN, B::kMN>(acc, descriptor(a), descriptor(b), accumulate);
#else
    const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
    const Lane L(lane);
    if (!accumulate) {
#pragma unroll
        for (int j = 0; j < N / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    }
    uint32_t af[4];
    if constexpr (kRegA) {
#pragma unroll
        for (int i = 0; i < 4; ++i) af[i] = a.r[i];
    } else if constexpr (!A::kMN) {
        ldsm(af, a.base + A::Layout::off(a.mn0 + 16 * w + L.xr, a.k0 / 8 + L.xc));
    } else {
        ldsm_t(af, a.base + A::Layout::off(a.k0 + L.yr, (a.mn0 + 16 * w) / 8 + L.yc));
    }
#pragma unroll
    for (int nb = 0; nb < N / 8; nb += 2) {
        uint32_t r[4];
        if constexpr (!B::kMN)
            ldsm(r, b.base + B::Layout::off(b.mn0 + nb * 8 + L.yr, b.k0 / 8 + L.yc));
        else
            ldsm_t(r, b.base + B::Layout::off(b.k0 + L.xr, (b.mn0 + nb * 8) / 8 + L.xc));
        mma(acc[nb], af, r[0], r[1]);
        mma(acc[nb + 1], af, r[2], r[3]);
    }
#endif
}

// Moves registers between warpgroups (all 4 warps of a warpgroup execute it): the launch gives
// every thread the same count, a producer that needs few gives some to consumers that need many.
template <int N>
__device__ __forceinline__ void wg_reg_alloc() {
#if PG_SM90
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void wg_reg_dealloc() {
#if PG_SM90
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// ---- mbarriers and TMA ---------------------------------------------------------------------
// A full/empty pipeline: the producer's arrive announces the bytes its copies will deliver
// (expect_tx) and the copies complete the phase; consumers arrive to hand a buffer back.
// Waits name the parity of the phase to wait for: a fresh barrier counts its phase "-1"
// (parity 1) as complete, so a producer's first wait on an empty buffer passes at once.

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
// Makes the initialised barriers visible to the async proxy (the TMA units); then __syncthreads.
__device__ __forceinline__ void mbar_init_fence() {
#if PG_SM90
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if PG_SM90
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if PG_SM90
#define PG_MBAR_TEST "mbarrier.try_wait.parity.shared::cta.b64"
#else
#define PG_MBAR_TEST "mbarrier.test_wait.parity.shared::cta.b64"
#endif
    asm volatile(
        "{\n.reg .pred done;\nwait:\n" PG_MBAR_TEST " done, [%0], %1;\n"
        "@!done bra wait;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
#undef PG_MBAR_TEST
}

__device__ __forceinline__ uint4 lds16(uint32_t addr) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
    return v;
}

// Brings the 128-byte line holding p into L2, holding no register until it lands.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Copies 16 bytes from global to shared memory, or writes 16 zero bytes when !valid.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
// Waits until at most N of this thread's latest commit groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Shared memory written by the threads (cp.async, stores) that wgmma reads next: each writing
// thread fences before the barrier.
__device__ __forceinline__ void fence_smem_for_tensor_cores() {
#if PG_SM90
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Arrives on mbarrier `bar` once this thread's cp.async copies so far have landed; the arrival
// counts towards the barrier's expected count (no increment).
__device__ __forceinline__ void cp_async_mbar_arrive(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// Box (c0, c1) of a 2-D tensor map (c0 the contiguous coordinate) into shared memory; the
// bytes complete on mbarrier `bar`. Elements outside the tensor arrive as zeros.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
#if PG_SM90
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
#endif
}

// The same for a 3-D tensor map: box (c0, c1, c2).
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, uint32_t bar) {
#if PG_SM90
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
        : "memory");
#endif
}

// dst[0..bytes/4) += the fp32 values at shared address src, by the TMA unit (16-byte aligned,
// bytes a multiple of 16); the copy joins this thread's bulk group.
__device__ __forceinline__ void bulk_add_f32(float* dst, uint32_t src, uint32_t bytes) {
#if PG_SM90
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
                 "r"(src), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit() {
#if PG_SM90
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's bulk groups are still reading shared memory (READ) or
// still running at all.
template <int N, bool READ>
__device__ __forceinline__ void bulk_wait() {
#if PG_SM90
    if constexpr (READ)
        asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
    else
        asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace pg
