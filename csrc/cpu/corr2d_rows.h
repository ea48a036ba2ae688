// corr2d on the CPU by im2col over channels-last rows, for layers with small
// output maps -- corr2d_rows.cpp.
//
// Why: the im2col + GEMM path (corr2d_kernel.cpp) unfolds each sample into
// a column matrix [C * kh * kw, OH * OW] whose rows are copied a map row at a
// time; on a 3x3 or 6x6 output each copy is 3 or 6 values long, and setting
// it up costs more than the copy (DenseNet's 216 -> 32 on 3x3 at batch 64:
// 1.9 ms against native's 0.7, of which the GEMM was 0.6). Here the input is
// first permuted to channels-last (N, H, W, C), and the column matrix is
// [N * OH * OW, kh * kw * C]: one row per output position, each tap's C
// values one contiguous copy. The whole batch (or a chunk of it) is one
// product, [N * OH * OW, kh * kw * C] @ [kh * kw * C, O], whose result is the
// output in channels-last order; the backward runs the same products
// transposed, as the im2col path does.
#pragma once

#include <ATen/ATen.h>

#include "pycnn/geometry.h"

namespace pycnn {
namespace cpu {

// Whether corr2d of this geometry runs the channels-last rows: float32,
// ungrouped, not a plain 1x1 layer (corr2d_kernel.cpp's one-product path),
// at least 8 input channels, at most 128 output channels and an output map
// small enough that the im2col path's copies are short (the thresholds,
// measured, are in corr2d_rows.cpp). PYCNN_CPU_ROWS=0 in the environment
// turns it off, to compare.
bool use_rows_corr2d(const Corr2dGeometry& g, int64_t out_channels, int64_t groups, at::ScalarType dtype);

// input (N, C, H, W) in any layout, weight (O, C, kh, kw) contiguous, bias
// (O) or undefined; float32. Returns the output (N, O, OH, OW), laid out
// channels-last.
at::Tensor corr2d_rows_forward(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const Corr2dGeometry& g);

// grad_output (N, O, OH, OW) in any layout, weight (O, C, kh, kw)
// contiguous. Returns the input's gradient (N, C, H, W), laid out
// channels-last. g: the forward's geometry.
at::Tensor corr2d_rows_backward_input(const at::Tensor& grad_output, const at::Tensor& weight, const Corr2dGeometry& g);

// grad_output and input in any layout. Returns the weight's gradient
// (O, C, kh, kw), contiguous.
at::Tensor corr2d_rows_backward_weight(
    const at::Tensor& grad_output, const at::Tensor& input, const Corr2dGeometry& g, int64_t out_channels);

}  // namespace cpu
}  // namespace pycnn
