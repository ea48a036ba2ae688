// CUDA kernels of pycnn.batch_norm and its backward, over an (N, C, S) view
// of the input (S = L, H * W or 1).
//
// The per-channel reductions (mean and variance forward, Σ dy and
// Σ dy·(x - mean) backward) run in two passes: a grid of (C, splits) blocks,
// block (c, k) reducing the k-th contiguous slice of channel c's N * S
// elements, then one thread per channel combining its `splits` partial results
// in a fixed order. Splitting keeps the GPU busy when C is small and N * S
// large; the fixed order keeps the results deterministic (no atomics). An
// elementwise kernel then writes the output or grad_input.
//
// An (N, C) input (S = 1) has its own first-pass kernels (the *_rows_kernel
// ones): there a channel's elements are C apart and neighbouring channels are
// neighbours in memory, so their threads run along C, not along a channel.
//
// The statistics are computed with Welford's algorithm, whose partial results
// are merged with Chan et al.'s formula: unlike Σx² - (Σx)²/n it does not
// cancel catastrophically when the mean is large against the spread.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common.cuh"
#include "pycnn/checks.h"
#include "pycnn/geometry.h"

namespace pycnn {
namespace {

using cuda::blocks_for;
using cuda::kThreadsPerBlock;
using cuda::launch;
using cuda::with_format_of;

// How the elements of each channel are split between the blocks of the first pass.
struct ChannelSlices {
  int64_t splits;        // blocks per channel
  int64_t slice_length;  // elements per block (the last slices may be shorter or empty)
};

// The elements [begin, end) of a channel that slice `split` reduces.
struct SliceBounds {
  int64_t begin, end;
};
PYCNN_HOST_DEVICE SliceBounds slice_bounds(int64_t split, ChannelSlices slices, int64_t channel_numel) {
  const int64_t begin = std::min(split * slices.slice_length, channel_numel);
  return {begin, std::min(begin + slices.slice_length, channel_numel)};
}

// Element j (0 <= j < N * S) of channel c, j = n * S + s, in the contiguous (N, C, S) input.
__device__ __forceinline__ int64_t element_offset(int64_t j, int64_t c, const BatchNormShape& shape) {
  return ((j / shape.spatial) * shape.channels + c) * shape.spatial + j % shape.spatial;
}

// --- Welford statistics -----------------------------------------------------

template <typename acc_t>
struct Welford {
  int64_t count;
  acc_t mean;
  acc_t m2;  // Σ (x - mean)²
};

template <typename acc_t>
__device__ __forceinline__ void welford_add(Welford<acc_t>& stats, acc_t x) {
  ++stats.count;
  const acc_t delta = x - stats.mean;
  stats.mean += delta / static_cast<acc_t>(stats.count);
  stats.m2 += delta * (x - stats.mean);
}

// Chan et al.'s parallel merge of the statistics of two disjoint sets.
template <typename acc_t>
__device__ __forceinline__ Welford<acc_t> welford_merge(const Welford<acc_t>& a, const Welford<acc_t>& b) {
  const int64_t count = a.count + b.count;
  if (b.count == 0) {
    return a;
  }
  if (a.count == 0) {
    return b;
  }
  const acc_t delta = b.mean - a.mean;
  const acc_t b_fraction = static_cast<acc_t>(b.count) / static_cast<acc_t>(count);
  return {count, a.mean + delta * b_fraction, a.m2 + b.m2 + delta * delta * static_cast<acc_t>(a.count) * b_fraction};
}

// The statistics of a whole block of kThreadsPerBlock threads, valid in thread 0.
template <typename acc_t>
__device__ Welford<acc_t> block_welford(Welford<acc_t> stats) {
  __shared__ Welford<acc_t> warp_stats[kThreadsPerBlock / C10_WARP_SIZE];
  const int lane = threadIdx.x % C10_WARP_SIZE;
  const int warp = threadIdx.x / C10_WARP_SIZE;
  for (int offset = C10_WARP_SIZE / 2; offset > 0; offset /= 2) {
    const Welford<acc_t> other{__shfl_down_sync(0xffffffffu, stats.count, offset),
                               __shfl_down_sync(0xffffffffu, stats.mean, offset),
                               __shfl_down_sync(0xffffffffu, stats.m2, offset)};
    stats = welford_merge(stats, other);
  }
  if (lane == 0) {
    warp_stats[warp] = stats;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreadsPerBlock / C10_WARP_SIZE; ++w) {
      stats = welford_merge(stats, warp_stats[w]);
    }
  }
  return stats;
}

// --- forward kernels --------------------------------------------------------

// First pass: block (c, k) writes the mean and m2 of slice k of channel c to
// partial_*[c * splits + k] (its count follows from slice_bounds).
template <typename scalar_t>
__global__ void batch_stats_partial_kernel(
    const scalar_t* __restrict__ input, at::opmath_type<scalar_t>* __restrict__ partial_mean,
    at::opmath_type<scalar_t>* __restrict__ partial_m2, BatchNormShape shape, ChannelSlices slices) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t c = blockIdx.x;
  const int64_t split = blockIdx.y;
  const SliceBounds bounds = slice_bounds(split, slices, shape.channel_numel());
  Welford<opmath_t> stats{0, 0, 0};
  for (int64_t j = bounds.begin + threadIdx.x; j < bounds.end; j += blockDim.x) {
    welford_add(stats, static_cast<opmath_t>(input[element_offset(j, c, shape)]));
  }
  stats = block_welford(stats);
  if (threadIdx.x == 0) {
    partial_mean[c * slices.splits + split] = stats.mean;
    partial_m2[c * slices.splits + split] = stats.m2;
  }
}

