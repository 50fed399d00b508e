// Tests that run the built binary (build/pgolf, from the repo root) and read its output.
#pragma once
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace pg::test {

// Runs build/pgolf with args; returns the exit code and fills the combined output.
inline int run_pgolf(const std::string& args, std::string& out) {
    FILE* p = popen(("build/pgolf " + args + " 2>&1").c_str(), "r");
    REQUIRE(p != nullptr);
    out.clear();
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    const int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The value of key in the last "RESULT k=v ..." line of out.
inline double result_value(const std::string& out, const std::string& key) {
    const size_t r = out.rfind("RESULT ");
    REQUIRE(r != std::string::npos);
    const size_t k = out.find(" " + key + "=", r);
    REQUIRE(k != std::string::npos);
    return std::stod(out.substr(k + key.size() + 2));
}

}  // namespace pg::test
