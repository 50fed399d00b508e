// Per-row symmetric quantization. Row r of a [rows, cols] matrix gets one scale s_r and
// integers q in [-qmax, qmax], qmax = 2^(bits-1) - 1; the weight it stands for is q * s_r.
// Scales come from SDClip: s_r = fp16(k * rms(row r) / qmax). The clip k, not the bit width,
// sets the step and so the entropy of q, which is what lzma's size follows; bits only cap
// outliers. Scales are rounded to fp16 here, once, so QAT, GPTQ and the artifact all use
// the value that is stored.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace pg {

inline int qmax_for_bits(int bits) { return (1 << (bits - 1)) - 1; }

// Round to nearest (ties to even) of w / scale, clamped to [-qmax, qmax]. The division is
// the IEEE one so a CUDA kernel using __fdiv_rn and rintf agrees bit for bit.
inline int quantize_value(float w, float scale, int qmax) {
    float r = std::nearbyint(w / scale);
    r = r > float(qmax) ? float(qmax) : r;
    r = r < -float(qmax) ? -float(qmax) : r;
    return int(r);
}

// SDClip scales. rms(row) is the std about zero: equal to the std for zero-mean rows and
// never zero for a nonzero row. Scales are floored at the smallest normal fp16 (2^-14).
void sdclip_scales(const float* w, int rows, int cols, float k, int bits, float* scales);
void quantize_rows(const float* w, int rows, int cols, const float* scales, int bits, int8_t* q);
void dequantize_rows(const int8_t* q, int rows, int cols, const float* scales, float* out);
// sdclip_scales + quantize_rows + dequantize_rows: the forward of STE QAT, bit-identical to
// what a round-to-nearest export stores. out may alias w.
void fake_quantize(const float* w, int rows, int cols, float k, int bits, float* out);

// Empirical entropy of q in bits per value: within a few percent of what lzma achieves on
// the packed planes, so it serves as the size proxy in the clip search.
double entropy_bits(const int8_t* q, size_t n);

}  // namespace pg
