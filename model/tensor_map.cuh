// TMA tensor maps of bf16 tensors, for the Hopper kernels that load tiles with the TMA unit
// (model/mlp_gemm.cu, model/attention.cu; wgmma.cuh's tma_load).
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>

namespace pg {

// A row-major bf16 matrix of rows x cols moved in boxes of box_rows x box_cols, box rows of 64
// or 128 bytes swizzled as model/wgmma.cuh's Tile is. With depth >= 1 the map has rank 3: depth
// such matrices one after another, the matrix the third coordinate, and a box stays inside one
// matrix. Boxes reaching past the rows or columns bring zeros there.
CUtensorMap tensor_map(const __nv_bfloat16* p, int rows, int cols, int box_rows, int box_cols, int depth = 0);

}  // namespace pg
