// The geometry of one call of each operator -- its sizes and hyper-parameters
// -- as one struct per operator, shared by the operator's CPU and CUDA kernels
// (the CUDA kernels take it by value), with the one function that builds it
// from the operator's arguments. The index arithmetic on it is in window.h.
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>

#include "pycnn/window.h"

namespace pycnn {

// --- max_pool2d -------------------------------------------------------------

struct MaxPool2dGeometry {
  int64_t in_h, in_w;
  int64_t out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
};

// input_size and output_size are (N, C, H, W).
inline MaxPool2dGeometry make_max_pool2d_geometry(
    c10::IntArrayRef input_size, c10::IntArrayRef output_size, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  return {input_size[2], input_size[3], output_size[2], output_size[3], kernel_size[0], kernel_size[1],
          stride[0],     stride[1],     padding[0],     padding[1],     dilation[0],    dilation[1]};
}

// --- avg_pool2d -------------------------------------------------------------

struct AvgPool2dGeometry {
  int64_t in_h, in_w;
  int64_t out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  bool count_include_pad;
  int64_t divisor_override;  // 0: not given

  // The window of output (oh, ow), clipped to the input, and its divisor.
  PYCNN_HOST_DEVICE AvgWindow window(int64_t oh, int64_t ow) const {
    return avg_pool_window(
        oh, ow, in_h, in_w, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad, divisor_override);
  }
};

// input_size and output_size are (N, C, H, W).
inline AvgPool2dGeometry make_avg_pool2d_geometry(
    c10::IntArrayRef input_size, c10::IntArrayRef output_size, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
    c10::IntArrayRef padding, bool count_include_pad, std::optional<int64_t> divisor_override) {
  return {input_size[2], input_size[3], output_size[2], output_size[3], kernel_size[0],    kernel_size[1],
          stride[0],     stride[1],     padding[0],     padding[1],     count_include_pad, divisor_override.value_or(0)};
}

// --- adaptive_avg_pool2d ----------------------------------------------------

struct AdaptiveAvgPool2dGeometry {
  int64_t in_h, in_w;
  int64_t out_h, out_w;
};

// input_size and output_size are (N, C, H, W).
inline AdaptiveAvgPool2dGeometry make_adaptive_avg_pool2d_geometry(
    c10::IntArrayRef input_size, c10::IntArrayRef output_size) {
  return {input_size[2], input_size[3], output_size[2], output_size[3]};
}

}  // namespace pycnn
