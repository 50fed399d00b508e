#include "quant/calibrate.h"

#include <algorithm>

#include "quant/gptq.h"

namespace pg {

std::map<std::string, std::vector<double>> collect_hessians(RefModel<float>& model, TokenStream& stream, int seqs,
                                                            int batch, bool recur_active) {
    std::map<std::string, std::vector<double>> h;
    const ParamLayout& L = model.layout();
    model.on_linear_input = [&](const std::string& weight, const float* X, int rows, int in) {
        const ParamSpec* p = L.find(weight);
        if (!p || p->quant == QuantGroup::None) return;
        auto& H = h[weight];
        if (H.empty()) H.assign(size_t(in) * in, 0.0);
        accumulate_hessian(X, size_t(rows), in, H.data());
    };
    const int T = model.config().seq_len;
    for (int done = 0; done < seqs; done += batch) {
        const int rows = std::min(batch, seqs - done);
        const Batch b = next_batch(stream, long(rows) * T, T, 1, 0, 1);
        model.forward(b.inputs.data(), b.targets.data(), b.rows, T, recur_active);
    }
    model.on_linear_input = nullptr;
    return h;
}

}  // namespace pg
