// The fused MLP products (model/mlp_gemm.cuh) against their CPU oracle (model/mlp_gemm_ref.h)
// on fresh random bf16 inputs, at odd row counts and several widths, both forms, two slopes;
// and at the record shape against today's path, cuBLAS (model/gemm.cuh) and the elementwise
// leaky_relu2 kernels (model/kernels.cuh).
//
// Tolerances, as ||gpu - ref|| / ||ref||. The GPU sums in fp32 in another order than the
// oracle's double loop (or cuBLAS), so a product near a bf16 rounding boundary may round the
// other way: one bf16 step (2^-8 relative) on a few elements, which act and df square or scale:
// 1e-2. act must also equal the oracle's bit for bit on all but 1% of elements (at most 2.8e-4
// differed on the H100, 582 of 2,048,000 at K = 512: docs/benchmarks/logs/2026-11-24_session11/
// call8_act_bits). Outputs start as NaN and carry three guard rows past M that must
// stay NaN. f's signs must match the oracle's f wherever |f| > 1e-4: the fp32 sums differ by
// ~1e-6 at these K, so only an f that small may fall on the other side of zero. The backward
// takes its act and signs from a random f.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/cuda_check.cuh"
#include "model/gemm.cuh"
#include "model/kernels.cuh"
#include "model/mlp_gemm.cuh"
#include "model/mlp_gemm_ref.h"
#include "tests/gpu.h"

using namespace pg;

namespace {

constexpr double kTolAct = 1e-2;
constexpr size_t kMaxDifferent = 100;  // 1 in
constexpr float kSignFloor = 1e-4f;
constexpr int kGuardRows = 3, kGuardWords = 4;

uint64_t fresh_seed() { return std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}(); }

// Gaussian values of standard deviation `scale`, rounded to bf16, as floats.
std::vector<float> bf16_values(std::mt19937_64& rng, size_t n, float scale) {
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = round_to_bf16(d(rng));
    return v;
}

DeviceArray<bf16> upload(const std::vector<float>& v) {
    std::vector<bf16> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = __float2bfloat16(v[i]);
    return DeviceArray<bf16>(h);
}

// n values, every bit set (NaN as bf16).
template <class T>
DeviceArray<T> all_ones(size_t n) {
    DeviceArray<T> d(n);
    PG_CHECK(cudaMemset(d.get(), 0xff, n * sizeof(T)));
    return d;
}

// An [M + kGuardRows, N] output, all NaN.
DeviceArray<bf16> poisoned(int M, int N) { return all_ones<bf16>(size_t(M + kGuardRows) * N); }

// The first M rows as floats; checks that the guard rows are untouched.
std::vector<float> download(const DeviceArray<bf16>& d, int M, int N) {
    PG_CHECK(cudaDeviceSynchronize());
    const std::vector<bf16> h = d.download();
    std::vector<float> v(size_t(M) * N);
    for (size_t i = 0; i < v.size(); ++i) v[i] = __bfloat162float(h[i]);
    size_t guard_written = 0;
    for (size_t i = v.size(); i < h.size(); ++i) {
        uint16_t u;
        std::memcpy(&u, &h[i], 2);
        guard_written += u != 0xffff;
    }
    CHECK(guard_written == 0);
    return v;
}

double rel_error(const std::vector<float>& got, const std::vector<float>& ref, size_t* unwritten = nullptr) {
    REQUIRE(got.size() == ref.size());
    double num = 0, den = 0;
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        bad += !std::isfinite(got[i]);
        num += double(got[i] - ref[i]) * (got[i] - ref[i]);
        den += double(ref[i]) * ref[i];
    }
    if (unwritten) *unwritten = bad;
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// mlp_sign_words(M, N) words and kGuardWords more, all ones.
DeviceArray<uint32_t> poisoned_signs(int M, int N) { return all_ones<uint32_t>(mlp_sign_words(M, N) + kGuardWords); }

// f < 0 of each element, from the signs' words; checks that the guard words are untouched.
std::vector<bool> download_signs(const DeviceArray<uint32_t>& d, int M, int N) {
    PG_CHECK(cudaDeviceSynchronize());
    const std::vector<uint32_t> h = d.download();
    std::vector<bool> negative(size_t(M) * N);
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            const size_t b = mlp_sign_bit(m, n, N);
            negative[size_t(m) * N + n] = h[b / 32] >> b % 32 & 1;
        }
    size_t guard_written = 0;
    for (size_t i = h.size() - kGuardWords; i < h.size(); ++i) guard_written += h[i] != ~0u;
    CHECK(guard_written == 0);
    return negative;
}

