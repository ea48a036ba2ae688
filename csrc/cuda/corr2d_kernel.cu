// CUDA kernels of pycnn.corr2d (2-D cross-correlation) and its backward, as
// im2col / col2im kernels around cuBLAS GEMMs.
//
// For a chunk of `samples` consecutive samples, im2col unfolds the input into
//   columns[(c * kH + ki) * kW + kj][b * L + oh * OW + ow]
//     = input[first + b][c][oh * sH - pH + ki * dH][ow * sW - pW + kj * dW]   (0 in the padding),
// with L = OH * OW. Its rows are grouped by input channel, so viewed as
// [G][K][samples * L] (K = C / G * kH * kW) group g's block is exactly what
// weight[g] (viewed [O / G][K]) multiplies: the correlation of all groups is
// one batched GEMM (at::bmm, cuBLAS). Putting several samples side by side
// gives cuBLAS wide matrices even for small images; the chunk size bounds the
// column buffer's memory.
//
// The GEMM result is channel-major ([O][samples][L]); it is copied into the
// sample-major (N, O, OH, OW) output. The backward passes run the same steps
// in reverse (col2im is a gather, see col2im_kernel).

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.cuh"
#include "pycnn/checks.h"
#include "pycnn/geometry.h"

namespace pycnn {
namespace {

using cuda::blocks_for;
using cuda::launch;
using cuda::with_format_of;

template <typename scalar_t>
__global__ void im2col_kernel(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ columns, Corr2dGeometry g, int64_t samples) {
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t row_length = samples * out_plane;
  const int64_t count = g.channels * g.kernel_h * g.kernel_w * row_length;
  PYCNN_GRID_STRIDE_LOOP(index, count) {
    const int64_t row = index / row_length;
    const int64_t position = index % row_length;
    const int64_t kj = row % g.kernel_w;
    const int64_t ki = (row / g.kernel_w) % g.kernel_h;
    const int64_t c = row / (g.kernel_w * g.kernel_h);
    const int64_t b = position / out_plane;
    const int64_t oh = (position % out_plane) / g.out_w;
    const int64_t ow = position % g.out_w;
    const int64_t h = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
    const int64_t w = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
    const bool inside = h >= 0 && h < g.in_h && w >= 0 && w < g.in_w;
    columns[index] = inside ? input[((b * g.channels + c) * g.in_h + h) * g.in_w + w] : scalar_t(0);
  }
}

// The adjoint of im2col: grad_input[b][c][h][w] is the sum of the column
// entries that im2col read from input[b][c][h][w]. Written as a gather (each
// thread owns one input element and visits the at most kH * kW entries that
// read it) rather than a scatter with atomics, so it needs no float32 buffer
// for half / bfloat16 and its result does not depend on thread scheduling.
template <typename scalar_t>
__global__ void col2im_kernel(
    const scalar_t* __restrict__ columns, scalar_t* __restrict__ grad_input, Corr2dGeometry g, int64_t samples) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t row_length = samples * out_plane;
  const int64_t count = samples * g.channels * g.in_h * g.in_w;
  PYCNN_GRID_STRIDE_LOOP(index, count) {
    const int64_t w = index % g.in_w;
    const int64_t h = (index / g.in_w) % g.in_h;
    const int64_t c = (index / (g.in_w * g.in_h)) % g.channels;
    const int64_t b = index / (g.in_w * g.in_h * g.channels);
    opmath_t sum = 0;
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      // Kernel row ki reads input row h for the output row oh with oh * sH = h + pH - ki * dH.
      const int64_t oh_times_stride = h + g.pad_h - ki * g.dilation_h;
      if (oh_times_stride < 0 || oh_times_stride % g.stride_h != 0 || oh_times_stride / g.stride_h >= g.out_h) {
        continue;
      }
      const int64_t oh = oh_times_stride / g.stride_h;
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t ow_times_stride = w + g.pad_w - kj * g.dilation_w;
        if (ow_times_stride < 0 || ow_times_stride % g.stride_w != 0 || ow_times_stride / g.stride_w >= g.out_w) {
          continue;
        }
        const int64_t ow = ow_times_stride / g.stride_w;
        const int64_t row = (c * g.kernel_h + ki) * g.kernel_w + kj;
        sum += static_cast<opmath_t>(columns[row * row_length + b * out_plane + oh * g.out_w + ow]);
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// grad_bias[o] = sum of grad_output[n][o][oh][ow] over n, oh, ow: one block per
// output channel, so the sum needs no atomics and is deterministic.
template <typename scalar_t>
__global__ void grad_bias_kernel(
    const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_bias, int64_t batch, int64_t out_channels,
    int64_t out_plane) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t o = blockIdx.x;
  opmath_t sum = 0;
  for (int64_t i = threadIdx.x; i < batch * out_plane; i += blockDim.x) {
    const int64_t n = i / out_plane;
    sum += static_cast<opmath_t>(grad_output[(n * out_channels + o) * out_plane + i % out_plane]);
  }
  sum = cuda::block_sum(sum);
  if (threadIdx.x == 0) {
    grad_bias[o] = static_cast<scalar_t>(sum);
  }
}

// --- host helpers -----------------------------------------------------------

// Upper bound on the column buffer, in elements (256 MiB of float32): a chunk
// holds as many samples as fit, and always at least one (none for an empty batch).
constexpr int64_t kColumnBufferElements = int64_t{1} << 26;

int64_t samples_per_chunk(const Corr2dGeometry& g, int64_t batch) {
  const int64_t elements_per_sample = std::max<int64_t>(g.column_rows() * g.out_h * g.out_w, 1);
  return std::min(std::max<int64_t>(kColumnBufferElements / elements_per_sample, 1), batch);
}

// The column buffer of `samples` samples, viewed [G][K][samples * L] for the GEMMs.
Tensor columns_view(const Tensor& buffer, const Corr2dGeometry& g, int64_t samples, int64_t groups) {
  const int64_t row_length = samples * g.out_h * g.out_w;
  return buffer.narrow(0, 0, g.column_rows() * row_length).view({groups, g.column_rows() / groups, row_length});
}

// grad_output of samples [first, first + samples), channel-major as the
// columns: [G][O / G][samples * L].
Tensor grad_output_channel_major(const Tensor& grad_output, int64_t first, int64_t samples, int64_t groups) {
  const int64_t out_channels = grad_output.size(1);
  const int64_t out_plane = grad_output.size(2) * grad_output.size(3);
  return grad_output.narrow(0, first, samples)
      .view({samples, out_channels, out_plane})
      .transpose(0, 1)
      .reshape({groups, out_channels / groups, samples * out_plane});
}

// Fills `columns` with im2col of samples [first, first + samples) of `input`.
void im2col(const Tensor& input, int64_t first, int64_t samples, const Corr2dGeometry& g, Tensor& columns) {
  const int64_t count = columns.numel();
  if (count == 0) {
    return;
  }
  const int64_t sample_size = g.channels * g.in_h * g.in_w;
  PYCNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_im2col_cuda", [&] {
    launch(
        im2col_kernel<scalar_t>, blocks_for(count), input.const_data_ptr<scalar_t>() + first * sample_size,
        columns.mutable_data_ptr<scalar_t>(), g, samples);
  });
}

