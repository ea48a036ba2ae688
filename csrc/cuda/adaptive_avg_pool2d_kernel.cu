// CUDA kernels of pycnn.adaptive_avg_pool2d and its backward.
//
// The forward has one thread per output cell, averaging its adaptive window;
// the 1x1 output (global average pooling, the common case at the end of a
// CNN) instead reduces each plane with a whole warp. The backward has one
// thread per input element, gathering the gradients of the cells that cover it.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.cuh"
#include "pycnn/checks.h"
#include "pycnn/geometry.h"
#include "pycnn/window.h"

namespace pycnn {
namespace {

using cuda::blocks_for;
using cuda::kThreadsPerBlock;
using cuda::launch;
using cuda::with_format_of;

// `planes` is N * C; each (n, c) plane is pooled on its own.
template <typename scalar_t>
__global__ void adaptive_avg_pool2d_forward_kernel(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ output, int64_t planes, AdaptiveAvgPool2dGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t out_plane = g.out_h * g.out_w;
  PYCNN_GRID_STRIDE_LOOP(index, planes * out_plane) {
    const int64_t plane = index / out_plane;
    const int64_t oh = (index % out_plane) / g.out_w;
    const int64_t ow = index % g.out_w;
    const int64_t h0 = adaptive_start(oh, g.in_h, g.out_h);
    const int64_t h1 = adaptive_end(oh, g.in_h, g.out_h);
    const int64_t w0 = adaptive_start(ow, g.in_w, g.out_w);
    const int64_t w1 = adaptive_end(ow, g.in_w, g.out_w);
    const scalar_t* plane_input = input + plane * g.in_h * g.in_w;
    opmath_t sum = 0;
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t w = w0; w < w1; ++w) {
        sum += static_cast<opmath_t>(plane_input[h * g.in_w + w]);
      }
    }
    output[index] = static_cast<scalar_t>(sum / static_cast<opmath_t>((h1 - h0) * (w1 - w0)));
  }
}

// The 1x1 case: one warp per plane, its lanes reading consecutive elements
// (coalesced) and combining their partial sums with shuffles. A thread per
// output would read a whole plane alone, with few threads for the GPU.
template <typename scalar_t>
__global__ void adaptive_avg_pool2d_forward_kernel_global(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ output, int64_t planes, int64_t plane_size) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int64_t kWarpsPerBlock = kThreadsPerBlock / C10_WARP_SIZE;
  const int lane = threadIdx.x % C10_WARP_SIZE;
  // The loop condition is the same for all lanes of a warp, as warp_sum needs.
  for (int64_t plane = blockIdx.x * kWarpsPerBlock + threadIdx.x / C10_WARP_SIZE; plane < planes;
       plane += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const scalar_t* plane_input = input + plane * plane_size;
    opmath_t sum = 0;
    for (int64_t i = lane; i < plane_size; i += C10_WARP_SIZE) {
      sum += static_cast<opmath_t>(plane_input[i]);
    }
    sum = cuda::warp_sum(sum);
    if (lane == 0) {
      output[plane] = static_cast<scalar_t>(sum / static_cast<opmath_t>(plane_size));
    }
  }
}

