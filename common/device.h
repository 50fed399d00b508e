// Which compute device pgolf runs on; every command that computes says it in its first line.
#pragma once
#include <string>

namespace pg {

struct DeviceInfo {
    int cuda_devices = 0;  // 0: no usable CUDA GPU (no driver, or none visible)
    std::string name;      // "NVIDIA H100 80GB HBM3" or "CPU (N threads)"
    int sm_major = 0, sm_minor = 0;
    size_t memory_bytes = 0;
    std::string describe() const;
};

DeviceInfo detect_device();
// "auto" picks CUDA when a GPU is visible; "cuda" without one is an error.
bool use_cuda(const std::string& device_flag, const DeviceInfo& info);

}  // namespace pg
