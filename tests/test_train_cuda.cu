// `pgolf train` on the GPU (train/cuda_trainer.cu): optimizer and average state in the CPU's
// layout, exact round trips between devices; validation and QAT wiring against the CPU
// trainer; stop + resume against a straight run; checkpoints moving between the devices; the
// NaN stop; an unsupported head size. All skip without a GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/checkpoint.h"
#include "common/cli.h"
#include "common/io.h"
#include "model/optim.h"
#include "model/optim_cuda.cuh"
#include "model/params.h"
#include "tests/gpu.h"
#include "tests/ref_check.h"
#include "tests/test_train_common.h"
#include "tests/tmp_dir.h"
#include "tokenizer/loader.h"
#include "tokenizer/sp.h"
#include "train/trainer.h"

using namespace pg;
using test::gaussian;
using test::rel_l2;
using test::same_bits;

namespace {


// The largest difference between two runs' step lines.
struct LineDiff {
    double loss = 0, gnorm = 0;
};
LineDiff compare_lines(const std::vector<test::StepLine>& a, const std::vector<test::StepLine>& b, size_t from,
                       size_t to) {
    LineDiff d;
    REQUIRE(a.size() >= to);
    REQUIRE(b.size() >= to);
    for (size_t i = from; i < to; ++i) {
        CHECK(a[i].step == b[i].step);
        d.loss = std::max(d.loss, std::abs(a[i].loss - b[i].loss));
        d.gnorm = std::max(d.gnorm, std::abs(a[i].gnorm - b[i].gnorm) / a[i].gnorm);
    }
    return d;
}

std::vector<float> params_of(const std::string& ckpt) { return Checkpoint::load(ckpt).get_vec<float>("params"); }

}  // namespace

TEST_CASE("train cuda: optimizer and average state have the CPU layout and round-trip GPU->CPU->GPU exactly") {
    PG_REQUIRE_GPU();
    const uint64_t seed = test::fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    const ParamLayout L = make_layout(test::odd_model());
    TrainConfig t;
    t.muon_momentum_warmup = 4;
    t.grad_clip = 0.5f;
    t.ema_decay = 0.9f;
    t.swa_from = 0.5f;
    t.swa_every = 1;

    cudaStream_t stream;
    PG_CHECK(cudaStreamCreate(&stream));
    CudaOptimizer gpu(L, t, stream);
    CudaWeightAverage gpu_avg(L.total, t, stream);
    Optimizer cpu(L, t);
    WeightAverage cpu_avg(L.total, t);
    DeviceArray<float> p(L.total), g(L.total);
    DeviceArray<bf16> pb(L.total);

    // Three steps on both devices from the same weights and gradients: the states must agree
    // element by element (fp32 on both sides: rounding only), which a layout that orders
    // banks or Adam parameters differently cannot.
    std::vector<float> w = gaussian(rng, L.total, 0.1f);
    for (int s = 0; s < 3; ++s) {
        const std::vector<float> grad = gaussian(rng, L.total);
        p.upload(w);
        g.upload(grad);
        gpu.step(p.get(), pb.get(), g.get(), 1.f, s);
        cpu.step(w.data(), grad.data(), 1.f, s);
        p.upload(w);
        gpu_avg.update(p.get(), s, true);
        cpu_avg.update(w.data(), s, true);
    }
    const OptimizerState gs = gpu.state();
    const AverageState ga = gpu_avg.state();
    CHECK(gs.adam_t == cpu.state().adam_t);
    CHECK(rel_l2(gs.muon_m, cpu.state().muon_m) < 1e-5);
    CHECK(rel_l2(gs.adam_m, cpu.state().adam_m) < 1e-5);
    CHECK(rel_l2(gs.adam_v, cpu.state().adam_v) < 1e-5);
    CHECK(ga.ema_steps == cpu_avg.state().ema_steps);
    CHECK(ga.swa_count == cpu_avg.state().swa_count);
    CHECK(rel_l2(ga.ema, cpu_avg.state().ema) < 1e-6);
    CHECK(rel_l2(ga.swa, cpu_avg.state().swa) < 1e-6);

    // GPU -> bytes -> CPU optimizer -> bytes -> a fresh GPU optimizer: the same bytes.
    Optimizer cpu2(L, t);
    load_state(cpu2.state(), save_state(gs), "gpu state");
    CudaOptimizer gpu2(L, t, stream);
    OptimizerState s2 = gpu2.state();
    load_state(s2, save_state(cpu2.state()), "cpu state");
    gpu2.set_state(s2);
    CHECK(save_state(gpu2.state()) == save_state(gs));
    WeightAverage cpu_avg2(L.total, t);
    load_state(cpu_avg2.state(), save_state(ga), "gpu average");
    CudaWeightAverage gpu_avg2(L.total, t, stream);
    gpu_avg2.set_state(cpu_avg2.state());
    CHECK(save_state(gpu_avg2.state()) == save_state(ga));

    // The restored optimizer continues exactly as the original (same kernels, same state).
    const std::vector<float> grad = gaussian(rng, L.total);
    DeviceArray<float> p2(w), g2(grad);
    DeviceArray<bf16> pb2(L.total);
    p.upload(w);
    g.upload(grad);
    gpu.step(p.get(), pb.get(), g.get(), 0.7f, 3);
    gpu2.step(p2.get(), pb2.get(), g2.get(), 0.7f, 3);
    PG_CHECK(cudaStreamSynchronize(stream));
    CHECK(same_bits(p.download(), p2.download()));

    OptimizerState bad = gs;
    bad.adam_v.pop_back();
    CHECK_THROWS_WITH_AS(gpu2.set_state(bad), doctest::Contains("Adam second moment"), Error);
    PG_CHECK(cudaStreamDestroy(stream));
}

