// The settings of `pgolf run`: every flag of `pgolf train` plus what the record pipeline
// adds (name, seeds, evaluation). They resolve as preset < config file < flags, and the
// resolved whole is written into the record folder as config.toml, which reproduces the
// run on its own and tells a restarted run whether the folder is its own.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/config.h"
#include "eval/ttt.h"

namespace CLI {
class App;
}

namespace pg {

struct RunOptions {
    std::string name;    // the record's name; its folder is records/<date>_<name>
    std::string out;     // the record folder (default: records/<date>_<name>)
    std::string seeds;   // "42,314,999"; default: --seed
    std::string date;    // UTC, ISO 8601, of the first start; kept in config.toml
    std::string author = "pgolf";
    std::string github_id;
    std::string blurb;   // default: a summary of the configuration
    std::string weights = "ema";  // the weights packed: ema | swa | raw
    int stride = 64;              // sliding-window stride of the scored evaluations
    int eval_batch_seqs = 8;
    long eval_tokens = 0;         // targets scored by the sliding and TTT evaluations; 0 = all
    bool ttt = true;              // score-first TTT as the final evaluation
    TttOptions ttt_opt;           // its lr, momentum, epochs, chunk, clip, batch (eval part unused)
};

std::vector<Field> fields(RunOptions& r);
// The train fields that pass through `pgolf run`: all but out and resume, which the
// pipeline sets for each seed.
std::vector<Field> run_train_fields(TrainConfig& t);

// What a command line gave: the flags parse into these; --config and --preset are read
// when the command runs, so that the preset comes first whatever the order.
struct RunFlags {
    std::string config_file, preset;
    Config cfg;
    RunOptions run;
};
void add_run_flags(CLI::App& sub, RunFlags& f);

struct RunSettings {
    Config cfg;
    RunOptions run;
    std::vector<uint64_t> seeds;  // parsed from run.seeds
};
// preset < config file < the flags given on sub. Fails with one line on a bad file or value.
RunSettings resolve_settings(const CLI::App& sub, RunFlags& given);

// config.toml: every setting but out, resume, stop-after and seed (seeds holds it), one
// `key = value` a line, readable by --config.
std::string settings_toml(RunSettings& s);
// `--flag=value` arguments of `pgolf train` for every passed-through field (empty strings,
// which mean "the default", are left out).
std::vector<std::string> train_flag_args(Config& c);

}  // namespace pg
