#include <doctest/doctest.h>

#include <cmath>

#include "common/check.h"
#include "eval/bpb.h"
#include "tests/tmp_dir.h"
#include "tokenizer/loader.h"
#include "tokenizer/sp.h"

using namespace pg;

static const std::string kMark = "\xE2\x96\x81";  // U+2581

TEST_CASE("byte accounting on a hand-built table") {
    // ids: 0 BOS (boundary), 1 "▁the", 2 "the", 3 byte piece, 4 "▁"
    ByteTables t{{0, 3, 3, 1, 0}, {0, 1, 0, 0, 1}, {1, 0, 0, 0, 0}};
    const std::vector<uint16_t> seq = {0, 1, 1, 2, 3, 4, 1, 0, 1};
    // targets: ▁the after BOS 3, ▁the 4, the 3, byte 1, ▁ 1, ▁the 4, BOS 0, ▁the after BOS 3
    CHECK(count_bytes(t, seq.data(), seq.size()) == 3 + 4 + 3 + 1 + 1 + 4 + 0 + 3);
    CHECK(count_bytes(t, seq.data(), 1) == 0);
    BpbAccumulator a, b;
    a.add(10 * std::log(2.0), 4, 3);
    b.add(6 * std::log(2.0), 4, 5);
    a.merge(b);
    CHECK(a.tokens == 8);
    CHECK(a.bytes == 8);
    CHECK(a.bpb() == doctest::Approx(2.0).epsilon(1e-12));
    CHECK(a.loss() == doctest::Approx(16 * std::log(2.0) / 8).epsilon(1e-12));
}

TEST_CASE("byte tables from the sample tokenizer follow the challenge's rules") {
    const Tokenizer tok("data/sample/tokenizer.model");
    const ByteTables t = build_byte_tables(tok, 1030);
    REQUIRE(t.base.size() == 1030);
    for (int id : {0, 1, 2, 3, 1024, 1029}) {
        CHECK(t.boundary[id]);
        CHECK(t.base[id] == 0);
        CHECK_FALSE(t.leading_space[id]);
    }
    CHECK(tok.piece(4 + 0xC2) == "<0xC2>");
    CHECK(t.base[4 + 0xC2] == 1);
    CHECK_FALSE(t.boundary[4 + 0xC2]);
    int checked = 0;
    for (int id = 260; id < tok.vocab_size(); ++id) {
        const std::string& p = tok.piece(id);
        const bool mark = p.rfind(kMark, 0) == 0;
        CHECK(bool(t.leading_space[id]) == mark);
        CHECK(t.base[id] == int(p.size()) - (mark ? 3 : 0));
        ++checked;
    }
    CHECK(checked == 1024 - 260);
    // "▁the" after a word: 4 bytes (" the"); right after BOS: 3, the space is not text.
    const auto the = tok.encode("x the");
    REQUIRE(the.size() == 2);
    REQUIRE(tok.piece(the[1]) == kMark + "the");
    CHECK(t.bytes(the[1], the[0]) == 4);
    CHECK(t.bytes(the[1], tok.bos_id()) == 3);
}

// The bytes of each document, decoded, must equal the bytes the accounting assigns to
// its tokens (each document preceded by BOS, as in the shards).
static void check_documents(const Tokenizer& tok, const ByteTables& t, const std::vector<uint16_t>& tokens,
                            long& docs, long& bytes) {
    size_t start = 0;
    while (start < tokens.size()) {
        REQUIRE(tokens[start] == tok.bos_id());
        size_t end = start + 1;
        while (end < tokens.size() && tokens[end] != tok.bos_id()) ++end;
        const std::string text = tok.decode(std::vector<int>(tokens.begin() + start + 1, tokens.begin() + end));
        const long accounted = count_bytes(t, tokens.data() + start, end - start);
        INFO("document " << docs << ": " << text.substr(0, 80));
        CHECK(accounted == long(text.size()));
        ++docs;
        bytes += accounted;
        start = end;
    }
}

TEST_CASE("accounted bytes equal the UTF-8 bytes of the decoded sample val documents") {
    const Tokenizer tok("data/sample/tokenizer.model");
    const ByteTables t = build_byte_tables(tok);
    const auto val = load_tokens("data/sample", "fineweb_val_*.bin", tok.vocab_size());
    long docs = 0, bytes = 0;
    check_documents(tok, t, val, docs, bytes);
    CHECK(docs > 10);
    CHECK(bytes == count_bytes(t, val.data(), val.size()));
}

TEST_CASE("accounted bytes equal decoded bytes on random text with rare characters") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    const Tokenizer tok("data/sample/tokenizer.model");
    const ByteTables t = build_byte_tables(tok);
    const std::vector<std::string> atoms = {"the", " ", "  ", "\n", "Mr.", "Darcy", "1817", "\xC2\xA3", "\xC3\xA9",
                                            "\xE2\x80\x94", "\xF0\x9F\x98\x80", "\t", "\xE4\xB8\xAD", "!", "ing", "_"};
    std::vector<uint16_t> tokens;
    for (int d = 0; d < 50; ++d) {
        std::string doc;
        for (int k = rng() % 40; k >= 0; --k) doc += atoms[rng() % atoms.size()];
        tokens.push_back(static_cast<uint16_t>(tok.bos_id()));
        for (int id : tok.encode(doc)) tokens.push_back(static_cast<uint16_t>(id));
    }
    long docs = 0, bytes = 0;
    check_documents(tok, t, tokens, docs, bytes);
    CHECK(docs == 50);
}

TEST_CASE("unigram baseline: add-one smoothed nats and bytes of the targets") {
    ByteTables t{{0, 2, 5}, {0, 1, 0}, {1, 0, 0}};
    const std::vector<long> counts = {1, 5, 1};  // + 1 each: 2, 6, 2 of 10
    const std::vector<uint16_t> val = {0, 1, 2, 1};
    const BpbAccumulator u = unigram_score(t, counts, val.data(), val.size());
    CHECK(u.tokens == 3);
    CHECK(u.bytes == 2 + 5 + 3);
    CHECK(u.loss_nats == doctest::Approx(-2 * std::log(0.6) - std::log(0.2)).epsilon(1e-12));
    const std::vector<uint16_t> bad = {0, 3};
    CHECK_THROWS_AS(unigram_score(t, counts, bad.data(), bad.size()), Error);
}
