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

// --- corr2d -----------------------------------------------------------------

struct Corr2dGeometry {
  int64_t channels, in_h, in_w;  // input C, H, W
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
  int64_t out_h, out_w;

  PYCNN_HOST_DEVICE int64_t column_rows() const { return channels * kernel_h * kernel_w; }  // one sample's im2col
  PYCNN_HOST_DEVICE int64_t column_cols() const { return out_h * out_w; }                   // matrix is rows x cols
  // A 1x1 kernel with stride 1 and no padding reads the input as it is: the
  // column matrix is the input plane itself, and no im2col copy is needed.
  PYCNN_HOST_DEVICE bool columns_are_input() const {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
  }
};

// input_size is (N, C, H, W), weight_size (O, C / groups, kH, kW).
inline Corr2dGeometry make_corr2d_geometry(
    c10::IntArrayRef input_size, c10::IntArrayRef weight_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation) {
  const int64_t out_h = corr2d_output_size(input_size[2], weight_size[2], padding[0], stride[0], dilation[0]);
  const int64_t out_w = corr2d_output_size(input_size[3], weight_size[3], padding[1], stride[1], dilation[1]);
  return {input_size[1], input_size[2], input_size[3], weight_size[2], weight_size[3], stride[0], stride[1],
          padding[0],    padding[1],    dilation[0],   dilation[1],    out_h,          out_w};
}

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
  return {input_size[2],  input_size[3],  output_size[2],    output_size[3],
          kernel_size[0], kernel_size[1], stride[0],         stride[1],
          padding[0],     padding[1],     count_include_pad, divisor_override.value_or(0)};
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

// --- batch_norm -------------------------------------------------------------

// The (N, C, S) view of an (N, C, *) input: S = L, H * W or 1.
struct BatchNormShape {
  int64_t batch, channels, spatial;
  PYCNN_HOST_DEVICE int64_t channel_numel() const { return batch * spatial; }  // elements per channel
};

inline BatchNormShape make_batch_norm_shape(c10::IntArrayRef input_size) {
  int64_t spatial = 1;
  for (size_t d = 2; d < input_size.size(); ++d) {
    spatial *= input_size[d];
  }
  return {input_size[0], input_size[1], spatial};
}

}  // namespace pycnn
