#include <CLI/CLI.hpp>

#include "common/cli.h"

namespace pg {
void add_quant_commands(CLI::App&) {}
}  // namespace pg
