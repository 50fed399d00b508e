// A checkpoint is a set of named byte sections (config text, step, parameters, optimizer
// state, EMA, data position) in one file with a checksum. It is written atomically, so a
// run killed mid-save still has its previous checkpoint.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace pg {

class Checkpoint {
 public:
    void put(const std::string& name, std::vector<uint8_t> bytes) { sections_[name] = std::move(bytes); }
    template <typename T>
    void put_vec(const std::string& name, const std::vector<T>& v) {
        const auto* p = reinterpret_cast<const uint8_t*>(v.data());
        put(name, std::vector<uint8_t>(p, p + v.size() * sizeof(T)));
    }
    void put_text(const std::string& name, const std::string& s) { put(name, {s.begin(), s.end()}); }

    bool has(const std::string& name) const { return sections_.count(name) != 0; }
    const std::vector<uint8_t>& get(const std::string& name) const;  // pg::fail if absent
    template <typename T>
    std::vector<T> get_vec(const std::string& name) const {
        const auto& b = get(name);
        std::vector<T> v(b.size() / sizeof(T));
        std::copy(b.begin(), b.begin() + v.size() * sizeof(T), reinterpret_cast<uint8_t*>(v.data()));
        return v;
    }
    std::string get_text(const std::string& name) const {
        const auto& b = get(name);
        return std::string(b.begin(), b.end());
    }

    void save(const std::string& path) const;
    static Checkpoint load(const std::string& path);  // rejects bad magic, truncation, bad checksum

 private:
    std::map<std::string, std::vector<uint8_t>> sections_;
    std::string path_;
};

}  // namespace pg
