// Session 25: the CPU part of the softcap_ce kernel test at call 9's failing seed (n = 1, V = 17):
// the oracle's dz against the plain ops, relative to dz and with the target's term added back.
//   g++ -std=c++17 -O2 -fopenmp -I. docs/benchmarks/logs/2026-11-24_session25/scripts/s25_softcap_seed.cpp -o /tmp/sc && /tmp/sc
#include <cstdio>
#include <random>
#include <vector>
#include <cmath>
#include <cstring>
#include "model/ops_ref.h"
using Vec = std::vector<double>;
Vec randn(std::mt19937_64& rng, size_t n, double scale = 1.0) {
    std::normal_distribution<double> d(0.0, scale);
    Vec v(n);
    for (double& x : v) x = d(rng);
    return v;
}
std::vector<int32_t> randint(std::mt19937_64& rng, size_t n, int hi) {
    std::uniform_int_distribution<int32_t> d(0, hi - 1);
    std::vector<int32_t> v(n);
    for (int32_t& x : v) x = d(rng);
    return v;
}
float bf(double x) { // round to bf16 (nearest even) then back
    float f = float(x); uint32_t u; memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); u &= 0xffff0000u; memcpy(&f, &u, 4); return f; }
double rel(const Vec& g, const Vec& r) { double a=0,b=0; for (size_t i=0;i<g.size();++i){a+=(g[i]-r[i])*(g[i]-r[i]); b+=r[i]*r[i];} return std::sqrt(a/b); }
int main() {
    std::mt19937_64 rng(10973221134785695547ull);
    for (int n : {1}) for (int V : {17}) for (double cap : {30.0, 0.0}) {
        const size_t nv = size_t(n) * V;
        Vec z = randn(rng, nv, 12.0); for (double& x : z) x = bf(x);
        auto targets = randint(rng, n, V);
        Vec losses(n), lse(n), dz(nv);
        pg::softcap_ce_forward(losses.data(), lse.data(), z.data(), targets.data(), n, V, cap);
        Vec lse32 = lse; for (double& x : lse32) x = float(x);
        pg::softcap_ce_backward(dz.data(), z.data(), lse32.data(), targets.data(), n, V, cap, 1.0);
        Vec s = z, l2(n), ds(nv, 0.0), dz2(nv, 0.0);
        if (cap > 0) pg::softcap_forward(s.data(), z.data(), nv, cap);
        pg::crossentropy_forward(l2.data(), s.data(), targets.data(), n, V);
        pg::crossentropy_backward(ds.data(), s.data(), targets.data(), 1.0, n, V);
        if (cap > 0) pg::softcap_backward(dz2.data(), ds.data(), s.data(), nv, cap); else dz2 = ds;
        Vec a = dz, b = dz2;
        for (int r = 0; r < n; ++r) { const size_t t = size_t(r) * V + targets[r]; const double d = cap > 0 ? 1 - (s[t] / cap) * (s[t] / cap) : 1; a[t] += d; b[t] += d; }
        printf("cap %g: loss %g lse %g target %d; dz rel %g; with the target's term added back %g\n", cap, losses[0], lse[0], targets[0], rel(dz, dz2), rel(a, b));
    }
}
