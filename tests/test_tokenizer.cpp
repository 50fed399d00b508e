#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>

#include "common/check.h"
#include "common/io.h"
#include "tests/tmp_dir.h"
#include "tokenizer/docs.h"
#include "tokenizer/sp.h"

using namespace pg;

static const char* kSampleTokenizer = "data/sample/tokenizer.model";

TEST_CASE("tokenizer training is deterministic and has the challenge's special pieces") {
    // A few hundred lines of the sample's prose keep this to a fraction of a second.
    std::vector<std::string> lines;
    for_each_document("data/sample/austen.jsonl.xz", [&](std::string&& doc) {
        size_t start = 0, nl;
        while (lines.size() < 400 && (nl = doc.find('\n', start)) != std::string::npos) {
            lines.push_back(doc.substr(start, nl - start));
            start = nl + 1;
        }
    });
    REQUIRE(lines.size() == 400);
    const std::string m1 = train_tokenizer(lines, 320), m2 = train_tokenizer(lines, 320);
    CHECK(m1 == m2);
    TmpDir dir;
    write_file_atomic(dir / "t.model", m1);
    const Tokenizer tok(dir / "t.model");
    CHECK(tok.vocab_size() <= 320);
    CHECK(tok.vocab_size() > 260);
    CHECK(tok.piece(0) == "<pad>");
    CHECK(tok.piece(1) == "<s>");
    CHECK(tok.piece(2) == "</s>");
    CHECK(tok.piece(3) == "<unk>");
    CHECK(tok.bos_id() == 1);
    CHECK(tok.is_byte(4));
    CHECK(tok.piece(4) == "<0x00>");
    CHECK(tok.piece(259) == "<0xFF>");
    for (int id = 0; id < 4; ++id) CHECK(tok.is_boundary(id));
    CHECK_FALSE(tok.is_boundary(4));
    CHECK_FALSE(tok.is_boundary(tok.vocab_size() - 1));
    CHECK_THROWS_WITH_AS(train_tokenizer(lines, 100), doctest::Contains("--vocab 100"), Error);
}

TEST_CASE("sample tokenizer: encode/decode round trip, byte fallback, split digits") {
    const Tokenizer tok(kSampleTokenizer);
    CHECK(tok.vocab_size() == 1024);
    const std::string plain = "It is a truth universally acknowledged, that a single man must be in want of a wife.";
    CHECK(tok.decode(tok.encode(plain)) == plain);
    // Characters outside the sample's alphabet fall back to bytes and come back intact.
    const std::string rare = "Zürich costs \xC2\xA3" "1234 \xF0\x9F\x98\x80!";
    const auto ids = tok.encode(rare);
    CHECK(tok.decode(ids) == rare);
    CHECK(std::any_of(ids.begin(), ids.end(), [&](int id) { return tok.is_byte(id); }));
    // split_digits: every digit is its own piece (here byte pieces: digits are rare in
    // Austen, under character_coverage=0.999).
    const auto digits = tok.encode("1234567890");
    REQUIRE(digits.size() == 10);
    for (size_t i = 0; i < 10; ++i) CHECK(tok.decode({digits[i]}) == std::string(1, "1234567890"[i]));
    // add_dummy_prefix=false: no word-start mark on the first piece.
    CHECK(tok.piece(tok.encode("Hello")[0]).rfind("\xE2\x96\x81", 0) != 0);
}

TEST_CASE("tokenizer vocab mismatch and unreadable tokenizers are one clear error") {
    const Tokenizer tok(kSampleTokenizer);
    CHECK_NOTHROW(check_tokenizer_vocab(tok, 1024));
    CHECK_THROWS_WITH_AS(check_tokenizer_vocab(tok, 8192),
                         "data/sample/tokenizer.model: tokenizer has 1024 pieces but the model's vocab_size is 8192", Error);
    TmpDir dir;
    std::ofstream(dir / "junk.model") << "not a model";
    CHECK_THROWS_WITH_AS(Tokenizer(dir / "junk.model"), doctest::Contains("junk.model: not a SentencePiece model"), Error);
    CHECK_THROWS_WITH_AS(Tokenizer(dir / "none.model"), doctest::Contains("none.model: cannot open"), Error);
}
