// pgolf bpb (the byte accounting of a val split, and the unigram baseline), pgolf eval
// (val_loss / val_bpb of a checkpoint or an artifact, optionally with score-first TTT, on
// the CPU or on N GPUs), and pgolf bench eval (its throughput and the full-split extrapolation).
//
// On N GPUs (--gpus) eval runs one rank a GPU (dist/launch.h): each rank scores its share of
// the windows (of each TTT chunk's windows), the sums are all-reduced, and each TTT step's
// gradient is summed over the ranks, so every rank keeps the weights one GPU would have.
// Rank 0 alone prints.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>

#include "common/check.h"
#include "common/clock.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/io.h"
#include "dist/launch.h"
#include "dist/rank.h"
#include "eval/bpb.h"
#include "eval/cli.h"
#include "eval/device_pick.h"
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

// The model that eval runs, on the chosen device; its score() serves plain and sliding
// evaluation too.
struct EvalModel {
    std::unique_ptr<RefModel<float>> ref;  // the CPU reference, which ttt adapts
    std::unique_ptr<TttModel> ttt;
};

// TTT's gradient sum over the ranks; none in one process.
GradReduce sum_over_ranks(Comm* comm) {
    if (!comm) return nullptr;
    return [comm](float* grads, size_t n, cudaStream_t stream) {
        comm->all_reduce(grads, grads, n, ncclSum, stream);
        // A dead peer fails here with one line, not in the model's next stream synchronisation.
        comm->wait(stream, "TTT gradient all-reduce");
    };
}

EvalModel make_eval_model(const ModelConfig& m, const std::vector<float>& params, bool cuda, long max_tokens,
                          bool recur, Comm* comm) {
    EvalModel e;
    if (cuda) {
        e.ttt = make_cuda_ttt_model(m, params, max_tokens, recur, sum_over_ranks(comm));
    } else {
        e.ref = std::make_unique<RefModel<float>>(m);
        e.ref->params = params;
        e.ttt = std::make_unique<RefTttModel>(*e.ref, recur);
    }
    return e;
}

// Windows a call: 32 windows of 2048 fill a GPU; the CPU reference gains nothing past 8.
int pick_batch_seqs(int flag, bool cuda) { return flag > 0 ? flag : cuda ? 32 : 8; }

struct Timed {
    BpbAccumulator acc;
    double seconds = 0;
};

bool leader(Comm* comm) { return !comm || comm->rank() == 0; }

// The sums over all ranks (eo.rank and eo.world say which share this one scores); the time
// includes waiting for the slowest rank.
Timed time_plain(TttModel& model, const std::vector<uint16_t>& val, const ByteTables& bytes, const EvalOptions& eo,
                 Comm* comm) {
    const auto t0 = std::chrono::steady_clock::now();
    Timed r;
    r.acc = all_reduce_bpb(comm,
                           evaluate([&](const int32_t* in, const int32_t* tg, int rows, int seq,
                                        float* nll) { model.score(in, tg, rows, seq, nll); },
                                    val, bytes, eo),
                           nullptr);
    r.seconds = seconds_since(t0);
    return r;
}

Timed time_ttt(TttModel& model, const std::vector<uint16_t>& val, const ByteTables& bytes, const TttOptions& to,
               bool print_chunks, Comm* comm) {
    const bool say = leader(comm);
    if (say)
        std::printf("ttt: chunks of %ld targets, %d epochs, lr %g (cosine across chunks), momentum %g, clip %g, %d seqs a step\n",
                to.chunk_tokens, to.epochs, double(to.lr), double(to.momentum), double(to.clip), to.batch_seqs);
    const auto t0 = std::chrono::steady_clock::now();
    long n_chunks = 0;
    const TttResult r = evaluate_ttt(model, val, bytes, to, [&](const TttChunk& c) {
        ++n_chunks;
        if (!print_chunks) return;
        const BpbAccumulator score = all_reduce_bpb(comm, c.score, nullptr);  // every rank, every chunk
        if (!say) return;
        // Times and the train loss are rank 0's.
        std::printf("ttt chunk %ld: targets [%ld, %ld) val_loss %.6f val_bpb %.6f | score %.2f s", n_chunks,
                    c.first_target, c.first_target + c.targets, score.loss(), score.bpb(), c.score_seconds);
        if (c.steps > 0)
            std::printf(" | lr %.3g, %d steps, last-epoch train_loss %.4f, train %.2f s\n", double(c.lr), c.steps,
                        double(c.train_loss), c.train_seconds);
        else
            std::printf(" | not trained\n");
        std::fflush(stdout);
    });
    Timed t;
    t.acc = all_reduce_bpb(comm, r.total, nullptr);
    t.seconds = seconds_since(t0);
    if (say)
        std::printf("ttt: val_loss %.6f val_bpb %.6f (%ld tokens, %ld bytes, %ld chunks, %.1f s)\n", t.acc.loss(),
                t.acc.bpb(), t.acc.tokens, t.acc.bytes, n_chunks, t.seconds);
    return t;
}

