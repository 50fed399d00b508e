// The kernels of model/kernels.cuh against their CPU oracles in model/ops_ref.h (in double),
// forward and backward, on fresh random inputs rounded to bf16 first wherever a kernel reads
// bf16, so both sides see the same values; odd sizes (tails, misaligned rows) and record ones.
// Outputs are poisoned with NaN before each call, so an unwritten element fails; fp32
// gradient outputs start from random values and the check is on what the kernel added.
//
// Tolerances, as ||gpu - ref|| / ||ref||:
//   kExact  conversions and the hash: bit for bit;
//   kF32    fp32 outputs of elementwise arithmetic: fp32 rounding, 1e-5;
//   kSum    fp32 outputs that sum over a row, a head or over rows (statistics, parameter
//           gradients, the loss): 1e-4, for the fp32 summation order;
//   kBf16   bf16 outputs: one rounding to 8 bits of mantissa (about 2e-3), 1e-2.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cuda_check.cuh"
#include "model/kernels.cuh"
#include "model/ops_ref.h"
#include "tests/gpu.h"

using namespace pg;

namespace {

constexpr double kExact = 0, kF32 = 1e-5, kSum = 1e-4, kBf16 = 1e-2;

using Vec = std::vector<double>;

uint64_t fresh_seed() { return std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}(); }

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

template <typename T>
T cast(double x) {
    if constexpr (std::is_same_v<T, bf16>)
        return __float2bfloat16(float(x));
    else
        return T(x);
}
double to_double(float x) { return x; }
double to_double(bf16 x) { return __bfloat162float(x); }

// The values T can hold: what a kernel reading T sees.
template <typename T>
Vec held(Vec v) {
    for (double& x : v) x = to_double(cast<T>(x));
    return v;
}

template <typename T>
DeviceArray<T> upload(const Vec& v) {
    std::vector<T> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = cast<T>(v[i]);
    return DeviceArray<T>(h);
}

template <typename T>
DeviceArray<T> poisoned(size_t n) {
    DeviceArray<T> d(n);
    PG_CHECK(cudaMemset(d.get(), 0xff, n * sizeof(T)));  // NaN in fp32 and bf16
    return d;
}

template <typename T>
Vec download(const T* p, size_t n, cudaStream_t stream) {
    PG_CHECK(cudaStreamSynchronize(stream));
    std::vector<T> h(n);
    if (n) PG_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    Vec v(n);
    for (size_t i = 0; i < n; ++i) v[i] = to_double(h[i]);
    return v;
}
template <typename T>
Vec download(const DeviceArray<T>& d, cudaStream_t stream) {
    return download(d.get(), d.size(), stream);
}

