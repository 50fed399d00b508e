// Evaluation, score-first TTT and GPTQ calibration on the GPU against their CPU oracles:
// sliding-window bpb (CudaTttModel::score vs RefModel), the TTT update kernels vs
// sgd_momentum_step, TTT steps and per-chunk TTT scores vs RefTttModel, TTT legality with the
// GPU model, Hessians vs collect_hessians, pack/eval through the binary with --device, and
// (2 GPUs and more) pgolf eval --gpus 2 against --gpus 1.
// The record-shape calibration timing runs only when asked for (--no-skip).
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/config.h"
#include "eval/ttt_cuda.cuh"
#include "model/optim.h"
#include "model/optim_cuda.cuh"
#include "quant/calibrate.h"
#include "tests/checkpoint_file.h"
#include "tests/gpu.h"
#include "tests/ref_check.h"
#include "tests/run_pgolf.h"
#include "tests/tmp_dir.h"
#include "tests/toy_tables.h"

using namespace pg;
using pg::test::toy_tables;
using test::rel_l2;

namespace {

// Every switch on, head_dim 64 (the GPU attention's size), small enough that the CPU
// reference runs TTT over a thousand tokens in about a second.
ModelConfig small_model(int vocab) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.model_dim = 96;
    c.n_layers = 3;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 64;
    c.mlp_mult = 2;
    c.rope_dims = 16;
    c.bigram_buckets = 37;
    c.bigram_dim = 24;
    c.xsa_last = 1;
    c.recur_start = c.recur_end = 1;
    c.parallel_from = 2;
    c.seq_len = 64;
    c.validate();
    return c;
}

// The init, then noise on every vector parameter (no gate or mix at its init value) and a
// larger embedding, so that the logits are not all near zero.
std::vector<float> noisy_init(const ModelConfig& c, std::mt19937& g) {
    RefModel<float> m(c);
    m.init(g());
    std::normal_distribution<float> d(0.f, 0.1f);
    for (const ParamSpec& p : m.layout().params)
        for (size_t e = p.offset; e < p.offset + p.numel(); ++e) {
            if (p.kind == ParamKind::Vector) m.params[e] += d(g);
            if (p.kind == ParamKind::Embedding) m.params[e] *= 20.f;
        }
    return m.params;
}

// A random text of `period` tokens repeated: something TTT can learn.
std::vector<uint16_t> repeated_stream(size_t n, size_t period, int vocab, std::mt19937& g) {
    std::vector<uint16_t> once(period), t(n);
    for (auto& x : once) x = uint16_t(g() % vocab);
    for (size_t i = 0; i < n; ++i) t[i] = once[i % period];
    return t;
}

double rel_diff(double a, double ref) { return std::abs(a - ref) / std::abs(ref); }

// Measured on an H100 (MESSAGE lines of each run; docs/benchmarks/eval.md). The GPU model
// computes in bf16 where the reference uses fp32 (model/model_cuda.cuh): per-token losses
// differ by about 1e-3 relative, mostly averaging out in a mean. First H100 run: bpb 1.2e-4,
// chunk 2.3e-4, weight change 1.7e-2 (worst matrix), Hessian 7.9e-3, run-to-run 9.5e-6.
constexpr double kBpbTol = 1e-3;        // relative, val_bpb over a split
constexpr double kChunkTol = 3e-3;      // relative, a TTT chunk's mean loss after adapting steps
constexpr double kUpdateTol = 5e-2;     // relative L2, a weight tensor's change over TTT steps
constexpr double kHessianTol = 2e-2;    // relative Frobenius, a Hessian from bf16 inputs
// Run to run, three epochs of TTT amplify the attention backward's atomic-order noise: a
// chunk's score moved 9.1e-6 and 7.4e-5 (relative) in two H100 runs while dq was rounded to
// bf16, 1.0e-4 to 1.7e-4 in three since qkv_prep's backward reads dq in fp32. Poisoning the
// tokens after a chunk moves that chunk's own score by 0.97-0.99 (relative) on an H100.
constexpr double kRunNoise = 1e-3;      // relative, a TTT chunk's score from run to run on the GPU
constexpr double kPoisonMove = 1e-1;    // relative, the least a poisoned chunk's score must move

}  // namespace

