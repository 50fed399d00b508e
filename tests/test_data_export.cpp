#include <doctest/doctest.h>

#include <lzma.h>

#include <filesystem>
#include <fstream>

#include "common/check.h"
#include "common/io.h"
#include "tests/tmp_dir.h"
#include "tokenizer/docs.h"
#include "tokenizer/export.h"
#include "tokenizer/loader.h"
#include "tokenizer/shard.h"
#include "tokenizer/sp.h"

using namespace pg;

static std::vector<std::string> read_docs(const std::string& path) {
    std::vector<std::string> docs;
    for_each_document(path, [&](std::string&& d) { docs.push_back(std::move(d)); });
    return docs;
}

// The integer after "key": in the manifest's text.
static long manifest_int(const std::string& manifest, const std::string& key) {
    const size_t at = manifest.find("\"" + key + "\": ");
    REQUIRE(at != std::string::npos);
    return std::stol(manifest.substr(at + key.size() + 4));
}

TEST_CASE("data export on the embedded sample reproduces the committed sample shards token for token") {
    const std::string manifest = read_text("data/sample/manifest.json");
    TmpDir dir;
    ExportOptions opt;
    opt.docs = {"data/sample/austen.jsonl.xz"};
    opt.tokenizer = "data/sample/tokenizer.model";
    opt.out_dir = dir.path;
    opt.verbose = false;
    opt.val_docs = manifest_int(manifest, "val_docs");
    opt.shard_tokens = manifest_int(manifest, "shard_tokens");
    export_shards(opt);
    const auto committed = glob_files("data/sample", "fineweb_*.bin");
    const auto fresh = glob_files(dir.path, "fineweb_*.bin");
    REQUIRE(committed.size() == fresh.size());
    REQUIRE(committed.size() >= 2);
    for (size_t i = 0; i < committed.size(); ++i) {
        INFO(committed[i]);
        CHECK(std::filesystem::path(committed[i]).filename() == std::filesystem::path(fresh[i]).filename());
        const auto a = read_shard(committed[i], 1024), b = read_shard(fresh[i], 1024);
        REQUIRE(a.size() == b.size());
        size_t first_diff = std::mismatch(a.begin(), a.end(), b.begin()).first - a.begin();
        CHECK(first_diff == a.size());
    }
    CHECK(read_text(dir / "manifest.json") == manifest);
}

TEST_CASE("export: BOS before each document, first N documents to val, shards of the requested size") {
    const Tokenizer tok("data/sample/tokenizer.model");
    TmpDir dir;
    const std::vector<std::string> texts = {"Emma was happy.", "", "Mr. Knightley smiled.", "It rained in 1815.",
                                            "\xC2\xA3" "5 a year!"};
    {
        std::ofstream f(dir / "docs.jsonl");
        f << "{\"text\": \"Emma was happy.\"}\n{\"id\": 2, \"text\": \"\"}\n\n"
          << "{\"meta\": {\"a\": [1, {\"text\": 3}]}, \"text\": \"Mr. Knightley smiled.\"}\n"
          << "{\"text\": \"It rained in 1815.\", \"x\": null}\n{\"text\": \"\\u00a35 a year!\"}";
    }
    REQUIRE(read_docs(dir / "docs.jsonl") == texts);
    ExportOptions opt;
    opt.docs = {dir / "docs.jsonl"};
    opt.tokenizer = "data/sample/tokenizer.model";
    opt.out_dir = dir / "out";
    opt.verbose = false;
    opt.val_docs = 2;
    opt.shard_tokens = 7;
    export_shards(opt);

    std::vector<uint16_t> expect_val, expect_train;
    for (size_t d = 0; d < texts.size(); ++d) {
        auto& e = d < 2 ? expect_val : expect_train;
        e.push_back(1);
        for (int id : tok.encode(texts[d])) e.push_back(static_cast<uint16_t>(id));
    }
    CHECK(load_tokens(opt.out_dir, "fineweb_val_*.bin", 1024) == expect_val);
    CHECK(load_tokens(opt.out_dir, "fineweb_train_*.bin", 1024) == expect_train);
    const auto shards = glob_files(opt.out_dir, "fineweb_train_*.bin");
    REQUIRE(shards.size() == (expect_train.size() + 6) / 7);
    for (size_t i = 0; i + 1 < shards.size(); ++i) CHECK(shard_token_count(shards[i]) == 7);
    const std::string m = read_text(opt.out_dir + "/manifest.json");
    CHECK(m.find(format("\"train\": {\"docs\": 3, \"tokens\": %zu, \"text_bytes\": %zu", expect_train.size(),
                        texts[2].size() + texts[3].size() + texts[4].size())) != std::string::npos);
    const auto bytes = read_file(shards[0]);
    CHECK(m.find(sha256_hex(bytes.data(), bytes.size())) != std::string::npos);
}

