// The artifact container and the size budget. Inputs are fresh random draws; the seed is
// printed on failure.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include "common/check.h"
#include "common/io.h"
#include "quant/artifact.h"
#include "quant/budget.h"
#include "quant/half.h"

using namespace pg;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() / ("pgolf_test_" + std::to_string(getpid()) + "_" + std::to_string(std::random_device{}()));
        fs::create_directories(path);
    }
    ~TempDir() { fs::remove_all(path); }
    std::string operator/(const std::string& f) const { return (path / f).string(); }
};

ArtifactTensor float_tensor(const std::string& name, DType d, std::vector<int> shape, std::mt19937& rng) {
    ArtifactTensor t;
    t.name = name;
    t.dtype = d;
    t.shape = std::move(shape);
    std::normal_distribution<float> nd(0, 1);
    t.values.resize(t.numel());
    for (float& v : t.values) v = nd(rng);
    return t;
}

ArtifactTensor int_tensor(const std::string& name, int bits, std::vector<int> shape, std::mt19937& rng) {
    ArtifactTensor t;
    t.name = name;
    t.dtype = DType::Int;
    t.bits = bits;
    t.shape = std::move(shape);
    const int qmax = (1 << (bits - 1)) - 1;
    t.q.resize(t.numel());
    for (auto& v : t.q) v = int8_t(int(rng() % (2 * qmax + 1)) - qmax);
    t.scales.resize(t.rows());
    std::uniform_real_distribution<float> u(1e-4f, 0.1f);
    for (float& s : t.scales) s = round_to_f16(u(rng));
    return t;
}

Artifact sample_artifact(std::mt19937& rng) {
    Artifact a;
    a.config.vocab_size = 1000 + rng() % 5000;
    a.config.swiglu = true;
    a.config.qk_norm = false;
    a.config.leaky_slope = 0.1f + float(rng() % 1000) / 3000.0f;  // not a short decimal
    a.config.rope_base = 50000.f;
    a.config.bigram_buckets = 0;
    a.tensors.push_back(float_tensor("gains.f32", DType::F32, {37}, rng));
    a.tensors.push_back(float_tensor("gains.f16", DType::F16, {3, 5}, rng));
    a.tensors.push_back(float_tensor("mix.bf16", DType::BF16, {2, 3, 7}, rng));
    a.tensors.push_back(int_tensor("emb.int8", 8, {31, 17}, rng));
    a.tensors.push_back(int_tensor("attn.int6", 6, {64, 33}, rng));
    a.tensors.push_back(int_tensor("mlp.int5", 5, {9, 2, 5}, rng));
    a.tensors.push_back(int_tensor("tiny.int2", 2, {1}, rng));
    return a;
}

void check_same(Artifact a, Artifact b) {
    CHECK(to_text(fields(a.config)) == to_text(fields(b.config)));
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (size_t i = 0; i < a.tensors.size(); ++i) {
        const ArtifactTensor &x = a.tensors[i], &y = b.tensors[i];
        CAPTURE(x.name);
        CHECK(x.name == y.name);
        CHECK(x.shape == y.shape);
        CHECK(x.dtype == y.dtype);
        CHECK(x.bits == y.bits);
        CHECK(x.q == y.q);
        CHECK(x.scales == y.scales);
        REQUIRE(x.values.size() == y.values.size());
        for (size_t j = 0; j < x.values.size(); ++j) {
            const float v = x.values[j];
            const float stored = x.dtype == DType::F16 ? round_to_f16(v) : x.dtype == DType::BF16 ? bf16_to_f32(f32_to_bf16(v)) : v;
            CHECK(y.values[j] == stored);
        }
    }
}

// Recomputes the trailing SHA-256 so that a test can reach the checks behind it.
void reseal(std::vector<uint8_t>& f) {
    const size_t n = f.size() - kArtifactChecksumBytes;
    const std::string hex = sha256_hex(f.data(), n);
    for (size_t i = 0; i < 32; ++i) f[n + i] = uint8_t(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
}

std::string decode_error(const std::vector<uint8_t>& f) {
    try {
        decode_artifact(f.data(), f.size(), "runs/x/model.pgolf");
    } catch (const Error& e) {
        return e.what();
    }
    return "(accepted)";
}

}  // namespace

