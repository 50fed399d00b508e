// pgolf's entry point and training driver. `pgolf train` trains the model described by
// common/config.h on challenge shards; the other subcommands (tokenizer, data, bpb, size,
// pack, eval) are registered by their modules.
//
// One training step: the schedule says where training stands (LR multiplier, whether
// depth recurrence, QAT and SWA are on); grad_accum micro-batches run forward and backward,
// their gradients averaged; the optimizer updates the fp32 master weights; EMA/SWA follow.
// Wall-clock time counts training only (not validation or checkpoint writes).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "common/check.h"
#include "common/clock.h"
#include "common/checkpoint.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/device.h"
#include "common/io.h"
#include "eval/bpb.h"
#include "eval/evaluate.h"
#include "model/model_ref.h"
#include "model/optim.h"
#include "model/schedule.h"
#include "quant/export.h"
#include "tokenizer/loader.h"
#include "tokenizer/sp.h"

namespace pg {

// Lines go to stdout and to <out>/train.log (appended to on resume).
class RunLog {
 public:
    RunLog(const std::string& path, bool append) : f_(std::fopen(path.c_str(), append ? "a" : "w")) {
        if (!f_) fail("%s: cannot open log for writing", path.c_str());
    }
    ~RunLog() { std::fclose(f_); }
    __attribute__((format(printf, 2, 3))) void operator()(const char* fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        const std::string s = vformat(fmt, ap);
        va_end(ap);
        std::printf("%s\n", s.c_str());
        std::fprintf(f_, "%s\n", s.c_str());
        std::fflush(stdout);
        std::fflush(f_);
    }

