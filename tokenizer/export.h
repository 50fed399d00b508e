// Documents -> challenge shards. Each document becomes BOS followed by its tokens (no
// EOS); the first val_docs documents form the val split (fineweb_val_%06d.bin), the rest
// the train split (fineweb_train_%06d.bin); a document may straddle two shards.
#pragma once
#include <string>
#include <vector>

namespace pg {

struct ExportOptions {
    std::vector<std::string> docs;  // document files, read in order (see tokenizer/docs.h)
    std::string tokenizer;
    std::string out_dir;
    long val_docs = 50000;         // the challenge's val split
    long shard_tokens = 100000000;  // the challenge's shard size
    bool verbose = true;            // print each shard written and the totals
};

// Writes the shards and manifest.json (per split: docs, tokens, UTF-8 bytes of the
// source text, and each shard's tokens and sha256) into out_dir. Everything is staged
// in a hidden folder first, so a failed export leaves out_dir as it was; on success,
// shards of an earlier export that are not rewritten are removed.
void export_shards(const ExportOptions& opt);

}  // namespace pg
