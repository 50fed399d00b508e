#include "pipeline/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>

#include "common/check.h"
#include "pipeline/stage.h"
#include "quant/budget.h"

namespace pg {

namespace {

double mean(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0 : s / double(v.size());
}

// Sample standard deviation (n - 1), as the public records report it.
double stdev(const std::vector<double>& v) {
    if (v.size() < 2) return 0;
    const double m = mean(v);
    double s = 0;
    for (double x : v) s += (x - m) * (x - m);
    return std::sqrt(s / double(v.size() - 1));
}

template <class F>
std::vector<double> each(const std::vector<SeedResult>& seeds, F f) {
    std::vector<double> v;
    for (const SeedResult& r : seeds) v.push_back(double(f(r)));
    return v;
}

double max_of(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

std::string grouped(long long n) {
    std::string s = std::to_string(n < 0 ? -n : n), out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
        out += s[i];
    }
    return (n < 0 ? "-" : "") + out;
}

// An ordered JSON object: members keep the order they were added in.
class Json {
   public:
    Json& num(const std::string& k, double v, int decimals) { return raw(k, format("%.*f", decimals, v)); }
    Json& integer(const std::string& k, long long v) { return raw(k, std::to_string(v)); }
    Json& boolean(const std::string& k, bool v) { return raw(k, v ? "true" : "false"); }
    Json& str(const std::string& k, const std::string& v) { return raw(k, quote(v)); }
    Json& raw(const std::string& k, const std::string& v) { return add(k, v, nullptr); }
    Json& obj(const std::string& k, const Json& v) { return add(k, "", &v); }
    std::string render(int indent = 0) const {
        const std::string pad(indent + 2, ' ');
        std::string s = "{\n";
        for (size_t i = 0; i < keys_.size(); ++i) {
            s += pad + quote(keys_[i]) + ": ";
            s += objects_[i] ? objects_[i]->render(indent + 2) : values_[i];
            s += i + 1 < keys_.size() ? ",\n" : "\n";
        }
        return s + std::string(indent, ' ') + "}";
    }

