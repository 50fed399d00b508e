// pgolf run through the binary: the tiny config end to end into a temp folder, read back
// and checked against the stages' logs (parsed here independently of pipeline/logs.cpp);
// stopped, killed-and-resumed and broken runs; several seeds; settings resolution.
#include <doctest/doctest.h>

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "common/check.h"
#include "common/io.h"
#include "pipeline/options.h"
#include "tests/run_pgolf.h"
#include "tests/tmp_dir.h"

using namespace pg;
namespace fs = std::filesystem;

namespace {

// A JSON document flattened to "a.b.c" -> scalar text (strings unquoted; arrays as "[1,2]").
struct FlatJson {
    std::map<std::string, std::string> v;
    std::set<std::string> strings;  // keys whose value was a JSON string
    double num(const std::string& k) const {
        INFO("key " << k);
        REQUIRE(v.count(k) == 1);
        return std::stod(v.at(k));
    }
};

FlatJson parse_json(const std::string& s) {
    FlatJson out;
    size_t i = 0;
    auto ws = [&] { while (i < s.size() && std::isspace((unsigned char)s[i])) ++i; };
    auto expect = [&](char c) {
        ws();
        INFO("JSON position " << i);
        REQUIRE(i < s.size());
        REQUIRE(s[i] == c);
        ++i;
    };
    auto string = [&] {
        expect('"');
        std::string r;
        while (s.at(i) != '"') {
            if (s[i] == '\\') ++i;
            r += s.at(i++);
        }
        ++i;
        return r;
    };
    std::function<void(const std::string&)> value = [&](const std::string& key) {
        ws();
        if (s.at(i) == '{') {
            ++i;
            ws();
            if (s.at(i) == '}') { ++i; return; }
            for (;;) {
                const std::string k = string();
                expect(':');
                value(key.empty() ? k : key + "." + k);
                ws();
                if (s.at(i) == ',') { ++i; continue; }
                expect('}');
                return;
            }
        } else if (s.at(i) == '"') {
            out.v[key] = string();
            out.strings.insert(key);
        } else if (s.at(i) == '[') {
            const size_t e = s.find(']', i);
            std::string r;
            for (char c : s.substr(i, e - i + 1)) if (!std::isspace((unsigned char)c)) r += c;
            out.v[key] = r;
            i = e + 1;
        } else {
            const size_t b = i;
            while (i < s.size() && (std::isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '-' || s[i] == '+')) ++i;
            out.v[key] = s.substr(b, i - b);
        }
    };
    value("");
    ws();
    CHECK(i == s.size());
    return out;
}

// key -> value of the RESULT line of a stage log.
std::map<std::string, double> result_of(const std::string& log) {
    const std::string t = read_text(log);
    const size_t r = t.rfind("\nRESULT ");
    REQUIRE(r != std::string::npos);
    std::istringstream in(t.substr(r + 8, t.find('\n', r + 1) - r - 8));
    std::map<std::string, double> m;
    std::string kv;
    while (in >> kv) m[kv.substr(0, kv.find('='))] = std::stod(kv.substr(kv.find('=') + 1));
    return m;
}

// What train.log says at its end: device, steps, training seconds, final validations.
struct TrainFacts {
    std::string device;
    int steps = 0, step_lines = 0;
    double seconds = 0, raw_bpb = 0, ema_loss = 0, ema_bpb = 0;
};
TrainFacts train_facts(const std::string& log) {
    TrainFacts f;
    std::istringstream in(read_text(log));
    std::string line;
    while (std::getline(in, line)) {
        double a, b;
        int step;
        const std::string head = "pgolf train: training on the ";
        if (line.rfind(head, 0) == 0) f.device = line.substr(head.size());
        if (line.rfind("step ", 0) == 0) ++f.step_lines;
        if (std::sscanf(line.c_str(), "final step %d raw val loss %lf bpb %lf", &step, &a, &b) == 3) {
            f.steps = step, f.raw_bpb = b;
            f.seconds = std::stod(line.substr(line.find(" tokens, ") + 9));
        }
        if (std::sscanf(line.c_str(), "final step %d ema val loss %lf bpb %lf", &step, &a, &b) == 3) f.ema_loss = a, f.ema_bpb = b;
    }
    return f;
}

long long size_row(const std::string& log, const std::string& row) {
    std::istringstream in(read_text(log));
    std::string line, digits;
    while (std::getline(in, line))
        if (line.rfind(row, 0) == 0) {
            for (char c : line.substr(row.size(), line.find("  (") - row.size())) if (std::isdigit((unsigned char)c)) digits += c;
            return std::stoll(digits);
        }
    FAIL("no '" << row << "' row in " << log);
    return 0;
}

std::string grouped(long long n) {
    std::string s = std::to_string(n), o;
    for (size_t i = 0; i < s.size(); ++i) o += std::string(i > 0 && (s.size() - i) % 3 == 0 ? "," : "") + s[i];
    return o;
}

// The cells of the README table row whose first cell is `first`.
std::vector<std::string> readme_row(const std::string& md, const std::string& first) {
    std::istringstream in(md);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("| " + first + " |", 0) == 0) {
            std::vector<std::string> cells;
            std::istringstream l(line.substr(1));
            std::string c;
            while (std::getline(l, c, '|')) cells.push_back(c.substr(1, c.size() - 2));
            return cells;
        }
    FAIL("README has no row '" << first << "'");
    return {};
}