DeviceArray<uint32_t> upload_signs(const std::vector<float>& f, int M, int N) {
    std::vector<uint32_t> h(mlp_sign_words(M, N));
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            const size_t b = mlp_sign_bit(m, n, N);
            if (f[size_t(m) * N + n] < 0.f) h[b / 32] |= 1u << b % 32;
        }
    return DeviceArray<uint32_t>(h);
}

// Elements whose sign bit disagrees with f < 0 although |f| > kSignFloor.
size_t wrong_signs(const std::vector<bool>& negative, const std::vector<float>& f) {
    size_t wrong = 0;
    for (size_t i = 0; i < f.size(); ++i) wrong += std::fabs(f[i]) > kSignFloor && negative[i] != (f[i] < 0.f);
    return wrong;
}

#define CHECK_CLOSE(what, got, ref, tol)                      \
    do {                                                      \
        size_t unwritten_ = 0;                                \
        const double e_ = rel_error(got, ref, &unwritten_);   \
        INFO(what << ": relative error " << e_);              \
        CHECK(unwritten_ == 0);                               \
        CHECK(e_ <= tol);                                     \
    } while (0)

bool fused_available() {
    if (mlp_gemm_supports(1, 256, 32)) return true;
    MESSAGE("skipped: the fused MLP kernels need an sm_90 GPU");
    return false;
}

}  // namespace

TEST_CASE("mlp gemm cuda: fused up forward and down backward match the CPU oracle") {
    PG_REQUIRE_GPU();
    if (!fused_available()) return;
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    struct Shape {
        int M, N, K;
    };
    // 2500 x 2048: 160 tiles of 128 x 256 for 132 SMs, so some blocks take two.
    for (const Shape s : {Shape{1, 256, 32}, Shape{77, 256, 32}, Shape{1000, 256, 32}, Shape{77, 768, 192},
                          Shape{1000, 768, 192}, Shape{1, 2048, 512}, Shape{1000, 2048, 512}, Shape{2500, 2048, 192}})
        for (float slope : {0.5f, 0.1f}) {
            const int M = s.M, N = s.N, K = s.K;
            CAPTURE(M);
            CAPTURE(N);
            CAPTURE(K);
            CAPTURE(slope);
            const size_t n = size_t(M) * N;
            const float wscale = 1.f / std::sqrt(float(K));  // products of unit variance

            const std::vector<float> x = bf16_values(rng, size_t(M) * K, 1.f),
                                     w = bf16_values(rng, size_t(N) * K, wscale);
            std::vector<float> f(n), act(n);
            mlp_up_forward_ref(f.data(), act.data(), x.data(), w.data(), M, N, K, slope);
            auto dx = upload(x), dw = upload(w);
            auto dact = poisoned(M, N);
            auto dsigns = poisoned_signs(M, N);
            mlp_up_forward(dact.get(), dsigns.get(), dx.get(), dw.get(), M, N, K, slope, 0);
            const std::vector<float> gact = download(dact, M, N);
            CHECK_CLOSE("forward act", gact, act, kTolAct);
            size_t differ = 0;
            for (size_t i = 0; i < n; ++i) differ += gact[i] != act[i];
            INFO("act differs from the oracle's on " << differ << " of " << n << " elements");
            CHECK(differ <= n / kMaxDifferent);
            CHECK(wrong_signs(download_signs(dsigns, M, N), f) == 0);

            // The backward's act and signs from a random f, as the forward would leave them.
            const std::vector<float> dm = bf16_values(rng, size_t(M) * K, 1.f),
                                     wp = bf16_values(rng, size_t(K) * N, wscale), fin = bf16_values(rng, n, 1.f);
            std::vector<float> act_in(n), dref(n);
            leaky_relu2_forward(act_in.data(), fin.data(), n, slope);
            for (float& a : act_in) a = round_to_bf16(a);
            std::vector<bool> negative(n);
            for (size_t i = 0; i < n; ++i) negative[i] = fin[i] < 0.f;
            mlp_down_backward_ref(dref.data(), dm.data(), wp.data(), act_in.data(), negative, M, N, K, slope);
            auto ddm = upload(dm), dwp = upload(wp), dact_in = upload(act_in);
            auto dsigns_in = upload_signs(fin, M, N);
            auto ddf = poisoned(M, N);
            mlp_down_backward(ddf.get(), ddm.get(), dwp.get(), dact_in.get(), dsigns_in.get(), M, N, K, slope, 0);
            CHECK_CLOSE("backward df", download(ddf, M, N), dref, kTolAct);
        }
}

