// Index arithmetic shared by the CPU and CUDA kernels: output sizes, window
// bounds, the ceil_mode rule and the average-pooling divisor. Keeping it in one
// place means the CPU tests exercise exactly the arithmetic the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYCNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYCNN_HOST_DEVICE inline
#endif

namespace pycnn {

// Floor division that is correct for negative numerators (C++ truncates).
// T is int64_t, or int32_t in the CUDA kernels' 32-bit index path.
template <typename T>
PYCNN_HOST_DEVICE T floor_div(T a, T b) {
  const T q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Number of positions of a dilated kernel that fit in a padded input:
// floor((in + 2p - d(k-1) - 1) / s) + 1. May be <= 0; callers check.
PYCNN_HOST_DEVICE int64_t corr2d_output_size(
    int64_t in, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation) {
  return floor_div(in + 2 * pad - dilation * (kernel - 1) - 1, stride) + 1;
}

// Pooling output size with PyTorch's ceil_mode rule: rounding up may add one
// window, but never one that starts beyond the input and its left padding.
PYCNN_HOST_DEVICE int64_t pooling_output_size(
    int64_t in, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation, bool ceil_mode) {
  int64_t out = floor_div(in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) {
    --out;
  }
  return out;
}

// Adaptive pooling: output cell i covers [floor(i*in/out), ceil((i+1)*in/out)).
// T as for floor_div (int32_t needs (out + 1) * in to fit).
template <typename T>
PYCNN_HOST_DEVICE T adaptive_start(T i, T in, T out) {
  return (i * in) / out;
}
template <typename T>
PYCNN_HOST_DEVICE T adaptive_end(T i, T in, T out) {
  return ((i + 1) * in + out - 1) / out;
}

// A max-pooling window along one axis: positions start, start+dilation, ...
// (< end), all inside the input. start is the first non-negative position.
struct MaxWindow {
  int64_t start;
  int64_t end;
};
PYCNN_HOST_DEVICE MaxWindow max_pool_window(
    int64_t out_index, int64_t in, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation) {
  int64_t start = out_index * stride - pad;
  const int64_t end = start + (kernel - 1) * dilation + 1 < in ? start + (kernel - 1) * dilation + 1 : in;
  while (start < 0) {
    start += dilation;
  }
  return {start, end};
}

// The outputs [begin, end) along one axis whose window's span -- positions
// o * stride - pad to o * stride - pad + (kernel - 1) * dilation -- contains
// input position i: where a backward that gathers must look.
// T as for floor_div.
template <typename T = int64_t>
struct OutputRange {
  T begin;
  T end;
};
template <typename T>
PYCNN_HOST_DEVICE OutputRange<T> outputs_containing(T i, T pad, T kernel, T stride, T dilation, T out) {
  const T begin = floor_div<T>(i + pad - (kernel - 1) * dilation - 1, stride) + 1;
  const T end = floor_div<T>(i + pad, stride) + 1;
  return {begin > 0 ? begin : 0, end < out ? end : out};
}

// The outputs [begin, end) along one axis whose tap at input offset `offset`
// (the tap's kernel position times the dilation) reads inside the input: o
// with 0 <= o * stride - pad + offset < in. The rest read zero padding.
PYCNN_HOST_DEVICE OutputRange<int64_t> outputs_reading_inside(
    int64_t offset, int64_t in, int64_t out, int64_t stride, int64_t pad) {
  const int64_t lo = pad - offset;     // the smallest o has o * stride >= lo
  const int64_t hi = in - 1 + pad - offset;  // the largest o has o * stride <= hi
  int64_t end = hi < 0 ? 0 : (hi / stride + 1 < out ? hi / stride + 1 : out);
  int64_t begin = lo <= 0 ? 0 : (lo + stride - 1) / stride;
  return {begin < end ? begin : end, end};
}

// Whether a max-pooling window holds no input element along one axis. With
// dilation, every tap of a window can fall in the padding: its maximum is
// -inf, and the index it records (as PyTorch's) need not lie in the window, so
// the backward routes its gradient nowhere.
PYCNN_HOST_DEVICE bool max_pool_window_empty(
    int64_t out_index, int64_t in, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation) {
  const MaxWindow window = max_pool_window(out_index, in, kernel, pad, stride, dilation);
  return window.start >= window.end;
}

// An average-pooling window in 2-D, clipped to the input, with the divisor
// PyTorch uses: divisor_override if given (non-zero; 0 means not given), else the window's area
// including padding (count_include_pad) or excluding it.
struct AvgWindow {
  int64_t h0, h1, w0, w1;
  int64_t divisor;
};
PYCNN_HOST_DEVICE AvgWindow avg_pool_window(
    int64_t oh, int64_t ow, int64_t in_h, int64_t in_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, bool count_include_pad, int64_t divisor_override) {
  int64_t h0 = oh * stride_h - pad_h;
  int64_t w0 = ow * stride_w - pad_w;
  int64_t h1 = h0 + kernel_h < in_h + pad_h ? h0 + kernel_h : in_h + pad_h;
  int64_t w1 = w0 + kernel_w < in_w + pad_w ? w0 + kernel_w : in_w + pad_w;
  const int64_t padded_area = (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < in_h ? h1 : in_h;
  w1 = w1 < in_w ? w1 : in_w;
  int64_t divisor;
  if (divisor_override != 0) {
    divisor = divisor_override;
  } else if (count_include_pad) {
    divisor = padded_area;
  } else {
    divisor = (h1 - h0) * (w1 - w0);
  }
  return {h0, h1, w0, w1, divisor};
}

// Whether an average-pooling window, clipped to the input, holds nothing: with
// ceil_mode the last window may start in the right / bottom padding. Its
// output is 0, as PyTorch's.
PYCNN_HOST_DEVICE bool avg_pool_window_empty(const AvgWindow& window) {
  return window.h0 >= window.h1 || window.w0 >= window.w1;
}

}  // namespace pycnn
