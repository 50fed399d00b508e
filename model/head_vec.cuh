// One head vector on a group of lanes, 8 values a lane, as fp32 in registers: the loads,
// stores and sums that the per-head kernels (model/kernels.cu) and the attention backward's
// epilogue (model/attention.cu) share, partial RoPE's rotation across the lanes, and q's and
// k's backward through the rotation and the QK norm.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "model/kernels.cuh"  // Rope

namespace pg {

constexpr unsigned kFull = 0xffffffffu;

// ---- 8 values at a time, as fp32 in registers ----

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// v[j] = p[j] for j < cnt, 0 beyond (cnt may be <= 0: nothing is read).
__device__ __forceinline__ void ld8(float (&v)[8], const float* p, int cnt) {
    if (cnt >= 8 && aligned16(p)) {
        const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = j < cnt ? p[j] : 0.f;
    }
}
// 8 bf16 as fp32, by shifts of the 32-bit words: converted half by half, the compiler split the
// 16-byte load that fed them into two of 8 bytes.
__device__ __forceinline__ void unpack8(float (&v)[8], const uint4& u) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k)
        v[2 * k] = __uint_as_float(w[k] << 16), v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
}
// p[0..8) as loaded (bf16 pairs), zeros from cnt on.
__device__ __forceinline__ uint4 raw8(const bf16* p, int cnt) {
    if (cnt >= 8 && aligned16(p)) return *reinterpret_cast<const uint4*>(p);
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k)
        w[k] = (2 * k < cnt ? uint32_t(h[2 * k]) : 0u) | (2 * k + 1 < cnt ? uint32_t(h[2 * k + 1]) << 16 : 0u);
    return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void ld8(float (&v)[8], const bf16* p, int cnt) { unpack8(v, raw8(p, cnt)); }
// v[j] += the chunk's 8 bf16 values as loaded (raw8), summed in fp32.
__device__ __forceinline__ void add_raw8(float (&v)[8], const uint4& u) {
    float e[8];
    unpack8(e, u);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] += e[j];
}

// p[j] = v[j] for j < cnt.
__device__ __forceinline__ void st8(float* p, const float (&v)[8], int cnt) {
    if (cnt >= 8 && aligned16(p)) {
        reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (j < cnt) p[j] = v[j];
    }
}
__device__ __forceinline__ void st8(bf16* p, const float (&v)[8], int cnt) {
    if (cnt >= 8 && aligned16(p)) {
        uint4 u;
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
        for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
        *reinterpret_cast<uint4*>(p) = u;
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (j < cnt) p[j] = __float2bfloat16_rn(v[j]);
    }
}

// p[j] += v[j] for j < cnt, summed in fp32; without add, p[j] = v[j].
template <typename T>
__device__ __forceinline__ void add8(T* p, const float (&v)[8], int cnt, bool add = true) {
    if (!add) {
        st8(p, v, cnt);
        return;
    }
    float d[8];
    ld8(d, p, cnt);
#pragma unroll
    for (int j = 0; j < 8; ++j) d[j] += v[j];
    st8(p, d, cnt);
}

__device__ __forceinline__ float dot8(const float (&a)[8], const float (&b)[8]) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) s += a[j] * b[j];
    return s;
}

