// `pgolf bench attention`: throughput of the flash-attention kernels on random data.
// Causal FLOPs: forward 4*B*Hq*T*T*D/2 (two T x T x D products, half of them masked away);
// backward 2.5x the forward (five products instead of two).
// `pgolf bench mlp`: the MLP's LeakyReLU^2 products, today's cuBLAS + elementwise path against
// the fused kernels of model/mlp_gemm.cuh.
// Times are CUDA-event medians after warm-up; the last line is machine-readable.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "common/cli.h"
#include "common/cuda_check.cuh"
#include "common/device.h"
#include "eval/cli.h"
#include "model/attention.cuh"
#include "model/bench_model.h"
#include "model/gemm.cuh"
#include "model/kernels.cuh"
#include "model/mlp_gemm.cuh"

namespace pg {
namespace {

struct AttnBenchArgs {
    int batch = 16, seq = 2048, heads = 8, kv_heads = 4;
    std::vector<int> head_dims = {64, 32};
    int warmup = 5, reps = 30;
};

// Uniform in [-sqrt(3), sqrt(3)] (unit variance) from a hash of the index: no zeros, no host copy.
__global__ void fill_random(bf16* x, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t h = uint32_t(i) * 0x9E3779B1u ^ seed;
        h ^= h >> 16, h *= 0x85EBCA6Bu, h ^= h >> 13, h *= 0xC2B2AE35u, h ^= h >> 16;
        x[i] = __float2bfloat16((h * (1.f / 4294967296.f) * 2.f - 1.f) * 1.7320508f);
    }
}

template <typename F>
std::vector<float> time_ms(F&& run, int warmup, int reps) {
    for (int i = 0; i < warmup; ++i) run();
    std::vector<cudaEvent_t> ev(2 * reps);
    for (auto& e : ev) PG_CHECK(cudaEventCreate(&e));
    for (int i = 0; i < reps; ++i) {
        PG_CHECK(cudaEventRecord(ev[2 * i]));
        run();
        PG_CHECK(cudaEventRecord(ev[2 * i + 1]));
    }
    PG_CHECK(cudaDeviceSynchronize());
    std::vector<float> ms(reps);
    for (int i = 0; i < reps; ++i) PG_CHECK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    for (auto& e : ev) PG_CHECK(cudaEventDestroy(e));
    std::sort(ms.begin(), ms.end());
    return ms;
}

struct AttnRate {
    double fwd, bwd;  // TFLOP/s
};

AttnRate bench_attention_dim(const AttnBenchArgs& a, int D) {
    const int B = a.batch, T = a.seq, Hq = a.heads, Hkv = a.kv_heads;
    const size_t nq = size_t(B) * T * Hq * D, nkv = size_t(B) * T * Hkv * D;
    bf16 *q, *k, *v, *out, *dout, *dq, *dk, *dv;
    float* lse;
    void* ws;
    for (bf16** p : {&q, &out, &dout, &dq}) PG_CHECK(cudaMalloc(p, nq * sizeof(bf16)));
    for (bf16** p : {&k, &v, &dk, &dv}) PG_CHECK(cudaMalloc(p, nkv * sizeof(bf16)));
    PG_CHECK(cudaMalloc(&lse, size_t(B) * Hq * T * sizeof(float)));
    PG_CHECK(cudaMalloc(&ws, flash_attention_backward_workspace_bytes(B, T, Hq, D)));
    uint32_t seed = 1;
    for (auto [p, n] : std::initializer_list<std::pair<bf16*, size_t>>{{q, nq}, {k, nkv}, {v, nkv}, {dout, nq}}) {
        fill_random<<<1024, 256>>>(p, n, seed++);
        PG_CHECK_LAUNCH();
    }

    const auto fwd = time_ms([&] { flash_attention_forward(q, k, v, out, lse, B, T, Hq, Hkv, D, 0); },
                             a.warmup, a.reps);
    const auto bwd = time_ms(
        [&] { flash_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, ws, B, T, Hq, Hkv, D, 0); },
        a.warmup, a.reps);

