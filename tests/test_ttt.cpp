// Score-first test-time training: legality (nothing is trained on before it is scored, and
// later tokens cannot change earlier scores), that it adapts, that it reduces to plain
// sliding evaluation without training, and its flags through the binary.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <random>

#include "common/check.h"
#include "common/config.h"
#include "eval/ttt.h"
#include "tests/checkpoint_file.h"
#include "tests/run_pgolf.h"
#include "tests/tmp_dir.h"
#include "tests/toy_tables.h"

using namespace pg;
using pg::test::toy_tables;

namespace {

// 2 layers x 32 dims with every feature on, recurrence included.
ModelConfig tiny_model(int vocab) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.model_dim = 32;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 16;
    c.mlp_mult = 2;
    c.rope_dims = 8;
    c.bigram_buckets = 32;
    c.bigram_dim = 8;
    c.xsa_last = 1;
    c.recur_start = c.recur_end = 1;
    c.parallel_from = 1;
    c.seq_len = 32;
    c.validate();
    return c;
}

std::vector<uint16_t> random_stream(size_t n, int vocab, std::mt19937& g) {
    std::vector<uint16_t> t(n);
    for (auto& x : t) x = uint16_t(g() % vocab);
    return t;
}

TttOptions small_options() {
    TttOptions o;
    o.eval.seq_len = 32;
    o.eval.stride = 12;  // windows cross chunk ends: 256 - 32 is not a multiple of 12
    o.eval.batch_seqs = 5;
    o.chunk_tokens = 256;
    o.batch_seqs = 3;
    return o;
}

// TTT with the reference model from the given weights.
TttResult run_ref(const ModelConfig& c, const std::vector<float>& w, const std::vector<uint16_t>& tokens,
                  const ByteTables& bt, const TttOptions& o, const LossFn& on_loss = nullptr) {
    RefModel<float> m(c);
    m.params = w;
    RefTttModel tm(m, true);
    return evaluate_ttt(tm, tokens, bt, o, nullptr, on_loss);
}

// A model that sees token i at position i (tokens[i] == i), so it knows which targets it
// scores and trains on. Its loss is 1 + steps / 1000: which weights scored a target.
struct TracingModel : TttModel {
    std::vector<uint8_t> scored, trained;
    int steps = 0;
    explicit TracingModel(long n_targets) : scored(n_targets, 0), trained(n_targets, 0) {}
    void score(const int32_t*, const int32_t*, int rows, int seq, float* nll) override {
        for (int i = 0; i < rows * seq; ++i) nll[i] = 1.f + float(steps) / 1000.f;
    }
    float train_step(const int32_t*, const int32_t* tg, int rows, int seq, int, float, float, float) override {
        for (int i = 0; i < rows * seq; ++i) {
            const long j = tg[i] - 1;
            REQUIRE(scored[j]);  // never trained on before it is scored
            trained[j] = 1;
        }
        ++steps;
        return 1.f;
    }
};

}  // namespace

