// pgolf's entry point and training driver. `pgolf train` trains the model described by
// common/config.h on challenge shards; the other subcommands (tokenizer, data, bpb, size,
// pack, eval) are registered by their modules.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "common/check.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/device.h"

namespace pg {

static void run_training(const Config& cfg) {
    const DeviceInfo dev = detect_device();
    std::printf("pgolf train: device %s\n", dev.describe().c_str());
    cfg.model.validate();
    fail("training is not built yet: the CPU reference model lands with issue 3");
}

static void add_train_command(CLI::App& app, Config& cfg, std::string& preset) {
    CLI::App* sub = app.add_subcommand("train", "train a model on challenge shards");
    // The preset is applied before any other flag, so explicit flags override it.
    sub->add_option_function<std::string>(
           "--preset", [&](const std::string& p) { apply_preset(cfg, p); preset = p; },
           "tiny (default, CPU-sized) | record (the challenge shape)")
        ->trigger_on_parse();
    add_model_flags(*sub, cfg.model);
    add_train_flags(*sub, cfg.train);
    sub->callback([&] { run_training(cfg); });
}

int pgolf_main(int argc, char** argv) {
    CLI::App app{"pgolf: train, quantize and evaluate parameter-golf language models"};
    app.require_subcommand(1);
    Config cfg;
    std::string preset = "tiny";
    apply_preset(cfg, preset);
    add_train_command(app, cfg, preset);
    add_tokenizer_commands(app);
    add_eval_commands(app);
    add_quant_commands(app);
    add_bench_commands(app);
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
