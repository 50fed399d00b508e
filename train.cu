// pgolf's entry point and training driver. `pgolf train` trains the model described by
// common/config.h on challenge shards, on the GPU when one is visible (--device), else on
// the CPU reference; the other subcommands (tokenizer, data, bpb, size, pack, eval) are
// registered by their modules.
//
// One training step: the schedule says where training stands (LR multiplier, whether
// depth recurrence, QAT and SWA are on); grad_accum micro-batches run forward and backward,
// their gradients averaged; the optimizer updates the fp32 master weights; EMA/SWA follow.
// The device does that work behind one interface (train/trainer.h); this loop, the data,
// logs and checkpoints are the same for both. Wall-clock time counts training only (not
// validation or checkpoint writes).
#include <CLI/CLI.hpp>
#include <cuda_runtime.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "common/check.h"
#include "common/clock.h"
#include "common/checkpoint.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/io.h"
#include "dist/comm.h"
#include "dist/launch.h"
#include "dist/rank.h"
#include "eval/bpb.h"
#include "eval/device_pick.h"
#include "eval/evaluate.h"
#include "model/model_ref.h"
#include "model/optim.h"
#include "model/schedule.h"
#include "tokenizer/loader.h"
#include "tokenizer/sp.h"
#include "train/trainer.h"

