// doctest's runner. GPU test cases call gpu_available() (tests/gpu.h) and skip with a
// visible message when no CUDA device is present.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
