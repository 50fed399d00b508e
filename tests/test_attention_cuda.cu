// Flash attention (model/attention.cu) against the CPU oracle attention_ref<float> on fresh
// random inputs, rounded to bf16 first so both sides see the same values, for every head dim
// (32, 64, 128), odd sequence lengths and GQA ratios 1, 2 and 4. Outputs are poisoned with NaN
// before each call, so an unwritten element fails the check.
//
// Tolerances, as ||gpu - ref|| / ||ref||: out, dq, dk, dv 1e-2 (bf16 outputs, and P / dS are
// rounded to bf16 before their products, as in every bf16 flash attention); lse 1e-4 (fp32
// scores from exact bf16 products, only the summation order and exp2 approximation differ).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/cuda_check.cuh"
#include "model/attention.cuh"
#include "model/attention_ref.h"
#include "tests/gpu.h"

using namespace pg;

namespace {

struct Shape {
    int B, T, Hq, Hkv, D;
    float q_scale;  // > 1 sharpens the softmax
};

template <typename T>
struct DeviceBuf {
    T* p = nullptr;
    size_t n = 0;
    explicit DeviceBuf(size_t count) : n(count) { PG_CHECK(cudaMalloc(&p, count * sizeof(T))); }
    ~DeviceBuf() { cudaFree(p); }
    DeviceBuf(DeviceBuf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; }
    DeviceBuf(const DeviceBuf&) = delete;
    DeviceBuf& operator=(const DeviceBuf&) = delete;
    void poison() { PG_CHECK(cudaMemset(p, 0xff, n * sizeof(T))); }  // NaN in bf16 and fp32
    std::vector<T> get() const {
        std::vector<T> h(n);
        PG_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

// Random bf16 tensor: its values as floats (for the reference) and uploaded to the device.
DeviceBuf<bf16> random_bf16(std::vector<float>& f, size_t n, float scale, std::mt19937& rng) {
    std::normal_distribution<float> nd(0.f, scale);
    std::vector<bf16> h(n);
    f.resize(n);
    for (size_t i = 0; i < n; ++i) {
        h[i] = __float2bfloat16(nd(rng));
        f[i] = __bfloat162float(h[i]);
    }
    DeviceBuf<bf16> d(n);
    PG_CHECK(cudaMemcpy(d.p, h.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
    return d;
}

std::vector<float> to_float(const std::vector<bf16>& h) {
    std::vector<float> f(h.size());
    for (size_t i = 0; i < h.size(); ++i) f[i] = __bfloat162float(h[i]);
    return f;
}

// ||a - ref|| / ||ref||; NaN if a holds any NaN or inf. An all-zero reference (dq and dk when
// T = 1: the only probability is 1, so dS = 0) is measured against unit-scale entries instead.
double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i])) return NAN;
        num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
        den += double(ref[i]) * ref[i];
    }
    return std::sqrt(num / (den > 0 ? den : double(a.size())));
}

void check_against_reference(const Shape& s, uint32_t seed) {
    const int D = s.D;
    const size_t nq = size_t(s.B) * s.T * s.Hq * D, nkv = size_t(s.B) * s.T * s.Hkv * D;
    const size_t nl = size_t(s.B) * s.Hq * s.T;
    std::mt19937 rng(seed);
    std::vector<float> q, k, v, dout;
    auto dq_in = random_bf16(q, nq, s.q_scale, rng);
    auto dk_in = random_bf16(k, nkv, 1.f, rng);
    auto dv_in = random_bf16(v, nkv, 1.f, rng);
    auto ddo = random_bf16(dout, nq, 1.f, rng);

    DeviceBuf<bf16> out(nq), dq(nq), dk(nkv), dv(nkv);
    DeviceBuf<float> lse(nl);
    DeviceBuf<unsigned char> ws(flash_attention_backward_workspace_bytes(s.B, s.T, s.Hq, D));
    out.poison(), lse.poison(), dq.poison(), dk.poison(), dv.poison(), ws.poison();

    flash_attention_forward(dq_in.p, dk_in.p, dv_in.p, out.p, lse.p, s.B, s.T, s.Hq, s.Hkv, D, 0);
    flash_attention_backward(dq_in.p, dk_in.p, dv_in.p, out.p, lse.p, ddo.p, dq.p, dk.p, dv.p, ws.p,
                             s.B, s.T, s.Hq, s.Hkv, D, 0);
    PG_CHECK(cudaDeviceSynchronize());

    std::vector<float> out_ref(nq), lse_ref(nl), dq_ref(nq), dk_ref(nkv), dv_ref(nkv);
    attention_forward_ref(q.data(), k.data(), v.data(), out_ref.data(), lse_ref.data(), s.B, s.T,
                          s.Hq, s.Hkv, D);
    attention_backward_ref(q.data(), k.data(), v.data(), out_ref.data(), lse_ref.data(),
                           dout.data(), dq_ref.data(), dk_ref.data(), dv_ref.data(), s.B, s.T,
                           s.Hq, s.Hkv, D);

    const double e_out = rel_err(to_float(out.get()), out_ref);
    const double e_lse = rel_err(lse.get(), lse_ref);
    const double e_dq = rel_err(to_float(dq.get()), dq_ref);
    const double e_dk = rel_err(to_float(dk.get()), dk_ref);
    const double e_dv = rel_err(to_float(dv.get()), dv_ref);

    // Again with dq null, as a model's chain of calls runs: q's gradient stays in the workspace,
    // the fp32 accumulator of the call's slot times 1/sqrt(D). The first call zeroes its own
    // slot (the workspace poisoned) and leaves slot 0 zeroed; the second trusts that and zeroes
    // slot 1; the last two take D_i as the workspace holds it, once on a slot left zeroed and
    // once on one left dirty.
    ws.poison(), dk.poison(), dv.poison();
    auto slot = [&](int i) {
        std::vector<float> h(nq);
        PG_CHECK(cudaMemcpy(h.data(), flash_attention_dq_accumulator(ws.p, i, s.B, s.T, s.Hq, D), nq * sizeof(float),
                            cudaMemcpyDeviceToHost));
        return h;
    };
    const std::vector<float> zeros(nq, 0.f);
    for (const AttnBwdPlan plan : {AttnBwdPlan{1, false, true, false}, AttnBwdPlan{0, true, true, false},
                                   AttnBwdPlan{1, true, false, true}, AttnBwdPlan{0, false, true, true}}) {
        CAPTURE(plan.slot);
        CAPTURE(plan.zeroed);
        CAPTURE(plan.have_delta);
        flash_attention_backward(dq_in.p, dk_in.p, dv_in.p, out.p, lse.p, ddo.p, nullptr, dk.p, dv.p, ws.p, s.B, s.T,
                                 s.Hq, s.Hkv, D, 0, plan);
        std::vector<float> acc = slot(plan.slot);
        for (float& x : acc) x /= std::sqrt(float(D));
        CHECK(rel_err(acc, dq_ref) < 1e-2);
        if (plan.zero_other) CHECK(slot(1 - plan.slot) == zeros);
        CHECK(rel_err(to_float(dk.get()), dk_ref) == e_dk);  // the same kernel: the same bits
    }
    MESSAGE("B=" << s.B << " T=" << s.T << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " D=" << D << " q_scale="
                 << s.q_scale << ": rel err out " << e_out << " lse " << e_lse << " dq " << e_dq
                 << " dk " << e_dk << " dv " << e_dv);
    CHECK(e_out < 1e-2);  // false for NaN too
    CHECK(e_lse < 1e-4);
    CHECK(e_dq < 1e-2);
    CHECK(e_dk < 1e-2);
    CHECK(e_dv < 1e-2);
}

}  // namespace

