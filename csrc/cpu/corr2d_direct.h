// corr2d on the CPU without im2col, for grouped convolutions with few input
// channels per group (depthwise ones: one channel per group) and layers with
// few output channels -- corr2d_direct.cpp.
//
// Why: im2col + GEMM makes one product per group, and a group of a depthwise
// 3x3 convolution is a [1, 9] @ [9, H*W] product -- a matrix-vector product
// whose packing and call cost more than its 9 multiply-adds per output. The
// direct loops here hold blocks of outputs in vector registers while they
// run through every tap and channel. The same holds, less sharply, for a
// layer with few output channels: each unfolded value would feed few
// products, and im2col's copy of the input costs about as much as the GEMM.
#pragma once

#include <ATen/ATen.h>

#include "pycnn/geometry.h"

namespace pycnn {
namespace cpu {

// The three passes of corr2d, whose best algorithm differs on small maps.
enum class Corr2dPass { kForward, kBackwardInput, kBackwardWeight };

// Whether this pass of corr2d of this geometry runs the direct loops instead
// of im2col + GEMM (or the channels-last rows): grouped layers with few input
// channels per group, and ungrouped ones with few output channels -- every
// pass on mid-sized maps, and on small maps the passes where the loops were
// faster (corr2d_direct.cpp has the thresholds, measured).
bool use_direct_corr2d(const Corr2dGeometry& g, int64_t out_channels, int64_t groups, int64_t batch, Corr2dPass pass);

// Whether, where use_direct_corr2d takes a pass, the direct loops also go
// before Winograd's F(2x2, 3x3), which is otherwise tried first: the forward
// of an ungrouped layer of at most 16 outputs on a map under 12x12 (NiN's
// 384 -> 10 on 5x5), where Winograd's 16 products are only O columns wide.
bool direct_before_winograd(const Corr2dGeometry& g, int64_t out_channels, int64_t groups, Corr2dPass pass);

// All tensors contiguous (N, C, H, W) / (O, C / groups, kH, kW), of one
// floating dtype (float32 or float64), outputs allocated by the caller.
// output = corr2d(input, weight) + bias (bias: undefined for none).
void corr2d_direct_forward(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const Corr2dGeometry& g, int64_t groups,
    at::Tensor& output);
// grad_input = the adjoint of corr2d in its input, applied to grad_output.
void corr2d_direct_backward_input(
    const at::Tensor& grad_output, const at::Tensor& weight, const Corr2dGeometry& g, int64_t groups,
    at::Tensor& grad_input);
// grad_weight = the adjoint of corr2d in its weight, applied to grad_output.
void corr2d_direct_backward_weight(
    const at::Tensor& grad_output, const at::Tensor& input, const Corr2dGeometry& g, int64_t groups,
    at::Tensor& grad_weight);

}  // namespace cpu
}  // namespace pycnn
