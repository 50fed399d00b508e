#include "tokenizer/sp.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <unordered_map>

#include "common/check.h"
#include "common/io.h"

// Exported by libsentencepiece but missing from its public header; without it the BPE
// trainer prints a line for every merge.
namespace sentencepiece::logging {
void SetMinLogLevel(int v);
}

namespace pg {

namespace {

class SentenceSource : public sentencepiece::SentenceIterator {
public:
    explicit SentenceSource(const std::vector<std::string>& s) : s_(s) {}
    bool done() const override { return i_ == s_.size(); }
    void Next() override { ++i_; }
    const std::string& value() const override { return s_[i_]; }
    sentencepiece::util::Status status() const override { return {}; }

private:
    const std::vector<std::string>& s_;
    size_t i_ = 0;
};

}  // namespace

std::string train_tokenizer(const std::vector<std::string>& sentences, int vocab_size) {
    if (vocab_size < 260 || vocab_size > 65536)
        fail("tokenizer train: --vocab %d must be in 260..65536 (256 byte pieces + 4 specials; uint16 shards)",
             vocab_size);
    const std::unordered_map<std::string, std::string> args = {
        {"model_type", "bpe"},
        {"vocab_size", std::to_string(vocab_size)},
        {"character_coverage", "0.999"},
        {"byte_fallback", "true"},
        {"split_digits", "true"},
        {"normalization_rule_name", "nmt_nfkc"},
        {"add_dummy_prefix", "false"},
        {"pad_id", "0"},
        {"bos_id", "1"},
        {"eos_id", "2"},
        {"unk_id", "3"},
        {"hard_vocab_limit", "false"},
        {"num_threads", "1"},
    };
    sentencepiece::logging::SetMinLogLevel(1);
    if (sentences.empty()) fail("tokenizer train: the input holds no text");
    SentenceSource source(sentences);
    std::string model;
    auto st = sentencepiece::SentencePieceTrainer::Train(args, &source, &model);
    if (!st.ok()) fail("tokenizer train: %s", st.ToString().c_str());
    return model;
}

Tokenizer::Tokenizer(const std::string& path) : path_(path), sp_(new sentencepiece::SentencePieceProcessor) {
    auto bytes = read_text(path);
    auto st = sp_->LoadFromSerializedProto(bytes);
    if (!st.ok()) fail("%s: not a SentencePiece model (%s)", path.c_str(), st.ToString().c_str());
    if (sp_->bos_id() < 0) fail("%s: tokenizer has no BOS piece", path.c_str());
    sha256_ = sha256_hex(bytes.data(), bytes.size());
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;

int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int Tokenizer::bos_id() const { return sp_->bos_id(); }

std::vector<int> Tokenizer::encode(const std::string& text) const {
    std::vector<int> ids;
    auto st = sp_->Encode(text, &ids);
    if (!st.ok()) fail("%s: encode failed (%s)", path_.c_str(), st.ToString().c_str());
    return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
    for (int id : ids)
        if (id < 0 || id >= vocab_size()) fail("%s: cannot decode token id %d (vocab %d)", path_.c_str(), id, vocab_size());
    std::string text;
    auto st = sp_->Decode(ids, &text);
    if (!st.ok()) fail("%s: decode failed (%s)", path_.c_str(), st.ToString().c_str());
    return text;
}

const std::string& Tokenizer::piece(int id) const { return sp_->IdToPiece(id); }
bool Tokenizer::is_byte(int id) const { return sp_->IsByte(id); }
bool Tokenizer::is_boundary(int id) const { return sp_->IsControl(id) || sp_->IsUnknown(id) || sp_->IsUnused(id); }

void check_tokenizer_vocab(const Tokenizer& tok, int model_vocab) {
    if (tok.vocab_size() != model_vocab)
        fail("%s: tokenizer has %d pieces but the model's vocab_size is %d", tok.path().c_str(), tok.vocab_size(),
             model_vocab);
}

}  // namespace pg
