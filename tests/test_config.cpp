#include <doctest/doctest.h>

#include "common/check.h"
#include "common/config.h"
#include "model/params.h"

using namespace pg;

TEST_CASE("layer schedule repeats the recurrent span") {
    ModelConfig m;  // 10 physical, span 3..5 twice
    auto s = m.layer_schedule(true);
    CHECK(s == std::vector<int>{0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9});
    CHECK(m.layer_schedule(false).size() == 10);
    CHECK(m.max_skips() == 6);
}

TEST_CASE("parameter layout banks same-shape matrices contiguously") {
    ModelConfig m;
    ParamLayout L = make_layout(m);
    // wq and wo are both 512x512: one bank of 20 matrices.
    CHECK(L.banks[0].count == 2 * m.n_layers);
    CHECK(L.banks[0].rows == 512);
    const ParamSpec& wo3 = L.get("blocks.3.attn.wo");
    CHECK(wo3.offset == L.banks[0].offset + size_t(m.n_layers + 3) * 512 * 512);
    size_t sum = 0;
    for (auto& p : L.params) sum += p.numel();
    CHECK(sum == L.total);
    CHECK_THROWS_AS(L.get("nope"), Error);
}

TEST_CASE("bad model settings are rejected") {
    ModelConfig m;
    m.n_kv_heads = 3;
    CHECK_THROWS_AS(m.validate(), Error);
    ModelConfig r;
    r.recur_end = 12;
    CHECK_THROWS_AS(r.validate(), Error);
}

TEST_CASE("config text round trip covers every field") {
    Config a;
    apply_preset(a, "tiny");
    a.model.swiglu = true;
    a.model.qk_gain_init = 1.2345f;
    a.train.out_dir = "x/y z";
    a.train.seed = 18446744073709551615ull;
    Config b;
    from_text(fields(b.model), to_text(fields(a.model)), "test");
    from_text(fields(b.train), to_text(fields(a.train)), "test");
    CHECK(to_text(fields(b.model)) == to_text(fields(a.model)));
    CHECK(to_text(fields(b.train)) == to_text(fields(a.train)));
    CHECK(b.model.swiglu);
    CHECK(b.model.model_dim == 128);
    CHECK(b.train.seed == a.train.seed);
    CHECK_THROWS_AS(from_text(fields(b.model), "nope=1\n", "t"), Error);
    CHECK_THROWS_AS(from_text(fields(b.model), "model-dim=abc\n", "t"), Error);
}