TEST_CASE("ttt scores every target exactly once, with the weights of all earlier chunks, before training on it") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    for (int trial = 0; trial < 40; ++trial) {
        TttOptions o;
        o.eval.seq_len = 1 + int(g() % 40);
        o.eval.stride = 1 + int(g() % o.eval.seq_len);
        o.eval.batch_seqs = 1 + int(g() % 6);
        o.chunk_tokens = o.eval.seq_len + long(g() % 200);
        o.epochs = 1 + int(g() % 3);
        o.batch_seqs = 1 + int(g() % 4);
        const long n = o.eval.seq_len + 2 + long(g() % 2000);
        INFO("trial " << trial << ": seq " << o.eval.seq_len << " stride " << o.eval.stride << " chunk "
                      << o.chunk_tokens << " tokens " << n);
        std::vector<uint16_t> tokens(n);
        for (long i = 0; i < n; ++i) tokens[i] = uint16_t(i);
        TracingModel m(n - 1);
        std::vector<int> hits(n - 1, 0);
        std::vector<float> nll(n - 1, 0.f);
        const TttResult r = evaluate_ttt(m, tokens, toy_tables(int(n)), o, nullptr, [&](long j, float l) {
            REQUIRE(!m.trained[j]);
            m.scored[j] = 1;
            hits[j]++;
            nll[j] = l;
        });
        for (long j = 0; j < n - 1; ++j) REQUIRE(hits[j] == 1);
        CHECK(r.total.tokens == n - 1);
        REQUIRE(long(r.chunks.size()) == (n - 1 + o.chunk_tokens - 1) / o.chunk_tokens);
        int steps_before = 0;
        for (size_t c = 0; c < r.chunks.size(); ++c) {
            const TttChunk& ch = r.chunks[c];
            const bool last = c + 1 == r.chunks.size();
            CHECK(ch.first_target == long(c) * o.chunk_tokens);
            CHECK(ch.score.tokens == ch.targets);
            const long full = ch.targets / o.eval.seq_len * o.eval.seq_len;  // the trained part
            for (long j = ch.first_target; j < ch.first_target + ch.targets; ++j) {
                REQUIRE(nll[j] == 1.f + float(steps_before) / 1000.f);
                REQUIRE(m.trained[j] == (!last && j < ch.first_target + full));
            }
            CHECK(ch.steps == (last ? 0 : o.epochs * int((full / o.eval.seq_len + o.batch_seqs - 1) / o.batch_seqs)));
            steps_before += ch.steps;
        }
    }
}

TEST_CASE("ttt legality: poisoning the tokens after a chunk leaves it and all earlier chunks bit-exact") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    const int vocab = 64;
    const ModelConfig c = tiny_model(vocab);
    RefModel<float> init(c);
    init.init(g());
    const ByteTables bt = toy_tables(vocab);
    const TttOptions o = small_options();
    const std::vector<uint16_t> tokens = random_stream(4 * 256 + 100, vocab, g);  // 5 chunks, the last partial
    const TttResult base = run_ref(c, init.params, tokens, bt, o);
    REQUIRE(base.chunks.size() == 5);

    // The first chunk is scored by the loaded weights: the same as plain sliding evaluation.
    double plain0 = 0;
    RefModel<float> plain(c);
    plain.params = init.params;
    score_windows([&](const int32_t* in, const int32_t* tg, int rows, int seq,
                      float* nll) { plain.forward(in, tg, rows, seq, true, nll); },
                  tokens, make_windows(long(tokens.size()), o.eval), o.eval, std::numeric_limits<long>::max(),
                  [&](long j, float l) {
                      if (j < o.chunk_tokens) plain0 += l;
                  });
    CHECK(base.chunks[0].score.loss_nats == plain0);

    for (size_t k = 0; k + 1 < base.chunks.size(); ++k) {
        CAPTURE(k);
        const long end = base.chunks[k].first_target + base.chunks[k].targets;  // targets < end are chunks <= k
        std::vector<uint16_t> poisoned = tokens;
        for (size_t i = end + 1; i < poisoned.size(); ++i) poisoned[i] = uint16_t(g() % vocab);
        const TttResult p = run_ref(c, init.params, poisoned, bt, o);
        for (size_t j = 0; j <= k; ++j) {
            CHECK(p.chunks[j].score.loss_nats == base.chunks[j].score.loss_nats);
            CHECK(p.chunks[j].score.bytes == base.chunks[j].score.bytes);
            CHECK(p.chunks[j].train_loss == base.chunks[j].train_loss);
        }
        CHECK(p.chunks[k + 1].score.loss_nats != base.chunks[k + 1].score.loss_nats);  // the poison took
    }
}