// Writes samples [first, first + samples) of grad_input from `columns`.
void col2im(const Tensor& columns, int64_t first, int64_t samples, const Corr2dGeometry& g, Tensor& grad_input) {
  const int64_t sample_size = g.channels * g.in_h * g.in_w;
  const int64_t count = samples * sample_size;
  if (count == 0) {
    return;
  }
  PYCNN_DISPATCH_FLOATING_TYPES(columns.scalar_type(), "pycnn_col2im_cuda", [&] {
    launch(
        col2im_kernel<scalar_t>, blocks_for(count), columns.const_data_ptr<scalar_t>(),
        grad_input.mutable_data_ptr<scalar_t>() + first * sample_size, g, samples);
  });
}

// --- entry points -----------------------------------------------------------

Tensor corr2d_cuda(
    const Tensor& input_arg, const Tensor& weight_arg, const std::optional<Tensor>& bias_arg, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const auto output_shape = corr2d_output_shape(input_arg, weight_arg, bias_arg, stride, padding, dilation, groups);
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  // The GEMMs are ATen calls on tensors that may require grad: this kernel is
  // itself what autograd records, so the calls skip autograd.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor input = input_arg.contiguous();
  const Tensor weight = weight_arg.contiguous();
  Tensor output = at::empty(output_shape, input.options());
  if (output.numel() == 0) {
    return with_format_of(output, input_arg);
  }
  const Corr2dGeometry g = make_corr2d_geometry(input.sizes(), weight.sizes(), stride, padding, dilation);
  const int64_t batch = input.size(0);
  const int64_t out_channels = output_shape[1];
  const int64_t out_plane = g.out_h * g.out_w;
  const Tensor weight_groups = weight.view({groups, out_channels / groups, g.column_rows() / groups});
  const bool has_bias = bias_arg.has_value() && bias_arg->defined();
  const Tensor bias_groups = has_bias ? bias_arg->contiguous().view({groups, out_channels / groups, 1}) : Tensor();

  const int64_t chunk = samples_per_chunk(g, batch);
  const Tensor column_buffer = at::empty({g.column_rows() * chunk * out_plane}, input.options());
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t samples = std::min(chunk, batch - first);
    Tensor columns = columns_view(column_buffer, g, samples, groups);
    im2col(input, first, samples, g, columns);
    // [G][O / G][samples * L]; the bias enters as the GEMM's accumulator (beta = 1).
    const Tensor channel_major = has_bias
        ? at::baddbmm(bias_groups.expand({groups, out_channels / groups, samples * out_plane}), weight_groups, columns)
        : at::bmm(weight_groups, columns);
    output.narrow(0, first, samples)
        .view({samples, out_channels, out_plane})
        .copy_(channel_major.view({out_channels, samples, out_plane}).transpose(0, 1));
  }
  return with_format_of(output, input_arg);
}

