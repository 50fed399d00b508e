#include "pipeline/logs.h"

#include <algorithm>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "common/check.h"

namespace pg {

static bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// Seconds of training at `step`, linear between the nearest logged steps.
static double seconds_at(const std::vector<CurvePoint>& anchors, int step) {
    if (anchors.empty()) return 0;
    auto hi = std::lower_bound(anchors.begin(), anchors.end(), step,
                               [](const CurvePoint& p, int s) { return p.step < s; });
    if (hi == anchors.end()) return anchors.back().seconds;
    if (hi->step == step || hi == anchors.begin()) return hi->seconds;
    const CurvePoint& lo = *(hi - 1);
    return lo.seconds + (hi->seconds - lo.seconds) * double(step - lo.step) / double(hi->step - lo.step);
}

TrainLog parse_train_log(const std::string& text) {
    TrainLog t;
    std::istringstream in(text);
    std::string line;
    auto drop_after = [](std::vector<CurvePoint>& v, int step) {
        v.erase(std::remove_if(v.begin(), v.end(), [&](const CurvePoint& p) { return p.step > step; }), v.end());
    };
    while (std::getline(in, line)) {
        int step = 0;
        double a = 0, b = 0, c = 0;
        char kind[8] = {0};
        if (starts_with(line, "pgolf train: training on the ")) {
            t.device = line.substr(std::strlen("pgolf train: training on the "));
            t.complete = false;
            t.stopped_at = -1;
            t.final_scores.clear();
        } else if (std::sscanf(line.c_str(), "resumed from %*s at step %d", &step) == 1) {
            drop_after(t.loss, step);
            drop_after(t.val_bpb, step);
        } else if (starts_with(line, "model: ")) {
            const size_t d = line.find(" data "), p = line.find(" (", d == std::string::npos ? 0 : d);
            if (d != std::string::npos && p != std::string::npos && line.back() == ')') {
                t.data = line.substr(d + 6, p - d - 6);
                t.data_summary = line.substr(p + 2, line.size() - p - 3);
            }
        } else if (std::sscanf(line.c_str(), "step %d loss %lf", &step, &a) == 2) {
            const size_t e = line.rfind(" elapsed ");
            if (e != std::string::npos) t.loss.push_back({step, std::atof(line.c_str() + e + 9), a});
        } else if (std::sscanf(line.c_str(), "val step %d loss %lf bpb %lf", &step, &a, &b) == 3) {
            t.val_bpb.push_back({step, 0, b});
        } else if (std::sscanf(line.c_str(), "final step %d %7s val loss %lf bpb %lf", &step, kind, &a, &b) == 4) {
            t.final_scores[kind] = {a, b};
            if (std::string(kind) == "raw" && std::sscanf(line.c_str() + line.rfind('('), "(%*d tokens, %lf s", &c) == 1) {
                t.steps = step;
                t.train_seconds = c;
            }
        } else if (std::sscanf(line.c_str(), "stopped after step %d", &step) == 1) {
            t.stopped_at = step;
        } else if (starts_with(line, "checkpoint: ")) {
            t.complete = t.final_scores.count("raw") > 0;
        }
    }
    std::vector<CurvePoint> anchors{{0, 0, 0}};
    anchors.insert(anchors.end(), t.loss.begin(), t.loss.end());
    if (t.complete) anchors.push_back({t.steps, t.train_seconds, 0});
    for (CurvePoint& p : t.val_bpb) p.seconds = seconds_at(anchors, p.step);
    return t;
}

std::map<std::string, double> parse_result_line(const std::string& text, const std::string& path) {
    const size_t r = text.rfind("RESULT ");
    if (r == std::string::npos || (r > 0 && text[r - 1] != '\n')) fail("%s: no RESULT line", path.c_str());
    std::istringstream in(text.substr(r + 7, text.find('\n', r) - r - 7));
    std::map<std::string, double> out;
    std::string kv;
    while (in >> kv) {
        const size_t eq = kv.find('=');
        if (eq == std::string::npos) fail("%s: bad RESULT item '%s'", path.c_str(), kv.c_str());
        out[kv.substr(0, eq)] = std::atof(kv.c_str() + eq + 1);
    }
    return out;
}

SizeLog parse_size_log(const std::string& text, const std::string& path) {
    SizeLog s;
    std::istringstream in(text);
    std::string line;
    int found = 0;
    auto number = [](const std::string& rest) {
        std::string digits;
        for (char ch : rest.substr(0, rest.find("  (") == std::string::npos ? rest.size() : rest.find("  (")))
            if (ch >= '0' && ch <= '9') digits += ch;
        return std::atoll(digits.c_str());
    };
    while (std::getline(in, line)) {
        if (starts_with(line, "model bytes ")) s.model_bytes = number(line.substr(12)), ++found;
        else if (starts_with(line, "code bytes ")) s.code_bytes = number(line.substr(11)), ++found;
        else if (starts_with(line, "total ")) s.total_bytes = number(line.substr(6)), ++found;
    }
    if (found != 3) fail("%s: not the byte table of `pgolf size`", path.c_str());
    return s;
}

}  // namespace pg
