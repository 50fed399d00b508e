// The record folder's documents, made from the numbers of each seed's logs: README.md,
// submission.json (the public challenge's fields) and curve.svg (train loss and val_bpb
// against training time). The same logs give the same bytes, so a rerun of a finished run
// rewrites them unchanged.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "pipeline/logs.h"
#include "pipeline/options.h"

namespace pg {

struct SeedResult {
    uint64_t seed = 0;
    std::string dir;  // seed_<seed>, relative to the record folder
    TrainLog train;
    Score pre_quant;   // train's final validation of the packed weights (train.log)
    Score post_quant;  // the artifact over the same targets and windows (eval_quant.log)
    Score sliding;     // the artifact, sliding window (eval_sliding.log)
    Score ttt;         // the artifact, score-first TTT (eval_ttt.log), when run
    double quant_seconds = 0, sliding_seconds = 0, ttt_seconds = 0;
    long sliding_tokens = 0;
    SizeLog bytes;     // size.log
    double tokens_per_second = 0;  // steps * batch tokens / training seconds

    const Score& score(bool ttt_on) const { return ttt_on ? ttt : sliding; }
    double eval_seconds(bool ttt_on) const { return ttt_on ? ttt_seconds : sliding_seconds; }
};

std::string submission_json(const RunSettings& s, const std::vector<SeedResult>& seeds);
std::string readme_md(const RunSettings& s, const std::vector<SeedResult>& seeds, const std::string& out_dir);
std::string curve_svg(const std::vector<SeedResult>& seeds);
// The default blurb: the model, quantization and evaluation in one line.
std::string summary_blurb(const RunSettings& s);

}  // namespace pg
