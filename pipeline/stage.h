// One stage of `pgolf run`: this same binary (/proc/self/exe) run with a subcommand, its
// stdout and stderr going to a log file. The child dies with the pipeline, so a killed
// run leaves no stage running behind it.
#pragma once
#include <string>
#include <vector>

namespace pg {

// Runs `pgolf <args...>` with output to log_path (truncated first). Returns "" on exit
// status 0, else one line saying why: the child's own "pgolf: error: ..." line when it
// printed one, else its exit status or signal.
std::string run_self(const std::vector<std::string>& args, const std::string& log_path);

// The command line as a shell would take it back: `build/pgolf train --seed=42 ...`.
std::string shell_command(const std::string& program, const std::vector<std::string>& args);

}  // namespace pg