TEST_CASE("mlp gemm cuda: the record shape equals cuBLAS plus the elementwise leaky_relu2 kernels") {
    PG_REQUIRE_GPU();
    if (!fused_available()) return;
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    const int M = 49152, N = 2048, K = 512;
    const float slope = 0.5f, wscale = 1.f / std::sqrt(float(K));
    auto x = upload(bf16_values(rng, size_t(M) * K, 1.f)), w = upload(bf16_values(rng, size_t(N) * K, wscale));
    auto dm = upload(bf16_values(rng, size_t(M) * K, 1.f)), wp = upload(bf16_values(rng, size_t(K) * N, wscale));
    auto f = poisoned(M, N), act = poisoned(M, N), dact = poisoned(M, N), df = poisoned(M, N);
    auto fact = poisoned(M, N), fdf = poisoned(M, N);
    auto signs = poisoned_signs(M, N);
    const size_t n = size_t(M) * N;

    // Today's path: the products by cuBLASLt, then the elementwise passes.
    Gemm gemm;
    GemmArgs up;
    up.M = M, up.N = N, up.K = K, up.a = x.get(), up.b = w.get(), up.trans_b = true, up.d = f.get();
    gemm.run(up, 0);
    leaky_relu2_forward(act.get(), f.get(), n, slope, 0);
    GemmArgs down;
    down.M = M, down.N = N, down.K = K, down.a = dm.get(), down.b = wp.get(), down.d = dact.get();
    gemm.run(down, 0);
    leaky_relu2_backward(df.get(), dact.get(), f.get(), n, slope, 0);

    mlp_up_forward(fact.get(), signs.get(), x.get(), w.get(), M, N, K, slope, 0);
    mlp_down_backward(fdf.get(), dm.get(), wp.get(), fact.get(), signs.get(), M, N, K, slope, 0);

    const std::vector<float> ract = download(act, M, N), gact = download(fact, M, N);
    size_t same = 0;
    for (size_t i = 0; i < n; ++i) same += ract[i] == gact[i];
    MESSAGE("record shape: fused act equals today's act bit for bit on " << 100.0 * same / n << "% of elements");
    CHECK_CLOSE("record act", gact, ract, kTolAct);
    CHECK(wrong_signs(download_signs(signs, M, N), download(f, M, N)) == 0);
    CHECK_CLOSE("record df", download(fdf, M, N), download(df, M, N), kTolAct);
}

TEST_CASE("mlp gemm: unsupported shapes are refused before launching") {
    CHECK_FALSE(mlp_gemm_supports(0, 2048, 512));
    CHECK_FALSE(mlp_gemm_supports(-5, 2048, 512));
    CHECK_FALSE(mlp_gemm_supports(128, 2048, 0));
    CHECK_FALSE(mlp_gemm_supports(128, 2048, 16));
    CHECK_FALSE(mlp_gemm_supports(128, 2048, 100));
    CHECK_FALSE(mlp_gemm_supports(128, 128, 512));
    CHECK_FALSE(mlp_gemm_supports(128, 300, 512));
    CHECK_FALSE(mlp_gemm_supports(128, 0, 512));
    CHECK_THROWS_AS(mlp_up_forward(nullptr, nullptr, nullptr, nullptr, 128, 300, 512, 0.5f, 0), Error);
    CHECK_THROWS_AS(mlp_down_backward(nullptr, nullptr, nullptr, nullptr, nullptr, 128, 2048, 100, 0.5f, 0), Error);
    if (gpu_available() && mlp_gemm_supports(1, 256, 32)) {
        CHECK(mlp_gemm_supports(49152, 2048, 512));
        CHECK(mlp_gemm_supports(77, 768, 192));
    }
}
