// A fresh directory under the system temp dir, removed with everything in it when the
// test ends; and a random seed that is printed when a check fails.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>

struct TmpDir {
    std::string path;
    TmpDir() {
        static int n = 0;
        path = (std::filesystem::temp_directory_path() /
                ("pgolf_test_" + std::to_string(getpid()) + "_" + std::to_string(n++)))
                   .string();
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TmpDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::string operator/(const std::string& name) const { return path + "/" + name; }
};

inline unsigned fresh_seed() { return std::random_device{}(); }
