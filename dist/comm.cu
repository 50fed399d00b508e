#include "dist/comm.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <thread>

#include "common/clock.h"

namespace pg {

namespace {

template <class T>
ncclDataType_t nccl_type();
template <>
ncclDataType_t nccl_type<float>() {
    return ncclFloat32;
}
template <>
ncclDataType_t nccl_type<double>() {
    return ncclFloat64;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Polling interval of host waits: short at first (a step's collectives finish in well under a
// millisecond of waiting), then backing off so a long wait costs no CPU.
void backoff(int& us) {
    std::this_thread::sleep_for(std::chrono::microseconds(us));
    us = us < 2000 ? us * 2 : us;
}

}  // namespace

std::string id_to_hex(const ncclUniqueId& id) {
    static const char* digits = "0123456789abcdef";
    std::string s(2 * NCCL_UNIQUE_ID_BYTES, '0');
    for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; ++i) {
        const auto b = static_cast<unsigned char>(id.internal[i]);
        s[2 * i] = digits[b >> 4];
        s[2 * i + 1] = digits[b & 15];
    }
    return s;
}

ncclUniqueId id_from_hex(const std::string& hex, const std::string& source) {
    if (hex.size() != 2 * NCCL_UNIQUE_ID_BYTES)
        fail("%s: an NCCL id is %d hex digits, got %zu characters", source.c_str(), 2 * NCCL_UNIQUE_ID_BYTES,
             hex.size());
    ncclUniqueId id;
    for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; ++i) {
        const int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) fail("%s: not a hex digit at position %d of the NCCL id", source.c_str(), 2 * i + (hi >= 0));
        id.internal[i] = static_cast<char>(hi * 16 + lo);
    }
    return id;
}

void disable_nvls() { setenv("NCCL_NVLS_ENABLE", "0", 1); }

Comm::Comm(const ncclUniqueId& id, int rank, int world, int device, double timeout_s)
    : rank_(rank), world_(world), timeout_s_(timeout_s) {
    if (world < 1 || rank < 0 || rank >= world) fail("NCCL: rank %d is not in a world of %d", rank, world);
    if (!(timeout_s > 0)) fail("NCCL: the timeout must be positive (got %g s)", timeout_s);
    disable_nvls();
    PG_CHECK(cudaSetDevice(device));
    double* pinned = nullptr;
    PG_CHECK(cudaMallocHost(&pinned, kHostValues * sizeof(double)));
    pinned_.reset(pinned);
    host_values_ = DeviceArray<double>(kHostValues);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const ncclResult_t r = ncclCommInitRankConfig(&comm_, world, id, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress)
        fail("rank %d/%d: NCCL init failed: %s (%s)", rank, world, ncclGetErrorString(r), ncclGetLastError(comm_));
    check(r, "init (are all ranks started with the same id?)");
}

Comm::~Comm() {
    if (!comm_) return;
    // Unwinding from an error: the peers may be waiting for this rank in a collective that will
    // never come, and a clean destroy would wait for them.
    if (std::uncaught_exceptions() > 0) {
        ncclCommAbort(comm_);
        return;
    }
    ncclResult_t r = ncclCommFinalize(comm_);
    if (r == ncclInProgress) r = settle(timeout_s_);
    if (r == ncclSuccess)
        ncclCommDestroy(comm_);
    else
        ncclCommAbort(comm_);
}

ncclResult_t Comm::settle(double timeout_s) {
    const auto t0 = std::chrono::steady_clock::now();
    int us = 20;
    for (;;) {
        ncclResult_t state = ncclSuccess;
        const ncclResult_t q = ncclCommGetAsyncError(comm_, &state);
        if (q != ncclSuccess) return q;
        if (state != ncclInProgress) return state;
        if (seconds_since(t0) > timeout_s) return ncclInProgress;
        backoff(us);
    }
}

void Comm::abort_and_fail(const std::string& why) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
    fail("rank %d/%d: %s; NCCL communicator aborted", rank_, world_, why.c_str());
}

ncclComm_t Comm::live(const char* what) {
    if (!comm_) fail("rank %d/%d: NCCL %s on an aborted communicator", rank_, world_, what);
    return comm_;
}