TEST_CASE("ttt adapts: on a repeated chunk, later chunks score better than without TTT") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    const int vocab = 64;
    const ModelConfig c = tiny_model(vocab);
    RefModel<float> init(c);
    init.init(g());
    const ByteTables bt = toy_tables(vocab);
    TttOptions o = small_options();
    const std::vector<uint16_t> once = random_stream(256, vocab, g);
    std::vector<uint16_t> tokens;
    for (int r = 0; r < 4; ++r) tokens.insert(tokens.end(), once.begin(), once.end());
    tokens.push_back(once[0]);  // 4 chunks of 256 targets, each the same text

    o.epochs = 0;
    const TttResult plain = run_ref(c, init.params, tokens, bt, o);
    o.epochs = 3;
    const TttResult ttt = run_ref(c, init.params, tokens, bt, o);
    REQUIRE(ttt.chunks.size() == 4);
    CHECK(ttt.chunks[0].score.loss_nats == plain.chunks[0].score.loss_nats);
    for (size_t k = 1; k < 4; ++k) {
        CAPTURE(k);
        INFO("chunk " << k << ": plain " << plain.chunks[k].score.loss() << " nats, TTT " << ttt.chunks[k].score.loss());
        CHECK(ttt.chunks[k].score.loss() < plain.chunks[k].score.loss() - 0.01);
        CHECK(ttt.chunks[k].score.loss() < ttt.chunks[k - 1].score.loss());
    }
    CHECK(ttt.total.bpb() < plain.total.bpb());
}

TEST_CASE("ttt with 0 epochs or lr 0 equals plain sliding evaluation exactly") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    const int vocab = 64;
    const ModelConfig c = tiny_model(vocab);
    RefModel<float> init(c);
    init.init(g());
    const ByteTables bt = toy_tables(vocab);
    TttOptions o = small_options();
    o.eval.stride = 1 + int(g() % 32);
    o.chunk_tokens = 32 + long(g() % 300);
    CAPTURE(o.eval.stride);
    CAPTURE(o.chunk_tokens);
    const std::vector<uint16_t> tokens = random_stream(900 + g() % 200, vocab, g);
    RefModel<float> m(c);
    m.params = init.params;
    const BpbAccumulator plain = evaluate([&](const int32_t* in, const int32_t* tg, int rows, int seq,
                                              float* nll) { m.forward(in, tg, rows, seq, true, nll); },
                                          tokens, bt, o.eval);
    for (int variant = 0; variant < 2; ++variant) {
        CAPTURE(variant);
        TttOptions v = o;
        if (variant == 0) v.epochs = 0;
        else v.lr = 0;
        const TttResult r = run_ref(c, init.params, tokens, bt, v);
        CHECK(r.total.loss_nats == plain.loss_nats);
        CHECK(r.total.bytes == plain.bytes);
        CHECK(r.total.tokens == plain.tokens);
    }
}

