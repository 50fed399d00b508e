// The challenge's byte accounting, which makes val_bpb comparable across tokenizers.
// For target t after token p: bytes = base(t) + [t starts with U+2581 and p is not a
// boundary token], where base(t) is the UTF-8 length of the piece without that leading
// U+2581, a byte-fallback piece <0xNN> is 1, and control/unknown/unused ids are boundary
// tokens of base 0. val_bpb = (sum of nat losses / ln 2) / (sum of bytes).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pg {

class Tokenizer;

struct ByteTables {
    std::vector<int32_t> base;           // bytes a token stands for, before its leading space
    std::vector<uint8_t> leading_space;  // piece starts with U+2581
    std::vector<uint8_t> boundary;       // control, unknown, unused, or beyond the tokenizer
    int bytes(int token, int prev) const { return base[token] + (leading_space[token] && !boundary[prev]); }
};

// Tables of max(tokenizer vocab, table_size) entries; ids beyond the tokenizer's pieces
// (a model vocab padded past it) are boundary tokens of base 0, as in the challenge.
ByteTables build_byte_tables(const Tokenizer& tok, int table_size = 0);

// Bytes that the targets tokens[1..n) stand for, each after its predecessor.
long count_bytes(const ByteTables& t, const uint16_t* tokens, size_t n);

// Sums over scored tokens (and over ranks, by merge) for val_bpb.
struct BpbAccumulator {
    double loss_nats = 0;  // sum of -ln p(target)
    long bytes = 0;
    long tokens = 0;
    void add(double nll_nats, long nbytes, long ntokens) {
        loss_nats += nll_nats;
        bytes += nbytes;
        tokens += ntokens;
    }
    void merge(const BpbAccumulator& o) { add(o.loss_nats, o.bytes, o.tokens); }
    double loss() const { return loss_nats / tokens; }  // mean nats a token
    double bpb() const { return loss_nats / std::log(2.0) / bytes; }
};

// Scores the targets tokens[1..n) of a split with a unigram model of add-one-smoothed
// counts (counts[t] + 1) / (sum + vocab): the baseline any language model must beat.
BpbAccumulator unigram_score(const ByteTables& t, const std::vector<long>& counts, const uint16_t* tokens, size_t n);

}  // namespace pg
