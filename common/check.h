// The one error path of pgolf. User-facing problems (bad input, bad flags) and failed
// library calls both end in pg::Error, which main() prints as a single line and turns
// into exit code 1. PG_CHECK works for bool conditions here and, once cuda_check.cuh is
// included, for CUDA / cuBLAS / NCCL status codes too (overloads of pg::ok / pg::why).
#pragma once
#include <cstdarg>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace pg {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

inline std::string vformat(const char* fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = std::vsnprintf(nullptr, 0, fmt, ap2);
    va_end(ap2);
    std::string s(n > 0 ? n : 0, '\0');
    if (n > 0) std::vsnprintf(s.data(), s.size() + 1, fmt, ap);
    return s;
}

__attribute__((format(printf, 1, 2))) inline std::string format(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

// Throws the one-line message that the user sees ("pgolf: error: <msg>").
[[noreturn]] __attribute__((format(printf, 1, 2))) inline void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string s = vformat(fmt, ap);
    va_end(ap);
    throw Error(s);
}

inline bool ok(bool b) { return b; }
inline const char* why(bool) { return "check failed"; }

[[noreturn]] inline void fail_at(const char* file, int line, const char* expr, const std::string& why) {
    fail("%s:%d: %s: %s", file, line, expr, why.c_str());
}

}  // namespace pg

#define PG_CHECK(expr)                                                         \
    do {                                                                       \
        auto pg_check_status_ = (expr);                                        \
        if (!pg::ok(pg_check_status_))                                         \
            pg::fail_at(__FILE__, __LINE__, #expr, pg::why(pg_check_status_)); \
    } while (0)
