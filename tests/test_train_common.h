// The small training run that the driver tests (tests/test_train.cpp, tests/test_train_cuda.cu)
// repeat, and the parsing of its log.
#pragma once
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/io.h"

namespace pg::test {

// 8 steps of 256 tokens (two micro-batches of 4 x 32) on the embedded sample; recurrence
// from step 4, SWA from step 5, QAT on step 8. One head of 64: the size both devices support.
inline Config small_run(const std::string& out, const std::string& device) {
    Config c;
    apply_preset(c, "tiny");
    c.model.n_layers = 3;
    c.model.model_dim = 64;
    c.model.n_heads = 1;
    c.model.n_kv_heads = 1;
    c.model.head_dim = 64;
    c.model.recur_start = 1;
    c.model.recur_end = 1;
    c.model.parallel_from = 2;
    c.model.seq_len = 32;
    c.train.device = device;
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

// "step k loss X gnorm Y lr Z [phases]" of every step line: the part that must repeat.
inline std::vector<std::string> step_lines(const std::string& log) {
    std::ifstream f(log);
    std::vector<std::string> out;
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("step ", 0) == 0) out.push_back(line.substr(0, line.find(" tok/s")));
    return out;
}

struct StepLine {
    int step = 0;
    double loss = 0, gnorm = 0;
};

inline std::vector<StepLine> parse_steps(const std::string& log) {
    std::vector<StepLine> out;
    for (const std::string& l : step_lines(log)) {
        StepLine s;
        if (std::sscanf(l.c_str(), "step %d loss %lf gnorm %lf", &s.step, &s.loss, &s.gnorm) == 3) out.push_back(s);
    }
    return out;
}

// Two steps, then a resume whose learning rates are NaN, so the first update poisons every
// weight: the run must stop with one error and leave the checkpoint of step 2 byte for byte.
// (A finite huge rate is no sure trigger: on the GPU the norms and the logit softcap keep the
// loss of 1e30-sized weights finite. A clamp that maps NaN to a number, as the softcap's fminf
// once did, made NaN weights' loss a finite ln(vocab) while their gradient norm was NaN: the
// trainer checks both.)
inline void check_divergence_keeps_checkpoint(const std::string& out, const std::string& device) {
    Config c = small_run(out, device);
    c.train.stop_after = 2;
    run_training(c);
    const auto before = read_file(out + "/checkpoint.bin");
    c.train.stop_after = 0;
    c.train.resume = true;
    c.train.matrix_lr = c.train.embed_lr = c.train.scalar_lr = std::numeric_limits<float>::quiet_NaN();
    c.train.grad_clip = 0;
    CHECK_THROWS_WITH_AS(run_training(c), doctest::Contains("training diverged"), Error);
    CHECK(read_file(out + "/checkpoint.bin") == before);
}

}  // namespace pg::test
