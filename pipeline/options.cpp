#include "pipeline/options.h"

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <set>

#include "common/check.h"

namespace pg {

std::vector<Field> fields(RunOptions& r) {
    TttOptions& t = r.ttt_opt;
    return {
        {"name", &r.name, "record name (letters, digits, . _ -); the folder is records/<date>_<name>"},
        {"seeds", &r.seeds, "comma-separated seeds, one training run each (default: --seed)"},
        {"date", &r.date, "record date, UTC ISO 8601 (default: the first start, kept in config.toml)"},
        {"author", &r.author, "submission.json author"},
        {"github-id", &r.github_id, "submission.json github_id"},
        {"blurb", &r.blurb, "submission.json blurb (default: a summary of the configuration)"},
        {"weights", &r.weights, "weights packed into the artifact: ema | swa | raw"},
        {"stride", &r.stride, "sliding-window stride of the scored evaluations"},
        {"eval-batch-seqs", &r.eval_batch_seqs, "windows per forward pass in evaluation"},
        {"eval-tokens", &r.eval_tokens, "val targets scored by the sliding and TTT evaluations (0 = all)"},
        {"ttt", &r.ttt, "score-first test-time training as the final evaluation"},
        {"ttt-lr", &t.lr, "TTT SGD learning rate"},
        {"ttt-momentum", &t.momentum, "TTT SGD momentum"},
        {"ttt-epochs", &t.epochs, "TTT passes over each scored chunk"},
        {"ttt-chunk", &t.chunk_tokens, "TTT chunk, in targets"},
        {"ttt-clip", &t.clip, "TTT gradient-norm clip (0 = off)"},
        {"ttt-batch-seqs", &t.batch_seqs, "TTT training sequences a step"},
    };
}

std::vector<Field> run_train_fields(TrainConfig& t) {
    std::vector<Field> out;
    for (const Field& f : fields(t))
        if (std::string(f.name) != "out" && std::string(f.name) != "resume") out.push_back(f);
    return out;
}

// All settings a config file or the command line can hold, in config.toml's order.
static std::vector<Field> all_fields(Config& c, RunOptions& r) {
    std::vector<Field> fs = fields(r);
    for (auto part : {fields(c.model), run_train_fields(c.train), fields(c.quant)}) fs.insert(fs.end(), part.begin(), part.end());
    return fs;
}

void add_run_flags(CLI::App& sub, RunFlags& f) {
    sub.add_option("--config", f.config_file, "TOML file of settings: `key = value`, keys are these flags' names")
        ->check(CLI::ExistingFile);
    sub.add_option("--preset", f.preset, "tiny (default) | record, applied before the config file and the flags");
    sub.add_option("--out", f.run.out, "record folder (default: records/<date>_<name>, the latest such folder if one exists)");
    add_flags(sub, all_fields(f.cfg, f.run));
}

static std::vector<uint64_t> parse_seeds(const std::string& s) {
    std::vector<uint64_t> out;
    std::set<uint64_t> seen;
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t end = s.find(',', pos);
        if (end == std::string::npos) end = s.size();
        const std::string item = s.substr(pos, end - pos);
        char* rest = nullptr;
        const unsigned long long v = std::strtoull(item.c_str(), &rest, 10);
        if (item.empty() || item[0] == '-' || *rest != '\0') fail("--seeds: '%s' is not a comma-separated list of seeds", s.c_str());
        if (!seen.insert(v).second) fail("--seeds: seed %llu appears twice", v);
        out.push_back(v);
        pos = end + 1;
    }
    return out;
}

