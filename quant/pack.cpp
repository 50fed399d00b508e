#include "quant/pack.h"

#include <cstring>

#include "common/check.h"

namespace pg {

size_t packed_int_bytes(size_t n, int bits) { return size_t(bits) * ((n + 7) / 8); }

void pack_ints(const int8_t* values, size_t n, int bits, uint8_t* dst) {
    PG_CHECK(bits >= 2 && bits <= 8);
    const size_t plane = (n + 7) / 8;
    std::memset(dst, 0, plane * bits);
    const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    bool in_range = true;
    for (size_t i0 = 0; i0 < n; i0 += 8) {
        uint8_t z[8] = {};
        const size_t m = n - i0 < 8 ? n - i0 : 8;
        for (size_t k = 0; k < m; ++k) {
            const int v = values[i0 + k];
            in_range &= v >= lo && v <= hi;
            z[k] = static_cast<uint8_t>(v < 0 ? -2 * v - 1 : 2 * v);
        }
        for (int b = 0; b < bits; ++b) {
            uint8_t byte = 0;
            for (size_t k = 0; k < m; ++k) byte |= static_cast<uint8_t>(((z[k] >> b) & 1u) << k);
            dst[b * plane + i0 / 8] = byte;
        }
    }
    if (!in_range) fail("pack_ints: a value does not fit in %d bits", bits);
}

void unpack_ints(const uint8_t* src, size_t n, int bits, int8_t* values) {
    PG_CHECK(bits >= 2 && bits <= 8);
    const size_t plane = (n + 7) / 8;
    for (size_t i0 = 0; i0 < n; i0 += 8) {
        const size_t m = n - i0 < 8 ? n - i0 : 8;
        unsigned z[8] = {};
        for (int b = 0; b < bits; ++b) {
            const unsigned byte = src[b * plane + i0 / 8];
            for (size_t k = 0; k < m; ++k) z[k] |= ((byte >> k) & 1u) << b;
        }
        for (size_t k = 0; k < m; ++k)
            values[i0 + k] = static_cast<int8_t>((z[k] & 1u) ? -int(z[k] >> 1) - 1 : int(z[k] >> 1));
    }
}

void shuffle_bytes(const void* src, size_t n, int width, uint8_t* dst) {
    const uint8_t* s = static_cast<const uint8_t*>(src);
    for (size_t i = 0; i < n; ++i)
        for (int b = 0; b < width; ++b) dst[b * n + i] = s[i * width + b];
}

void unshuffle_bytes(const uint8_t* src, size_t n, int width, void* dst) {
    uint8_t* d = static_cast<uint8_t*>(dst);
    for (size_t i = 0; i < n; ++i)
        for (int b = 0; b < width; ++b) d[i * width + b] = src[b * n + i];
}

}  // namespace pg