// Sum over aligned groups of `width` lanes (a power of two up to 32); every lane of the warp
// must take part.
__device__ __forceinline__ float group_sum(float v, int width) {
    for (int o = width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}

// The rotation of partial RoPE on the chunk of 8 values c0..c0+7 that a lane holds of a head
// vector (its other chunks sit in the lanes beside it): value d < half pairs with d + half,
//   out[d] = v[d] cos + sign v[d + half] sin,  out[d + half] = v[d + half] cos - sign v[d] sin,
// at the angle of pair d for position t (sign 1: the forward; -1: the transposed rotation).
// Partners come by shuffle. For output j, the partner's place inside its chunk, (j +- half)
// mod 8, is the same on every lane, so one shuffle a direction serves the whole warp; with
// ALIGNED (half a multiple of 8) chunks pair whole and that place is j itself. Every lane of
// the warp calls both functions; a lane with dims = 0 (a v vector) keeps its values.
template <bool ALIGNED>
__device__ __forceinline__ void rope_angles(float2 (&cs)[8], const Rope& rope, int dims, int c0, int t) {
#pragma unroll
    for (int j = 0; j < 8; ++j) cs[j] = make_float2(1.f, 0.f);
    if (c0 >= dims) return;
    const float2* row = rope.table + size_t(t) * rope.half;
    if (ALIGNED) {  // 8 consecutive angles, 64-byte aligned
        const float4* a = reinterpret_cast<const float4*>(row + (c0 < rope.half ? c0 : c0 - rope.half));
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float4 x = a[k];
            cs[2 * k] = make_float2(x.x, x.y), cs[2 * k + 1] = make_float2(x.z, x.w);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int d = c0 + j;
            if (d < dims) cs[j] = row[d < rope.half ? d : d - rope.half];
        }
    }
}

// v[i] for a warp-uniform i, without local memory.
__device__ __forceinline__ float pick8(const float (&v)[8], int i) {
    float r = v[0];
#pragma unroll
    for (int k = 1; k < 8; ++k) r = i == k ? v[k] : r;
    return r;
}

template <bool ALIGNED>
__device__ __forceinline__ void rope8(float (&v)[8], const float2 (&cs)[8], int half, int dims, int c0, float sign) {
    const int lane = threadIdx.x & 31;
    if constexpr (ALIGNED) {
        // One partner lane for all 8 values: half / 8 lanes up below half, down from half on.
        // In place: every lane has read value j by the time it is written. The kernels are
        // bound by instruction issue, and this was most of their arithmetic.
        const bool low = c0 < half;
        const int src = (lane + (low ? half : -half) / 8) & 31;
        const float s = low ? sign : -sign;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float p = __shfl_sync(kFull, v[j], src);
            if (c0 < dims) v[j] = v[j] * cs[j].x + s * p * cs[j].y;
        }
    } else {
        float out[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            // The lanes that hold values d + half and d - half (floor division by 8).
            const int up = (lane + ((j + half) >> 3)) & 31, down = (lane + ((j - half) >> 3)) & 31;
            const int d = c0 + j;
            const float hi = __shfl_sync(kFull, pick8(v, (j + half) & 7), up);
            const float lo = __shfl_sync(kFull, pick8(v, (j - half) & 7), down);
            out[j] = d < half ? v[j] * cs[j].x + sign * hi * cs[j].y
                     : d < dims ? v[j] * cs[j].x - sign * lo * cs[j].y
                                : v[j];
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = out[j];
    }
}

// q's or k's input gradient in place of its output's, vd: the transposed rotation, then back
// through the QK norm (xn: the normed input, rs: the forward's rstd) and the gain g; without
// norm, g R^T(vd). Returns this lane's share of R^T(vd) . xn, which is also q_gain's gradient
// (the rotation is orthogonal, so dq . R(xn) = R^T(dq) . xn). Every lane of the warp calls it.
template <bool ALIGNED>
__device__ __forceinline__ float qk_backward(float (&vd)[8], const float (&xn)[8], const float2 (&cs)[8],
                                             const Rope& rope, int dims, int c0, float g, float rs, bool norm, int tpv,
                                             int hd) {
    rope8<ALIGNED>(vd, cs, rope.half, dims, c0, -1.f);
    const float part = dot8(vd, xn);
    const float m = group_sum(part, tpv) / hd;
#pragma unroll
    for (int k = 0; k < 8; ++k) vd[k] = norm ? g * rs * (vd[k] - xn[k] * m) : g * vd[k];
    return part;
}

}  // namespace pg
