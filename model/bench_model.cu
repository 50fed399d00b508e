// `pgolf bench model`: CudaModel's training step (zero_grad + forward, backward, CudaOptimizer
// step) on the record config and random tokens, CUDA-event medians after warm-up; with
// --kernels, also each memory-bound kernel of the step alone at the step's shapes, against the
// fewest bytes it must move. The last line is machine-readable.
//
// FLOPs of a step, as issue 4 states them (MFU against the H100's 989 TFLOP/s dense bf16):
//   6 * P * tokens + 12 * L * T * (H * hd) * tokens
// L: the blocks run (the schedule's length); P = L * (block matrix params) + vocab * dim (the
// tied head) + dim * bigram_dim: the matmul parameters a token passes through, embedding
// lookups excluded. The attention term counts the full T x T score and value products
// (PaLM's convention; the causal kernels do half).
#include <CLI/CLI.hpp>
#include <cuda_profiler_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/cuda_check.cuh"
#include "common/device.h"
#include "model/bench_model.h"
#include "model/attention.cuh"
#include "model/kernels.cuh"
#include "model/model_cuda.cuh"
#include "model/model_ref.h"
#include "model/optim_cuda.cuh"

namespace pg {
namespace {

struct ModelBenchArgs {
    std::vector<int> rows{24};
    std::string recur = "both";
    int warmup = 3, reps = 10;
    bool eager = false, kernels = false, profile = false;
};

double median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Milliseconds of each of `reps` runs of fn after `warmup` untimed ones, by CUDA events on stream.
std::vector<float> time_runs(const std::function<void()>& fn, int warmup, int reps, cudaStream_t stream) {
    for (int i = 0; i < warmup; ++i) fn();
    cudaEvent_t e0, e1;
    PG_CHECK(cudaEventCreate(&e0));
    PG_CHECK(cudaEventCreate(&e1));
    std::vector<float> ms(reps);
    for (float& t : ms) {
        PG_CHECK(cudaEventRecord(e0, stream));
        fn();
        PG_CHECK(cudaEventRecord(e1, stream));
        PG_CHECK(cudaEventSynchronize(e1));
        PG_CHECK(cudaEventElapsedTime(&t, e0, e1));
    }
    PG_CHECK(cudaEventDestroy(e0));
    PG_CHECK(cudaEventDestroy(e1));
    return ms;
}

std::vector<int32_t> random_tokens(size_t n, int vocab, std::mt19937_64& g) {
    std::vector<int32_t> t(n);
    for (auto& x : t) x = int32_t(g() % vocab);
    return t;
}

void bench_steps(const ModelBenchArgs& a, const ModelConfig& m, const TrainConfig& t) {
    const int T = m.seq_len, D = m.model_dim, QD = m.n_heads * m.head_dim, KVD = m.n_kv_heads * m.head_dim;
    const double F = m.swiglu ? 2.0 * m.hidden_dim() : m.hidden_dim();
    const double block_params = 2.0 * QD * D + 2.0 * KVD * D + F * D + double(m.hidden_dim()) * D;
    // Weights from RefModel's init with Gaussian matrices: the orthogonal init takes minutes on
    // the CPU and changes no timing.
    ModelConfig init_cfg = m;
    init_cfg.ortho_init = false;
    RefModel<float> init(init_cfg);
    init.init(t.seed);
    std::printf("record config: %d layers x %d, vocab %d, seq %d, %zu parameters; %s; %d warm-up + %d timed steps\n",
                m.n_layers, D, m.vocab_size, T, init.layout().total,
                a.eager ? "eager launches (no CUDA graphs)" : "CUDA graphs", a.warmup, a.reps);
    std::printf("%6s %5s %9s %9s %9s %9s %11s %7s %9s %9s\n", "rows", "recur", "fwd_ms", "bwd_ms", "opt_ms", "step_ms",
                "tokens/s", "MFU", "act_GiB", "used_GiB");
    std::vector<bool> recurs;
    if (a.recur != "off") recurs.push_back(true);
    if (a.recur != "on") recurs.push_back(false);
    cudaStream_t stream;
    PG_CHECK(cudaStreamCreate(&stream));
    double result_tps = 0, result_mem = 0;
    bool profiled = false;
    for (int rows : a.rows)
        for (bool recur : recurs) {
            CudaModel gpu(m, rows, stream);
            gpu.use_graphs(!a.eager);
            CudaOptimizer gopt(gpu.layout(), t, stream);
            gpu.upload_params(init.params);
            std::mt19937_64 g(rows * 2 + recur);
            const std::vector<int32_t> in = random_tokens(size_t(rows) * T, m.vocab_size, g);
            const std::vector<int32_t> tg = random_tokens(size_t(rows) * T, m.vocab_size, g);
            cudaEvent_t ev[4];
            for (auto& e : ev) PG_CHECK(cudaEventCreate(&e));
            std::vector<float> fwd, bwd, opt, step;
            for (int s = 0; s < a.warmup + a.reps; ++s) {
                const bool profile = a.profile && !profiled && s == a.warmup;  // for ncu --profile-from-start off
                if (profile) PG_CHECK(cudaProfilerStart());
                PG_CHECK(cudaEventRecord(ev[0], stream));
                gpu.zero_grad();
                gpu.forward(in.data(), tg.data(), rows, T, recur, true);
                PG_CHECK(cudaEventRecord(ev[1], stream));
                gpu.backward();
                PG_CHECK(cudaEventRecord(ev[2], stream));
                gopt.step(gpu.params(), gpu.params_bf16(), gpu.grads(), 1.f, s);
                PG_CHECK(cudaEventRecord(ev[3], stream));
                PG_CHECK(cudaEventSynchronize(ev[3]));
                if (profile) {
                    PG_CHECK(cudaProfilerStop());
                    profiled = true;
                }
                if (s < a.warmup) continue;
                float ms[3];
                for (int k = 0; k < 3; ++k) PG_CHECK(cudaEventElapsedTime(&ms[k], ev[k], ev[k + 1]));
                fwd.push_back(ms[0]), bwd.push_back(ms[1]), opt.push_back(ms[2]), step.push_back(ms[0] + ms[1] + ms[2]);
            }
            const float loss = gpu.loss();
            if (!std::isfinite(loss)) fail("bench model: the loss is %f after %d steps", loss, a.warmup + a.reps);
            for (auto& e : ev) PG_CHECK(cudaEventDestroy(e));
            // Nothing is allocated inside a step, so what is in use after the steps is the peak.
            size_t free_b = 0, total_b = 0;
            PG_CHECK(cudaMemGetInfo(&free_b, &total_b));
            const double tokens = double(rows) * T, L = double(m.layer_schedule(recur).size());
            const double P = L * block_params + double(m.vocab_size) * D + double(D) * m.bigram_dim;
            const double flops = 6 * P * tokens + 12 * L * T * QD * tokens;
            const double step_s = median(step) / 1e3, tps = tokens / step_s, mfu = flops / step_s / 989e12;
            const double act = gpu.activation_bytes() / double(1 << 30), used = (total_b - free_b) / double(1 << 30);
            std::printf("%6d %5s %9.2f %9.2f %9.2f %9.2f %11.0f %6.1f%% %9.2f %9.2f   (loss %.3f, %.2f TFLOP/step)\n",
                        rows, recur ? "on" : "off", median(fwd), median(bwd), median(opt), median(step), tps, 100 * mfu,
                        act, used, loss, flops / 1e12);
            std::fflush(stdout);
            if (recur && tps > result_tps) result_tps = tps, result_mem = used;
        }
    PG_CHECK(cudaStreamDestroy(stream));
    std::string name = detect_device().name;
    std::replace(name.begin(), name.end(), ' ', '_');
    std::printf("RESULT tokens_per_s=%.0f peak_mem_gib=%.2f device=%s\n", result_tps, result_mem, name.c_str());
}

// Device buffers of uniform values in [-scale, scale] (no zeros to hide an unwritten output).
template <typename T>
DeviceArray<T> random_array(size_t n, std::mt19937_64& g, float scale = 1.f) {
    std::uniform_real_distribution<float> d(-scale, scale);
    std::vector<T> h(n);
    for (T& x : h) x = T(d(g));
    return DeviceArray<T>(h);
}

// The memory-bound kernels of one step at its shapes, one call each: median time, and the
// bandwidth of the fewest bytes each must move (inputs read once, outputs written once).
void bench_kernels(const ModelConfig& m, int rows) {
    const int Tn = m.seq_len, N = rows * Tn, C = m.model_dim, H = m.n_heads, Hkv = m.n_kv_heads, hd = m.head_dim;
    const int QD = H * hd, KVD = Hkv * hd, QKV = QD + 2 * KVD, hidden = m.hidden_dim(), V = m.vocab_size;
    const int nce = CudaModel::head_chunk_rows(N, V);
    const double nC = double(N) * C, f = 4, h = 2;
    std::mt19937_64 g(7);
    cudaStream_t st;
    PG_CHECK(cudaStreamCreate(&st));
    // The residual stream and its gradients, bf16 like the branch outputs.
    auto x = random_array<bf16>(size_t(nC), g), x0 = random_array<bf16>(size_t(nC), g);
    auto dy = random_array<bf16>(size_t(nC), g), dn = random_array<bf16>(size_t(nC), g);
    auto out = random_array<bf16>(size_t(nC), g), out2 = random_array<bf16>(size_t(nC), g);
    auto a = random_array<bf16>(size_t(nC), g);
    auto ob = random_array<bf16>(size_t(nC), g), dnb = random_array<bf16>(size_t(nC), g);
    auto w = random_array<float>(C, g), w2 = random_array<float>(C, g), dw = random_array<float>(6 * C, g);
    auto rstd = random_array<float>(size_t(N) * H, g, 0.5f);
    auto qkv = random_array<bf16>(size_t(N) * QKV, g), dqkv = random_array<bf16>(size_t(N) * QKV, g);
    auto q = random_array<bf16>(size_t(N) * QD, g), k = random_array<bf16>(size_t(N) * KVD, g);
    auto v = random_array<bf16>(size_t(N) * KVD, g), vf = random_array<bf16>(size_t(N) * KVD, g);
    auto dq = random_array<float>(size_t(N) * QD, g);
    auto dvf = random_array<bf16>(size_t(N) * KVD, g), dvx = random_array<bf16>(size_t(N) * KVD, g);
    auto gain = random_array<float>(H + 2, g), dgain = random_array<float>(H + 2, g);
    auto f1 = random_array<bf16>(size_t(N) * hidden, g), f2 = random_array<bf16>(size_t(N) * hidden, g);
    auto f3 = random_array<bf16>(size_t(N) * hidden, g);
    auto logits = random_array<bf16>(size_t(nce) * V, g, 20.f), dlogits = random_array<bf16>(size_t(nce) * V, g);
    auto losses = random_array<float>(nce, g), lse = random_array<float>(nce, g, 10.f);
    std::vector<int32_t> tg(nce);
    for (auto& t : tg) t = int32_t(g() % V);
    DeviceArray<int32_t> targets(tg);
    DeviceArray<unsigned char> big_a(size_t(256) << 20), big_b(size_t(256) << 20);
    PG_CHECK(cudaMemset(big_a.get(), 1, big_a.size()));

    QkvShape s;
    s.B = rows, s.Tn = Tn, s.H = H, s.Hkv = Hkv, s.hd = hd, s.rope_dims = m.rope_dims, s.rope_base = m.rope_base;
    QkvIn qp;
    qp.q = q.get(), qp.k = k.get(), qp.v = v.get(), qp.q_rstd = rstd.get(), qp.k_rstd = rstd.get();
    qp.qkv = qkv.get(), qp.q_gain = gain.get(), qp.v_first = vf.get(), qp.v_mix = gain.get();
    QkvGrad qd;
    qd.dqkv = dqkv.get(), qd.dq_gain = dgain.get(), qd.dv_mix = dgain.get() + H, qd.dv_first = dvf.get();
    qd.dq = dq.get(), qd.dq_scale = 0.125f, qd.dv_add = dvx.get();

    std::printf("\nmemory-bound kernels alone, %d x %d tokens, dim %d, q|k|v %d, hidden %d, head chunk %d x %d:\n",
                rows, Tn, C, QKV, hidden, nce, V);
    std::printf("%-58s %10s %9s\n", "kernel (bytes it must move)", "us", "GB/s");
    auto row = [&](const char* what, double bytes, const std::function<void()>& fn) {
        const double us = median(time_runs(fn, 3, 21, st)) * 1e3;
        if (bytes > 0) std::printf("%-58s %10.1f %9.0f\n", what, us, bytes / us * 1e-3);
        else std::printf("%-58s %10.1f %9s\n", what, us, "-");
    };
    row("device-to-device copy of 256 MiB (read + write)", 2.0 * big_a.size(), [&] {
        PG_CHECK(cudaMemcpyAsync(big_b.get(), big_a.get(), big_a.size(), cudaMemcpyDeviceToDevice, st));
    });
    ResidualIn t;
    t.x = x.get(), t.wx = w.get(), t.x0 = x0.get(), t.w0 = w2.get();
    row("residual_forward: x, x0 -> x_in, h (first block's input)", nC * h * 4,
        [&] { residual_forward(out.get(), ob.get(), rstd.get(), t, N, C, 0.5f, st); });
    ResidualIn tm;  // x_mid or x_out, which a product stored
    tm.x = x.get();
    row("residual_forward: x_mid -> u", nC * h * 2,
        [&] { residual_forward(nullptr, ob.get(), rstd.get(), tm, N, C, 0.5f, st); });
    ResidualNext nx;
    nx.wx = w.get(), nx.x0 = x0.get(), nx.w0 = w2.get(), nx.x_in = out.get();
    row("residual_forward: x_out -> next block's x_in, h", nC * h * 4,
        [&] { residual_forward(nullptr, ob.get(), rstd.get(), tm, N, C, 0.5f, st, &nx); });
    ResidualNext ns = nx;
    ns.s = a.get(), ns.w = w.get(), ns.gate = w2.get(), ns.skip_out = out2.get();
    row("residual_forward: x_out -> skip mix, next block's x_in, h", nC * h * 6,
        [&] { residual_forward(nullptr, ob.get(), rstd.get(), tm, N, C, 0.5f, st, &ns); });
    row("residual_backward: dy, du, x_mid -> dy (norm 2)", nC * h * 4, [&] {
        residual_backward(dy.get(), dy.get(), nullptr, dnb.get(), x.get(), rstd.get(), 0.5f, ResidualIn{},
                          ResidualGrad{}, N, C, st);
    });
    {
        ResidualGrad d;
        d.dx = out.get(), d.dx0 = out2.get(), d.dwx = dw.get(), d.dw0 = dw.get() + C;
        row("residual_backward: dy, dh, x, x0, dx0 -> dx, dx0, dw (norm 1)", nC * h * 7, [&] {
            residual_backward(nullptr, dy.get(), nullptr, dnb.get(), nullptr, rstd.get(), 0.5f, t, d, N, C, st);
        });
    }
    {  // the same pass taken on through a U-Net skip to the previous entry's first pass
        ResidualIn tp;
        tp.wx = w.get(), tp.x0 = x0.get(), tp.w0 = w2.get();
        ResidualGrad d;
        d.dx0 = out2.get(), d.dwx = dw.get(), d.dw0 = dw.get() + C;
        ResidualPrev p;
        p.x = x.get(), p.s = out.get(), p.w = w.get(), p.gate = w2.get(), p.ds = dn.get(), p.dw = dw.get() + 2 * C;
        p.dgate = dw.get() + 3 * C, p.dres = dy.get();
        row("residual_backward: norm 1, skip -> dx, dx0, ds, dw", nC * h * 9, [&] {
            residual_backward(nullptr, dy.get(), nullptr, dnb.get(), nullptr, rstd.get(), 0.5f, tp, d, N, C, st, &p);
        });
        tp.x = x.get(), p.s = nullptr, p.dw = p.dgate = nullptr;
        row("residual_backward: norm 1 -> dx, dx0, dw", nC * h * 7, [&] {
            residual_backward(nullptr, dy.get(), nullptr, dnb.get(), nullptr, rstd.get(), 0.5f, tp, d, N, C, st, &p);
        });
    }
    const double nq = double(N) * QKV, nkv = double(N) * KVD;
    row("qkv_prep_forward: qkv, v_first -> q, k, v", nq * 2 * h + nkv * h, [&] { qkv_prep_forward(qp, s, st); });
    {  // k's and v's share of qkv_prep's backward runs in the attention backward's epilogue
        auto y = random_array<bf16>(size_t(N) * QD, g), dy_att = random_array<bf16>(size_t(N) * QD, g);
        DeviceArray<float> lse_att(size_t(N) * H);
        DeviceArray<unsigned char> ws(flash_attention_backward_workspace_bytes(rows, Tn, H, hd));
        DeviceArray<bf16> dk(size_t(N) * KVD), dv(size_t(N) * KVD);
        flash_attention_forward(q.get(), k.get(), v.get(), y.get(), lse_att.get(), rows, Tn, H, Hkv, hd, st);
        KvGradEpilogue e = kv_grad_epilogue(qd, qp, s);
        auto attention = [&](KvGradEpilogue* kv) {
            flash_attention_backward(q.get(), k.get(), v.get(), y.get(), lse_att.get(), dy_att.get(), nullptr,
                                     dk.get(), dv.get(), ws.get(), rows, Tn, H, Hkv, hd, st, {}, kv);
        };
        row("flash_attention_backward: dk, dv (not memory-bound)", 0, [&] { attention(nullptr); });
        row("flash_attention_backward with k/v's share of qkv_prep's", 0, [&] { attention(&e); });
        row("qkv_prep_backward, q's share: dq (fp32), qkv -> dqkv", double(N) * QD * (2 * h + f),
            [&] { qkv_prep_backward(e, st); });
    }
    const double ny = double(N) * QD;
    row("xsa_forward", ny * 2 * h + nkv * h, [&] { xsa_forward(q.get(), q.get(), v.get(), N, H, Hkv, hd, st); });
    row("xsa_backward", ny * 3 * h + nkv * 3 * h,
        [&] { xsa_backward(q.get(), dvx.get(), q.get(), q.get(), v.get(), N, H, Hkv, hd, st); });
    const double nh = double(N) * hidden;
    row("leaky_relu2_forward", nh * 2 * h,
        [&] { leaky_relu2_forward(f2.get(), f1.get(), size_t(nh), m.leaky_slope, st); });
    row("leaky_relu2_backward", nh * 3 * h,
        [&] { leaky_relu2_backward(f3.get(), f2.get(), f1.get(), size_t(nh), m.leaky_slope, st); });
    const double nl = double(nce) * V;
    row("softcap_ce_forward (one head chunk)", nl * h,
        [&] { softcap_ce_forward(losses.get(), lse.get(), logits.get(), targets.get(), nce, V, 30.f, st); });
    row("softcap_ce_forward with dlogits (one head chunk)", nl * 2 * h, [&] {
        softcap_ce_forward(losses.get(), lse.get(), logits.get(), targets.get(), nce, V, 30.f, st, dlogits.get());
    });
    PG_CHECK(cudaStreamDestroy(st));
}

void bench_model(const ModelBenchArgs& a) {
    const DeviceInfo dev = detect_device();
    if (dev.cuda_devices == 0) fail("bench model needs a CUDA GPU; none is visible");
    if (a.rows.empty() || *std::min_element(a.rows.begin(), a.rows.end()) < 1)
        fail("bench model: --rows needs one or more positive row counts");
    std::printf("pgolf bench model: device %s\n", dev.describe().c_str());
    Config cfg;
    apply_preset(cfg, "record");
    if (a.kernels) bench_kernels(cfg.model, a.rows.front());
    if (a.kernels) std::printf("\n");
    bench_steps(a, cfg.model, cfg.train);
}

}  // namespace

void add_model_bench(CLI::App& bench) {
    static ModelBenchArgs args;
    CLI::App* cmd = bench.add_subcommand("model", "CudaModel training step on the record config: ms, tokens/s, MFU");
    cmd->add_option("--rows", args.rows, "sequences of 2048 per step (several: one row each)")
        ->capture_default_str()
        ->delimiter(',');
    cmd->add_option("--recur", args.recur, "depth recurrence: on, off or both")
        ->capture_default_str()
        ->check(CLI::IsMember({"on", "off", "both"}));
    cmd->add_option("--warmup", args.warmup, "untimed steps first")->capture_default_str();
    cmd->add_option("--reps", args.reps, "timed steps (median reported)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_flag("--eager", args.eager, "launch kernel by kernel, without CUDA graphs");
    cmd->add_flag("--kernels", args.kernels, "also time the memory-bound kernels alone at the step's shapes");
    cmd->add_flag("--profile", args.profile,
                  "wrap the first timed step in cudaProfilerStart/Stop (ncu --profile-from-start off)");
    cmd->callback([] { bench_model(args); });
}

}  // namespace pg