TEST_CASE("flash attention cuda matches the CPU reference, forward and backward") {
    PG_REQUIRE_GPU();
    const Shape shapes[] = {
        {1, 1, 8, 8, 64, 1.f},   {2, 63, 4, 2, 64, 1.f},   {3, 65, 8, 2, 64, 1.f},    {2, 129, 4, 4, 64, 1.f},
        {4, 200, 8, 4, 64, 1.f}, {1, 300, 8, 2, 64, 3.f},  {1, 1024, 8, 4, 64, 1.f},  {2, 257, 2, 1, 64, 2.f},
        {1, 1, 4, 4, 32, 1.f},   {2, 77, 4, 2, 32, 1.f},   {1, 129, 4, 4, 32, 1.f},   {3, 200, 4, 2, 32, 3.f},
        {1, 513, 8, 4, 32, 1.f}, {1, 1, 2, 2, 128, 1.f},   {2, 95, 4, 2, 128, 1.f},   {1, 191, 4, 4, 128, 2.f},
        {1, 640, 8, 4, 128, 1.f},
    };
    for (const Shape& s : shapes) {
        const std::string name = "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) +
                                 " Hq=" + std::to_string(s.Hq) + " Hkv=" + std::to_string(s.Hkv) +
                                 " D=" + std::to_string(s.D);
        SUBCASE(name.c_str()) { check_against_reference(s, std::random_device{}()); }
    }
}

TEST_CASE("flash attention cuda forward is deterministic") {
    PG_REQUIRE_GPU();
    const int B = 2, T = 333, Hq = 8, Hkv = 4, D = 64;  // no atomics in the forward
    const size_t nq = size_t(B) * T * Hq * D, nkv = size_t(B) * T * Hkv * D;
    std::mt19937 rng(std::random_device{}());
    std::vector<float> f;
    auto q = random_bf16(f, nq, 1.f, rng);
    auto k = random_bf16(f, nkv, 1.f, rng);
    auto v = random_bf16(f, nkv, 1.f, rng);
    DeviceBuf<bf16> o1(nq), o2(nq);
    DeviceBuf<float> l1(size_t(B) * Hq * T), l2(size_t(B) * Hq * T);
    flash_attention_forward(q.p, k.p, v.p, o1.p, l1.p, B, T, Hq, Hkv, D, 0);
    flash_attention_forward(q.p, k.p, v.p, o2.p, l2.p, B, T, Hq, Hkv, D, 0);
    PG_CHECK(cudaDeviceSynchronize());
    const auto a = o1.get(), b = o2.get();
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)) == 0);
    CHECK(l1.get() == l2.get());
}

TEST_CASE("flash attention rejects unsupported shapes before launching") {
    // Runs without a GPU: the checks come before any CUDA call.
    CHECK_THROWS_AS(flash_attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 16, 6, 4,
                                            64, 0),
                    Error);
    for (int D : {16, 48, 96, 256}) {
        CHECK_FALSE(flash_attention_supports_head_dim(D));
        CHECK_THROWS_AS(flash_attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 16, 8, 4, D, 0),
                        Error);
    }
    for (int D : {32, 64, 128}) CHECK(flash_attention_supports_head_dim(D));
    CHECK_THROWS_AS(flash_attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, nullptr, nullptr, nullptr, 1, 0, 8, 4, 64, 0),
                    Error);
}