Vec minus(Vec a, const Vec& b) {
    for (size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
    return a;
}

const char* name(float) { return "f32"; }
const char* name(bf16) { return "bf16"; }

struct Stream {
    cudaStream_t s;
    Stream() { PG_CHECK(cudaStreamCreate(&s)); }
    ~Stream() { cudaStreamDestroy(s); }
};

// Checks one output against its reference and keeps the worst error per label for the report.
class Errors {
public:
    void check(const std::string& what, const Vec& got, const Vec& ref, double tol) {
        REQUIRE(got.size() == ref.size());
        double num = 0, den = 0;
        size_t unwritten = 0;
        for (size_t i = 0; i < got.size(); ++i) {
            unwritten += !std::isfinite(got[i]);
            num += (got[i] - ref[i]) * (got[i] - ref[i]);
            den += ref[i] * ref[i];
        }
        const double err = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
        INFO(what << ": relative error " << err << ", tolerance " << tol);
        CHECK(unwritten == 0);
        CHECK(err <= tol);
        auto& w = worst_[what];
        w.first = std::max(w.first, err);
        w.second = tol;
    }
    ~Errors() {
        for (const auto& [what, w] : worst_)
            MESSAGE(what << ": worst relative error " << w.first << " (tol " << w.second << ")");
    }

private:
    std::map<std::string, std::pair<double, double>> worst_;
};

struct RowShape {
    int B, Tn, C;
    int N() const { return B * Tn; }
};
// N in {1, 7, 333, 4096} (as B x Tn, for the kernels that see sequences) x C in {8, 130, 512}.
std::vector<RowShape> row_shapes() {
    std::vector<RowShape> s;
    const std::pair<int, int> seqs[] = {{1, 1}, {1, 7}, {3, 111}, {2, 2048}};
    for (const auto& [B, Tn] : seqs)
        for (int C : {8, 130, 512}) s.push_back({B, Tn, C});
    return s;
}

// ---- typed checks, one per instantiation ----

template <typename Src, typename Dst>
void check_convert(Errors& E, std::mt19937_64& rng, size_t n, size_t off, cudaStream_t st) {
    const Vec src = held<Src>(randn(rng, n + off));
    auto dsrc = upload<Src>(src);
    auto ddst = poisoned<Dst>(n + off);
    convert<Src, Dst>(ddst.get() + off, dsrc.get() + off, n, st);
    const Vec got = download(ddst.get() + off, n, st);
    const Vec ref = held<Dst>(Vec(src.begin() + off, src.end()));
    E.check(std::string("convert ") + name(Src()) + "->" + name(Dst()), got, ref, kExact);

    const Vec base = randn(rng, n + off);
    auto dacc = upload<float>(base);
    accumulate<Src>(dacc.get() + off, dsrc.get() + off, n, st);
    Vec acc_ref(n);
    for (size_t i = 0; i < n; ++i) acc_ref[i] = double(float(base[off + i]) + float(src[off + i]));
    E.check(std::string("accumulate ") + name(Src()), download(dacc.get() + off, n, st), acc_ref, kExact);
}

template <typename Out, typename G>
void check_embedding(Errors& E, std::mt19937_64& rng, int N, int C, cudaStream_t st) {
    const int rows = 50;  // few rows: repeated ids collide in the scatter-add
    const Vec table = held<float>(randn(rng, size_t(rows) * C));
    const std::vector<int32_t> idx = randint(rng, N, rows);
    DeviceArray<int32_t> didx(idx);
    auto dtable = upload<float>(table);
    auto dout = poisoned<Out>(size_t(N) * C);
    embedding_forward<Out>(dout.get(), didx.get(), dtable.get(), N, C, st);
    Vec ref(size_t(N) * C);
    pg::embedding_forward(ref.data(), idx.data(), table.data(), N, C);
    E.check(std::string("embedding_forward ") + name(Out()), download(dout, st), held<Out>(ref),
            std::is_same_v<Out, float> ? kF32 : kBf16);

    const Vec g = held<G>(randn(rng, size_t(N) * C)), base = held<float>(randn(rng, size_t(rows) * C));
    auto dg = upload<G>(g);
    auto dtab = upload<float>(base);
    embedding_backward<G>(dtab.get(), didx.get(), dg.get(), N, C, st);
    Vec dref(size_t(rows) * C, 0.0);
    pg::embedding_backward(dref.data(), idx.data(), g.data(), N, C);
    E.check(std::string("embedding_backward ") + name(G()), minus(download(dtab, st), base), dref, kSum);
}

template <typename In, typename Out>
void check_rmsnorm(Errors& E, std::mt19937_64& rng, int N, int C, cudaStream_t st) {
    const std::string tag = std::string(name(In())) + "->" + name(Out());
    const double scale = 0.75;
    const Vec x = held<In>(randn(rng, size_t(N) * C, 2.0));
    auto dx = upload<In>(x);
    auto dy = poisoned<Out>(size_t(N) * C);
    auto drstd = poisoned<float>(N);
    rmsnorm_forward<In, Out>(dy.get(), drstd.get(), dx.get(), N, C, float(scale), st);
    Vec y(size_t(N) * C), rstd(N);
    pg::rmsnorm_forward(y.data(), rstd.data(), x.data(), N, C, scale);
    E.check("rmsnorm_forward out " + tag, download(dy, st), y, std::is_same_v<Out, float> ? kF32 : kBf16);
    E.check("rmsnorm_forward rstd " + tag, download(drstd, st), rstd, kSum);

    // The backward reads dout of the output's type and the forward's rstd.
    const Vec g = held<Out>(randn(rng, size_t(N) * C)), base = randn(rng, size_t(N) * C);
    auto dg = upload<Out>(g);
    auto ddx = upload<float>(base);
    const Vec rstd32 = held<float>(rstd);
    auto dr = upload<float>(rstd32);
    rmsnorm_backward<In, Out>(ddx.get(), dg.get(), dx.get(), dr.get(), N, C, float(scale), st);
    Vec dref(size_t(N) * C, 0.0);
    pg::rmsnorm_backward(dref.data(), g.data(), x.data(), rstd32.data(), N, C, scale);
    E.check("rmsnorm_backward " + tag, minus(download(ddx, st), base), dref, kSum);
}

template <typename T, typename G>
void check_mix(Errors& E, std::mt19937_64& rng, int N, int C, int wstride, cudaStream_t st) {
    const std::string tag = std::string(name(T())) + "/" + name(G()) + (wstride ? " per-channel" : " scalar");
    const size_t n = size_t(N) * C, nw = wstride ? C : 1;
    const Vec a = held<T>(randn(rng, n)), b = held<T>(randn(rng, n));
    const Vec wa = held<float>(randn(rng, nw)), wb = held<float>(randn(rng, nw));
    auto da = upload<T>(a);
    auto db = upload<T>(b);
    auto dwa = upload<float>(wa);
    auto dwb = upload<float>(wb);
    auto dout = poisoned<T>(n);
    mix_forward<T>(dout.get(), da.get(), db.get(), dwa.get(), dwb.get(), N, C, wstride, st);
    Vec out(n);
    pg::mix_forward(out.data(), a.data(), b.data(), wa.data(), wb.data(), N, C, wstride);
    E.check("mix_forward " + tag, download(dout, st), out, std::is_same_v<T, float> ? kF32 : kBf16);

    const Vec g = held<G>(randn(rng, n));
    const Vec base_a = randn(rng, n), base_b = randn(rng, n), base_wa = randn(rng, nw), base_wb = randn(rng, nw);
    auto dg = upload<G>(g);
    auto gda = upload<float>(base_a);
    auto gdb = upload<float>(base_b);
    auto gwa = upload<float>(base_wa);
    auto gwb = upload<float>(base_wb);
    mix_backward<T, G>(gda.get(), gdb.get(), gwa.get(), gwb.get(), dg.get(), da.get(), db.get(), dwa.get(), dwb.get(),
                       N, C, wstride, st);
    Vec ra(n, 0.0), rb(n, 0.0), rwa(nw, 0.0), rwb(nw, 0.0);
    pg::mix_backward(ra.data(), rb.data(), rwa.data(), rwb.data(), g.data(), a.data(), b.data(), wa.data(), wb.data(),
                     N, C, wstride);
    E.check("mix_backward da " + tag, minus(download(gda, st), base_a), ra, kF32);
    E.check("mix_backward db " + tag, minus(download(gdb, st), base_b), rb, kF32);
    E.check("mix_backward dwa " + tag, minus(download(gwa, st), base_wa), rwa, kSum);
    E.check("mix_backward dwb " + tag, minus(download(gwb, st), base_wb), rwb, kSum);
}

template <typename A>
void check_add_scaled(Errors& E, std::mt19937_64& rng, int N, int C, int wstride, bool alias, cudaStream_t st) {
    const std::string tag =
        std::string(name(A())) + (wstride ? " per-channel" : " scalar") + (alias ? " in place" : "");
    const size_t n = size_t(N) * C, nw = wstride ? C : 1;
    const Vec x = randn(rng, n), a = held<A>(randn(rng, n)), w = randn(rng, nw);
    auto dx = upload<float>(x);
    auto da = upload<A>(a);
    auto dw = upload<float>(w);
    auto dout = poisoned<float>(n);
    float* out = alias ? dx.get() : dout.get();
    add_scaled_forward<A>(out, dx.get(), da.get(), dw.get(), N, C, wstride, st);
    Vec ref(n);
    pg::add_scaled_forward(ref.data(), x.data(), a.data(), w.data(), N, C, wstride);
    E.check("add_scaled_forward " + tag, download(out, n, st), ref, kF32);

    const Vec g = randn(rng, n), base_x = randn(rng, n), base_w = randn(rng, nw);
    auto dg = upload<float>(g);
    auto gdx = upload<float>(base_x);
    auto gda = poisoned<bf16>(n);
    auto gdw = upload<float>(base_w);
    add_scaled_backward<A>(gdx.get(), gda.get(), gdw.get(), dg.get(), da.get(), dw.get(), N, C, wstride, st);
    Vec rx(n, 0.0), ra(n, 0.0), rw(nw, 0.0);
    pg::add_scaled_backward(rx.data(), ra.data(), rw.data(), g.data(), a.data(), w.data(), N, C, wstride);
    E.check("add_scaled_backward dx " + tag, minus(download(gdx, st), base_x), rx, kF32);
    E.check("add_scaled_backward da " + tag, download(gda, st), ra, kBf16);
    E.check("add_scaled_backward dw " + tag, minus(download(gdw, st), base_w), rw, kSum);
}

}  // namespace

