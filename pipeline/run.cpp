// pgolf run: one command from shards to a records/ folder. For each seed it runs, as child
// processes of this same binary, train (under the wall-clock cap) -> pack (GPTQ of the
// chosen weights) -> size (the budget check) -> eval of the artifact over train's own val
// windows (post-quant) -> eval with the sliding window -> eval with score-first TTT, then
// writes README.md, submission.json and curve.svg from the logs.
//
// A stage whose output is complete is skipped; train resumes from its checkpoint. A stage's
// log is written as <log>.part and renamed into place when the stage succeeds, so an
// existing log marks a finished stage, and a stage that runs again makes every later stage
// run again too. A run killed at any point and started again with the same command thus
// completes with the same result.
#include <CLI/CLI.hpp>
#include <fnmatch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "common/check.h"
#include "common/clock.h"
#include "common/cli.h"
#include "common/io.h"
#include "pipeline/logs.h"
#include "pipeline/options.h"
#include "pipeline/report.h"
#include "pipeline/stage.h"

namespace fs = std::filesystem;

namespace pg {

namespace {

std::string utc_now() {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string toml_value(const std::string& toml, const std::string& key) {
    const std::string prefix = key + " = ";
    size_t p = toml.find("\n" + prefix);
    if (p == std::string::npos) return "";
    p += 1 + prefix.size();
    std::string v = toml.substr(p, toml.find('\n', p) - p);
    if (v.size() >= 2 && (v[0] == '"' || v[0] == '\'')) v = v.substr(1, v.size() - 2);
    return v;
}

// The record folder: --out, else records/<date>_<name> for a given --date, else the latest
// records/<date>_<name> that exists (a restarted run finds its folder the next day), else
// a new one dated now.
std::string record_dir(RunOptions& r) {
    if (!r.out.empty()) return r.out;
    if (!r.date.empty()) return "records/" + r.date.substr(0, 10) + "_" + r.name;
    std::string latest;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("records", ec)) {
        const std::string d = e.path().filename().string();
        if (fnmatch("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]_*", d.c_str(), 0) == 0 && d.substr(11) == r.name &&
            file_exists(e.path().string() + "/config.toml"))
            latest = std::max(latest, "records/" + d);
    }
    if (!latest.empty()) return latest;
    r.date = utc_now();
    return "records/" + r.date.substr(0, 10) + "_" + r.name;
}

// config.toml: written at the first start; a restart must resolve to the same settings.
void claim_folder(RunSettings& s, const std::string& out) {
    const std::string path = out + "/config.toml";
    const std::string existing = file_exists(path) ? read_text(path) : "";
    if (s.run.date.empty()) s.run.date = existing.empty() ? utc_now() : toml_value(existing, "date");
    const std::string text = settings_toml(s);
    if (existing.empty()) {
        make_dirs(out);
        write_file_atomic(path, text);
        write_file_atomic(out + "/.gitignore", "checkpoint.bin\nmodel.art\n*.part\n");
        return;
    }
    if (existing == text) return;
    std::string diff;
    for (size_t a = 0, b = 0; a < existing.size() && b < text.size();) {
        const std::string la = existing.substr(a, existing.find('\n', a) - a), lb = text.substr(b, text.find('\n', b) - b);
        if (la != lb) {
            diff = "'" + la + "' there, '" + lb + "' now";
            break;
        }
        a += la.size() + 1, b += lb.size() + 1;
    }
    fail("%s: this folder was started with other settings (%s); give another --out or --name", path.c_str(), diff.c_str());
}

struct Runner {
    RunSettings& s;
    std::string dir;  // the seed's folder
    uint64_t seed;
    bool redo = false;  // a stage ran, so every later one runs too

