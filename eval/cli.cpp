// pgolf bpb (the byte accounting of a val split, and the unigram baseline) and pgolf eval
// (val_loss / val_bpb of a checkpoint or an artifact, optionally with score-first TTT).
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>

#include "common/check.h"
#include "common/clock.h"
#include "common/cli.h"
#include "common/io.h"
#include "eval/bpb.h"
#include "eval/evaluate.h"
#include "eval/ttt.h"
#include "model/model_ref.h"
#include "quant/weights.h"
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

struct EvalArgs {
    std::string artifact, checkpoint, weights = "ema", data, tokenizer;
    std::string val_pattern = "fineweb_val_*.bin";
    int stride = 64, seq_len = 0, batch_seqs = 8;
    long max_tokens = 0;
    bool ttt = false, plain = false;
    TttOptions ttt_opt;  // its eval part comes from the flags above
};

void run_eval(const EvalArgs& a) {
    if (a.artifact.empty() == a.checkpoint.empty()) fail("eval: give exactly one of --artifact and --checkpoint");
    const Weights w = a.artifact.empty() ? load_checkpoint_weights(a.checkpoint, a.weights)
                                         : load_artifact_weights(a.artifact);
    const ModelConfig& m = w.config.model;
    // A checkpoint knows its data; an artifact holds only the model, so data comes from the flags.
    const std::string data = !a.data.empty() ? a.data : !w.config.train.data_dir.empty() ? w.config.train.data_dir : "data/sample";
    const std::string tok_path = !a.tokenizer.empty() ? a.tokenizer : data + "/tokenizer.model";
    const Tokenizer tok(tok_path);
    check_tokenizer_vocab(tok, m.vocab_size);
    const ByteTables bytes = build_byte_tables(tok, m.vocab_size);
    const std::vector<uint16_t> val = load_tokens(data, a.val_pattern, m.vocab_size);

    RefModel<float> model(m);
    model.params = w.params;
    EvalOptions eo;
    eo.seq_len = a.seq_len > 0 ? a.seq_len : m.seq_len;
    eo.stride = std::min(a.stride, eo.seq_len);
    eo.batch_seqs = a.batch_seqs;
    eo.max_tokens = a.max_tokens;
    TttOptions to = a.ttt_opt;
    to.eval = eo;
    if (a.ttt) check_ttt_options(to);
    const bool recur = eval_recur(m);
    std::printf("eval: %s, %zu val tokens, window %d stride %d, recurrence %s, device CPU (reference)\n",
                a.artifact.empty() ? (a.checkpoint + " (" + a.weights + ")").c_str() : a.artifact.c_str(), val.size(),
                eo.seq_len, eo.stride, recur ? "on" : "off");
    RefTttModel ttt_model(model, recur);
    if (!a.ttt || a.plain) {
        const auto t0 = std::chrono::steady_clock::now();
        const BpbAccumulator r = evaluate(
            [&](const int32_t* in, const int32_t* tg, int rows, int seq, float* nll) {
                ttt_model.score(in, tg, rows, seq, nll);
            },
            val, bytes, eo);
        const double secs = seconds_since(t0);
        std::printf("%sval_loss %.6f val_bpb %.6f (%ld tokens, %ld bytes, %.1f s)\n", a.ttt ? "plain: " : "", r.loss(),
                    r.bpb(), r.tokens, r.bytes, secs);
        if (!a.ttt) {
            std::printf("RESULT val_loss=%.8f val_bpb=%.8f tokens=%ld eval_seconds=%.1f\n", r.loss(), r.bpb(),
                        r.tokens, secs);
            return;
        }
    }
    std::printf("ttt: chunks of %ld targets, %d epochs, lr %g (cosine across chunks), momentum %g, clip %g, %d seqs a step\n",
                to.chunk_tokens, to.epochs, double(to.lr), double(to.momentum), double(to.clip), to.batch_seqs);
    const auto t0 = std::chrono::steady_clock::now();
    long n_chunks = 0;
    const TttResult r = evaluate_ttt(ttt_model, val, bytes, to, [&](const TttChunk& c) {
        std::printf("ttt chunk %ld: targets [%ld, %ld) val_loss %.6f val_bpb %.6f | score %.2f s", ++n_chunks,
                    c.first_target, c.first_target + c.targets, c.score.loss(), c.score.bpb(), c.score_seconds);
        if (c.steps > 0)
            std::printf(" | lr %.3g, %d steps, last-epoch train_loss %.4f, train %.2f s\n", double(c.lr), c.steps,
                        double(c.train_loss), c.train_seconds);
        else
            std::printf(" | not trained\n");
        std::fflush(stdout);
    });
    const double secs = seconds_since(t0);
    std::printf("ttt: val_loss %.6f val_bpb %.6f (%ld tokens, %ld bytes, %zu chunks, %.1f s)\n", r.total.loss(),
                r.total.bpb(), r.total.tokens, r.total.bytes, r.chunks.size(), secs);
    std::printf("RESULT val_loss=%.8f val_bpb=%.8f tokens=%ld eval_seconds=%.1f ttt=1\n", r.total.loss(), r.total.bpb(),
                r.total.tokens, secs);
}

}  // namespace

