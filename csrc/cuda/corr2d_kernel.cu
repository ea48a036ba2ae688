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
// The GEMM's result is channel-major ([O][samples][L]) where the output is
// sample-major (N, O, OH, OW). With one group, the GEMM is instead batched over
// the chunk's samples -- sample b's [K][L] block of the columns has row stride
// samples * L, which cuBLAS's strided batched GEMM takes as it is -- and
// writes each sample's [O][L] straight into the output; with one sample per
// chunk the channel-major result is the output. Only several groups and
// several samples per chunk go through a channel-major buffer and a copy.
// The backward passes run the same steps in reverse (col2im is a gather, see
// col2im_kernel). backward_input reads grad_output in place in the same cases;
// backward_weight, whose GEMM also sums over the samples, does for one sample
// per chunk, and for one group when K < L (see corr2d_backward_weight_cuda).
//
// The elementwise kernels index in 32 bits when every index fits
// (fits_32bit_indexing), else in 64 bits.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>

#include "common.cuh"
#include "pycnn/checks.h"
#include "pycnn/geometry.h"
#include "pycnn/indexing.h"

namespace pycnn {
namespace {

using cuda::blocks_for;
using cuda::launch;
using cuda::with_format_of;

// Corr2dGeometry's sizes in the kernels' index type.
template <typename index_t>
struct Corr2dSizes {
  index_t channels, in_h, in_w, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, out_h,
      out_w;
  explicit Corr2dSizes(const Corr2dGeometry& g)
      : channels(g.channels),
        in_h(g.in_h),
        in_w(g.in_w),
        kernel_h(g.kernel_h),
        kernel_w(g.kernel_w),
        stride_h(g.stride_h),
        stride_w(g.stride_w),
        pad_h(g.pad_h),
        pad_w(g.pad_w),
        dilation_h(g.dilation_h),
        dilation_w(g.dilation_w),
        out_h(g.out_h),
        out_w(g.out_w) {}
};

template <typename scalar_t, typename index_t>
__global__ void im2col_kernel(
    const scalar_t* __restrict__ input, scalar_t* __restrict__ columns, Corr2dSizes<index_t> g, index_t samples) {
  const index_t out_plane = g.out_h * g.out_w;
  const index_t row_length = samples * out_plane;
  const index_t count = g.channels * g.kernel_h * g.kernel_w * row_length;
  PYCNN_GRID_STRIDE_LOOP_T(index_t, index, count) {
    const index_t row = index / row_length;
    const index_t position = index % row_length;
    const index_t kj = row % g.kernel_w;
    const index_t ki = (row / g.kernel_w) % g.kernel_h;
    const index_t c = row / (g.kernel_w * g.kernel_h);
    const index_t b = position / out_plane;
    const index_t oh = (position % out_plane) / g.out_w;
    const index_t ow = position % g.out_w;
    const index_t h = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
    const index_t w = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
    const bool inside = h >= 0 && h < g.in_h && w >= 0 && w < g.in_w;
    columns[index] = inside ? input[((b * g.channels + c) * g.in_h + h) * g.in_w + w] : scalar_t(0);
  }
}

// The adjoint of im2col: grad_input[b][c][h][w] is the sum of the column
// entries that im2col read from input[b][c][h][w]. Written as a gather (each
// thread owns one input element and visits the at most kH * kW entries that
// read it) rather than a scatter with atomics, so it needs no float32 buffer
// for half / bfloat16 and its result does not depend on thread scheduling.
template <typename scalar_t, typename index_t>
__global__ void col2im_kernel(
    const scalar_t* __restrict__ columns, scalar_t* __restrict__ grad_input, Corr2dSizes<index_t> g, index_t samples) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t out_plane = g.out_h * g.out_w;
  const index_t row_length = samples * out_plane;
  const index_t count = samples * g.channels * g.in_h * g.in_w;
  PYCNN_GRID_STRIDE_LOOP_T(index_t, index, count) {
    const index_t w = index % g.in_w;
    const index_t h = (index / g.in_w) % g.in_h;
    const index_t c = (index / (g.in_w * g.in_h)) % g.channels;
    const index_t b = index / (g.in_w * g.in_h * g.channels);
    opmath_t sum = 0;
    for (index_t ki = 0; ki < g.kernel_h; ++ki) {
      // Kernel row ki reads input row h for the output row oh with oh * sH = h + pH - ki * dH.
      const index_t oh_times_stride = h + g.pad_h - ki * g.dilation_h;
      if (oh_times_stride < 0 || oh_times_stride % g.stride_h != 0 || oh_times_stride / g.stride_h >= g.out_h) {
        continue;
      }
      const index_t oh = oh_times_stride / g.stride_h;
      for (index_t kj = 0; kj < g.kernel_w; ++kj) {
        const index_t ow_times_stride = w + g.pad_w - kj * g.dilation_w;
        if (ow_times_stride < 0 || ow_times_stride % g.stride_w != 0 || ow_times_stride / g.stride_w >= g.out_w) {
          continue;
        }
        const index_t ow = ow_times_stride / g.stride_w;
        const index_t row = (c * g.kernel_h + ki) * g.kernel_w + kj;
        sum += static_cast<opmath_t>(columns[row * row_length + b * out_plane + oh * g.out_w + ow]);
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// grad_bias[o] = the sum of grad_output[n][o][l] over n and l, in two passes
// so that every channel gets many blocks (a channel holds N * L elements,
// hundreds of MB for a large batch), without atomics:
// 1. block (o, p) of grad_bias_partial_kernel sums the p-th of `splits`
//    contiguous slices of channel o's N * L elements (in the order
//    n * L + l), in opmath, into partial[o * splits + p];
// 2. block o of grad_bias_final_kernel sums partial[o * splits ...] in a fixed
//    order and rounds once to scalar_t.
// Both passes assign elements to threads, and combine the threads' sums, in a
// fixed order, so the result does not depend on scheduling.
template <typename scalar_t, typename index_t>
__global__ void grad_bias_partial_kernel(
    const scalar_t* __restrict__ grad_output, at::opmath_type<scalar_t>* __restrict__ partial, index_t out_channels,
    index_t out_plane, index_t channel_numel, index_t splits, index_t slice_length) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t o = static_cast<index_t>(blockIdx.x) / splits;
  const index_t p = static_cast<index_t>(blockIdx.x) % splits;
  const index_t begin = p * slice_length;
  const index_t end = begin + slice_length < channel_numel ? begin + slice_length : channel_numel;
  opmath_t sum = 0;
  for (index_t i = begin + static_cast<index_t>(threadIdx.x); i < end; i += static_cast<index_t>(blockDim.x)) {
    const index_t n = i / out_plane;
    sum += static_cast<opmath_t>(grad_output[(n * out_channels + o) * out_plane + (i - n * out_plane)]);
  }
  sum = cuda::block_sum(sum);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = sum;
  }
}

template <typename scalar_t>
__global__ void grad_bias_final_kernel(
    const at::opmath_type<scalar_t>* __restrict__ partial, scalar_t* __restrict__ grad_bias, int64_t splits) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t o = blockIdx.x;
  opmath_t sum = 0;
  for (int64_t p = threadIdx.x; p < splits; p += blockDim.x) {
    sum += partial[o * splits + p];
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

// The columns of one group ([K][samples * L], as columns_view's [0] for one
// group) as `samples` [K][L] matrices side by side: [samples][K][L] with
// strides (L, samples * L, 1), a view that a strided batched GEMM reads and
// writes as it is.
Tensor columns_by_sample(const Tensor& group_columns, int64_t samples) {
  return group_columns.view({group_columns.size(0), samples, group_columns.size(1) / samples}).transpose(0, 1);
}

// grad_output of samples [first, first + samples), channel-major as the
// columns: [G][O / G][samples * L]. A view for one sample; a copy otherwise.
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
  const bool use_32bit = fits_32bit_indexing({samples * sample_size, count}, count, cuda::grid_threads(count));
  PYCNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_im2col_cuda", [&] {
    PYCNN_DISPATCH_INDEX_TYPE(use_32bit, [&] {
      launch(
          im2col_kernel<scalar_t, index_t>, blocks_for(count), input.const_data_ptr<scalar_t>() + first * sample_size,
          columns.mutable_data_ptr<scalar_t>(), Corr2dSizes<index_t>(g), static_cast<index_t>(samples));
    });
  });
}

// Writes samples [first, first + samples) of grad_input from `columns`.
void col2im(const Tensor& columns, int64_t first, int64_t samples, const Corr2dGeometry& g, Tensor& grad_input) {
  const int64_t sample_size = g.channels * g.in_h * g.in_w;
  const int64_t count = samples * sample_size;
  if (count == 0) {
    return;
  }
  const bool use_32bit = fits_32bit_indexing({columns.numel(), count}, count, cuda::grid_threads(count));
  PYCNN_DISPATCH_FLOATING_TYPES(columns.scalar_type(), "pycnn_col2im_cuda", [&] {
    PYCNN_DISPATCH_INDEX_TYPE(use_32bit, [&] {
      launch(
          col2im_kernel<scalar_t, index_t>, blocks_for(count), columns.const_data_ptr<scalar_t>(),
          grad_input.mutable_data_ptr<scalar_t>() + first * sample_size, Corr2dSizes<index_t>(g),
          static_cast<index_t>(samples));
    });
  });
}

// grad_bias_partial_kernel's slices: about kBiasSliceLength elements each (64
// per thread), at most kMaxBiasSplits per channel.
constexpr int64_t kBiasSliceLength = int64_t{64} * cuda::kThreadsPerBlock;
constexpr int64_t kMaxBiasSplits = 1024;

// grad_output (contiguous, (N, O, OH, OW)) summed over N, OH and OW.
Tensor grad_bias_of(const Tensor& grad_output) {
  const int64_t batch = grad_output.size(0);
  const int64_t out_channels = grad_output.size(1);
  const int64_t out_plane = grad_output.size(2) * grad_output.size(3);
  const int64_t channel_numel = batch * out_plane;
  Tensor grad_bias = at::empty({out_channels}, grad_output.options());
  if (out_channels == 0) {
    return grad_bias;
  }
  if (channel_numel == 0) {
    return grad_bias.zero_();
  }
  const int64_t splits = std::min((channel_numel + kBiasSliceLength - 1) / kBiasSliceLength, kMaxBiasSplits);
  const int64_t slice_length = (channel_numel + splits - 1) / splits;
  const Tensor partial =
      at::empty({out_channels * splits}, grad_output.options().dtype(at::toOpMathType(grad_output.scalar_type())));
  const bool use_32bit =
      fits_32bit_indexing({grad_output.numel(), out_channels * splits}, channel_numel, cuda::kThreadsPerBlock);
  PYCNN_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "pycnn_corr2d_grad_bias_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    PYCNN_DISPATCH_INDEX_TYPE(use_32bit, [&] {
      launch(
          grad_bias_partial_kernel<scalar_t, index_t>, static_cast<unsigned int>(out_channels * splits),
          grad_output.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<opmath_t>(),
          static_cast<index_t>(out_channels), static_cast<index_t>(out_plane), static_cast<index_t>(channel_numel),
          static_cast<index_t>(splits), static_cast<index_t>(slice_length));
    });
    launch(
        grad_bias_final_kernel<scalar_t>, static_cast<unsigned int>(out_channels), partial.const_data_ptr<opmath_t>(),
        grad_bias.mutable_data_ptr<scalar_t>(), splits);
  });
  return grad_bias;
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
    // The bias enters as the GEMM's accumulator (beta = 1).
    if (groups == 1) {
      // One GEMM per sample, batched: output[b] ([O][L]) = W ([O][K]) @ columns of sample b ([K][L]).
      Tensor result = output.narrow(0, first, samples).view({samples, out_channels, out_plane});
      const Tensor weights = weight_groups.expand({samples, out_channels, g.column_rows()});
      const Tensor sample_columns = columns_by_sample(columns[0], samples);
      if (has_bias) {
        at::baddbmm_out(result, bias_groups.expand({samples, out_channels, out_plane}), weights, sample_columns);
      } else {
        at::bmm_out(result, weights, sample_columns);
      }
    } else if (samples == 1) {
      // One sample: the channel-major result [G][O / G][L] is the sample's output.
      Tensor result = output[first].view({groups, out_channels / groups, out_plane});
      if (has_bias) {
        at::baddbmm_out(result, bias_groups.expand({groups, out_channels / groups, out_plane}), weight_groups, columns);
      } else {
        at::bmm_out(result, weight_groups, columns);
      }
    } else {
      // [G][O / G][samples * L], copied into the sample-major output.
      const Tensor channel_major = has_bias
          ? at::baddbmm(
                bias_groups.expand({groups, out_channels / groups, samples * out_plane}), weight_groups, columns)
          : at::bmm(weight_groups, columns);
      output.narrow(0, first, samples)
          .view({samples, out_channels, out_plane})
          .copy_(channel_major.view({out_channels, samples, out_plane}).transpose(0, 1));
    }
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
  const int64_t out_plane = g.out_h * g.out_w;
  // W_g^T: [G][K][O / G].
  const Tensor weight_groups_t = weight.view({groups, out_channels / groups, g.column_rows() / groups}).transpose(1, 2);

  const int64_t chunk = samples_per_chunk(g, batch);
  const Tensor column_buffer = at::empty({g.column_rows() * chunk * out_plane}, grad_output.options());
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t samples = std::min(chunk, batch - first);
    Tensor columns = columns_view(column_buffer, g, samples, groups);
    if (groups == 1) {
      // Batched over the samples, reading grad_output in place: columns of sample b = W^T @ grad_output[b].
      Tensor sample_columns = columns_by_sample(columns[0], samples);
      at::bmm_out(
          sample_columns, weight_groups_t.expand({samples, g.column_rows(), out_channels}),
          grad_output.narrow(0, first, samples).view({samples, out_channels, out_plane}));
    } else {
      at::bmm_out(columns, weight_groups_t, grad_output_channel_major(grad_output, first, samples, groups));
    }
    col2im(columns, first, samples, g, grad_input);
  }
  return with_format_of(grad_input, grad_output_arg);
}