    void run_or_fail(const std::string& stage, const std::vector<std::string>& args, const std::string& log) {
        std::printf("run: seed %llu: %-12s running, log %s\n", (unsigned long long)seed, stage.c_str(),
                    stage == "train" ? (dir + "/train.log").c_str() : log.c_str());
        std::fflush(stdout);
        const auto t0 = std::chrono::steady_clock::now();
        const std::string why = run_self(args, log);
        if (!why.empty())
            fail("stage %s (seed %llu) failed: %s; log: %s", stage.c_str(), (unsigned long long)seed, why.c_str(), log.c_str());
        std::printf("run: seed %llu: %-12s done in %.1f s\n", (unsigned long long)seed, stage.c_str(), seconds_since(t0));
        std::fflush(stdout);
        redo = true;
    }

    void skipped(const std::string& stage) {
        std::printf("run: seed %llu: %-12s done before\n", (unsigned long long)seed, stage.c_str());
    }

    // Runs `stage` unless its log and outputs exist from an earlier run; returns its log.
    std::string stage(const std::string& name, const std::vector<std::string>& args, const std::vector<std::string>& outputs) {
        const std::string log = dir + "/" + name + ".log";
        bool done = !redo && file_exists(log);
        for (const std::string& o : outputs) done = done && file_exists(o);
        if (done) {
            skipped(name);
        } else {
            std::error_code ec;
            fs::remove(log, ec);
            run_or_fail(name, args, log + ".part");
            fs::rename(log + ".part", log, ec);
            if (ec) fail("%s: cannot rename into place (%s)", log.c_str(), ec.message().c_str());
        }
        return read_text(log);
    }

    // Trains, or resumes, until train.log says the run finished. Returns false when
    // --stop-after stopped it.
    bool train(TrainLog& tl) {
        const std::string log = dir + "/train.log", ckpt = dir + "/checkpoint.bin";
        if (file_exists(log)) tl = parse_train_log(read_text(log));
        if (tl.complete && file_exists(ckpt)) {
            skipped("train");
            return true;
        }
        Config c = s.cfg;
        c.train.seed = seed;
        std::vector<std::string> args{"train"};
        for (const std::string& a : train_flag_args(c)) args.push_back(a);
        args.push_back("--out=" + dir);
        if (file_exists(ckpt)) {
            args.push_back("--resume");
            std::printf("run: seed %llu: train        resuming from %s\n", (unsigned long long)seed, ckpt.c_str());
        }
        run_or_fail("train", args, dir + "/train.console.log.part");
        std::error_code ec;
        fs::remove(dir + "/train.console.log.part", ec);  // train.log holds the same lines
        tl = parse_train_log(read_text(log));
        if (tl.stopped_at >= 0) {
            std::printf("run: seed %llu: train stopped after step %d (--stop-after); the same command without it resumes\n",
                        (unsigned long long)seed, tl.stopped_at);
            return false;
        }
        if (!tl.complete) fail("stage train (seed %llu): %s does not end with a final validation and checkpoint", (unsigned long long)seed, log.c_str());
        return true;
    }

    std::vector<std::string> eval_args(const std::string& art, const TrainLog& tl, int stride, long max_tokens) {
        std::vector<std::string> a{"eval", "--artifact", art, "--data", tl.data, "--stride", std::to_string(stride),
                                   "--batch-seqs", std::to_string(s.run.eval_batch_seqs), "--max-tokens", std::to_string(max_tokens)};
        if (!s.cfg.train.tokenizer.empty()) a.insert(a.end(), {"--tokenizer", s.cfg.train.tokenizer});
        return a;
    }

