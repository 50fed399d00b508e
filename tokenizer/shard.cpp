#include "tokenizer/shard.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/check.h"
#include "common/io.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shards are read and written as host-order little-endian");

namespace pg {

namespace {

using File = std::unique_ptr<FILE, int (*)(FILE*)>;

File open_shard(const std::string& path) {
    File f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) fail("%s: cannot open shard (%s)", path.c_str(), std::strerror(errno));
    return f;
}

// Validates the header against the file's size and leaves f positioned at the tokens.
size_t read_header(const std::string& path, FILE* f) {
    if (std::fseek(f, 0, SEEK_END) != 0) fail("%s: cannot seek", path.c_str());
    const long size = std::ftell(f);
    std::rewind(f);
    int32_t h[kShardHeaderInts];
    if (size < static_cast<long>(kShardHeaderBytes) || std::fread(h, sizeof h, 1, f) != 1)
        fail("%s: truncated shard: %ld bytes, shorter than the %zu-byte header", path.c_str(), size, kShardHeaderBytes);
    if (h[0] != kShardMagic) fail("%s: not a token shard (magic %d, expected %d)", path.c_str(), h[0], kShardMagic);
    if (h[1] != kShardVersion) fail("%s: unsupported shard version %d (expected %d)", path.c_str(), h[1], kShardVersion);
    if (h[2] < 0) fail("%s: negative token count %d in header", path.c_str(), h[2]);
    const long expect = static_cast<long>(kShardHeaderBytes) + 2L * h[2];
    if (size < expect)
        fail("%s: truncated shard: header says %d tokens (%ld bytes) but the file has %ld bytes", path.c_str(), h[2],
             expect, size);
    if (size > expect)
        fail("%s: %ld bytes after the %d tokens the header declares", path.c_str(), size - expect, h[2]);
    return static_cast<size_t>(h[2]);
}

}  // namespace

std::vector<uint8_t> shard_bytes(const uint16_t* tokens, size_t n) {
    if (n > static_cast<size_t>(INT32_MAX)) fail("%zu tokens do not fit an int32 shard header", n);
    std::vector<uint8_t> buf(kShardHeaderBytes + 2 * n, 0);
    const int32_t h[3] = {kShardMagic, kShardVersion, static_cast<int32_t>(n)};
    std::memcpy(buf.data(), h, sizeof h);
    if (n) std::memcpy(buf.data() + kShardHeaderBytes, tokens, 2 * n);
    return buf;
}

void write_shard(const std::string& path, const uint16_t* tokens, size_t n) {
    const auto buf = shard_bytes(tokens, n);
    write_file_atomic(path, buf.data(), buf.size());
}

size_t shard_token_count(const std::string& path) {
    File f = open_shard(path);
    return read_header(path, f.get());
}

std::vector<uint16_t> read_shard(const std::string& path, int vocab_size) {
    File f = open_shard(path);
    std::vector<uint16_t> tokens(read_header(path, f.get()));
    if (!tokens.empty() && std::fread(tokens.data(), 2, tokens.size(), f.get()) != tokens.size())
        fail("%s: read error", path.c_str());
    if (vocab_size > 0) check_token_range(path, tokens.data(), tokens.size(), vocab_size);
    return tokens;
}

void check_token_range(const std::string& path, const uint16_t* tokens, size_t n, int vocab_size) {
    for (size_t i = 0; i < n; ++i)
        if (tokens[i] >= vocab_size)
            fail("%s: token %u at position %zu is outside the vocabulary (size %d)", path.c_str(), tokens[i], i,
                 vocab_size);
}

}  // namespace pg
