// The model's CUDA kernels other than the matrix products (model/gemm.cuh) and attention
// (model/attention.cuh). Each has its CPU oracle in model/ops_ref.h, same meaning, checked
// against it in tests/test_kernels_cuda.cu.
//
// Precision: the residual stream and its gradient are bf16 in memory, as in the PyTorch
// reference under autocast (its activations are bf16 tensors), and every kernel sums and
// normalises them in fp32 registers. At the record shape an fp32 stream moved 1.6x the bytes of
// the residual passes, the largest memory-bound kernels of a step. Tensors that feed a GEMM
// (norm outputs, q/k/v, attention outputs, MLP activations, logits) are bf16 too; parameters
// and parameter gradients are fp32 (the flat master / grad buffers of model/params.h).
// Gradient convention, as in ops_ref.h: backward kernels ADD into gradient outputs of the
// stream and of parameters (callers zero them first); gradient outputs that feed GEMMs are
// overwritten. A few other outputs are overwritten too, each said below: where every element is
// written once per step, a zeroing pass would cost as much as the kernel's own write. And where
// a call is a gradient's first writer in the model's backward, it asks to overwrite (add =
// false, or the add_ flags of the gradient structs), which spares the caller the zeroing pass
// and the kernel the read of the zeros.
// Parameter gradients that sum over rows are reduced in a fixed order (deterministic),
// except the embedding scatter-adds, which use fp32 atomics.
// Every function only enqueues work on `stream`.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "model/ops_ref.h"  // the argument structs shared with the oracles

