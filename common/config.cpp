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
        t.val_every = 100;
        t.val_tokens = 65536;
        t.out_dir = "runs/tiny";
    } else {
        fail("unknown preset '%s' (known: tiny, record)", name.c_str());
    }
    c.train.data_dir = keep_data;
}

void add_model_flags(CLI::App& app, ModelConfig& m) {
    app.add_option("--vocab-size", m.vocab_size, "vocabulary size (must match the tokenizer)");
    app.add_option("--model-dim", m.model_dim, "residual width");
    app.add_option("--n-layers", m.n_layers, "physical transformer blocks");
    app.add_option("--n-heads", m.n_heads, "query heads");
    app.add_option("--n-kv-heads", m.n_kv_heads, "key/value heads (GQA)");
    app.add_option("--head-dim", m.head_dim, "dimension per head");
    app.add_option("--mlp-mult", m.mlp_mult, "MLP hidden = mlp_mult * model_dim");
    app.add_flag("--swiglu,!--no-swiglu", m.swiglu, "SwiGLU MLP instead of LeakyReLU^2");
    app.add_option("--leaky-slope", m.leaky_slope, "negative slope of LeakyReLU^2");
    app.add_option("--rope-dims", m.rope_dims, "rotated dims per head (partial RoPE)");
    app.add_option("--rope-base", m.rope_base, "RoPE base");
    app.add_flag("--qk-norm,!--no-qk-norm", m.qk_norm, "RMS-normalise q and k per head");
    app.add_option("--qk-gain-init", m.qk_gain_init, "initial per-head q gain");
    app.add_option("--logit-softcap", m.logit_softcap, "tanh softcap on logits (0 = off)");
    app.add_option("--bigram-buckets", m.bigram_buckets, "BigramHash rows (0 = off)");
    app.add_option("--bigram-dim", m.bigram_dim, "BigramHash embedding dim");
    app.add_flag("--smear-gate,!--no-smear-gate", m.smear_gate, "SmearGate on the input embedding");
    app.add_flag("--value-residual,!--no-value-residual", m.value_residual, "blend V with the first layer's V");
    app.add_option("--xsa-last", m.xsa_last, "XSA on the last K physical layers (0 = off)");
    app.add_flag("--ln-scale,!--no-ln-scale", m.ln_scale, "scale pre-norm outputs by 1/sqrt(layer+1)");
    app.add_flag("--unet-skips,!--no-unet-skips", m.unet_skips, "U-Net skips with sigmoid gates");
    app.add_option("--recur-start", m.recur_start, "first physical layer of the recurrent span");
    app.add_option("--recur-end", m.recur_end, "last physical layer of the recurrent span");
    app.add_option("--recur-repeats", m.recur_repeats, "times the span runs (1 = off)");
    app.add_option("--recur-from", m.recur_from, "fraction of training after which recurrence is on");
    app.add_option("--parallel-from", m.parallel_from, "first physical layer with parallel residuals");
    app.add_flag("--ortho-init,!--no-ortho-init", m.ortho_init, "orthogonal init of matrices");
    app.add_option("--embed-init-std", m.embed_init_std, "std of the embedding init");
    app.add_option("--seq-len", m.seq_len, "training sequence length");
}

void add_train_flags(CLI::App& app, TrainConfig& t) {
    app.add_option("--data", t.data_dir, "directory with fineweb_{train,val}_*.bin shards");
    app.add_option("--tokenizer", t.tokenizer, "SentencePiece model (default: <data>/tokenizer.model)");
    app.add_option("--train-pattern", t.train_pattern, "glob of training shards");
    app.add_option("--val-pattern", t.val_pattern, "glob of validation shards");
    app.add_option("--device", t.device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    app.add_option("--gpus", t.gpus, "GPUs to use (0 = all visible)");
    app.add_option("--batch-tokens", t.batch_tokens, "global tokens per optimizer step");
    app.add_option("--micro-batch-seqs", t.micro_batch_seqs, "sequences per forward pass per GPU (0 = auto)");
    app.add_option("--iterations", t.iterations, "optimizer steps");
    app.add_option("--max-wallclock", t.max_wallclock_s, "training time cap in seconds (0 = none)");
    app.add_option("--warmup-steps", t.warmup_steps, "linear LR warmup steps");
    app.add_option("--warmdown-frac", t.warmdown_frac, "final fraction of training with linear LR decay");
    app.add_option("--lr-floor", t.lr_floor, "LR multiplier at the end of warmdown");
    app.add_option("--matrix-lr", t.matrix_lr, "Muon learning rate");
    app.add_option("--embed-lr", t.embed_lr, "AdamW learning rate of embeddings");
    app.add_option("--scalar-lr", t.scalar_lr, "AdamW learning rate of vectors and scalars");
    app.add_option("--muon-momentum", t.muon_momentum, "Muon momentum after warmup");
    app.add_option("--muon-momentum-start", t.muon_momentum_start, "Muon momentum at step 0");
    app.add_option("--muon-momentum-warmup", t.muon_momentum_warmup, "steps of momentum warmup");
    app.add_option("--ns-steps", t.ns_steps, "Newton-Schulz iterations");
    app.add_flag("--muon-row-norm,!--no-muon-row-norm", t.muon_row_norm, "row-normalise before Newton-Schulz");
    app.add_option("--muon-wd", t.muon_wd, "decoupled weight decay on Muon matrices");
    app.add_option("--adam-beta1", t.adam_beta1);
    app.add_option("--adam-beta2", t.adam_beta2);
    app.add_option("--adam-eps", t.adam_eps);
    app.add_option("--adam-wd", t.adam_wd, "decoupled weight decay on AdamW params");
    app.add_option("--grad-clip", t.grad_clip, "global gradient-norm clip (0 = off)");
    app.add_option("--ema-decay", t.ema_decay, "EMA of weights (0 = off)");
    app.add_option("--swa-from", t.swa_from, "fraction of training after which SWA averages (0 = off)");
    app.add_option("--swa-every", t.swa_every, "steps between SWA snapshots");
    app.add_option("--qat-from", t.qat_from, "fraction of training after which STE QAT is on (1 = off)");
    app.add_option("--qat-bits-mlp", t.qat_bits_mlp);
    app.add_option("--qat-bits-attn", t.qat_bits_attn);
    app.add_option("--log-every", t.log_every);
    app.add_option("--val-every", t.val_every, "steps between val evaluations (0 = end only)");
    app.add_option("--val-tokens", t.val_tokens, "val tokens to evaluate during training (0 = all)");
    app.add_option("--out", t.out_dir, "run directory (log, checkpoints)");
    app.add_option("--checkpoint-every", t.checkpoint_every, "steps between checkpoints (0 = end only)");
    app.add_flag("--resume", t.resume, "resume from <out>/checkpoint.bin");
    app.add_option("--seed", t.seed);
}

}  // namespace pg
