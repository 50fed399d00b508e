// What the pipeline reads back from the logs of its stages: train.log (written by
// `pgolf train`, appended to on resume), the RESULT line that pack and eval print last,
// and the byte table of `pgolf size`.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace pg {

struct CurvePoint {
    int step = 0;
    double seconds = 0;  // training seconds (validation and checkpoint writes excluded)
    double value = 0;
};

struct Score {
    double loss = 0, bpb = 0;
};

struct TrainLog {
    std::string device;  // "pgolf train: training on the <this>"
    std::string data;    // "data <dir> (...)": the directory
    std::string data_summary;  // the whole parenthesis: shard and val token counts
    // The run's history as one uninterrupted run: lines of steps beyond the step a resume
    // started from (work lost when the run was killed) are dropped.
    std::vector<CurvePoint> loss, val_bpb;
    // The last invocation: finished (final validation and checkpoint written) or stopped by
    // --stop-after (stopped_at = its step), or neither (killed, or failed).
    bool complete = false;
    int stopped_at = -1;
    int steps = 0;
    double train_seconds = 0;
    std::map<std::string, Score> final_scores;  // "raw", "ema", "swa"
};
TrainLog parse_train_log(const std::string& text);

// key -> value of the last "RESULT k=v ..." line; fails naming `path` when there is none.
std::map<std::string, double> parse_result_line(const std::string& text, const std::string& path);

struct SizeLog {
    long long model_bytes = 0, code_bytes = 0, total_bytes = 0;
};
// The "model bytes", "code bytes" and "total" rows of `pgolf size`; fails naming `path`.
SizeLog parse_size_log(const std::string& text, const std::string& path);

}  // namespace pg
