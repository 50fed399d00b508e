#include <algorithm>

#include "model/model_cuda.cuh"
#include "quant/calibrate.h"

namespace pg {

// The observer hands over X as the forward produces it; H += X^T X is enqueued right there,
// on the model's stream, before the next kernel can overwrite X.
std::map<std::string, std::vector<double>> collect_hessians_cuda(const ModelConfig& cfg, const std::vector<float>& params,
                                                                 TokenStream& stream, int seqs, int batch,
                                                                 bool recur_active) {
    if (seqs < 1 || batch < 1) fail("GPTQ calibration: need seqs >= 1 and batch >= 1 (got %d, %d)", seqs, batch);
    CudaModel model(cfg, std::min(batch, seqs));
    model.upload_params(params);
    const ParamLayout& L = model.layout();
    cudaStream_t st = model.stream();
    std::map<int, DeviceArray<float>> h;  // by parameter index
    model.set_input_observer([&](int param, const bf16* x, int rows, int in) {
        if (L.params[param].quant == QuantGroup::None) return;
        DeviceArray<float>& H = h[param];
        if (H.size() == 0) {
            H = DeviceArray<float>(size_t(in) * in);
            PG_CHECK(cudaMemsetAsync(H.get(), 0, H.size() * sizeof(float), st));
        }
        GemmArgs a;  // H [in, in] += x^T x
        a.M = in, a.N = in, a.K = rows;
        a.a = x, a.trans_a = true, a.b = x;
        a.d = H.get(), a.out_type = OutType::F32, a.beta = 1.f;
        model.gemm().run(a, st);
    });
    const int T = model.config().seq_len;
    for (int done = 0; done < seqs; done += batch) {
        const int rows = std::min(batch, seqs - done);
        const Batch b = next_batch(stream, long(rows) * T, T, 1, 0, 1);
        model.forward(b.inputs.data(), b.targets.data(), b.rows, T, recur_active);
    }
    PG_CHECK(cudaStreamSynchronize(st));
    std::map<std::string, std::vector<double>> out;
    for (const auto& [param, H] : h) {
        const std::vector<float> f = H.download();
        out[L.params[param].name].assign(f.begin(), f.end());
    }
    return out;
}

}  // namespace pg
