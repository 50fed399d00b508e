// The training driver end to end on the embedded sample, with a very small model.
#include <doctest/doctest.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/check.h"
#include "common/checkpoint.h"
#include "common/cli.h"
#include "common/io.h"
#include "tests/test_train_common.h"
#include "tests/tmp_dir.h"
#include "train/trainer.h"

using namespace pg;

// The CPU reference on every machine: these tests are about the driver, and the CPU repeats
// itself bit for bit with one thread.
static Config small_run(const std::string& out) { return test::small_run(out, "cpu"); }

TEST_CASE("train: a resumed run repeats the uninterrupted run exactly") {
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    TmpDir d;
    Config straight = small_run(d / "straight");
    run_training(straight);

    Config first = small_run(d / "split");
    first.train.stop_after = 3;
    run_training(first);
    Config second = small_run(d / "split");
    second.train.resume = true;
    run_training(second);
    omp_set_num_threads(threads);

    const auto a = test::step_lines(d / "straight/train.log"), b = test::step_lines(d / "split/train.log");
    REQUIRE(a.size() == 8);
    CHECK(a == b);
    const auto pa = Checkpoint::load(d / "straight/checkpoint.bin").get_vec<float>("params");
    const auto pb = Checkpoint::load(d / "split/checkpoint.bin").get_vec<float>("params");
    REQUIRE(pa.size() == pb.size());
    CHECK(std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)) == 0);
}

TEST_CASE("train: a diverging run stops with one error and keeps its checkpoint") {
    TmpDir d;
    test::check_divergence_keeps_checkpoint(d / "run", "cpu");
}

TEST_CASE("train: resuming with another model config is refused") {
    TmpDir d;
    Config c = small_run(d / "run");
    c.train.stop_after = 1;
    run_training(c);
    c.train.resume = true;
    c.model.model_dim = 32;
    CHECK_THROWS_WITH_AS(run_training(c), doctest::Contains("different model config"), Error);
}

TEST_CASE("train: the micro-batch picked divides the step, fits the memory and the token cap") {
    const size_t GiB = size_t(1) << 30;
    // The record step (384 x 2048) on an H100: memory for 93 sequences, the token cap allows 24.
    CHECK(pick_micro_batch(384, 2048, 790'000'000, 74 * GiB, kMaxMicroTokens) == 24);
    // Memory binds: 20 sequences fit, the largest divisor of 384 below that is 16.
    CHECK(pick_micro_batch(384, 2048, GiB, 20 * GiB + 1, kMaxMicroTokens) == 16);
    // Short sequences: the cap allows 1536, so the whole step of 32 goes in one.
    CHECK(pick_micro_batch(32, 32, 1000, 1 << 30, kMaxMicroTokens) == 32);
    // A prime count of sequences that does not fit whole: one at a time.
    CHECK(pick_micro_batch(13, 2048, GiB, 12 * GiB, kMaxMicroTokens) == 1);
    // Sequences longer than the cap still run, one at a time.
    CHECK(pick_micro_batch(4, 65536, 1000, GiB, kMaxMicroTokens) == 1);
    CHECK_THROWS_WITH_AS(pick_micro_batch(4, 2048, 2 * GiB, GiB, kMaxMicroTokens), doctest::Contains("GiB"), Error);
}
