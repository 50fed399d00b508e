// The challenge budget: artifact bytes + code bytes <= 16,000,000 (decimal). Code bytes are
// the size of code.tar.xz, the sources that build the binary tarred deterministically and
// compressed with xz -9e (the Makefile builds it next to the binary), as records ship their
// code compressed.
#pragma once
#include <cstdio>
#include <string>

namespace pg {

constexpr long long kBudgetBytes = 16000000;

struct Budget {
    long long model_bytes = 0, code_bytes = 0, total = 0;
    long long margin = 0;  // budget - total; negative when over
    bool fits() const { return margin >= 0; }
};

Budget check_budget(long long model_bytes, long long code_bytes);

// code.tar.xz next to the running binary (/proc/self/exe's directory).
std::string default_code_path();

// Reads and verifies the artifact, prints the byte table to out and returns the check.
Budget size_report(const std::string& artifact_path, const std::string& code_path, std::FILE* out);

}  // namespace pg
