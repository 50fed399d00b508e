#include <doctest/doctest.h>

#include <random>

#include "common/check.h"
#include "eval/evaluate.h"
#include "tests/tmp_dir.h"
#include "tests/toy_tables.h"

using namespace pg;
using pg::test::toy_tables;

// A "model" whose loss for a target depends on the target and on how much context the
// window gives it, so a scheduling error changes the sum.
static void toy_score(const int32_t*, const int32_t* tg, int rows, int seq, float* nll) {
    for (int r = 0; r < rows; ++r)
        for (int t = 0; t < seq; ++t) nll[r * seq + t] = 0.01f * float(tg[r * seq + t] % 7) + 1.0f / float(t + 1);
}

TEST_CASE("eval windows score every target exactly once") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    for (int trial = 0; trial < 50; ++trial) {
        EvalOptions o;
        o.seq_len = 1 + int(rng() % 64);
        o.stride = 1 + int(rng() % o.seq_len);
        const long n = o.seq_len + 1 + long(rng() % 500);
        std::vector<int> hits(n - 1, 0);
        for (const Window& w : make_windows(n, o)) {
            CHECK(w.start >= 0);
            CHECK(w.start + o.seq_len <= n - 1);
            for (int t = w.first_scored; t < o.seq_len; ++t) hits[w.start + t]++;
        }
        for (long j = 0; j < n - 1; ++j) REQUIRE(hits[j] == 1);
    }
}

TEST_CASE("eval with stride == seq_len equals plain chunked scoring") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    const int vocab = 50, L = 16;
    std::vector<uint16_t> tok(1 + 10 * L);
    for (auto& t : tok) t = uint16_t(rng() % vocab);
    const ByteTables bt = toy_tables(vocab);
    EvalOptions o;
    o.seq_len = L;
    o.stride = L;
    o.batch_seqs = 3;
    const BpbAccumulator a = evaluate(toy_score, tok, bt, o);
    double loss = 0;
    long bytes = 0;
    for (int c = 0; c < 10; ++c)
        for (int t = 0; t < L; ++t) {
            const int i = c * L + t + 1;
            loss += 0.01f * float(tok[i] % 7) + 1.0f / float(t + 1);
            bytes += bt.bytes(tok[i], tok[i - 1]);
        }
    CHECK(a.tokens == 10 * L);
    CHECK(a.bytes == bytes);
    CHECK(a.loss_nats == doctest::Approx(loss).epsilon(1e-6));

    // A sliding window scores the same targets and bytes, each with more context here.
    o.stride = 4;
    const BpbAccumulator s = evaluate(toy_score, tok, bt, o);
    CHECK(s.tokens == a.tokens);
    CHECK(s.bytes == a.bytes);
    CHECK(s.loss_nats < a.loss_nats);
}

TEST_CASE("eval rejects a split shorter than a window and non-finite losses") {
    std::vector<uint16_t> tok(10, 1);
    EvalOptions o;
    o.seq_len = 16;
    CHECK_THROWS_AS(evaluate(toy_score, tok, toy_tables(4), o), Error);
    o.seq_len = 4;
    o.stride = 4;
    auto nan_score = [](const int32_t*, const int32_t*, int rows, int seq, float* nll) {
        for (int i = 0; i < rows * seq; ++i) nll[i] = NAN;
    };
    CHECK_THROWS_AS(evaluate(nan_score, tok, toy_tables(4), o), Error);
}

TEST_CASE("eval split over ranks: each rank scores its share, the merged sums equal one rank's") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    const int vocab = 50;
    const ByteTables bt = toy_tables(vocab);
    for (int trial = 0; trial < 20; ++trial) {
        EvalOptions o;
        o.seq_len = 1 + int(rng() % 40);
        o.stride = 1 + int(rng() % o.seq_len);
        o.batch_seqs = 1 + int(rng() % 5);
        const int world = 1 + int(rng() % 7);
        std::vector<uint16_t> tok(o.seq_len + 1 + rng() % 400);
        for (auto& t : tok) t = uint16_t(rng() % vocab);
        CAPTURE(trial);
        CAPTURE(world);
        const BpbAccumulator one = evaluate(toy_score, tok, bt, o);
        BpbAccumulator merged;
        std::vector<int> hits(tok.size() - 1, 0);
        for (int r = 0; r < world; ++r) {
            o.rank = r, o.world = world;
            merged.merge(evaluate(toy_score, tok, bt, o));
            score_windows(toy_score, tok, make_windows(long(tok.size()), o), o, long(tok.size()),
                          [&](long j, float) { hits[j]++; });
        }
        for (int h : hits) REQUIRE(h == 1);
        CHECK(merged.tokens == one.tokens);
        CHECK(merged.bytes == one.bytes);
        CHECK(merged.loss_nats == doctest::Approx(one.loss_nats).epsilon(1e-12));
    }
    EvalOptions bad;
    bad.seq_len = 4;
    bad.rank = 2, bad.world = 2;
    CHECK_THROWS_AS(evaluate(toy_score, std::vector<uint16_t>(20, 1), bt, bad), Error);
}
