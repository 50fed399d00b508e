// The GPU fake quantization of STE QAT (quant/qat_cuda.cuh) against its CPU oracle,
// fake_quantize_model (quant/export.h), on fresh random weights of odd and record shapes.
#include <cuda_bf16.h>
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/cuda_check.cuh"
#include "model/params.h"
#include "quant/export.h"
#include "quant/qat_cuda.cuh"
#include "quant/quantize.h"
#include "tests/gpu.h"
#include "tests/ref_check.h"

using namespace pg;
using bf16 = __nv_bfloat16;

namespace {

bool quantized(const ParamSpec& p) { return p.quant == QuantGroup::Attn || p.quant == QuantGroup::Mlp; }

// Rows of every kind: gaussian at scales from 1e-6 to 10 (the smallest floor the scale at
// 2^-14), all-zero rows, and rows with an outlier far beyond the clip (clamped to qmax).
std::vector<float> random_weights(const ParamLayout& L, std::mt19937_64& g) {
    std::vector<float> w(L.total);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_real_distribution<float> log_scale(std::log(1e-6f), std::log(10.f));
    std::uniform_int_distribution<int> kind(0, 19);
    for (const ParamSpec& p : L.params)
        for (int r = 0; r < p.rows; ++r) {
            float* row = w.data() + p.offset + size_t(r) * p.cols;
            const int k = kind(g);
            const float s = std::exp(log_scale(g));
            for (int c = 0; c < p.cols; ++c) row[c] = k == 0 ? 0.f : s * normal(g);
            if (k == 1) row[g() % p.cols] = 100 * s;
        }
    return w;
}

struct QatCompare {
    size_t values = 0, differ = 0, beyond_step = 0, untouched_changed = 0, bf16_wrong = 0;
};

// GPU float and bf16 outputs against the oracle; out buffers start as all-ones bytes (NaN) so
// that an element the kernel should leave alone is seen if it is written.
QatCompare compare_with_oracle(const ParamLayout& L, const QuantConfig& q, const std::vector<float>& w) {
    std::vector<float> ref(L.total);
    fake_quantize_model(L, q, w.data(), ref.data());
    QatCuda qat(L, q);
    DeviceArray<float> dw(w), out_f(L.total);
    DeviceArray<bf16> out_b(L.total);
    PG_CHECK(cudaMemset(out_f.get(), 0xFF, L.total * sizeof(float)));
    PG_CHECK(cudaMemset(out_b.get(), 0xFF, L.total * sizeof(bf16)));
    qat.apply(dw.get(), out_f.get(), nullptr);
    qat.apply(dw.get(), out_b.get(), nullptr);
    const std::vector<float> got = out_f.download();
    const std::vector<bf16> got_b = out_b.download();

    QatCompare r;
    for (const ParamSpec& p : L.params) {
        if (!quantized(p)) {
            for (size_t e = p.offset; e < p.offset + p.numel(); ++e) {
                uint32_t bits;
                std::memcpy(&bits, &got[e], 4);
                uint16_t bbits;
                std::memcpy(&bbits, &got_b[e], 2);
                r.untouched_changed += bits != 0xFFFFFFFFu || bbits != 0xFFFFu;
            }
            continue;
        }
        std::vector<float> scales(p.rows);
        sdclip_scales(w.data() + p.offset, p.rows, p.cols, quant_clip(q, p.quant), quant_bits(q, p.quant),
                      scales.data());
        for (int row = 0; row < p.rows; ++row)
            for (int c = 0; c < p.cols; ++c) {
                const size_t e = p.offset + size_t(row) * p.cols + c;
                ++r.values;
                r.bf16_wrong += __bfloat162float(got_b[e]) != __bfloat162float(__float2bfloat16(got[e]));
                if (std::memcmp(&got[e], &ref[e], 4) == 0) continue;
                ++r.differ;
                r.beyond_step += !(std::abs(got[e] - ref[e]) <= 1.05f * scales[row]);
            }
    }
    return r;
}


}  // namespace

// Tolerance: the kernel sums a row's squares in double in another order than the CPU, so on a
// rare row the float rms, and with it the fp16 scale, may round the other way; then that row's
// values may move by up to one quantization step. At most 1e-3 of the values may differ, and
// none by more than one step (1.05 x the row's scale). Everything after the scale is the same
// IEEE arithmetic, so the expected count is 0.
TEST_CASE("qat cuda: fake quantization equals the CPU oracle on the same grid") {
    PG_REQUIRE_GPU();
    const uint64_t seed = test::fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 g(seed);
    Config rec;
    apply_preset(rec, "record");
    struct Case {
        std::string name;
        ModelConfig model;
        QuantConfig quant;
    };
    QuantConfig coarse;  // other bits and clips: 2-bit attention clamps often
    coarse.attn_bits = 2;
    coarse.attn_clip = 1.5f;
    coarse.mlp_bits = 8;
    coarse.mlp_clip = 30.f;
    const Case cases[] = {{"odd shapes", test::odd_model(72, 24), QuantConfig{}},
                          {"odd shapes, coarse recipe", test::odd_model(72, 24), coarse},
                          {"record shapes", rec.model, rec.quant}};
    for (const Case& c : cases) {
        CAPTURE(c.name);
        const ParamLayout L = make_layout(c.model);
        const QatCompare r = compare_with_oracle(L, c.quant, random_weights(L, g));
        CHECK(r.values > 0);
        CHECK(r.untouched_changed == 0);
        CHECK(r.bf16_wrong == 0);
        CHECK(r.differ <= r.values / 1000);
        CHECK(r.beyond_step == 0);
        MESSAGE(c.name << ": " << r.values << " quantized values, " << r.differ << " off the oracle's grid point");
    }
}

TEST_CASE("qat cuda: record-layout time") {
    PG_REQUIRE_GPU();
    Config rec;
    apply_preset(rec, "record");
    const ParamLayout L = make_layout(rec.model);
    std::mt19937_64 g(1);
    DeviceArray<float> w(random_weights(L, g));
    DeviceArray<bf16> out(L.total);
    QatCuda qat(L, rec.quant);
    cudaEvent_t a, b;
    PG_CHECK(cudaEventCreate(&a));
    PG_CHECK(cudaEventCreate(&b));
    qat.apply(w.get(), out.get(), nullptr);
    PG_CHECK(cudaEventRecord(a));
    const int reps = 20;
    for (int i = 0; i < reps; ++i) qat.apply(w.get(), out.get(), nullptr);
    PG_CHECK(cudaEventRecord(b));
    PG_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    PG_CHECK(cudaEventElapsedTime(&ms, a, b));
    MESSAGE("QAT fake quantization of the record layout: " << ms / reps << " ms");
    CHECK(ms / reps < 5.f);  // a step of the record model takes over a second
    PG_CHECK(cudaEventDestroy(a));
    PG_CHECK(cudaEventDestroy(b));
}
