#include "train/trainer.h"

#include <algorithm>

#include "common/check.h"
#include "dist/rank.h"

namespace pg {

BpbAccumulator Trainer::validate(Weights w, bool recur, const std::vector<uint16_t>& tokens, const ByteTables& bytes,
                                 const EvalOptions& opt, Comm* comm) {
    load_weights(w);
    EvalOptions mine = opt;
    mine.rank = comm ? comm->rank() : 0;
    mine.world = comm ? comm->world() : 1;
    const BpbAccumulator acc = evaluate(score(recur), tokens, bytes, mine);
    load_weights(Weights::Master);
    return all_reduce_bpb(comm, acc, nullptr);
}

int pick_micro_batch(int seqs, int seq_len, size_t per_seq_bytes, size_t available_bytes, long max_tokens) {
    PG_CHECK(seqs >= 1 && seq_len >= 1 && per_seq_bytes > 0);
    if (per_seq_bytes > available_bytes)
        fail("one sequence of %d tokens needs %.2f GiB of activations, more than the %.2f GiB free; lower --seq-len",
             seq_len, per_seq_bytes / double(1 << 30), available_bytes / double(1 << 30));
    const long by_memory = long(available_bytes / per_seq_bytes);
    const long by_tokens = std::max(1L, max_tokens / seq_len);
    const long cap = std::min(by_memory, by_tokens);
    for (long m = std::min<long>(seqs, cap); m > 1; --m)
        if (seqs % m == 0) return int(m);
    return 1;
}

}  // namespace pg
