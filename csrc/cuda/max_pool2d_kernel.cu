// CUDA kernels of pycnn.max_pool2d and its backward.
//
// The forward has one thread per output element, scanning its window in
// row-major order with PyTorch's rule for ties and NaN. The backward routes
// each output gradient to the input element its index names.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/NumericLimits.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.cuh"
#include "pycnn/checks.h"
#include "pycnn/window.h"

namespace pycnn {
namespace {

using cuda::blocks_for;
using cuda::kThreadsPerBlock;

// Shapes and hyper-parameters of one pooling, passed to the kernels by value.
struct MaxPoolGeometry {
  int64_t in_h, in_w;
  int64_t out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
};

// `planes` is N * C; each (n, c) plane is pooled on its own.
template <typename scalar_t>
__global__ void max_pool2d_kernel(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ output, int64_t* __restrict__ indices, int64_t planes,
    MaxPoolGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t out_plane = g.out_h * g.out_w;
  PYCNN_GRID_STRIDE_LOOP(index, planes * out_plane) {
    const int64_t plane = index / out_plane;
    const int64_t oh = (index % out_plane) / g.out_w;
    const int64_t ow = index % g.out_w;
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

// Adds each output gradient to the input element named by its index. The
// operator's schema carries no window parameters, so there is no way to find,
// for an input element, the outputs whose windows contain it (the
// deterministic gather the other pooling backwards use): this is a scatter,
// and overlapping windows (stride < kernel) make several outputs hit the same
// element, hence the atomics. They add into a buffer of the accumulation type
// (float32 for half / bfloat16) so that low-precision atomics do not round
// every partial sum. Float addition is commutative, so an element hit by at
// most two outputs gets a deterministic result; three or more may differ in
// the last bit from run to run.
template <typename scalar_t>
__global__ void max_pool2d_backward_kernel(
    const scalar_t* __restrict__ grad_output, const int64_t* __restrict__ indices,
    at::opmath_type<scalar_t>* __restrict__ grad_input_sum, int64_t planes, int64_t out_plane, int64_t in_plane) {
  using opmath_t = at::opmath_type<scalar_t>;
  PYCNN_GRID_STRIDE_LOOP(index, planes * out_plane) {
    const int64_t argmax = indices[index];
    // A window entirely in the padding (possible with dilation) has the
    // maximum -inf and an index past the plane, as in PyTorch: it routes its
    // gradient nowhere. Any other out-of-range index is skipped as well.
    if (argmax < 0 || argmax >= in_plane) {
      continue;
    }
    const int64_t plane = index / out_plane;
    gpuAtomicAdd(grad_input_sum + plane * in_plane + argmax, static_cast<opmath_t>(grad_output[index]));
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
    return {output, indices};
  }
  const MaxPoolGeometry g{input.size(2), input.size(3), output_shape[2], output_shape[3], kernel_size[0], kernel_size[1],
                          stride[0],     stride[1],     padding[0],      padding[1],      dilation[0],    dilation[1]};
  const int64_t planes = input.size(0) * input.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pycnn_max_pool2d_cuda", [&] {
    max_pool2d_kernel<scalar_t><<<blocks_for(output.numel()), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(),
        planes, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, indices};
}

Tensor max_pool2d_backward_cuda(const Tensor& grad_output_arg, const Tensor& input_arg, const Tensor& indices_arg) {
  check_max_pool2d_backward("pycnn.max_pool2d_backward", grad_output_arg, input_arg, indices_arg);

  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const Tensor grad_output = grad_output_arg.contiguous();
  const Tensor indices = indices_arg.contiguous();
  const at::ScalarType opmath_dtype = at::toOpMathType(input_arg.scalar_type());
  Tensor grad_input_sum = at::zeros(input_arg.sizes(), input_arg.options().dtype(opmath_dtype));
  if (grad_output.numel() > 0) {
    const int64_t planes = input_arg.size(0) * input_arg.size(1);
    const int64_t out_plane = grad_output.size(2) * grad_output.size(3);
    const int64_t in_plane = input_arg.size(2) * input_arg.size(3);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input_arg.scalar_type(), "pycnn_max_pool2d_backward_cuda", [&] {
          using opmath_t = at::opmath_type<scalar_t>;
          max_pool2d_backward_kernel<scalar_t>
              <<<blocks_for(grad_output.numel()), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
                  grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
                  grad_input_sum.mutable_data_ptr<opmath_t>(), planes, out_plane, in_plane);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  // A no-op for float32 / float64, whose accumulation type is their own.
  return grad_input_sum.to(input_arg.scalar_type());
}

}  // namespace
}  // namespace pycnn

TORCH_LIBRARY_IMPL(pycnn, CUDA, m) {
  m.impl("max_pool2d", &pycnn::max_pool2d_cuda);
  m.impl("max_pool2d_backward", &pycnn::max_pool2d_backward_cuda);
}