TEST_CASE("eval cuda: plain and sliding-window bpb equal the CPU reference's") {
    PG_REQUIRE_GPU();
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    const int vocab = 96;
    const ModelConfig c = small_model(vocab);
    const std::vector<float> w = noisy_init(c, g);
    const ByteTables bt = toy_tables(vocab);
    const std::vector<uint16_t> tokens = repeated_stream(1500 + g() % 300, 200, vocab, g);

    RefModel<float> ref(c);
    ref.params = w;
    RefTttModel cpu(ref, true);
    // Room for 3 windows a pass: calls of 7 windows run in pieces.
    CudaTttModel gpu(c, w, 3 * c.seq_len, true);
    for (int stride : {c.seq_len, 16, 1 + int(g() % 40)}) {
        CAPTURE(stride);
        EvalOptions o;
        o.seq_len = c.seq_len;
        o.stride = stride;
        o.batch_seqs = 7;
        auto as_score = [](TttModel& m) {
            return [&m](const int32_t* in, const int32_t* tg, int rows, int seq, float* nll) {
                m.score(in, tg, rows, seq, nll);
            };
        };
        const BpbAccumulator a = evaluate(as_score(cpu), tokens, bt, o);
        const BpbAccumulator b = evaluate(as_score(gpu), tokens, bt, o);
        CHECK(b.tokens == a.tokens);
        CHECK(b.bytes == a.bytes);
        const double e = rel_diff(b.bpb(), a.bpb());
        MESSAGE("stride " << stride << ": val_bpb CPU " << a.bpb() << ", GPU " << b.bpb() << ", relative " << e);
        CHECK(e < kBpbTol);
    }
}

TEST_CASE("ttt cuda: the update kernels match sum_squares and sgd_momentum_step") {
    PG_REQUIRE_GPU();
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    std::normal_distribution<float> d(0.f, 1.f);
    const size_t n = 100003 + g() % 1000;  // no multiple of any block size
    std::vector<float> w(n), v(n), grad(n);
    for (size_t i = 0; i < n; ++i) w[i] = d(g), v[i] = 0.1f * d(g), grad[i] = 0.01f * d(g);
    const float norm = float(std::sqrt(sum_squares(grad.data(), n)));
    DeviceArray<float> dw(w), dv(v), dg(grad);
    DeviceArray<bf16> dwb(n);
    DeviceArray<double> partial(kSumSquaresBlocks), sumsq(1);
    // Clipped, not clipped, clip off; the momentum buffer carries from step to step.
    for (float clip : {0.5f * norm, 2.f * norm, 0.f}) {
        CAPTURE(clip);
        sum_squares_cuda(dg.get(), n, partial.get(), sumsq.get(), false, nullptr);
        const double ss = sumsq.download()[0];
        CHECK(rel_diff(ss, sum_squares(grad.data(), n)) < 1e-12);
        sum_squares_cuda(dg.get(), n / 3, partial.get(), sumsq.get(), true, nullptr);  // adds to *sumsq
        CHECK(rel_diff(sumsq.download()[0], ss + sum_squares(grad.data(), n / 3)) < 1e-12);
        sum_squares_cuda(dg.get(), n, partial.get(), sumsq.get(), false, nullptr);
        sgd_momentum_cuda(dw.get(), dwb.get(), dv.get(), dg.get(), n, sumsq.get(), 0.05f, 0.9f, clip, nullptr);
        sgd_momentum_step(w.data(), v.data(), grad.data(), n, 0.05f, 0.9f, clip);
        const std::vector<float> gw = dw.download(), gv = dv.download();
        const std::vector<bf16> gb = dwb.download();
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) {
            // One rounding apart at most (fused multiply-adds on either side).
            bad += std::abs(gv[i] - v[i]) > 1e-6f * (std::abs(v[i]) + 1e-3f);
            bad += std::abs(gw[i] - w[i]) > 1e-6f * (std::abs(w[i]) + 1e-3f);
            bad += __bfloat162float(gb[i]) != __bfloat162float(__float2bfloat16(gw[i]));
        }
        CHECK(bad == 0);
    }
}