std::tuple<Tensor, Tensor> corr2d_backward_weight_cuda(
    const Tensor& grad_output_arg, const Tensor& input_arg, c10::SymIntArrayRef weight_size_arg, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups, std::array<bool, 2> output_mask) {
  const IntArrayRef weight_size = C10_AS_INTARRAYREF_SLOW(weight_size_arg);
  check_corr2d_backward(
      "pycnn.corr2d_backward_weight", grad_output_arg, input_arg, "input", input_arg.sizes(), weight_size, stride,
      padding, dilation, groups);

  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see corr2d_cuda
  const Tensor grad_output = grad_output_arg.contiguous();
  // An output not asked for (output_mask) is an empty (0,) tensor, and not computed.
  const Tensor grad_bias = output_mask[1] ? grad_bias_of(grad_output) : at::empty({0}, input_arg.options());
  if (!output_mask[0]) {
    return {at::empty({0}, input_arg.options()), grad_bias};
  }

  const Tensor input = input_arg.contiguous();
  const Corr2dGeometry g = make_corr2d_geometry(input.sizes(), weight_size, stride, padding, dilation);
  const int64_t batch = input.size(0);
  const int64_t out_channels = weight_size[0];
  const int64_t out_plane = g.out_h * g.out_w;

  // The chunks' contributions are summed in the operator's accumulation type
  // (float32 for half / bfloat16), so that many chunks do not add many roundings.
  // A chunk's GEMM sums over its samples too, which takes grad_output
  // channel-major ([G][O / G][samples * L], a copy for several samples). A GEMM
  // batched over the samples reads grad_output in place but cannot sum over
  // them: it writes one [O][K] product per sample, summed afterwards. That is
  // less memory traffic than the copy when K < L, and is taken then for one
  // group in float32 / float64 (for half / bfloat16 the per-sample products
  // would each be rounded to half before the sum).
  const bool per_sample_products = groups == 1 && g.column_rows() < out_plane && !is_reduced_precision(input);
  Tensor grad_weight_sum = at::zeros(
      {groups, out_channels / groups, g.column_rows() / groups},
      input.options().dtype(at::toOpMathType(input.scalar_type())));
  const int64_t chunk = samples_per_chunk(g, batch);
  const Tensor column_buffer = at::empty({g.column_rows() * chunk * out_plane}, input.options());
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t samples = std::min(chunk, batch - first);
    Tensor columns = columns_view(column_buffer, g, samples, groups);
    im2col(input, first, samples, g, columns);
    if (per_sample_products && samples > 1) {
      // [samples][O][L] @ [samples][L][K] (the columns in place, see columns_by_sample), then summed over the samples.
      grad_weight_sum[0].add_(
          at::bmm(
              grad_output.narrow(0, first, samples).view({samples, out_channels, out_plane}),
              columns_by_sample(columns[0], samples).transpose(1, 2))
              .sum(0));
    } else {
      grad_weight_sum.add_(
          at::bmm(grad_output_channel_major(grad_output, first, samples, groups), columns.transpose(1, 2)));
    }
  }
  return {grad_weight_sum.view(weight_size).to(input.scalar_type()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CUDA, m) {
  m.impl("corr2d", &corr2d_cuda);
  m.impl("corr2d_backward_input", &corr2d_backward_input_cuda);
  m.impl("corr2d_backward_weight", &corr2d_backward_weight_cuda);
}

}  // namespace pycnn
