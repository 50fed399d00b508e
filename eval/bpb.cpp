#include "eval/bpb.h"

#include <algorithm>

#include "common/check.h"
#include "tokenizer/sp.h"

namespace pg {

static const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's word-start mark

ByteTables build_byte_tables(const Tokenizer& tok, int table_size) {
    const int n = std::max(tok.vocab_size(), table_size);
    ByteTables t{std::vector<int32_t>(n, 0), std::vector<uint8_t>(n, 0), std::vector<uint8_t>(n, 1)};
    for (int id = 0; id < tok.vocab_size(); ++id) {
        if (tok.is_boundary(id)) continue;
        t.boundary[id] = 0;
        if (tok.is_byte(id)) {
            t.base[id] = 1;
            continue;
        }
        const std::string& p = tok.piece(id);
        const bool space = p.compare(0, kSpace.size(), kSpace) == 0;
        t.leading_space[id] = space;
        t.base[id] = static_cast<int32_t>(p.size() - (space ? kSpace.size() : 0));
    }
    return t;
}

long count_bytes(const ByteTables& t, const uint16_t* tokens, size_t n) {
    long sum = 0;
    for (size_t i = 1; i < n; ++i) sum += t.bytes(tokens[i], tokens[i - 1]);
    return sum;
}

BpbAccumulator unigram_score(const ByteTables& t, const std::vector<long>& counts, const uint16_t* tokens, size_t n) {
    double total = static_cast<double>(counts.size());
    for (long c : counts) total += static_cast<double>(c);
    std::vector<double> nll(counts.size());
    for (size_t v = 0; v < counts.size(); ++v) nll[v] = -std::log((counts[v] + 1.0) / total);
    BpbAccumulator acc;
    for (size_t i = 1; i < n; ++i) {
        if (tokens[i] >= counts.size()) fail("unigram: token %u outside the %zu counted ids", tokens[i], counts.size());
        acc.add(nll[tokens[i]], t.bytes(tokens[i], tokens[i - 1]), 1);
    }
    return acc;
}

}  // namespace pg
