#include "model/graph_memsets.cuh"

#include <cstdint>
#include <vector>

#include "common/cuda_check.cuh"

namespace pg {
namespace {

// A cudaMemsetParams' bytes: height rows of width elements (1, 2 or 4 bytes) at dst + row * pitch.
__global__ void memset_kernel(unsigned char* dst, size_t pitch, unsigned value, unsigned elem, size_t width,
                              size_t height) {
    const size_t n = width * height;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        unsigned char* const p = dst + i / width * pitch + i % width * elem;
        if (elem == 1) *p = static_cast<unsigned char>(value);
        else if (elem == 2) *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(value);
        else *reinterpret_cast<uint32_t*>(p) = value;
    }
}

}  // namespace

int memsets_as_kernels(cudaGraph_t graph) {
    size_t n = 0;
    PG_CHECK(cudaGraphGetNodes(graph, nullptr, &n));
    std::vector<cudaGraphNode_t> nodes(n);
    PG_CHECK(cudaGraphGetNodes(graph, nodes.data(), &n));
    int replaced = 0;
    for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType type;
        PG_CHECK(cudaGraphNodeGetType(node, &type));
        if (type != cudaGraphNodeTypeMemset) continue;
        cudaMemsetParams m;
        PG_CHECK(cudaGraphMemsetNodeGetParams(node, &m));
        if (m.width * m.height * m.elementSize > kMemsetAsKernelMaxBytes) continue;
        size_t nd = 0, nt = 0;
        PG_CHECK(cudaGraphNodeGetDependencies(node, nullptr, nullptr, &nd));
        PG_CHECK(cudaGraphNodeGetDependentNodes(node, nullptr, nullptr, &nt));
        std::vector<cudaGraphNode_t> deps(nd), dependents(nt);
        std::vector<cudaGraphEdgeData> dep_edges(nd), out_edges(nt);
        PG_CHECK(cudaGraphNodeGetDependencies(node, deps.data(), dep_edges.data(), &nd));
        PG_CHECK(cudaGraphNodeGetDependentNodes(node, dependents.data(), out_edges.data(), &nt));

        unsigned char* dst = static_cast<unsigned char*>(m.dst);
        size_t pitch = m.pitch, width = m.width, height = m.height;
        unsigned value = m.value, elem = m.elementSize;
        void* args[] = {&dst, &pitch, &value, &elem, &width, &height};
        cudaKernelNodeParams k{};
        k.func = reinterpret_cast<void*>(memset_kernel);
        k.blockDim = dim3(256);
        k.gridDim = dim3(unsigned((width * height + 255) / 256));
        k.kernelParams = args;
        cudaGraphNode_t kernel;
        PG_CHECK(cudaGraphAddKernelNode(&kernel, graph, nullptr, 0, &k));
        if (nd) {
            const std::vector<cudaGraphNode_t> to(nd, kernel);
            PG_CHECK(cudaGraphAddDependencies(graph, deps.data(), to.data(), dep_edges.data(), nd));
        }
        if (nt) {
            const std::vector<cudaGraphNode_t> from(nt, kernel);
            PG_CHECK(cudaGraphAddDependencies(graph, from.data(), dependents.data(), out_edges.data(), nt));
        }
        PG_CHECK(cudaGraphDestroyNode(node));
        ++replaced;
    }
    return replaced;
}

}  // namespace pg
