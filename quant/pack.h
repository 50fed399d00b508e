// Storage layouts for the artifact payload, chosen because lzma compresses them best
// (measurements in docs/quantization.md):
// - b-bit signed ints are zigzag-mapped (0,-1,1,-2,.. -> 0,1,2,3,..) and split into b bit
//   planes: plane k holds bit k of every value, 8 values a byte. Same raw size as dense
//   b-bit packing, but 15-20% smaller after lzma than dense packing and 2-7% smaller than
//   one byte per value.
// - floats are byte-shuffled: all first bytes, then all second bytes, ... (exponent bytes
//   cluster and compress).
#pragma once
#include <cstddef>
#include <cstdint>

namespace pg {

// Bytes taken by n values of `bits` bits: bits planes of ceil(n / 8) bytes.
size_t packed_int_bytes(size_t n, int bits);
// bits in 2..8; values in [-2^(bits-1), 2^(bits-1) - 1]. dst gets packed_int_bytes(n, bits).
void pack_ints(const int8_t* values, size_t n, int bits, uint8_t* dst);
void unpack_ints(const uint8_t* src, size_t n, int bits, int8_t* values);

// n elements of `width` bytes each; dst gets n * width bytes.
void shuffle_bytes(const void* src, size_t n, int width, uint8_t* dst);
void unshuffle_bytes(const uint8_t* src, size_t n, int width, void* dst);

}  // namespace pg
