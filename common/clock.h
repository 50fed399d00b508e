// Wall-clock seconds for logs and time caps (steady clock: immune to system clock changes).
#pragma once
#include <chrono>

namespace pg {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace pg
