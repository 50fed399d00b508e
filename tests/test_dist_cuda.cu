// The multi-GPU layer on GPUs. One GPU: Parallel Muon over a one-rank communicator against
// CudaOptimizer::step (bit for bit), the host helpers, and a stalled stream ending in the
// communicator's timeout instead of a hang. Two GPUs and more: the test binary re-executes itself
// through the launcher as two ranks ("rank worker" below, skipped unless launched) that check the
// collectives and a Parallel Muon step on different gradients against CudaOptimizer::step on
// their average; and a rank that dies must end its peer's wait with an error.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/config.h"
#include "common/io.h"
#include "dist/comm.h"
#include "dist/launch.h"
#include "dist/parallel_muon.h"
#include "dist/rank.h"
#include "model/optim.h"
#include "model/optim_cuda.cuh"
#include "model/params.h"
#include "tests/gpu.h"
#include "tests/ref_check.h"
#include "tests/tmp_dir.h"

using namespace pg;
using test::gaussian;

// test::odd_model's banks do not divide by 2 ranks: 6 of 24x24 (q and o), 6 of 8x24 (k and v),
// 3 of 72x24 and 24x72 (padded to 4), 1 of 24x5 (padded to 2, nothing on rank 1); then AdamW.

namespace {

TrainConfig clipped_config() {
    TrainConfig t;
    t.grad_clip = 0.5f;  // unit gaussian gradients are far above it: clipping is active
    t.muon_row_norm = true;
    t.muon_momentum_warmup = 3;
    t.muon_wd = 0.1f;
    t.adam_wd = 0.05f;
    return t;
}

// The gradient of `rank` at `step`, the same on every process that asks.
std::vector<float> rank_grads(uint64_t seed, int step, int rank, size_t n) {
    std::mt19937_64 rng(seed ^ (uint64_t(step) * 1000003u + uint64_t(rank) * 7919u + 1));
    return gaussian(rng, n);
}

bool bits_equal(const void* a, const void* b, size_t bytes) { return std::memcmp(a, b, bytes) == 0; }

ncclUniqueId new_id() {
    ncclUniqueId id;
    PG_CHECK(ncclGetUniqueId(&id));
    return id;
}

__global__ void spin_kernel(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

int gpu_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) (void)cudaGetLastError();
    return n;
}

}  // namespace

TEST_CASE("dist cuda: one-rank Parallel Muon steps equal CudaOptimizer::step bit for bit") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    const ParamLayout L = make_layout(test::odd_model());
    const TrainConfig t = clipped_config();
    cudaStream_t stream;
    PG_CHECK(cudaStreamCreate(&stream));
    Comm comm(new_id(), 0, 1, 0, 60);
    CudaOptimizer whole(L, t, stream);
    ParallelMuon pm(L, t, stream, comm);
    REQUIRE(pm.slices().size() == L.banks.size());  // one rank: every bank whole

    std::mt19937_64 rng(seed);
    const std::vector<float> p0 = gaussian(rng, L.total, 0.1f);
    DeviceArray<float> pa(p0), pb(p0), g(L.total);
    DeviceArray<bf16> ba(L.total), bb(L.total);
    PG_CHECK(cudaMemset(ba.get(), 0, L.total * sizeof(bf16)));
    PG_CHECK(cudaMemset(bb.get(), 0xFF, L.total * sizeof(bf16)));  // every element must be rewritten
    const float lr_scales[] = {0.5f, 1.f, 0.8f};
    for (int s = 0; s < 3; ++s) {
        CAPTURE(s);
        g.upload(rank_grads(seed, s, 0, L.total));
        const std::vector<float> g_before = g.download();
        whole.step(pa.get(), ba.get(), g.get(), lr_scales[s], s);
        pm.step(pb.get(), bb.get(), g.get(), lr_scales[s], s);
        const float na = whole.grad_norm(), nb = pm.grad_norm();
        CHECK(bits_equal(&na, &nb, sizeof na));
        const std::vector<float> wa = pa.download(), wb = pb.download();
        const std::vector<bf16> ca = ba.download(), cb = bb.download();
        CHECK(bits_equal(wa.data(), wb.data(), L.total * sizeof(float)));
        CHECK(bits_equal(ca.data(), cb.data(), L.total * sizeof(bf16)));
        CHECK(g.download() == g_before);  // the gradient is read, never written
        CHECK(wa != p0);
    }
    CHECK(pm.local().adam_steps() == whole.adam_steps());
    PG_CHECK(cudaStreamDestroy(stream));
}

