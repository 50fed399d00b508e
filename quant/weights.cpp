#include "quant/weights.h"

#include "common/check.h"
#include "common/checkpoint.h"
#include "model/params.h"
#include "quant/artifact.h"
#include "quant/export.h"

namespace pg {

Weights load_checkpoint_weights(const std::string& path, const std::string& which) {
    const Checkpoint ck = Checkpoint::load(path);
    Weights w;
    from_text(fields(w.config.model), ck.get_text("config.model"), path);
    from_text(fields(w.config.train), ck.get_text("config.train"), path);
    from_text(fields(w.config.quant), ck.get_text("config.quant"), path);
    const std::string section = which == "raw" ? "params" : which == "ema" ? "params.ema" : which == "swa" ? "params.swa" : "";
    if (section.empty()) fail("--weights must be raw, ema or swa (got '%s')", which.c_str());
    if (!ck.has(section)) fail("%s: checkpoint has no %s weights", path.c_str(), which.c_str());
    w.params = ck.get_vec<float>(section);
    if (w.params.size() != make_layout(w.config.model).total)
        fail("%s: %s weights do not fit the checkpoint's model config", path.c_str(), which.c_str());
    return w;
}

Weights load_artifact_weights(const std::string& path) {
    const Artifact a = read_artifact(path);
    Weights w;
    w.config.model = a.config;
    const ParamLayout L = make_layout(a.config);
    w.params.resize(L.total);
    dequantize_model(a, L, w.params.data(), path);
    w.from_artifact = true;
    return w;
}

}  // namespace pg
