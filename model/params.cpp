#include "model/params.h"

#include "common/check.h"

namespace pg {

const ParamSpec* ParamLayout::find(const std::string& name) const {
    for (const auto& p : params)
        if (p.name == name) return &p;
    return nullptr;
}

const ParamSpec& ParamLayout::get(const std::string& name) const {
    const ParamSpec* p = find(name);
    if (!p) fail("no parameter named '%s' in this model", name.c_str());
    return *p;
}

ParamIndex index_params(const ParamLayout& L, int n_layers) {
    auto idx = [&](const std::string& name) {
        const ParamSpec* p = L.find(name);
        return p ? int(p - L.params.data()) : -1;
    };
    ParamIndex ix;
    for (int l = 0; l < n_layers; ++l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        ix.blocks.push_back({idx(b + "attn.wq"), idx(b + "attn.wk"), idx(b + "attn.wv"), idx(b + "attn.wo"),
                             idx(b + "mlp.fc"), idx(b + "mlp.proj"), idx(b + "attn_scale"), idx(b + "mlp_scale"),
                             idx(b + "resid_mix"), idx(b + "q_gain"), idx(b + "v_mix")});
    }
    ix.tok_emb = idx("tok_emb");
    ix.bigram_emb = idx("bigram.emb");
    ix.bigram_proj = idx("bigram.proj");
    ix.bigram_scale = idx("bigram.scale");
    ix.smear_gate = idx("smear.gate");
    ix.skip_weights = idx("skip.weights");
    ix.skip_gates = idx("skip.gates");
    return ix;
}

ParamLayout make_layout(const ModelConfig& c) {
    c.validate();
    ParamLayout L;
    auto add = [&](const std::string& name, int rows, int cols, ParamKind kind, QuantGroup q) {
        ParamSpec p;
        p.name = name;
        p.rows = rows;
        p.cols = cols;
        p.kind = kind;
        p.quant = q;
        p.offset = L.total;
        L.total += p.numel();
        if (kind == ParamKind::Matrix) {
            const bool extends = !L.banks.empty() && L.banks.back().rows == rows &&
                                 L.banks.back().cols == cols &&
                                 L.banks.back().first + L.banks.back().count == int(L.params.size());
            if (!extends) {
                Bank b;
                b.name = name.substr(name.rfind('.') + 1);
                b.first = int(L.params.size());
                b.rows = rows;
                b.cols = cols;
                b.offset = p.offset;
                L.banks.push_back(b);
            }
            L.banks.back().count++;
            p.bank = int(L.banks.size()) - 1;
        }
        L.params.push_back(p);
    };
    const int D = c.model_dim, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
    const int fc_rows = c.swiglu ? 2 * c.hidden_dim() : c.hidden_dim();
    auto blk = [](int l, const char* s) { return "blocks." + std::to_string(l) + "." + s; };

    // Matrices first, bank by bank (q and o share a bank when their shapes agree).
    for (int l = 0; l < c.n_layers; ++l) add(blk(l, "attn.wq"), qd, D, ParamKind::Matrix, QuantGroup::Attn);
    for (int l = 0; l < c.n_layers; ++l) add(blk(l, "attn.wo"), D, qd, ParamKind::Matrix, QuantGroup::Attn);
    for (int l = 0; l < c.n_layers; ++l) add(blk(l, "attn.wk"), kvd, D, ParamKind::Matrix, QuantGroup::Attn);
    for (int l = 0; l < c.n_layers; ++l) add(blk(l, "attn.wv"), kvd, D, ParamKind::Matrix, QuantGroup::Attn);
    for (int l = 0; l < c.n_layers; ++l) add(blk(l, "mlp.fc"), fc_rows, D, ParamKind::Matrix, QuantGroup::Mlp);
    for (int l = 0; l < c.n_layers; ++l) add(blk(l, "mlp.proj"), D, c.hidden_dim(), ParamKind::Matrix, QuantGroup::Mlp);
    if (c.bigram_buckets > 0) add("bigram.proj", D, c.bigram_dim, ParamKind::Matrix, QuantGroup::Attn);

    add("tok_emb", c.vocab_size, D, ParamKind::Embedding, QuantGroup::Embed);
    if (c.bigram_buckets > 0) {
        add("bigram.emb", c.bigram_buckets, c.bigram_dim, ParamKind::Embedding, QuantGroup::Embed);
        add("bigram.scale", 1, 1, ParamKind::Vector, QuantGroup::None);
    }
    if (c.smear_gate) add("smear.gate", 1, D, ParamKind::Vector, QuantGroup::None);
    for (int l = 0; l < c.n_layers; ++l) {
        add(blk(l, "attn_scale"), 1, D, ParamKind::Vector, QuantGroup::None);
        add(blk(l, "mlp_scale"), 1, D, ParamKind::Vector, QuantGroup::None);
        add(blk(l, "resid_mix"), 2, D, ParamKind::Vector, QuantGroup::None);
        add(blk(l, "q_gain"), 1, c.n_heads, ParamKind::Vector, QuantGroup::None);
        if (c.value_residual) add(blk(l, "v_mix"), 1, 2, ParamKind::Vector, QuantGroup::None);
    }
    if (c.max_skips() > 0) {
        add("skip.weights", c.max_skips(), D, ParamKind::Vector, QuantGroup::None);
        add("skip.gates", c.max_skips(), D, ParamKind::Vector, QuantGroup::None);
    }
    return L;
}

}  // namespace pg