    const double fwd_flops = 4.0 * B * Hq * double(T) * T * D / 2, bwd_flops = 2.5 * fwd_flops;
    auto med = [](const std::vector<float>& ms) { return double(ms[ms.size() / 2]); };
    std::printf("shape B=%d T=%d Hq=%d Hkv=%d D=%d causal; FLOPs fwd 4*B*Hq*T*T*D/2 = %.2f GFLOP, bwd 2.5x = %.2f GFLOP\n",
                B, T, Hq, Hkv, D, fwd_flops * 1e-9, bwd_flops * 1e-9);
    auto report = [&](const char* what, const std::vector<float>& ms, double flops) {
        std::printf("D=%d %s: median %.4f ms (min %.4f, max %.4f, %d runs after %d warm-up) = %.1f TFLOP/s\n",
                    D, what, med(ms), ms.front(), ms.back(), a.reps, a.warmup, flops / med(ms) * 1e-9);
    };
    report("fwd", fwd, fwd_flops);
    report("bwd", bwd, bwd_flops);
    for (void* p : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)dout, (void*)dq, (void*)dk,
                    (void*)dv, (void*)lse, ws})
        PG_CHECK(cudaFree(p));
    return {fwd_flops / med(fwd) * 1e-9, bwd_flops / med(bwd) * 1e-9};
}

// One line per head dim, then RESULT: attn_fwd_tflops / attn_bwd_tflops for the first head dim
// (64 by default), attn_d<D>_fwd_tflops / ..._bwd_tflops for the others.
void bench_attention(const AttnBenchArgs& a) {
    const DeviceInfo dev = detect_device();
    if (dev.cuda_devices == 0) fail("bench attention needs a CUDA GPU; none is visible");
    std::printf("pgolf bench attention: device %s\n", dev.describe().c_str());
    std::string result = "RESULT";
    for (size_t i = 0; i < a.head_dims.size(); ++i) {
        const int D = a.head_dims[i];
        const AttnRate r = bench_attention_dim(a, D);
        const std::string key = i == 0 ? "attn" : "attn_d" + std::to_string(D);
        char buf[160];
        std::snprintf(buf, sizeof buf, " %s_fwd_tflops=%.1f %s_bwd_tflops=%.1f", key.c_str(), r.fwd, key.c_str(), r.bwd);
        result += buf;
    }
    std::string name = dev.name;
    std::replace(name.begin(), name.end(), ' ', '_');
    std::printf("%s device=%s\n", result.c_str(), name.c_str());
}

struct MlpBenchArgs {
    int rows = 49152, dim = 512, hidden = 2048;
    float slope = 0.5f;
    int warmup = 10, reps = 50;
};