RunSettings resolve_settings(const CLI::App& sub, RunFlags& given) {
    RunSettings s;
    std::string preset = given.preset;
    if (preset.empty() && !given.config_file.empty()) {
        for (const CLI::ConfigItem& item : CLI::ConfigTOML().from_file(given.config_file))
            if (item.parents.empty() && item.name == "preset" && item.inputs.size() == 1) preset = item.inputs[0];
    }
    apply_preset(s.cfg, preset.empty() ? "tiny" : preset);
    if (!given.config_file.empty()) {
        // CLI11 reads the file natively; unknown keys and bad values are errors.
        CLI::App file_app;
        file_app.allow_config_extras(false);
        file_app.set_config("--config", given.config_file, "", true);
        std::string ignored_preset;
        file_app.add_option("--preset", ignored_preset);  // read above, so that it comes first
        std::string out;
        file_app.add_option("--out", out);
        add_flags(file_app, all_fields(s.cfg, s.run));
        try {
            file_app.parse(std::vector<std::string>{});
        } catch (const CLI::Error& e) {
            fail("%s: %s", given.config_file.c_str(), e.what());
        }
        s.run.out = out;
    }
    overlay_given(sub, all_fields(given.cfg, given.run), all_fields(s.cfg, s.run));
    if (sub.get_option("--out")->count() > 0) s.run.out = given.run.out;

    RunOptions& r = s.run;
    if (r.name.empty()) fail("run: --name is required (or `name = \"...\"` in the config file)");
    for (char ch : r.name)
        if (!std::isalnum((unsigned char)ch) && ch != '.' && ch != '_' && ch != '-')
            fail("--name '%s': use letters, digits, '.', '_' and '-' only (it names a folder)", r.name.c_str());
    if (r.seeds.empty()) r.seeds = std::to_string(s.cfg.train.seed);
    s.seeds = parse_seeds(r.seeds);
    std::string norm;
    for (uint64_t v : s.seeds) norm += (norm.empty() ? "" : ",") + std::to_string(v);
    r.seeds = norm;
    if (r.weights != "ema" && r.weights != "swa" && r.weights != "raw") fail("--weights '%s': expected ema, swa or raw", r.weights.c_str());
    if (r.weights == "ema" && s.cfg.train.ema_decay <= 0) fail("--weights ema needs an EMA (--ema-decay > 0)");
    if (r.weights == "swa" && s.cfg.train.swa_from <= 0) fail("--weights swa needs SWA (--swa-from > 0)");
    if (r.stride < 1) fail("--stride must be >= 1");
    s.cfg.model.validate();
    return s;
}

// The shortest decimal that reads back as the same value, so config.toml says 0.04, not
// 0.0399999991.
template <class V>
static std::string shortest(V v) {
    for (int p = std::is_same_v<V, float> ? 6 : 15;; ++p) {
        const std::string t = format("%.*g", p, double(v));
        if (V(std::strtod(t.c_str(), nullptr)) == v || p >= 17) return t;
    }
}

static std::string value_text(const Field& f, bool toml) {
    return std::visit(
        [&](auto* p) -> std::string {
            using V = std::remove_pointer_t<decltype(p)>;
            if constexpr (std::is_same_v<V, bool>) return *p ? "true" : "false";
            else if constexpr (std::is_floating_point_v<V>) return shortest(*p);
            else if constexpr (std::is_same_v<V, std::string>) {
                if (!toml) return *p;
                if (p->find('\n') != std::string::npos) fail("--%s: a line break cannot go into config.toml", f.name);
                const char q = p->find('"') == std::string::npos ? '"' : '\'';
                if (p->find(q) != std::string::npos) fail("--%s: use either ' or \" in the value, not both", f.name);
                return q + *p + q;
            } else return std::to_string(*p);
        },
        f.ptr);
}

std::string settings_toml(RunSettings& s) {
    std::string t = "# pgolf run settings: build/pgolf run --config <this file> --out <folder>\n";
    for (const Field& f : all_fields(s.cfg, s.run)) {
        const std::string name = f.name;
        if (name == "stop-after" || name == "seed") continue;
        t += name + " = " + value_text(f, true) + "\n";
    }
    return t;
}

std::vector<std::string> train_flag_args(Config& c) {
    std::vector<std::string> args;
    for (auto part : {fields(c.model), run_train_fields(c.train), fields(c.quant)})
        for (const Field& f : part) {
            const std::string v = value_text(f, false);
            if (std::holds_alternative<bool*>(f.ptr))
                args.push_back(std::string(v == "true" ? "--" : "--no-") + f.name);
            else if (!v.empty())
                args.push_back(std::string("--") + f.name + "=" + v);
        }
    return args;
}

}  // namespace pg
