// GPU test cases run only where a CUDA device is visible; elsewhere (CI) they say so and pass.
#pragma once
#include <cuda_runtime.h>
#include <doctest/doctest.h>

inline bool gpu_available() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // no driver: clear the sticky error for later calls
        return false;
    }
    return n > 0;
}

// First statement of a GPU test case: returns from it, with a visible message, when no GPU.
#define PG_REQUIRE_GPU()                                          \
    do {                                                          \
        if (!gpu_available()) {                                   \
            MESSAGE("skipped: no CUDA GPU visible");              \
            return;                                               \
        }                                                         \
    } while (0)