TEST_CASE("ttt over ranks: every target scored once by one rank, every step's rows split, same steps on all") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 g(seed);
    // Records which targets a rank scores and, step by step, which rows it trains on.
    struct RankModel : TttModel {
        std::vector<std::vector<int32_t>> steps;  // targets of this rank's rows, per step
        std::vector<int> totals;
        void score(const int32_t*, const int32_t*, int rows, int seq, float* nll) override {
            std::fill(nll, nll + size_t(rows) * seq, 1.f);
        }
        float train_step(const int32_t*, const int32_t* tg, int rows, int seq, int total, float, float,
                         float) override {
            steps.emplace_back(tg, tg + size_t(rows) * seq);
            totals.push_back(total);
            return 1.f;
        }
    };
    for (int trial = 0; trial < 20; ++trial) {
        TttOptions o;
        o.eval.seq_len = 1 + int(g() % 30);
        o.eval.stride = 1 + int(g() % o.eval.seq_len);
        o.eval.batch_seqs = 1 + int(g() % 4);
        o.chunk_tokens = o.eval.seq_len * (1 + long(g() % 8)) + long(g() % 20);
        o.epochs = 1 + int(g() % 2);
        o.batch_seqs = 1 + int(g() % 5);
        const int world = 2 + int(g() % 4);
        const long n = o.eval.seq_len + 2 + long(g() % 1500);
        INFO("trial " << trial << ": world " << world << ", seq " << o.eval.seq_len << " stride " << o.eval.stride
                      << " chunk " << o.chunk_tokens << " ttt batch " << o.batch_seqs << " tokens " << n);
        std::vector<uint16_t> tokens(n);
        for (long i = 0; i < n; ++i) tokens[i] = uint16_t(i);
        const ByteTables bt = toy_tables(int(n));
        std::vector<int> hits(n - 1, 0);
        RankModel single;
        evaluate_ttt(single, tokens, bt, o);
        std::vector<RankModel> ranks(world);
        long scored = 0;
        for (int r = 0; r < world; ++r) {
            TttOptions ro = o;
            ro.eval.rank = r, ro.eval.world = world;
            scored += evaluate_ttt(ranks[r], tokens, bt, ro, nullptr, [&](long j, float) { hits[j]++; }).total.tokens;
        }
        CHECK(scored == n - 1);
        for (long j = 0; j < n - 1; ++j) REQUIRE(hits[j] == 1);
        for (int r = 0; r < world; ++r) REQUIRE(ranks[r].steps.size() == single.steps.size());
        for (size_t s = 0; s < single.steps.size(); ++s) {
            std::vector<int32_t> joined;
            for (int r = 0; r < world; ++r) {
                joined.insert(joined.end(), ranks[r].steps[s].begin(), ranks[r].steps[s].end());
                CHECK(ranks[r].totals[s] == single.totals[s]);
            }
            REQUIRE(joined == single.steps[s]);
        }
    }
}

TEST_CASE("ttt update: sgd_momentum_step against hand-computed values; the CPU model refuses a split step") {
    // g = (3, 4): |g| = 5 > clip 1, scale 0.2; v = 0.5 v + 0.2 g; w -= 0.1 v.
    std::vector<float> w = {1.f, -1.f}, v = {2.f, 0.f}, g = {3.f, 4.f};
    sgd_momentum_step(w.data(), v.data(), g.data(), 2, 0.1f, 0.5f, 1.f);
    CHECK(v[0] == doctest::Approx(1.6f));
    CHECK(v[1] == doctest::Approx(0.8f));
    CHECK(w[0] == doctest::Approx(0.84f));
    CHECK(w[1] == doctest::Approx(-1.08f));
    sgd_momentum_step(w.data(), v.data(), g.data(), 2, 0.1f, 0.5f, 10.f);  // under the clip: g as is
    CHECK(v[0] == doctest::Approx(3.8f));
    CHECK(w[1] == doctest::Approx(-1.08f - 0.44f));

    const ModelConfig c = tiny_model(64);
    RefModel<float> m(c);
    RefTttModel tm(m, true);
    std::vector<int32_t> t(32, 1);
    CHECK_THROWS_AS(tm.train_step(t.data(), t.data(), 1, 32, 2, 0.1f, 0.9f, 1.f), Error);
}

namespace {

// The RESULT line without its eval_seconds field, which differs from run to run.
std::string result_line(const std::string& out) {
    const size_t r = out.rfind("RESULT ");
    REQUIRE(r != std::string::npos);
    std::string line = out.substr(r, out.find('\n', r) - r);
    const size_t t = line.find(" eval_seconds=");
    REQUIRE(t != std::string::npos);
    return line.erase(t, line.find(' ', t + 1) - t);
}

}  // namespace

