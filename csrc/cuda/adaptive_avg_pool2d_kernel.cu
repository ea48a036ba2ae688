// CUDA kernels of pycnn.adaptive_avg_pool2d and its backward.
//
// The forward has one thread per output cell, averaging its adaptive window;
// the 1x1 output (global average pooling, the common case at the end of a
// CNN) instead reduces each plane with a whole warp, and so does any output
// whose windows are large (uses_warp_per_cell): a warp per cell. The backward has one
// thread per input element, gathering the gradients of the cells that cover it.

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
using cuda::kThreadsPerBlock;
using cuda::launch;
using cuda::with_format_of;

// AdaptiveAvgPool2dGeometry in the kernels' index type.
template <typename index_t>
struct AdaptiveSizes {
  index_t in_h, in_w, out_h, out_w;
  explicit AdaptiveSizes(const AdaptiveAvgPool2dGeometry& g)
      : in_h(g.in_h), in_w(g.in_w), out_h(g.out_h), out_w(g.out_w) {}
};

// `planes` is N * C; each (n, c) plane is pooled on its own. index_t is
// int32_t when every index fits (fits_32bit_indexing), else int64_t: the
// divisions that find an item's plane, position and window are then 32-bit.
template <typename scalar_t, typename index_t>
__global__ void adaptive_avg_pool2d_forward_kernel(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ output, index_t planes, AdaptiveSizes<index_t> g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t out_plane = g.out_h * g.out_w;
  PYCNN_GRID_STRIDE_LOOP_T(index_t, index, planes * out_plane) {
    const index_t plane = index / out_plane;
    const index_t oh = (index % out_plane) / g.out_w;
    const index_t ow = index % g.out_w;
    const index_t h0 = adaptive_start<index_t>(oh, g.in_h, g.out_h);
    const index_t h1 = adaptive_end<index_t>(oh, g.in_h, g.out_h);
    const index_t w0 = adaptive_start<index_t>(ow, g.in_w, g.out_w);
    const index_t w1 = adaptive_end<index_t>(ow, g.in_w, g.out_w);
    const scalar_t* plane_input = input + plane * g.in_h * g.in_w;
    opmath_t sum = 0;
    for (index_t h = h0; h < h1; ++h) {
      for (index_t w = w0; w < w1; ++w) {
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

// Large windows: one warp per output cell, its lanes striding along each row
// of the window (neighbouring lanes read neighbouring elements) and combining
// their sums with warp_sum. A thread per cell would sum a large window alone,
// with few threads for the GPU when the output is small ((1000, 1000) -> (3, 2)
// is 6 cells of about 170,000 elements each per plane), and neighbouring
// threads reading a window's width apart. Each lane adds its elements in a
// fixed order, and warp_sum combines the lanes in a fixed order: the result
// does not depend on scheduling.
template <typename scalar_t>
__global__ void adaptive_avg_pool2d_forward_kernel_warp(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ output, int64_t planes, AdaptiveAvgPool2dGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int64_t kWarpsPerBlock = kThreadsPerBlock / C10_WARP_SIZE;
  const int lane = threadIdx.x % C10_WARP_SIZE;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t cells = planes * out_plane;
  // The loop condition is the same for all lanes of a warp, as warp_sum needs.
  for (int64_t cell = blockIdx.x * kWarpsPerBlock + threadIdx.x / C10_WARP_SIZE; cell < cells;
       cell += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t plane = cell / out_plane;
    const int64_t oh = (cell % out_plane) / g.out_w;
    const int64_t ow = cell % g.out_w;
    const int64_t h0 = adaptive_start<int64_t>(oh, g.in_h, g.out_h);
    const int64_t h1 = adaptive_end<int64_t>(oh, g.in_h, g.out_h);
    const int64_t w0 = adaptive_start<int64_t>(ow, g.in_w, g.out_w);
    const int64_t w1 = adaptive_end<int64_t>(ow, g.in_w, g.out_w);
    const scalar_t* plane_input = input + plane * g.in_h * g.in_w;
    opmath_t sum = 0;
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t w = w0 + lane; w < w1; w += C10_WARP_SIZE) {
        sum += static_cast<opmath_t>(plane_input[h * g.in_w + w]);
      }
    }
    sum = cuda::warp_sum(sum);
    if (lane == 0) {
      output[cell] = static_cast<scalar_t>(sum / static_cast<opmath_t>((h1 - h0) * (w1 - w0)));
    }
  }
}

// grad_input[h][w] = sum of grad_output[oh][ow] / area(oh, ow) over the cells
// whose windows contain (h, w). A gather rather than a scatter from the
// cells: adjacent windows overlap, and a scatter would need atomics.
template <typename scalar_t, typename index_t>
__global__ void adaptive_avg_pool2d_backward_kernel(
    const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_input, index_t planes,
    AdaptiveSizes<index_t> g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t in_plane = g.in_h * g.in_w;
  PYCNN_GRID_STRIDE_LOOP_T(index_t, index, planes * in_plane) {
    const index_t plane = index / in_plane;
    const index_t h = (index % in_plane) / g.in_w;
    const index_t w = index % g.in_w;
    // The cells covering row h lie in [adaptive_start(h, in, out), adaptive_end(h, in, out))
    // with the roles of the input and output sizes swapped (this range may hold
    // extra cells, never fewer); each candidate is then checked exactly.
    const index_t oh_begin = adaptive_start<index_t>(h, g.out_h, g.in_h);
    const index_t oh_end = adaptive_end<index_t>(h, g.out_h, g.in_h);
    const index_t ow_begin = adaptive_start<index_t>(w, g.out_w, g.in_w);
    const index_t ow_end = adaptive_end<index_t>(w, g.out_w, g.in_w);
    const scalar_t* plane_grad_output = grad_output + plane * g.out_h * g.out_w;
    opmath_t sum = 0;
    for (index_t oh = oh_begin; oh < oh_end; ++oh) {
      const index_t h0 = adaptive_start<index_t>(oh, g.in_h, g.out_h);
      const index_t h1 = adaptive_end<index_t>(oh, g.in_h, g.out_h);
      if (h < h0 || h >= h1) {
        continue;
      }
      for (index_t ow = ow_begin; ow < ow_end; ++ow) {
        const index_t w0 = adaptive_start<index_t>(ow, g.in_w, g.out_w);
        const index_t w1 = adaptive_end<index_t>(ow, g.in_w, g.out_w);
        if (w >= w0 && w < w1) {
          sum += static_cast<opmath_t>(plane_grad_output[oh * g.out_w + ow]) /
              static_cast<opmath_t>((h1 - h0) * (w1 - w0));
        }
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// --- host helpers -----------------------------------------------------------

// Whether the forward takes a warp per output cell: when a window may hold at
// least kWarpWindowArea elements (8 per lane). An adaptive window is at most
// ceil(in / out) + 1 long along each axis.
constexpr int64_t kWarpWindowArea = 8 * C10_WARP_SIZE;

// Whether the thread-per-item kernels (forward: `count` = the output's
// numel; backward: the input's) can index in 32 bits: besides the tensors'
// offsets, the window bounds compute up to (out + 1) * in and (in + 1) * out
// along each axis (the backward swaps the roles of in and out).
bool fits_32bit_indexing_for(const AdaptiveAvgPool2dGeometry& g, int64_t input_numel, int64_t count) {
  const int64_t output_numel = input_numel / std::max<int64_t>(g.in_h * g.in_w, 1) * g.out_h * g.out_w;
  return fits_32bit_indexing(
      {input_numel, output_numel, (g.out_h + 1) * (g.in_h + 1), (g.out_w + 1) * (g.in_w + 1)}, count,
      cuda::grid_threads(count));
}

bool uses_warp_per_cell(const AdaptiveAvgPool2dGeometry& g) {
  const int64_t max_h = (g.in_h + g.out_h - 1) / g.out_h + 1;
  const int64_t max_w = (g.in_w + g.out_w - 1) / g.out_w + 1;
  return max_h * max_w >= kWarpWindowArea;
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
    } else if (uses_warp_per_cell(g)) {
      launch(
          adaptive_avg_pool2d_forward_kernel_warp<scalar_t>, blocks_for(output.numel() * C10_WARP_SIZE),
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), planes, g);
    } else {
      PYCNN_DISPATCH_INDEX_TYPE(fits_32bit_indexing_for(g, input.numel(), output.numel()), [&] {
        launch(
            adaptive_avg_pool2d_forward_kernel<scalar_t, index_t>, blocks_for(output.numel()),
            input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), static_cast<index_t>(planes),
            AdaptiveSizes<index_t>(g));
      });
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
    PYCNN_DISPATCH_INDEX_TYPE(fits_32bit_indexing_for(g, grad_input.numel(), grad_input.numel()), [&] {
      launch(
          adaptive_avg_pool2d_backward_kernel<scalar_t, index_t>, blocks_for(grad_input.numel()),
          grad_output.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), static_cast<index_t>(planes),
          AdaptiveSizes<index_t>(g));
    });
  });
  return with_format_of(grad_input, input_arg);
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CUDA, m) {
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cuda);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cuda);
}

}  // namespace pycnn