// Up forward (f = x W^T, act = leaky2(f)) and down backward (df = leaky2'(f) * dm Wp), each as
// the product alone, the product + the elementwise pass, and fused (which keeps act and f's
// signs in place of f). Per layer at the record
// shape the model runs both once.
void bench_mlp(const MlpBenchArgs& a) {
    const DeviceInfo dev = detect_device();
    if (dev.cuda_devices == 0) fail("bench mlp needs a CUDA GPU; none is visible");
    const int M = a.rows, K = a.dim, N = a.hidden;
    if (!mlp_gemm_supports(M, N, K)) fail("bench mlp: the fused kernels do not take M=%d N=%d K=%d here", M, N, K);
    std::printf("pgolf bench mlp: device %s\n", dev.describe().c_str());
    const size_t nx = size_t(M) * K, nw = size_t(N) * K, nf = size_t(M) * N;
    bf16 *x, *w, *f, *act, *dact, *df;
    for (auto [p, n] : std::initializer_list<std::pair<bf16**, size_t>>{
             {&x, nx}, {&w, nw}, {&f, nf}, {&act, nf}, {&dact, nf}, {&df, nf}})
        PG_CHECK(cudaMalloc(p, n * sizeof(bf16)));
    uint32_t* signs;
    PG_CHECK(cudaMalloc(&signs, mlp_sign_words(M, N) * sizeof(uint32_t)));
    fill_random<<<1024, 256>>>(x, nx, 1);
    fill_random<<<1024, 256>>>(w, nw, 2);
    fill_random<<<1024, 256>>>(f, nf, 3);
    PG_CHECK_LAUNCH();
    // x stands in for dm and W ([N, K]) for Wp ([K, N]): the same bytes, other shapes.
    Gemm gemm;
    GemmArgs up, down;
    up.M = down.M = M, up.N = down.N = N, up.K = down.K = K;
    up.a = down.a = x, up.b = down.b = w, up.trans_b = true;
    up.d = f, down.d = dact;
    const float s = a.slope;
    auto med_us = [&](auto&& run) { return 1e3 * double(time_ms(run, a.warmup, a.reps)[a.reps / 2]); };
    const double fwd_gemm = med_us([&] { gemm.run(up, 0); });
    const double fwd_today = med_us([&] {
        gemm.run(up, 0);
        leaky_relu2_forward(act, f, nf, s, 0);
    });
    const double fwd_fused = med_us([&] { mlp_up_forward(act, signs, x, w, M, N, K, s, 0); });
    const double bwd_gemm = med_us([&] { gemm.run(down, 0); });
    const double bwd_today = med_us([&] {
        gemm.run(down, 0);
        leaky_relu2_backward(df, dact, f, nf, s, 0);
    });
    const double bwd_fused = med_us([&] { mlp_down_backward(df, x, w, act, signs, M, N, K, s, 0); });
    const double flops = 2.0 * M * N * K;
    std::printf("shape M=%d K=%d N=%d, %.1f GFLOP a product; medians of %d runs after %d warm-up\n", M, K, N,
                flops * 1e-9, a.reps, a.warmup);
    auto line = [&](const char* what, double us) {
        std::printf("%-34s %8.1f us  %6.1f TFLOP/s\n", what, us, flops / us * 1e-6);
    };
    line("fwd cuBLAS f = x W^T", fwd_gemm);
    line("fwd cuBLAS + leaky_relu2_forward", fwd_today);
    line("fwd fused mlp_up_forward", fwd_fused);
    line("bwd cuBLAS dact = dm Wp", bwd_gemm);
    line("bwd cuBLAS + leaky_relu2_backward", bwd_today);
    line("bwd fused mlp_down_backward", bwd_fused);
    for (bf16* p : {x, w, f, act, dact, df}) PG_CHECK(cudaFree(p));
    PG_CHECK(cudaFree(signs));
    std::string name = dev.name;
    std::replace(name.begin(), name.end(), ' ', '_');
    std::printf("RESULT fwd_fused_us=%.1f fwd_today_us=%.1f bwd_fused_us=%.1f bwd_today_us=%.1f device=%s\n", fwd_fused,
                fwd_today, bwd_fused, bwd_today, name.c_str());
}

}  // namespace

void add_bench_commands(CLI::App& app) {
    CLI::App* bench = app.add_subcommand("bench", "time GPU kernels, the model and evaluation");
    bench->require_subcommand(1);
    static AttnBenchArgs args;
    CLI::App* attn = bench->add_subcommand("attention", "flash attention fwd/bwd TFLOP/s (causal, GQA)");
    attn->add_option("--batch", args.batch, "sequences")->capture_default_str();
    attn->add_option("--seq", args.seq, "sequence length T")->capture_default_str();
    attn->add_option("--heads", args.heads, "query heads")->capture_default_str();
    attn->add_option("--kv-heads", args.kv_heads, "key/value heads")->capture_default_str();
    attn->add_option("--head-dims", args.head_dims, "head dimensions D, one run each (32, 64, 128)")
        ->capture_default_str()
        ->check(CLI::IsMember({32, 64, 128}));
    attn->add_option("--warmup", args.warmup, "untimed runs first")->capture_default_str();
    attn->add_option("--reps", args.reps, "timed runs (median reported)")->capture_default_str()->check(CLI::PositiveNumber);
    attn->callback([] { bench_attention(args); });
    static MlpBenchArgs margs;
    CLI::App* mlp = bench->add_subcommand("mlp", "MLP LeakyReLU^2 products: cuBLAS + elementwise vs fused, us");
    mlp->add_option("--rows", margs.rows, "rows M (tokens)")->capture_default_str()->check(CLI::PositiveNumber);
    mlp->add_option("--dim", margs.dim, "model dim K")->capture_default_str();
    mlp->add_option("--hidden", margs.hidden, "hidden width N")->capture_default_str();
    mlp->add_option("--slope", margs.slope, "LeakyReLU slope")->capture_default_str();
    mlp->add_option("--warmup", margs.warmup, "untimed runs first")->capture_default_str();
    mlp->add_option("--reps", margs.reps, "timed runs (median reported)")->capture_default_str()->check(CLI::PositiveNumber);
    mlp->callback([] { bench_mlp(margs); });
    add_model_bench(*bench);
    add_eval_bench(*bench);
}

}  // namespace pg
