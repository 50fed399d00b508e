// Where training stands and what that switches on: the LR multiplier and the phase
// predicates (QAT, depth recurrence, SWA) all come from one progress number, so the trainer
// asks here and nowhere else.
//
// progress p = step / iterations, or with a wall-clock cap max(step / iterations,
// elapsed_s / max_wallclock_s), clamped to [0, 1]; training is done at p >= 1, or, under a
// wall-clock cap, once the next step, if it takes as long as the last one, would end past the
// cap: the cap bounds the training time instead of being a point its last step crosses.
// lr_scale = warmup * warmdown:
//   warmup   = (step + 1) / warmup_steps while step < warmup_steps (the first step is not
//              wasted at LR 0), else 1;
//   warmdown = 1 before the final warmdown_frac of progress, then linear from 1 at
//              p = 1 - warmdown_frac down to lr_floor at p = 1.
// With several ranks, every rank must pass the same elapsed_s (rank 0's, broadcast), or the
// ranks would disagree about the phase.
#pragma once

#include "common/config.h"

namespace pg {

double train_progress(int step, double elapsed_s, const TrainConfig& cfg);
float lr_scale(int step, double elapsed_s, const TrainConfig& cfg);

struct Phases {
    double progress = 0;
    float lr_scale = 1;
    bool done = false;   // p >= 1 or the cap in reach: stop before taking this step
    bool qat = false;    // qat_from < 1 and p >= qat_from
    bool recur = false;  // recur_repeats > 1 and p >= recur_from
    bool swa = false;    // swa_from > 0 and p >= swa_from
};

// Everything about the step about to be taken (0-based `step`, `elapsed_s` of training so far,
// `last_step_s` the duration of the step before it, 0 when unknown).
Phases phases_at(int step, double elapsed_s, const Config& cfg, double last_step_s = 0);

}  // namespace pg
