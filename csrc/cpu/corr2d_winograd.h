// corr2d on the CPU by Winograd's minimal filtering, for kernels of 3x3
// (F(2x2, 3x3)) and 5x5 (F(2x2, 5x5)) with stride 1 and no dilation --
// corr2d_winograd.cpp.
//
// Why: im2col + GEMM spends 9 (or 25) multiply-adds per output and input
// channel on a 3x3 (5x5) kernel; Winograd computes each 2x2 block of outputs
// from a 4x4 (6x6) block of input with 16 (36) products, i.e. 4 (9) per
// output: 2.25 (2.8) times fewer. The products of a tile are independent
// matrix products, channels by channels, over all the tiles of the batch:
// GEMMs of the same shape as im2col's but a ninth (a 25th) of its depth, and
// 16 (36) of them.
//
// The input gradient of a stride-1 correlation is itself one: grad_input =
// corr2d(grad_output, the weight transposed (O <-> C) and flipped, padding
// k - 1 - padding), so the same code runs it. The weight gradient is 16
// (36) products too, each summing over the batch's tiles (corr2d_winograd.cpp).
#pragma once

#include <ATen/ATen.h>

#include "pycnn/geometry.h"

namespace pycnn {
namespace cpu {

// Whether corr2d of this geometry runs Winograd (every pass): float32, a 3x3
// or 5x5 kernel, stride 1, dilation 1, ungrouped, padding at most kernel - 1, enough
// channels for the products to be GEMM-sized, an output map of at least 4x4
// and enough 2x2 tiles in the batch to repay the weight's transform (the
// thresholds, measured, are in corr2d_winograd.cpp). PYCNN_CPU_WINOGRAD=0 in
// the environment turns it off, to compare.
bool use_winograd_corr2d(
    const Corr2dGeometry& g, int64_t out_channels, int64_t groups, int64_t batch, at::ScalarType dtype);

// input (N, C, H, W), weight (O, C, k, k), bias (O) or undefined, all
// contiguous float32; output (N, O, OH, OW), allocated by the caller.
void corr2d_winograd_forward(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const Corr2dGeometry& g,
    at::Tensor& output);

// grad_output (N, O, OH, OW), weight (O, C, k, k), contiguous float32;
// grad_input (N, C, H, W), allocated by the caller. g: the forward's geometry.
// Returns false, having written nothing, where the weight holds an inf or a
// NaN: the gradient's correlation pads grad_output, and a non-finite weight
// times that padding would be a NaN where native's gradient reads no padding
// (the caller then runs im2col + GEMM, whose col2im adds no padding in).
bool corr2d_winograd_backward_input(
    const at::Tensor& grad_output, const at::Tensor& weight, const Corr2dGeometry& g, at::Tensor& grad_input);

// grad_output (N, O, OH, OW), input (N, C, H, W), contiguous float32;
// grad_weight (O, C, k, k), allocated by the caller. Returns false where an
// inf or NaN reached the sums: dg = Gᵀ dU G mixes a kernel's 16 (36) sums into
// each of its 9 (25) gradients, so one non-finite sum would make all 9 NaN where
// native's reach only the taps that read the value (the caller then runs
// im2col + GEMM, which overwrites grad_weight).
bool corr2d_winograd_backward_weight(
    const at::Tensor& grad_output, const at::Tensor& input, const Corr2dGeometry& g, at::Tensor& grad_weight);

}  // namespace cpu
}  // namespace pycnn
