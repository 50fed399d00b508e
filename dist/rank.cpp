#include "dist/rank.h"

namespace pg {

BpbAccumulator all_reduce_bpb(Comm* comm, const BpbAccumulator& local, cudaStream_t stream) {
    if (!comm) return local;
    // Byte and token counts are far below 2^53: exact as doubles.
    double v[3] = {local.loss_nats, double(local.bytes), double(local.tokens)};
    comm->sum_host(v, 3, stream);
    BpbAccumulator sum;
    sum.add(v[0], long(v[1]), long(v[2]));
    return sum;
}

double mean_over_ranks(Comm* comm, double x, cudaStream_t stream) {
    if (!comm) return x;
    comm->sum_host(&x, 1, stream);
    return x / comm->world();
}

double leader_value(Comm* comm, double v, cudaStream_t stream) { return comm ? comm->leader_value(v, stream) : v; }

void leader_writes(Comm* comm, cudaStream_t stream, const std::function<void()>& write) {
    if (!comm || comm->rank() == 0) write();
    if (comm) comm->barrier(stream);
}

}  // namespace pg
