// The whole CPU pipeline through the binary: train -> pack -> size -> eval, and the
// evaluation's numbers against a direct computation.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "common/check.h"
#include "common/cli.h"
#include "common/io.h"
#include "eval/evaluate.h"
#include "model/model_ref.h"
#include "quant/weights.h"
#include "tests/run_pgolf.h"
#include "tests/tmp_dir.h"
#include "tokenizer/loader.h"
#include "tokenizer/sp.h"

using namespace pg;

static std::string trained_checkpoint(const TmpDir& d) {
    Config c;
    apply_preset(c, "tiny");
    c.model.n_layers = 2;
    c.model.model_dim = 64;
    c.model.recur_start = c.model.recur_end = 1;
    c.model.parallel_from = 1;
    c.model.seq_len = 64;
    c.train.batch_tokens = 1024;
    c.train.iterations = 12;
    c.train.max_wallclock_s = 0;
    c.train.val_tokens = 1024;
    c.train.out_dir = d / "run";
    run_training(c);
    return d / "run/checkpoint.bin";
}

TEST_CASE("pipeline: pack writes an artifact that fits, eval reads it alone, bad files are refused") {
    TmpDir d;
    const std::string ck = trained_checkpoint(d), art = d / "model.art";
    std::string out;
    REQUIRE(test::run_pgolf("pack " + ck + " -o " + art + " --calib-seqs 4", out) == 0);
    INFO(out);
    CHECK(out.find("GPTQ: Hessians of") != std::string::npos);
    CHECK(test::result_value(out, "fits") == 1);
    CHECK(test::run_pgolf("size " + art, out) == 0);

    REQUIRE(test::run_pgolf("eval --artifact " + art + " --stride 64 --max-tokens 4096", out) == 0);
    const double q_bpb = test::result_value(out, "val_bpb");
    REQUIRE(test::run_pgolf("eval --checkpoint " + ck + " --weights ema --stride 64 --max-tokens 4096", out) == 0);
    const double f_bpb = test::result_value(out, "val_bpb");
    CHECK(std::fabs(q_bpb - f_bpb) < 0.05);  // int5/int6 on a barely trained model: a small gap

    // A code archive of 16,000,000 bytes puts any artifact over the budget.
    std::ofstream(d / "big.tar.xz") << std::string(16000000, 'x');
    CHECK(test::run_pgolf("size " + art + " --code " + (d / "big.tar.xz"), out) == 1);
    CHECK(out.find("over the 16000000-byte budget") != std::string::npos);

    // A flipped byte: eval refuses with one line and a non-zero exit.
    auto bytes = read_file(art);
    bytes[bytes.size() / 2] ^= 0x40;
    write_file_atomic(d / "bad.art", bytes.data(), bytes.size());
    CHECK(test::run_pgolf("eval --artifact " + (d / "bad.art"), out) == 1);
    CHECK(out.rfind("pgolf: error: ", 0) == 0);
    CHECK(std::count(out.begin(), out.end(), '\n') == 1);
}

TEST_CASE("pipeline: eval's val_bpb equals a direct computation over plain chunks") {
    TmpDir d;
    const std::string ck = trained_checkpoint(d);
    std::string out;
    // On the CPU, in fp32 like the oracle: this checks the byte accounting, not bf16 (the GPU's
    // agreement with the CPU has its own tolerance in test_eval_cuda.cu).
    REQUIRE(test::run_pgolf("eval --device cpu --checkpoint " + ck + " --weights raw --stride 64 --max-tokens 2048", out) == 0);
    const double bpb = test::result_value(out, "val_bpb");

    const Weights w = load_checkpoint_weights(ck, "raw");
    RefModel<float> model(w.config.model);
    model.params = w.params;
    const Tokenizer tok("data/sample/tokenizer.model");
    const ByteTables bt = build_byte_tables(tok, w.config.model.vocab_size);
    const auto val = load_tokens("data/sample", "fineweb_val_*.bin", w.config.model.vocab_size);
    double nats = 0, bytes = 0;
    const int L = 64;
    std::vector<float> nll(L);
    for (int c = 0; c < 2048 / L; ++c) {
        std::vector<int32_t> in(val.begin() + c * L, val.begin() + c * L + L);
        std::vector<int32_t> tg(val.begin() + c * L + 1, val.begin() + c * L + L + 1);
        model.forward(in.data(), tg.data(), 1, L, eval_recur(w.config.model), nll.data());
        for (int t = 0; t < L; ++t) {
            nats += nll[t];
            bytes += bt.bytes(tg[t], in[t]);
        }
    }
    CHECK(bpb == doctest::Approx(nats / std::log(2.0) / bytes).epsilon(1e-6));
}
