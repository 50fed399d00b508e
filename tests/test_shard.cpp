#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <algorithm>

#include "common/check.h"
#include "common/io.h"
#include "tests/tmp_dir.h"
#include "tokenizer/loader.h"
#include "tokenizer/shard.h"

using namespace pg;

static std::vector<uint16_t> random_tokens(std::mt19937& rng, size_t n, int vocab) {
    std::uniform_int_distribution<int> d(0, vocab - 1);
    std::vector<uint16_t> t(n);
    for (auto& x : t) x = static_cast<uint16_t>(d(rng));
    return t;
}

static void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
}

// The error text of f(), or "" if it did not throw pg::Error.
template <class F>
static std::string error_of(F f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST_CASE("shard write->read round trip keeps header fields and tokens") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    TmpDir dir;
    const auto tokens = random_tokens(rng, 1 + rng() % 5000, 65536);
    const std::string path = dir / "fineweb_train_000000.bin";
    write_shard(path, tokens.data(), tokens.size());

    const auto raw = read_file(path);
    REQUIRE(raw.size() == 1024 + 2 * tokens.size());
    int32_t h[256];
    std::memcpy(h, raw.data(), sizeof h);
    CHECK(h[0] == 20240520);
    CHECK(h[1] == 1);
    CHECK(h[2] == static_cast<int32_t>(tokens.size()));
    CHECK(std::all_of(h + 3, h + 256, [](int32_t v) { return v == 0; }));
    CHECK(shard_token_count(path) == tokens.size());
    CHECK(read_shard(path) == tokens);
    CHECK(read_shard(path, 65536) == tokens);
}

TEST_CASE("a shard built byte by byte in the challenge layout is read") {
    TmpDir dir;
    const std::vector<uint16_t> tokens = {1, 0, 255, 256, 1023, 65535, 4660};
    std::vector<uint8_t> b;
    auto le32 = [&](uint32_t v) {
        for (int k = 0; k < 4; ++k) b.push_back(static_cast<uint8_t>(v >> (8 * k)));
    };
    le32(20240520);
    le32(1);
    le32(static_cast<uint32_t>(tokens.size()));
    for (int i = 3; i < 256; ++i) le32(0);
    for (uint16_t t : tokens) {
        b.push_back(static_cast<uint8_t>(t & 0xFF));
        b.push_back(static_cast<uint8_t>(t >> 8));
    }
    CHECK(b[0] == 0x88);  // 20240520 = 0x0134D588, little-endian
    CHECK(b[3] == 0x01);
    write_bytes(dir / "hand.bin", b);
    CHECK(read_shard(dir / "hand.bin") == tokens);
    CHECK(shard_bytes(tokens.data(), tokens.size()) == b);
}

TEST_CASE("bad shards are rejected with one line naming the file and the problem") {
    TmpDir dir;
    const std::vector<uint16_t> tokens = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
    const auto good = shard_bytes(tokens.data(), tokens.size());
    auto variant = [&](const std::string& name, auto edit) {
        auto b = good;
        edit(b);
        write_bytes(dir / name, b);
        return error_of([&] { read_shard(dir / name, 16); });
    };
    auto set_int = [](std::vector<uint8_t>& b, int i, int32_t v) { std::memcpy(b.data() + 4 * i, &v, 4); };

    std::string e = error_of([&] { read_shard(dir / "missing.bin"); });
    CHECK(e.find(dir / "missing.bin") != std::string::npos);
    CHECK(e.find("cannot open") != std::string::npos);

    e = variant("short_header.bin", [](auto& b) { b.resize(100); });
    CHECK(e.find("short_header.bin: truncated") != std::string::npos);
    e = variant("short_tokens.bin", [](auto& b) { b.pop_back(); });
    CHECK(e.find("short_tokens.bin: truncated") != std::string::npos);
    CHECK(e.find("10 tokens") != std::string::npos);
    e = variant("trailing.bin", [](auto& b) { b.push_back(0); });
    CHECK(e.find("trailing.bin: 1 bytes after the 10 tokens") != std::string::npos);
    e = variant("magic.bin", [&](auto& b) { set_int(b, 0, 20240521); });
    CHECK(e.find("magic.bin: not a token shard") != std::string::npos);
    e = variant("version.bin", [&](auto& b) { set_int(b, 1, 2); });
    CHECK(e.find("version.bin: unsupported shard version 2") != std::string::npos);
    e = variant("vocab.bin", [](auto& b) { b[1024 + 2 * 7] = 16; });
    CHECK(e.find("vocab.bin: token 16 at position 7 is outside the vocabulary (size 16)") != std::string::npos);
    CHECK(e.find('\n') == std::string::npos);
    e = variant("ok.bin", [](auto&) {});
    CHECK(e.empty());
}

// Shards holding consecutive ids 0, 1, 2, ... split at the given sizes.
static void write_counting_shards(const TmpDir& dir, const std::vector<size_t>& sizes) {
    uint16_t next = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
        std::vector<uint16_t> t(sizes[i]);
        for (auto& x : t) x = next++;
        const std::string name = "fineweb_train_00000" + std::to_string(i) + ".bin";
        write_shard(dir / name, t.data(), t.size());
    }
}