Tensor corr2d_backward_input_cuda(
    const Tensor& grad_output_arg, const Tensor& weight_arg, c10::SymIntArrayRef input_size_arg, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const IntArrayRef input_size = C10_AS_INTARRAYREF_SLOW(input_size_arg);
  check_corr2d_backward(
      "pycnn.corr2d_backward_input", grad_output_arg, weight_arg, "weight", input_size, weight_arg.sizes(), stride,
      padding, dilation, groups);

  const at::cuda::OptionalCUDAGuard guard(device_of(grad_output_arg));
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see corr2d_cuda
  const Tensor grad_output = grad_output_arg.contiguous();
  const Tensor weight = weight_arg.contiguous();
  Tensor grad_input = at::empty(input_size, grad_output.options());
  if (grad_input.numel() == 0) {
    return with_format_of(grad_input, grad_output_arg);
  }
  const Corr2dGeometry g = make_corr2d_geometry(input_size, weight.sizes(), stride, padding, dilation);
  const int64_t batch = input_size[0];
  const int64_t out_channels = weight.size(0);
  // W_g^T: [G][K][O / G].
  const Tensor weight_groups_t = weight.view({groups, out_channels / groups, g.column_rows() / groups}).transpose(1, 2);

  const int64_t chunk = samples_per_chunk(g, batch);
  const Tensor column_buffer = at::empty({g.column_rows() * chunk * g.out_h * g.out_w}, grad_output.options());
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t samples = std::min(chunk, batch - first);
    Tensor columns = columns_view(column_buffer, g, samples, groups);
    at::bmm_out(columns, weight_groups_t, grad_output_channel_major(grad_output, first, samples, groups));
    col2im(columns, first, samples, g, grad_input);
  }
  return with_format_of(grad_input, grad_output_arg);
}

std::tuple<Tensor, Tensor> corr2d_backward_weight_cuda(
    const Tensor& grad_output_arg, const Tensor& input_arg, c10::SymIntArrayRef weight_size_arg, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const IntArrayRef weight_size = C10_AS_INTARRAYREF_SLOW(weight_size_arg);
  check_corr2d_backward(
      "pycnn.corr2d_backward_weight", grad_output_arg, input_arg, "input", input_arg.sizes(), weight_size, stride,
      padding, dilation, groups);

  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see corr2d_cuda
  const Tensor input = input_arg.contiguous();
  const Tensor grad_output = grad_output_arg.contiguous();
  const Corr2dGeometry g = make_corr2d_geometry(input.sizes(), weight_size, stride, padding, dilation);
  const int64_t batch = input.size(0);
  const int64_t out_channels = weight_size[0];
  const int64_t out_plane = g.out_h * g.out_w;

  // The chunks' contributions are summed in the operator's accumulation type
  // (float32 for half / bfloat16), so that many chunks do not add many roundings.
  Tensor grad_weight_sum = at::zeros(
      {groups, out_channels / groups, g.column_rows() / groups},
      input.options().dtype(at::toOpMathType(input.scalar_type())));
  const int64_t chunk = samples_per_chunk(g, batch);
  const Tensor column_buffer = at::empty({g.column_rows() * chunk * out_plane}, input.options());
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t samples = std::min(chunk, batch - first);
    Tensor columns = columns_view(column_buffer, g, samples, groups);
    im2col(input, first, samples, g, columns);
    grad_weight_sum.add_(
        at::bmm(grad_output_channel_major(grad_output, first, samples, groups), columns.transpose(1, 2)));
  }
  const Tensor grad_weight = grad_weight_sum.view(weight_size).to(input.scalar_type());

  Tensor grad_bias = at::empty({out_channels}, input.options());
  PYCNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_corr2d_grad_bias_cuda", [&] {
    const unsigned int blocks = static_cast<unsigned int>(out_channels);  // one per output channel
    launch(
        grad_bias_kernel<scalar_t>, blocks, grad_output.const_data_ptr<scalar_t>(),
        grad_bias.mutable_data_ptr<scalar_t>(), batch, out_channels, out_plane);
  });
  return {grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CUDA, m) {
  m.impl("corr2d", &corr2d_cuda);
  m.impl("corr2d_backward_input", &corr2d_backward_input_cuda);
  m.impl("corr2d_backward_weight", &corr2d_backward_weight_cuda);
}

}  // namespace pycnn
