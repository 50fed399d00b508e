// pgolf size (the budget check) and pgolf pack (checkpoint -> artifact).
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>

#include "common/check.h"
#include "common/clock.h"
#include "common/cli.h"
#include "common/io.h"
#include "eval/device_pick.h"
#include "quant/budget.h"
#include "quant/calibrate.h"
#include "quant/export.h"
#include "quant/weights.h"

namespace pg {

static void add_size_command(CLI::App& app) {
    struct Opts {
        std::string artifact, code;
    };
    auto opts = std::make_shared<Opts>();
    CLI::App* sub = app.add_subcommand("size", "check an artifact plus code against the 16,000,000-byte budget");
    sub->add_option("ARTIFACT", opts->artifact, "artifact file")->required();
    sub->add_option("--code", opts->code, "compressed code archive (default: code.tar.xz next to the binary)");
    sub->callback([opts] {
        const std::string code = opts->code.empty() ? default_code_path() : opts->code;
        const Budget b = size_report(opts->artifact, code, stdout);
        if (!b.fits())
            fail("%s: %lld bytes with code, %lld over the %lld-byte budget", opts->artifact.c_str(), b.total,
                 -b.margin, kBudgetBytes);
    });
}

struct PackOpts {
    std::string checkpoint, out, weights = "ema", code, device = "auto";
    int calib_batch = 8;  // calibration sequences a forward pass
    QuantConfig quant;  // flags given here override the checkpoint's recipe
};

static void run_pack(const CLI::App& sub, PackOpts& o) {
    const auto t0 = std::chrono::steady_clock::now();
    Weights w = load_checkpoint_weights(o.checkpoint, o.weights);
    QuantConfig q = w.config.quant;
    overlay_given(sub, fields(o.quant), fields(q));
    const ModelConfig& m = w.config.model;
    const ParamLayout L = make_layout(m);
    std::printf("pack: %s (%s weights, %zu parameters) -> %s\n", o.checkpoint.c_str(), o.weights.c_str(), L.total,
                o.out.c_str());

    std::map<std::string, std::vector<double>> hess;
    if (q.calib_seqs > 0) {
        if (o.calib_batch < 1) fail("pack: --calib-batch %d must be at least 1", o.calib_batch);
        const ComputeDevice dev = pick_device(o.device, m);
        const auto t1 = std::chrono::steady_clock::now();
        TokenStream stream(w.config.train.data_dir, w.config.train.train_pattern, m.vocab_size);
        if (dev.cuda) {
            hess = collect_hessians_cuda(m, w.params, stream, q.calib_seqs, o.calib_batch, eval_recur(m));
        } else {
            RefModel<float> model(m);
            model.params = w.params;
            hess = collect_hessians(model, stream, q.calib_seqs, o.calib_batch, eval_recur(m));
        }
        std::printf("GPTQ: Hessians of %zu matrices from %d training sequences of %d in %.1f s on %s\n", hess.size(),
                    q.calib_seqs, m.seq_len, seconds_since(t1), dev.describe.c_str());
    }
    HessianMap hm;
    for (const auto& [name, h] : hess) hm[name] = &h;
    Artifact a = quantize_model(m, L, w.params.data(), q, hm);

    const Codec codec = quant_codec(q);
    const std::string code = o.code.empty() ? default_code_path() : o.code;
    if (!file_exists(code)) fail("%s: code archive not found (build it with `make`, or pass --code FILE)", code.c_str());
    const long long code_bytes = (long long)read_file(code).size();
    std::vector<uint8_t> bytes = encode_artifact(a, codec);
    if (codec == Codec::Lzma)  // zlib is cheap to add for comparison; lzma-9e takes seconds per MB
        std::printf("encoded %zu bytes with lzma-9e (zlib-9 would give %zu)\n", bytes.size(),
                    encode_artifact(a, Codec::Zlib).size());
    if (!check_budget((long long)bytes.size(), code_bytes).fits()) {
        const long long over = (long long)bytes.size() + code_bytes - kBudgetBytes;
        const PruneReport r = prune_to_fit(a, L, w.params.data(), size_t(kBudgetBytes - code_bytes), codec);
        std::printf("over budget by %lld bytes: pruned %zu of %zu +-1 values -> %zu bytes\n", over, r.pruned,
                    r.candidates, r.bytes);
        bytes = encode_artifact(a, codec);
    }
    write_file_atomic(o.out, bytes.data(), bytes.size());
    const Budget b = size_report(o.out, code, stdout);
    std::printf("pack took %.1f s\n", seconds_since(t0));
    std::printf("RESULT artifact_bytes=%lld code_bytes=%lld total_bytes=%lld fits=%d\n", b.model_bytes, b.code_bytes,
                b.total, int(b.fits()));
}

static void add_pack_command(CLI::App& app) {
    auto o = std::make_shared<PackOpts>();
    CLI::App* sub = app.add_subcommand("pack", "quantize a checkpoint (GPTQ, int5/int6/int8) into a budget-checked artifact");
    sub->add_option("CHECKPOINT", o->checkpoint, "training checkpoint")->required();
    sub->add_option("-o,--out", o->out, "artifact to write")->required();
    sub->add_option("--weights", o->weights, "ema | swa | raw")->capture_default_str();
    sub->add_option("--code", o->code, "compressed code archive (default: code.tar.xz next to the binary)");
    sub->add_option("--device", o->device, "GPTQ calibration on: auto | cpu | cuda")->capture_default_str();
    sub->add_option("--calib-batch", o->calib_batch, "calibration sequences a forward pass")->capture_default_str();
    add_flags(*sub, fields(o->quant));
    sub->callback([sub, o] { run_pack(*sub, *o); });
}

void add_quant_commands(CLI::App& app) {
    add_size_command(app);
    add_pack_command(app);
}

}  // namespace pg
