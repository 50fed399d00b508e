#include "common/config.h"

#include <CLI/CLI.hpp>

#include "common/check.h"

namespace pg {

std::vector<int> ModelConfig::layer_schedule(bool recur_active) const {
    std::vector<int> s;
    for (int l = 0; l < n_layers; ++l) {
        s.push_back(l);
        if (recur_active && l == recur_end)
            for (int r = 1; r < recur_repeats; ++r)
                for (int j = recur_start; j <= recur_end; ++j) s.push_back(j);
    }
    return s;
}

int ModelConfig::max_skips() const {
    if (!unet_skips) return 0;
    return static_cast<int>(layer_schedule(recur_repeats > 1).size()) / 2;
}

void ModelConfig::validate() const {
    if (n_layers < 1 || model_dim < 1 || vocab_size < 2) fail("model: n_layers, model_dim and vocab_size must be positive");
    if (n_heads % n_kv_heads != 0) fail("model: n_heads (%d) must be a multiple of n_kv_heads (%d)", n_heads, n_kv_heads);
    if (rope_dims % 2 != 0 || rope_dims > head_dim) fail("model: rope_dims (%d) must be even and <= head_dim (%d)", rope_dims, head_dim);
    if (recur_repeats < 1) fail("model: recur_repeats must be >= 1");
    if (recur_repeats > 1 && (recur_start < 0 || recur_end >= n_layers || recur_start > recur_end))
        fail("model: recurrence span [%d, %d] is outside 0..%d", recur_start, recur_end, n_layers - 1);
    if (xsa_last < 0 || xsa_last > n_layers) fail("model: xsa_last (%d) must be in 0..n_layers", xsa_last);
    if (bigram_buckets < 0 || (bigram_buckets > 0 && bigram_dim < 1)) fail("model: bad bigram table %dx%d", bigram_buckets, bigram_dim);
    if (vocab_size > 65536) fail("model: vocab_size %d does not fit the uint16 shard format", vocab_size);
    if (seq_len < 2) fail("model: seq_len must be >= 2");
}

void apply_preset(Config& c, const std::string& name) {
    std::string keep_data = c.train.data_dir;
    if (name == "record") {
        c = Config{};
    } else if (name == "tiny") {
        c = Config{};
        ModelConfig& m = c.model;
        m.vocab_size = 1024;
        m.model_dim = 128;
        m.n_layers = 4;
        m.n_heads = 4;
        m.n_kv_heads = 2;
        m.head_dim = 32;
        m.rope_dims = 8;
        m.bigram_buckets = 2048;
        m.bigram_dim = 32;
        m.xsa_last = 1;
        m.recur_start = 1;
        m.recur_end = 2;
        m.parallel_from = 3;
        m.seq_len = 128;
        TrainConfig& t = c.train;
        t.batch_tokens = 4096;
        t.iterations = 400;
        t.max_wallclock_s = 150;
        t.warmup_steps = 10;
        t.muon_momentum_warmup = 100;
        t.matrix_lr = 0.04f;
        t.embed_lr = 0.05f;
        t.scalar_lr = 0.04f;
        t.ema_decay = 0.95f;  // a run of ~150 steps: an EMA horizon of ~20 steps
        t.val_every = 100;
        t.val_tokens = 65536;
        t.out_dir = "runs/tiny";
    } else {
        fail("unknown preset '%s' (known: tiny, record)", name.c_str());
    }
    c.train.data_dir = keep_data;
}

std::vector<Field> fields(ModelConfig& m) {
    return {
        {"vocab-size", &m.vocab_size, "vocabulary size (must match the tokenizer)"},
        {"model-dim", &m.model_dim, "residual width"},
        {"n-layers", &m.n_layers, "physical transformer blocks"},
        {"n-heads", &m.n_heads, "query heads"},
        {"n-kv-heads", &m.n_kv_heads, "key/value heads (GQA)"},
        {"head-dim", &m.head_dim, "dimension per head"},
        {"mlp-mult", &m.mlp_mult, "MLP hidden = mlp_mult * model_dim"},
        {"swiglu", &m.swiglu, "SwiGLU MLP instead of LeakyReLU^2"},
        {"leaky-slope", &m.leaky_slope, "negative slope of LeakyReLU^2"},
        {"rope-dims", &m.rope_dims, "rotated dims per head (partial RoPE)"},
        {"rope-base", &m.rope_base, "RoPE base"},
        {"qk-norm", &m.qk_norm, "RMS-normalise q and k per head"},
        {"qk-gain-init", &m.qk_gain_init, "initial per-head q gain"},
        {"logit-softcap", &m.logit_softcap, "tanh softcap on logits (0 = off)"},
        {"bigram-buckets", &m.bigram_buckets, "BigramHash rows (0 = off)"},
        {"bigram-dim", &m.bigram_dim, "BigramHash embedding dim"},
        {"smear-gate", &m.smear_gate, "SmearGate on the input embedding"},
        {"value-residual", &m.value_residual, "blend V with the first layer's V"},
        {"xsa-last", &m.xsa_last, "XSA on the last K physical layers (0 = off)"},
        {"ln-scale", &m.ln_scale, "scale pre-norm outputs by 1/sqrt(layer+1)"},
        {"unet-skips", &m.unet_skips, "U-Net skips with sigmoid gates"},
        {"recur-start", &m.recur_start, "first physical layer of the recurrent span"},
        {"recur-end", &m.recur_end, "last physical layer of the recurrent span"},
        {"recur-repeats", &m.recur_repeats, "times the span runs (1 = off)"},
        {"recur-from", &m.recur_from, "fraction of training after which recurrence is on"},
        {"parallel-from", &m.parallel_from, "first physical layer with parallel residuals"},
        {"ortho-init", &m.ortho_init, "orthogonal init of matrices"},
        {"embed-init-std", &m.embed_init_std, "std of the embedding init"},
        {"seq-len", &m.seq_len, "training sequence length"},
    };
}

std::vector<Field> fields(TrainConfig& t) {
    return {
        {"data", &t.data_dir, "directory with fineweb_{train,val}_*.bin shards"},
        {"tokenizer", &t.tokenizer, "SentencePiece model (default: <data>/tokenizer.model)"},
        {"train-pattern", &t.train_pattern, "glob of training shards"},
        {"val-pattern", &t.val_pattern, "glob of validation shards"},
        {"device", &t.device, "auto | cpu | cuda"},
        {"gpus", &t.gpus, "GPUs to use (0 = all visible)"},
        {"batch-tokens", &t.batch_tokens, "global tokens per optimizer step"},
        {"micro-batch-seqs", &t.micro_batch_seqs, "sequences per forward pass per GPU (0 = auto)"},
        {"iterations", &t.iterations, "optimizer steps"},
        {"max-wallclock", &t.max_wallclock_s, "training time cap in seconds (0 = none)"},
        {"warmup-steps", &t.warmup_steps, "linear LR warmup steps"},
        {"warmdown-frac", &t.warmdown_frac, "final fraction of training with linear LR decay"},
        {"lr-floor", &t.lr_floor, "LR multiplier at the end of warmdown"},
        {"matrix-lr", &t.matrix_lr, "Muon learning rate"},
        {"embed-lr", &t.embed_lr, "AdamW learning rate of embeddings"},
        {"scalar-lr", &t.scalar_lr, "AdamW learning rate of vectors and scalars"},
        {"muon-momentum", &t.muon_momentum, "Muon momentum after warmup"},
        {"muon-momentum-start", &t.muon_momentum_start, "Muon momentum at step 0"},
        {"muon-momentum-warmup", &t.muon_momentum_warmup, "steps of momentum warmup"},
        {"ns-steps", &t.ns_steps, "Newton-Schulz iterations"},
        {"muon-row-norm", &t.muon_row_norm, "row-normalise before Newton-Schulz"},
        {"muon-wd", &t.muon_wd, "decoupled weight decay on Muon matrices"},
        {"adam-beta1", &t.adam_beta1, "AdamW beta1"},
        {"adam-beta2", &t.adam_beta2, "AdamW beta2"},
        {"adam-eps", &t.adam_eps, "AdamW epsilon"},
        {"adam-wd", &t.adam_wd, "decoupled weight decay on AdamW params"},
        {"grad-clip", &t.grad_clip, "global gradient-norm clip (0 = off)"},
        {"ema-decay", &t.ema_decay, "EMA of weights (0 = off)"},
        {"swa-from", &t.swa_from, "fraction of training after which SWA averages (0 = off)"},
        {"swa-every", &t.swa_every, "steps between SWA snapshots"},
        {"qat-from", &t.qat_from, "fraction of training after which STE QAT is on (1 = off)"},
        {"log-every", &t.log_every, "steps between log lines"},
        {"val-every", &t.val_every, "steps between val evaluations (0 = end only)"},
        {"val-tokens", &t.val_tokens, "val tokens to evaluate during training (0 = all)"},
        {"out", &t.out_dir, "run directory (log, checkpoints)"},
        {"checkpoint-every", &t.checkpoint_every, "steps between checkpoints (0 = end only)"},
        {"resume", &t.resume, "resume from <out>/checkpoint.bin"},
        {"stop-after", &t.stop_after, "stop after this step, as if killed, keeping the full run's schedule (0 = off)"},
        {"seed", &t.seed, "seed of init and data order"},
    };
}

std::vector<Field> fields(QuantConfig& q) {
    return {
        {"attn-bits", &q.attn_bits, "bits of attention matrices (QAT and export)"},
        {"mlp-bits", &q.mlp_bits, "bits of MLP matrices (QAT and export)"},
        {"embed-bits", &q.embed_bits, "bits of embedding tables"},
        {"attn-clip", &q.attn_clip, "SDClip k of attention matrices"},
        {"mlp-clip", &q.mlp_clip, "SDClip k of MLP matrices"},
        {"embed-clip", &q.embed_clip, "SDClip k of embedding tables"},
        {"vector-dtype", &q.vector_dtype, "storage of gains, gates and mixes: f16 | bf16 | f32"},
        {"calib-seqs", &q.calib_seqs, "training sequences for GPTQ Hessians (0 = round-to-nearest)"},
        {"gptq-block", &q.gptq_block, "GPTQ lazy-batch columns"},
        {"gptq-damp", &q.gptq_damp, "GPTQ damping, fraction of mean diag(H)"},
        {"gptq-act-order", &q.gptq_act_order, "GPTQ in decreasing diag(H) order"},
        {"codec", &q.codec, "artifact compression: lzma | zlib"},
    };
}

void add_flags(CLI::App& app, const std::vector<Field>& fs) {
    for (const Field& f : fs) {
        const std::string name = std::string("--") + f.name;
        std::visit(
            [&](auto* p) {
                using V = std::remove_pointer_t<decltype(p)>;
                if constexpr (std::is_same_v<V, bool>)
                    app.add_flag(name + ",!--no-" + f.name, *p, f.help);
                else
                    app.add_option(name, *p, f.help)->capture_default_str();
            },
            f.ptr);
    }
}

void overlay_given(const CLI::App& app, const std::vector<Field>& parsed, const std::vector<Field>& target) {
    for (size_t i = 0; i < parsed.size(); ++i) {
        const CLI::Option* o = app.get_option_no_throw(std::string("--") + parsed[i].name);
        if (!o || o->count() == 0) continue;
        std::visit(
            [&](auto* src) {
                using V = std::remove_pointer_t<decltype(src)>;
                *std::get<V*>(target[i].ptr) = *src;
            },
            parsed[i].ptr);
    }
}

std::string to_text(const std::vector<Field>& fs) {
    std::string s;
    for (const Field& f : fs)
        std::visit(
            [&](auto* p) {
                using V = std::remove_pointer_t<decltype(p)>;
                s += f.name;
                s += '=';
                if constexpr (std::is_same_v<V, bool>) s += *p ? "true" : "false";
                else if constexpr (std::is_same_v<V, std::string>) s += *p;
                else if constexpr (std::is_floating_point_v<V>) s += format("%.9g", double(*p));
                else s += std::to_string(*p);
                s += '\n';
            },
            f.ptr);
    return s;
}

void from_text(const std::vector<Field>& fs, const std::string& text, const std::string& source) {
    std::vector<bool> seen(fs.size(), false);
    size_t pos = 0;
    while (pos < text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(pos, end - pos);
        pos = end + 1;
        if (line.empty()) continue;
        const size_t eq = line.find('=');
        if (eq == std::string::npos) fail("%s: bad config line '%s'", source.c_str(), line.c_str());
        const std::string key = line.substr(0, eq), val = line.substr(eq + 1);
        const Field* f = nullptr;
        for (size_t i = 0; i < fs.size(); ++i)
            if (key == fs[i].name) {
                if (seen[i]) fail("%s: config key '%s' appears twice", source.c_str(), key.c_str());
                seen[i] = true;
                f = &fs[i];
            }
        if (!f) fail("%s: unknown config key '%s'", source.c_str(), key.c_str());
        try {
            std::visit(
                [&](auto* p) {
                    using V = std::remove_pointer_t<decltype(p)>;
                    if constexpr (std::is_same_v<V, bool>) {
                        if (val != "true" && val != "false") throw std::invalid_argument(val);
                        *p = val == "true";
                    } else if constexpr (std::is_same_v<V, std::string>) *p = val;
                    else if constexpr (std::is_floating_point_v<V>) *p = V(std::stod(val));
                    else if constexpr (std::is_signed_v<V>) *p = V(std::stoll(val));
                    else *p = V(std::stoull(val));
                },
                f->ptr);
        } catch (const std::exception&) {
            fail("%s: bad value '%s' for config key '%s'", source.c_str(), val.c_str(), key.c_str());
        }
    }
    for (size_t i = 0; i < fs.size(); ++i)
        if (!seen[i]) fail("%s: config lacks '%s'", source.c_str(), fs[i].name);
}

}  // namespace pg