// Second pass, one thread per channel: merges the slices into the batch mean
// and biased variance, writes save_mean / save_invstd and, when running
// statistics are given (non-null: the copies the operator returns), applies
// PyTorch's momentum update to them (the running variance takes the unbiased
// estimate).
template <typename scalar_t>
__global__ void batch_stats_finalize_kernel(
    const at::opmath_type<scalar_t>* __restrict__ partial_mean,
    const at::opmath_type<scalar_t>* __restrict__ partial_m2, BatchNormShape shape, ChannelSlices slices,
    at::opmath_type<scalar_t> eps, at::opmath_type<scalar_t> momentum,
    at::opmath_type<scalar_t>* __restrict__ save_mean, at::opmath_type<scalar_t>* __restrict__ save_invstd,
    scalar_t* __restrict__ running_mean, scalar_t* __restrict__ running_var) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t n = shape.channel_numel();
  PYCNN_GRID_STRIDE_LOOP(c, shape.channels) {
    Welford<opmath_t> stats{0, 0, 0};
    for (int64_t split = 0; split < slices.splits; ++split) {
      const SliceBounds bounds = slice_bounds(split, slices, n);
      const Welford<opmath_t> slice{bounds.end - bounds.begin, partial_mean[c * slices.splits + split],
                                    partial_m2[c * slices.splits + split]};
      stats = welford_merge(stats, slice);
    }
    const opmath_t variance = stats.m2 / static_cast<opmath_t>(n);
    save_mean[c] = stats.mean;
    save_invstd[c] = opmath_t(1) / std::sqrt(variance + eps);
    if (running_mean != nullptr) {
      const opmath_t unbiased_variance = n > 1 ? stats.m2 / static_cast<opmath_t>(n - 1) : variance;
      running_mean[c] = static_cast<scalar_t>(
          (opmath_t(1) - momentum) * static_cast<opmath_t>(running_mean[c]) + momentum * stats.mean);
      running_var[c] = static_cast<scalar_t>(
          (opmath_t(1) - momentum) * static_cast<opmath_t>(running_var[c]) + momentum * unbiased_variance);
    }
  }
}

// Evaluation with running statistics: they are the statistics used.
template <typename scalar_t>
__global__ void running_stats_kernel(
    const scalar_t* __restrict__ running_mean, const scalar_t* __restrict__ running_var, int64_t channels,
    at::opmath_type<scalar_t> eps, at::opmath_type<scalar_t>* __restrict__ save_mean,
    at::opmath_type<scalar_t>* __restrict__ save_invstd) {
  using opmath_t = at::opmath_type<scalar_t>;
  PYCNN_GRID_STRIDE_LOOP(c, channels) {
    save_mean[c] = static_cast<opmath_t>(running_mean[c]);
    save_invstd[c] = opmath_t(1) / std::sqrt(static_cast<opmath_t>(running_var[c]) + eps);
  }
}

