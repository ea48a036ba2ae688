// CUDA kernels of pycnn.avg_pool2d and its backward.
//
// The forward has one thread per output element, averaging its window. The
// backward has one thread per input element, gathering the gradients of the
// outputs whose windows contain it.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.cuh"
#include "pycnn/checks.h"
#include "pycnn/geometry.h"
#include "pycnn/indexing.h"
#include "pycnn/window.h"

namespace pycnn {
namespace {

using cuda::blocks_for;
using cuda::launch;
using cuda::with_format_of;

// `planes` is N * C; each (n, c) plane is pooled on its own. index_t is
// int32_t when every index fits (fits_32bit_indexing), else int64_t: the
// division and modulo that find an item's plane and position are then 32-bit.
template <typename scalar_t, typename index_t>
__global__ void avg_pool2d_forward_kernel(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ output, index_t planes, AvgPool2dGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t out_w = static_cast<index_t>(g.out_w);
  const index_t out_plane = static_cast<index_t>(g.out_h) * out_w;
  PYCNN_GRID_STRIDE_LOOP_T(index_t, index, planes * out_plane) {
    const index_t plane = index / out_plane;
    const AvgWindow window = g.window((index % out_plane) / out_w, index % out_w);
    if (avg_pool_window_empty(window)) {
      output[index] = scalar_t(0);
      continue;
    }
    const scalar_t* plane_input = input + plane * g.in_h * g.in_w;
    opmath_t sum = 0;
    for (int64_t h = window.h0; h < window.h1; ++h) {
      for (int64_t w = window.w0; w < window.w1; ++w) {
        sum += static_cast<opmath_t>(plane_input[h * g.in_w + w]);
      }
    }
    output[index] = static_cast<scalar_t>(sum / static_cast<opmath_t>(window.divisor));
  }
}

// grad_input[h][w] = sum of grad_output[oh][ow] / divisor(oh, ow) over the
// outputs whose clipped windows contain (h, w). A gather (one thread per input
// element) rather than a scatter from the outputs: overlapping windows would
// need atomics, which are slower for half / bfloat16 and non-deterministic.
template <typename scalar_t, typename index_t>
__global__ void avg_pool2d_backward_kernel(
    const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_input, index_t planes, AvgPool2dGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t in_w = static_cast<index_t>(g.in_w);
  const index_t in_plane = static_cast<index_t>(g.in_h) * in_w;
  const index_t pad_h = static_cast<index_t>(g.pad_h), pad_w = static_cast<index_t>(g.pad_w);
  const index_t kernel_h = static_cast<index_t>(g.kernel_h), kernel_w = static_cast<index_t>(g.kernel_w);
  const index_t stride_h = static_cast<index_t>(g.stride_h), stride_w = static_cast<index_t>(g.stride_w);
  PYCNN_GRID_STRIDE_LOOP_T(index_t, index, planes * in_plane) {
    const index_t plane = index / in_plane;
    const index_t h = (index % in_plane) / in_w;
    const index_t w = index % in_w;
    // The unclipped window of output oh covers rows [oh * sH - pH, oh * sH - pH + kH),
    // which contain h for oh in [floor((h + pH - kH) / sH) + 1, floor((h + pH) / sH)].
    // Clipped windows are smaller, so the candidates are then checked exactly.
    const int64_t oh_begin = std::max<int64_t>(floor_div<index_t>(h + pad_h - kernel_h, stride_h) + 1, 0);
    const int64_t oh_end = std::min<int64_t>(floor_div<index_t>(h + pad_h, stride_h) + 1, g.out_h);
    const int64_t ow_begin = std::max<int64_t>(floor_div<index_t>(w + pad_w - kernel_w, stride_w) + 1, 0);
    const int64_t ow_end = std::min<int64_t>(floor_div<index_t>(w + pad_w, stride_w) + 1, g.out_w);
    const scalar_t* plane_grad_output = grad_output + static_cast<int64_t>(plane) * g.out_h * g.out_w;
    opmath_t sum = 0;
    for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
      for (int64_t ow = ow_begin; ow < ow_end; ++ow) {
        const AvgWindow window = g.window(oh, ow);
        if (h >= window.h0 && h < window.h1 && w >= window.w0 && w < window.w1) {
          sum += static_cast<opmath_t>(plane_grad_output[oh * g.out_w + ow]) / static_cast<opmath_t>(window.divisor);
        }
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// --- entry points -----------------------------------------------------------

Tensor avg_pool2d_cuda(
    const Tensor& input_arg, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
    bool count_include_pad, std::optional<int64_t> divisor_override) {
  const auto output_shape =
      avg_pool2d_output_shape(input_arg, kernel_size, stride, padding, ceil_mode, divisor_override);
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const Tensor input = input_arg.contiguous();
  Tensor output = at::empty(output_shape, input.options());
  if (output.numel() == 0) {
    return with_format_of(output, input_arg);
  }
  const AvgPool2dGeometry g = make_avg_pool2d_geometry(
      input.sizes(), output_shape, kernel_size, stride, padding, count_include_pad, divisor_override);
  const int64_t planes = input.size(0) * input.size(1);
  const bool use_32bit =
      fits_32bit_indexing({input.numel(), output.numel()}, output.numel(), cuda::grid_threads(output.numel()));
  PYCNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_avg_pool2d_cuda", [&] {
    PYCNN_DISPATCH_INDEX_TYPE(use_32bit, [&] {
      launch(
          avg_pool2d_forward_kernel<scalar_t, index_t>, blocks_for(output.numel()), input.const_data_ptr<scalar_t>(),
          output.mutable_data_ptr<scalar_t>(), static_cast<index_t>(planes), g);
    });
  });
  return with_format_of(output, input_arg);
}

Tensor avg_pool2d_backward_cuda(
    const Tensor& grad_output_arg, const Tensor& input_arg, IntArrayRef kernel_size, IntArrayRef stride,
    IntArrayRef padding, bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  constexpr const char* op = "pycnn.avg_pool2d_backward";
  const auto output_shape =
      avg_pool2d_output_shape(input_arg, kernel_size, stride, padding, ceil_mode, divisor_override);
  check_grad_output(op, grad_output_arg, input_arg, output_shape);
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const Tensor grad_output = grad_output_arg.contiguous();
  Tensor grad_input = at::empty(input_arg.sizes(), input_arg.options());
  if (grad_input.numel() == 0) {
    return with_format_of(grad_input, input_arg);
  }
  const AvgPool2dGeometry g = make_avg_pool2d_geometry(
      input_arg.sizes(), output_shape, kernel_size, stride, padding, count_include_pad, divisor_override);
  const int64_t planes = input_arg.size(0) * input_arg.size(1);
  const bool use_32bit = fits_32bit_indexing(
      {grad_input.numel(), grad_output.numel()}, grad_input.numel(), cuda::grid_threads(grad_input.numel()));
  PYCNN_DISPATCH_FLOATING_TYPES(input_arg.scalar_type(), "pycnn_avg_pool2d_backward_cuda", [&] {
    PYCNN_DISPATCH_INDEX_TYPE(use_32bit, [&] {
      launch(
          avg_pool2d_backward_kernel<scalar_t, index_t>, blocks_for(grad_input.numel()),
          grad_output.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), static_cast<index_t>(planes),
          g);
    });
  });
  return with_format_of(grad_input, input_arg);
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CUDA, m) {
  m.impl("avg_pool2d", &avg_pool2d_cuda);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cuda);
}

}  // namespace pycnn