// The flags of the TTT settings, shared by eval and bench eval.
void add_ttt_flags(CLI::App* app, TttOptions& t, CLI::Option* needs) {
    auto opt = [&](const char* name, auto& v, const char* help) {
        CLI::Option* o = app->add_option(name, v, help)->capture_default_str();
        if (needs) o->needs(needs);
    };
    opt("--ttt-lr", t.lr, "TTT SGD learning rate (cosine-decayed across chunks)");
    opt("--ttt-momentum", t.momentum, "TTT SGD momentum");
    opt("--ttt-epochs", t.epochs, "TTT passes over each scored chunk (0 = plain eval)");
    opt("--ttt-chunk", t.chunk_tokens, "TTT chunk, in targets (>= seq-len)");
    opt("--ttt-clip", t.clip, "TTT global gradient-norm clip (0 = off)");
    opt("--ttt-batch-seqs", t.batch_seqs, "TTT training sequences a step");
}

struct EvalArgs {
    std::string artifact, checkpoint, weights = "ema", data, tokenizer, device = "auto";
    std::string val_pattern = "fineweb_val_*.bin";
    int stride = 64, seq_len = 0, batch_seqs = 0;
    long max_tokens = 0;
    bool ttt = false, plain = false;
    TttOptions ttt_opt;  // its eval part comes from the flags above
    int gpus = 0;        // 0 = all visible; the GPU path only
    DistOptions dist;
};

Weights load_weights(const std::string& artifact, const std::string& checkpoint, const std::string& which) {
    if (artifact.empty() == checkpoint.empty()) fail("eval: give exactly one of --artifact and --checkpoint");
    return artifact.empty() ? load_checkpoint_weights(checkpoint, which) : load_artifact_weights(artifact);
}

void run_eval(const EvalArgs& a) {
    const Weights w = load_weights(a.artifact, a.checkpoint, a.weights);
    const ModelConfig& m = w.config.model;
    const ComputeDevice dev = pick_device(a.device, m);
    Ranks ranks;
    if (dev.cuda && !join_ranks(a.gpus, a.dist, ranks)) return;  // this process ran the ranks
    Comm* comm = ranks.comm.get();
    const bool say = ranks.me.leader();
    // A checkpoint knows its data; an artifact holds only the model, so data comes from the flags.
    const std::string data = !a.data.empty() ? a.data : !w.config.train.data_dir.empty() ? w.config.train.data_dir : "data/sample";
    const std::string tok_path = !a.tokenizer.empty() ? a.tokenizer : data + "/tokenizer.model";
    const Tokenizer tok(tok_path);
    check_tokenizer_vocab(tok, m.vocab_size);
    const ByteTables bytes = build_byte_tables(tok, m.vocab_size);
    const std::vector<uint16_t> val = load_tokens(data, a.val_pattern, m.vocab_size);

    EvalOptions eo;
    eo.seq_len = a.seq_len > 0 ? a.seq_len : m.seq_len;
    eo.stride = std::min(a.stride, eo.seq_len);
    eo.batch_seqs = pick_batch_seqs(a.batch_seqs, dev.cuda);
    eo.max_tokens = a.max_tokens;
    eo.rank = ranks.me.rank;
    eo.world = ranks.me.world;
    TttOptions to = a.ttt_opt;
    to.eval = eo;
    if (a.ttt) check_ttt_options(to);
    const bool recur = eval_recur(m);
    if (say)
        std::printf("eval: %s, %zu val tokens, window %d stride %d, %d windows a call, recurrence %s, device %s%s\n",
                    a.artifact.empty() ? (a.checkpoint + " (" + a.weights + ")").c_str() : a.artifact.c_str(),
                    val.size(), eo.seq_len, eo.stride, eo.batch_seqs, recur ? "on" : "off", dev.describe.c_str(),
                    eo.world > 1 ? format(", %d ranks", eo.world).c_str() : "");
    const long max_tokens = long(std::max(eo.batch_seqs, a.ttt ? to.batch_seqs : 0)) * eo.seq_len;
    EvalModel model = make_eval_model(m, w.params, dev.cuda, max_tokens, recur, comm);
    if (!a.ttt || a.plain) {
        const Timed r = time_plain(*model.ttt, val, bytes, eo, comm);
        if (say)
            std::printf("%sval_loss %.6f val_bpb %.6f (%ld tokens, %ld bytes, %.1f s)\n", a.ttt ? "plain: " : "",
                        r.acc.loss(), r.acc.bpb(), r.acc.tokens, r.acc.bytes, r.seconds);
        if (!a.ttt) {
            if (say)
                std::printf("RESULT val_loss=%.8f val_bpb=%.8f tokens=%ld eval_seconds=%.1f\n", r.acc.loss(),
                            r.acc.bpb(), r.acc.tokens, r.seconds);
            return;
        }
    }
    const Timed r = time_ttt(*model.ttt, val, bytes, to, true, comm);
    if (say)
        std::printf("RESULT val_loss=%.8f val_bpb=%.8f tokens=%ld eval_seconds=%.1f ttt=1\n", r.acc.loss(),
                    r.acc.bpb(), r.acc.tokens, r.seconds);
}