TEST_CASE("kernel convert and accumulate: every type pair, aligned and not") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    Errors E;
    for (size_t n : {size_t(1), size_t(7), size_t(333 * 130), size_t(4096) * 512 + 3})
        for (size_t off : {0, 1}) {  // off 1: no 16-byte alignment anywhere
            CAPTURE(n);
            CAPTURE(off);
            check_convert<float, float>(E, rng, n, off, st.s);
            check_convert<float, bf16>(E, rng, n, off, st.s);
            check_convert<bf16, float>(E, rng, n, off, st.s);
            check_convert<bf16, bf16>(E, rng, n, off, st.s);
        }
}

TEST_CASE("kernel embedding and bigram hash: gather, scatter-add, buckets") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    Errors E;
    for (const RowShape& s : row_shapes()) {
        CAPTURE(s.N());
        CAPTURE(s.C);
        check_embedding<float, float>(E, rng, s.N(), s.C, st.s);
        check_embedding<bf16, bf16>(E, rng, s.N(), s.C, st.s);
    }
    for (const RowShape& s : row_shapes()) {
        if (s.C != 8) continue;
        for (int n_buckets : {17, 4096}) {
            CAPTURE(s.B);
            CAPTURE(s.Tn);
            CAPTURE(n_buckets);
            const std::vector<int32_t> idx = randint(rng, s.N(), 8192);
            DeviceArray<int32_t> didx(idx), dbuckets(s.N());
            PG_CHECK(cudaMemset(dbuckets.get(), 0xff, s.N() * sizeof(int32_t)));
            bigram_hash(dbuckets.get(), didx.get(), s.B, s.Tn, n_buckets, st.s);
            PG_CHECK(cudaStreamSynchronize(st.s));
            std::vector<int32_t> ref(s.N());
            pg::bigram_hash(ref.data(), idx.data(), s.B, s.Tn, n_buckets);
            CHECK(dbuckets.download() == ref);
        }
    }
}