TEST_CASE("ttt cuda: train steps (clip and momentum on) change the weights as RefTttModel does") {
    PG_REQUIRE_GPU();
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    const int vocab = 96;
    const ModelConfig c = small_model(vocab);
    const ParamLayout L = make_layout(c);
    const std::vector<float> w0 = noisy_init(c, g);
    const int rows = 4, T = c.seq_len;
    const std::vector<uint16_t> s = repeated_stream(size_t(rows) * T + 1, 50, vocab, g);
    std::vector<int32_t> in(s.begin(), s.end() - 1), tg(s.begin() + 1, s.end());

    RefModel<float> ref(c);
    ref.params = w0;
    ref.zero_grad();
    ref.forward(in.data(), tg.data(), rows, T, true);
    ref.backward();
    const float clip = 0.5f * float(std::sqrt(sum_squares(ref.grads.data(), ref.grads.size())));  // engages
    RefTttModel cpu(ref, true);
    CudaTttModel gpu(c, w0, 2 * T, true);  // 2 rows a pass: each step sums two pieces
    for (int step = 0; step < 3; ++step) {
        CAPTURE(step);
        const float a = cpu.train_step(in.data(), tg.data(), rows, T, rows, 0.05f, 0.9f, clip);
        const float b = gpu.train_step(in.data(), tg.data(), rows, T, rows, 0.05f, 0.9f, clip);
        CHECK(rel_diff(b, a) < kBpbTol);
    }
    const std::vector<float> w_gpu = gpu.model().download_params();
    double worst = 0;
    std::string worst_name;
    std::vector<double> all_cpu, all_gpu;
    for (const ParamSpec& p : L.params) {
        std::vector<double> dc(p.numel()), dg(p.numel());
        for (size_t e = 0; e < p.numel(); ++e) {
            dc[e] = double(ref.params[p.offset + e]) - w0[p.offset + e];
            dg[e] = double(w_gpu[p.offset + e]) - w0[p.offset + e];
        }
        all_cpu.insert(all_cpu.end(), dc.begin(), dc.end());
        all_gpu.insert(all_gpu.end(), dg.begin(), dg.end());
        // Matrices and tables; gains and gates have gradients that nearly cancel (see
        // tests/test_model_cuda.cu), checked with everything together below.
        if (p.kind == ParamKind::Vector) continue;
        CAPTURE(p.name);
        const double e = rel_l2(dg, dc);
        CHECK(e < kUpdateTol);
        if (!(e <= worst)) worst = e, worst_name = p.name;
    }
    const double e_all = rel_l2(all_gpu, all_cpu);
    MESSAGE("weight change over 3 steps vs CPU: worst matrix " << worst << " (" << worst_name << "), all " << e_all);
    CHECK(e_all < kUpdateTol);
}

