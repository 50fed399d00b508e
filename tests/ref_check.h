// Helpers of the CPU-reference tests: fresh seeds, random tensors and the relative error
// that gradient checks compare with their tolerance.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace pg::test {

// A new seed each run; tests print it (INFO) so that a failure can be replayed.
inline uint64_t fresh_seed() {
    std::random_device rd;
    return (uint64_t(rd()) << 32) ^ rd();
}

inline std::vector<double> randn(size_t n, std::mt19937_64& g, double scale = 1.0) {
    std::normal_distribution<double> d(0.0, scale);
    std::vector<double> v(n);
    for (double& x : v) x = d(g);
    return v;
}

// max |a - b| / max(max |b|, floor): the error of `a` relative to the largest entry of the
// reference `b`, so that tiny entries are not judged on their own noise.
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b, double floor = 1e-6) {
    double num = 0, den = floor;
    for (size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, std::abs(a[i] - b[i]));
        den = std::max(den, std::abs(b[i]));
    }
    return num / den;
}

}  // namespace pg::test