TEST_CASE("kernel rmsnorm: forward and backward, fp32 and bf16 in and out") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    Errors E;
    for (const RowShape& s : row_shapes()) {
        CAPTURE(s.N());
        CAPTURE(s.C);
        check_rmsnorm<float, float>(E, rng, s.N(), s.C, st.s);
        check_rmsnorm<float, bf16>(E, rng, s.N(), s.C, st.s);
        check_rmsnorm<bf16, float>(E, rng, s.N(), s.C, st.s);
        check_rmsnorm<bf16, bf16>(E, rng, s.N(), s.C, st.s);
    }
    // A row longer than one block holds in registers (8192 values) is read twice.
    check_rmsnorm<float, bf16>(E, rng, 3, 8192 + 130, st.s);
}

TEST_CASE("kernel qk_prep: QK norm, partial RoPE and q gain, forward and backward") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    Errors E;
    struct Head {
        int H, hd, rope_dims;
    };
    const double base = 10000.0;
    for (const RowShape& s : row_shapes()) {
        if (s.C != 8) continue;  // the row shapes' sequences, once each
        for (const Head& hs : {Head{8, 64, 16}, Head{4, 64, 16}, Head{8, 64, 64}, Head{3, 20, 6}})
            for (const bool norm : {true, false})
                for (const bool with_gain : {true, false}) {
                    const int N = s.N(), H = hs.H, hd = hs.hd, rd = hs.rope_dims;
                    const size_t n = size_t(N) * H * hd;
                    CAPTURE(s.B);
                    CAPTURE(s.Tn);
                    CAPTURE(H);
                    CAPTURE(hd);
                    CAPTURE(rd);
                    CAPTURE(norm);
                    CAPTURE(with_gain);
                    const std::string tag = std::string(norm ? "norm" : "no norm") + (with_gain ? ", gain" : "");
                    const Vec x = held<bf16>(randn(rng, n, 1.5)), gain = randn(rng, H, 1.0);
                    auto dx = upload<bf16>(x);
                    auto dgain = upload<float>(gain);
                    auto dout = poisoned<bf16>(n);
                    auto drstd = poisoned<float>(size_t(N) * H);
                    qk_prep_forward(dout.get(), norm ? drstd.get() : nullptr, dx.get(),
                                    with_gain ? dgain.get() : nullptr, s.B, s.Tn, H, hd, rd, float(base), norm, st.s);
                    // Oracle: rmsnorm over each head, then rope, then the gain.
                    Vec y = x, rstd(size_t(N) * H, 1.0), z(n), o(n);
                    if (norm) pg::rmsnorm_forward(y.data(), rstd.data(), x.data(), N * H, hd, 1.0);
                    pg::rope_forward(z.data(), y.data(), s.B, s.Tn, H, hd, rd, base);
                    if (with_gain)
                        pg::head_gain_forward(o.data(), z.data(), gain.data(), N, H, hd);
                    else
                        o = z;
                    E.check("qk_prep_forward out, " + tag, download(dout, st.s), o, kBf16);
                    if (norm) E.check("qk_prep_forward rstd", download(drstd, st.s), rstd, kSum);

                    const Vec g = held<bf16>(randn(rng, n)), base_gain = randn(rng, H);
                    const Vec rstd32 = held<float>(rstd);
                    auto dg = upload<bf16>(g);
                    auto dr = upload<float>(rstd32);
                    auto ddx = poisoned<bf16>(n);
                    auto ddgain = upload<float>(base_gain);
                    qk_prep_backward(ddx.get(), with_gain ? ddgain.get() : nullptr, dg.get(), dx.get(),
                                     norm ? dr.get() : nullptr, with_gain ? dgain.get() : nullptr, s.B, s.Tn, H, hd, rd,
                                     float(base), norm, st.s);
                    Vec dz = g, dgain_ref(H, 0.0), dy(n, 0.0), dxr(n, 0.0);
                    if (with_gain) {
                        std::fill(dz.begin(), dz.end(), 0.0);
                        pg::head_gain_backward(dz.data(), dgain_ref.data(), g.data(), z.data(), gain.data(), N, H, hd);
                    }
                    pg::rope_backward(dy.data(), dz.data(), s.B, s.Tn, H, hd, rd, base);
                    if (norm)
                        pg::rmsnorm_backward(dxr.data(), dy.data(), x.data(), rstd32.data(), N * H, hd, 1.0);
                    else
                        dxr = dy;
                    E.check("qk_prep_backward dinp, " + tag, download(ddx, st.s), dxr, kBf16);
                    if (with_gain)
                        E.check("qk_prep_backward dgain", minus(download(ddgain, st.s), base_gain), dgain_ref, kSum);
                }
    }
}

