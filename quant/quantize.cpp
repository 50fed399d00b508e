#include "quant/quantize.h"

#include <vector>

#include "common/check.h"
#include "quant/half.h"

namespace pg {

void sdclip_scales(const float* w, int rows, int cols, float k, int bits, float* scales) {
    PG_CHECK(bits >= 2 && bits <= 8 && k > 0);
    const float qmax = float(qmax_for_bits(bits));
    const float min_scale = 1.0f / 16384.0f;
    for (int r = 0; r < rows; ++r) {
        double ss = 0;
        for (int c = 0; c < cols; ++c) ss += double(w[size_t(r) * cols + c]) * w[size_t(r) * cols + c];
        const float rms = float(std::sqrt(ss / cols));
        const float s = round_to_f16(k * rms / qmax);
        scales[r] = s > min_scale ? s : min_scale;
    }
}

void quantize_rows(const float* w, int rows, int cols, const float* scales, int bits, int8_t* q) {
    const int qmax = qmax_for_bits(bits);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const size_t i = size_t(r) * cols + c;
            q[i] = static_cast<int8_t>(quantize_value(w[i], scales[r], qmax));
        }
}

void dequantize_rows(const int8_t* q, int rows, int cols, const float* scales, float* out) {
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) out[size_t(r) * cols + c] = float(q[size_t(r) * cols + c]) * scales[r];
}

void fake_quantize(const float* w, int rows, int cols, float k, int bits, float* out) {
    std::vector<float> scales(rows);
    sdclip_scales(w, rows, cols, k, bits, scales.data());
    std::vector<int8_t> q(size_t(rows) * cols);
    quantize_rows(w, rows, cols, scales.data(), bits, q.data());
    dequantize_rows(q.data(), rows, cols, scales.data(), out);
}

double entropy_bits(const int8_t* q, size_t n) {
    if (n == 0) return 0;
    size_t hist[256] = {};
    for (size_t i = 0; i < n; ++i) hist[uint8_t(q[i])]++;
    double h = 0;
    for (size_t c : hist)
        if (c) h -= double(c) / n * std::log2(double(c) / n);
    return h;
}

}  // namespace pg