// y = (x - mean) * invstd * weight + bias; weight / bias may be null (1 / 0).
template <typename scalar_t>
__global__ void batch_norm_output_kernel(
    const scalar_t* __restrict__ input, const at::opmath_type<scalar_t>* __restrict__ mean,
    const at::opmath_type<scalar_t>* __restrict__ invstd, const scalar_t* __restrict__ weight,
    const scalar_t* __restrict__ bias, scalar_t* __restrict__ output, BatchNormShape shape) {
  using opmath_t = at::opmath_type<scalar_t>;
  PYCNN_GRID_STRIDE_LOOP(index, shape.batch * shape.channels * shape.spatial) {
    const int64_t c = (index / shape.spatial) % shape.channels;
    const opmath_t gamma = weight != nullptr ? static_cast<opmath_t>(weight[c]) : opmath_t(1);
    const opmath_t beta = bias != nullptr ? static_cast<opmath_t>(bias[c]) : opmath_t(0);
    output[index] = static_cast<scalar_t>((static_cast<opmath_t>(input[index]) - mean[c]) * invstd[c] * gamma + beta);
  }
}

// --- backward kernels -------------------------------------------------------

// First pass: block (c, k) writes Σ dy and Σ dy·(x - mean) over slice k of
// channel c to partial_*[c * splits + k].
template <typename scalar_t>
__global__ void grad_sums_partial_kernel(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
    const at::opmath_type<scalar_t>* __restrict__ mean, at::opmath_type<scalar_t>* __restrict__ partial_sum_dy,
    at::opmath_type<scalar_t>* __restrict__ partial_dot, BatchNormShape shape, ChannelSlices slices) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t c = blockIdx.x;
  const int64_t split = blockIdx.y;
  const SliceBounds bounds = slice_bounds(split, slices, shape.channel_numel());
  const opmath_t channel_mean = mean[c];
  opmath_t sum_dy = 0;
  opmath_t dot = 0;
  for (int64_t j = bounds.begin + threadIdx.x; j < bounds.end; j += blockDim.x) {
    const int64_t offset = element_offset(j, c, shape);
    const opmath_t dy = static_cast<opmath_t>(grad_output[offset]);
    sum_dy += dy;
    dot += dy * (static_cast<opmath_t>(input[offset]) - channel_mean);
  }
  sum_dy = cuda::block_sum(sum_dy);
  dot = cuda::block_sum(dot);
  if (threadIdx.x == 0) {
    partial_sum_dy[c * slices.splits + split] = sum_dy;
    partial_dot[c * slices.splits + split] = dot;
  }
}

// Second pass, one thread per channel: grad_bias = Σ dy, grad_weight =
// Σ dy·(x - mean) · invstd, and the per-channel factors of grad_input:
// dx = (dy - mean_dy - (x - mean) · x_scale) · dy_scale, where with batch
// statistics mean_dy = Σ dy / n and x_scale = invstd² · Σ dy·(x - mean) / n
// (the gradient through the mean and variance), and without them both are 0.
template <typename scalar_t>
__global__ void grad_sums_finalize_kernel(
    const at::opmath_type<scalar_t>* __restrict__ partial_sum_dy,
    const at::opmath_type<scalar_t>* __restrict__ partial_dot, const at::opmath_type<scalar_t>* __restrict__ invstd,
    const scalar_t* __restrict__ weight, BatchNormShape shape, ChannelSlices slices, bool used_batch_stats,
    scalar_t* __restrict__ grad_weight, scalar_t* __restrict__ grad_bias,
    at::opmath_type<scalar_t>* __restrict__ mean_dy, at::opmath_type<scalar_t>* __restrict__ x_scale,
    at::opmath_type<scalar_t>* __restrict__ dy_scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t n = static_cast<opmath_t>(shape.channel_numel());
  PYCNN_GRID_STRIDE_LOOP(c, shape.channels) {
    opmath_t sum_dy = 0;
    opmath_t dot = 0;
    for (int64_t split = 0; split < slices.splits; ++split) {
      sum_dy += partial_sum_dy[c * slices.splits + split];
      dot += partial_dot[c * slices.splits + split];
    }
    const opmath_t channel_invstd = invstd[c];
    grad_bias[c] = static_cast<scalar_t>(sum_dy);
    grad_weight[c] = static_cast<scalar_t>(dot * channel_invstd);
    mean_dy[c] = used_batch_stats ? sum_dy / n : opmath_t(0);
    x_scale[c] = used_batch_stats ? dot / n * channel_invstd * channel_invstd : opmath_t(0);
    dy_scale[c] = channel_invstd * (weight != nullptr ? static_cast<opmath_t>(weight[c]) : opmath_t(1));
  }
}