// The fields that measure time, which a resumed run cannot repeat.
bool timing_key(const std::string& k) {
    return k == "date" || k.find("seconds") != std::string::npos || k.find("tokens_per_second") != std::string::npos;
}

// The scores of test-time training, which on a GPU run the attention backward: its blocks add
// their dQ into one fp32 sum by reductions whose order can differ between processes (two runs
// of one binary: 5.88858554 and 5.88858724). Compared to 1e-6 relative; every other value exactly.
bool ttt_key(const std::string& k) {
    const std::string last = k.substr(k.rfind('.') == std::string::npos ? 0 : k.rfind('.') + 1);
    return last == "ttt_val_bpb" || last == "ttt_val_loss" || last == "val_bpb" || last == "val_loss";
}

const std::string kTiny = "run --config records/configs/tiny.toml";

// One uninterrupted tiny run, shared by the tests that compare against it.
const std::string& straight_run() {
    static TmpDir d;
    static std::string out;
    if (out.empty()) {
        std::string log;
        const int rc = test::run_pgolf(kTiny + " --out " + (d / "a"), log);
        INFO(log);
        REQUIRE(rc == 0);
        out = d / "a";
    }
    return out;
}

}  // namespace

TEST_CASE("run: the tiny pipeline writes a records folder whose every number matches the logs") {
    const std::string dir = straight_run(), s42 = dir + "/seed_42";
    for (const char* f : {"README.md", "submission.json", "curve.svg", "config.toml", "seed_42/train.log", "seed_42/pack.log",
                          "seed_42/size.log", "seed_42/eval_quant.log", "seed_42/eval_sliding.log", "seed_42/eval_ttt.log",
                          "seed_42/model.art", "seed_42/checkpoint.bin"})
        CHECK_MESSAGE(file_exists(dir + "/" + f), f);
    CHECK_FALSE(file_exists(s42 + "/train.console.log.part"));

    const TrainFacts t = train_facts(s42 + "/train.log");
    REQUIRE(t.steps == 16);
    const auto quant = result_of(s42 + "/eval_quant.log"), sliding = result_of(s42 + "/eval_sliding.log"),
               ttt = result_of(s42 + "/eval_ttt.log"), pack = result_of(s42 + "/pack.log");
    CHECK(ttt.at("ttt") == 1);
    CHECK(quant.at("tokens") == 1024);  // train's val-tokens, so pre- and post-quant score the same targets
    CHECK(sliding.at("tokens") == 1024);
    const long long model_bytes = size_row(s42 + "/size.log", "model bytes"), code_bytes = size_row(s42 + "/size.log", "code bytes");
    CHECK(model_bytes == (long long)fs::file_size(s42 + "/model.art"));
    CHECK(code_bytes == (long long)fs::file_size("build/code.tar.xz"));
    CHECK(size_row(s42 + "/size.log", "total") == model_bytes + code_bytes);
    CHECK(pack.at("artifact_bytes") == model_bytes);
    const double tok_s = t.steps * 1024.0 / t.seconds;

    const FlatJson j = parse_json(read_text(dir + "/submission.json"));
    const std::map<std::string, double> nums = {
        {"val_loss", ttt.at("val_loss")}, {"val_bpb", ttt.at("val_bpb")},
        {"pre_quant_val_loss", t.ema_loss}, {"pre_quant_val_bpb", t.ema_bpb},
        {"post_quant_val_loss", quant.at("val_loss")}, {"post_quant_val_bpb", quant.at("val_bpb")},
        {"sliding_val_loss", sliding.at("val_loss")}, {"sliding_val_bpb", sliding.at("val_bpb")},
        {"ttt_val_loss", ttt.at("val_loss")}, {"ttt_val_bpb", ttt.at("val_bpb")},
        {"step_stop", t.steps}, {"wallclock_seconds", t.seconds}, {"eval_time_seconds", ttt.at("eval_seconds")},
        {"tokens_per_second", std::round(tok_s)}, {"bytes_total", model_bytes + code_bytes},
        {"bytes_model", model_bytes}, {"bytes_code", code_bytes}};
    std::set<std::string> expected_keys = {"author", "github_id", "name", "blurb", "date", "track", "seeds", "hardware",
                                           "compliance.train_under_600s", "compliance.artifact_under_16mb",
                                           "compliance.eval_under_600s", "compliance.score_first_ttt", "compliance.three_seeds"};
    for (const auto& [k, v] : nums) {
        expected_keys.insert(k);
        INFO("submission.json " << k);
        CHECK(j.num(k) == doctest::Approx(v).epsilon(1e-9));
        if (k == "bytes_total" || k == "bytes_model") continue;
        const std::string per = k == "bytes_code" ? "" : "seed_results.42." + k;
        if (per.empty()) continue;
        expected_keys.insert(per);
        CHECK(j.num(per) == doctest::Approx(v).epsilon(1e-9));
    }
    expected_keys.insert({"seed_results.42.artifact_bytes", "seed_results.42.bytes_model"});
    CHECK(j.num("seed_results.42.artifact_bytes") == model_bytes + code_bytes);  // as in the public records: with code
    CHECK(j.num("seed_results.42.bytes_model") == model_bytes);
    std::set<std::string> keys;
    for (const auto& [k, v] : j.v) keys.insert(k);
    CHECK(keys == expected_keys);

    CHECK(j.v.at("author") == "pgolf");
    CHECK(j.v.at("github_id") == "");
    CHECK(j.v.at("name") == "tiny");
    CHECK(j.v.at("blurb").find("4L x 128d") != std::string::npos);
    CHECK(std::regex_match(j.v.at("date"), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
    CHECK(read_text(dir + "/config.toml").find("\ndate = \"" + j.v.at("date") + "\"\n") != std::string::npos);
    CHECK(j.v.at("track") == "10min_16mb");
    CHECK(j.v.at("seeds") == "[42]");
    CHECK(j.v.at("hardware") == t.device);
    CHECK(j.v.at("compliance.train_under_600s") == (t.seconds <= 600 ? "true" : "false"));
    CHECK(j.v.at("compliance.artifact_under_16mb") == "true");
    CHECK(j.v.at("compliance.eval_under_600s") == (ttt.at("eval_seconds") <= 600 ? "true" : "false"));
    CHECK(j.v.at("compliance.score_first_ttt") == "true");
    CHECK(j.v.at("compliance.three_seeds") == "false");
    for (const char* k : {"author", "github_id", "name", "blurb", "date", "track", "hardware"}) CHECK(j.strings.count(k) == 1);

    const std::string md = read_text(dir + "/README.md");
    const std::vector<std::string> row = readme_row(md, "42");
    const std::vector<std::string> want = {
        "42", std::to_string(t.steps), format("%.1f", t.seconds), format("%.0f", tok_s), format("%.4f", t.ema_bpb),
        format("%.4f", quant.at("val_bpb")), format("%.4f", sliding.at("val_bpb")), format("%.4f", ttt.at("val_bpb")),
        format("%.1f", quant.at("eval_seconds")), format("%.1f", sliding.at("eval_seconds")),
        format("%.1f", ttt.at("eval_seconds")), grouped(model_bytes), grouped(model_bytes + code_bytes)};
    CHECK(row == want);
    CHECK(md.find(format("**val_bpb %.4f**", ttt.at("val_bpb"))) != std::string::npos);
    CHECK(md.find(format("**%s bytes** (model %s + code %s)", grouped(model_bytes + code_bytes).c_str(),
                         grouped(model_bytes).c_str(), grouped(code_bytes).c_str())) != std::string::npos);
    const std::string name = fs::path(dir).filename().string();
    CHECK(md.find("build/pgolf run --config records/" + name + "/config.toml --out NEW_FOLDER") != std::string::npos);

    // The plot: one train-loss point per step line, one val point per val line (every 4 steps).
    const std::string svg = read_text(dir + "/curve.svg");
    CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
    CHECK(svg.find("</svg>\n") == svg.size() - 7);
    const size_t pl = svg.find("<polyline"), pts = svg.find("points=\"", pl);
    const std::string loss_pts = svg.substr(pts + 8, svg.find('"', pts + 8) - pts - 8);
    CHECK(std::count(loss_pts.begin(), loss_pts.end(), ',') == t.step_lines);
    CHECK(std::count(svg.begin(), svg.end(), '\n') > 20);
    size_t circles = 0;
    for (size_t p = svg.find("<circle"); p != std::string::npos; p = svg.find("<circle", p + 1)) ++circles;
    CHECK(circles == 4);

    // Started again when finished: every stage is skipped and every file stays byte for byte.
    const std::string before_json = read_text(dir + "/submission.json"), before_md = md, before_svg = svg;
    std::string log;
    REQUIRE(test::run_pgolf(kTiny + " --out " + dir, log) == 0);
    INFO(log);
    size_t skipped = 0;
    for (size_t p = log.find("done before"); p != std::string::npos; p = log.find("done before", p + 1)) ++skipped;
    CHECK(skipped == 6);
    CHECK(read_text(dir + "/submission.json") == before_json);
    CHECK(read_text(dir + "/README.md") == before_md);
    CHECK(read_text(dir + "/curve.svg") == before_svg);
}

TEST_CASE("run: a stopped or partly deleted run, started again, completes with the same result") {
    const FlatJson straight = parse_json(read_text(straight_run() + "/submission.json"));
    TmpDir d;
    const std::string dir = d / "b";
    std::string log;
    REQUIRE(test::run_pgolf(kTiny + " --out " + dir + " --stop-after 6", log) == 0);
    CHECK(log.find("train stopped after step 6") != std::string::npos);
    CHECK_FALSE(file_exists(dir + "/submission.json"));
    CHECK_FALSE(file_exists(dir + "/seed_42/pack.log"));

    auto same_as_straight = [&] {
        const FlatJson j = parse_json(read_text(dir + "/submission.json"));
        REQUIRE(j.v.size() == straight.v.size());
        for (const auto& [k, v] : straight.v) {
            INFO("submission.json " << k);
            REQUIRE(j.v.count(k) == 1);
            if (ttt_key(k)) CHECK(std::fabs(j.num(k) - straight.num(k)) <= 1e-6 * std::fabs(straight.num(k)));
            else if (!timing_key(k)) CHECK(j.v.at(k) == v);
        }
    };
    REQUIRE(test::run_pgolf(kTiny + " --out " + dir, log) == 0);
    INFO(log);
    CHECK(log.find("resuming from") != std::string::npos);
    same_as_straight();
    const std::string train_log = read_text(dir + "/seed_42/train.log");
    CHECK(train_log.find("resumed from " + dir + "/seed_42/checkpoint.bin at step 6") != std::string::npos);

    // A later stage's output deleted: that stage and those after it run again, no others.
    fs::remove(dir + "/seed_42/eval_sliding.log");
    REQUIRE(test::run_pgolf(kTiny + " --out " + dir, log) == 0);
    for (const char* s : {"train", "pack", "size", "eval_quant"})
        CHECK(log.find(format("run: seed 42: %-12s done before", s)) != std::string::npos);
    for (const char* s : {"eval_sliding", "eval_ttt"})
        CHECK(log.find(format("run: seed 42: %-12s done in", s)) != std::string::npos);
    CHECK(read_text(dir + "/seed_42/train.log") == train_log);
    same_as_straight();
}

TEST_CASE("run: a failing stage or changed settings stop with one line naming the stage and its log") {
    TmpDir d;
    const std::string dir = d / "c";
    fs::copy(straight_run(), dir, fs::copy_options::recursive);
    auto bytes = read_file(dir + "/seed_42/model.art");
    bytes[bytes.size() / 2] ^= 0x40;
    write_file_atomic(dir + "/seed_42/model.art", bytes.data(), bytes.size());
    fs::remove(dir + "/seed_42/size.log");
    const std::string json = read_text(dir + "/submission.json");
    std::string log;
    CHECK(test::run_pgolf(kTiny + " --out " + dir, log) == 1);
    INFO(log);
    const size_t e = log.find("pgolf: error: ");
    REQUIRE(e != std::string::npos);
    const std::string line = log.substr(e);
    CHECK(line.rfind("pgolf: error: stage size (seed 42) failed: ", 0) == 0);
    CHECK(line.find("checksum") != std::string::npos);
    CHECK(line.find("; log: " + dir + "/seed_42/size.log.part\n") != std::string::npos);
    CHECK(std::count(line.begin(), line.end(), '\n') == 1);
    CHECK(read_text(dir + "/submission.json") == json);  // nothing written over

    CHECK(test::run_pgolf(kTiny + " --out " + dir + " --matrix-lr 0.05", log) == 1);
    CHECK(log.find("config.toml: this folder was started with other settings ('matrix-lr = 0.04' there, "
                   "'matrix-lr = 0.05' now)") != std::string::npos);
}

TEST_CASE("run: several seeds give a folder each and the mean and std of their scores") {
    TmpDir d;
    const std::string dir = d / "m";
    std::string log;
    const int rc = test::run_pgolf(kTiny + " --out " + dir + " --seeds 7,8 --iterations 4 --val-every 2 --val-tokens 512 --eval-tokens 512 --no-ttt --calib-seqs 0"
                                      " --model-dim 64 --n-layers 2 --recur-start 1 --recur-end 1 --parallel-from 1 --seq-len 64 --batch-tokens 512", log);
    INFO(log);
    REQUIRE(rc == 0);
    CHECK_FALSE(file_exists(dir + "/seed_7/eval_ttt.log"));
    const FlatJson j = parse_json(read_text(dir + "/submission.json"));
    const auto a = result_of(dir + "/seed_7/eval_sliding.log"), b = result_of(dir + "/seed_8/eval_sliding.log");
    CHECK(a.at("val_bpb") != b.at("val_bpb"));  // different seeds, different models
    const double mean = (a.at("val_bpb") + b.at("val_bpb")) / 2, sd = std::fabs(a.at("val_bpb") - b.at("val_bpb")) / std::sqrt(2.0);
    CHECK(j.num("val_bpb") == doctest::Approx(mean).epsilon(1e-8));
    CHECK(j.num("val_bpb_std") == doctest::Approx(sd).epsilon(1e-6));
    CHECK(j.num("seed_results.7.val_bpb") == doctest::Approx(a.at("val_bpb")).epsilon(1e-9));
    CHECK(j.num("seed_results.8.val_bpb") == doctest::Approx(b.at("val_bpb")).epsilon(1e-9));
    CHECK(j.v.at("seeds") == "[7,8]");
    CHECK(j.v.count("ttt_val_bpb") == 0);
    CHECK(j.v.at("compliance.score_first_ttt") == "false");
    CHECK(j.num("step_stop") == 4);
    const std::string md = read_text(dir + "/README.md");
    CHECK(readme_row(md, "**mean**").at(6) == format("%.4f", mean));
    CHECK(readme_row(md, "**std**").at(6) == format("%.4f", sd));
    CHECK(md.find(format("**val_bpb %.4f ± %.4f**", mean, sd)) != std::string::npos);
}

TEST_CASE("run: settings resolve as preset < config file < flags, and bad files fail naming them") {
    TmpDir d;
    auto resolve = [&](const std::string& args) {
        CLI::App app;
        RunFlags f;
        CLI::App* sub = app.add_subcommand("run");
        add_run_flags(*sub, f);
        app.parse("run " + args);
        return resolve_settings(*sub, f);
    };
    std::ofstream(d / "a.toml") << "# comment\nmodel-dim = 96\nname = \"x\"\npreset = \"record\"\nqk-norm = false\nseeds = \"3, 1\"\n";
    RunSettings s = resolve("--config " + (d / "a.toml") + " --model-dim 64");
    CHECK(s.cfg.model.model_dim == 64);        // the flag wins over the file
    CHECK(s.cfg.model.vocab_size == 8192);     // the record preset, though named last in the file
    CHECK_FALSE(s.cfg.model.qk_norm);
    CHECK(s.seeds == std::vector<uint64_t>{3, 1});
    CHECK(s.run.seeds == "3,1");
    // config.toml read back resolves to the same settings.
    std::ofstream(d / "b.toml") << settings_toml(s);
    RunSettings back = resolve("--config " + (d / "b.toml"));
    CHECK(settings_toml(back) == settings_toml(s));
    CHECK(train_flag_args(back.cfg) == train_flag_args(s.cfg));

    // The committed record config: the record shape under the 600 s cap, every val token scored, TTT on.
    Config record;
    apply_preset(record, "record");
    RunSettings r = resolve("--config records/configs/record.toml");
    CHECK(to_text(fields(r.cfg.model)) == to_text(fields(record.model)));
    CHECK(r.cfg.train.batch_tokens == record.train.batch_tokens);
    CHECK(r.cfg.train.max_wallclock_s == 600);
    CHECK(r.cfg.train.val_tokens == 0);
    CHECK(r.run.eval_tokens == 0);
    CHECK(r.run.stride == 64);
    CHECK(r.run.ttt);

    std::ofstream(d / "bad.toml") << "name = \"x\"\nmatrix_lr = 0.1\n";
    try {
        resolve("--config " + (d / "bad.toml"));
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(std::string(e.what()).rfind(d / "bad.toml", 0) == 0);
        CHECK(std::string(e.what()).find("matrix_lr") != std::string::npos);
    }
    CHECK_THROWS_WITH_AS(resolve("--seeds 1,1 --name x"), "--seeds: seed 1 appears twice", Error);
    CHECK_THROWS_WITH_AS(resolve("--seeds 1"), doctest::Contains("--name is required"), Error);
    CHECK_THROWS_WITH_AS(resolve("--name a/b"), doctest::Contains("names a folder"), Error);
}