// pgolf bench eval: eval throughput on one device, for the challenge's 10-minute budget.
struct BenchArgs {
    std::string artifact, checkpoint, weights = "ema", data, device = "auto";
    std::string val_pattern = "fineweb_val_*.bin";
    long tokens = 1 << 20;
    int stride = 64, batch_seqs = 0, gpus = 8;
    uint64_t seed = 1;
    long full_tokens = 40540160;  // SP8192 val split, in whole 2048-token windows, from a public record log
    TttOptions ttt_opt;
};

void run_eval_bench(const BenchArgs& a) {
    Weights w;
    std::string source;
    if (a.artifact.empty() && a.checkpoint.empty()) {
        apply_preset(w.config, "record");
        RefModel<float> init(w.config.model);
        init.init(a.seed);
        w.params = std::move(init.params);
        source = format("record-shaped model, random init (seed %llu)", (unsigned long long)a.seed);
    } else {
        w = load_weights(a.artifact, a.checkpoint, a.weights);
        source = a.artifact.empty() ? a.checkpoint + " (" + a.weights + ")" : a.artifact;
    }
    const ModelConfig& m = w.config.model;
    const ComputeDevice dev = pick_device(a.device, m);
    if (a.tokens < m.seq_len) fail("bench eval: --tokens %ld is shorter than one window (%d)", a.tokens, m.seq_len);

    // Real val tokens when --val is given; otherwise uniform random ids, one byte each (the
    // time does not depend on the text; their bpb means nothing).
    std::vector<uint16_t> val;
    ByteTables bytes;
    if (!a.data.empty()) {
        const Tokenizer tok(a.data + "/tokenizer.model");
        check_tokenizer_vocab(tok, m.vocab_size);
        bytes = build_byte_tables(tok, m.vocab_size);
        val = load_tokens(a.data, a.val_pattern, m.vocab_size);
        if (long(val.size()) < a.tokens + 1)
            fail("bench eval: %s holds %zu val tokens, fewer than --tokens %ld", a.data.c_str(), val.size(), a.tokens);
        val.resize(a.tokens + 1);
    } else {
        std::mt19937_64 g(a.seed);
        val.resize(a.tokens + 1);
        for (auto& t : val) t = uint16_t(g() % m.vocab_size);
        bytes.base.assign(m.vocab_size, 1);
        bytes.leading_space.assign(m.vocab_size, 0);
        bytes.boundary.assign(m.vocab_size, 0);
    }

    EvalOptions eo;
    eo.seq_len = m.seq_len;
    eo.batch_seqs = pick_batch_seqs(a.batch_seqs, dev.cuda);
    TttOptions to = a.ttt_opt;
    to.eval = eo;
    to.eval.stride = std::min(a.stride, m.seq_len);
    check_ttt_options(to);
    const bool recur = eval_recur(m);
    std::printf("bench eval: %s, %s tokens, window %d, %d windows a call, recurrence %s, device %s\n", source.c_str(),
                a.data.empty() ? format("%ld synthetic", a.tokens).c_str() : format("%ld val", a.tokens).c_str(),
                eo.seq_len, eo.batch_seqs, recur ? "on" : "off", dev.describe.c_str());
    EvalModel model = make_eval_model(m, w.params, dev.cuda, long(std::max(eo.batch_seqs, to.batch_seqs)) * eo.seq_len,
                                      recur, nullptr);
    {  // warm-up: the first call plans every GEMM shape of the forward
        std::vector<int32_t> in(size_t(eo.batch_seqs) * eo.seq_len, 0), tg(in.size(), 0);
        std::vector<float> nll(in.size());
        model.ttt->score(in.data(), tg.data(), eo.batch_seqs, eo.seq_len, nll.data());
    }

    struct Row {
        const char* name;
        Timed t;
    };
    std::vector<Row> rows;
    eo.stride = eo.seq_len;
    rows.push_back({"plain", time_plain(*model.ttt, val, bytes, eo, nullptr)});
    eo.stride = to.eval.stride;
    rows.push_back({"sliding", time_plain(*model.ttt, val, bytes, eo, nullptr)});
    rows.push_back({"sliding+ttt", time_ttt(*model.ttt, val, bytes, to, false, nullptr)});

    std::printf("\n%-12s %10s %12s %10s %12s   full val (%ld tokens) on %d GPUs\n", "mode", "seconds", "tokens/s",
                "val_bpb", "targets", a.full_tokens, a.gpus);
    std::string result = "RESULT";
    for (const Row& r : rows) {
        const double tps = r.t.acc.tokens / r.t.seconds;
        const double full_s = double(a.full_tokens) / (tps * a.gpus);
        std::printf("%-12s %10.2f %12.0f %10.4f %12ld   %.1f s\n", r.name, r.t.seconds, tps, r.t.acc.bpb(),
                    r.t.acc.tokens, full_s);
        std::string key = r.name;
        for (char& c : key)
            if (c == '+') c = '_';
        result += format(" %s_s=%.2f %s_tok_s=%.0f %s_full_%dgpu_s=%.1f", key.c_str(), r.t.seconds, key.c_str(), tps,
                         key.c_str(), a.gpus, full_s);
    }
    std::printf("(full val: the measured tokens/s of one device times %d, windows and TTT steps split over the ranks;\n"
                " communication not counted)\n%s\n",
                a.gpus, result.c_str());
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
    ev->add_option("--device", e->device, "auto | cpu | cuda (auto: the GPU when visible and head_dim is 64)")
        ->capture_default_str();
    ev->add_option("--stride", e->stride, "sliding-window stride (= seq-len for plain chunks)")->capture_default_str();
    ev->add_option("--seq-len", e->seq_len, "window length (default: the model's seq_len)");
    ev->add_option("--batch-seqs", e->batch_seqs, "windows per forward pass (0: 32 on a GPU, 8 on the CPU)")
        ->capture_default_str();
    ev->add_option("--max-tokens", e->max_tokens, "score only the first N targets (0 = all)")->capture_default_str();
    CLI::Option* ttt = ev->add_flag("--ttt", e->ttt, "legal score-first test-time training (eval/ttt.h)");
    ev->add_flag("--plain", e->plain, "with --ttt: print the plain sliding-window numbers first")->needs(ttt);
    add_ttt_flags(ev, e->ttt_opt, ttt);
    ev->add_option("--gpus", e->gpus, "GPUs on the GPU path, one rank each (0 = all visible)")->capture_default_str();
    add_flags(*ev, fields(e->dist));
    e->dist.launch = true;
    ev->callback([e] { run_eval(*e); });

    auto a = std::make_shared<BpbArgs>();
    CLI::App* bpb = app.add_subcommand("bpb", "val bytes per token and the unigram val_bpb baseline");
    bpb->add_option("--tokenizer", a->tokenizer, "SentencePiece model")->required()->check(CLI::ExistingFile);
    bpb->add_option("--val", a->dir, "directory of val shards (and train shards for the unigram counts)")->required();
    bpb->add_option("--val-pattern", a->val_pattern)->capture_default_str();
    bpb->add_option("--train-pattern", a->train_pattern)->capture_default_str();
    bpb->callback([a] { run_bpb(*a); });
}

