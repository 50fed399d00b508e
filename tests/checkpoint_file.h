// A training checkpoint of given weights, as `pgolf eval` and `pgolf pack` read it: for the
// tests that run those commands on a model of their own.
#pragma once
#include <string>
#include <vector>

#include "common/checkpoint.h"
#include "common/config.h"

inline void write_checkpoint(const std::string& path, pg::Config cfg, const std::vector<float>& params) {
    pg::Checkpoint ck;
    ck.put_text("config.model", pg::to_text(pg::fields(cfg.model)));
    ck.put_text("config.train", pg::to_text(pg::fields(cfg.train)));
    ck.put_text("config.quant", pg::to_text(pg::fields(cfg.quant)));
    ck.put_vec("params", params);
    ck.save(path);
}
