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

// The bits and SDClip k of a quantized group (Attn, Mlp, Embed) under a QuantConfig.
int quant_bits(const QuantConfig& q, QuantGroup g);
float quant_clip(const QuantConfig& q, QuantGroup g);
Codec quant_codec(const QuantConfig& q);  // pg::fail on an unknown name

// H = X^T X of a matrix's inputs, by parameter name (several names may share one).
using HessianMap = std::map<std::string, const std::vector<double>*>;

Artifact quantize_model(const ModelConfig& cfg, const ParamLayout& layout, const float* params,
                        const QuantConfig& recipe, const HessianMap& hessians = {});

// STE QAT's forward weights: out = params with every Attn and Mlp matrix replaced by its
// quantize-dequantize under q (the same rounding as the export). Embeddings and vectors are
// copied: the int8 embedding step is small enough to leave to the export.
void fake_quantize_model(const ParamLayout& layout, const QuantConfig& q, const float* params, float* out);

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
