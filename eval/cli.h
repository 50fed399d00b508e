// `pgolf bench eval` (eval/cli.cpp), registered by add_bench_commands (model/bench.cu).
#pragma once

namespace CLI {
class App;
}

namespace pg {
void add_eval_bench(CLI::App& bench);
}  // namespace pg
