// Where `pgolf train`, `pgolf eval` and `pgolf pack` compute. --device auto takes the GPU when
// one is visible and the model fits the GPU path (the flash-attention kernels' head dims), else
// the CPU reference; --device cuda insists on the GPU and fails with the reason.
#pragma once
#include <string>

#include "common/config.h"

namespace pg {

struct ComputeDevice {
    bool cuda = false;
    std::string describe;  // for the command's first line
};
ComputeDevice pick_device(const std::string& flag, const ModelConfig& m);

}  // namespace pg
