// GPTQ calibration: H = X^T X of the inputs of every quantized matrix, gathered from the
// model's own forward passes over TRAINING sequences (never validation tokens, which the
// challenge forbids using before they are scored).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "model/model_ref.h"
#include "tokenizer/loader.h"

namespace pg {

// H [in, in] (row-major, double) by weight name; matrices that share an input (wq/wk/wv)
// each get their own copy. Runs `seqs` sequences of model.config().seq_len from the stream,
// `batch` at a time.
std::map<std::string, std::vector<double>> collect_hessians(RefModel<float>& model, TokenStream& stream, int seqs,
                                                            int batch, bool recur_active);

// The same on the GPU (quant/calibrate_cuda.cu), for a CudaModel (head_dim 64) loaded with
// params: the same sequences and keys; X is the model's bf16 input of each matrix and
// H += X^T X runs on cuBLASLt with fp32 accumulation, handed out in double.
std::map<std::string, std::vector<double>> collect_hessians_cuda(const ModelConfig& cfg, const std::vector<float>& params,
                                                                 TokenStream& stream, int seqs, int batch,
                                                                 bool recur_active);

}  // namespace pg
