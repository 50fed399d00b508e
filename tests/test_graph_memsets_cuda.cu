// memsets_as_kernels: a captured graph's memset nodes (1-, 2- and 4-byte values, pitched rows)
// become kernel nodes that write the same bytes, in the same order with the kernels around them.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "common/cuda_check.cuh"
#include "model/graph_memsets.cuh"
#include "tests/gpu.h"

using namespace pg;

namespace {

// Adds 1 to every byte: run before and after a memset, it tells whether the memset ran between.
__global__ void add_one(unsigned char* p, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) ++p[i];
}

int count_nodes(cudaGraph_t g, cudaGraphNodeType want) {
    size_t n = 0;
    PG_CHECK(cudaGraphGetNodes(g, nullptr, &n));
    std::vector<cudaGraphNode_t> nodes(n);
    PG_CHECK(cudaGraphGetNodes(g, nodes.data(), &n));
    int c = 0;
    for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType t;
        PG_CHECK(cudaGraphNodeGetType(node, &t));
        c += t == want;
    }
    return c;
}

}  // namespace

TEST_CASE("memsets_as_kernels: same bytes as the memset nodes, in stream order") {
    PG_REQUIRE_GPU();
    std::mt19937_64 rng(std::random_device{}());
    const size_t pitch = 1000, rows = 7, n = pitch * rows;
    std::vector<unsigned char> init(n);
    for (auto& b : init) b = static_cast<unsigned char>(rng());
    const unsigned v8 = unsigned(rng() & 0xff), v16 = unsigned(rng() & 0xffff), v32 = unsigned(rng());
    DeviceArray<unsigned char> buf(n), big(kMemsetAsKernelMaxBytes + 16);

    cudaStream_t s;
    PG_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    auto capture = [&](bool replace) {
        PG_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        add_one<<<4, 128, 0, s>>>(buf.get(), n);
        PG_CHECK(cudaMemsetAsync(buf.get() + 3, int(v8), 101, s));  // odd offset and count
        add_one<<<4, 128, 0, s>>>(buf.get(), n);
        PG_CHECK(cudaMemset2DAsync(buf.get() + 200, pitch, int(v8 ^ 0x5a), 33, rows, s));  // pitched
        PG_CHECK(cudaMemsetAsync(big.get(), 0, big.size(), s));  // too large: stays a memset
        cudaGraph_t g = nullptr;
        PG_CHECK(cudaStreamEndCapture(s, &g));
        int replaced = 0;
        if (replace) replaced = memsets_as_kernels(g);
        cudaGraphExec_t e;
        PG_CHECK(cudaGraphInstantiate(&e, g, 0));
        return std::make_tuple(g, e, replaced);
    };
    auto run = [&](bool replace) {
        buf.upload(init);
        auto [g, e, replaced] = capture(replace);
        PG_CHECK(cudaGraphLaunch(e, s));
        PG_CHECK(cudaStreamSynchronize(s));
        const int memsets_left = count_nodes(g, cudaGraphNodeTypeMemset);
        PG_CHECK(cudaGraphExecDestroy(e));
        PG_CHECK(cudaGraphDestroy(g));
        return std::make_tuple(buf.download(), replaced, memsets_left);
    };
    const auto [want, r0, left0] = run(false);
    const auto [got, r1, left1] = run(true);
    CHECK(r0 == 0);
    CHECK(left0 == 3);
    CHECK(r1 == 2);
    CHECK(left1 == 1);
    CHECK(std::memcmp(want.data(), got.data(), n) == 0);
    // The first memset ran between the two increments, the pitched one after both.
    CHECK(want[3] == static_cast<unsigned char>(v8 + 1));
    CHECK(want[200 + 2 * pitch] == static_cast<unsigned char>(v8 ^ 0x5a));
    CHECK(want[0] == static_cast<unsigned char>(init[0] + 2));

    // Wider elements, which the runtime's memset calls never make: memset nodes of 2 and 4
    // bytes a value, added to a graph directly.
    for (unsigned elem : {2u, 4u}) {
        cudaGraph_t g;
        PG_CHECK(cudaGraphCreate(&g, 0));
        cudaMemsetParams m{};
        m.dst = buf.get() + 8;
        m.pitch = pitch;
        m.value = elem == 2 ? v16 : v32;
        m.elementSize = elem;
        m.width = 50;
        m.height = rows;
        cudaGraphNode_t node;
        PG_CHECK(cudaGraphAddMemsetNode(&node, g, nullptr, 0, &m));
        buf.upload(init);
        CHECK(memsets_as_kernels(g) == 1);
        cudaGraphExec_t e;
        PG_CHECK(cudaGraphInstantiate(&e, g, 0));
        PG_CHECK(cudaGraphLaunch(e, s));
        PG_CHECK(cudaStreamSynchronize(s));
        const std::vector<unsigned char> out = buf.download();
        for (size_t r = 0; r < rows; ++r)
            for (size_t i = 0; i < pitch; ++i) {
                const size_t at = r * pitch + i;
                const bool in = i >= 8 && i < 8 + 50 * elem;
                const unsigned char expect =
                    in ? static_cast<unsigned char>(m.value >> (8 * ((i - 8) % elem))) : init[at];
                if (out[at] != expect) {
                    FAIL_CHECK("element size " << elem << ": byte " << at << " is " << int(out[at]) << ", not "
                                               << int(expect));
                    r = rows;
                    break;
                }
            }
        PG_CHECK(cudaGraphExecDestroy(e));
        PG_CHECK(cudaGraphDestroy(g));
    }
    PG_CHECK(cudaStreamDestroy(s));
}