TEST_CASE("artifact: round trip of every dtype with both codecs, through a file") {
    const uint32_t seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    const Artifact a = sample_artifact(rng);
    for (Codec codec : {Codec::Lzma, Codec::Zlib}) {
        const std::vector<uint8_t> bytes = encode_artifact(a, codec);
        check_same(a, decode_artifact(bytes.data(), bytes.size(), "mem"));
    }
    TempDir dir;
    write_artifact(dir / "a.pgolf", a, Codec::Lzma);
    check_same(a, read_artifact(dir / "a.pgolf"));
    const ArtifactSizes sz = artifact_sizes(a);
    CHECK(sz.lzma == fs::file_size(dir / "a.pgolf"));
    CHECK(sz.zlib == encode_artifact(a, Codec::Zlib).size());
    CHECK(sz.body > 0);
    const ArtifactTensor& t = *a.find("attn.int6");
    const std::vector<float> w = t.dequantize();
    CHECK(w[33 * 5 + 2] == float(t.q[33 * 5 + 2]) * t.scales[5]);
}

TEST_CASE("artifact: writer refuses tensors that do not match their description") {
    std::mt19937 rng(std::random_device{}());
    Artifact a = sample_artifact(rng);
    a.tensors[4].q[3] = 32;  // outside int6
    CHECK_THROWS_WITH_AS(encode_artifact(a, Codec::Zlib), doctest::Contains("outside int6"), Error);
    a = sample_artifact(rng);
    a.tensors[1].values.pop_back();
    CHECK_THROWS_WITH_AS(encode_artifact(a, Codec::Zlib), doctest::Contains("does not match its shape"), Error);
    a = sample_artifact(rng);
    a.tensors[2].name = a.tensors[0].name;
    CHECK_THROWS_WITH_AS(encode_artifact(a, Codec::Zlib), doctest::Contains("repeated"), Error);
}

