// File helpers shared by every writer: outputs are written to a temporary file next to
// the target and renamed into place, so a failed run never leaves a half-written file
// where a good one used to be.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pg {

std::vector<uint8_t> read_file(const std::string& path);
std::string read_text(const std::string& path);
void write_file_atomic(const std::string& path, const void* data, size_t n);
inline void write_file_atomic(const std::string& path, const std::string& s) {
    write_file_atomic(path, s.data(), s.size());
}
bool file_exists(const std::string& path);
void make_dirs(const std::string& path);
// Sorted list of files in dir whose names match a glob pattern ("fineweb_train_*.bin").
std::vector<std::string> glob_files(const std::string& dir, const std::string& pattern);
std::string sha256_hex(const void* data, size_t n);

}  // namespace pg
