#include "tokenizer/loader.h"

#include <algorithm>

#include "common/check.h"
#include "common/io.h"
#include "tokenizer/shard.h"

namespace pg {

static std::vector<std::string> find_shards(const std::string& dir, const std::string& pattern) {
    if (!file_exists(dir)) fail("%s: data directory does not exist", dir.c_str());
    auto files = glob_files(dir, pattern);
    if (files.empty()) fail("%s: no shard matches %s", dir.c_str(), pattern.c_str());
    return files;
}

TokenStream::TokenStream(const std::string& dir, const std::string& pattern, int vocab_size)
    : files_(find_shards(dir, pattern)), vocab_size_(vocab_size) {
    size_t total = 0;
    for (auto& f : files_) total += counts_.emplace_back(shard_token_count(f));
    if (total == 0) fail("%s: the shards matching %s hold no tokens", dir.c_str(), pattern.c_str());
    load(0);
}

void TokenStream::load(int shard) {
    tokens_ = read_shard(files_[shard], vocab_size_);
    pos_ = {shard, 0};
}

std::vector<uint16_t> TokenStream::take(size_t n) {
    std::vector<uint16_t> out;
    out.reserve(n);
    while (out.size() < n) {
        if (pos_.offset == tokens_.size()) {
            load((pos_.shard + 1) % static_cast<int>(files_.size()));
            continue;
        }
        const size_t k = std::min(n - out.size(), tokens_.size() - pos_.offset);
        out.insert(out.end(), tokens_.begin() + pos_.offset, tokens_.begin() + pos_.offset + k);
        pos_.offset += k;
    }
    return out;
}

void TokenStream::seek(const StreamPos& p) {
    if (p.shard < 0 || p.shard >= static_cast<int>(files_.size()) || p.offset > counts_[p.shard])
        fail("data position (shard %d, offset %zu) lies outside the %zu training shards; were they changed since "
             "the checkpoint?",
             p.shard, p.offset, files_.size());
    if (p.shard != pos_.shard) load(p.shard);
    pos_.offset = p.offset;
}

Batch next_batch(TokenStream& stream, long global_tokens, int seq_len, int grad_accum, int rank, int world) {
    const long ranks = static_cast<long>(world) * grad_accum;
    if (world < 1 || grad_accum < 1 || rank < 0 || rank >= world || seq_len < 1)
        fail("loader: bad layout rank %d of %d, grad_accum %d, seq_len %d", rank, world, grad_accum, seq_len);
    if (global_tokens % (ranks * seq_len) != 0 || global_tokens == 0)
        fail("loader: batch of %ld tokens does not split into %d ranks x %d micro-steps x whole sequences of %d",
             global_tokens, world, grad_accum, seq_len);
    const size_t local = static_cast<size_t>(global_tokens / ranks);
    const size_t span = local + 1;
    const std::vector<uint16_t> chunk = stream.take(span * world);
    const uint16_t* slice = chunk.data() + span * rank;
    Batch b;
    b.seq_len = seq_len;
    b.rows = static_cast<int>(local / seq_len);
    b.inputs.assign(slice, slice + local);
    b.targets.assign(slice + 1, slice + span);
    return b;
}

std::vector<uint16_t> load_tokens(const std::string& dir, const std::string& pattern, int vocab_size) {
    std::vector<uint16_t> all;
    for (auto& f : find_shards(dir, pattern)) {
        auto t = read_shard(f, vocab_size);
        all.insert(all.end(), t.begin(), t.end());
    }
    return all;
}

}  // namespace pg