TEST_CASE("train cuda: the GPU trainer validates and fake-quantizes like the CPU trainer") {
    PG_REQUIRE_GPU();
    TmpDir d;
    Config cfg = test::small_run(d / "unused", "cuda");
    const int seqs = int(cfg.train.batch_tokens / cfg.model.seq_len);
    cfg.train.micro_batch_seqs = 0;  // the GPU picks: the whole step fits
    const std::unique_ptr<Trainer> gpu = make_cuda_trainer(cfg, seqs);
    CHECK(gpu->micro_batch() == seqs);
    CHECK(gpu->describe().find("picked") != std::string::npos);
    cfg.train.micro_batch_seqs = 4;
    const std::unique_ptr<Trainer> cpu = make_cpu_trainer(cfg, seqs);

    const uint64_t seed = test::fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    std::vector<float> w = gaussian(rng, gpu->layout().total, 0.05f);  // larger than the init: logits matter
    gpu->set_master(w);
    cpu->set_master(w);
    CHECK(same_bits(gpu->master(), w));

    // One batch, both devices, with and without QAT. The GPU's matrices are bf16 on top of the
    // fake quantization; measured loss differences are of order 1e-5 relative.
    auto losses = [&](Trainer& tr, bool qat) {
        TokenStream a("data/sample", cfg.train.train_pattern, cfg.model.vocab_size);
        const NextBatch next = [&] { return next_batch(a, cfg.train.batch_tokens, cfg.model.seq_len, 2, 0, 1); };
        return tr.forward_backward(next, 2, true, qat);
    };
    const double g_plain = losses(*gpu, false), g_qat = losses(*gpu, true);
    const double c_plain = losses(*cpu, false), c_qat = losses(*cpu, true);
    MESSAGE("loss plain gpu " << g_plain << " cpu " << c_plain << "; qat gpu " << g_qat << " cpu " << c_qat);
    CHECK(std::abs(g_plain - c_plain) / c_plain < 2e-3);
    CHECK(std::abs(g_qat - c_qat) / c_qat < 2e-3);
    CHECK(g_qat != g_plain);  // the forward did read the fake-quantized matrices
    CHECK(c_qat != c_plain);

    const std::vector<uint16_t> val = load_tokens("data/sample", cfg.train.val_pattern, cfg.model.vocab_size);
    const Tokenizer tok("data/sample/tokenizer.model");
    const ByteTables bytes = build_byte_tables(tok, cfg.model.vocab_size);
    EvalOptions eo;
    eo.seq_len = eo.stride = cfg.model.seq_len;
    eo.batch_seqs = 4;
    eo.max_tokens = 4096;
    const BpbAccumulator gv = gpu->validate(Weights::Master, true, val, bytes, eo);
    const BpbAccumulator cv = cpu->validate(Weights::Master, true, val, bytes, eo);
    CHECK(gv.tokens == cv.tokens);
    CHECK(std::abs(gv.loss() - cv.loss()) / cv.loss() < 2e-3);
    CHECK(gv.bpb() == doctest::Approx(cv.bpb()).epsilon(2e-3));

    // The first EMA update copies the weights (SWA's first snapshot too): validating either
    // gives the master's numbers, and the master is in place afterwards.
    gpu->update_average(0, true);
    const BpbAccumulator ge = gpu->validate(Weights::Ema, true, val, bytes, eo);
    const BpbAccumulator gs = gpu->validate(Weights::Swa, true, val, bytes, eo);
    const BpbAccumulator again = gpu->validate(Weights::Master, true, val, bytes, eo);
    CHECK(ge.loss() == gv.loss());
    CHECK(gs.loss() == gv.loss());
    CHECK(again.loss() == gv.loss());
    CHECK(same_bits(gpu->master(), w));
}

