// Each module registers its own subcommands on the one CLI11 app built in train.cu.
#pragma once
#include "common/config.h"

namespace CLI {
class App;
}

namespace pg {
struct DistOptions;
// pgolf train (train.cu); dist: the multi-GPU flags (dist/launch.h), defaults when null.
void run_training(Config cfg, const DistOptions* dist = nullptr);
void add_tokenizer_commands(CLI::App& app);  // tokenizer train, data export, data inspect
void add_eval_commands(CLI::App& app);       // bpb, eval
void add_quant_commands(CLI::App& app);      // size, pack
void add_bench_commands(CLI::App& app);      // bench attention
void add_run_command(CLI::App& app);         // run: the record pipeline (pipeline/run.cpp)
}  // namespace pg
