// Every knob of pgolf in one struct. Defaults describe the record architecture; presets
// ("tiny" for CPU runs, "record" for the challenge shape) are applied first and then any
// explicit flag wins. Each architectural feature is a switch so that an ablation is a flag.
#pragma once
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace CLI {
class App;
}

namespace pg {

struct ModelConfig {
    int vocab_size = 8192;
    int model_dim = 512;
    int n_layers = 10;  // physical blocks
    int n_heads = 8;
    int n_kv_heads = 4;
    int head_dim = 64;
    int mlp_mult = 4;  // hidden = mlp_mult * model_dim
    bool swiglu = false;  // false: LeakyReLU(slope)^2 MLP
    float leaky_slope = 0.5f;
    int rope_dims = 16;  // partial RoPE: the first rope_dims of each head are rotated
    float rope_base = 10000.f;
    bool qk_norm = true;
    float qk_gain_init = 5.25f;  // learnable per-head gain on q after QK-norm
    float logit_softcap = 30.f;  // 0 = off
    int bigram_buckets = 10240;  // BigramHash table rows; 0 = off
    int bigram_dim = 128;
    bool smear_gate = true;
    bool value_residual = true;  // blend each layer's V with the first layer's V
    int xsa_last = 4;            // XSA on the last K physical layers; 0 = off
    bool ln_scale = true;        // pre-norm outputs scaled by 1/sqrt(layer+1)
    bool unet_skips = true;      // encoder->decoder skips with sigmoid gates
    int recur_start = 3;         // physical layers [recur_start, recur_end] re-run
    int recur_end = 5;
    int recur_repeats = 2;       // times the span runs in total; 1 = no recurrence
    float recur_from = 0.35f;    // fraction of training after which recurrence is on
    int parallel_from = 7;       // physical layers >= this use parallel residuals
    bool ortho_init = true;
    float embed_init_std = 0.005f;
    int seq_len = 2048;

    int hidden_dim() const { return mlp_mult * model_dim; }
    // Order in which physical blocks run; recurrence repeats [recur_start, recur_end].
    std::vector<int> layer_schedule(bool recur_active) const;
    int max_skips() const;  // skip-weight rows needed by the longest schedule
    void validate() const;  // pg::fail on inconsistent settings
};

struct TrainConfig {
    std::string data_dir;   // empty: the embedded sample (data/sample)
    std::string tokenizer;  // empty: <data_dir>/tokenizer.model
    std::string train_pattern = "fineweb_train_*.bin";
    std::string val_pattern = "fineweb_val_*.bin";
    std::string device = "auto";  // auto | cpu | cuda
    int gpus = 0;                 // 0 = all visible
    long batch_tokens = 786432;   // global tokens per optimizer step
    int micro_batch_seqs = 0;     // sequences per forward pass per GPU; 0 = pick to fit
    int iterations = 20000;
    double max_wallclock_s = 600;  // 0 = no cap
    int warmup_steps = 20;
    float warmdown_frac = 0.72f;  // final fraction of training with LR decaying linearly
    float lr_floor = 0.0f;        // LR multiplier reached at the end of warmdown
    float matrix_lr = 0.022f;     // Muon
    float embed_lr = 0.03f;       // AdamW, tied embedding / bigram table
    float scalar_lr = 0.02f;      // AdamW, gains, gates, norms scales
    float muon_momentum = 0.99f;
    float muon_momentum_start = 0.92f;
    int muon_momentum_warmup = 1500;
    int ns_steps = 5;
    bool muon_row_norm = false;   // normalise gradient rows before Newton-Schulz (MuonEq-R)
    float muon_wd = 0.095f;
    float adam_beta1 = 0.9f, adam_beta2 = 0.95f, adam_eps = 1e-8f;
    float adam_wd = 0.0f;
    float grad_clip = 0.3f;       // global-norm clip; 0 = off
    float ema_decay = 0.997f;     // 0 = off
    float swa_from = 0.0f;        // fraction of training after which SWA averages; 0 = off
    int swa_every = 50;
    float qat_from = 0.85f;       // fraction of training after which STE QAT is on; 1 = off
    int log_every = 10;
    int val_every = 0;            // steps between val evaluations; 0 = only at the end
    long val_tokens = 0;          // 0 = the whole val split
    std::string out_dir = "runs/default";
    int checkpoint_every = 0;     // steps; 0 = only at the end
    bool resume = false;
    int stop_after = 0;           // stop after this step as if killed (schedule unchanged); 0 = off
    uint64_t seed = 42;
};

// How weights are quantized, both under STE QAT during training and at export, so the two
// agree exactly (the same fake_quantize).
struct QuantConfig {
    int attn_bits = 6, mlp_bits = 5, embed_bits = 8;
    // SDClip: row scale = clip * rms(row) / qmax. 12.85 / 31 for attention and 20 / 127 for
    // embeddings follow the record; 6.5 / 15 gives the MLP a similar step.
    float attn_clip = 12.85f, mlp_clip = 6.5f, embed_clip = 20.0f;
    std::string vector_dtype = "f16";  // gains, gates, mixes: f16 | bf16 | f32
    int calib_seqs = 32;               // training sequences for GPTQ Hessians; 0 = round-to-nearest
    int gptq_block = 128;
    float gptq_damp = 0.01f;
    bool gptq_act_order = true;
    std::string codec = "lzma";        // lzma | zlib
};

struct Config {
    ModelConfig model;
    TrainConfig train;
    QuantConfig quant;
};

// Presets: "tiny" (CPU-sized, the default of `pgolf train`) and "record".
void apply_preset(Config& c, const std::string& name);

// One table per struct drives the CLI flags and the key=value text stored in checkpoints
// and artifacts, so a field added once is both a flag and persisted.
struct Field {
    const char* name;  // flag name without "--"; bools also get "--no-<name>"
    std::variant<int*, long*, float*, double*, bool*, std::string*, uint64_t*> ptr;
    const char* help;
};
std::vector<Field> fields(ModelConfig& m);
std::vector<Field> fields(TrainConfig& t);
std::vector<Field> fields(QuantConfig& q);
void add_flags(CLI::App& app, const std::vector<Field>& fs);
std::string to_text(const std::vector<Field>& fs);
// After app parsed its flags into `parsed`: copies into `target` (fields of the same struct
// type) the values whose flags were given explicitly. Lets a command start from a config
// stored in a file and change only what the user asked for.
void overlay_given(const CLI::App& app, const std::vector<Field>& parsed, const std::vector<Field>& target);
// Parses key=value lines written by to_text; every field must appear once; unknown keys and
// bad values fail naming `source`.
void from_text(const std::vector<Field>& fs, const std::string& text, const std::string& source);

}  // namespace pg