 private:
    FILE* f_;
};

// The embedded sample, found from the working directory or from the binary's location.
static std::string default_data_dir() {
    namespace fs = std::filesystem;
    if (fs::exists("data/sample")) return "data/sample";
    const fs::path exe = fs::read_symlink("/proc/self/exe");
    return (exe.parent_path().parent_path() / "data" / "sample").string();
}

// Everything that a resumed run needs to continue exactly where it stopped.
struct TrainState {
    int step = 0;
    double elapsed_s = 0;
};

static void save_checkpoint(const std::string& path, Config cfg, const TrainState& st,
                            const std::vector<float>& master, const Optimizer& opt,
                            const WeightAverage& avg, const TokenStream& stream,
                            const Tokenizer& tok) {
    Checkpoint ck;
    ck.put_text("config.model", to_text(fields(cfg.model)));
    ck.put_text("config.train", to_text(fields(cfg.train)));
    ck.put_text("config.quant", to_text(fields(cfg.quant)));
    ck.put_text("tokenizer.sha256", tok.sha256());
    ck.put_vec("state", std::vector<double>{double(st.step), st.elapsed_s});
    ck.put_vec("stream", std::vector<uint64_t>{uint64_t(stream.position().shard), stream.position().offset});
    ck.put_vec("params", master);
    ck.put("optimizer", save_state(opt.state()));
    ck.put("average", save_state(avg.state()));
    if (avg.ema()) ck.put_vec("params.ema", std::vector<float>(avg.ema(), avg.ema() + master.size()));
    if (avg.swa()) ck.put_vec("params.swa", std::vector<float>(avg.swa(), avg.swa() + master.size()));
    ck.save(path);
}

void run_training(Config cfg) {
    TrainConfig& t = cfg.train;
    ModelConfig& m = cfg.model;
    if (t.data_dir.empty()) t.data_dir = default_data_dir();
    if (t.tokenizer.empty()) t.tokenizer = t.data_dir + "/tokenizer.model";
    m.validate();
    if (t.batch_tokens % m.seq_len != 0) fail("--batch-tokens (%ld) must be a multiple of --seq-len (%d)", t.batch_tokens, m.seq_len);
    const int seqs = int(t.batch_tokens / m.seq_len);
    const int micro = t.micro_batch_seqs > 0 ? t.micro_batch_seqs : seqs;
    if (seqs % micro != 0) fail("--micro-batch-seqs (%d) must divide the %d sequences of a step", micro, seqs);
    const int grad_accum = seqs / micro;

    const DeviceInfo dev = detect_device();
    const bool cuda = use_cuda(t.device, dev);
    make_dirs(t.out_dir);
    const std::string ckpt_path = t.out_dir + "/checkpoint.bin";
    RunLog log(t.out_dir + "/train.log", t.resume);
    log("pgolf train: device %s", dev.describe().c_str());
    if (cuda) log("note: the CUDA training path is not built yet (issue 4); this run uses the CPU reference");

    Tokenizer tok(t.tokenizer);
    check_tokenizer_vocab(tok, m.vocab_size);
    const ByteTables bytes = build_byte_tables(tok, m.vocab_size);
    TokenStream stream(t.data_dir, t.train_pattern, m.vocab_size);
    const std::vector<uint16_t> val = load_tokens(t.data_dir, t.val_pattern, m.vocab_size);

    RefModel<float> model(m);
    const ParamLayout& L = model.layout();
    model.init(t.seed);
    std::vector<float> master = model.params;
    Optimizer opt(L, t);
    WeightAverage avg(L.total, t);
    TrainState st;
    if (t.resume) {
        const Checkpoint ck = Checkpoint::load(ckpt_path);
        if (ck.get_text("config.model") != to_text(fields(m)))
            fail("%s: checkpoint was written for a different model config", ckpt_path.c_str());
        if (ck.get_text("tokenizer.sha256") != tok.sha256())
            fail("%s: checkpoint was written with a different tokenizer", ckpt_path.c_str());
        const auto s = ck.get_vec<double>("state");
        const auto pos = ck.get_vec<uint64_t>("stream");
        master = ck.get_vec<float>("params");
        if (s.size() != 2 || pos.size() != 2 || master.size() != L.total)
            fail("%s: checkpoint sections do not fit this model", ckpt_path.c_str());
        st.step = int(s[0]);
        st.elapsed_s = s[1];
        stream.seek({int(pos[0]), size_t(pos[1])});
        load_state(opt.state(), ck.get("optimizer"), ckpt_path);
        load_state(avg.state(), ck.get("average"), ckpt_path);
        log("resumed from %s at step %d (%.1f s of training)", ckpt_path.c_str(), st.step, st.elapsed_s);
    }
    log("model: %zu parameters, %zu layers scheduled (%zu with recurrence); data %s (%zu train shards, %zu val tokens)",
        L.total, m.layer_schedule(false).size(), m.layer_schedule(true).size(), t.data_dir.c_str(),
        stream.files().size(), val.size());
    log("batch: %ld tokens/step = %d x %d seqs of %d; %d iterations, wall-clock cap %.0f s", t.batch_tokens,
        grad_accum, micro, m.seq_len, t.iterations, t.max_wallclock_s);

    EvalOptions eo;
    eo.seq_len = m.seq_len;
    eo.stride = m.seq_len;
    eo.batch_seqs = micro;
    eo.max_tokens = t.val_tokens;
    auto validate = [&](const std::vector<float>& w, bool recur) {
        model.params = w;
        return evaluate(
            [&](const int32_t* in, const int32_t* tg, int rows, int seq, float* nll) {
                model.forward(in, tg, rows, seq, recur, nll);
            },
            val, bytes, eo);
    };

    std::vector<float> grads(L.total);
    for (;;) {
        const Phases ph = phases_at(st.step, st.elapsed_s, cfg);
        if (ph.done || st.step >= t.iterations) break;
        if (t.stop_after > 0 && st.step >= t.stop_after) {
            save_checkpoint(ckpt_path, cfg, st, master, opt, avg, stream, tok);
            log("stopped after step %d (--stop-after); resume with --resume", st.step);
            return;
        }
        const auto t0 = std::chrono::steady_clock::now();
        // STE QAT: the forward and backward see the quantized weights, the gradient lands on
        // the fp32 master weights as if quantization were the identity.
        if (ph.qat)
            fake_quantize_model(L, cfg.quant, master.data(), model.params.data());
        else
            model.params = master;
        std::fill(model.grads.begin(), model.grads.end(), 0.f);
        double loss = 0;
        for (int a = 0; a < grad_accum; ++a) {
            const Batch b = next_batch(stream, t.batch_tokens, m.seq_len, grad_accum, 0, 1);
            loss += model.forward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len, ph.recur);
            model.backward();
        }
        loss /= grad_accum;
        if (!std::isfinite(loss))
            fail("step %d: training loss is %g; stopping (the last checkpoint, if any, is kept)", st.step, loss);
        for (size_t i = 0; i < L.total; ++i) grads[i] = model.grads[i] / grad_accum;
        const float gnorm = opt.step(master.data(), grads.data(), ph.lr_scale, st.step);
        avg.update(master.data(), st.step, ph.swa);
        const double dt = seconds_since(t0);
        st.elapsed_s += dt;
        ++st.step;
        if (st.step % t.log_every == 0 || st.step == 1)
            log("step %d loss %.6f gnorm %.3f lr %.3f%s%s%s tok/s %.0f elapsed %.1fs", st.step, loss, gnorm,
                ph.lr_scale, ph.recur ? " recur" : "", ph.qat ? " qat" : "", ph.swa ? " swa" : "", t.batch_tokens / dt, st.elapsed_s);
        if (t.val_every > 0 && st.step % t.val_every == 0) {
            const BpbAccumulator v = validate(master, ph.recur);
            log("val step %d loss %.4f bpb %.4f (%ld tokens)", st.step, v.loss(), v.bpb(), v.tokens);
        }
        if (t.checkpoint_every > 0 && st.step % t.checkpoint_every == 0)
            save_checkpoint(ckpt_path, cfg, st, master, opt, avg, stream, tok);
    }
    save_checkpoint(ckpt_path, cfg, st, master, opt, avg, stream, tok);
    const bool recur = phases_at(st.step, st.elapsed_s, cfg).recur;
    const BpbAccumulator raw = validate(master, recur);
    log("final step %d raw   val loss %.4f bpb %.4f (%ld tokens, %.1f s of training)", st.step, raw.loss(),
        raw.bpb(), raw.tokens, st.elapsed_s);
    if (avg.ema()) {
        const BpbAccumulator e = validate(std::vector<float>(avg.ema(), avg.ema() + L.total), recur);
        log("final step %d ema   val loss %.4f bpb %.4f", st.step, e.loss(), e.bpb());
    }
    if (avg.swa()) {
        const BpbAccumulator s = validate(std::vector<float>(avg.swa(), avg.swa() + L.total), recur);
        log("final step %d swa   val loss %.4f bpb %.4f (%ld snapshots)", st.step, s.loss(), s.bpb(), avg.swa_count());
    }
    log("checkpoint: %s", ckpt_path.c_str());
}

