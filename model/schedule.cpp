#include "model/schedule.h"

#include <algorithm>

namespace pg {

double train_progress(int step, double elapsed_s, const TrainConfig& cfg) {
    double p = cfg.iterations > 0 ? double(step) / cfg.iterations : 0.0;
    if (cfg.max_wallclock_s > 0) p = std::max(p, elapsed_s / cfg.max_wallclock_s);
    return std::clamp(p, 0.0, 1.0);
}

float lr_scale(int step, double elapsed_s, const TrainConfig& cfg) {
    double s = 1.0;
    if (step < cfg.warmup_steps) s = double(step + 1) / cfg.warmup_steps;
    const double p = train_progress(step, elapsed_s, cfg), wd = cfg.warmdown_frac;
    if (wd > 0 && p > 1.0 - wd) s *= cfg.lr_floor + (1.0 - cfg.lr_floor) * (1.0 - p) / wd;
    return float(s);
}

Phases phases_at(int step, double elapsed_s, const Config& cfg, double last_step_s) {
    const TrainConfig& t = cfg.train;
    Phases ph;
    ph.progress = train_progress(step, elapsed_s, t);
    ph.lr_scale = lr_scale(step, elapsed_s, t);
    ph.done = ph.progress >= 1.0 || (t.max_wallclock_s > 0 && elapsed_s + last_step_s > t.max_wallclock_s);
    // Compared in float, the thresholds' own type, so 85 of 100 steps reaches qat_from = 0.85f.
    const float p = float(ph.progress);
    ph.qat = t.qat_from < 1 && p >= t.qat_from;
    ph.recur = cfg.model.recur_repeats > 1 && p >= cfg.model.recur_from;
    ph.swa = t.swa_from > 0 && p >= t.swa_from;
    return ph;
}

}  // namespace pg
