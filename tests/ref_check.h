// Helpers of the CPU-reference tests: fresh seeds, random tensors and the relative error
// that gradient checks compare with their tolerance.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/config.h"

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

// n floats from N(0, std^2).
inline std::vector<float> gaussian(std::mt19937_64& rng, size_t n, float std = 1.f) {
    std::normal_distribution<float> d(0.f, std);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

// ||x - ref|| / ||ref|| in double (the absolute norm when ref is zero).
template <typename T>
double rel_l2(const std::vector<T>& x, const std::vector<T>& ref) {
    double e = 0, r = 0;
    for (size_t i = 0; i < x.size() && i < ref.size(); ++i) {
        e += (double(x[i]) - double(ref[i])) * (double(x[i]) - double(ref[i]));
        r += double(ref[i]) * double(ref[i]);
    }
    return x.size() != ref.size() ? INFINITY : r > 0 ? std::sqrt(e / r) : std::sqrt(e);
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// A small model of odd shapes for layout-level tests (optimizers, QAT): banks of square, wide
// and tall matrices, an embedding of 37 rows, a 8x5 bigram table and vectors. model_dim
// 24 / head_dim 8 gives 24x24, 8x24, 72x24 and 24x72 banks.
inline ModelConfig odd_model(int model_dim = 24, int head_dim = 8) {
    ModelConfig m;
    m.vocab_size = 37;
    m.model_dim = model_dim;
    m.n_layers = 3;
    m.n_heads = 3;
    m.n_kv_heads = 1;
    m.head_dim = head_dim;
    m.mlp_mult = 3;
    m.rope_dims = 4;
    m.bigram_buckets = 8;
    m.bigram_dim = 5;
    m.xsa_last = 1;
    m.recur_start = 0;
    m.recur_end = 1;
    m.parallel_from = 2;
    m.seq_len = 8;
    return m;
}

}  // namespace pg::test