   private:
    static std::string quote(const std::string& v) {
        std::string q = "\"";
        for (unsigned char ch : v) {
            if (ch == '"' || ch == '\\') q += '\\', q += char(ch);
            else if (ch < 0x20) q += format("\\u%04x", ch);
            else q += char(ch);
        }
        return q + "\"";
    }
    Json& add(const std::string& k, const std::string& v, const Json* o) {
        keys_.push_back(k);
        values_.push_back(v);
        objects_.push_back(o ? std::make_shared<Json>(*o) : nullptr);
        return *this;
    }
    std::vector<std::string> keys_, values_;
    std::vector<std::shared_ptr<Json>> objects_;  // set for a nested object
};

// The scores of one seed, or their means over seeds: the fields both levels share.
void add_scores(Json& j, const std::vector<SeedResult>& seeds, bool ttt) {
    auto both = [&](const std::string& prefix, std::function<const Score&(const SeedResult&)> get) {
        j.num(prefix + "val_loss", mean(each(seeds, [&](const SeedResult& r) { return get(r).loss; })), 8);
        j.num(prefix + "val_bpb", mean(each(seeds, [&](const SeedResult& r) { return get(r).bpb; })), 8);
    };
    both("pre_quant_", [](const SeedResult& r) -> const Score& { return r.pre_quant; });
    both("post_quant_", [](const SeedResult& r) -> const Score& { return r.post_quant; });
    both("sliding_", [](const SeedResult& r) -> const Score& { return r.sliding; });
    if (ttt) both("ttt_", [](const SeedResult& r) -> const Score& { return r.ttt; });
}

}  // namespace

std::string summary_blurb(const RunSettings& s) {
    const ModelConfig& m = s.cfg.model;
    const QuantConfig& q = s.cfg.quant;
    const RunOptions& r = s.run;
    std::string b = format("pgolf (C++/CUDA): %dL x %dd, %dH/%dKV, MLP %dx, vocab %d, seq %d", m.n_layers, m.model_dim,
                           m.n_heads, m.n_kv_heads, m.mlp_mult, m.vocab_size, m.seq_len);
    if (m.recur_repeats > 1) b += format(", layers %d-%d looped x%d from %.0f%%", m.recur_start, m.recur_end, m.recur_repeats, 100.0 * m.recur_from);
    b += format("; %s weights, %s int%d attention / int%d MLP / int%d embeddings + %s; sliding window stride %d",
                r.weights.c_str(), q.calib_seqs > 0 ? "GPTQ" : "round-to-nearest", q.attn_bits, q.mlp_bits, q.embed_bits,
                q.codec.c_str(), r.stride);
    if (r.ttt)
        b += format(" + score-first TTT (SGD lr %g, %d epoch%s a %ld-target chunk)", double(r.ttt_opt.lr), r.ttt_opt.epochs,
                    r.ttt_opt.epochs == 1 ? "" : "s", r.ttt_opt.chunk_tokens);
    return b;
}

std::string submission_json(const RunSettings& s, const std::vector<SeedResult>& seeds) {
    const RunOptions& r = s.run;
    const bool ttt = r.ttt;
    const auto score_loss = each(seeds, [&](const SeedResult& x) { return x.score(ttt).loss; });
    const auto score_bpb = each(seeds, [&](const SeedResult& x) { return x.score(ttt).bpb; });
    const double wallclock = max_of(each(seeds, [](const SeedResult& x) { return x.train.train_seconds; }));
    const double eval_s = max_of(each(seeds, [&](const SeedResult& x) { return x.eval_seconds(ttt); }));
    const double total = max_of(each(seeds, [](const SeedResult& x) { return x.bytes.total_bytes; }));

    Json j;
    j.str("author", r.author).str("github_id", r.github_id).str("name", r.name);
    j.str("blurb", r.blurb.empty() ? summary_blurb(s) : r.blurb).str("date", r.date);
    const bool fits_track = wallclock <= 600 && eval_s <= 600 && total <= double(kBudgetBytes);
    j.str("track", fits_track ? "10min_16mb" : "non_record_16mb");
    j.num("val_loss", mean(score_loss), 8).num("val_bpb", mean(score_bpb), 8);
    if (seeds.size() > 1) j.num("val_loss_std", stdev(score_loss), 8).num("val_bpb_std", stdev(score_bpb), 8);
    add_scores(j, seeds, ttt);
    j.integer("step_stop", std::llround(mean(each(seeds, [](const SeedResult& x) { return x.train.steps; }))));
    j.num("wallclock_seconds", wallclock, 1).num("eval_time_seconds", eval_s, 1);
    j.num("tokens_per_second", mean(each(seeds, [](const SeedResult& x) { return x.tokens_per_second; })), 0);
    j.integer("bytes_total", (long long)total);
    j.integer("bytes_model", (long long)max_of(each(seeds, [](const SeedResult& x) { return x.bytes.model_bytes; })));
    j.integer("bytes_code", (long long)max_of(each(seeds, [](const SeedResult& x) { return x.bytes.code_bytes; })));
    std::string list = "[";
    for (const SeedResult& x : seeds) list += (list.size() > 1 ? ", " : "") + std::to_string(x.seed);
    j.raw("seeds", list + "]");
    Json per;
    for (const SeedResult& x : seeds) {
        Json one;
        one.num("val_loss", x.score(ttt).loss, 8).num("val_bpb", x.score(ttt).bpb, 8);
        add_scores(one, {x}, ttt);
        one.integer("step_stop", x.train.steps).num("wallclock_seconds", x.train.train_seconds, 1);
        one.num("eval_time_seconds", x.eval_seconds(ttt), 1).num("tokens_per_second", x.tokens_per_second, 0);
        // As in the public records' seed_results: artifact_bytes counts the code too.
        one.integer("artifact_bytes", x.bytes.total_bytes).integer("bytes_model", x.bytes.model_bytes);
        per.obj(std::to_string(x.seed), one);
    }
    j.obj("seed_results", per);
    j.str("hardware", seeds.front().train.device);
    Json c;
    c.boolean("train_under_600s", wallclock <= 600).boolean("artifact_under_16mb", total <= double(kBudgetBytes));
    c.boolean("eval_under_600s", eval_s <= 600).boolean("score_first_ttt", ttt).boolean("three_seeds", seeds.size() >= 3);
    j.obj("compliance", c);
    return j.render() + "\n";
}

std::string readme_md(const RunSettings& s, const std::vector<SeedResult>& seeds, const std::string& out_dir) {
    const RunOptions& r = s.run;
    const TrainConfig& t = s.cfg.train;
    const bool ttt = r.ttt;
    const SeedResult& first = seeds.front();
    const auto bpbs = each(seeds, [&](const SeedResult& x) { return x.score(ttt).bpb; });
    const long long total = (long long)max_of(each(seeds, [](const SeedResult& x) { return x.bytes.total_bytes; }));
    const long long model = (long long)max_of(each(seeds, [](const SeedResult& x) { return x.bytes.model_bytes; }));

    std::string md = "# " + r.name + "\n\n" + (r.blurb.empty() ? summary_blurb(s) : r.blurb) + "\n\n";
    const std::string how = ttt ? "score-first TTT" : format("sliding window, stride %d", r.stride);
    if (seeds.size() == 1)
        md += format("**val_bpb %.4f** (%s, seed %llu)", bpbs[0], how.c_str(), (unsigned long long)first.seed);
    else
        md += format("**val_bpb %.4f ± %.4f** (%s; mean ± std of %zu seeds: %s)", mean(bpbs), stdev(bpbs), how.c_str(),
                     seeds.size(), r.seeds.c_str());
    md += format(" | **%s bytes** (model %s + code %s%s) | %s\n\n", grouped(total).c_str(), grouped(model).c_str(),
                 grouped(first.bytes.code_bytes).c_str(), seeds.size() > 1 ? ", largest seed" : "", first.train.device.c_str());

    md += "| seed | steps | train s | tokens/s | pre-quant bpb | post-quant bpb | sliding bpb | TTT bpb | post-quant eval s | sliding eval s | TTT eval s | model bytes | total bytes |\n";
    md += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    auto row = [&](const std::string& label, const std::vector<SeedResult>& xs) {
        auto m = [&](auto f) { return mean(each(xs, f)); };
        const std::string ttt_bpb = ttt ? format("%.4f", m([](const SeedResult& x) { return x.ttt.bpb; })) : "-";
        const std::string ttt_s = ttt ? format("%.1f", m([](const SeedResult& x) { return x.ttt_seconds; })) : "-";
        const std::string model_b = grouped(std::llround(m([](const SeedResult& x) { return x.bytes.model_bytes; })));
        const std::string total_b = grouped(std::llround(m([](const SeedResult& x) { return x.bytes.total_bytes; })));
        md += format("| %s | %.0f | %.1f | %.0f | %.4f | %.4f | %.4f | %s | %.1f | %.1f | %s | %s | %s |\n", label.c_str(),
                     m([](const SeedResult& x) { return x.train.steps; }),
                     m([](const SeedResult& x) { return x.train.train_seconds; }),
                     m([](const SeedResult& x) { return x.tokens_per_second; }),
                     m([](const SeedResult& x) { return x.pre_quant.bpb; }),
                     m([](const SeedResult& x) { return x.post_quant.bpb; }),
                     m([](const SeedResult& x) { return x.sliding.bpb; }), ttt_bpb.c_str(),
                     m([](const SeedResult& x) { return x.quant_seconds; }),
                     m([](const SeedResult& x) { return x.sliding_seconds; }), ttt_s.c_str(), model_b.c_str(),
                     total_b.c_str());
    };
    for (const SeedResult& x : seeds) row(std::to_string(x.seed), {x});
    if (seeds.size() > 1) {
        row("**mean**", seeds);
        auto sd = [&](auto f) { return format("%.4f", stdev(each(seeds, f))); };
        md += "| **std** | | | | " + sd([](const SeedResult& x) { return x.pre_quant.bpb; }) + " | " +
              sd([](const SeedResult& x) { return x.post_quant.bpb; }) + " | " +
              sd([](const SeedResult& x) { return x.sliding.bpb; }) + " | " +
              (ttt ? sd([](const SeedResult& x) { return x.ttt.bpb; }) : std::string("-")) + " | | | | | |\n";
    }

    const std::string val_part = t.val_tokens > 0 ? format("the first %s val tokens", grouped(t.val_tokens).c_str()) : "all val tokens";
    const std::string eval_part = r.eval_tokens > 0 ? format("the first %s val targets", grouped(r.eval_tokens).c_str()) : "all val targets";
    md += "\n- **pre-quant**: the " + r.weights + " weights at the end of training, windows of " +
          std::to_string(s.cfg.model.seq_len) + " tokens side by side over " + val_part +
          " (train's final validation); **post-quant**: the artifact alone, the same windows.\n";
    md += format("- **sliding**: the artifact, windows of %d at stride %d over %s.", s.cfg.model.seq_len, r.stride, eval_part.c_str());
    if (ttt)
        md += format(" **TTT**: the same windows with legal score-first test-time training (each chunk of %ld targets is "
                     "scored, then trained on: SGD lr %g cosine across chunks, momentum %g, epochs %d, clip %g, %d "
                     "sequences a step); the score.",
                     r.ttt_opt.chunk_tokens, double(r.ttt_opt.lr), double(r.ttt_opt.momentum), r.ttt_opt.epochs,
                     double(r.ttt_opt.clip), r.ttt_opt.batch_seqs);
    md += "\n- **bytes**: model = the artifact file; code = `build/code.tar.xz`, the sources that build `pgolf`, "
          "tarred and xz-compressed; the budget is their sum, at most 16,000,000.\n";
    md += format("- **train s**: training seconds (validation and checkpoint writes excluded), capped at %.0f s; "
                 "tokens/s = steps x %ld tokens / train s.\n",
                 t.max_wallclock_s, t.batch_tokens);
    md += "- **device**: " + first.train.device + "; **data**: `" + first.train.data + "` (" + first.train.data_summary + ").\n";

    // The folder is written wherever --out says (often a scratch disk) but is read from records/.
    std::string name = out_dir;
    while (name.size() > 1 && name.back() == '/') name.pop_back();
    name = std::filesystem::path(name).filename().string();
    md += "\n## Reproduce\n\nFrom the repository root, with this folder committed as `records/" + name + "`:\n\n```sh\nmake\n" +
          shell_command("build/pgolf", {"run", "--config", "records/" + name + "/config.toml", "--out", "NEW_FOLDER"}) +
          "\n```\n\n`config.toml` holds every setting of this run (preset, config file and flags, resolved). The "
          "same command with this folder as `--out` resumes a run that was stopped or killed and leaves a finished "
          "one as it is.\n";
    md += "\n## Training curve\n\n![train loss and val_bpb against training seconds](curve.svg)\n";
    md += "\n## Files\n\n- `config.toml`, `submission.json`, `curve.svg`\n";
    for (const SeedResult& x : seeds)
        md += "- `" + x.dir + "/train.log`: `pgolf train`'s log (appended to on resume); `" + x.dir + "/pack.log`, `size.log`, " +
              "`eval_quant.log`, `eval_sliding.log`" + (ttt ? ", `eval_ttt.log`" : "") + ": each later stage's output; `" +
              x.dir + "/model.art`, `checkpoint.bin`: the artifact and the last checkpoint (not committed)\n";
    return md;
}

std::string curve_svg(const std::vector<SeedResult>& seeds) {
    constexpr double W = 760, H = 400, L = 70, R = 70, T = 40, B = 50;
    static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
    struct Axis {
        double lo = 0, hi = 1, step = 1;
    };
    // Ticks at 1, 2, 2.5 or 5 times a power of ten, about five of them, covering [lo, hi].
    auto nice = [](double lo, double hi, bool from_zero) {
        if (from_zero) lo = 0;
        if (hi - lo < 1e-9) lo -= 0.5, hi += 0.5;
        const double raw = (hi - lo) / 5, mag = std::pow(10.0, std::floor(std::log10(raw)));
        double step = 10 * mag;
        for (double f : {1.0, 2.0, 2.5, 5.0})
            if (f * mag >= raw) {
                step = f * mag;
                break;
            }
        return Axis{std::floor(lo / step) * step, std::ceil(hi / step) * step, step};
    };
    std::vector<std::vector<CurvePoint>> val(seeds.size());
    double xmax = 0, l_lo = 1e30, l_hi = -1e30, v_lo = 1e30, v_hi = -1e30;
    for (size_t i = 0; i < seeds.size(); ++i) {
        const TrainLog& t = seeds[i].train;
        val[i] = t.val_bpb;
        if (val[i].empty() || val[i].back().step != t.steps) val[i].push_back({t.steps, t.train_seconds, t.final_scores.at("raw").bpb});
        for (const CurvePoint& p : t.loss) xmax = std::max(xmax, p.seconds), l_lo = std::min(l_lo, p.value), l_hi = std::max(l_hi, p.value);
        for (const CurvePoint& p : val[i]) xmax = std::max(xmax, p.seconds), v_lo = std::min(v_lo, p.value), v_hi = std::max(v_hi, p.value);
    }
    if (l_lo > l_hi) l_lo = v_lo, l_hi = v_hi;
    const Axis ax = nice(0, xmax, true), ay = nice(l_lo, l_hi, false), av = nice(v_lo, v_hi, false);
    auto X = [&](double v) { return L + (W - L - R) * (v - ax.lo) / (ax.hi - ax.lo); };
    auto Y = [&](const Axis& a, double v) { return H - B - (H - T - B) * (v - a.lo) / (a.hi - a.lo); };

    std::string s = format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
                           "font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                           W, H, W, H);
    s += format("<text x=\"%.0f\" y=\"22\" text-anchor=\"middle\" font-size=\"13\">train loss (solid) and val_bpb (dashed, dots) "
                "against training seconds</text>\n", W / 2);
    for (double v = ax.lo; v <= ax.hi + ax.step / 2; v += ax.step)
        s += format("<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.0f\" "
                    "text-anchor=\"middle\">%g</text>\n", X(v), T, X(v), H - B, X(v), H - B + 16, v);
    for (double v = ay.lo; v <= ay.hi + ay.step / 2; v += ay.step)
        s += format("<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.0f\" y=\"%.1f\" "
                    "text-anchor=\"end\">%g</text>\n", L, Y(ay, v), W - R, Y(ay, v), L - 6, Y(ay, v) + 4, v);
    for (double v = av.lo; v <= av.hi + av.step / 2; v += av.step)
        s += format("<text x=\"%.0f\" y=\"%.1f\">%g</text>\n", W - R + 6, Y(av, v) + 4, v);
    s += format("<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", L, T, W - L - R, H - T - B);
    s += format("<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">training seconds</text>\n", (L + W - R) / 2, H - 12);
    s += format("<text transform=\"translate(18 %.0f) rotate(-90)\" text-anchor=\"middle\">train loss (nats/token)</text>\n", (T + H - B) / 2);
    s += format("<text transform=\"translate(%.0f %.0f) rotate(90)\" text-anchor=\"middle\">val_bpb</text>\n", W - 16, (T + H - B) / 2);
    for (size_t i = 0; i < seeds.size(); ++i) {
        const char* c = colors[i % 6];
        std::string pts;
        for (const CurvePoint& p : seeds[i].train.loss) pts += format("%.1f,%.1f ", X(p.seconds), Y(ay, p.value));
        s += format("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%s\"/>\n", c, pts.c_str());
        pts.clear();
        for (const CurvePoint& p : val[i]) pts += format("%.1f,%.1f ", X(p.seconds), Y(av, p.value));
        s += format("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" stroke-dasharray=\"5 3\" points=\"%s\"/>\n", c, pts.c_str());
        for (const CurvePoint& p : val[i])
            s += format("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", X(p.seconds), Y(av, p.value), c);
        const double ly = T + 16 + 16 * double(i);
        s += format("<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" stroke-width=\"2\"/><text x=\"%.0f\" "
                    "y=\"%.0f\">seed %llu</text>\n", W - R - 110, ly, W - R - 86, ly, c, W - R - 80, ly + 4,
                    (unsigned long long)seeds[i].seed);
    }
    return s + "</svg>\n";
}

}  // namespace pg