TEST_CASE("kernel xsa: forward and backward, grouped and not") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    Errors E;
    struct Head {
        int H, Hkv, hd;
    };
    for (int N : {1, 7, 333, 4096})
        for (const Head& hs : {Head{8, 4, 64}, Head{4, 4, 64}, Head{6, 2, 20}}) {
            const int H = hs.H, Hkv = hs.Hkv, hd = hs.hd;
            CAPTURE(N);
            CAPTURE(H);
            CAPTURE(Hkv);
            CAPTURE(hd);
            const size_t ny = size_t(N) * H * hd, nv = size_t(N) * Hkv * hd;
            const Vec y = held<bf16>(randn(rng, ny)), v = held<bf16>(randn(rng, nv));
            auto dy_in = upload<bf16>(y);
            auto dv_in = upload<bf16>(v);
            auto dout = poisoned<bf16>(ny);
            xsa_forward(dout.get(), dy_in.get(), dv_in.get(), N, H, Hkv, hd, st.s);
            Vec out(ny);
            pg::xsa_forward(out.data(), y.data(), v.data(), N, H, Hkv, hd);
            E.check("xsa_forward", download(dout, st.s), out, kBf16);

            const Vec g = held<bf16>(randn(rng, ny)), base_v = randn(rng, nv);
            auto dg = upload<bf16>(g);
            auto gdy = poisoned<bf16>(ny);
            auto gdv = upload<float>(base_v);
            xsa_backward(gdy.get(), gdv.get(), dg.get(), dy_in.get(), dv_in.get(), N, H, Hkv, hd, st.s);
            Vec ry(ny, 0.0), rv(nv, 0.0);
            pg::xsa_backward(ry.data(), rv.data(), g.data(), y.data(), v.data(), N, H, Hkv, hd);
            E.check("xsa_backward dy", download(gdy, st.s), ry, kBf16);
            E.check("xsa_backward dv", minus(download(gdv, st.s), base_v), rv, kSum);
        }
}

TEST_CASE("kernel mlp activations: leaky_relu2 and swiglu, forward and backward") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    Errors E;
    const double slope = 0.5;
    for (size_t n : {size_t(1), size_t(7), size_t(333 * 130), size_t(4096) * 512 + 3}) {
        CAPTURE(n);
        const Vec x = held<bf16>(randn(rng, n)), g = held<bf16>(randn(rng, n));
        auto dx = upload<bf16>(x);
        auto dg = upload<bf16>(g);
        auto dout = poisoned<bf16>(n);
        leaky_relu2_forward(dout.get(), dx.get(), n, float(slope), st.s);
        Vec out(n), din(n, 0.0);
        pg::leaky_relu2_forward(out.data(), x.data(), n, slope);
        E.check("leaky_relu2_forward", download(dout, st.s), out, kBf16);
        auto ddin = poisoned<bf16>(n);
        leaky_relu2_backward(ddin.get(), dg.get(), dx.get(), n, float(slope), st.s);
        pg::leaky_relu2_backward(din.data(), g.data(), x.data(), n, slope);
        E.check("leaky_relu2_backward", download(ddin, st.s), din, kBf16);
    }
    for (const RowShape& s : row_shapes()) {
        const int N = s.N(), hidden = s.C;
        CAPTURE(N);
        CAPTURE(hidden);
        const size_t n = size_t(N) * hidden;
        const Vec x = held<bf16>(randn(rng, 2 * n, 2.0)), g = held<bf16>(randn(rng, n));
        auto dx = upload<bf16>(x);
        auto dg = upload<bf16>(g);
        auto dout = poisoned<bf16>(n);
        swiglu_forward(dout.get(), dx.get(), N, hidden, st.s);
        Vec out(n), din(2 * n, 0.0);
        pg::swiglu_forward(out.data(), x.data(), N, hidden);
        E.check("swiglu_forward", download(dout, st.s), out, kBf16);
        auto ddin = poisoned<bf16>(2 * n);
        swiglu_backward(ddin.get(), dg.get(), dx.get(), N, hidden, st.s);
        pg::swiglu_backward(din.data(), g.data(), x.data(), N, hidden);
        E.check("swiglu_backward", download(ddin, st.s), din, kBf16);
    }
}

