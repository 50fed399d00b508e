// pgolf bpb: the byte accounting of a tokenized val split, and the unigram baseline.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "common/check.h"
#include "common/cli.h"
#include "common/io.h"
#include "eval/bpb.h"
#include "tokenizer/loader.h"
#include "tokenizer/shard.h"
#include "tokenizer/sp.h"

namespace pg {

namespace {

struct BpbArgs {
    std::string tokenizer, dir;
    std::string val_pattern = "fineweb_val_*.bin", train_pattern = "fineweb_train_*.bin";
};

void run_bpb(const BpbArgs& a) {
    const Tokenizer tok(a.tokenizer);
    const ByteTables tables = build_byte_tables(tok);
    const auto val = load_tokens(a.dir, a.val_pattern, tok.vocab_size());
    const long bytes = count_bytes(tables, val.data(), val.size());
    const long targets = static_cast<long>(val.size()) - 1;
    std::printf("val: %zu tokens, %ld targets (all but the first token), %ld bytes, %.4f bytes/token\n", val.size(),
                targets, bytes, double(bytes) / targets);
    std::vector<long> counts(tok.vocab_size(), 0);
    long train_tokens = 0;
    for (auto& f : glob_files(a.dir, a.train_pattern)) {
        const auto t = read_shard(f, tok.vocab_size());
        for (uint16_t id : t) ++counts[id];
        train_tokens += static_cast<long>(t.size());
    }
    if (train_tokens == 0) {
        std::printf("no train tokens (%s/%s): unigram baseline skipped\n", a.dir.c_str(), a.train_pattern.c_str());
        return;
    }
    const BpbAccumulator u = unigram_score(tables, counts, val.data(), val.size());
    std::printf("unigram baseline (train counts of %ld tokens, add-one smoothed): %.4f nats/token, val_bpb %.4f\n",
                train_tokens, u.loss(), u.bpb());
}

}  // namespace

void add_eval_commands(CLI::App& app) {
    auto a = std::make_shared<BpbArgs>();
    CLI::App* bpb = app.add_subcommand("bpb", "val bytes per token and the unigram val_bpb baseline");
    bpb->add_option("--tokenizer", a->tokenizer, "SentencePiece model")->required()->check(CLI::ExistingFile);
    bpb->add_option("--val", a->dir, "directory of val shards (and train shards for the unigram counts)")->required();
    bpb->add_option("--val-pattern", a->val_pattern)->capture_default_str();
    bpb->add_option("--train-pattern", a->train_pattern)->capture_default_str();
    bpb->callback([a] { run_bpb(*a); });
}

}  // namespace pg