namespace pg {

// Lines go to stdout and to <out>/train.log (appended to on resume); on rank 0 only.
class RunLog {
 public:
    RunLog(const std::string& path, bool append, bool on)
        : f_(on ? std::fopen(path.c_str(), append ? "a" : "w") : nullptr) {
        if (on && !f_) fail("%s: cannot open log for writing", path.c_str());
    }
    ~RunLog() {
        if (f_) std::fclose(f_);
    }
    __attribute__((format(printf, 2, 3))) void operator()(const char* fmt, ...) {
        if (!f_) return;
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

// Every rank calls it (the optimizer state is gathered across ranks); rank 0 writes.
static void save_checkpoint(const std::string& path, Config cfg, const TrainState& st, Trainer& tr,
                            const TokenStream& stream, const Tokenizer& tok, Comm* comm) {
    const OptimizerState opt = tr.optimizer_state();
    const AverageState avg = tr.average_state();
    const std::vector<float> master = tr.master();
    Checkpoint ck;
    ck.put_text("config.model", to_text(fields(cfg.model)));
    ck.put_text("config.train", to_text(fields(cfg.train)));
    ck.put_text("config.quant", to_text(fields(cfg.quant)));
    ck.put_text("tokenizer.sha256", tok.sha256());
    ck.put_vec("state", std::vector<double>{double(st.step), st.elapsed_s});
    ck.put_vec("stream", std::vector<uint64_t>{uint64_t(stream.position().shard), stream.position().offset});
    ck.put_vec("params", master);
    ck.put("optimizer", save_state(opt));
    ck.put("average", save_state(avg));
    if (avg.ema_steps > 0) ck.put_vec("params.ema", avg.ema);
    if (avg.swa_count > 0) ck.put_vec("params.swa", avg.swa);
    leader_writes(comm, nullptr, [&] { ck.save(path); });
}

// The weights a fresh run starts from: RefModel's init, the same on every device.
static std::vector<float> initial_params(const ModelConfig& m, uint64_t seed) {
    RefModel<float> init(m);
    init.init(seed);
    return std::move(init.params);
}

void run_training(Config cfg, const DistOptions* dist) {
    const auto started = std::chrono::steady_clock::now();
    TrainConfig& t = cfg.train;
    ModelConfig& m = cfg.model;
    if (t.data_dir.empty()) t.data_dir = default_data_dir();
    if (t.tokenizer.empty()) t.tokenizer = t.data_dir + "/tokenizer.model";
    m.validate();
    if (t.batch_tokens % m.seq_len != 0) fail("--batch-tokens (%ld) must be a multiple of --seq-len (%d)", t.batch_tokens, m.seq_len);

    const ComputeDevice where = pick_device(t.device, m);
    const bool cuda = where.cuda;
    // On the GPU with several of them (--gpus), the process the user started launches one rank a
    // GPU and returns; each rank trains its share of every step.
    Ranks ranks;
    if (cuda && !join_ranks(t.gpus, dist ? *dist : DistOptions{}, ranks)) return;
    const RankInfo& me = ranks.me;
    const std::unique_ptr<Comm>& comm = ranks.comm;
    const int all_seqs = int(t.batch_tokens / m.seq_len);
    if (all_seqs % me.world != 0)
        fail("the %d sequences of a step do not split evenly over %d GPUs", all_seqs, me.world);
    const int seqs = all_seqs / me.world;  // this rank's
    if (t.micro_batch_seqs < 0 || (t.micro_batch_seqs > 0 && seqs % t.micro_batch_seqs != 0))
        fail("--micro-batch-seqs (%d) must divide the %d sequences of a step on a GPU (0: pick)", t.micro_batch_seqs,
             seqs);

    make_dirs(t.out_dir);
    const std::string ckpt_path = t.out_dir + "/checkpoint.bin";
    RunLog log(t.out_dir + "/train.log", t.resume, me.leader());
    log("pgolf train: training on the %s%s", where.describe.c_str(),
        me.world > 1 ? format(", %d ranks", me.world).c_str() : "");

    Tokenizer tok(t.tokenizer);
    check_tokenizer_vocab(tok, m.vocab_size);
    const ByteTables bytes = build_byte_tables(tok, m.vocab_size);
    TokenStream stream(t.data_dir, t.train_pattern, m.vocab_size);
    const std::vector<uint16_t> val = load_tokens(t.data_dir, t.val_pattern, m.vocab_size);

    const std::unique_ptr<Trainer> tr = cuda ? make_cuda_trainer(cfg, seqs, comm.get()) : make_cpu_trainer(cfg, seqs);
    const ParamLayout& L = tr->layout();
    const int micro = tr->micro_batch(), grad_accum = seqs / micro;
    TrainState st;
    if (t.resume) {
        const Checkpoint ck = Checkpoint::load(ckpt_path);
        if (ck.get_text("config.model") != to_text(fields(m)))
            fail("%s: checkpoint was written for a different model config", ckpt_path.c_str());
        if (ck.get_text("tokenizer.sha256") != tok.sha256())
            fail("%s: checkpoint was written with a different tokenizer", ckpt_path.c_str());
        const auto s = ck.get_vec<double>("state");
        const auto pos = ck.get_vec<uint64_t>("stream");
        const auto master = ck.get_vec<float>("params");
        if (s.size() != 2 || pos.size() != 2 || master.size() != L.total)
            fail("%s: checkpoint sections do not fit this model", ckpt_path.c_str());
        st.step = int(s[0]);
        st.elapsed_s = s[1];
        stream.seek({int(pos[0]), size_t(pos[1])});
        OptimizerState os = tr->optimizer_state();  // zeros of this model's sizes, which load_state checks
        load_state(os, ck.get("optimizer"), ckpt_path);
        AverageState as = tr->average_state();
        load_state(as, ck.get("average"), ckpt_path);
        tr->set_master(master);
        tr->set_optimizer_state(os);
        tr->set_average_state(as);
        log("resumed from %s at step %d (%.1f s of training)", ckpt_path.c_str(), st.step, st.elapsed_s);
    } else {
        tr->set_master(initial_params(m, t.seed));
    }
    log("model: %zu parameters, %zu layers scheduled (%zu with recurrence); data %s (%zu train shards, %zu val tokens)",
        L.total, m.layer_schedule(false).size(), m.layer_schedule(true).size(), t.data_dir.c_str(),
        stream.files().size(), val.size());
    log("batch: %ld tokens/step = %s%d x %d seqs of %d; %d iterations, wall-clock cap %.0f s", t.batch_tokens,
        me.world > 1 ? format("%d ranks x ", me.world).c_str() : "", grad_accum, micro, m.seq_len, t.iterations,
        t.max_wallclock_s);
    log("trainer: %s", tr->describe().c_str());
    // Time outside the training clock, so that a run's wall time can be accounted for.
    log("set-up: %.1f s (tokenizer, data, weights, device)", seconds_since(started));

    EvalOptions eo;
    eo.seq_len = m.seq_len;
    eo.stride = m.seq_len;
    eo.batch_seqs = micro;
    eo.max_tokens = t.val_tokens;
    const NextBatch next = [&] {
        return next_batch(stream, t.batch_tokens, m.seq_len, grad_accum, me.rank, me.world);
    };

    bool first_step = true;
    double leader_elapsed = -1;  // rank 0's elapsed_s at the previous step, -1 before the first
    for (;;) {
        // Rank 0's clock drives every rank's schedule, so all take the same phases and stop
        // together; its last step's duration, the difference of two broadcast values, is the
        // same on every rank too.
        st.elapsed_s = leader_value(comm.get(), st.elapsed_s, nullptr);
        const double last_step_s = leader_elapsed < 0 ? 0 : st.elapsed_s - leader_elapsed;
        leader_elapsed = st.elapsed_s;
        const Phases ph = phases_at(st.step, st.elapsed_s, cfg, last_step_s);
        if (ph.done || st.step >= t.iterations) break;
        if (t.stop_after > 0 && st.step >= t.stop_after) {
            save_checkpoint(ckpt_path, cfg, st, *tr, stream, tok, comm.get());
            log("stopped after step %d (--stop-after); resume with --resume", st.step);
            return;
        }
        const auto t0 = std::chrono::steady_clock::now();
        const double loss = mean_over_ranks(comm.get(), tr->forward_backward(next, grad_accum, ph.recur, ph.qat), nullptr);
        // The gradient norm is checked too: a kernel that maps NaN to a finite value (a max, a
        // clamp) can keep the loss of NaN weights finite, but not their gradient's norm.
        const auto diverged = [&](const char* what, double v) {
            fail("step %d: training diverged (%s is %g); stopping (the last checkpoint, if any, is kept)", st.step,
                 what, v);
        };
        if (!std::isfinite(loss)) diverged("the loss", loss);
        const float gnorm = tr->optimizer_step(ph.lr_scale, st.step);
        if (!std::isfinite(gnorm)) diverged("the gradient norm", gnorm);
        tr->update_average(st.step, ph.swa);
        const double dt = seconds_since(t0);
        st.elapsed_s += dt;
        ++st.step;
        if (st.step % t.log_every == 0 || first_step)
            log("step %d loss %.6f gnorm %.3f lr %.3f%s%s%s tok/s %.0f step_ms %.1f elapsed %.1fs", st.step, loss,
                gnorm, ph.lr_scale, ph.recur ? " recur" : "", ph.qat ? " qat" : "", ph.swa ? " swa" : "",
                t.batch_tokens / dt, dt * 1e3, st.elapsed_s);
        if (first_step) {
            const std::string mem = tr->memory_use();
            if (!mem.empty()) log("memory after the first step: %s", mem.c_str());
            first_step = false;
        }
        if (t.val_every > 0 && st.step % t.val_every == 0) {
            const auto v0 = std::chrono::steady_clock::now();
            const BpbAccumulator v = tr->validate(Weights::Master, ph.recur, val, bytes, eo, comm.get());
            log("val step %d loss %.4f bpb %.4f (%ld tokens, %.1f s)", st.step, v.loss(), v.bpb(), v.tokens,
                seconds_since(v0));
        }
        if (t.checkpoint_every > 0 && st.step % t.checkpoint_every == 0)
            save_checkpoint(ckpt_path, cfg, st, *tr, stream, tok, comm.get());
    }
    const auto wrap0 = std::chrono::steady_clock::now();
    save_checkpoint(ckpt_path, cfg, st, *tr, stream, tok, comm.get());
    const double ckpt_s = seconds_since(wrap0);
    const auto val0 = std::chrono::steady_clock::now();
    const bool recur = phases_at(st.step, st.elapsed_s, cfg).recur;
    const BpbAccumulator raw = tr->validate(Weights::Master, recur, val, bytes, eo, comm.get());
    log("final step %d raw   val loss %.8f bpb %.8f (%ld tokens, %.1f s of training)", st.step, raw.loss(),
        raw.bpb(), raw.tokens, st.elapsed_s);
    // The weights `pgolf pack` takes by default (EMA when kept) give the RESULT line's val_bpb.
    BpbAccumulator best = raw;
    const AverageState avg = tr->average_state();
    if (avg.ema_steps > 0) {
        best = tr->validate(Weights::Ema, recur, val, bytes, eo, comm.get());
        log("final step %d ema   val loss %.8f bpb %.8f", st.step, best.loss(), best.bpb());
    }
    if (avg.swa_count > 0) {
        const BpbAccumulator s = tr->validate(Weights::Swa, recur, val, bytes, eo, comm.get());
        log("final step %d swa   val loss %.8f bpb %.8f (%ld snapshots)", st.step, s.loss(), s.bpb(), avg.swa_count);
    }
    log("wrap-up: %.1f s writing the checkpoint, %.1f s in the final validations", ckpt_s, seconds_since(val0));
    log("checkpoint: %s", ckpt_path.c_str());
    log("RESULT steps=%d train_seconds=%.1f tokens_per_s=%.0f val_loss=%.8f val_bpb=%.8f weights=%s", st.step,
        st.elapsed_s, st.elapsed_s > 0 ? double(st.step) * t.batch_tokens / st.elapsed_s : 0.0, best.loss(), best.bpb(),
        avg.ema_steps > 0 ? "ema" : "raw");
}

static void add_train_command(CLI::App& app, Config& cfg, DistOptions& dist) {
    CLI::App* sub = app.add_subcommand("train", "train a model on challenge shards");
    // The preset is applied before any other flag, so explicit flags override it.
    sub->add_option_function<std::string>(
           "--preset", [&](const std::string& p) { apply_preset(cfg, p); },
           "tiny (default, CPU-sized) | record (the challenge shape)")
        ->trigger_on_parse();
    add_flags(*sub, fields(cfg.model));
    add_flags(*sub, fields(cfg.train));
    add_flags(*sub, fields(cfg.quant));
    add_flags(*sub, fields(dist));
    dist.launch = true;
    sub->callback([&cfg, &dist] { run_training(cfg, &dist); });
}

int pgolf_main(int argc, char** argv) {
    CLI::App app{"pgolf: train, quantize and evaluate parameter-golf language models"};
    app.require_subcommand(1);
    Config cfg;
    apply_preset(cfg, "tiny");
    DistOptions dist;
    add_train_command(app, cfg, dist);
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