TEST_CASE("ttt cuda: per-chunk scores follow RefTttModel; poisoning later tokens leaves earlier chunks alone") {
    PG_REQUIRE_GPU();
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    const int vocab = 96;
    const ModelConfig c = small_model(vocab);
    const std::vector<float> w = noisy_init(c, g);
    const ByteTables bt = toy_tables(vocab);
    TttOptions o;
    o.eval.seq_len = c.seq_len;
    o.eval.stride = 24;  // windows cross chunk ends
    o.eval.batch_seqs = 5;
    o.chunk_tokens = 256;
    o.batch_seqs = 2;
    o.lr = 0.02f;
    const std::vector<uint16_t> tokens = repeated_stream(4 * 256 + 1, 256, vocab, g);  // 4 chunks, one text

    auto run = [&](bool cuda, const std::vector<uint16_t>& t, int epochs) {
        TttOptions oo = o;
        oo.epochs = epochs;
        RefModel<float> ref(c);
        ref.params = w;
        RefTttModel cpu(ref, true);
        CudaTttModel gpu(c, w, 4 * c.seq_len, true);
        return evaluate_ttt(cuda ? static_cast<TttModel&>(gpu) : cpu, t, bt, oo);
    };
    const TttResult cpu = run(false, tokens, 3), gpu = run(true, tokens, 3);
    const TttResult cpu0 = run(false, tokens, 0), gpu0 = run(true, tokens, 0);
    REQUIRE(gpu.chunks.size() == 4);
    CHECK(gpu.chunks[0].score.loss_nats == gpu0.chunks[0].score.loss_nats);  // the loaded weights, bit for bit
    for (size_t k = 0; k < 4; ++k) {
        CAPTURE(k);
        const double ec = rel_diff(gpu.chunks[k].score.loss(), cpu.chunks[k].score.loss());
        const double gain_cpu = cpu0.chunks[k].score.loss() - cpu.chunks[k].score.loss();
        const double gain_gpu = gpu0.chunks[k].score.loss() - gpu.chunks[k].score.loss();
        MESSAGE("chunk " << k << ": loss CPU " << cpu.chunks[k].score.loss() << " GPU " << gpu.chunks[k].score.loss()
                         << " (relative " << ec << "); TTT gain CPU " << gain_cpu << " GPU " << gain_gpu);
        CHECK(ec < kChunkTol);
        if (k > 0) {
            CHECK(gain_cpu > 0.01);  // the TTT adapted: a comparison that means something
            CHECK(std::abs(gain_gpu - gain_cpu) < 0.1 * gain_cpu + kChunkTol * cpu.chunks[k].score.loss());
        }
    }

    // Legality. The GPU training is not bit-reproducible (the attention backward adds dq with
    // atomics), so two runs differ slightly (kRunNoise); poisoned tokens must not move the
    // scores of the chunks before them by more than that noise, and must move their own chunk
    // a lot (kPoisonMove, 100x the noise bound).
    const TttResult again = run(true, tokens, 3);
    double noise = 0;
    for (size_t k = 0; k < 4; ++k)
        noise = std::max(noise, rel_diff(again.chunks[k].score.loss_nats, gpu.chunks[k].score.loss_nats));
    MESSAGE("run-to-run relative difference of chunk scores on the GPU: " << noise);
    CHECK(noise < kRunNoise);
    for (size_t k = 0; k + 1 < gpu.chunks.size(); ++k) {
        CAPTURE(k);
        const long end = gpu.chunks[k].first_target + gpu.chunks[k].targets;
        std::vector<uint16_t> poisoned = tokens;
        std::fill(poisoned.begin() + end + 1, poisoned.end(), uint16_t(0));
        const TttResult p = run(true, poisoned, 3);
        CHECK(p.chunks[0].score.loss_nats == gpu.chunks[0].score.loss_nats);
        for (size_t j = 1; j <= k; ++j) CHECK(rel_diff(p.chunks[j].score.loss_nats, gpu.chunks[j].score.loss_nats) < kRunNoise);
        const double moved = rel_diff(p.chunks[k + 1].score.loss_nats, gpu.chunks[k + 1].score.loss_nats);
        MESSAGE("poisoned after chunk " << k << ": chunk " << k + 1 << " moved " << moved);
        CHECK(moved > kPoisonMove);
    }
}