TEST_CASE("artifact: the model config inside an artifact round trips and bad text is rejected") {
    std::mt19937 rng(std::random_device{}());
    Artifact a = sample_artifact(rng);
    a.config.vocab_size = 4096;
    a.config.swiglu = true;
    a.config.ln_scale = false;
    a.config.qk_gain_init = 1.0f / 3.0f;
    a.config.recur_from = float(rng() % 1000) / 999.0f;
    const std::vector<uint8_t> bytes = encode_artifact(a, Codec::Zlib);
    Artifact back = decode_artifact(bytes.data(), bytes.size(), "f");
    CHECK(to_text(fields(back.config)) == to_text(fields(a.config)));
    CHECK(back.config.qk_gain_init == a.config.qk_gain_init);
    CHECK(back.config.swiglu);

    ModelConfig m = a.config;
    const std::string text = to_text(fields(m));
    auto err = [](const std::string& t) {
        ModelConfig c;
        try {
            from_text(fields(c), t, "art.bin");
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("(accepted)");
    };
    CHECK(err(text.substr(text.find('\n') + 1)) == "art.bin: config lacks 'vocab-size'");
    CHECK(err(text + "tie-weights=1\n") == "art.bin: unknown config key 'tie-weights'");
    CHECK(err(text + "swiglu=true\n") == "art.bin: config key 'swiglu' appears twice");
    std::string bad = text;
    bad.replace(bad.find("swiglu=true"), 11, "swiglu=7");
    CHECK(err(bad) == "art.bin: bad value '7' for config key 'swiglu'");
}

TEST_CASE("artifact: each kind of corruption is rejected with one line naming the file") {
    const uint32_t seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    const Artifact a = sample_artifact(rng);
    for (Codec codec : {Codec::Lzma, Codec::Zlib}) {
        CAPTURE(codec_name(codec));
        const std::vector<uint8_t> good = encode_artifact(a, codec);
        const std::string name = "runs/x/model.pgolf: ";
        const size_t payload = good.size() - kArtifactHeaderBytes - kArtifactChecksumBytes;

        std::vector<uint8_t> f = good;
        f[kArtifactHeaderBytes + rng() % payload] ^= uint8_t(1 + rng() % 255);
        CHECK(decode_error(f) == name + "checksum mismatch (the file is corrupted)");

        f = good;
        f[good.size() - 1 - rng() % kArtifactChecksumBytes] ^= 0x10;
        CHECK(decode_error(f) == name + "checksum mismatch (the file is corrupted)");

        for (size_t len : {size_t(0), size_t(7), size_t(20), size_t(kArtifactHeaderBytes + rng() % payload), good.size() - 1}) {
            CAPTURE(len);
            f.assign(good.begin(), good.begin() + len);
            CHECK(decode_error(f).rfind(name + "truncated (", 0) == 0);
        }

        f = good;
        f.push_back(0);
        CHECK(decode_error(f) == name + "trailing data after the artifact (1 bytes)");

        f = good;
        f[0] = 'X';
        CHECK(decode_error(f) == name + "not a pgolf artifact (bad magic)");

        f = good;
        f[8] = 2;
        CHECK(decode_error(f) == name + "artifact format version 2, this pgolf reads version 1");

        // A stream that passes the checksum but does not decompress: half of it, resealed.
        f = good;
        const uint64_t half = payload / 2;
        f.erase(f.begin() + kArtifactHeaderBytes + half, f.end() - kArtifactChecksumBytes);
        std::memcpy(f.data() + 24, &half, 8);
        reseal(f);
        CHECK(decode_error(f) == name + "corrupt " + codec_name(codec) + " stream");
    }

    // A table that disagrees with the data, in a well-formed zlib stream.
    const std::vector<uint8_t> good = encode_artifact(a, Codec::Zlib);
    uint64_t body_n;
    std::memcpy(&body_n, good.data() + 16, 8);
    std::vector<uint8_t> body(body_n);
    uLongf out_n = body_n;
    REQUIRE(uncompress(body.data(), &out_n, good.data() + kArtifactHeaderBytes, good.size() - 64) == Z_OK);
    const std::string dim_of_f32 = std::string("gains.f32") + char(DType::F32) + char(0) + char(1);
    auto at = std::search(body.begin(), body.end(), dim_of_f32.begin(), dim_of_f32.end());
    REQUIRE(at != body.end());
    at[dim_of_f32.size()] = 38;  // 37 -> 38 floats
    uLongf zn = compressBound(body.size());
    std::vector<uint8_t> z(zn);
    REQUIRE(compress2(z.data(), &zn, body.data(), body.size(), 9) == Z_OK);
    std::vector<uint8_t> f(good.begin(), good.begin() + kArtifactHeaderBytes);
    const uint64_t zsize = zn;
    std::memcpy(f.data() + 24, &zsize, 8);
    f.insert(f.end(), z.begin(), z.begin() + zn);
    f.resize(f.size() + kArtifactChecksumBytes);
    reseal(f);
    CHECK(decode_error(f).rfind("runs/x/model.pgolf: inconsistent tensor table (tensors need ", 0) == 0);

    CHECK_THROWS_WITH_AS(read_artifact("/nonexistent/model.pgolf"), doctest::Contains("/nonexistent/model.pgolf: cannot open"), Error);
}

TEST_CASE("size: budget boundaries are exact") {
    const Budget under = check_budget(15999999 - 16630, 16630);
    CHECK(under.total == 15999999);
    CHECK(under.margin == 1);
    CHECK(under.fits());
    const Budget at = check_budget(16000000 - 16630, 16630);
    CHECK(at.total == 16000000);
    CHECK(at.margin == 0);
    CHECK(at.fits());
    const Budget over = check_budget(16000001 - 16630, 16630);
    CHECK(over.total == 16000001);
    CHECK(over.margin == -1);
    CHECK(!over.fits());
}

TEST_CASE("size: report sums the artifact file and the code archive") {
    std::mt19937 rng(std::random_device{}());
    TempDir dir;
    const Artifact a = sample_artifact(rng);
    write_artifact(dir / "m.pgolf", a, Codec::Lzma);
    const long long model = (long long)fs::file_size(dir / "m.pgolf");
    for (long long extra : {-1, 0, 1}) {
        const std::string code = dir / "code.tar.xz";
        std::vector<uint8_t> filler(size_t(kBudgetBytes - model + extra), 0x5a);
        write_file_atomic(code, filler.data(), filler.size());
        std::FILE* out = std::tmpfile();
        const Budget b = size_report(dir / "m.pgolf", code, out);
        std::fclose(out);
        CHECK(b.model_bytes == model);
        CHECK(b.total == kBudgetBytes + extra);
        CHECK(b.fits() == (extra <= 0));
    }
    CHECK_THROWS_WITH_AS(size_report(dir / "m.pgolf", dir / "none.tar.xz", stdout), doctest::Contains("code archive not found"), Error);
    std::vector<uint8_t> bad = read_file(dir / "m.pgolf");
    bad[40] ^= 1;
    write_file_atomic(dir / "bad.pgolf", bad.data(), bad.size());
    CHECK_THROWS_WITH_AS(size_report(dir / "bad.pgolf", dir / "code.tar.xz", stdout), doctest::Contains("checksum mismatch"), Error);
}
