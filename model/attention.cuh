// Causal grouped-query flash attention on the GPU, forward and backward (bf16 tensor cores:
// wgmma on sm_90, mma.sync on sm_80; fp32 accumulation and softmax). Same layout and meaning as the CPU oracle in
// model/attention_ref.h:
//   q, out, dout, dq: [B, T, Hq, D] bf16    k, v, dk, dv: [B, T, Hkv, D] bf16
//   lse: [B, Hq, T] fp32, natural-log sum-exp of each query's scores (scale 1/sqrt(D))
// Query head h reads KV head h / (Hq / Hkv). Supported: D = 32, 64 or 128, Hq a multiple of Hkv,
// any T >= 1.
// Every pointer must be 16-byte aligned (cudaMalloc's are). Both calls only enqueue work on
// `stream`; bad arguments end in pg::Error before anything is launched.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace pg {

using bf16 = __nv_bfloat16;
struct KvGradEpilogue;

// Whether the kernels exist for head dim D (32, 64, 128).
bool flash_attention_supports_head_dim(int D);

// Writes out and lse (the backward needs both).
void flash_attention_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse,
                             int B, int T, int Hq, int Hkv, int D, cudaStream_t stream);

// Bytes of the backward's scratch: two fp32 dq accumulators [B, T, Hq, D] (slots 0 and 1: the
// key blocks add their dq shares into one of them) followed by D_i = rowsum(dout * out),
// [B, Hq, T] fp32.
size_t flash_attention_backward_workspace_bytes(int B, int T, int Hq, int D);

// How a backward uses its workspace, so that a chain of calls (a model's layers) spends no pass
// of its own on it. A call adds dq into the accumulator of `slot`, which must hold zeros first:
// the call zeroes it in the pass that forms D_i, unless `zeroed` says the previous call on this
// workspace (same shape) left it so. With `zero_other`, the call zeroes the other slot's while
// its products run (the producer threads of each key block, idle once their last stage is
// issued). With `have_delta`, D_i is already in the workspace (flash_attention_delta), formed
// by the caller's own pass over dout and out; with both, the call is the products alone.
struct AttnBwdPlan {
    int slot = 0;
    bool zeroed = false, zero_other = false, have_delta = false;
};

// Overwrites dq, dk, dv. With dq null, q's gradient stays in the workspace instead, fp32 and
// unscaled: flash_attention_dq_accumulator(...) times 1/sqrt(D), same layout as dq. That
// saves a pass over it for a caller whose next kernel reads it anyway. The GQA sum over the
// query heads of a group happens inside the kernel (one block owns a key tile of one KV head),
// so dk and dv need no atomics; dq is summed over key tiles with fp32 atomics in the
// workspace, so dq may differ between runs in the last bits.
// `workspace` holds at least flash_attention_backward_workspace_bytes(B, T, Hq, D) bytes, any
// contents but what `plan` promises; it may be reused once the stream has passed this call.
// With kv (model/kernels.cuh), dk and dv go on through k's and v's share of qkv_prep's
// backward inside the kernel instead (dk and dv unused, may be null), and kv->parts is set for
// qkv_prep_backward, which must follow on the same stream.
void flash_attention_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* out,
                              const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv,
                              void* workspace, int B, int T, int Hq, int Hkv, int D,
                              cudaStream_t stream, AttnBwdPlan plan = {}, KvGradEpilogue* kv = nullptr);

// The fp32 accumulator of q's gradient of `slot` in a backward workspace of that shape.
float* flash_attention_dq_accumulator(void* workspace, int slot, int B, int T, int Hq, int D);
// Where D_i = rowsum(dout * out) of each query row sits in a backward workspace of that shape:
// [B, Hq, T] fp32, over the query heads' D values of each row.
float* flash_attention_delta(void* workspace, int B, int T, int Hq, int D);

}  // namespace pg