TEST_CASE("calibrate cuda: Hessians of every quantized matrix equal collect_hessians") {
    PG_REQUIRE_GPU();
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    const ModelConfig c = small_model(1024);  // the sample tokenizer's vocab
    const std::vector<float> w = noisy_init(c, g);
    RefModel<float> ref(c);
    ref.params = w;
    TokenStream s1("data/sample", "fineweb_train_*.bin", c.vocab_size), s2 = s1;
    const auto cpu = collect_hessians(ref, s1, 7, 3, true);  // batches of 3, 3, 1
    const auto gpu = collect_hessians_cuda(c, w, s2, 7, 3, true);
    REQUIRE(cpu.size() == gpu.size());
    double worst = 0;
    std::string worst_name;
    for (const auto& kv : cpu) {
        const std::string& name = kv.first;
        const std::vector<double>& h = kv.second;
        CAPTURE(name);
        REQUIRE(gpu.count(name));
        REQUIRE(gpu.at(name).size() == h.size());
        const double e = rel_l2(gpu.at(name), h);
        CHECK(e < kHessianTol);
        if (!(e <= worst)) worst = e, worst_name = name;
    }
    MESSAGE(cpu.size() << " Hessians; worst relative error " << worst << " (" << worst_name << ")");
}

namespace {

// d/ck.bin: small_model on the sample tokenizer's vocab, noisy_init weights; returns its path.
std::string small_checkpoint(const TmpDir& d) {
    std::mt19937 g(fresh_seed());
    Config cfg;
    cfg.model = small_model(1024);
    cfg.train.data_dir = "data/sample";
    write_checkpoint(d / "ck.bin", cfg, noisy_init(cfg.model, g));
    return d / "ck.bin";
}

}  // namespace

TEST_CASE("eval cuda: pack calibrates on the GPU; eval and eval --ttt agree across --device cpu and cuda") {
    PG_REQUIRE_GPU();
    TmpDir d;
    const std::string ck = small_checkpoint(d);
    std::string out;
    REQUIRE(test::run_pgolf("pack " + ck + " --weights raw -o " + (d / "a.art") + " --calib-seqs 4", out) == 0);
    INFO(out);
    CHECK(out.find("on 1 x ") != std::string::npos);  // calibrated on the GPU
    const std::string base = "eval --artifact " + (d / "a.art") + " --stride 16 --max-tokens 3000 ";
    for (const std::string mode : {"", "--ttt --ttt-chunk 1024 --ttt-batch-seqs 4"}) {
        CAPTURE(mode);
        REQUIRE(test::run_pgolf(base + mode + " --device cpu", out) == 0);
        const double cpu = test::result_value(out, "val_bpb");
        REQUIRE(test::run_pgolf(base + mode + " --device cuda", out) == 0);
        CHECK(out.find("device CPU") == std::string::npos);
        const double gpu = test::result_value(out, "val_bpb");
        MESSAGE("pgolf eval " << mode << ": val_bpb CPU " << cpu << ", GPU " << gpu);
        CHECK(rel_diff(gpu, cpu) < kChunkTol);
    }
}

