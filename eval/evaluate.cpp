#include "eval/evaluate.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/check.h"

namespace pg {

void check_ranks(int rank, int world) {
    if (world < 1 || rank < 0 || rank >= world) fail("eval: rank %d of %d ranks is out of range", rank, world);
}

std::pair<long, long> rank_share(long n, int rank, int world) {
    return {n * rank / world, n * (rank + 1) / world};
}

std::vector<Window> make_windows(long n_tokens, const EvalOptions& opt) {
    if (opt.seq_len < 1 || opt.stride < 1 || opt.stride > opt.seq_len)
        fail("eval: need 1 <= stride (%d) <= seq_len (%d)", opt.stride, opt.seq_len);
    long n_targets = n_tokens - 1;
    if (opt.max_tokens > 0) n_targets = std::min(n_targets, opt.max_tokens);
    if (n_targets < opt.seq_len)
        fail("eval: %ld targets is fewer than one window of %d", n_targets, opt.seq_len);
    std::vector<Window> w;
    long scored = 0;  // targets [0, scored) are done; target j is token j + 1
    for (long start = 0; scored < n_targets; start += opt.stride) {
        start = std::min(start, n_targets - opt.seq_len);  // the last window ends at the last target
        const long first = std::max(scored, start);
        w.push_back({start, int(first - start)});
        scored = start + opt.seq_len;
    }
    return w;
}

void score_windows(const ScoreFn& score, const std::vector<uint16_t>& tokens, const std::vector<Window>& windows,
                   const EvalOptions& opt, long target_end, const LossFn& on_loss) {
    check_ranks(opt.rank, opt.world);
    const int L = opt.seq_len;
    const auto [first, last] = rank_share(long(windows.size()), opt.rank, opt.world);
    std::vector<int32_t> in, tg;
    std::vector<float> nll;
    for (long w0 = first; w0 < last; w0 += opt.batch_seqs) {
        const int rows = int(std::min<long>(opt.batch_seqs, last - w0));
        in.resize(size_t(rows) * L);
        tg.resize(size_t(rows) * L);
        nll.assign(size_t(rows) * L, 0.f);
        for (int r = 0; r < rows; ++r)
            for (int t = 0; t < L; ++t) {
                const long i = windows[w0 + r].start + t;
                in[size_t(r) * L + t] = tokens[i];
                tg[size_t(r) * L + t] = tokens[i + 1];
            }
        score(in.data(), tg.data(), rows, L, nll.data());
        for (int r = 0; r < rows; ++r) {
            const Window& win = windows[w0 + r];
            const int end = int(std::min<long>(L, target_end - win.start));
            for (int t = win.first_scored; t < end; ++t) {
                const float l = nll[size_t(r) * L + t];
                if (!std::isfinite(l)) fail("eval: non-finite loss at token %ld", win.start + t + 1);
                on_loss(win.start + t, l);
            }
        }
    }
}

BpbAccumulator evaluate(const ScoreFn& score, const std::vector<uint16_t>& tokens, const ByteTables& bytes,
                        const EvalOptions& opt) {
    BpbAccumulator acc;
    score_windows(score, tokens, make_windows(long(tokens.size()), opt), opt, std::numeric_limits<long>::max(),
                  [&](long j, float l) { acc.add(l, bytes.bytes(tokens[j + 1], tokens[j]), 1); });
    return acc;
}

}  // namespace pg
