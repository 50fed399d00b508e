// The CPU Trainer: RefModel<float> (model/model_ref.h) with Optimizer and WeightAverage
// (model/optim.h), all over host vectors.
#include <algorithm>

#include "common/check.h"
#include "model/model_ref.h"
#include "quant/export.h"
#include "train/trainer.h"

namespace pg {

namespace {

class CpuTrainer final : public Trainer {
public:
    CpuTrainer(const Config& cfg, int micro)
        : cfg_(cfg),
          micro_(micro),
          model_(cfg.model),
          master_(model_.params),
          grads_(model_.layout().total),
          opt_(model_.layout(), cfg.train),
          avg_(model_.layout().total, cfg.train) {}

    const ParamLayout& layout() const override { return model_.layout(); }
    int micro_batch() const override { return micro_; }
    std::string describe() const override {
        return format("CPU reference, %d sequences per forward", micro_);
    }
    std::string memory_use() const override { return {}; }

    void set_master(const std::vector<float>& w) override {
        if (w.size() != master_.size())
            fail("trainer: %zu parameters given, the model has %zu", w.size(), master_.size());
        master_ = w;
    }
    std::vector<float> master() const override { return master_; }

    double forward_backward(const NextBatch& next, int grad_accum, bool recur, bool qat) override {
        if (qat)
            fake_quantize_model(model_.layout(), cfg_.quant, master_.data(), model_.params.data());
        else
            model_.params = master_;
        model_.zero_grad();
        double loss = 0;
        for (int a = 0; a < grad_accum; ++a) {
            const Batch b = next();
            loss += model_.forward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len, recur);
            model_.backward();
        }
        for (size_t i = 0; i < grads_.size(); ++i) grads_[i] = model_.grads[i] / grad_accum;
        return loss / grad_accum;
    }

    float optimizer_step(float lr_scale, int step) override {
        return opt_.step(master_.data(), grads_.data(), lr_scale, step);
    }
    void update_average(int step, bool swa_active) override { avg_.update(master_.data(), step, swa_active); }

    OptimizerState optimizer_state() override { return opt_.state(); }
    void set_optimizer_state(const OptimizerState& s) override {
        const OptimizerState& have = opt_.state();
        if (s.muon_m.size() != have.muon_m.size() || s.adam_m.size() != have.adam_m.size() ||
            s.adam_v.size() != have.adam_v.size())
            fail("trainer: the optimizer state given does not fit this model");
        opt_.state() = s;
    }
    AverageState average_state() const override { return avg_.state(); }
    void set_average_state(const AverageState& s) override {
        if (s.ema.size() != avg_.state().ema.size() || s.swa.size() != avg_.state().swa.size())
            fail("trainer: the weight-average state given does not fit this model");
        avg_.state() = s;
    }

protected:
    void load_weights(Weights w) override {
        const float* src = w == Weights::Ema ? avg_.ema() : w == Weights::Swa ? avg_.swa() : master_.data();
        PG_CHECK(src != nullptr);
        std::copy(src, src + master_.size(), model_.params.begin());
    }
    ScoreFn score(bool recur) override {
        return [this, recur](const int32_t* in, const int32_t* tg, int rows, int seq, float* nll) {
            model_.forward(in, tg, rows, seq, recur, nll);
        };
    }

private:
    Config cfg_;
    int micro_;
    RefModel<float> model_;  // model_.params: what the forward reads (master, fake-quantized or an average)
    std::vector<float> master_, grads_;
    Optimizer opt_;
    WeightAverage avg_;
};

}  // namespace

std::unique_ptr<Trainer> make_cpu_trainer(const Config& cfg, int seqs) {
    const int micro = cfg.train.micro_batch_seqs > 0 ? cfg.train.micro_batch_seqs : seqs;
    return std::make_unique<CpuTrainer>(cfg, micro);
}

}  // namespace pg