void add_eval_commands(CLI::App& app) {
    auto e = std::make_shared<EvalArgs>();
    CLI::App* ev = app.add_subcommand("eval", "val_loss and val_bpb of a checkpoint or an artifact");
    ev->add_option("--artifact", e->artifact, "packed artifact (weights dequantized from it alone)");
    ev->add_option("--checkpoint", e->checkpoint, "training checkpoint");
    ev->add_option("--weights", e->weights, "with --checkpoint: ema | swa | raw")->capture_default_str();
    ev->add_option("--data,--val", e->data, "directory of val shards (default: the checkpoint's data, else data/sample)");
    ev->add_option("--tokenizer", e->tokenizer, "SentencePiece model (default: <data>/tokenizer.model)");
    ev->add_option("--val-pattern", e->val_pattern)->capture_default_str();
    ev->add_option("--stride", e->stride, "sliding-window stride (= seq-len for plain chunks)")->capture_default_str();
    ev->add_option("--seq-len", e->seq_len, "window length (default: the model's seq_len)");
    ev->add_option("--batch-seqs", e->batch_seqs, "windows per forward pass")->capture_default_str();
    ev->add_option("--max-tokens", e->max_tokens, "score only the first N targets (0 = all)")->capture_default_str();
    CLI::Option* ttt = ev->add_flag("--ttt", e->ttt, "legal score-first test-time training (eval/ttt.h)");
    ev->add_flag("--plain", e->plain, "with --ttt: print the plain sliding-window numbers first")->needs(ttt);
    TttOptions& t = e->ttt_opt;
    ev->add_option("--ttt-lr", t.lr, "TTT SGD learning rate (cosine-decayed across chunks)")->capture_default_str()->needs(ttt);
    ev->add_option("--ttt-momentum", t.momentum, "TTT SGD momentum")->capture_default_str()->needs(ttt);
    ev->add_option("--ttt-epochs", t.epochs, "TTT passes over each scored chunk (0 = plain eval)")->capture_default_str()->needs(ttt);
    ev->add_option("--ttt-chunk", t.chunk_tokens, "TTT chunk, in targets (>= seq-len)")->capture_default_str()->needs(ttt);
    ev->add_option("--ttt-clip", t.clip, "TTT global gradient-norm clip (0 = off)")->capture_default_str()->needs(ttt);
    ev->add_option("--ttt-batch-seqs", t.batch_seqs, "TTT training sequences a step")->capture_default_str()->needs(ttt);
    ev->callback([e] { run_eval(*e); });

    auto a = std::make_shared<BpbArgs>();
    CLI::App* bpb = app.add_subcommand("bpb", "val bytes per token and the unigram val_bpb baseline");
    bpb->add_option("--tokenizer", a->tokenizer, "SentencePiece model")->required()->check(CLI::ExistingFile);
    bpb->add_option("--val", a->dir, "directory of val shards (and train shards for the unigram counts)")->required();
    bpb->add_option("--val-pattern", a->val_pattern)->capture_default_str();
    bpb->add_option("--train-pattern", a->train_pattern)->capture_default_str();
    bpb->callback([a] { run_bpb(*a); });
}

}  // namespace pg
