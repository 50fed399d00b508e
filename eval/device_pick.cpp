#include "eval/device_pick.h"

#include "common/check.h"
#include "common/device.h"
#include "model/attention.cuh"

namespace pg {

ComputeDevice pick_device(const std::string& flag, const ModelConfig& m) {
    if (flag != "auto" && flag != "cpu" && flag != "cuda") fail("--device %s: use auto, cpu or cuda", flag.c_str());
    const DeviceInfo dev = detect_device();
    if (!use_cuda(flag, dev)) return {false, "CPU (reference)"};
    if (!flash_attention_supports_head_dim(m.head_dim)) {
        if (flag == "cuda") fail("--device cuda: the GPU path has head dims 32, 64 and 128, the model has %d", m.head_dim);
        return {false, format("CPU (reference; the GPU path has head dims 32, 64 and 128, the model has %d)", m.head_dim)};
    }
    return {true, dev.describe()};
}

}  // namespace pg
