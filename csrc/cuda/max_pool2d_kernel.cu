// CUDA kernels of pycnn.max_pool2d and its backward.
//
// The forward has one thread per output element, scanning its window in
// row-major order with PyTorch's rule for ties and NaN. The backward has one
// thread per input element, gathering the gradients of the outputs whose
// index names it.

#include <ATen/ATen.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/NumericLimits.cuh>
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
__global__ void max_pool2d_forward_kernel(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ output, int64_t* __restrict__ indices, index_t planes,
    MaxPool2dGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t out_w = static_cast<index_t>(g.out_w);
  const index_t out_plane = static_cast<index_t>(g.out_h) * out_w;
  PYCNN_GRID_STRIDE_LOOP_T(index_t, index, planes * out_plane) {
    const index_t plane = index / out_plane;
    const index_t oh = (index % out_plane) / out_w;
    const index_t ow = index % out_w;
    const MaxWindow rows = max_pool_window(oh, g.in_h, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
    const MaxWindow cols = max_pool_window(ow, g.in_w, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
    const scalar_t* plane_input = input + plane * g.in_h * g.in_w;
    // As PyTorch: the first maximum wins (strict >), and a NaN replaces the
    // maximum (so the output is NaN, with the index of the last NaN).
    opmath_t max_value = at::numeric_limits<opmath_t>::lower_bound();
    int64_t max_index = rows.start * g.in_w + cols.start;
    for (int64_t h = rows.start; h < rows.end; h += g.dilation_h) {
      for (int64_t w = cols.start; w < cols.end; w += g.dilation_w) {
        const opmath_t value = static_cast<opmath_t>(plane_input[h * g.in_w + w]);
        if (value > max_value || at::_isnan(value)) {
          max_value = value;
          max_index = h * g.in_w + w;
        }
      }
    }
    output[index] = static_cast<scalar_t>(max_value);
    indices[index] = max_index;
  }
}

// grad_input[h][w] = the sum of grad_output[oh][ow] over the outputs whose
// index names (h, w). A gather -- one thread per input element, which reads
// the outputs whose window spans (h, w) (outputs_containing, as PyTorch's own
// CUDA kernel) in a fixed order -- rather than a scatter from the outputs:
// overlapping windows (stride < kernel) would need atomics there, which are
// not deterministic and, for half / bfloat16, round every partial sum. A
// window entirely in the padding (max_pool_window_empty) routes its gradient
// nowhere, as on the CPU.
template <typename scalar_t, typename index_t>
__global__ void max_pool2d_backward_kernel(
    const scalar_t* __restrict__ grad_output, const int64_t* __restrict__ indices, scalar_t* __restrict__ grad_input,
    index_t planes, MaxPool2dGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t in_w = static_cast<index_t>(g.in_w);
  const index_t in_plane = static_cast<index_t>(g.in_h) * in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  PYCNN_GRID_STRIDE_LOOP_T(index_t, index, planes * in_plane) {
    const index_t plane = index / in_plane;
    const index_t position = index % in_plane;
    const OutputRange<index_t> rows = outputs_containing<index_t>(
        position / in_w, static_cast<index_t>(g.pad_h), static_cast<index_t>(g.kernel_h),
        static_cast<index_t>(g.stride_h), static_cast<index_t>(g.dilation_h), static_cast<index_t>(g.out_h));
    const OutputRange<index_t> cols = outputs_containing<index_t>(
        position % in_w, static_cast<index_t>(g.pad_w), static_cast<index_t>(g.kernel_w),
        static_cast<index_t>(g.stride_w), static_cast<index_t>(g.dilation_w), static_cast<index_t>(g.out_w));
    const int64_t* plane_indices = indices + static_cast<int64_t>(plane) * out_plane;
    const scalar_t* plane_grad_output = grad_output + static_cast<int64_t>(plane) * out_plane;
    opmath_t sum = 0;
    for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
      if (max_pool_window_empty(oh, g.in_h, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h)) {
        continue;
      }
      for (int64_t ow = cols.begin; ow < cols.end; ++ow) {
        if (!max_pool_window_empty(ow, g.in_w, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w) &&
            plane_indices[oh * g.out_w + ow] == position) {
          sum += static_cast<opmath_t>(plane_grad_output[oh * g.out_w + ow]);
        }
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// --- entry points -----------------------------------------------------------

std::tuple<Tensor, Tensor> max_pool2d_cuda(
    const Tensor& input_arg, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
    bool ceil_mode) {
  const auto output_shape = max_pool2d_output_shape(input_arg, kernel_size, stride, padding, dilation, ceil_mode);
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const Tensor input = input_arg.contiguous();
  Tensor output = at::empty(output_shape, input.options());
  Tensor indices = at::empty(output_shape, input.options().dtype(at::kLong));
  if (output.numel() == 0) {
    return {with_format_of(output, input_arg), with_format_of(indices, input_arg)};
  }
  const MaxPool2dGeometry g =
      make_max_pool2d_geometry(input.sizes(), output_shape, kernel_size, stride, padding, dilation);
  const int64_t planes = input.size(0) * input.size(1);
  const bool use_32bit =
      fits_32bit_indexing({input.numel(), output.numel()}, output.numel(), cuda::grid_threads(output.numel()));
  PYCNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_max_pool2d_cuda", [&] {
    PYCNN_DISPATCH_INDEX_TYPE(use_32bit, [&] {
      launch(
          max_pool2d_forward_kernel<scalar_t, index_t>, blocks_for(output.numel()), input.const_data_ptr<scalar_t>(),
          output.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(), static_cast<index_t>(planes), g);
    });
  });
  return {with_format_of(output, input_arg), with_format_of(indices, input_arg)};
}

Tensor max_pool2d_backward_cuda(
    const Tensor& grad_output_arg, const Tensor& input_arg, const Tensor& indices_arg, IntArrayRef kernel_size,
    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  const auto output_shape = max_pool2d_output_shape(input_arg, kernel_size, stride, padding, dilation, ceil_mode);
  check_max_pool2d_backward("pycnn.max_pool2d_backward", grad_output_arg, input_arg, indices_arg, output_shape);
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const Tensor grad_output = grad_output_arg.contiguous();
  const Tensor indices = indices_arg.contiguous();
  Tensor grad_input = at::empty(input_arg.sizes(), input_arg.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad_input.numel() == 0) {
    return with_format_of(grad_input, input_arg);
  }
  if (grad_output.numel() == 0) {
    return with_format_of(grad_input.zero_(), input_arg);
  }
  const MaxPool2dGeometry g =
      make_max_pool2d_geometry(input_arg.sizes(), output_shape, kernel_size, stride, padding, dilation);
  const int64_t planes = input_arg.size(0) * input_arg.size(1);
  const bool use_32bit = fits_32bit_indexing(
      {grad_input.numel(), grad_output.numel()}, grad_input.numel(), cuda::grid_threads(grad_input.numel()));
  PYCNN_DISPATCH_FLOATING_TYPES(input_arg.scalar_type(), "pycnn_max_pool2d_backward_cuda", [&] {
    PYCNN_DISPATCH_INDEX_TYPE(use_32bit, [&] {
      launch(
          max_pool2d_backward_kernel<scalar_t, index_t>, blocks_for(grad_input.numel()),
          grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), static_cast<index_t>(planes), g);
    });
  });
  return with_format_of(grad_input, input_arg);
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CUDA, m) {
  m.impl("max_pool2d", &max_pool2d_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
}

}  // namespace pycnn