TEST_CASE("dist cuda: host helpers and the momentum gather on one rank") {
    PG_REQUIRE_GPU();
    std::mt19937_64 rng(fresh_seed());
    const ParamLayout L = make_layout(test::odd_model());
    cudaStream_t stream;
    PG_CHECK(cudaStreamCreate(&stream));
    Comm comm(new_id(), 0, 1, 0, 60);
    ParallelMuon pm(L, clipped_config(), stream, comm);

    BpbAccumulator acc;
    acc.add(123.25, 4567, 89);
    const BpbAccumulator sum = all_reduce_bpb(&comm, acc, stream);
    CHECK(sum.loss_nats == 123.25);
    CHECK(sum.bytes == 4567);
    CHECK(sum.tokens == 89);
    CHECK(mean_over_ranks(&comm, 2.5, stream) == 2.5);
    CHECK(leader_value(&comm, -3.75, stream) == -3.75);
    int wrote = 0;
    leader_writes(&comm, stream, [&] { ++wrote; });
    CHECK(wrote == 1);

    size_t muon_n = 0;
    for (const Bank& b : L.banks) muon_n += size_t(b.count) * b.rows * b.cols;
    const std::vector<float> m0 = gaussian(rng, muon_n);
    std::vector<float> m = m0;
    pm.gather_momentum(m);
    CHECK(m == m0);
    std::vector<float> wrong(muon_n + 1);
    CHECK_THROWS_AS(pm.gather_momentum(wrong), Error);
    PG_CHECK(cudaStreamDestroy(stream));
}

TEST_CASE("dist cuda: a stream that makes no progress ends in one NCCL timeout error, not a hang") {
    PG_REQUIRE_GPU();
    cudaStream_t stream;
    PG_CHECK(cudaStreamCreate(&stream));
    {
        Comm comm(new_id(), 0, 1, 0, 0.5);
        int khz = 0;
        PG_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
        spin_kernel<<<1, 1, 0, stream>>>(3LL * khz * 1000);  // about 3 s, longer at lower clocks
        PG_CHECK_LAUNCH();
        const auto t0 = std::chrono::steady_clock::now();
        CHECK_THROWS_WITH_AS(comm.wait(stream, "test step"),
                             doctest::Contains("rank 0/1: test step: no progress for 0.5 s (a rank died or stalls); NCCL "
                                               "communicator aborted"),
                             Error);
        // The throw itself shows the timeout fired while the stream was busy (a plain wait would
        // have returned once the kernel ended). It comes after the kernel, though: the abort frees
        // device memory, which waits for the device, and only NCCL's own stuck kernels end at an abort.
        const double waited = seconds_since(t0);
        CHECK(waited >= 0.5);
        CHECK(waited < 30);
        CHECK_THROWS_WITH_AS(comm.barrier(stream), doctest::Contains("aborted"), Error);
    }  // the aborted communicator is not destroyed a second time
    PG_CHECK(cudaStreamSynchronize(stream));
    PG_CHECK(cudaStreamDestroy(stream));
}