template <typename scalar_t>
__global__ void batch_norm_grad_input_kernel(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
    const at::opmath_type<scalar_t>* __restrict__ mean, const at::opmath_type<scalar_t>* __restrict__ mean_dy,
    const at::opmath_type<scalar_t>* __restrict__ x_scale, const at::opmath_type<scalar_t>* __restrict__ dy_scale,
    bool used_batch_stats, scalar_t* __restrict__ grad_input, BatchNormShape shape) {
  using opmath_t = at::opmath_type<scalar_t>;
  PYCNN_GRID_STRIDE_LOOP(index, shape.batch * shape.channels * shape.spatial) {
    const int64_t c = (index / shape.spatial) % shape.channels;
    const opmath_t dy = static_cast<opmath_t>(grad_output[index]);
    // Without batch statistics x does not enter (so an infinite x gives no NaN).
    const opmath_t centered_dy =
        used_batch_stats ? dy - mean_dy[c] - (static_cast<opmath_t>(input[index]) - mean[c]) * x_scale[c] : dy;
    grad_input[index] = static_cast<scalar_t>(centered_dy * dy_scale[c]);
  }
}

// --- the (N, C) layout ------------------------------------------------------
// With S = 1, element n of channel c is input[n * C + c]: a thread per channel
// walking its rows makes the threads of a warp read C apart. Here the 32 lanes
// of a warp take 32 consecutive channels, so that each warp reads 32
// neighbouring elements of one row, and the kRowLanes warps of a block take
// interleaved rows: block (x, k) reduces slice k of the rows (slice_bounds
// over the N rows, which are the channel's N * S elements) for channels
// [32x, 32x + 32), warp r the rows begin + r, begin + r + kRowLanes, ... Each
// thread accumulates its rows in order; the kRowLanes results of a channel are
// then merged in the fixed order r = 0, 1, ... and written where the general
// first pass writes slice k's (partial[c * splits + k]), for the same second
// pass. Deterministic: no atomics, and a fixed assignment and order throughout.
constexpr int kChannelsPerBlock = C10_WARP_SIZE;
constexpr int kRowLanes = kThreadsPerBlock / kChannelsPerBlock;

template <typename scalar_t>
__global__ void batch_stats_partial_rows_kernel(
    const scalar_t* __restrict__ input, at::opmath_type<scalar_t>* __restrict__ partial_mean,
    at::opmath_type<scalar_t>* __restrict__ partial_m2, BatchNormShape shape, ChannelSlices slices) {
  using opmath_t = at::opmath_type<scalar_t>;
  __shared__ Welford<opmath_t> lane_stats[kRowLanes][kChannelsPerBlock];
  const int lane = threadIdx.x % kChannelsPerBlock;
  const int row_lane = threadIdx.x / kChannelsPerBlock;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChannelsPerBlock + lane;
  const int64_t split = blockIdx.y;
  const SliceBounds rows = slice_bounds(split, slices, shape.batch);
  Welford<opmath_t> stats{0, 0, 0};
  if (c < shape.channels) {
    for (int64_t n = rows.begin + row_lane; n < rows.end; n += kRowLanes) {
      welford_add(stats, static_cast<opmath_t>(input[n * shape.channels + c]));
    }
  }
  lane_stats[row_lane][lane] = stats;
  __syncthreads();
  if (row_lane == 0 && c < shape.channels) {
    for (int r = 1; r < kRowLanes; ++r) {
      stats = welford_merge(stats, lane_stats[r][lane]);
    }
    partial_mean[c * slices.splits + split] = stats.mean;
    partial_m2[c * slices.splits + split] = stats.m2;
  }
}

