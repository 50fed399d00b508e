// fp16 and bf16 conversions, round to nearest even like the GPU's __float2half_rn and
// __float2bfloat16_rn, so a scale or weight rounded here equals the one rounded on device.
#pragma once
#include <cstdint>

namespace pg {

uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t h);
inline float round_to_f16(float x) { return f16_to_f32(f32_to_f16(x)); }

}  // namespace pg