void add_eval_bench(CLI::App& bench) {
    auto b = std::make_shared<BenchArgs>();
    CLI::App* be = bench.add_subcommand(
        "eval", "time plain, sliding and sliding+TTT evaluation on one device; extrapolate to the full val split");
    be->add_option("--artifact", b->artifact, "packed artifact (default: a record-shaped model, random init)");
    be->add_option("--checkpoint", b->checkpoint, "training checkpoint");
    be->add_option("--weights", b->weights, "with --checkpoint: ema | swa | raw")->capture_default_str();
    be->add_option("--val", b->data, "directory of val shards and tokenizer.model (default: synthetic tokens)");
    be->add_option("--val-pattern", b->val_pattern)->capture_default_str();
    be->add_option("--device", b->device, "auto | cpu | cuda")->capture_default_str();
    be->add_option("--tokens", b->tokens, "targets scored in each mode")->capture_default_str();
    be->add_option("--stride", b->stride, "sliding-window stride")->capture_default_str();
    be->add_option("--batch-seqs", b->batch_seqs, "windows per forward pass (0: 32 on a GPU, 8 on the CPU)")
        ->capture_default_str();
    be->add_option("--seed", b->seed, "random init and synthetic tokens")->capture_default_str();
    be->add_option("--gpus", b->gpus, "GPUs of the extrapolation")->capture_default_str();
    be->add_option("--full-tokens", b->full_tokens, "val tokens of the extrapolation")->capture_default_str();
    add_ttt_flags(be, b->ttt_opt, nullptr);
    be->callback([b] { run_eval_bench(*b); });
}

}  // namespace pg