TEST_CASE("a failed export leaves the existing output as it was; a new one removes stale shards") {
    TmpDir dir;
    {
        std::ofstream(dir / "good.jsonl") << "{\"text\": \"one\"}\n{\"text\": \"two two\"}\n{\"text\": \"three\"}\n";
        std::ofstream(dir / "bad.jsonl") << "{\"text\": \"one\"}\n{\"text\": \"two\"\n";
    }
    ExportOptions opt;
    opt.docs = {dir / "good.jsonl"};
    opt.tokenizer = "data/sample/tokenizer.model";
    opt.out_dir = dir / "out";
    opt.verbose = false;
    opt.val_docs = 1;
    opt.shard_tokens = 2;
    export_shards(opt);
    const Tokenizer tok(opt.tokenizer);
    const size_t train_tokens = 2 + tok.encode("two two").size() + tok.encode("three").size();
    const auto train = glob_files(opt.out_dir, "fineweb_train_*.bin");
    REQUIRE(train.size() == (train_tokens + 1) / 2);
    for (size_t i = 0; i + 1 < train.size(); ++i) CHECK(shard_token_count(train[i]) == 2);
    const auto before = glob_files(opt.out_dir, "*");
    REQUIRE(before.size() == train.size() + 2);  // + the val shard and the manifest
    std::vector<std::vector<uint8_t>> contents;
    for (auto& f : before) contents.push_back(read_file(f));

    opt.docs = {dir / "bad.jsonl"};
    CHECK_THROWS_WITH_AS(export_shards(opt), doctest::Contains("bad.jsonl:2: bad JSON"), Error);
    REQUIRE(glob_files(opt.out_dir, "*") == before);
    for (size_t i = 0; i < before.size(); ++i) CHECK(read_file(before[i]) == contents[i]);
    CHECK(std::distance(std::filesystem::directory_iterator(opt.out_dir), {}) == long(before.size()));  // no staging left

    opt.docs = {dir / "good.jsonl"};
    opt.shard_tokens = 1000;
    export_shards(opt);
    CHECK(glob_files(opt.out_dir, "*.bin").size() == 2);  // one val and one train shard
}

static void write_xz(const std::string& path, const std::string& text) {
    std::vector<uint8_t> out(text.size() + 1024);
    size_t pos = 0;
    REQUIRE(lzma_easy_buffer_encode(6, LZMA_CHECK_CRC64, nullptr, reinterpret_cast<const uint8_t*>(text.data()),
                                    text.size(), out.data(), &pos, out.size()) == LZMA_OK);
    out.resize(pos);
    write_file_atomic(path, out.data(), out.size());
}

TEST_CASE("document files: jsonl escapes, whole-file text, xz, and bad input") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    TmpDir dir;
    CHECK(json_text_field(R"({"text": "a\"b\\c\/d\n\t\u00e9\ud83d\ude00\ud800x"})", "w") ==
          "a\"b\\c/d\n\t\xC3\xA9\xF0\x9F\x98\x80\xEF\xBF\xBDx");
    CHECK_THROWS_WITH_AS(json_text_field(R"({"txt": "a"})", "f.jsonl:3"), "f.jsonl:3: JSON object has no \"text\" string", Error);
    CHECK_THROWS_WITH_AS(json_text_field(R"({"text": 5})", "w"), doctest::Contains("no \"text\" string"), Error);
    CHECK_THROWS_WITH_AS(json_text_field(R"({"text": "a"} x)", "w"), doctest::Contains("text after the object"), Error);
    CHECK_THROWS_WITH_AS(json_text_field(R"({"text": "\u12G4"})", "w"), doctest::Contains("bad \\u escape"), Error);

    // A whole file is one document, xz or not; random bytes survive the round trip.
    std::string blob(1 + rng() % 300000, '\0');
    for (auto& c : blob) c = static_cast<char>(rng() % 256);
    write_file_atomic(dir / "doc.txt", blob);
    write_xz(dir / "doc.txt.xz", blob);
    CHECK(read_docs(dir / "doc.txt") == std::vector<std::string>{blob});
    CHECK(read_docs(dir / "doc.txt.xz") == std::vector<std::string>{blob});

    // jsonl.xz with many lines crosses the reader's chunk boundaries.
    std::string jsonl;
    std::vector<std::string> expect;
    for (int i = 0; i < 3000; ++i) {
        expect.push_back(std::string(rng() % 2000, 'a' + i % 26));
        jsonl += "{\"text\": \"" + expect.back() + "\"}\n";
    }
    write_xz(dir / "d.jsonl.xz", jsonl);
    CHECK(read_docs(dir / "d.jsonl.xz") == expect);

    auto xz = read_file(dir / "d.jsonl.xz");
    xz.resize(xz.size() / 2);
    write_file_atomic(dir / "cut.jsonl.xz", xz.data(), xz.size());
    CHECK_THROWS_WITH_AS(read_docs(dir / "cut.jsonl.xz"), doctest::Contains("cut.jsonl.xz: xz data is corrupt or truncated"),
                         Error);
    CHECK_THROWS_WITH_AS(read_docs(dir / "nope.jsonl"), doctest::Contains("nope.jsonl: cannot open"), Error);
}