TEST_CASE("train cuda: a stopped and resumed GPU run follows the straight GPU run") {
    PG_REQUIRE_GPU();
    TmpDir d;
    // GPU steps do not repeat bit for bit: fp32 atomics add the embedding gradients and the
    // attention's dQ in varying order, and Newton-Schulz lifts the resulting 1e-6 differences in
    // weak gradient directions to full-size updates (two straight runs measured 2e-3 apart in
    // gnorm at step 3, 3e-2 at step 8). So the resumed run is judged against the spread of two
    // straight runs: at most 10x that, plus a floor. The floor is the gap between the two states
    // that any run, straight or resumed, lands in at step 4 (the first with recurrence): loss
    // 6.9022 and gnorm 1.138, or 6.9019 and 1.100-1.104, with commit 590d3e2's code and later
    // (docs/benchmarks/logs/2026-11-24_session12/resume_test_ab); two straight runs in one state
    // and the resumed run in the other differed by at most 1.2e-3 in loss, 3.5e-2 in gnorm and
    // 4.4e-3 in the parameters, and the floors are 2.5x that. The exact checks of resume are the
    // CPU driver test (tests/test_train.cpp, bit for bit) and the GPU state round trip above;
    // this one shows the GPU path resumes within its own run-to-run noise. Learning rates at a
    // tenth keep that noise small.
    const auto run = [&](const std::string& out) {
        Config c = test::small_run(d / out, "cuda");
        c.train.matrix_lr *= 0.1f;
        c.train.embed_lr *= 0.1f;
        c.train.scalar_lr *= 0.1f;
        return c;
    };
    run_training(run("straight"));
    run_training(run("again"));
    Config first = run("split");
    first.train.stop_after = 3;
    run_training(first);
    Config second = run("split");
    second.train.resume = true;
    run_training(second);

    const auto a = test::parse_steps(d / "straight/train.log"), b = test::parse_steps(d / "split/train.log"),
               c = test::parse_steps(d / "again/train.log");
    REQUIRE(a.size() == 8);
    REQUIRE(b.size() == 8);
    REQUIRE(c.size() == 8);
    const LineDiff diff = compare_lines(a, b, 0, 8), spread = compare_lines(a, c, 0, 8);
    const std::vector<float> pa = params_of(d / "straight/checkpoint.bin"), pb = params_of(d / "split/checkpoint.bin"),
                             pc = params_of(d / "again/checkpoint.bin");
    const double perr = rel_l2(pb, pa), pspread = rel_l2(pc, pa);
    MESSAGE("gpu resume vs straight: max |loss diff| " << diff.loss << ", max gnorm rel diff " << diff.gnorm
                                                       << ", params rel L2 " << perr
                                                       << (same_bits(pa, pb) ? " (bit for bit)" : " (not bitwise)")
                                                       << "; two straight runs: " << spread.loss << ", "
                                                       << spread.gnorm << ", " << pspread);
    CHECK(diff.loss <= 10 * spread.loss + 3e-3);
    CHECK(diff.gnorm <= 10 * spread.gnorm + 0.09);
    CHECK(perr <= 10 * pspread + 0.011);
}

TEST_CASE("train cuda: a checkpoint written on one device resumes on the other") {
    PG_REQUIRE_GPU();
    TmpDir d;
    run_training(test::small_run(d / "gpu", "cuda"));
    run_training(test::small_run(d / "cpu", "cpu"));
    for (const std::string from : {"cuda", "cpu"}) {
        const std::string to = from == "cuda" ? "cpu" : "cuda";
        CAPTURE(from);
        const std::string dir = d / (from + "_to_" + to);
        Config first = test::small_run(dir, from);
        first.train.stop_after = 3;
        run_training(first);
        Config second = test::small_run(dir, to);
        second.train.resume = true;
        run_training(second);
        const std::vector<uint8_t> log = read_file(dir + "/train.log");
        CHECK(std::string(log.begin(), log.end()).find("resumed from") != std::string::npos);

        // Steps 1-3 are the first device's own run; steps 4-8 ran on the other device from its
        // checkpoint, so they follow the straight run up to the devices' difference (bf16
        // matrices and Newton-Schulz on the GPU), far below the loss's step-to-step moves.
        const auto straight = test::parse_steps(d / (from == "cuda" ? "gpu" : "cpu") + "/train.log");
        const auto split = test::parse_steps(dir + "/train.log");
        REQUIRE(split.size() == 8);
        const LineDiff own = compare_lines(straight, split, 0, 3), other = compare_lines(straight, split, 3, 8);
        CHECK(own.loss < 1e-3);
        CHECK(other.loss < 0.1);
        CHECK(other.gnorm < 0.2);
        MESSAGE(from << " -> " << to << ": steps 1-3 max |loss diff| " << own.loss << "; steps 4-8 max |loss diff| "
                     << other.loss << ", gnorm rel " << other.gnorm);
        const std::vector<float> p = params_of(dir + "/checkpoint.bin");
        bool finite = true;
        for (float x : p) finite &= std::isfinite(x);
        CHECK(finite);
    }
}

TEST_CASE("train cuda: a diverging GPU run stops with one error and keeps its checkpoint") {
    PG_REQUIRE_GPU();
    TmpDir d;
    test::check_divergence_keeps_checkpoint(d / "run", "cuda");
}

TEST_CASE("train cuda: a head size the GPU attention lacks fails with one line") {
    PG_REQUIRE_GPU();
    TmpDir d;
    Config c = test::small_run(d / "run", "cuda");
    c.model.head_dim = 48;
    CHECK_THROWS_WITH_AS(run_training(c), doctest::Contains("head dims 32, 64 and 128, the model has 48"), Error);
}