TEST_CASE("kernel residual mixes: smear, skip_mix, mix, add_scaled, forward and backward") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    Errors E;
    for (const RowShape& s : row_shapes()) {
        const int N = s.N(), C = s.C;
        const size_t n = size_t(N) * C;
        CAPTURE(s.B);
        CAPTURE(s.Tn);
        CAPTURE(C);
        {  // SmearGate
            const Vec x = randn(rng, n), gate = randn(rng, C), g = randn(rng, n);
            const Vec base_x = randn(rng, n), base_gate = randn(rng, C);
            auto dx = upload<float>(x);
            auto dgate = upload<float>(gate);
            auto dout = poisoned<float>(n);
            smear_forward(dout.get(), dx.get(), dgate.get(), s.B, s.Tn, C, st.s);
            Vec out(n), rdx(n, 0.0), rdgate(C, 0.0);
            pg::smear_forward(out.data(), x.data(), gate.data(), s.B, s.Tn, C);
            E.check("smear_forward", download(dout, st.s), out, kF32);
            auto dg = upload<float>(g);
            auto gdx = upload<float>(base_x);
            auto gdgate = upload<float>(base_gate);
            smear_backward(gdx.get(), gdgate.get(), dg.get(), dx.get(), dgate.get(), s.B, s.Tn, C, st.s);
            pg::smear_backward(rdx.data(), rdgate.data(), g.data(), x.data(), gate.data(), s.B, s.Tn, C);
            E.check("smear_backward dinp", minus(download(gdx, st.s), base_x), rdx, kF32);
            E.check("smear_backward dgate", minus(download(gdgate, st.s), base_gate), rdgate, kSum);
        }
        {  // U-Net skip
            const Vec x = randn(rng, n), sk = randn(rng, n), w = randn(rng, C), gate = randn(rng, C), g = randn(rng, n);
            const Vec bx = randn(rng, n), bs = randn(rng, n), bw = randn(rng, C), bgate = randn(rng, C);
            auto dx = upload<float>(x);
            auto ds = upload<float>(sk);
            auto dw = upload<float>(w);
            auto dgate = upload<float>(gate);
            auto dout = poisoned<float>(n);
            skip_mix_forward(dout.get(), dx.get(), ds.get(), dw.get(), dgate.get(), N, C, st.s);
            Vec out(n), rx(n, 0.0), rs(n, 0.0), rw(C, 0.0), rgate(C, 0.0);
            pg::skip_mix_forward(out.data(), x.data(), sk.data(), w.data(), gate.data(), N, C);
            E.check("skip_mix_forward", download(dout, st.s), out, kF32);
            auto dg = upload<float>(g);
            auto gx = upload<float>(bx);
            auto gs = upload<float>(bs);
            auto gw = upload<float>(bw);
            auto ggate = upload<float>(bgate);
            skip_mix_backward(gx.get(), gs.get(), gw.get(), ggate.get(), dg.get(), dx.get(), ds.get(), dw.get(),
                              dgate.get(), N, C, st.s);
            pg::skip_mix_backward(rx.data(), rs.data(), rw.data(), rgate.data(), g.data(), x.data(), sk.data(),
                                  w.data(), gate.data(), N, C);
            E.check("skip_mix_backward dx", minus(download(gx, st.s), bx), rx, kF32);
            E.check("skip_mix_backward ds", minus(download(gs, st.s), bs), rs, kF32);
            E.check("skip_mix_backward dw", minus(download(gw, st.s), bw), rw, kSum);
            E.check("skip_mix_backward dgate", minus(download(ggate, st.s), bgate), rgate, kSum);
        }
        for (int wstride : {0, 1}) {
            check_mix<float, float>(E, rng, N, C, wstride, st.s);
            check_mix<float, bf16>(E, rng, N, C, wstride, st.s);
            check_mix<bf16, float>(E, rng, N, C, wstride, st.s);
            check_mix<bf16, bf16>(E, rng, N, C, wstride, st.s);
            check_add_scaled<float>(E, rng, N, C, wstride, false, st.s);
            check_add_scaled<float>(E, rng, N, C, wstride, true, st.s);
            check_add_scaled<bf16>(E, rng, N, C, wstride, false, st.s);
        }
    }
}

TEST_CASE("kernel softcap_ce: loss and gradient through the softcap, in place and not") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    Errors E;
    for (int n : {1, 7, 300})
        for (int V : {17, 1024, 8192, 10000})  // 10000: longer than the rows kept in registers
            for (double cap : {30.0, 0.0}) {
                CAPTURE(n);
                CAPTURE(V);
                CAPTURE(cap);
                const size_t nv = size_t(n) * V;
                const double loss_scale = 1.0 / n;
                const std::string tag = cap > 0 ? "capped" : "no cap";
                const Vec z = held<bf16>(randn(rng, nv, 12.0));  // wide enough to bend the tanh
                const std::vector<int32_t> targets = randint(rng, n, V);
                DeviceArray<int32_t> dt(targets);
                // Oracle: softcap_forward, then cross-entropy, its backward, and the softcap's.
                Vec s = z, losses(n), ds(nv, 0.0), dz(nv, 0.0);
                if (cap > 0) pg::softcap_forward(s.data(), z.data(), nv, cap);
                pg::crossentropy_forward(losses.data(), s.data(), targets.data(), n, V);
                pg::crossentropy_backward(ds.data(), s.data(), targets.data(), loss_scale, n, V);
                if (cap > 0)
                    pg::softcap_backward(dz.data(), ds.data(), s.data(), nv, cap);
                else
                    dz = ds;

                auto dz_in = upload<bf16>(z);
                auto dloss = poisoned<float>(n);
                auto dgrad = poisoned<bf16>(nv);
                softcap_ce(dloss.get(), dgrad.get(), dz_in.get(), dt.get(), n, V, float(cap), float(loss_scale), st.s);
                E.check("softcap_ce loss, " + tag, download(dloss, st.s), losses, kSum);
                E.check("softcap_ce dlogits, " + tag, download(dgrad, st.s), dz, kBf16);

                auto dloss2 = poisoned<float>(n);  // loss only
                softcap_ce(dloss2.get(), nullptr, dz_in.get(), dt.get(), n, V, float(cap), float(loss_scale), st.s);
                E.check("softcap_ce loss, no gradient", download(dloss2, st.s), losses, kSum);
                CHECK(download(dz_in, st.s) == z);  // the logits are left alone

                auto dloss3 = poisoned<float>(n);  // the gradient over the logits
                softcap_ce(dloss3.get(), dz_in.get(), dz_in.get(), dt.get(), n, V, float(cap), float(loss_scale), st.s);
                E.check("softcap_ce loss, in place", download(dloss3, st.s), losses, kSum);
                E.check("softcap_ce dlogits, in place", download(dz_in, st.s), dz, kBf16);
            }
}