TEST_CASE("token stream takes across shard boundaries and wraps around at the end") {
    TmpDir dir;
    write_counting_shards(dir, {5, 0, 7, 3});  // 15 tokens: 0..14, an empty shard in between
    TokenStream s(dir.path, "fineweb_train_*.bin", 0);
    CHECK(s.files().size() == 4);
    std::vector<uint16_t> seen;
    for (size_t n : {4, 10, 6, 30, 1}) {
        auto t = s.take(n);
        REQUIRE(t.size() == n);
        seen.insert(seen.end(), t.begin(), t.end());
    }
    for (size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == i % 15);
    CHECK_THROWS_WITH_AS(TokenStream(dir.path, "fineweb_val_*.bin", 0), doctest::Contains("no shard matches"), Error);
}

TEST_CASE("distributed batches: ranks get disjoint contiguous slices of the one stream") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    TmpDir dir;
    for (int i = 0; i < 3; ++i) {
        auto t = random_tokens(rng, 50 + rng() % 100, 1024);
        write_shard(dir / ("fineweb_train_00000" + std::to_string(i) + ".bin"), t.data(), t.size());
    }
    const std::string pat = "fineweb_train_*.bin";
    const int seq = 8, accum = 2, world = 2;
    const long global = 64;  // 16 tokens a rank per micro-step: 2 rows of 8
    TokenStream r0(dir.path, pat, 1024), r1(dir.path, pat, 1024), ref(dir.path, pat, 1024), single(dir.path, pat, 1024),
        ref1(dir.path, pat, 1024);
    for (int step = 0; step < 40; ++step) {  // wraps around the ~300 tokens several times
        const Batch b0 = next_batch(r0, global, seq, accum, 0, world);
        const Batch b1 = next_batch(r1, global, seq, accum, 1, world);
        const auto chunk = ref.take(2 * 17);
        REQUIRE(b0.rows == 2);
        REQUIRE(b0.seq_len == seq);
        REQUIRE(b0.inputs.size() == 16);
        REQUIRE(b1.targets.size() == 16);
        for (int i = 0; i < 16; ++i) {
            CHECK(b0.inputs[i] == chunk[i]);
            CHECK(b0.targets[i] == chunk[i + 1]);
            CHECK(b1.inputs[i] == chunk[17 + i]);
            CHECK(b1.targets[i] == chunk[17 + i + 1]);
        }
        // A single rank gets the whole micro-batch: one span of 32 + 1 tokens.
        const Batch one = next_batch(single, global, seq, accum, 0, 1);
        const auto chunk1 = ref1.take(33);
        REQUIRE(one.rows == 4);
        CHECK(one.inputs == std::vector<int32_t>(chunk1.begin(), chunk1.end() - 1));
        CHECK(one.targets == std::vector<int32_t>(chunk1.begin() + 1, chunk1.end()));
    }
    CHECK(r0.position() == ref.position());
    CHECK(r1.position() == ref.position());
    CHECK_THROWS_AS(next_batch(r0, 60, seq, accum, 0, world), Error);  // 15 tokens a rank: not whole rows
    CHECK_THROWS_AS(next_batch(r0, global, seq, accum, 2, world), Error);
}

TEST_CASE("stream position save/restore continues identically") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    TmpDir dir;
    write_counting_shards(dir, {40, 25, 60});
    TokenStream a(dir.path, "fineweb_train_*.bin", 0);
    a.take(40);  // exactly the end of shard 0: the next take moves to shard 1
    CHECK(a.position() == StreamPos{0, 40});
    for (int round = 0; round < 5; ++round) {
        const StreamPos saved = a.position();
        const size_t n = 1 + rng() % 200;
        const auto expect = a.take(n);
        TokenStream b(dir.path, "fineweb_train_*.bin", 0);
        b.seek(saved);
        CHECK(b.take(n) == expect);
        CHECK(b.position() == a.position());
    }
    CHECK_THROWS_WITH_AS(a.seek({3, 0}), doctest::Contains("outside the 3 training shards"), Error);
    CHECK_THROWS_AS(a.seek({1, 26}), Error);
}

TEST_CASE("load_tokens concatenates the val shards in order and checks the vocabulary") {
    TmpDir dir;
    const std::vector<uint16_t> a = {1, 2, 3}, b = {1, 9};
    write_shard(dir / "fineweb_val_000001.bin", b.data(), b.size());
    write_shard(dir / "fineweb_val_000000.bin", a.data(), a.size());
    CHECK(load_tokens(dir.path, "fineweb_val_*.bin", 10) == std::vector<uint16_t>{1, 2, 3, 1, 9});
    CHECK_THROWS_WITH_AS(load_tokens(dir.path, "fineweb_val_*.bin", 9), doctest::Contains("fineweb_val_000001.bin: token 9"),
                         Error);
}
