// The weights of a trained model from either kind of file: a training checkpoint (fp32,
// raw / EMA / SWA) or a packed artifact (dequantized). Evaluation and packing start here.
#pragma once
#include <string>
#include <vector>

#include "common/config.h"

namespace pg {

struct Weights {
    Config config;               // from an artifact only the model part is known
    std::vector<float> params;   // flat, make_layout(config.model) order
    bool from_artifact = false;
};

// which: "ema" (the default of a run that kept one), "swa" or "raw".
Weights load_checkpoint_weights(const std::string& path, const std::string& which);
Weights load_artifact_weights(const std::string& path);

// Depth recurrence is on at evaluation when the model has it and training switched it on
// before its end (recur_from < 1), as every full run does.
inline bool eval_recur(const ModelConfig& m) { return m.recur_repeats > 1 && m.recur_from < 1.f; }

}  // namespace pg