TEST_CASE("kernel parameter gradients are bit for bit the same from run to run") {
    PG_REQUIRE_GPU();
    const uint64_t seed = fresh_seed();
    INFO("seed = " << seed);
    std::mt19937_64 rng(seed);
    Stream st;
    const int B = 2, Tn = 2048, N = B * Tn, C = 512, H = 8, hd = 64;
    const size_t n = size_t(N) * C, nq = size_t(N) * H * hd;
    auto x = upload<float>(randn(rng, n));
    auto g = upload<float>(randn(rng, n));
    auto w = upload<float>(randn(rng, C));
    auto q = upload<bf16>(randn(rng, nq));
    auto gq = upload<bf16>(randn(rng, nq));
    auto rstd = upload<float>(Vec(size_t(N) * H, 0.125));
    auto gain = upload<float>(randn(rng, H));
    DeviceArray<float> dx(n), ds(n);
    DeviceArray<bf16> dq(nq);
    std::vector<std::vector<float>> runs;
    for (int r = 0; r < 3; ++r) {
        DeviceArray<float> dw(2 * C + 2 + H);  // skip dw, skip dgate, mix dwa and dwb (scalar), dgain
        PG_CHECK(cudaMemset(dw.get(), 0, dw.size() * sizeof(float)));
        float* p = dw.get();
        skip_mix_backward(dx.get(), ds.get(), p, p + C, g.get(), x.get(), x.get(), w.get(), w.get(), N, C, st.s);
        mix_backward<float, float>(dx.get(), ds.get(), p + 2 * C, p + 2 * C + 1, g.get(), x.get(), x.get(), w.get(),
                                   w.get(), N, C, 0, st.s);
        qk_prep_backward(dq.get(), p + 2 * C + 2, gq.get(), q.get(), rstd.get(), gain.get(), B, Tn, H, hd, 16, 10000.f,
                         true, st.s);
        PG_CHECK(cudaStreamSynchronize(st.s));
        runs.push_back(dw.download());
    }
    CHECK(runs[1] == runs[0]);
    CHECK(runs[2] == runs[0]);
}