    // Every stage of one seed; false when training was stopped by --stop-after.
    bool run(SeedResult& r) {
        r.seed = seed;
        r.dir = "seed_" + std::to_string(seed);
        make_dirs(dir);
        if (!train(r.train)) return false;
        const std::string art = dir + "/model.art";
        stage("pack", {"pack", dir + "/checkpoint.bin", "-o", art, "--weights", s.run.weights}, {art});
        const std::string size_log = stage("size", {"size", art}, {art});
        r.bytes = parse_size_log(size_log, dir + "/size.log");

        const int seq = s.cfg.model.seq_len;
        auto eval = [&](const std::string& name, std::vector<std::string> args, Score& score, double& seconds) {
            const auto res = parse_result_line(stage(name, args, {art}), dir + "/" + name + ".log");
            if (!res.count("val_loss") || !res.count("val_bpb") || !res.count("eval_seconds"))
                fail("%s/%s.log: RESULT lacks val_loss, val_bpb or eval_seconds", dir.c_str(), name.c_str());
            score = {res.at("val_loss"), res.at("val_bpb")};
            seconds = res.at("eval_seconds");
            return res;
        };
        eval("eval_quant", eval_args(art, r.train, seq, s.cfg.train.val_tokens), r.post_quant, r.quant_seconds);
        const auto sl = eval("eval_sliding", eval_args(art, r.train, s.run.stride, s.run.eval_tokens), r.sliding, r.sliding_seconds);
        r.sliding_tokens = long(sl.count("tokens") ? sl.at("tokens") : 0);
        if (s.run.ttt) {
            const TttOptions& t = s.run.ttt_opt;
            std::vector<std::string> a = eval_args(art, r.train, s.run.stride, s.run.eval_tokens);
            a.insert(a.end(), {"--ttt", "--ttt-lr=" + format("%.9g", double(t.lr)), "--ttt-momentum=" + format("%.9g", double(t.momentum)),
                               "--ttt-epochs=" + std::to_string(t.epochs), "--ttt-chunk=" + std::to_string(t.chunk_tokens),
                               "--ttt-clip=" + format("%.9g", double(t.clip)), "--ttt-batch-seqs=" + std::to_string(t.batch_seqs)});
            eval("eval_ttt", a, r.ttt, r.ttt_seconds);
        }

        const auto pre = r.train.final_scores.find(s.run.weights);
        if (pre == r.train.final_scores.end())
            fail("%s/train.log: no final validation of the %s weights", dir.c_str(), s.run.weights.c_str());
        r.pre_quant = pre->second;
        r.tokens_per_second = r.train.train_seconds > 0 ? r.train.steps * double(s.cfg.train.batch_tokens) / r.train.train_seconds : 0;
        return true;
    }
};

void run_pipeline(RunSettings s) {
    const std::string out = record_dir(s.run);
    claim_folder(s, out);
    std::printf("run: %s, seeds %s -> %s\n", s.run.name.c_str(), s.run.seeds.c_str(), out.c_str());
    std::fflush(stdout);
    std::vector<SeedResult> results;
    for (uint64_t seed : s.seeds) {
        Runner runner{s, out + "/seed_" + std::to_string(seed), seed};
        SeedResult r;
        if (!runner.run(r)) return;
        results.push_back(std::move(r));
    }
    write_file_atomic(out + "/submission.json", submission_json(s, results));
    write_file_atomic(out + "/curve.svg", curve_svg(results));
    write_file_atomic(out + "/README.md", readme_md(s, results, out));
    double bpb = 0;
    for (const SeedResult& r : results) bpb += r.score(s.run.ttt).bpb / double(results.size());
    std::printf("run: val_bpb %.4f (%s%s), %lld bytes; %s/README.md, submission.json, curve.svg\n", bpb,
                s.run.ttt ? "score-first TTT" : "sliding window", results.size() > 1 ? ", mean of seeds" : "",
                results.front().bytes.total_bytes, out.c_str());
}

}  // namespace

void add_run_command(CLI::App& app) {
    auto f = std::make_shared<RunFlags>();
    apply_preset(f->cfg, "tiny");  // so that --help shows the defaults of a run without --preset
    CLI::App* sub = app.add_subcommand("run", "the record pipeline: train, pack, size check, evaluations -> a records/ folder");
    add_run_flags(*sub, *f);
    sub->callback([sub, f] { run_pipeline(resolve_settings(*sub, *f)); });
}

}  // namespace pg
