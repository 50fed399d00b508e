#include "quant/artifact.h"

#include <lzma.h>
#include <zlib.h>

#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <type_traits>

#include "common/check.h"
#include "common/io.h"
#include "quant/half.h"
#include "quant/pack.h"
#include "quant/quantize.h"

namespace pg {


size_t ArtifactTensor::numel() const {
    size_t n = 1;
    for (int d : shape) n *= size_t(d);
    return n;
}

std::vector<float> ArtifactTensor::dequantize() const {
    if (dtype != DType::Int) return values;
    std::vector<float> out(numel());
    const size_t cols = out.size() / rows();
    for (size_t i = 0; i < out.size(); ++i) out[i] = float(q[i]) * scales[i / cols];
    return out;
}

const ArtifactTensor* Artifact::find(const std::string& name) const {
    for (const auto& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

std::string dtype_name(DType dtype, int bits) {
    switch (dtype) {
        case DType::F32: return "f32";
        case DType::F16: return "f16";
        case DType::BF16: return "bf16";
        case DType::Int: return format("int%d", bits);
    }
    return "?";
}

const char* codec_name(Codec codec) { return codec == Codec::Lzma ? "lzma" : "zlib"; }

namespace {

int dtype_width(DType d) { return d == DType::F32 ? 4 : 2; }

// Bytes of a tensor's data in the body.
size_t data_bytes(DType dtype, int bits, size_t numel, size_t rows) {
    if (dtype == DType::Int) return 2 * rows + packed_int_bytes(numel, bits);
    return numel * dtype_width(dtype);
}

template <class T>
void put(std::vector<uint8_t>& out, T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // little-endian host (x86-64, aarch64)
    out.insert(out.end(), b, b + sizeof(T));
}

// Bounds-checked reading of the decompressed body.
struct BodyReader {
    const uint8_t* p;
    size_t n, pos = 0;
    const std::string& source;
    const uint8_t* take(size_t k) {
        if (k > n - pos) fail("%s: inconsistent tensor table (body ends early)", source.c_str());
        pos += k;
        return p + pos - k;
    }
    template <class T>
    T get() {
        T v;
        std::memcpy(&v, take(sizeof(T)), sizeof(T));
        return v;
    }
};

// Preset 9e without literal context (lc=0, pb=0): in bit planes and shuffled floats a byte
// says little about the next one, and the context bits only dilute the statistics (0.16%
// smaller on a record-shaped model).
lzma_options_lzma lzma_options() {
    lzma_options_lzma opt;
    PG_CHECK(!lzma_lzma_preset(&opt, 9 | LZMA_PRESET_EXTREME));
    opt.lc = 0;
    opt.lp = 0;
    opt.pb = 0;
    return opt;
}

std::vector<uint8_t> compress(const std::vector<uint8_t>& body, Codec codec) {
    if (codec == Codec::Zlib) {
        uLongf n = compressBound(body.size());
        std::vector<uint8_t> out(n);
        PG_CHECK(compress2(out.data(), &n, body.data(), body.size(), 9) == Z_OK);
        out.resize(n);
        return out;
    }
    lzma_options_lzma opt = lzma_options();
    lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
    std::vector<uint8_t> out(lzma_stream_buffer_bound(body.size()));
    size_t n = 0;
    PG_CHECK(lzma_raw_buffer_encode(filters, nullptr, body.data(), body.size(), out.data(), &n, out.size()) == LZMA_OK);
    out.resize(n);
    return out;
}

std::vector<uint8_t> decompress(const uint8_t* in, size_t n, size_t body_bytes, Codec codec, const std::string& source) {
    std::vector<uint8_t> body(body_bytes);
    bool ok;
    if (codec == Codec::Zlib) {
        uLongf out_n = body_bytes;
        ok = uncompress(body.data(), &out_n, in, n) == Z_OK && out_n == body_bytes;
    } else {
        lzma_options_lzma opt = lzma_options();
        lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
        size_t in_pos = 0, out_pos = 0;
        ok = lzma_raw_buffer_decode(filters, nullptr, in, &in_pos, n, body.data(), &out_pos, body_bytes) == LZMA_OK &&
             in_pos == n && out_pos == body_bytes;
    }
    if (!ok) fail("%s: corrupt %s stream", source.c_str(), codec_name(codec));
    return body;
}

std::vector<uint8_t> sha256_bytes(const uint8_t* p, size_t n) {
    const std::string hex = sha256_hex(p, n);
    std::vector<uint8_t> out(32);
    for (size_t i = 0; i < 32; ++i) out[i] = static_cast<uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    return out;
}

std::vector<uint8_t> encode_body(const Artifact& a) {
    std::vector<uint8_t> body;
    ModelConfig cfg_copy = a.config;
    const std::string cfg = to_text(fields(cfg_copy));
    put<uint32_t>(body, uint32_t(cfg.size()));
    body.insert(body.end(), cfg.begin(), cfg.end());
    put<uint32_t>(body, uint32_t(a.tensors.size()));
    std::set<std::string> names;
    for (const ArtifactTensor& t : a.tensors) {
        const char* nm = t.name.c_str();
        if (t.name.empty() || t.name.size() > 255 || !names.insert(t.name).second)
            fail("artifact: tensor name '%s' is empty, too long or repeated", nm);
        if (t.shape.empty() || t.shape.size() > 4) fail("artifact: tensor %s needs 1 to 4 dims", nm);
        for (int d : t.shape)
            if (d < 1) fail("artifact: tensor %s has a dim < 1", nm);
        const bool is_int = t.dtype == DType::Int;
        if (is_int && (t.bits < 2 || t.bits > 8)) fail("artifact: tensor %s: int bits must be 2..8", nm);
        if (is_int ? (t.q.size() != t.numel() || t.scales.size() != size_t(t.rows())) : t.values.size() != t.numel())
            fail("artifact: tensor %s: data does not match its shape", nm);
        body.push_back(uint8_t(t.name.size()));
        body.insert(body.end(), t.name.begin(), t.name.end());
        body.push_back(uint8_t(t.dtype));
        body.push_back(uint8_t(is_int ? t.bits : 0));
        body.push_back(uint8_t(t.shape.size()));
        for (int d : t.shape) put<uint32_t>(body, uint32_t(d));
    }
    for (const ArtifactTensor& t : a.tensors) {
        const size_t at = body.size();
        body.resize(at + data_bytes(t.dtype, t.bits, t.numel(), t.rows()));
        uint8_t* dst = body.data() + at;
        if (t.dtype == DType::Int) {
            const int qmax = qmax_for_bits(t.bits);
            for (int8_t v : t.q)
                if (v < -qmax || v > qmax) fail("artifact: tensor %s: value %d outside int%d", t.name.c_str(), v, t.bits);
            std::vector<uint16_t> s(t.scales.size());
            for (size_t i = 0; i < s.size(); ++i) s[i] = f32_to_f16(t.scales[i]);
            shuffle_bytes(s.data(), s.size(), 2, dst);
            pack_ints(t.q.data(), t.q.size(), t.bits, dst + 2 * s.size());
        } else if (t.dtype == DType::F32) {
            shuffle_bytes(t.values.data(), t.values.size(), 4, dst);
        } else {
            std::vector<uint16_t> h(t.values.size());
            for (size_t i = 0; i < h.size(); ++i)
                h[i] = t.dtype == DType::F16 ? f32_to_f16(t.values[i]) : f32_to_bf16(t.values[i]);
            shuffle_bytes(h.data(), h.size(), 2, dst);
        }
    }
    return body;
}

Artifact decode_body(const std::vector<uint8_t>& body, const std::string& source) {
    const char* src = source.c_str();
    BodyReader r{body.data(), body.size(), 0, source};
    Artifact a;
    const uint32_t cfg_len = r.get<uint32_t>();
    const uint8_t* cfg = r.take(cfg_len);
    from_text(fields(a.config), std::string(cfg, cfg + cfg_len), source);
    try {
        a.config.validate();
    } catch (const Error& e) {
        fail("%s: %s", source.c_str(), e.what());
    }
    const uint32_t count = r.get<uint32_t>();
    std::set<std::string> names;
    size_t need = 0;
    for (uint32_t i = 0; i < count; ++i) {
        ArtifactTensor t;
        const uint8_t len = r.get<uint8_t>();
        const uint8_t* nm = r.take(len);
        t.name.assign(nm, nm + len);
        const uint8_t dtype = r.get<uint8_t>();
        t.bits = r.get<uint8_t>();
        const uint8_t ndim = r.get<uint8_t>();
        if (len == 0 || !names.insert(t.name).second)
            fail("%s: inconsistent tensor table (empty or repeated name '%s')", src, t.name.c_str());
        if (dtype > uint8_t(DType::Int) || (dtype == uint8_t(DType::Int)) != (t.bits != 0) || t.bits > 8 ||
            t.bits == 1 || ndim < 1 || ndim > 4)
            fail("%s: inconsistent tensor table (tensor '%s': dtype %u, bits %d, %u dims)", src, t.name.c_str(),
                 dtype, t.bits, ndim);
        t.dtype = DType(dtype);
        size_t numel = 1;
        for (int d = 0; d < ndim; ++d) {
            const uint32_t dim = r.get<uint32_t>();
            if (dim < 1 || dim > (1u << 30) || numel > (size_t(1) << 40) / dim)
                fail("%s: inconsistent tensor table (tensor '%s' has dim %u)", src, t.name.c_str(), dim);
            t.shape.push_back(int(dim));
            numel *= dim;
        }
        need += data_bytes(t.dtype, t.bits, numel, size_t(t.shape[0]));
        a.tensors.push_back(std::move(t));
    }
    if (need != body.size() - r.pos)
        fail("%s: inconsistent tensor table (tensors need %zu bytes of data, the body holds %zu)", src, need,
             body.size() - r.pos);
    for (ArtifactTensor& t : a.tensors) {
        const size_t n = t.numel();
        const uint8_t* p = r.take(data_bytes(t.dtype, t.bits, n, t.rows()));
        if (t.dtype == DType::Int) {
            std::vector<uint16_t> s(t.rows());
            unshuffle_bytes(p, s.size(), 2, s.data());
            t.scales.resize(s.size());
            for (size_t i = 0; i < s.size(); ++i) t.scales[i] = f16_to_f32(s[i]);
            t.q.resize(n);
            unpack_ints(p + 2 * s.size(), n, t.bits, t.q.data());
        } else if (t.dtype == DType::F32) {
            t.values.resize(n);
            unshuffle_bytes(p, n, 4, t.values.data());
        } else {
            std::vector<uint16_t> h(n);
            unshuffle_bytes(p, n, 2, h.data());
            t.values.resize(n);
            for (size_t i = 0; i < n; ++i) t.values[i] = t.dtype == DType::F16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
        }
    }
    return a;
}

std::vector<uint8_t> encode_file(const std::vector<uint8_t>& body, Codec codec) {
    const std::vector<uint8_t> payload = compress(body, codec);
    std::vector<uint8_t> out(kArtifactHeaderBytes);
    const uint32_t version = kArtifactVersion, codec_id = uint32_t(codec);
    const uint64_t body_bytes = body.size(), payload_bytes = payload.size();
    std::memcpy(out.data(), "PGOLFART", 8);
    std::memcpy(out.data() + 8, &version, 4);
    std::memcpy(out.data() + 12, &codec_id, 4);
    std::memcpy(out.data() + 16, &body_bytes, 8);
    std::memcpy(out.data() + 24, &payload_bytes, 8);
    out.insert(out.end(), payload.begin(), payload.end());
    const std::vector<uint8_t> sum = sha256_bytes(out.data(), out.size());
    out.insert(out.end(), sum.begin(), sum.end());
    return out;
}

}  // namespace

std::vector<uint8_t> encode_artifact(const Artifact& a, Codec codec) { return encode_file(encode_body(a), codec); }

Artifact decode_artifact(const uint8_t* data, size_t n, const std::string& source) {
    const char* src = source.c_str();
    if (n < 12) fail("%s: truncated (%zu bytes, not even a header)", src, n);
    if (std::memcmp(data, "PGOLFART", 8) != 0) fail("%s: not a pgolf artifact (bad magic)", src);
    uint32_t version, codec;
    uint64_t body_bytes, payload_bytes;
    std::memcpy(&version, data + 8, 4);
    if (version != kArtifactVersion)
        fail("%s: artifact format version %u, this pgolf reads version %u", src, version, kArtifactVersion);
    if (n < kArtifactHeaderBytes) fail("%s: truncated (%zu bytes, the header needs %zu)", src, n, kArtifactHeaderBytes);
    std::memcpy(&codec, data + 12, 4);
    std::memcpy(&body_bytes, data + 16, 8);
    std::memcpy(&payload_bytes, data + 24, 8);
    if (codec > uint32_t(Codec::Zlib)) fail("%s: unknown codec %u", src, codec);
    const uint64_t expect = kArtifactHeaderBytes + payload_bytes + kArtifactChecksumBytes;
    if (payload_bytes > n || n < expect)
        fail("%s: truncated (%zu bytes, the header declares %llu)", src, n, (unsigned long long)expect);
    if (n > expect) fail("%s: trailing data after the artifact (%zu bytes)", src, size_t(n - expect));
    const size_t signed_bytes = kArtifactHeaderBytes + payload_bytes;
    if (sha256_bytes(data, signed_bytes) != std::vector<uint8_t>(data + signed_bytes, data + n))
        fail("%s: checksum mismatch (the file is corrupted)", src);
    const std::vector<uint8_t> body =
        decompress(data + kArtifactHeaderBytes, payload_bytes, body_bytes, Codec(codec), source);
    return decode_body(body, source);
}

void write_artifact(const std::string& path, const Artifact& a, Codec codec) {
    const std::vector<uint8_t> bytes = encode_artifact(a, codec);
    write_file_atomic(path, bytes.data(), bytes.size());
}

Artifact read_artifact(const std::string& path) {
    const std::vector<uint8_t> bytes = read_file(path);
    return decode_artifact(bytes.data(), bytes.size(), path);
}

ArtifactSizes artifact_sizes(const Artifact& a) {
    const std::vector<uint8_t> body = encode_body(a);
    return {body.size(), encode_file(body, Codec::Lzma).size(), encode_file(body, Codec::Zlib).size()};
}

}  // namespace pg