// Memory-bound kernels at the record's shapes (16 x 2048 tokens, 512 dims, 8 / 4 heads of 64,
// MLP 2048, vocabulary 8192): median time and the bandwidth of the bytes each must move.
// Run with --no-skip.
TEST_CASE("kernel timing: record shapes" * doctest::skip()) {
    PG_REQUIRE_GPU();
    std::mt19937_64 rng(fresh_seed());
    Stream st;
    const int B = 16, Tn = 2048, N = B * Tn, C = 512, H = 8, Hkv = 4, hd = 64, hidden = 2048, V = 8192, nce = 8192;
    const size_t nC = size_t(N) * C, nq = size_t(N) * H * hd, nkv = size_t(N) * Hkv * hd, nh = size_t(N) * hidden;
    auto xf = upload<float>(randn(rng, nC));
    auto sf = upload<float>(randn(rng, nC));
    auto gf = upload<float>(randn(rng, nC));
    auto of = upload<float>(randn(rng, nC));
    auto of2 = upload<float>(randn(rng, nC));
    auto xb = upload<bf16>(randn(rng, nC));
    auto gate = upload<float>(randn(rng, C));
    auto w = upload<float>(randn(rng, C));
    auto rstd = upload<float>(Vec(size_t(N) * H, 0.5));
    auto q = upload<bf16>(randn(rng, nq));
    auto gq = upload<bf16>(randn(rng, nq));
    auto oq = upload<bf16>(randn(rng, nq));
    auto vkv = upload<bf16>(randn(rng, nkv));
    auto dvkv = upload<float>(randn(rng, nkv));
    auto qgain = upload<float>(randn(rng, H));
    auto dgain = upload<float>(Vec(H, 0.0));
    auto dwc = upload<float>(Vec(C, 0.0));
    auto hb = upload<bf16>(randn(rng, 2 * nh));
    auto gh = upload<bf16>(randn(rng, nh));
    auto oh = upload<bf16>(randn(rng, 2 * nh));
    auto logits = upload<bf16>(randn(rng, size_t(nce) * V, 10.0));
    auto dlogits = upload<bf16>(randn(rng, size_t(nce) * V));
    auto losses = upload<float>(Vec(nce));
    const std::vector<int32_t> tg = randint(rng, nce, V), ids = randint(rng, N, V);
    DeviceArray<int32_t> targets(tg), idx(ids);
    auto table = upload<float>(randn(rng, size_t(V) * C));
    DeviceArray<unsigned char> big_a(size_t(256) << 20), big_b(size_t(256) << 20);
    PG_CHECK(cudaMemset(big_a.get(), 1, big_a.size()));

    cudaEvent_t e0, e1;
    PG_CHECK(cudaEventCreate(&e0));
    PG_CHECK(cudaEventCreate(&e1));
    auto time = [&](const std::string& what, double bytes, auto&& fn) {
        for (int i = 0; i < 3; ++i) fn();
        std::vector<float> ms;
        for (int i = 0; i < 21; ++i) {
            PG_CHECK(cudaEventRecord(e0, st.s));
            fn();
            PG_CHECK(cudaEventRecord(e1, st.s));
            PG_CHECK(cudaEventSynchronize(e1));
            float t = 0;
            PG_CHECK(cudaEventElapsedTime(&t, e0, e1));
            ms.push_back(t);
        }
        std::sort(ms.begin(), ms.end());
        const double us = ms[ms.size() / 2] * 1e3;
        MESSAGE(what << ": " << us << " us, " << bytes / us * 1e-3 << " GB/s");
    };
    const double f = 4, h = 2;
    time("copy 256 MiB (read + write)", 2.0 * big_a.size(),
         [&] { PG_CHECK(cudaMemcpyAsync(big_b.get(), big_a.get(), big_a.size(), cudaMemcpyDeviceToDevice, st.s)); });
    time("embedding_forward bf16", nC * (f + h),
         [&] { embedding_forward<bf16>(xb.get(), idx.get(), table.get(), N, C, st.s); });
    time("rmsnorm_forward f32->bf16", nC * (f + h),
         [&] { rmsnorm_forward<float, bf16>(xb.get(), rstd.get(), xf.get(), N, C, 1.f, st.s); });
    time("rmsnorm_backward f32 x, bf16 dout", nC * (f + h + 2 * f),
         [&] { rmsnorm_backward<float, bf16>(gf.get(), xb.get(), xf.get(), rstd.get(), N, C, 1.f, st.s); });
    time("qk_prep_forward q (norm, rope 16, gain)", nq * 2 * h,
         [&] { qk_prep_forward(oq.get(), rstd.get(), q.get(), qgain.get(), B, Tn, H, hd, 16, 10000.f, true, st.s); });
    time("qk_prep_backward q", nq * 3 * h, [&] {
        qk_prep_backward(oq.get(), dgain.get(), gq.get(), q.get(), rstd.get(), qgain.get(), B, Tn, H, hd, 16, 10000.f,
                         true, st.s);
    });
    time("xsa_forward", nq * 2 * h + nkv * h, [&] { xsa_forward(oq.get(), q.get(), vkv.get(), N, H, Hkv, hd, st.s); });
    time("xsa_backward", nq * 3 * h + nkv * (h + 2 * f),
         [&] { xsa_backward(oq.get(), dvkv.get(), gq.get(), q.get(), vkv.get(), N, H, Hkv, hd, st.s); });
    time("leaky_relu2_forward", nh * 2 * h, [&] { leaky_relu2_forward(oh.get(), hb.get(), nh, 0.5f, st.s); });
    time("leaky_relu2_backward", nh * 3 * h,
         [&] { leaky_relu2_backward(oh.get(), gh.get(), hb.get(), nh, 0.5f, st.s); });
    time("swiglu_backward", nh * 5 * h, [&] { swiglu_backward(oh.get(), gh.get(), hb.get(), N, hidden, st.s); });
    time("smear_forward", nC * 2 * f, [&] { smear_forward(of.get(), xf.get(), gate.get(), B, Tn, C, st.s); });
    time("smear_backward", nC * 4 * f,
         [&] { smear_backward(of.get(), dwc.get(), gf.get(), xf.get(), gate.get(), B, Tn, C, st.s); });
    time("skip_mix_backward", nC * 7 * f, [&] {
        skip_mix_backward(of.get(), of2.get(), dwc.get(), dwc.get(), gf.get(), xf.get(), sf.get(), w.get(), gate.get(),
                          N, C, st.s);
    });
    time("mix_forward f32", nC * 3 * f,
         [&] { mix_forward<float>(of.get(), xf.get(), sf.get(), w.get(), gate.get(), N, C, 1, st.s); });
    time("mix_backward f32", nC * 7 * f, [&] {
        mix_backward<float, float>(of.get(), of2.get(), dwc.get(), dwc.get(), gf.get(), xf.get(), sf.get(), w.get(),
                                   gate.get(), N, C, 1, st.s);
    });
    time("add_scaled_forward f32, in place", nC * 3 * f,
         [&] { add_scaled_forward<float>(of.get(), of.get(), xf.get(), w.get(), N, C, 0, st.s); });
    time("add_scaled_backward f32", nC * (4 * f + h), [&] {
        add_scaled_backward<float>(of.get(), xb.get(), dwc.get(), gf.get(), xf.get(), w.get(), N, C, 1, st.s);
    });
    time("softcap_ce 8192 x 8192, loss only", double(nce) * V * h,
         [&] { softcap_ce(losses.get(), nullptr, logits.get(), targets.get(), nce, V, 30.f, 1.f / nce, st.s); });
    time("softcap_ce 8192 x 8192, with gradient", double(nce) * V * 2 * h,
         [&] { softcap_ce(losses.get(), dlogits.get(), logits.get(), targets.get(), nce, V, 30.f, 1.f / nce, st.s); });
    PG_CHECK(cudaEventDestroy(e0));
    PG_CHECK(cudaEventDestroy(e1));
}
