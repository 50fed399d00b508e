#include <omp.h>

#include "common/check.h"
#include "common/device.h"

namespace pg {

std::string DeviceInfo::describe() const {
    if (cuda_devices == 0) return name;
    return format("%d x %s (sm_%d%d, %.1f GiB)", cuda_devices, name.c_str(), sm_major, sm_minor,
                  memory_bytes / double(1 << 30));
}

DeviceInfo detect_device() {
    DeviceInfo d;
    int n = 0;
    // No driver or no GPU both mean "run on the CPU"; clear the sticky error for later calls.
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        d.name = format("CPU (%d threads)", omp_get_max_threads());
        return d;
    }
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        d.name = format("CPU (%d threads)", omp_get_max_threads());
        return d;
    }
    d.cuda_devices = n;
    d.name = p.name;
    d.sm_major = p.major;
    d.sm_minor = p.minor;
    d.memory_bytes = p.totalGlobalMem;
    return d;
}

bool use_cuda(const std::string& flag, const DeviceInfo& info) {
    if (flag == "cpu") return false;
    if (flag == "cuda" && info.cuda_devices == 0) fail("--device cuda: no CUDA GPU is visible");
    return info.cuda_devices > 0;
}

}  // namespace pg
