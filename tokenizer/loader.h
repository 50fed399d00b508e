// The training data loader, with the challenge's semantics so that a run sees the same
// tokens in the same order as the reference: one stream over the sorted shards that
// wraps around at the end, from which every rank takes the whole global chunk and keeps
// its own contiguous slice.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pg {

// Where a stream stands; saved in checkpoints so a resumed run continues exactly.
struct StreamPos {
    int shard = 0;      // index into the sorted file list
    size_t offset = 0;  // tokens of that shard already taken
    bool operator==(const StreamPos& o) const { return shard == o.shard && offset == o.offset; }
};

class TokenStream {
public:
    // Fails if dir has no file matching pattern or all of them are empty; every header is
    // validated here, the tokens of a shard when the stream reaches it.
    TokenStream(const std::string& dir, const std::string& pattern, int vocab_size);
    // The next n tokens, moving on to the next shard (and from the last back to the
    // first) whenever the current one is used up.
    std::vector<uint16_t> take(size_t n);
    StreamPos position() const { return pos_; }
    void seek(const StreamPos& p);  // pg::fail if p lies outside the shards
    const std::vector<std::string>& files() const { return files_; }

private:
    void load(int shard);
    std::vector<std::string> files_;
    std::vector<size_t> counts_;
    int vocab_size_;
    std::vector<uint16_t> tokens_;  // the shard at pos_.shard
    StreamPos pos_;
};

// One micro-step's inputs and targets for one rank, row-major [rows, seq_len].
struct Batch {
    int rows = 0, seq_len = 0;
    std::vector<int32_t> inputs, targets;
};

// local = global_tokens / (world * grad_accum) tokens a rank; every rank takes
// (local + 1) * world tokens from its own copy of the stream and keeps slice `rank`;
// inputs are the slice without its last token, targets without its first.
Batch next_batch(TokenStream& stream, long global_tokens, int seq_len, int grad_accum, int rank, int world);

// Every token of the shards matching pattern, concatenated in file order (the val split).
std::vector<uint16_t> load_tokens(const std::string& dir, const std::string& pattern, int vocab_size);

}  // namespace pg
