// Where every parameter lives. All parameters sit in one flat fp32 buffer (the master
// copy; the GPU keeps the same layout). Matrices are registered bank by bank: all
// same-shape matrices that Muon treats alike are contiguous, so one batched GEMM (and,
// with several GPUs, one reduce-scatter) serves a whole bank ("parameter banking").
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "common/config.h"

namespace pg {

enum class ParamKind {
    Matrix,     // 2-D hidden weight, [out, in] (y = x W^T); Muon
    Embedding,  // lookup table; AdamW
    Vector,     // gains, gates, mixes, scalars; AdamW
};

// Which quantizer a matrix gets at export (and under QAT).
enum class QuantGroup { None, Attn, Mlp, Embed };

struct ParamSpec {
    std::string name;
    int rows = 1, cols = 1;  // a vector of n has rows=1, cols=n
    ParamKind kind = ParamKind::Vector;
    QuantGroup quant = QuantGroup::None;
    size_t offset = 0;  // in floats, into the flat buffer
    int bank = -1;      // index into ParamLayout::banks for matrices
    size_t numel() const { return size_t(rows) * cols; }
};

// A run of same-shape matrices, contiguous in the flat buffer.
struct Bank {
    std::string name;
    int first = 0, count = 0;  // indices into ParamLayout::params
    int rows = 0, cols = 0;
    size_t offset = 0;  // of the first matrix
};

struct ParamLayout {
    std::vector<ParamSpec> params;
    std::vector<Bank> banks;
    size_t total = 0;  // floats

    const ParamSpec& get(const std::string& name) const;  // pg::fail if absent
    const ParamSpec* find(const std::string& name) const;
};

// Names (l = physical layer):
//   tok_emb [vocab, dim]                         Embedding, Embed
//   bigram.emb [buckets, bdim], bigram.proj [dim, bdim], bigram.scale [1]
//   smear.gate [dim]
//   blocks.l.attn.wq [H*hd, dim], .wk/.wv [Hkv*hd, dim], .wo [dim, H*hd]   Matrix, Attn
//   blocks.l.mlp.fc [hidden (x2 for SwiGLU), dim], .proj [dim, hidden]      Matrix, Mlp
//   blocks.l.attn_scale [dim], .mlp_scale [dim], .resid_mix [2, dim],
//   blocks.l.q_gain [H], .v_mix [2]
//   skip.weights [max_skips, dim], skip.gates [max_skips, dim]
ParamLayout make_layout(const ModelConfig& cfg);

// Indices into ParamLayout::params of every named parameter, -1 where a switch removes it.
// The CPU reference and the GPU model both address their parameters through this.
struct ParamIndex {
    struct Block {
        int wq, wk, wv, wo, fc, proj, attn_scale, mlp_scale, resid_mix, q_gain, v_mix;
    };
    std::vector<Block> blocks;  // by physical layer
    int tok_emb = -1, bigram_emb = -1, bigram_proj = -1, bigram_scale = -1, smear_gate = -1;
    int skip_weights = -1, skip_gates = -1;
};
ParamIndex index_params(const ParamLayout& layout, int n_layers);

}  // namespace pg
