// pgolf tokenizer train | data export | data inspect.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "common/check.h"
#include "common/cli.h"
#include "common/io.h"
#include "tokenizer/docs.h"
#include "tokenizer/export.h"
#include "tokenizer/shard.h"
#include "tokenizer/sp.h"

namespace pg {

namespace {

struct TrainArgs {
    std::vector<std::string> inputs;
    int vocab = 8192;
    std::string out;
};

// SentencePiece learns from lines: every non-blank line of every document is a sentence.
void run_tokenizer_train(const TrainArgs& a) {
    std::vector<std::string> sentences;
    size_t bytes = 0;
    for (auto& path : a.inputs)
        for_each_document(path, [&](std::string&& doc) {
            size_t start = 0;
            while (start <= doc.size()) {
                size_t nl = std::min(doc.find('\n', start), doc.size());
                if (doc.find_first_not_of(" \t\r", start) < nl) {
                    sentences.emplace_back(doc, start, nl - start);
                    bytes += nl - start;
                }
                start = nl + 1;
            }
        });
    std::printf("tokenizer train: %zu lines, %zu bytes, vocab %d\n", sentences.size(), bytes, a.vocab);
    const std::string model = train_tokenizer(sentences, a.vocab);
    write_file_atomic(a.out, model);
    const Tokenizer tok(a.out);
    std::printf("wrote %s: %d pieces\n", a.out.c_str(), tok.vocab_size());
}

std::string printable(const std::string& s) {
    std::string o;
    for (unsigned char c : s) o += c == '\n' ? std::string("\\n") : c < 0x20 ? format("\\x%02x", c) : std::string(1, char(c));
    return o;
}

void run_data_inspect(const std::string& target, const std::string& tokenizer_path) {
    std::vector<std::string> files;
    if (std::filesystem::is_directory(target)) {
        files = glob_files(target, "*.bin");
        if (files.empty()) fail("%s: no .bin shards in this directory", target.c_str());
    } else {
        files = {target};
    }
    std::unique_ptr<Tokenizer> tok;
    if (!tokenizer_path.empty()) tok = std::make_unique<Tokenizer>(tokenizer_path);
    const int vocab = tok ? tok->vocab_size() : 0;
    size_t total = 0;
    for (auto& f : files) {
        const auto t = read_shard(f, vocab);  // header, size and (with a tokenizer) range checks
        const uint16_t max_id = t.empty() ? 0 : *std::max_element(t.begin(), t.end());
        const long docs = std::count(t.begin(), t.end(), uint16_t(tok ? tok->bos_id() : 1));
        std::printf("%s: header ok, %zu tokens, max id %u, %ld documents (BOS)%s\n", f.c_str(), t.size(), max_id, docs,
                    tok ? format(", all ids < %d", vocab).c_str() : "");
        total += t.size();
        if (tok && !t.empty()) {
            const size_t n = std::min<size_t>(t.size(), 64);
            std::printf("  first %zu tokens: \"%s\"\n", n, printable(tok->decode(std::vector<int>(t.begin(), t.begin() + n))).c_str());
        }
    }
    std::printf("%zu shards, %zu tokens%s\n", files.size(), total, tok ? "" : " (pass --tokenizer to check ids and decode)");
}

}  // namespace

void add_tokenizer_commands(CLI::App& app) {
    CLI::App* tk = app.add_subcommand("tokenizer", "SentencePiece tokenizer");
    tk->require_subcommand(1);
    auto ta = std::make_shared<TrainArgs>();
    CLI::App* train = tk->add_subcommand("train", "train a BPE tokenizer with the challenge's options");
    train->add_option("--input", ta->inputs, "text files (.txt: one document; .jsonl: \"text\" fields; optionally .xz)")
        ->required()
        ->check(CLI::ExistingFile);
    train->add_option("--vocab", ta->vocab, "vocabulary size (an upper bound: hard_vocab_limit=false)")
        ->capture_default_str()
        ->check(CLI::Range(260, 65536));
    train->add_option("--out", ta->out, "model file to write")->required();
    train->callback([ta] { run_tokenizer_train(*ta); });

    CLI::App* data = app.add_subcommand("data", "challenge token shards");
    data->require_subcommand(1);
    auto ex = std::make_shared<ExportOptions>();
    CLI::App* exp = data->add_subcommand("export", "tokenize documents into fineweb_{val,train}_%06d.bin shards");
    exp->add_option("--docs", ex->docs, "document files, in order (.jsonl: \"text\" fields; other: one document a file; optionally .xz)")
        ->required();
    exp->add_option("--tokenizer", ex->tokenizer, "SentencePiece model")->required()->check(CLI::ExistingFile);
    exp->add_option("--out", ex->out_dir, "output directory")->required();
    exp->add_option("--val-docs", ex->val_docs, "the first N documents form the val split")->capture_default_str();
    exp->add_option("--shard-tokens", ex->shard_tokens, "tokens per shard")->capture_default_str();
    exp->callback([ex] { export_shards(*ex); });

    auto target = std::make_shared<std::string>(), tok = std::make_shared<std::string>();
    CLI::App* ins = data->add_subcommand("inspect", "check shards and show a decoded sample");
    ins->add_option("path", *target, "a shard, or a directory of shards")->required();
    ins->add_option("--tokenizer", *tok, "check token ids against this tokenizer and decode a sample");
    ins->callback([target, tok] { run_data_inspect(*target, *tok); });
}

}  // namespace pg