static void add_train_command(CLI::App& app, Config& cfg) {
    CLI::App* sub = app.add_subcommand("train", "train a model on challenge shards");
    // The preset is applied before any other flag, so explicit flags override it.
    sub->add_option_function<std::string>(
           "--preset", [&](const std::string& p) { apply_preset(cfg, p); },
           "tiny (default, CPU-sized) | record (the challenge shape)")
        ->trigger_on_parse();
    add_flags(*sub, fields(cfg.model));
    add_flags(*sub, fields(cfg.train));
    add_flags(*sub, fields(cfg.quant));
    sub->callback([&] { run_training(cfg); });
}

int pgolf_main(int argc, char** argv) {
    CLI::App app{"pgolf: train, quantize and evaluate parameter-golf language models"};
    app.require_subcommand(1);
    Config cfg;
    apply_preset(cfg, "tiny");
    add_train_command(app, cfg);
    add_tokenizer_commands(app);
    add_eval_commands(app);
    add_quant_commands(app);
    add_bench_commands(app);
    add_run_command(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help
        std::fprintf(stderr, "pgolf: error: %s\n", e.what());
        return 2;
    } catch (const Error& e) {
        std::fprintf(stderr, "pgolf: error: %s\n", e.what());
        return 1;
    }
    return 0;
}

}  // namespace pg

#ifndef PGOLF_NO_MAIN
int main(int argc, char** argv) { return pg::pgolf_main(argc, argv); }
#endif
