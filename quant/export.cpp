#include "quant/export.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/check.h"
#include "quant/half.h"
#include "quant/quantize.h"

namespace pg {

int quant_bits(const QuantConfig& q, QuantGroup g) {
    return g == QuantGroup::Attn ? q.attn_bits : g == QuantGroup::Mlp ? q.mlp_bits : q.embed_bits;
}

float quant_clip(const QuantConfig& q, QuantGroup g) {
    return g == QuantGroup::Attn ? q.attn_clip : g == QuantGroup::Mlp ? q.mlp_clip : q.embed_clip;
}

Codec quant_codec(const QuantConfig& q) {
    if (q.codec == "lzma") return Codec::Lzma;
    if (q.codec == "zlib") return Codec::Zlib;
    fail("unknown codec '%s' (lzma | zlib)", q.codec.c_str());
}

static DType vector_dtype(const QuantConfig& q) {
    if (q.vector_dtype == "f16") return DType::F16;
    if (q.vector_dtype == "bf16") return DType::BF16;
    if (q.vector_dtype == "f32") return DType::F32;
    fail("unknown vector dtype '%s' (f16 | bf16 | f32)", q.vector_dtype.c_str());
}

static std::vector<int> shape_of(const ParamSpec& p) {
    return p.rows == 1 ? std::vector<int>{p.cols} : std::vector<int>{p.rows, p.cols};
}

void fake_quantize_model(const ParamLayout& layout, const QuantConfig& q, const float* params, float* out) {
    std::copy(params, params + layout.total, out);
    for (const ParamSpec& p : layout.params)
        if (p.quant == QuantGroup::Attn || p.quant == QuantGroup::Mlp)
            fake_quantize(params + p.offset, p.rows, p.cols, quant_clip(q, p.quant), quant_bits(q, p.quant),
                          out + p.offset);
}

Artifact quantize_model(const ModelConfig& cfg, const ParamLayout& layout, const float* params,
                        const QuantConfig& recipe, const HessianMap& hessians) {
    const DType vdt = vector_dtype(recipe);
    GptqOptions gopt;
    gopt.block_size = recipe.gptq_block;
    gopt.percdamp = recipe.gptq_damp;
    gopt.act_order = recipe.gptq_act_order;
    Artifact a;
    a.config = cfg;
    for (const ParamSpec& p : layout.params) {
        ArtifactTensor t;
        t.name = p.name;
        t.shape = shape_of(p);
        const float* w = params + p.offset;
        if (p.quant == QuantGroup::None) {
            t.dtype = vdt;
            t.values.assign(w, w + p.numel());
            // Rounded here so the in-memory artifact is exactly what the file stores.
            for (float& v : t.values)
                v = t.dtype == DType::F16 ? round_to_f16(v) : t.dtype == DType::BF16 ? bf16_to_f32(f32_to_bf16(v)) : v;
        } else {
            t.dtype = DType::Int;
            t.bits = quant_bits(recipe, p.quant);
            t.scales.resize(p.rows);
            t.q.resize(p.numel());
            sdclip_scales(w, p.rows, p.cols, quant_clip(recipe, p.quant), t.bits, t.scales.data());
            auto h = hessians.find(p.name);
            if (h != hessians.end()) {
                if (h->second->size() != size_t(p.cols) * p.cols)
                    fail("GPTQ: Hessian of %s is not %dx%d", p.name.c_str(), p.cols, p.cols);
                gptq_quantize(w, p.rows, p.cols, h->second->data(), t.scales.data(), t.bits, gopt, t.q.data());
            } else {
                quantize_rows(w, p.rows, p.cols, t.scales.data(), t.bits, t.q.data());
            }
        }
        a.tensors.push_back(std::move(t));
    }
    return a;
}

void dequantize_model(const Artifact& a, const ParamLayout& layout, float* params, const std::string& source) {
    for (const ParamSpec& p : layout.params) {
        const ArtifactTensor* t = a.find(p.name);
        if (!t) fail("%s: artifact lacks parameter '%s'", source.c_str(), p.name.c_str());
        if (t->shape != shape_of(p))
            fail("%s: parameter '%s' has another shape in the artifact than in the model", source.c_str(),
                 p.name.c_str());
        const std::vector<float> w = t->dequantize();
        std::copy(w.begin(), w.end(), params + p.offset);
    }
    if (a.tensors.size() != layout.params.size())
        for (const ArtifactTensor& t : a.tensors)
            if (!layout.find(t.name))
                fail("%s: artifact holds '%s', which this model does not have", source.c_str(), t.name.c_str());
}

PruneReport prune_to_fit(Artifact& a, const ParamLayout& layout, const float* params, size_t target_bytes,
                         Codec codec) {
    struct Candidate {
        float cost;
        uint32_t tensor, index;
    };
    std::vector<Candidate> cands;
    for (size_t ti = 0; ti < a.tensors.size(); ++ti) {
        const ArtifactTensor& t = a.tensors[ti];
        if (t.dtype != DType::Int) continue;
        const ParamSpec& p = layout.get(t.name);
        const size_t cols = t.numel() / t.rows();
        for (size_t i = 0; i < t.q.size(); ++i)
            if (t.q[i] == 1 || t.q[i] == -1) {
                const float s = t.scales[i / cols], w = std::fabs(params[p.offset + i]);
                cands.push_back({s * (2 * w - s), uint32_t(ti), uint32_t(i)});
            }
    }
    std::stable_sort(cands.begin(), cands.end(), [](const Candidate& x, const Candidate& y) { return x.cost < y.cost; });

    auto pruned_copy = [&](size_t k) {
        Artifact b = a;
        for (size_t i = 0; i < k; ++i) b.tensors[cands[i].tensor].q[cands[i].index] = 0;
        return b;
    };
    auto bytes_at = [&](size_t k) { return encode_artifact(pruned_copy(k), codec).size(); };

    PruneReport rep;
    rep.candidates = cands.size();
    size_t lo = 0, hi = cands.size();
    size_t lo_bytes = bytes_at(lo);
    if (lo_bytes <= target_bytes) {
        rep.bytes = lo_bytes;
        return rep;
    }
    size_t hi_bytes = bytes_at(hi);
    if (hi_bytes > target_bytes)
        fail("pruning: even with all %zu +-1 values zeroed the artifact is %zu bytes, over the target of %zu",
             cands.size(), hi_bytes, target_bytes);
    // Size falls almost linearly with the count, so interpolation needs few encodings
    // (bisection after two moves of the same end); stop once the count is known to 0.05%
    // of the candidates.
    const size_t tol = std::max<size_t>(1, cands.size() / 2000);
    int same_end = 0;
    bool last_fit = false;
    while (hi - lo > tol) {
        const double frac = double(lo_bytes - target_bytes) / double(lo_bytes - hi_bytes);
        size_t k = same_end >= 2 ? lo + (hi - lo) / 2 : lo + size_t(frac * double(hi - lo)) + tol / 2;
        k = std::min(hi - 1, std::max(lo + 1, k));
        const size_t b = bytes_at(k);
        const bool fit = b <= target_bytes;
        same_end = fit == last_fit ? same_end + 1 : 1;
        last_fit = fit;
        (fit ? hi : lo) = k;
        (fit ? hi_bytes : lo_bytes) = b;
    }
    a = pruned_copy(hi);
    rep.pruned = hi;
    rep.bytes = hi_bytes;
    return rep;
}

}  // namespace pg
