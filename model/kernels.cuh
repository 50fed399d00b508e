// The model's CUDA kernels other than the matrix products (model/gemm.cuh) and attention
// (model/attention.cuh). Each has its CPU oracle in model/ops_ref.h, same meaning, checked
// against it in tests/test_kernels_cuda.cu.
//
// Precision: the residual stream and its gradient are fp32; tensors that feed a GEMM (norm
// outputs, q/k/v, attention outputs, MLP activations, logits) are bf16; parameters and
// parameter gradients are fp32 (the flat master / grad buffers of model/params.h).
// Gradient convention, as in ops_ref.h: backward kernels ADD into fp32 gradient outputs
// (callers zero them first); bf16 gradient outputs, which feed GEMMs, are overwritten.
// Parameter gradients that sum over rows are reduced in a fixed order (deterministic),
// except the embedding scatter-adds, which use fp32 atomics.
// Every function only enqueues work on `stream`.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace pg {

using bf16 = __nv_bfloat16;

// ---- conversions ----
// dst[i] = src[i] (any of float/bf16 to any); add: dst[i] += src[i] into fp32.
template <typename Src, typename Dst>
void convert(Dst* dst, const Src* src, size_t n, cudaStream_t stream);
template <typename Src>
void accumulate(float* dst, const Src* src, size_t n, cudaStream_t stream);

// ---- embeddings ----
// out[n] = table[idx[n]], table fp32 [rows, C]; Out is float or bf16.
template <typename Out>
void embedding_forward(Out* out, const int32_t* idx, const float* table, int N, int C, cudaStream_t stream);
// dtable[idx[n]] += dout[n] (fp32 atomics). G is float or bf16.
template <typename G>
void embedding_backward(float* dtable, const int32_t* idx, const G* dout, int N, int C, cudaStream_t stream);
// BigramHash buckets of [B, Tn] token ids (same hash as ops_ref.h bigram_hash).
void bigram_hash(int32_t* buckets, const int32_t* idx, int B, int Tn, int n_buckets, cudaStream_t stream);

// ---- RMSNorm (no weight): out = scale * x * r, r = 1/sqrt(mean(x^2) + kRmsEps), rstd[N] = r ----
template <typename In, typename Out>
void rmsnorm_forward(Out* out, float* rstd, const In* inp, int N, int C, float scale, cudaStream_t stream);
// dinp += d/dx; G is float or bf16.
template <typename In, typename G>
void rmsnorm_backward(float* dinp, const G* dout, const In* inp, const float* rstd, int N, int C, float scale,
                      cudaStream_t stream);

// ---- q/k preparation, per head of [B*Tn, H, hd]: optional RMSNorm over hd (QK norm), then
// partial RoPE on the first rope_dims dims (ops_ref.h rope_forward's convention), then an
// optional per-head gain (q_gain; nullptr for k). rstd [B*Tn*H] is written when norm. ----
void qk_prep_forward(bf16* out, float* rstd, const bf16* inp, const float* gain, int B, int Tn, int H, int hd,
                     int rope_dims, float rope_base, bool norm, cudaStream_t stream);
// dinp (bf16) overwritten; dgain[H] += when gain != nullptr. Recomputes the forward's
// intermediates from inp and rstd.
void qk_prep_backward(bf16* dinp, float* dgain, const bf16* dout, const bf16* inp, const float* rstd,
                      const float* gain, int B, int Tn, int H, int hd, int rope_dims, float rope_base, bool norm,
                      cudaStream_t stream);

// ---- XSA: out[n,h] = y[n,h] - (y[n,h].vn) vn, vn = v[n,h/group]/||v|| (ops_ref.h xsa_forward) ----
void xsa_forward(bf16* out, const bf16* y, const bf16* v, int N, int H, int Hkv, int hd, cudaStream_t stream);
// dy (bf16) overwritten; dv (fp32) +=.
void xsa_backward(bf16* dy, float* dv, const bf16* dout, const bf16* y, const bf16* v, int N, int H, int Hkv,
                  int hd, cudaStream_t stream);

// ---- MLP activations (bf16 in and out; dinp overwritten) ----
void leaky_relu2_forward(bf16* out, const bf16* inp, size_t n, float slope, cudaStream_t stream);
void leaky_relu2_backward(bf16* dinp, const bf16* dout, const bf16* inp, size_t n, float slope, cudaStream_t stream);
// inp rows [a | b] of 2*hidden; out = silu(a) * b.
void swiglu_forward(bf16* out, const bf16* inp, int N, int hidden, cudaStream_t stream);
void swiglu_backward(bf16* dinp, const bf16* dout, const bf16* inp, int N, int hidden, cudaStream_t stream);

// ---- residual-stream mixes (fp32 [N, C]; per-channel weights [C] (wstride 1) or one
// scalar (wstride 0), read from the fp32 parameter buffer) ----
// SmearGate over [B, Tn, C]: out_t = (1-g) x_t + g x_{t-1}, g = sigmoid(gate).
void smear_forward(float* out, const float* inp, const float* gate, int B, int Tn, int C, cudaStream_t stream);
void smear_backward(float* dinp, float* dgate, const float* dout, const float* inp, const float* gate, int B,
                    int Tn, int C, cudaStream_t stream);
// U-Net skip: out = g x + (1-g) (w s), g = sigmoid(gate).
void skip_mix_forward(float* out, const float* x, const float* s, const float* w, const float* gate, int N, int C,
                      cudaStream_t stream);
void skip_mix_backward(float* dx, float* ds, float* dw, float* dgate, const float* dout, const float* x,
                       const float* s, const float* w, const float* gate, int N, int C, cudaStream_t stream);
// out = wa a + wb b (resid_mix with x0 in fp32; v_mix with the first layer's V in bf16).
template <typename T>
void mix_forward(T* out, const T* a, const T* b, const float* wa, const float* wb, int N, int C, int wstride,
                 cudaStream_t stream);
// da, db (fp32) +=; dwa, dwb +=. G is float or bf16.
template <typename T, typename G>
void mix_backward(float* da, float* db, float* dwa, float* dwb, const G* dout, const T* a, const T* b,
                  const float* wa, const float* wb, int N, int C, int wstride, cudaStream_t stream);
// out = x + w a (a residual branch: a is the fp32 output of the branch's last GEMM, or the
// bigram projection); out may alias x.
template <typename A>
void add_scaled_forward(float* out, const float* x, const A* a, const float* w, int N, int C, int wstride,
                        cudaStream_t stream);
// dx += dout; da (bf16, overwritten: it feeds the branch's GEMMs) = w dout; dw += sum(dout a).
template <typename A>
void add_scaled_backward(float* dx, bf16* da, float* dw, const float* dout, const A* a, const float* w, int N,
                         int C, int wstride, cudaStream_t stream);

// ---- tied head: fused softcap + cross-entropy over a chunk of logits [n, V] (bf16, the
// GEMM output x E^T), so the full fp32 logits never exist. losses[n] = logsumexp(s) - s_t with
// s = cap tanh(z/cap) (no cap when cap <= 0). When dlogits != nullptr it receives
// loss_scale * d(sum of losses)/dz in bf16 (it may alias logits). ----
void softcap_ce(float* losses, bf16* dlogits, const bf16* logits, const int32_t* targets, int n, int V, float cap,
                float loss_scale, cudaStream_t stream);

}  // namespace pg
