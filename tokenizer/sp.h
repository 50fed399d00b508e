// The tokenizer: a SentencePiece BPE model trained with the challenge's options. The
// processor is hidden behind a pointer so that including this header does not pull
// SentencePiece (and protobuf) into every translation unit, CUDA ones included.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace pg {

// Trains on the given sentences (lines of text) and returns the serialized model.
// Single-threaded, so the same sentences give the same model bytes.
std::string train_tokenizer(const std::vector<std::string>& sentences, int vocab_size);

class Tokenizer {
public:
    explicit Tokenizer(const std::string& path);  // pg::fail naming the file if unreadable
    ~Tokenizer();
    Tokenizer(Tokenizer&&) noexcept;

    const std::string& path() const { return path_; }
    int vocab_size() const;
    int bos_id() const;
    std::vector<int> encode(const std::string& text) const;
    std::string decode(const std::vector<int>& ids) const;
    const std::string& piece(int id) const;
    bool is_byte(int id) const;      // a byte-fallback piece <0xNN>
    bool is_boundary(int id) const;  // control, unknown or unused: carries no text
    const std::string& sha256() const { return sha256_; }  // of the model file's bytes

private:
    std::string path_, sha256_;
    std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

// The model's vocabulary must equal the tokenizer's: pg::fail with one line otherwise.
void check_tokenizer_vocab(const Tokenizer& tok, int model_vocab);

}  // namespace pg
