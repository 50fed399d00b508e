#include "tokenizer/export.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "common/check.h"
#include "common/io.h"
#include "tokenizer/docs.h"
#include "tokenizer/shard.h"
#include "tokenizer/sp.h"

namespace fs = std::filesystem;

namespace pg {

namespace {

struct ShardInfo {
    std::string file;
    size_t tokens;
    std::string sha256;
};

// Accumulates one split's tokens and writes a shard whenever shard_tokens are ready.
struct SplitWriter {
    SplitWriter(std::string n, std::string dir, size_t per_shard, bool v)
        : name(n), stage_dir(dir), shard_tokens(per_shard), verbose(v) {}
    std::string name, stage_dir;
    size_t shard_tokens;
    bool verbose;
    std::vector<uint16_t> buf;
    long docs = 0, tokens = 0, text_bytes = 0;
    std::vector<ShardInfo> shards;

    void add(const std::vector<int>& ids, size_t text_size, int bos) {
        ++docs;
        text_bytes += static_cast<long>(text_size);
        tokens += static_cast<long>(ids.size()) + 1;
        push(bos);
        for (int id : ids) push(id);
    }
    void push(int id) {
        buf.push_back(static_cast<uint16_t>(id));
        if (buf.size() == shard_tokens) flush();
    }
    void flush() {
        if (buf.empty()) return;
        ShardInfo s{format("fineweb_%s_%06zu.bin", name.c_str(), shards.size()), buf.size(), ""};
        const auto bytes = shard_bytes(buf.data(), buf.size());
        write_file_atomic(stage_dir + "/" + s.file, bytes.data(), bytes.size());
        s.sha256 = sha256_hex(bytes.data(), bytes.size());
        if (verbose) std::printf("  %s: %zu tokens\n", s.file.c_str(), s.tokens);
        shards.push_back(s);
        buf.clear();
    }
    std::string json() const {
        std::string j = format("{\"docs\": %ld, \"tokens\": %ld, \"text_bytes\": %ld, \"shards\": [", docs, tokens,
                               text_bytes);
        for (size_t i = 0; i < shards.size(); ++i)
            j += format("%s\n      {\"file\": \"%s\", \"tokens\": %zu, \"sha256\": \"%s\"}", i ? "," : "",
                        shards[i].file.c_str(), shards[i].tokens, shards[i].sha256.c_str());
        return j + (shards.empty() ? "]}" : "\n    ]}");
    }
};

// Moves the staged files into out_dir: stale shards go first, the manifest last, so a
// directory with a manifest always has the shards that manifest lists.
void commit(const std::string& stage, const std::string& out, const std::vector<const SplitWriter*>& splits) {
    std::vector<std::string> fresh;
    for (auto* s : splits)
        for (auto& sh : s->shards) fresh.push_back(sh.file);
    std::remove((out + "/manifest.json").c_str());
    for (auto& old : glob_files(out, "fineweb_*_*.bin"))
        if (std::find(fresh.begin(), fresh.end(), fs::path(old).filename().string()) == fresh.end())
            fs::remove(old);
    fresh.push_back("manifest.json");
    for (auto& f : fresh) {
        std::error_code ec;
        fs::rename(stage + "/" + f, out + "/" + f, ec);
        if (ec) fail("%s/%s: cannot move into place (%s)", out.c_str(), f.c_str(), ec.message().c_str());
    }
    fs::remove(stage);
}

void export_staged(const ExportOptions& opt, const Tokenizer& tok, const std::string& stage) {
    const size_t shard_tokens = static_cast<size_t>(opt.shard_tokens);
    SplitWriter val("val", stage, shard_tokens, opt.verbose), train("train", stage, shard_tokens, opt.verbose);
    long doc_index = 0;
    std::vector<std::string> batch;
    size_t batch_bytes = 0;
    // Documents are encoded in parallel a batch at a time and appended in input order.
    auto encode_batch = [&] {
        std::vector<std::vector<int>> ids(batch.size());
        std::string err;  // an exception must not leave an OpenMP region
#pragma omp parallel for schedule(dynamic, 1)
        for (long i = 0; i < static_cast<long>(batch.size()); ++i) {
            try {
                ids[i] = tok.encode(batch[i]);
            } catch (const Error& e) {
#pragma omp critical
                err = e.what();
            }
        }
        if (!err.empty()) fail("%s", err.c_str());
        for (size_t i = 0; i < batch.size(); ++i, ++doc_index)
            (doc_index < opt.val_docs ? val : train).add(ids[i], batch[i].size(), tok.bos_id());
        batch.clear();
        batch_bytes = 0;
    };
    for (auto& path : opt.docs)
        for_each_document(path, [&](std::string&& doc) {
            batch_bytes += doc.size();
            batch.push_back(std::move(doc));
            if (batch.size() == 4096 || batch_bytes > (64u << 20)) encode_batch();
        });
    encode_batch();
    val.flush();
    train.flush();
    if (doc_index <= opt.val_docs)
        std::fprintf(stderr, "warning: only %ld documents, all in the val split: there is no train split\n", doc_index);

    std::string sources;
    for (auto& d : opt.docs) sources += format("%s\"%s\"", sources.empty() ? "" : ", ", fs::path(d).filename().c_str());
    std::string manifest = format(
        "{\n  \"format\": \"challenge shards: 256 x int32 header (20240520, 1, tokens), uint16 tokens; each document is "
        "BOS + its tokens, no EOS\",\n"
        "  \"sources\": [%s],\n  \"tokenizer_sha256\": \"%s\",\n  \"vocab_size\": %d,\n  \"bos_id\": %d,\n"
        "  \"val_docs\": %ld,\n  \"shard_tokens\": %ld,\n  \"val\": %s,\n  \"train\": %s\n}\n",
        sources.c_str(), tok.sha256().c_str(), tok.vocab_size(), tok.bos_id(), opt.val_docs, opt.shard_tokens,
        val.json().c_str(), train.json().c_str());
    write_file_atomic(stage + "/manifest.json", manifest);
    commit(stage, opt.out_dir, {&val, &train});
    if (opt.verbose) std::printf("val: %ld docs, %ld tokens; train: %ld docs, %ld tokens -> %s\n", val.docs, val.tokens, train.docs,
                train.tokens, opt.out_dir.c_str());
}

}  // namespace

void export_shards(const ExportOptions& opt) {
    if (opt.docs.empty()) fail("data export: no --docs given");
    if (opt.val_docs < 0) fail("data export: --val-docs must be >= 0");
    if (opt.shard_tokens < 1 || opt.shard_tokens > INT32_MAX)
        fail("data export: --shard-tokens must be in 1..%d", INT32_MAX);
    const Tokenizer tok(opt.tokenizer);
    if (tok.vocab_size() > 65536) fail("%s: %d pieces do not fit uint16 shards", opt.tokenizer.c_str(), tok.vocab_size());
    for (auto& d : opt.docs)
        if (!file_exists(d)) fail("%s: no such document file", d.c_str());
    make_dirs(opt.out_dir);
    const std::string stage = opt.out_dir + "/.export.tmp." + std::to_string(getpid());
    make_dirs(stage);
    try {
        export_staged(opt, tok, stage);
    } catch (...) {
        std::error_code ec;
        fs::remove_all(stage, ec);
        throw;
    }
}

}  // namespace pg
