// `pgolf train --gpus N`: one process a GPU, no MPI or torchrun. The process the user started
// becomes the launcher: it makes the NCCL id, re-executes its own binary (/proc/self/exe) with
// the same arguments once per local GPU, adding the rank to the environment, and waits. When a
// rank exits non-zero or is killed, the launcher stops the others and fails with one line naming
// that rank. Each started process sees PGOLF_RANK and takes the training path.
//
// Several hosts: every node runs the same command with --nodes, its own --node-rank and one
// --rendezvous; node 0 makes the id and hands it to the others through a file on a shared
// filesystem (file:PATH; use a fresh path per run, a stale file from an earlier run would be
// read) or over TCP (tcp:HOST:PORT, HOST being node 0). Every node runs the same number of GPUs;
// global rank = node_rank * gpus + local rank.
#pragma once
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "dist/comm.h"

namespace pg {

// Where this process runs among several; not part of the model or training config (a checkpoint
// resumes on any number of GPUs).
struct DistOptions {
    int nodes = 1;
    int node_rank = 0;
    std::string rendezvous;  // file:PATH | tcp:HOST:PORT; needed when nodes > 1
    double nccl_timeout_s = 300;
    // Set by the command line (pgolf train, pgolf eval): this process may become the launcher.
    // A library call (tests) leaves it false: it joins a rank that a launcher started, or runs alone.
    bool launch = false;
};
std::vector<Field> fields(DistOptions& d);  // --nodes, --node-rank, --rendezvous, --nccl-timeout

struct RankInfo {
    int rank = 0, world = 1;
    int local_rank = 0;  // the CUDA device of this rank
    ncclUniqueId id{};   // valid when world > 1
    bool leader() const { return rank == 0; }
};

// The environment the launcher gives each rank.
constexpr const char* kEnvRank = "PGOLF_RANK";
constexpr const char* kEnvWorld = "PGOLF_WORLD";
constexpr const char* kEnvLocalRank = "PGOLF_LOCAL_RANK";
constexpr const char* kEnvNcclId = "PGOLF_NCCL_ID";  // 256 hex digits (id_to_hex)

// Fills `me` from the environment; false when PGOLF_RANK is unset (not a launched rank).
// Malformed or inconsistent values fail naming the variable.
bool rank_from_env(RankInfo& me);

// The first call of the GPU training path. In a launched rank: fills `me`, returns false (go on
// and train). With one rank in all (gpus, 0 = all visible, times nodes): me = rank 0 of 1,
// returns false. Otherwise this process is the launcher: it runs this node's ranks with argv and
// returns true once all of them exited 0 (the caller then returns), or fails naming the rank
// that did not.
bool launch_ranks(int argc, char** argv, int gpus, const DistOptions& opt, RankInfo& me);

// Where a command on the GPU path runs: this rank, and its communicator (null with one rank,
// where every helper of dist/rank.h is the one-process one).
struct Ranks {
    RankInfo me;
    std::unique_ptr<Comm> comm;
};
// The start of pgolf train and pgolf eval on the GPU path. In a rank that a launcher started:
// fills `out` (its device made current, its communicator joined) and returns true. In the
// process the user started, with opt.launch and more than one rank in all: launch_ranks with
// this process's own command line (/proc/self/cmdline), then returns false; the caller returns,
// the ranks did the work. Otherwise: rank 0 of 1, no communicator, true.
bool join_ranks(int gpus, const DistOptions& opt, Ranks& out);

// The pieces of launch_ranks, exposed for tests.
struct LaunchPlan {
    std::string exe;                // the program every rank runs
    std::vector<std::string> argv;  // its arguments, argv[0] included
    int first_rank = 0, local_ranks = 1, world = 1;
    ncclUniqueId id{};
};
// Starts ranks first_rank .. first_rank + local_ranks - 1 (local rank i on device i) and waits
// for all of them. When one exits non-zero or by a signal, the others get SIGTERM (SIGKILL 10 s
// later), and this fails naming the first rank that failed. A rank whose launcher dies gets
// SIGTERM too (PR_SET_PDEATHSIG).
void run_ranks(const LaunchPlan& plan);
// Node 0 hands the id to `readers` other nodes (file: writes it; tcp: serves it on PORT of every
// local interface); the other nodes wait for it. Both give up after timeout_s.
void publish_id(const std::string& rendezvous, const ncclUniqueId& id, int readers, double timeout_s);
ncclUniqueId fetch_id(const std::string& rendezvous, double timeout_s);

}  // namespace pg
