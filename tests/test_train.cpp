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
#include "tests/tmp_dir.h"

using namespace pg;

static Config small_run(const std::string& out) {
    Config c;
    apply_preset(c, "tiny");
    c.model.n_layers = 3;
    c.model.model_dim = 64;
    c.model.recur_start = 1;
    c.model.recur_end = 1;
    c.model.parallel_from = 2;
    c.model.seq_len = 32;
    c.train.batch_tokens = 256;
    c.train.micro_batch_seqs = 4;  // two micro-batches a step
    c.train.iterations = 8;
    c.train.max_wallclock_s = 0;   // a wall-clock schedule would not repeat exactly
    c.train.warmup_steps = 2;
    c.train.log_every = 1;
    c.train.val_every = 0;
    c.train.val_tokens = 512;
    c.train.swa_from = 0.5f;
    c.train.swa_every = 2;
    c.train.out_dir = out;
    return c;
}

// "step k loss X gnorm Y lr Z" of every step line: the part that must repeat exactly.
static std::vector<std::string> step_lines(const std::string& log) {
    std::ifstream f(log);
    std::vector<std::string> out;
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("step ", 0) == 0) out.push_back(line.substr(0, line.find(" tok/s")));
    return out;
}

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

    const auto a = step_lines(d / "straight/train.log"), b = step_lines(d / "split/train.log");
    REQUIRE(a.size() == 8);
    CHECK(a == b);
    const auto pa = Checkpoint::load(d / "straight/checkpoint.bin").get_vec<float>("params");
    const auto pb = Checkpoint::load(d / "split/checkpoint.bin").get_vec<float>("params");
    REQUIRE(pa.size() == pb.size());
    CHECK(std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)) == 0);
}

TEST_CASE("train: a diverging run stops with one error and keeps its checkpoint") {
    TmpDir d;
    Config c = small_run(d / "run");
    c.train.stop_after = 2;
    run_training(c);
    const auto before = read_file(d / "run/checkpoint.bin");
    c.train.stop_after = 0;
    c.train.resume = true;
    c.train.matrix_lr = 1e30f;
    c.train.embed_lr = 1e30f;
    c.train.scalar_lr = 1e30f;
    c.train.grad_clip = 0;
    CHECK_THROWS_WITH_AS(run_training(c), doctest::Contains("training loss is"), Error);
    CHECK(read_file(d / "run/checkpoint.bin") == before);
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
