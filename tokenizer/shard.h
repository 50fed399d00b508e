// The challenge's token shard: 256 little-endian int32 (magic 20240520, version 1, token
// count, zeros), then that many little-endian uint16 tokens. Readers reject any file
// that does not match this exactly, naming the file and the problem.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pg {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr int kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

// The bytes of a shard holding tokens[0..n); write_shard writes them atomically.
std::vector<uint8_t> shard_bytes(const uint16_t* tokens, size_t n);
void write_shard(const std::string& path, const uint16_t* tokens, size_t n);
// Token count from a validated header (and a file size that matches it).
size_t shard_token_count(const std::string& path);
// All tokens; vocab_size > 0 also rejects any id >= vocab_size.
std::vector<uint16_t> read_shard(const std::string& path, int vocab_size = 0);
// pg::fail naming path and the first offending position if any id >= vocab_size.
void check_token_range(const std::string& path, const uint16_t* tokens, size_t n, int vocab_size);

}  // namespace pg