template <typename scalar_t>
__global__ void grad_sums_partial_rows_kernel(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
    const at::opmath_type<scalar_t>* __restrict__ mean, at::opmath_type<scalar_t>* __restrict__ partial_sum_dy,
    at::opmath_type<scalar_t>* __restrict__ partial_dot, BatchNormShape shape, ChannelSlices slices) {
  using opmath_t = at::opmath_type<scalar_t>;
  __shared__ opmath_t lane_sum_dy[kRowLanes][kChannelsPerBlock];
  __shared__ opmath_t lane_dot[kRowLanes][kChannelsPerBlock];
  const int lane = threadIdx.x % kChannelsPerBlock;
  const int row_lane = threadIdx.x / kChannelsPerBlock;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChannelsPerBlock + lane;
  const int64_t split = blockIdx.y;
  const SliceBounds rows = slice_bounds(split, slices, shape.batch);
  opmath_t sum_dy = 0;
  opmath_t dot = 0;
  if (c < shape.channels) {
    const opmath_t channel_mean = mean[c];
    for (int64_t n = rows.begin + row_lane; n < rows.end; n += kRowLanes) {
      const int64_t offset = n * shape.channels + c;
      const opmath_t dy = static_cast<opmath_t>(grad_output[offset]);
      sum_dy += dy;
      dot += dy * (static_cast<opmath_t>(input[offset]) - channel_mean);
    }
  }
  lane_sum_dy[row_lane][lane] = sum_dy;
  lane_dot[row_lane][lane] = dot;
  __syncthreads();
  if (row_lane == 0 && c < shape.channels) {
    for (int r = 1; r < kRowLanes; ++r) {
      sum_dy += lane_sum_dy[r][lane];
      dot += lane_dot[r][lane];
    }
    partial_sum_dy[c * slices.splits + split] = sum_dy;
    partial_dot[c * slices.splits + split] = dot;
  }
}

// --- host helpers -----------------------------------------------------------

// Enough blocks per channel that each reduces about kElementsPerBlock
// elements, at most kMaxSplits (the second pass merges them sequentially).
ChannelSlices channel_slices(int64_t channel_numel) {
  constexpr int64_t kElementsPerBlock = 16 * kThreadsPerBlock;
  constexpr int64_t kMaxSplits = 64;
  const int64_t splits =
      std::clamp<int64_t>((channel_numel + kElementsPerBlock - 1) / kElementsPerBlock, 1, kMaxSplits);
  return {splits, (channel_numel + splits - 1) / splits};
}

// The first-pass grid: channels along x (up to 2^31 - 1), slices along y.
dim3 partial_grid(const BatchNormShape& shape, const ChannelSlices& slices) {
  return dim3(static_cast<unsigned int>(shape.channels), static_cast<unsigned int>(slices.splits));
}

// Whether the first pass runs the (N, C) kernels: spatial size 1, and at
// least a warp's worth of channels (with fewer, a warp of the general kernels
// reads a few neighbouring cache lines anyway).
bool use_rows_kernels(const BatchNormShape& shape) {
  return shape.spatial == 1 && shape.channels >= kChannelsPerBlock;
}

// The (N, C) kernels' slices of the N rows: about kRowsPerBlock rows per block
// (16 per thread), at most kMaxRowSplits.
ChannelSlices row_slices(int64_t rows) {
  constexpr int64_t kRowsPerBlock = 16 * kRowLanes;
  constexpr int64_t kMaxRowSplits = 256;
  const int64_t splits = std::clamp<int64_t>((rows + kRowsPerBlock - 1) / kRowsPerBlock, 1, kMaxRowSplits);
  return {splits, (rows + splits - 1) / splits};
}

// Their grid: blocks of kChannelsPerBlock channels along x, slices along y.
dim3 rows_grid(const BatchNormShape& shape, const ChannelSlices& slices) {
  return dim3(
      static_cast<unsigned int>((shape.channels + kChannelsPerBlock - 1) / kChannelsPerBlock),
      static_cast<unsigned int>(slices.splits));
}

