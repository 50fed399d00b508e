#include "common/checkpoint.h"

#include <cstring>

#include "common/check.h"
#include "common/io.h"

namespace pg {

static const char kMagic[8] = {'P', 'G', 'C', 'K', 'P', 'T', '0', '1'};

const std::vector<uint8_t>& Checkpoint::get(const std::string& name) const {
    auto it = sections_.find(name);
    if (it == sections_.end()) fail("%s: checkpoint has no section '%s'", path_.c_str(), name.c_str());
    return it->second;
}

// Layout: magic, u64 section count, then per section u64 name length, name, u64 size,
// bytes; finally the 64-hex-digit SHA-256 of everything before it.
void Checkpoint::save(const std::string& path) const {
    std::vector<uint8_t> out(kMagic, kMagic + 8);
    auto put_u64 = [&](uint64_t v) {
        const auto* p = reinterpret_cast<const uint8_t*>(&v);
        out.insert(out.end(), p, p + 8);
    };
    put_u64(sections_.size());
    for (const auto& [name, bytes] : sections_) {
        put_u64(name.size());
        out.insert(out.end(), name.begin(), name.end());
        put_u64(bytes.size());
        out.insert(out.end(), bytes.begin(), bytes.end());
    }
    const std::string sum = sha256_hex(out.data(), out.size());
    out.insert(out.end(), sum.begin(), sum.end());
    write_file_atomic(path, out.data(), out.size());
}

Checkpoint Checkpoint::load(const std::string& path) {
    const std::vector<uint8_t> in = read_file(path);
    if (in.size() < 8 + 8 + 64 || std::memcmp(in.data(), kMagic, 8) != 0)
        fail("%s: not a pgolf checkpoint (bad magic or too short)", path.c_str());
    const size_t body = in.size() - 64;
    if (sha256_hex(in.data(), body) != std::string(in.begin() + body, in.end()))
        fail("%s: checkpoint checksum mismatch (truncated or corrupt)", path.c_str());
    size_t pos = 8;
    auto get_u64 = [&]() {
        if (pos + 8 > body) fail("%s: checkpoint truncated", path.c_str());
        uint64_t v;
        std::memcpy(&v, in.data() + pos, 8);
        pos += 8;
        return v;
    };
    Checkpoint c;
    c.path_ = path;
    const uint64_t n = get_u64();
    for (uint64_t i = 0; i < n; ++i) {
        const uint64_t nl = get_u64();
        if (nl > body - pos) fail("%s: checkpoint section table is corrupt", path.c_str());
        std::string name(in.begin() + pos, in.begin() + pos + nl);
        pos += nl;
        const uint64_t sz = get_u64();
        if (sz > body - pos) fail("%s: checkpoint section '%s' is truncated", path.c_str(), name.c_str());
        c.sections_[name] = std::vector<uint8_t>(in.begin() + pos, in.begin() + pos + sz);
        pos += sz;
    }
    if (pos != body) fail("%s: checkpoint has trailing bytes", path.c_str());
    return c;
}

}  // namespace pg
