// One NCCL communicator per rank (one process a GPU), and the collectives pgolf uses on flat
// device buffers. Everything is enqueued on the caller's stream; nothing waits for the host
// except wait() and the *_host helpers.
//
// Failure handling. The communicator is non-blocking (ncclConfig_t::blocking = 0): no NCCL call
// blocks the host, and every host-side wait polls ncclCommGetAsyncError next to the stream. A
// peer that died or a network error shows up as an async error; a peer that stalls shows up as
// no progress for `timeout_s`. Either way the communicator is aborted (ncclCommAbort, which
// also ends NCCL kernels stuck waiting for the peer) and pg::fail reports one line naming this
// rank, instead of the hang a cudaStreamSynchronize would give. So a rank must wait for a stream
// with collectives on it through wait(), never cudaStreamSynchronize. The timeout must exceed
// the longest stretch between two waits in which some rank is legitimately busy elsewhere
// (rank 0 writing a checkpoint, say).
//
// NVLink multicast (NVLS) is off: NCCL_NVLS_ENABLE=0 is set before the communicator is made.
#pragma once
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <string>

#include "common/cuda_check.cuh"

namespace pg {

// The 128 bytes of an ncclUniqueId as 256 lowercase hex digits, and back; a malformed string
// fails naming `source` (where it came from: an environment variable, a file, an address).
std::string id_to_hex(const ncclUniqueId& id);
ncclUniqueId id_from_hex(const std::string& hex, const std::string& source);

// Turns NVLink multicast off for this process and every process it starts.
void disable_nvls();

class Comm {
public:
    // Joins the communicator of `world` ranks that `id` names, as `rank`, on CUDA device
    // `device` (made current). Every rank must call this with the same id and world.
    Comm(const ncclUniqueId& id, int rank, int world, int device, double timeout_s);
    ~Comm();  // destroys the communicator, or aborts it when unwinding from an error
    Comm(const Comm&) = delete;
    Comm& operator=(const Comm&) = delete;

    int rank() const { return rank_; }
    int world() const { return world_; }

    // recv[0, n) = op over ranks of send[0, n); in place when recv == send. T is float or double.
    template <class T>
    void all_reduce(const T* send, T* recv, size_t n, ncclRedOp_t op, cudaStream_t stream);
    // recv[0, recv_n) = op over ranks of send[rank * recv_n, (rank + 1) * recv_n). In place when
    // recv == send + rank * recv_n.
    void reduce_scatter(const float* send, float* recv, size_t recv_n, ncclRedOp_t op, cudaStream_t stream);
    // recv[r * send_n, (r + 1) * send_n) = rank r's send[0, send_n). In place when
    // send == recv + rank * send_n.
    void all_gather(const float* send, float* recv, size_t send_n, cudaStream_t stream);
    // x[0, n) = rank `root`'s x[0, n), in place. T is float or double.
    template <class T>
    void broadcast(T* x, size_t n, int root, cudaStream_t stream);

    // Waits until everything enqueued on `stream` has run, polling for NCCL errors; fails (and
    // aborts the communicator) on an error or after timeout_s without completion. `what` names
    // the work in the message.
    void wait(cudaStream_t stream, const char* what);
    // Every rank reaches this point before any goes on.
    void barrier(cudaStream_t stream);
    // Host values through the communicator (at most kHostValues; every rank calls, then waits):
    // v[i] = sum over ranks of v[i]; and rank 0's v.
    static constexpr int kHostValues = 8;
    void sum_host(double* v, int n, cudaStream_t stream);
    double leader_value(double v, cudaStream_t stream);

private:
    // NCCL's answer to a call: ncclInProgress is polled to completion, anything but success
    // aborts and fails.
    void check(ncclResult_t r, const char* what);
    // The communicator for the next call; fails once it was aborted (NCCL frees it then).
    ncclComm_t live(const char* what);
    // Polls the async state until it is no longer ncclInProgress; gives up after timeout_s.
    ncclResult_t settle(double timeout_s);
    [[noreturn]] void abort_and_fail(const std::string& why);

    ncclComm_t comm_ = nullptr;  // null once aborted
    int rank_ = 0, world_ = 1;
    double timeout_s_;
    // The host helpers' values on both sides; pinned, so no copy can block on a stuck stream.
    struct FreeHost {
        void operator()(double* p) const { cudaFreeHost(p); }
    };
    std::unique_ptr<double, FreeHost> pinned_;
    DeviceArray<double> host_values_;
};

}  // namespace pg