TEST_CASE("eval cuda: --gpus 2 gives --gpus 1's numbers, plain and with TTT, printed once") {
    PG_REQUIRE_GPU();
    int gpus = 0;
    PG_CHECK(cudaGetDeviceCount(&gpus));
    if (gpus < 2) {
        MESSAGE("skipped: needs 2 CUDA GPUs, " << gpus << " visible");
        return;
    }
    TmpDir d;
    const std::string ck = small_checkpoint(d);
    // 3000 targets: 3 TTT chunks, 2 trained on; 16 sequences a chunk in steps of 5, 5, 5 and 1,
    // so the last step leaves rank 0 without rows.
    const std::string base = "eval --checkpoint " + ck + " --weights raw --device cuda --stride 16 --max-tokens 3000 --batch-seqs 8 ";
    const std::string ttt = "--ttt --ttt-chunk 1024 --ttt-batch-seqs 5 --ttt-lr 0.02";
    std::string out;
    double bpb[2][2];  // [plain, ttt][1 GPU, 2 GPUs]
    for (int t = 0; t < 2; ++t)
        for (int w = 0; w < 2; ++w) {
            const std::string args = base + (t ? ttt : "") + " --gpus " + std::to_string(w + 1);
            CAPTURE(args);
            REQUIRE(test::run_pgolf(args, out) == 0);
            INFO(out);
            CHECK((out.find(", 2 ranks") != std::string::npos) == (w == 1));
            size_t results = 0;
            for (size_t at = out.find("RESULT "); at != std::string::npos; at = out.find("RESULT ", at + 1)) ++results;
            CHECK(results == 1);  // rank 0 alone prints
            CHECK(test::result_value(out, "tokens") == 3000);  // every target once, none twice
            bpb[t][w] = test::result_value(out, "val_bpb");
        }
    MESSAGE("val_bpb plain: 1 GPU " << bpb[0][0] << ", 2 GPUs " << bpb[0][1] << "; TTT: 1 GPU " << bpb[1][0]
                                    << ", 2 GPUs " << bpb[1][1]);
    // Plain: the same windows, in other batches (another GEMM shape, another bf16 rounding here
    // and there). TTT: besides, a gradient summed over 2 ranks, and steps that compound it.
    constexpr double kPlainTol = 2e-4, kTttTol = 1e-3;
    CHECK(rel_diff(bpb[0][1], bpb[0][0]) < kPlainTol);
    CHECK(rel_diff(bpb[1][1], bpb[1][0]) < kTttTol);
    // TTT moves the score by far more than the tolerance: a wrong gradient sum (an average, a
    // missing rank) would show.
    CHECK(rel_diff(bpb[1][0], bpb[0][0]) > 10 * kTttTol);

    CHECK(test::run_pgolf(base + "--gpus 1000", out) != 0);
    CHECK(out.find("pgolf: error: --gpus 1000: only") == 0);
}

TEST_CASE("calibrate cuda: record-shape timing, GPU vs CPU" * doctest::skip()) {
    PG_REQUIRE_GPU();
    Config cfg;
    apply_preset(cfg, "record");
    const ModelConfig& m = cfg.model;
    RefModel<float> ref(m);
    ref.init(1);
    // Synthetic training shards: timing does not depend on the text.
    TmpDir d;
    {
        std::mt19937 g(1);
        std::vector<uint16_t> t(size_t(40) * m.seq_len);
        for (auto& x : t) x = uint16_t(g() % m.vocab_size);
        std::vector<int32_t> header(256, 0);
        header[0] = 20240520, header[1] = 1, header[2] = int32_t(t.size());
        FILE* f = std::fopen((d / "fineweb_train_000000.bin").c_str(), "wb");
        REQUIRE(f != nullptr);
        std::fwrite(header.data(), 4, header.size(), f);
        std::fwrite(t.data(), 2, t.size(), f);
        std::fclose(f);
    }
    const int gpu_seqs = 32, cpu_seqs = 2;
    TokenStream s1(d.path, "fineweb_train_*.bin", m.vocab_size), s2 = s1;
    collect_hessians_cuda(m, ref.params, s1, 1, 1, true);  // warm-up: cuBLASLt plans
    auto t0 = std::chrono::steady_clock::now();
    const auto hg = collect_hessians_cuda(m, ref.params, s1, gpu_seqs, 8, true);
    const double gpu_s = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const auto hc = collect_hessians(ref, s2, cpu_seqs, 1, true);
    const double cpu_s = seconds_since(t0);
    CHECK(hg.size() == hc.size());
    MESSAGE("GPTQ Hessians, record shape (" << hg.size() << " matrices), " << gpu_seqs << " seqs of " << m.seq_len
                                            << ": GPU " << gpu_s << " s (incl. model setup); CPU " << cpu_s << " s for "
                                            << cpu_seqs << " seqs -> " << cpu_s * gpu_seqs / cpu_seqs << " s for "
                                            << gpu_seqs);
}
