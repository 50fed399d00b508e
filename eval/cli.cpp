#include <CLI/CLI.hpp>

#include "common/cli.h"

namespace pg {
void add_eval_commands(CLI::App&) {}
}  // namespace pg
