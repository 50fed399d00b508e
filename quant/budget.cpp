#include "quant/budget.h"

#include <algorithm>
#include <filesystem>

#include "common/check.h"
#include "common/io.h"
#include "quant/artifact.h"

namespace fs = std::filesystem;

namespace pg {

Budget check_budget(long long model_bytes, long long code_bytes) {
    Budget b;
    b.model_bytes = model_bytes;
    b.code_bytes = code_bytes;
    b.total = model_bytes + code_bytes;
    b.margin = kBudgetBytes - b.total;
    return b;
}

std::string default_code_path() {
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec) fail("cannot locate the running binary (/proc/self/exe: %s); pass --code", ec.message().c_str());
    return (exe.parent_path() / "code.tar.xz").string();
}

static std::string grouped(long long v) {
    std::string digits = std::to_string(v < 0 ? -v : v), out;
    for (size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return v < 0 ? "-" + out : out;
}

Budget size_report(const std::string& artifact_path, const std::string& code_path, std::FILE* out) {
    if (!file_exists(code_path))
        fail("%s: code archive not found (build it with `make`, or pass --code FILE)", code_path.c_str());
    const std::vector<uint8_t> bytes = read_file(artifact_path);
    const Artifact a = decode_artifact(bytes.data(), bytes.size(), artifact_path);
    const Budget b = check_budget((long long)bytes.size(), (long long)fs::file_size(code_path));
    std::vector<std::pair<std::string, int>> kinds;  // tensors per dtype, in order of appearance
    for (const ArtifactTensor& t : a.tensors) {
        const std::string k = dtype_name(t.dtype, t.bits);
        auto it = std::find_if(kinds.begin(), kinds.end(), [&](const auto& e) { return e.first == k; });
        if (it == kinds.end()) kinds.emplace_back(k, 1);
        else it->second++;
    }
    std::string summary;
    for (const auto& [k, n] : kinds) summary += format("%s%d %s", summary.empty() ? "" : ", ", n, k.c_str());
    std::fprintf(out, "artifact     %s\n", artifact_path.c_str());
    std::fprintf(out, "tensors      %s\n", summary.c_str());
    std::fprintf(out, "model bytes  %14s\n", grouped(b.model_bytes).c_str());
    std::fprintf(out, "code bytes   %14s  (%s)\n", grouped(b.code_bytes).c_str(), code_path.c_str());
    std::fprintf(out, "total        %14s\n", grouped(b.total).c_str());
    std::fprintf(out, "budget       %14s\n", grouped(kBudgetBytes).c_str());
    std::fprintf(out, "margin       %14s  %s\n", grouped(b.margin).c_str(), b.fits() ? "(fits)" : "(OVER)");
    return b;
}

}  // namespace pg
