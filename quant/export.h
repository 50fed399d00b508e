// A whole model to an artifact and back. Each parameter is stored by its QuantGroup
// (model/params.h): Attn, Mlp and Embed tensors as per-row ints (SDClip scales, GPTQ where
// a Hessian is given, round-to-nearest otherwise), None tensors (gains, gates, mixes) as
// floats of the recipe's dtype.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "model/params.h"
#include "quant/artifact.h"
#include "quant/gptq.h"

namespace pg {

struct QuantRecipe {
    int attn_bits = 6, mlp_bits = 5, embed_bits = 8;
    // SDClip k per group. The step is k / qmax standard deviations: 12.85 / 31 for attention
    // and 20 / 127 for embeddings are the record's; 6.5 / 15 gives the MLP a similar step.
    float attn_clip = 12.85f, mlp_clip = 6.5f, embed_clip = 20.0f;
    DType vector_dtype = DType::F16;
    GptqOptions gptq;

    int bits(QuantGroup g) const;
    float clip(QuantGroup g) const;
};

// H = X^T X of a matrix's inputs, by parameter name (several names may share one).
using HessianMap = std::map<std::string, const std::vector<double>*>;

Artifact quantize_model(const ModelConfig& cfg, const ParamLayout& layout, const float* params,
                        const QuantRecipe& recipe, const HessianMap& hessians = {});

// Fills params (layout.total floats) with the artifact's weights, dequantized. Every
// parameter of the layout must be present with its shape, and nothing else.
void dequantize_model(const Artifact& a, const ParamLayout& layout, float* params, const std::string& source);

struct PruneReport {
    size_t candidates = 0;  // quantized values equal to +-1
    size_t pruned = 0;      // of those, set to 0
    size_t bytes = 0;       // encoded artifact size afterwards
};
// Fallback when an artifact is over its byte target: zeroes +-1 values, cheapest first
// (cost s * (2|w| - s), the rise in squared error with w the original weight in params),
// until the encoded artifact fits. Searches the count with a few trial encodings; fails
// when even pruning every +-1 does not fit.
PruneReport prune_to_fit(Artifact& a, const ParamLayout& layout, const float* params, size_t target_bytes,
                         Codec codec);

}  // namespace pg