TEST_CASE("ttt flags of pgolf eval: a run, its plain equivalent, and bad values refused with one line") {
    TmpDir d;
    Config cfg;
    cfg.model = tiny_model(1024);  // the sample tokenizer's vocab
    RefModel<float> m(cfg.model);
    m.init(fresh_seed());
    write_checkpoint(d / "ck.bin", cfg, m.params);
    const std::string base = "eval --checkpoint " + (d / "ck.bin") + " --weights raw --stride 16 --max-tokens 1000 ";
    std::string out;

    REQUIRE(test::run_pgolf(base, out) == 0);
    const std::string plain = result_line(out);
    REQUIRE(test::run_pgolf(base + "--ttt --ttt-chunk 256 --ttt-epochs 0", out) == 0);
    CHECK(result_line(out) == plain + " ttt=1");

    REQUIRE(test::run_pgolf(base + "--ttt --plain --ttt-chunk 256 --ttt-lr 0.01 --ttt-batch-seqs 4", out) == 0);
    INFO(out);
    CHECK(out.find("plain: val_loss") != std::string::npos);
    CHECK(out.find("ttt chunk 4: targets [768, 1000)") != std::string::npos);
    CHECK(out.find("ttt chunk 5") == std::string::npos);
    CHECK(result_line(out).find(" ttt=1") != std::string::npos);
    CHECK(result_line(out) != plain + " ttt=1");

    for (const char* bad : {"--ttt --ttt-chunk 16", "--ttt --ttt-epochs -1", "--ttt --ttt-momentum 1",
                            "--ttt --ttt-batch-seqs 0", "--ttt-lr 0.1", "--device bogus",
                            "--device cuda"}) {  // no GPU here, or no GPU kernels for head_dim 16
        CAPTURE(bad);
        CHECK(test::run_pgolf(base + bad, out) != 0);
        CHECK(out.rfind("pgolf: error: ", 0) == 0);
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    }
}

TEST_CASE("pgolf eval --gpus and the multi-GPU flags; pgolf bench eval") {
    TmpDir d;
    Config cfg;
    cfg.model = tiny_model(1024);  // head_dim 16: the CPU reference, whatever the machine
    RefModel<float> m(cfg.model);
    m.init(fresh_seed());
    write_checkpoint(d / "ck.bin", cfg, m.params);
    const std::string weights = " --checkpoint " + (d / "ck.bin") + " --weights raw ";
    const std::string base = "eval" + weights + "--stride 16 --max-tokens 500 ";
    std::string out;

    REQUIRE(test::run_pgolf("eval --help", out) == 0);
    for (const char* flag : {"--gpus", "--nodes", "--node-rank", "--rendezvous", "--nccl-timeout"}) {
        CAPTURE(flag);
        CHECK(out.find(flag) != std::string::npos);
    }
    // The CPU path runs in one process: the GPU flags leave its numbers alone.
    REQUIRE(test::run_pgolf(base, out) == 0);
    const std::string alone = result_line(out);
    REQUIRE(test::run_pgolf(base + "--gpus 2 --nccl-timeout 5", out) == 0);
    CHECK(result_line(out) == alone);
    CHECK(out.find("ranks") == std::string::npos);
    for (const char* bad : {"--gpus x", "--nodes two"}) {
        CAPTURE(bad);
        CHECK(test::run_pgolf(base + bad, out) == 2);
        CHECK(out.rfind("pgolf: error: ", 0) == 0);
    }

    // eval-bench moved under bench.
    CHECK(test::run_pgolf("eval-bench --tokens 256", out) == 2);
    REQUIRE(test::run_pgolf("bench eval" + weights + "--device cpu --tokens 256 --stride 32 --ttt-chunk 128 --ttt-batch-seqs 2",
                  out) == 0);
    INFO(out);
    CHECK(out.rfind("bench eval: ", 0) == 0);
    for (const char* key : {" plain_s=", " sliding_s=", " sliding_ttt_s=", " sliding_ttt_full_8gpu_s="})
        CHECK(out.find(key, out.rfind("RESULT ")) != std::string::npos);
}
