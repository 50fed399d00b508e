// Scoring a token split with any model (CPU reference or GPU) for val_loss / val_bpb.
//
// Windows of seq_len inputs advance by `stride`. The first window scores all its targets;
// every later window scores only the targets that no earlier window scored (its last
// `stride`), so each target is scored exactly once, with the longest context the window
// schedule gives it. stride == seq_len is plain chunked evaluation. A final, shorter
// advance covers the targets left at the end of the split.
#pragma once
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "eval/bpb.h"

namespace pg {

// Fills nll[rows * seq] (natural-log loss of each target) for inputs/targets [rows, seq].
using ScoreFn = std::function<void(const int32_t* inputs, const int32_t* targets, int rows, int seq, float* nll)>;

struct EvalOptions {
    int seq_len = 2048;
    int stride = 2048;      // 64 for the challenge's sliding window
    int batch_seqs = 8;     // windows scored per ScoreFn call
    long max_tokens = 0;    // score only the first max_tokens targets; 0 = all
    // Several GPUs: each rank scores its contiguous share of every list of windows (all
    // windows cost the same), and the ranks' accumulators are summed (BpbAccumulator::merge).
    int rank = 0, world = 1;
};
// pg::fail unless 0 <= rank < world.
void check_ranks(int rank, int world);
// [begin, end) of rank's contiguous share of n items split over world ranks.
std::pair<long, long> rank_share(long n, int rank, int world);

// A window: inputs tokens[start, start + seq_len), targets one further; scored positions
// [first_scored, seq_len) of the window.
struct Window {
    long start = 0;
    int first_scored = 0;
};
std::vector<Window> make_windows(long n_tokens, const EvalOptions& opt);

// Runs this rank's share of `windows` through `score`, opt.batch_seqs at a time, and
// reports the loss of each scored target j (token j + 1) below target_end, in window order;
// fails on a non-finite loss. evaluate() and score-first TTT (eval/ttt.h, which cuts windows at chunk ends)
// share it, so both score a target from the same window with the same arithmetic.
using LossFn = std::function<void(long target, float nll)>;
void score_windows(const ScoreFn& score, const std::vector<uint16_t>& tokens, const std::vector<Window>& windows,
                   const EvalOptions& opt, long target_end, const LossFn& on_loss);

// The sums of this rank's targets (all targets with world 1).
BpbAccumulator evaluate(const ScoreFn& score, const std::vector<uint16_t>& tokens,
                        const ByteTables& bytes, const EvalOptions& opt);

}  // namespace pg