// Launched as a rank by the test below (PGOLF_TEST_MODE: "step" or "die"); skipped otherwise.
TEST_CASE("dist cuda: rank worker" * doctest::skip()) {
    RankInfo me;
    if (!rank_from_env(me)) {
        MESSAGE("skipped: runs only as a rank that the two-rank test starts");
        return;
    }
    const std::string mode = std::getenv("PGOLF_TEST_MODE"), dir = std::getenv("PGOLF_TEST_DIR");
    const uint64_t seed = std::strtoull(std::getenv("PGOLF_TEST_SEED"), nullptr, 10);
    INFO("rank " << me.rank << " of " << me.world << ", seed " << seed);
    cudaStream_t stream;
    PG_CHECK(cudaSetDevice(me.local_rank));
    PG_CHECK(cudaStreamCreate(&stream));

    if (mode == "die") {
        Comm comm(me.id, me.rank, me.world, me.local_rank, 5);
        if (me.rank == 1) _exit(0);  // gone without a word, in the middle of the run
        DeviceArray<float> x(1024);
        const auto t0 = std::chrono::steady_clock::now();
        auto reduce = [&] {
            comm.all_reduce(x.get(), x.get(), x.size(), ncclSum, stream);
            comm.wait(stream, "all_reduce with a dead peer");
        };
        CHECK_THROWS_WITH_AS(reduce(), doctest::Contains("rank 0/2"), Error);
        CHECK(seconds_since(t0) < 30);
        return;  // the stream may hold an aborted collective: the process ends here
    }

    Comm comm(me.id, me.rank, me.world, me.local_rank, 60);
    const int R = me.rank, W = me.world;
    // Collectives on small integers, exact in fp32: rank r holds r + 1 + i / 8.
    {
        const size_t n = 8 * size_t(W);
        std::vector<float> mine(n);
        for (size_t i = 0; i < n; ++i) mine[i] = float(R + 1) + float(i) / 8;
        DeviceArray<float> a(mine), b(n);
        comm.all_reduce(a.get(), b.get(), n, ncclSum, stream);
        comm.all_reduce(a.get(), a.get(), n, ncclAvg, stream);
        DeviceArray<float> rs(mine), ag(n);
        comm.reduce_scatter(rs.get(), rs.get() + R * 8, 8, ncclSum, stream);
        comm.all_gather(rs.get() + R * 8, ag.get(), 8, stream);
        DeviceArray<double> bc(std::vector<double>{double(R) + 0.5});
        comm.broadcast(bc.get(), 1, W - 1, stream);
        comm.wait(stream, "collectives");
        const double ranks_sum = W * (W + 1) / 2.0;
        const std::vector<float> sum = b.download(), avg = a.download(), gathered = ag.download();
        bool ok_sum = true, ok_avg = true, ok_gather = true;
        for (size_t i = 0; i < n; ++i) {
            ok_sum &= sum[i] == float(ranks_sum + W * (i / 8.0));
            ok_avg &= std::fabs(avg[i] - float(ranks_sum / W + i / 8.0)) <= 1e-6f * std::fabs(avg[i]);
            ok_gather &= gathered[i] == sum[i];
        }
        CHECK(ok_sum);
        CHECK(ok_avg);
        CHECK(ok_gather);
        CHECK(bc.download()[0] == W - 0.5);
    }

    // Two Parallel Muon steps on each rank's own gradients against CudaOptimizer::step on the mean.
    const ParamLayout L = make_layout(test::odd_model());
    const TrainConfig t = clipped_config();
    CudaOptimizer whole(L, t, stream);
    ParallelMuon pm(L, t, stream, comm);
    std::mt19937_64 rng(seed);
    const std::vector<float> p0 = gaussian(rng, L.total, 0.1f);
    DeviceArray<float> pa(p0), pb(p0), ga(L.total), gb(L.total);
    DeviceArray<bf16> ba(L.total), bb(L.total);
    double worst_muon = 0, worst_adam = 0;
    for (int s = 0; s < 2; ++s) {
        CAPTURE(s);
        std::vector<float> mean(L.total, 0.f);
        for (int r = 0; r < W; ++r) {
            const std::vector<float> g = rank_grads(seed, s, r, L.total);
            for (size_t i = 0; i < L.total; ++i) mean[i] += g[i];
            if (r == R) gb.upload(g);
        }
        for (float& x : mean) x *= 1.f / float(W);  // NCCL's average multiplies each term by 1/W: for W = 2 the same
        ga.upload(mean);
        whole.step(pa.get(), ba.get(), ga.get(), 1.f, s);
        pm.step(pb.get(), bb.get(), gb.get(), 1.f, s);
        CHECK(pm.grad_norm() == doctest::Approx(whole.grad_norm()).epsilon(1e-6));
        const std::vector<float> wa = pa.download(), wb = pb.download();
        for (const ParamSpec& P : L.params)
            for (size_t e = P.offset; e < P.offset + P.numel(); ++e) {
                const double d = std::fabs(double(wa[e]) - wb[e]);
                (P.kind == ParamKind::Matrix ? worst_muon : worst_adam) = std::max(
                    P.kind == ParamKind::Matrix ? worst_muon : worst_adam, d);
            }
        std::vector<bf16> cb = bb.download();
        bool bf16_copy = true;
        for (size_t e = 0; e < L.total; ++e) bf16_copy &= __bfloat162float(cb[e]) == __bfloat162float(__float2bfloat16(wb[e]));
        CHECK(bf16_copy);
        write_file_atomic(dir + "/params" + std::to_string(R) + "_" + std::to_string(s), wb.data(), L.total * sizeof(float));
    }
    // Muon: bf16 Newton-Schulz on chunks of a bank (another batch count, maybe another cuBLASLt
    // algorithm), and a norm whose double sum runs in another order: near-equal, as in
    // test_optim_cuda's rank-slices test. AdamW: the same fp32 arithmetic on the same averaged
    // gradient; only the clip factor may differ in its last bit.
    CHECK(worst_muon <= 1e-2 * t.matrix_lr);
    CHECK(worst_adam <= 1e-6);
    MESSAGE("rank " << R << ": max |difference| from the one-GPU step: Muon " << worst_muon << ", AdamW " << worst_adam);

    // Momentum gather: each rank's own chunks hold f(i), the rest garbage; after it, f(i) everywhere.
    {
        size_t muon_n = 0;
        for (const Bank& b : L.banks) muon_n += size_t(b.count) * b.rows * b.cols;
        std::vector<float> m(muon_n, -7.f), expect(muon_n);
        for (size_t i = 0; i < muon_n; ++i) expect[i] = 0.5f * float(i % 1000) + 1.f;
        for (const BankSlice& sl : pm.slices()) {
            const Bank& B = L.banks[sl.bank];
            const size_t numel = size_t(B.rows) * B.cols, from = B.offset + sl.first * numel;
            std::copy(expect.begin() + from, expect.begin() + from + sl.count * numel, m.begin() + from);
        }
        pm.gather_momentum(m);
        CHECK(m == expect);
    }

    // Host helpers: rank r contributes (r + 1.5, 10 (r + 1), r + 2).
    BpbAccumulator acc;
    acc.add(R + 1.5, 10 * (R + 1), R + 2);
    const BpbAccumulator sum = all_reduce_bpb(&comm, acc, stream);
    CHECK(sum.loss_nats == doctest::Approx(W * (W - 1) / 2.0 + 1.5 * W));
    CHECK(sum.bytes == 10 * W * (W + 1) / 2);
    CHECK(sum.tokens == W * (W - 1) / 2 + 2 * W);
    CHECK(mean_over_ranks(&comm, double(R), stream) == doctest::Approx((W - 1) / 2.0));
    CHECK(leader_value(&comm, R == 0 ? 3.25 : -1.0, stream) == 3.25);
    int wrote = 0;
    leader_writes(&comm, stream, [&] { ++wrote; });
    CHECK(wrote == (R == 0 ? 1 : 0));
    PG_CHECK(cudaStreamDestroy(stream));
}

