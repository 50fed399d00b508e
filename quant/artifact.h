// The artifact: one file holding everything `pgolf eval --artifact` needs to rebuild and
// run the model (config + weights), and nothing else.
//
// File: header (32 bytes) | payload | SHA-256 of header and payload (32 bytes)
//   header: magic "PGOLFART", u32 version, u32 codec, u64 body bytes, u64 payload bytes
//   payload: the body compressed with the codec (raw LZMA2 preset 9e with lc=0 pb=0, or zlib -9)
// Body (little-endian): u32 length + ModelConfig as key=value lines; u32 tensor count;
//   per tensor: u8 name length, name, u8 dtype, u8 bits, u8 ndim, u32 dims[ndim];
//   then each tensor's data in table order: float dtypes byte-shuffled; Int tensors their
//   fp16 row scales byte-shuffled, then their values as zigzag bit planes (quant/pack.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/config.h"

namespace pg {

constexpr uint32_t kArtifactVersion = 1;
constexpr size_t kArtifactHeaderBytes = 32;
constexpr size_t kArtifactChecksumBytes = 32;

enum class DType : uint8_t { F32 = 0, F16 = 1, BF16 = 2, Int = 3 };
enum class Codec : uint8_t { Lzma = 0, Zlib = 1 };

struct ArtifactTensor {
    std::string name;
    std::vector<int> shape;       // row = all dims after the first
    DType dtype = DType::F32;
    int bits = 0;                 // Int: 2..8, values in [-(2^(bits-1) - 1), 2^(bits-1) - 1]
    std::vector<float> values;    // float dtypes (rounded to the dtype when written)
    std::vector<int8_t> q;        // Int
    std::vector<float> scales;    // Int: one per row, stored as fp16

    size_t numel() const;
    int rows() const { return shape.empty() ? 1 : shape[0]; }
    // The weights it stands for: values, or q * scale of the row.
    std::vector<float> dequantize() const;
};

struct Artifact {
    ModelConfig config;
    std::vector<ArtifactTensor> tensors;
    const ArtifactTensor* find(const std::string& name) const;
};

std::string dtype_name(DType dtype, int bits);  // "f16", "int6", ...
const char* codec_name(Codec codec);

// Every ModelConfig field as key=value lines; the parser wants exactly those keys, then validates.

std::vector<uint8_t> encode_artifact(const Artifact& a, Codec codec);
// source names the file in error messages.
Artifact decode_artifact(const uint8_t* data, size_t n, const std::string& source);
void write_artifact(const std::string& path, const Artifact& a, Codec codec);  // atomic
Artifact read_artifact(const std::string& path);

struct ArtifactSizes {
    size_t body = 0;  // uncompressed
    size_t lzma = 0;  // whole file with each codec
    size_t zlib = 0;
};
ArtifactSizes artifact_sizes(const Artifact& a);

}  // namespace pg