namespace pg {

using bf16 = __nv_bfloat16;

// ---- conversions ----
// dst[i] = k src[i] (any of float/bf16 to any); accumulate: dst[i] += k src[i], summed in fp32,
// dst fp32, or bf16 for a bf16 src. k from device memory: *scale, 1 without scale; convert also
// takes scale[i / row] with row > 0 (one factor per row of a row-major matrix, row % 8 == 0 and
// dividing n).
template <typename Src, typename Dst>
void convert(Dst* dst, const Src* src, size_t n, cudaStream_t stream, const float* scale = nullptr, size_t row = 0);
template <typename Src, typename Dst>
void accumulate(Dst* dst, const Src* src, size_t n, cudaStream_t stream, const float* scale = nullptr);
// A branch scale s folded into the rows of its matrix W [rows, cols] (the product reads
// diag(s) W; ops_ref.h scaled_rows_backward): from g, the fp32 gradient of diag(s) W,
// dW += diag(s) g and ds[r] += W[r, :] . g[r, :], W as the forward read it (bf16), each dot
// summed in a fixed order. The scale's gradient so needs no pass over the branch's output.
void scaled_rows_backward(float* dW, float* ds, const float* g, const bf16* W, const float* s, int rows, int cols,
                          cudaStream_t stream);

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
// dinp (the input's type) += d/dx (= without add), times *dscale (device memory) when given; G
// is float or bf16.
template <typename In, typename G>
void rmsnorm_backward(In* dinp, const G* dout, const In* inp, const float* rstd, int N, int C, float scale,
                      cudaStream_t stream, const float* dscale = nullptr, bool add = true);

// ---- q/k/v preparation (ops_ref.h qkv_prep_forward / _backward): from the fused projection
// qkv [N, (H + 2 Hkv) hd], QK norm, partial RoPE and q_gain on q and k, the value-residual mix
// on v, in one pass; the backward (in two parts, KvGradEpilogue) also does the v_mix backward
// and sums v's gradients. Parameter gradients are per-block partial sums finished in a fixed
// order. ----
using QkvIn = QkvForward<float, bf16>;
using QkvGrad = QkvBackward<float, bf16>;
void qkv_prep_forward(const QkvIn& p, const QkvShape& s, cudaStream_t stream);

// The rotary angles of partial RoPE: [Tn][half] (cos, sin), made on the host (kernels.cu).
struct Rope {
    const float2* table = nullptr;
    int half = 0, dims = 0;
};

// The backward comes in two parts. k's and v's share is the epilogue of the attention backward
// that forms dk and dv (flash_attention_backward with this struct): each of its blocks owns
// whole key rows of one KV head, so dk and dv go on to dqkv's k and v columns (and to
// dv_first, and v_mix's sums) from its registers and never through memory; d.dk and d.dv are
// unused. qkv_prep_backward then does q's share and finishes the parameter gradients of both.
struct KvGradEpilogue {
    QkvGrad d;
    QkvIn p;
    QkvShape s;
    Rope rope;
    float* partial = nullptr;  // v_mix's two sums of each attention block
    int parts = 0;             // the attention blocks that wrote them (set by the attention backward)
};
// The epilogue of d, p, s: the rotation's table and room for the sums (kernels.cu's scratch,
// which qkv_prep_backward's own partial sums share; no call that uses it may come between).
KvGradEpilogue kv_grad_epilogue(const QkvGrad& d, const QkvIn& p, const QkvShape& s);
void qkv_prep_backward(const KvGradEpilogue& e, cudaStream_t stream);

// ---- XSA: out[n,h] = y[n,h] - (y[n,h].vn) vn, vn = v[n,h/group]/||v|| (ops_ref.h xsa_forward) ----
void xsa_forward(bf16* out, const bf16* y, const bf16* v, int N, int H, int Hkv, int hd, cudaStream_t stream);
// dy overwritten; dv += (= without add). With delta, also the attention
// backward's D_i = rowsum(dy * y) of each row and head, into delta [N / T, H, T] (rows of T
// tokens; model/attention.cuh flash_attention_delta), which saves that backward a pass over both.
void xsa_backward(bf16* dy, bf16* dv, const bf16* dout, const bf16* y, const bf16* v, int N, int H, int Hkv,
                  int hd, cudaStream_t stream, bool add = true, float* delta = nullptr, int T = 0);

// ---- MLP activations (bf16 in and out; dinp overwritten) ----
void leaky_relu2_forward(bf16* out, const bf16* inp, size_t n, float slope, cudaStream_t stream);
void leaky_relu2_backward(bf16* dinp, const bf16* dout, const bf16* inp, size_t n, float slope, cudaStream_t stream);
// inp rows [a | b] of 2*hidden; out = silu(a) * b.
void swiglu_forward(bf16* out, const bf16* inp, int N, int hidden, cudaStream_t stream);
void swiglu_backward(bf16* dinp, const bf16* dout, const bf16* inp, int N, int hidden, cudaStream_t stream);

// ---- residual-stream mixes (bf16 [N, C]; per-channel weights [C], read from the fp32
// parameter buffer) ----
// SmearGate over [B, Tn, C]: out_t = (1-g) x_t + g x_{t-1}, g = sigmoid(gate).
void smear_forward(bf16* out, const bf16* inp, const float* gate, int B, int Tn, int C, cudaStream_t stream);
// dinp += (= without add); dgate +=. The output's gradient is dout + dout_add (when given), summed
// in fp32 as it is read, so that a caller with it in two parts spends no pass adding them.
void smear_backward(bf16* dinp, float* dgate, const bf16* dout, const bf16* inp, const float* gate, int B, int Tn,
                    int C, cudaStream_t stream, bool add = true, const bf16* dout_add = nullptr);
// The U-Net skip, out = g x + (1-g) (w s), g = sigmoid(gate), runs inside the residual passes
// below: forward in residual_forward's (ResidualNext), backward in residual_backward's
// (ResidualPrev).

// ---- the residual stream around a block (ops_ref.h residual_forward / _backward): one warp
// per row, so a row's RMS statistic and every term of the sum meet in one pass. C <= 2048. ----
// sum (may alias t.x) and/or norm = scale * rmsnorm(sum) with rstd [N].
using ResidualIn = ResidualTerms<bf16, bf16, float>;
using ResidualGrad = ResidualGrads<bf16, bf16, float>;
// The next block's input, formed from a block's output sum in the same pass, so that the sum is
// not read back: when s is given, the U-Net skip mix y = g sum + (1-g) w s, g = sigmoid(gate),
// into skip_out (s may be sum itself); else y = sum. norm is then scale * rmsnorm(wx y + w0 x0)
// (per-channel weights), formed from the fp32 sum wx y + w0 x0 as the backward forms it again;
// x_in, when given, gets that sum in bf16 (the next block's attention product adds into it).
struct ResidualNext {
    const bf16* s = nullptr;
    const float *w = nullptr, *gate = nullptr;
    bf16* skip_out = nullptr;
    const float* wx = nullptr;
    const bf16* x0 = nullptr;
    const float* w0 = nullptr;
    bf16* x_in = nullptr;
};
void residual_forward(bf16* sum, bf16* norm, float* rstd, const ResidualIn& t, int N, int C, float scale,
                      cudaStream_t stream, const ResidualNext* next = nullptr);
// g = dy + dadd + scale * rmsnorm_backward(dnorm; input xn, or the terms' sum when xn is null);
// dres = g (may alias dy); term gradients as ResidualGrads says. dnorm, the gradient of the
// norm's output, comes from the products that read it, in bf16 like every GEMM's gradient output.
// With prev (the mirror of ResidualNext): the gradient of the block's input, y = wx g, is not
// stored (d.dx null) but taken on in the same pass to the previous entry's output x, whose
// gradient is then read by nobody else first:
//   skip (s given; the block's input was g x + (1-g) w s, t.x null: that input is formed again
//   from x and s): gx = g y, ds = (1-g) w y, dw and dgate added to; with ds null, s is x itself
//   and its share adds into gx;
//   gx += dskip (x's gradient through its own skip);
//   dres = gx.
// Weights are per channel (wstride 1) throughout.
struct ResidualPrev {
    const bf16 *x = nullptr, *s = nullptr;
    const float *w = nullptr, *gate = nullptr;
    bf16* ds = nullptr;
    float *dw = nullptr, *dgate = nullptr;
    const bf16* dskip = nullptr;
    bf16* dres = nullptr;  // may alias dy
};
void residual_backward(bf16* dres, const bf16* dy, const bf16* dadd, const bf16* dnorm, const bf16* xn,
                       const float* rstd, float scale, const ResidualIn& t, const ResidualGrad& d, int N, int C,
                       cudaStream_t stream, const ResidualPrev* prev = nullptr);

// ---- tied head: softcap + cross-entropy over a chunk of logits [n, V] (bf16, the GEMM output
// x E^T), so the full fp32 logits never exist (ops_ref.h softcap_ce_forward / _backward). One
// pass writes losses and each row's log-sum-exp; given dlogits (which may alias logits), the
// same pass also writes d(loss of each row)/dz in bf16, so that a training step reads each
// chunk of logits once and never computes them again. ----
void softcap_ce_forward(float* losses, float* lse, const bf16* logits, const int32_t* targets, int n, int V,
                        float cap, cudaStream_t stream, bf16* dlogits = nullptr);

}  // namespace pg