TEST_CASE("dist cuda: two ranks, forked: Parallel Muon on different gradients equals one GPU on their mean") {
    PG_REQUIRE_GPU();
    if (gpu_count() < 2) {
        MESSAGE("skipped: needs 2 CUDA GPUs, " << gpu_count() << " visible");
        return;
    }
    TmpDir dir;
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    LaunchPlan plan;
    plan.exe = "/proc/self/exe";
    plan.argv = {"pgolf_tests", "--no-skip", "--test-case=dist cuda: rank worker"};
    plan.local_ranks = plan.world = 2;
    plan.id = new_id();
    setenv("PGOLF_TEST_DIR", dir.path.c_str(), 1);
    setenv("PGOLF_TEST_SEED", std::to_string(seed).c_str(), 1);
    disable_nvls();

    setenv("PGOLF_TEST_MODE", "step", 1);
    CHECK_NOTHROW(run_ranks(plan));  // a failed check in a rank makes it exit 1: the launcher names it
    for (int s = 0; s < 2; ++s) {
        CAPTURE(s);
        const std::string a = dir / ("params0_" + std::to_string(s)), b = dir / ("params1_" + std::to_string(s));
        REQUIRE(file_exists(a));
        REQUIRE(file_exists(b));
        CHECK(read_file(a) == read_file(b));  // every rank holds the same weights, bit for bit
    }

    // A rank that vanishes: its peer's wait ends in an error (the worker checks it), in seconds.
    plan.id = new_id();
    setenv("PGOLF_TEST_MODE", "die", 1);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_NOTHROW(run_ranks(plan));
    CHECK(seconds_since(t0) < 60);
    for (const char* v : {"PGOLF_TEST_DIR", "PGOLF_TEST_SEED", "PGOLF_TEST_MODE"}) unsetenv(v);
}
