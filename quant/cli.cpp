#include <CLI/CLI.hpp>

#include "common/check.h"
#include "common/cli.h"
#include "quant/budget.h"

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

void add_quant_commands(CLI::App& app) { add_size_command(app); }

}  // namespace pg