// The data of an optional per-channel tensor (weight, bias), null when absent.
template <typename T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// --- entry points -----------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> batch_norm_cuda(
    const Tensor& input_arg, const std::optional<Tensor>& weight_arg, const std::optional<Tensor>& bias_arg,
    const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var, bool training, double momentum,
    double eps) {
  const at::ScalarType parameter_dtype = check_batch_norm(input_arg, weight_arg, bias_arg, running_mean, running_var);
  if (parameter_dtype != input_arg.scalar_type()) {
    // Mixed precision (float16 / bfloat16 input, float32 parameters): the
    // float32 kernel on an upcast input, rounded back once (precision.h).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, save_mean, save_invstd, new_running_mean, new_running_var] =
        batch_norm_cuda(upcast(input_arg), weight_arg, bias_arg, running_mean, running_var, training, momentum, eps);
    return {output.to(input_arg.scalar_type()), save_mean, save_invstd, new_running_mean, new_running_var};
  }
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const bool has_running_stats = running_mean.has_value() && running_mean->defined();
  const bool use_batch_stats = training || !has_running_stats;
  const BatchNormShape shape = make_batch_norm_shape(input_arg.sizes());
  const auto stats_options = input_arg.options().dtype(at::toOpMathType(input_arg.scalar_type()));
  Tensor output = at::empty(input_arg.sizes(), input_arg.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor save_mean = at::empty({shape.channels}, stats_options);
  Tensor save_invstd = at::empty({shape.channels}, stats_options);
  // The operator is functional: the updated running statistics are returned,
  // starting as copies of the given ones (empty when none are given).
  Tensor new_running_mean =
      has_running_stats ? running_mean->clone(at::MemoryFormat::Contiguous) : at::empty({0}, input_arg.options());
  Tensor new_running_var =
      has_running_stats ? running_var->clone(at::MemoryFormat::Contiguous) : at::empty({0}, input_arg.options());
  if (shape.channels == 0) {
    return {with_format_of(output, input_arg), save_mean, save_invstd, new_running_mean, new_running_var};
  }
  if (use_batch_stats && shape.channel_numel() == 0) {
    // No values to take statistics of: an empty output, NaN statistics, and
    // the running statistics left as they are (as the CPU kernel does).
    save_mean.fill_(std::numeric_limits<double>::quiet_NaN());
    save_invstd.fill_(std::numeric_limits<double>::quiet_NaN());
    return {with_format_of(output, input_arg), save_mean, save_invstd, new_running_mean, new_running_var};
  }
  const Tensor input = input_arg.contiguous();
  const Tensor weight = weight_arg.has_value() && weight_arg->defined() ? weight_arg->contiguous() : Tensor();
  const Tensor bias = bias_arg.has_value() && bias_arg->defined() ? bias_arg->contiguous() : Tensor();
  const bool update_running_stats = use_batch_stats && has_running_stats;

  PYCNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_batch_norm_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    if (use_batch_stats) {
      const bool rows = use_rows_kernels(shape);
      const ChannelSlices slices = rows ? row_slices(shape.batch) : channel_slices(shape.channel_numel());
      Tensor partial_mean = at::empty({shape.channels * slices.splits}, stats_options);
      Tensor partial_m2 = at::empty({shape.channels * slices.splits}, stats_options);
      launch(
          rows ? batch_stats_partial_rows_kernel<scalar_t> : batch_stats_partial_kernel<scalar_t>,
          rows ? rows_grid(shape, slices) : partial_grid(shape, slices), input.const_data_ptr<scalar_t>(),
          partial_mean.mutable_data_ptr<opmath_t>(), partial_m2.mutable_data_ptr<opmath_t>(), shape, slices);
      launch(
          batch_stats_finalize_kernel<scalar_t>, blocks_for(shape.channels), partial_mean.const_data_ptr<opmath_t>(),
          partial_m2.const_data_ptr<opmath_t>(), shape, slices, static_cast<opmath_t>(eps),
          static_cast<opmath_t>(momentum), save_mean.mutable_data_ptr<opmath_t>(),
          save_invstd.mutable_data_ptr<opmath_t>(),
          update_running_stats ? new_running_mean.mutable_data_ptr<scalar_t>() : nullptr,
          update_running_stats ? new_running_var.mutable_data_ptr<scalar_t>() : nullptr);
    } else {
      launch(
          running_stats_kernel<scalar_t>, blocks_for(shape.channels), new_running_mean.const_data_ptr<scalar_t>(),
          new_running_var.const_data_ptr<scalar_t>(), shape.channels, static_cast<opmath_t>(eps),
          save_mean.mutable_data_ptr<opmath_t>(), save_invstd.mutable_data_ptr<opmath_t>());
    }
    if (output.numel() > 0) {
      launch(
          batch_norm_output_kernel<scalar_t>, blocks_for(output.numel()), input.const_data_ptr<scalar_t>(),
          save_mean.const_data_ptr<opmath_t>(), save_invstd.const_data_ptr<opmath_t>(), data_or_null<scalar_t>(weight),
          data_or_null<scalar_t>(bias), output.mutable_data_ptr<scalar_t>(), shape);
    }
  });
  return {with_format_of(output, input_arg), save_mean, save_invstd, new_running_mean, new_running_var};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_backward_cuda(
    const Tensor& grad_output_arg, const Tensor& input_arg, const std::optional<Tensor>& weight_arg,
    const Tensor& save_mean_arg, const Tensor& save_invstd_arg, bool used_batch_stats) {
  const at::ScalarType weight_dtype =
      check_batch_norm_backward(grad_output_arg, input_arg, weight_arg, save_mean_arg, save_invstd_arg);
  if (weight_dtype != input_arg.scalar_type()) {  // mixed precision, as in batch_norm_cuda
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] = batch_norm_backward_cuda(
        upcast(grad_output_arg), upcast(input_arg), weight_arg, save_mean_arg, save_invstd_arg, used_batch_stats);
    return {grad_input.to(input_arg.scalar_type()), grad_weight, grad_bias};
  }
  const at::cuda::OptionalCUDAGuard guard(device_of(input_arg));
  const BatchNormShape shape = make_batch_norm_shape(input_arg.sizes());
  Tensor grad_input = at::empty(input_arg.sizes(), input_arg.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor grad_weight = at::zeros({shape.channels}, input_arg.options());
  Tensor grad_bias = at::zeros({shape.channels}, input_arg.options());
  if (shape.channels == 0 || shape.channel_numel() == 0) {
    // Nothing to sum: zero parameter gradients and an empty grad_input.
    return {with_format_of(grad_input, input_arg), grad_weight, grad_bias};
  }
  const Tensor grad_output = grad_output_arg.contiguous();
  const Tensor input = input_arg.contiguous();
  const Tensor weight = weight_arg.has_value() && weight_arg->defined() ? weight_arg->contiguous() : Tensor();
  const Tensor save_mean = save_mean_arg.contiguous();
  const Tensor save_invstd = save_invstd_arg.contiguous();
  const auto stats_options = save_mean.options();

  PYCNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_batch_norm_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const bool rows = use_rows_kernels(shape);
    const ChannelSlices slices = rows ? row_slices(shape.batch) : channel_slices(shape.channel_numel());
    Tensor partial_sum_dy = at::empty({shape.channels * slices.splits}, stats_options);
    Tensor partial_dot = at::empty({shape.channels * slices.splits}, stats_options);
    launch(
        rows ? grad_sums_partial_rows_kernel<scalar_t> : grad_sums_partial_kernel<scalar_t>,
        rows ? rows_grid(shape, slices) : partial_grid(shape, slices), grad_output.const_data_ptr<scalar_t>(),
        input.const_data_ptr<scalar_t>(), save_mean.const_data_ptr<opmath_t>(),
        partial_sum_dy.mutable_data_ptr<opmath_t>(), partial_dot.mutable_data_ptr<opmath_t>(), shape, slices);

    Tensor mean_dy = at::empty({shape.channels}, stats_options);
    Tensor x_scale = at::empty({shape.channels}, stats_options);
    Tensor dy_scale = at::empty({shape.channels}, stats_options);
    launch(
        grad_sums_finalize_kernel<scalar_t>, blocks_for(shape.channels), partial_sum_dy.const_data_ptr<opmath_t>(),
        partial_dot.const_data_ptr<opmath_t>(), save_invstd.const_data_ptr<opmath_t>(), data_or_null<scalar_t>(weight),
        shape, slices, used_batch_stats, grad_weight.mutable_data_ptr<scalar_t>(),
        grad_bias.mutable_data_ptr<scalar_t>(), mean_dy.mutable_data_ptr<opmath_t>(),
        x_scale.mutable_data_ptr<opmath_t>(), dy_scale.mutable_data_ptr<opmath_t>());

    launch(
        batch_norm_grad_input_kernel<scalar_t>, blocks_for(grad_input.numel()), grad_output.const_data_ptr<scalar_t>(),
        input.const_data_ptr<scalar_t>(), save_mean.const_data_ptr<opmath_t>(), mean_dy.const_data_ptr<opmath_t>(),
        x_scale.const_data_ptr<opmath_t>(), dy_scale.const_data_ptr<opmath_t>(), used_batch_stats,
        grad_input.mutable_data_ptr<scalar_t>(), shape);
  });
  return {with_format_of(grad_input, input_arg), grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CUDA, m) {
  m.impl("batch_norm", &batch_norm_cuda);
  m.impl("batch_norm_backward", &batch_norm_backward_cuda);
}

}  // namespace pycnn