// grad_input[h][w] = sum of grad_output[oh][ow] / area(oh, ow) over the cells
// whose windows contain (h, w). A gather rather than a scatter from the
// cells: adjacent windows overlap, and a scatter would need atomics.
template <typename scalar_t>
__global__ void adaptive_avg_pool2d_backward_kernel(
    const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_input, int64_t planes,
    AdaptiveAvgPool2dGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t in_plane = g.in_h * g.in_w;
  PYCNN_GRID_STRIDE_LOOP(index, planes * in_plane) {
    const int64_t plane = index / in_plane;
    const int64_t h = (index % in_plane) / g.in_w;
    const int64_t w = index % g.in_w;
    // The cells covering row h lie in [adaptive_start(h, in, out), adaptive_end(h, in, out))
    // with the roles of the input and output sizes swapped (this range may hold
    // extra cells, never fewer); each candidate is then checked exactly.
    const int64_t oh_begin = adaptive_start(h, g.out_h, g.in_h);
    const int64_t oh_end = adaptive_end(h, g.out_h, g.in_h);
    const int64_t ow_begin = adaptive_start(w, g.out_w, g.in_w);
    const int64_t ow_end = adaptive_end(w, g.out_w, g.in_w);
    const scalar_t* plane_grad_output = grad_output + plane * g.out_h * g.out_w;
    opmath_t sum = 0;
    for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
      const int64_t h0 = adaptive_start(oh, g.in_h, g.out_h);
      const int64_t h1 = adaptive_end(oh, g.in_h, g.out_h);
      if (h < h0 || h >= h1) {
        continue;
      }
      for (int64_t ow = ow_begin; ow < ow_end; ++ow) {
        const int64_t w0 = adaptive_start(ow, g.in_w, g.out_w);
        const int64_t w1 = adaptive_end(ow, g.in_w, g.out_w);
        if (w >= w0 && w < w1) {
          sum += static_cast<opmath_t>(plane_grad_output[oh * g.out_w + ow]) /
              static_cast<opmath_t>((h1 - h0) * (w1 - w0));
        }
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// --- entry points -----------------------------------------------------------

Tensor adaptive_avg_pool2d_cuda(const Tensor& input_arg, IntArrayRef output_size) {
  const auto output_shape = adaptive_avg_pool2d_output_shape(input_arg, output_size);
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const Tensor input = input_arg.contiguous();
  Tensor output = at::empty(output_shape, input.options());
  if (output.numel() == 0) {
    return with_format_of(output, input_arg);
  }
  const AdaptiveAvgPool2dGeometry g = make_adaptive_avg_pool2d_geometry(input.sizes(), output_shape);
  const int64_t planes = input.size(0) * input.size(1);
  PYCNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_adaptive_avg_pool2d_cuda", [&] {
    if (g.out_h == 1 && g.out_w == 1) {
      // One warp per plane: blocks_for counts threads, so ask for a warp's worth per plane.
      launch(
          adaptive_avg_pool2d_forward_kernel_global<scalar_t>, blocks_for(planes * C10_WARP_SIZE),
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), planes, g.in_h * g.in_w);
    } else {
      launch(
          adaptive_avg_pool2d_forward_kernel<scalar_t>, blocks_for(output.numel()), input.const_data_ptr<scalar_t>(),
          output.mutable_data_ptr<scalar_t>(), planes, g);
    }
  });
  return with_format_of(output, input_arg);
}

Tensor adaptive_avg_pool2d_backward_cuda(const Tensor& grad_output_arg, const Tensor& input_arg) {
  constexpr const char* op = "pycnn.adaptive_avg_pool2d_backward";
  check_rank(op, "grad_output", grad_output_arg, 4, "(N, C, OH, OW)");
  const auto output_shape =
      adaptive_avg_pool2d_output_shape(input_arg, {grad_output_arg.size(2), grad_output_arg.size(3)});
  check_grad_output(op, grad_output_arg, input_arg, output_shape);
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const Tensor grad_output = grad_output_arg.contiguous();
  Tensor grad_input = at::empty(input_arg.sizes(), input_arg.options());
  if (grad_input.numel() == 0) {
    return with_format_of(grad_input, input_arg);
  }
  const AdaptiveAvgPool2dGeometry g = make_adaptive_avg_pool2d_geometry(input_arg.sizes(), output_shape);
  const int64_t planes = input_arg.size(0) * input_arg.size(1);
  PYCNN_DISPATCH_FLOATING_TYPES(input_arg.scalar_type(), "pycnn_adaptive_avg_pool2d_backward_cuda", [&] {
    launch(
        adaptive_avg_pool2d_backward_kernel<scalar_t>, blocks_for(grad_input.numel()),
        grad_output.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), planes, g);
  });
  return with_format_of(grad_input, input_arg);
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CUDA, m) {
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cuda);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cuda);
}

}  // namespace pycnn
