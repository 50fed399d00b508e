// Byte tables for evaluation tests that need no tokenizer: token t stands for (t % 3) + 1
// bytes, odd tokens carry a leading space, and nothing is a boundary.
#pragma once
#include "eval/bpb.h"

namespace pg::test {

inline ByteTables toy_tables(int vocab) {
    ByteTables b;
    for (int t = 0; t < vocab; ++t) {
        b.base.push_back(t % 3 + 1);
        b.leading_space.push_back(t % 2);
        b.boundary.push_back(0);
    }
    return b;
}

}  // namespace pg::test
