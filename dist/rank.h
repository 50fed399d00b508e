// What the training driver and evaluation do differently on several ranks. `comm` is null in a
// single process; every function is then what one process would do.
//
//   Logs: rank 0 only (RankInfo::leader()). Files (checkpoints, logs): rank 0 writes them.
//   Decisions that must agree (the wall-clock schedule, when to stop): rank 0's clock.
//   Validation: each rank scores its share of the windows; the sums are added up.
#pragma once
#include <functional>
#include <vector>

#include "dist/comm.h"
#include "eval/bpb.h"
#include "eval/evaluate.h"

namespace pg {

// The sums of every rank's accumulator (loss, bytes, tokens), on every rank.
BpbAccumulator all_reduce_bpb(Comm* comm, const BpbAccumulator& local, cudaStream_t stream);

// The mean of x over ranks (the training loss of a log line).
double mean_over_ranks(Comm* comm, double x, cudaStream_t stream);

// Rank 0's v on every rank: feed the schedule rank 0's elapsed time, so that every rank takes the
// same LR, the same phases and stops at the same step (a rank that stopped alone would leave the
// others waiting in a collective).
double leader_value(Comm* comm, double v, cudaStream_t stream);

// Rank 0 runs `write`; then every rank waits for it, so none runs ahead of a checkpoint (a run
// stopped with --stop-after must find it complete on resume).
void leader_writes(Comm* comm, cudaStream_t stream, const std::function<void()>& write);

}  // namespace pg