void Comm::check(ncclResult_t r, const char* what) {
    if (r == ncclInProgress) r = settle(timeout_s_);
    if (r == ncclInProgress) abort_and_fail(format("NCCL %s: no progress for %g s", what, timeout_s_));
    if (r != ncclSuccess)
        abort_and_fail(format("NCCL %s failed: %s (%s)", what, ncclGetErrorString(r), ncclGetLastError(comm_)));
}

template <class T>
void Comm::all_reduce(const T* send, T* recv, size_t n, ncclRedOp_t op, cudaStream_t stream) {
    check(ncclAllReduce(send, recv, n, nccl_type<T>(), op, live("all_reduce"), stream), "all_reduce");
}
template void Comm::all_reduce<float>(const float*, float*, size_t, ncclRedOp_t, cudaStream_t);
template void Comm::all_reduce<double>(const double*, double*, size_t, ncclRedOp_t, cudaStream_t);

void Comm::reduce_scatter(const float* send, float* recv, size_t recv_n, ncclRedOp_t op, cudaStream_t stream) {
    check(ncclReduceScatter(send, recv, recv_n, ncclFloat32, op, live("reduce_scatter"), stream), "reduce_scatter");
}

void Comm::all_gather(const float* send, float* recv, size_t send_n, cudaStream_t stream) {
    check(ncclAllGather(send, recv, send_n, ncclFloat32, live("all_gather"), stream), "all_gather");
}

template <class T>
void Comm::broadcast(T* x, size_t n, int root, cudaStream_t stream) {
    check(ncclBroadcast(x, x, n, nccl_type<T>(), root, live("broadcast"), stream), "broadcast");
}
template void Comm::broadcast<float>(float*, size_t, int, cudaStream_t);
template void Comm::broadcast<double>(double*, size_t, int, cudaStream_t);

void Comm::wait(cudaStream_t stream, const char* what) {
    live(what);
    const auto t0 = std::chrono::steady_clock::now();
    int us = 20;
    for (;;) {
        const cudaError_t e = cudaStreamQuery(stream);
        if (e == cudaSuccess) return;
        if (e != cudaErrorNotReady) PG_CHECK(e);
        ncclResult_t state = ncclSuccess;
        PG_CHECK(ncclCommGetAsyncError(comm_, &state));
        if (state != ncclSuccess && state != ncclInProgress)
            abort_and_fail(format("%s: NCCL error: %s (%s)", what, ncclGetErrorString(state), ncclGetLastError(comm_)));
        if (seconds_since(t0) > timeout_s_)
            abort_and_fail(format("%s: no progress for %g s (a rank died or stalls)", what, timeout_s_));
        backoff(us);
    }
}

void Comm::barrier(cudaStream_t stream) {
    all_reduce(host_values_.get(), host_values_.get(), 1, ncclSum, stream);
    wait(stream, "barrier");
}

void Comm::sum_host(double* v, int n, cudaStream_t stream) {
    PG_CHECK(n >= 0 && n <= kHostValues);
    std::copy(v, v + n, pinned_.get());
    PG_CHECK(cudaMemcpyAsync(host_values_.get(), pinned_.get(), n * sizeof(double), cudaMemcpyHostToDevice, stream));
    all_reduce(host_values_.get(), host_values_.get(), size_t(n), ncclSum, stream);
    PG_CHECK(cudaMemcpyAsync(pinned_.get(), host_values_.get(), n * sizeof(double), cudaMemcpyDeviceToHost, stream));
    wait(stream, "sum of host values");
    std::copy(pinned_.get(), pinned_.get() + n, v);
}

double Comm::leader_value(double v, cudaStream_t stream) {
    *pinned_ = v;
    PG_CHECK(cudaMemcpyAsync(host_values_.get(), pinned_.get(), sizeof v, cudaMemcpyHostToDevice, stream));
    broadcast(host_values_.get(), 1, 0, stream);
    PG_CHECK(cudaMemcpyAsync(pinned_.get(), host_values_.get(), sizeof v, cudaMemcpyDeviceToHost, stream));
    wait(stream, "value from rank 0");
    return *pinned_;
}

}  // namespace pg
