// `pgolf bench model` (model/bench_model.cu), registered by add_bench_commands (model/bench.cu).
#pragma once

namespace CLI {
class App;
}

namespace pg {
void add_model_bench(CLI::App& bench);
}  // namespace pg
