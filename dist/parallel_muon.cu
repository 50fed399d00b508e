#include "dist/parallel_muon.h"

#include <algorithm>

namespace pg {

namespace {

// The layout's order that the padded arena relies on: banks back to back from 0, then AdamW
// parameters only. Returns where the banks end.
size_t check_layout(const ParamLayout& L) {
    size_t end = 0;
    for (const Bank& b : L.banks) {
        if (b.offset != end) fail("Parallel Muon: bank '%s' does not follow the previous one in the flat buffer", b.name.c_str());
        end += size_t(b.count) * b.rows * b.cols;
    }
    for (const ParamSpec& p : L.params)
        if ((p.kind == ParamKind::Matrix) != (p.offset < end))
            fail("Parallel Muon: parameter '%s' breaks the banks-first layout", p.name.c_str());
    return end;
}

}  // namespace

ParallelMuon::ParallelMuon(const ParamLayout& layout, const TrainConfig& cfg, cudaStream_t stream, Comm& comm)
    : layout_(layout),
      comm_(comm),
      stream_(stream),
      opt_(layout, cfg, stream),
      slices_(muon_partition(layout, comm.rank(), comm.world())),
      muon_end_(check_layout(layout)),
      reduced_(layout.banks.size() + 1, false) {
    const int world = comm.world();
    size_t at = 0;
    for (const Bank& b : layout_.banks) {
        Padded p;
        p.chunk = (b.count + world - 1) / world;
        p.numel = size_t(b.rows) * b.cols;
        p.at = at;
        pad_.push_back(p);
        at += size_t(world) * p.chunk * p.numel;
    }
    adam_at_ = at;
    arena_ = DeviceArray<float>(at + layout_.total - muon_end_);
    PG_CHECK(cudaMemsetAsync(arena_.get(), 0, arena_.size() * sizeof(float), stream_));
}

int ParallelMuon::own_count(int bank) const {
    const int count = layout_.banks[bank].count, chunk = pad_[bank].chunk;
    const int first = std::min(count, comm_.rank() * chunk);
    return std::min(count, first + chunk) - first;
}

void ParallelMuon::step(float* params, bf16* params_bf16, const float* grads, float lr_scale, int step) {
    for (int b = 0; b < int(layout_.banks.size()); ++b) reduce_bank(b, grads);
    reduce_adam(grads);
    update(params, params_bf16, lr_scale, step);
}

void ParallelMuon::reduce_bank(int bank, const float* grads) {
    PG_CHECK(bank >= 0 && bank < int(layout_.banks.size()) && !reduced_[bank]);
    const Bank& B = layout_.banks[bank];
    const Padded& p = pad_[bank];
    float* run = arena_.get() + p.at;
    const size_t n = size_t(B.count) * p.numel, padded = size_t(comm_.world()) * p.chunk * p.numel;
    PG_CHECK(cudaMemcpyAsync(run, grads + B.offset, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
    // The padding adds nothing to the average; the weights gathered through it last step are gone.
    PG_CHECK(cudaMemsetAsync(run + n, 0, (padded - n) * sizeof(float), stream_));
    comm_.reduce_scatter(run, own_chunk(bank), size_t(p.chunk) * p.numel, ncclAvg, stream_);
    reduced_[bank] = true;
}

void ParallelMuon::reduce_adam(const float* grads) {
    PG_CHECK(!reduced_.back());
    comm_.all_reduce(grads + muon_end_, arena_.get() + adam_at_, layout_.total - muon_end_, ncclAvg, stream_);
    reduced_.back() = true;
}

void ParallelMuon::update(float* params, bf16* params_bf16, float lr_scale, int step) {
    PG_CHECK(std::all_of(reduced_.begin(), reduced_.end(), [](bool r) { return r; }));
    std::fill(reduced_.begin(), reduced_.end(), false);

    // Squares of what this rank holds reduced, over runs merged where they touch: with one rank
    // that is the single run [0, total) that CudaOptimizer::step sums.
    struct Run {
        size_t at, n;
    };
    std::vector<Run> runs;
    auto add = [&](size_t at, size_t n) {
        if (n == 0) return;
        if (!runs.empty() && runs.back().at + runs.back().n == at)
            runs.back().n += n;
        else
            runs.push_back({at, n});
    };
    for (const BankSlice& s : slices_)
        add(pad_[s.bank].at + size_t(s.first) * pad_[s.bank].numel, size_t(s.count) * pad_[s.bank].numel);
    if (comm_.rank() == 0) add(adam_at_, layout_.total - muon_end_);
    if (runs.empty()) runs.push_back({0, 0});
    for (size_t i = 0; i < runs.size(); ++i) opt_.grad_sumsq(arena_.get() + runs[i].at, runs[i].n, i > 0);
    comm_.all_reduce(opt_.sumsq_device(), opt_.sumsq_device(), 1, ncclSum, stream_);
    opt_.finish_clip();

    // The optimizer reads a gradient at its flat offset; bank b's run sits pad_[b].at - offset
    // further on in the arena, the AdamW part adam_at_ - muon_end_ further on.
    for (const BankSlice& s : slices_) {
        const float* g = arena_.get() + (pad_[s.bank].at - layout_.banks[s.bank].offset);
        opt_.muon_update_bank_slice(s.bank, s.first, s.count, params, params_bf16, g, lr_scale, step);
    }
    opt_.adam_update(params, params_bf16, arena_.get() + (adam_at_ - muon_end_), lr_scale);
    opt_.join_muon();
    gather_weights(params, params_bf16);
}

void ParallelMuon::gather_weights(float* params, bf16* params_bf16) {
    for (int b = 0; b < int(layout_.banks.size()); ++b) {
        const Bank& B = layout_.banks[b];
        const Padded& p = pad_[b];
        const int first = std::min(B.count, comm_.rank() * p.chunk), mine = own_count(b);
        if (mine > 0)
            PG_CHECK(cudaMemcpyAsync(own_chunk(b), params + B.offset + size_t(first) * p.numel,
                                     size_t(mine) * p.numel * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
        comm_.all_gather(own_chunk(b), arena_.get() + p.at, size_t(p.chunk) * p.numel, stream_);
        PG_CHECK(cudaMemcpyAsync(params + B.offset, arena_.get() + p.at, size_t(B.count) * p.numel * sizeof(float),
                                 cudaMemcpyDeviceToDevice, stream_));
    }
    opt_.refresh_bf16(params, params_bf16, 0, muon_end_);
}

float ParallelMuon::grad_norm() {
    comm_.wait(stream_, "optimizer step");
    return opt_.grad_norm();
}

void ParallelMuon::gather_momentum(std::vector<float>& muon_m) {
    PG_CHECK(muon_m.size() == muon_end_);  // momentum is laid out bank by bank, as the banks are
    // Host copies only while the stream is idle: a pageable copy may wait for the stream, and a
    // stream stuck on a dead peer must end in the communicator's error, not a hang.
    comm_.wait(stream_, "momentum gather");
    const int banks = int(layout_.banks.size());
    for (int b = 0; b < banks; ++b) {
        const Padded& p = pad_[b];
        const int first = std::min(layout_.banks[b].count, comm_.rank() * p.chunk), mine = own_count(b);
        if (mine > 0)
            PG_CHECK(cudaMemcpy(own_chunk(b), muon_m.data() + layout_.banks[b].offset + size_t(first) * p.numel,
                                size_t(mine) * p.numel * sizeof(float), cudaMemcpyHostToDevice));
    }
    for (int b = 0; b < banks; ++b)
        comm_.all_gather(own_chunk(b), arena_.get() + pad_[b].at, size_t(pad_[b].chunk) * pad_[b].numel, stream_);
    comm_.wait(stream_, "momentum gather");
    for (int b = 0; b < banks; ++b)
        PG_CHECK(cudaMemcpy(muon_m.data() + layout_.banks[b].offset, arena_.get() + pad_[b].at,
                            size_t(layout_.banks[b].count) * pad_[b].numel * sizeof(float), cudaMemcpyDeviceToHost));
}

}  // namespace pg
