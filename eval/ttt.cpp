#include "eval/ttt.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common/check.h"
#include "common/clock.h"
#include "model/optim.h"

namespace pg {

void check_ttt_options(const TttOptions& o) {
    if (o.chunk_tokens < o.eval.seq_len)
        fail("eval: --ttt-chunk %ld is shorter than the window (seq_len %d)", o.chunk_tokens, o.eval.seq_len);
    if (o.epochs < 0) fail("eval: --ttt-epochs %d is negative", o.epochs);
    if (!(o.lr >= 0) || !std::isfinite(o.lr)) fail("eval: --ttt-lr %g must be finite and >= 0", double(o.lr));
    if (!(o.momentum >= 0 && o.momentum < 1)) fail("eval: --ttt-momentum %g must be in [0, 1)", double(o.momentum));
    if (!(o.clip >= 0) || !std::isfinite(o.clip)) fail("eval: --ttt-clip %g must be finite and >= 0", double(o.clip));
    if (o.batch_seqs < 1) fail("eval: --ttt-batch-seqs %d must be at least 1", o.batch_seqs);
    check_ranks(o.eval.rank, o.eval.world);
}

void RefTttModel::score(const int32_t* inputs, const int32_t* targets, int rows, int seq, float* nll) {
    model_.forward(inputs, targets, rows, seq, recur_, nll);
}

void sgd_momentum_step(float* w, float* v, const float* g, size_t n, float lr, float momentum, float clip) {
    const float scale = clip_scale(float(std::sqrt(sum_squares(g, n))), clip);
    for (size_t i = 0; i < n; ++i) {
        v[i] = momentum * v[i] + scale * g[i];
        w[i] -= lr * v[i];
    }
}

float RefTttModel::train_step(const int32_t* inputs, const int32_t* targets, int rows, int seq, int total_rows,
                              float lr, float momentum, float clip) {
    if (rows != total_rows) fail("eval: the CPU reference TTT runs in one process (%d of %d rows)", rows, total_rows);
    model_.zero_grad();
    const float loss = model_.forward(inputs, targets, rows, seq, recur_);
    model_.backward();
    if (velocity_.size() != model_.params.size()) velocity_.assign(model_.params.size(), 0.f);
    sgd_momentum_step(model_.params.data(), velocity_.data(), model_.grads.data(), model_.params.size(), lr,
                      momentum, clip);
    return loss;
}

namespace {

// `epochs` passes over the whole seq_len sequences of targets [c0, c1); returns the mean
// loss of this rank's rows in the last pass.
float train_chunk(TttModel& model, const std::vector<uint16_t>& tokens, long c0, long c1, const TttOptions& opt,
                  float lr, int& steps) {
    const int L = opt.eval.seq_len;
    const int n_seqs = int((c1 - c0) / L);
    std::vector<int32_t> in, tg;
    double last_sum = 0;
    int last_steps = 0;
    for (int e = 0; e < opt.epochs; ++e) {
        last_sum = 0, last_steps = 0;
        for (int s0 = 0; s0 < n_seqs; s0 += opt.batch_seqs) {
            const int total = std::min(opt.batch_seqs, n_seqs - s0);
            const auto [r0, r1] = rank_share(total, opt.eval.rank, opt.eval.world);
            const int rows = int(r1 - r0);
            in.resize(size_t(rows) * L);
            tg.resize(size_t(rows) * L);
            for (int r = 0; r < rows; ++r)
                for (int t = 0; t < L; ++t) {
                    const long j = c0 + long(s0 + r0 + r) * L + t;  // target j is token j + 1
                    in[size_t(r) * L + t] = tokens[j];
                    tg[size_t(r) * L + t] = tokens[j + 1];
                }
            const float loss = model.train_step(in.data(), tg.data(), rows, L, total, lr, opt.momentum, opt.clip);
            if (!std::isfinite(loss)) fail("eval: TTT loss is %g at targets [%ld, %ld): lower --ttt-lr", double(loss), c0, c1);
            ++steps;
            if (rows > 0) last_sum += loss, ++last_steps;  // a rank without rows has no loss to add
        }
    }
    return last_steps ? float(last_sum / last_steps) : 0.f;
}

}  // namespace

TttResult evaluate_ttt(TttModel& model, const std::vector<uint16_t>& tokens, const ByteTables& bytes,
                       const TttOptions& opt, const std::function<void(const TttChunk&)>& on_chunk,
                       const LossFn& on_loss) {
    check_ttt_options(opt);
    const std::vector<Window> windows = make_windows(long(tokens.size()), opt.eval);
    const int L = opt.eval.seq_len;
    const long n_targets = windows.back().start + L;
    const long n_chunks = (n_targets + opt.chunk_tokens - 1) / opt.chunk_tokens;
    const ScoreFn score = [&](const int32_t* in, const int32_t* tg, int rows, int seq, float* nll) {
        model.score(in, tg, rows, seq, nll);
    };
    TttResult res;
    std::vector<Window> cut;
    size_t w = 0;  // the first window with targets at or after the chunk's start
    for (long c = 0; c < n_chunks; ++c) {
        TttChunk ch;
        ch.first_target = c * opt.chunk_tokens;
        const long c1 = std::min(n_targets, ch.first_target + opt.chunk_tokens);
        ch.targets = c1 - ch.first_target;

        const auto t0 = std::chrono::steady_clock::now();
        cut.clear();
        while (w < windows.size() && windows[w].start + L <= ch.first_target) ++w;
        for (size_t v = w; v < windows.size() && windows[v].start + windows[v].first_scored < c1; ++v)
            cut.push_back({windows[v].start, int(std::max<long>(windows[v].first_scored, ch.first_target - windows[v].start))});
        score_windows(score, tokens, cut, opt.eval, c1, [&](long j, float l) {
            const int b = bytes.bytes(tokens[j + 1], tokens[j]);
            ch.score.add(l, b, 1);
            res.total.add(l, b, 1);
            if (on_loss) on_loss(j, l);
        });
        ch.score_seconds = seconds_since(t0);

        if (c + 1 < n_chunks && opt.epochs > 0) {
            const auto t1 = std::chrono::steady_clock::now();
            ch.lr = float(opt.lr * 0.5 * (1 + std::cos(M_PI * double(c) / double(n_chunks))));
            ch.train_loss = train_chunk(model, tokens, ch.first_target, c1, opt, ch.lr, ch.steps);
            ch.train_seconds = seconds_since(t1);
        }
        if (on_chunk) on_chunk(ch);
        res.chunks.push_back(ch);
    }
    return res;
}

}  // namespace pg
