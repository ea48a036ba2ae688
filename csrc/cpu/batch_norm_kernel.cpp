// batch_norm on the CPU, over an (N, C, S) view of the input (S = L or H*W),
// or over the (M, C) matrix of a channels_last input (M = N*H*W) or of one
// with S = 1 (M = N).
//
// Channels are independent, so they run in parallel; each channel makes one
// pass for its statistics and one to normalise. The statistics are sums of
// (x - shift) with shift = the channel's first element, accumulated in
// double: the shift keeps the sum of squares from cancelling catastrophically
// when the mean is large against the spread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "pycnn/checks.h"
#include "pycnn/geometry.h"

namespace pycnn {
namespace {

// --- per-channel arithmetic, shared by both layouts ---------------------------

// Sums of (x - shift) and (x - shift)² over one channel.
struct ShiftedSums {
  double shift = 0, sum = 0, sum_sq = 0;
};

// One channel's statistics (from its sums, or the running statistics), the
// running-statistics update, the saved mean and invstd, and the affine map
// y = x * scale + offset that normalises it.
template <typename scalar_t>
struct ChannelAffine {
  scalar_t scale, offset;
};

template <typename scalar_t>
ChannelAffine<scalar_t> channel_statistics(
    int64_t c, const ShiftedSums& sums, int64_t count, const scalar_t* weight, const scalar_t* bias,
    scalar_t* running_mean, scalar_t* running_var, scalar_t* save_mean, scalar_t* save_invstd, bool use_batch_stats,
    double momentum, double eps) {
  double mean, var;
  if (use_batch_stats) {
    const double n = static_cast<double>(count);
    mean = sums.shift + sums.sum / n;
    var = std::max((sums.sum_sq - sums.sum * sums.sum / n) / n, 0.0);
    if (running_mean != nullptr) {
      // PyTorch's update: the running variance takes the unbiased estimate.
      const double unbiased = count > 1 ? var * n / (n - 1) : var;
      running_mean[c] = static_cast<scalar_t>((1 - momentum) * running_mean[c] + momentum * mean);
      running_var[c] = static_cast<scalar_t>((1 - momentum) * running_var[c] + momentum * unbiased);
    }
  } else {
    mean = running_mean[c];
    var = running_var[c];
  }
  const double invstd = 1.0 / std::sqrt(var + eps);
  save_mean[c] = static_cast<scalar_t>(mean);
  save_invstd[c] = static_cast<scalar_t>(invstd);
  const double gamma = weight != nullptr ? static_cast<double>(weight[c]) : 1.0;
  const double beta = bias != nullptr ? static_cast<double>(bias[c]) : 0.0;
  return {static_cast<scalar_t>(gamma * invstd), static_cast<scalar_t>(beta - mean * gamma * invstd)};
}

// dx = (dy - dy_mean - (x - mean) * x_scale) * dy_scale, from one channel's
// Σ dy and Σ dy·(x - mean); also writes its grad_weight and grad_bias. With
// batch statistics the mean and variance depend on x too:
// dx = (dy - mean(dy) - (x - mean) * invstd² * mean(dy·(x - mean))) * invstd * gamma.
template <typename scalar_t>
struct ChannelGradient {
  scalar_t mean, dy_mean, x_scale, dy_scale;
};

template <typename scalar_t>
ChannelGradient<scalar_t> channel_gradient(
    int64_t c, double sum_dy, double dot, int64_t count, const scalar_t* weight, const scalar_t* save_mean,
    const scalar_t* save_invstd, scalar_t* grad_weight, scalar_t* grad_bias, bool used_batch_stats) {
  const double invstd = save_invstd[c];
  grad_bias[c] = static_cast<scalar_t>(sum_dy);
  grad_weight[c] = static_cast<scalar_t>(dot * invstd);
  const double gamma = weight != nullptr ? static_cast<double>(weight[c]) : 1.0;
  const double n = static_cast<double>(count);
  return {save_mean[c], used_batch_stats ? static_cast<scalar_t>(sum_dy / n) : scalar_t(0),
          used_batch_stats ? static_cast<scalar_t>(dot * invstd * invstd / n) : scalar_t(0),
          static_cast<scalar_t>(invstd * gamma)};
}

// --- the backward's loops over one row (a sample's plane of one channel) ----
// The float versions are compiled three times, for AVX-512 (x86-64-v4), AVX2
// (x86-64-v3) and any x86-64, and the CPU picks one when the library loads
// (GCC's target_clones): the sums widen every value to double, and SSE2's two
// double lanes made the backward twice as slow as native's.

// sum_dy += Σ g, dot += Σ g·(x - mean), in double.
// (always_inline: so that each clone below compiles the loop for its target.)
template <typename scalar_t>
__attribute__((always_inline)) inline void add_gradient_sums_loop(
    const scalar_t* g, const scalar_t* x, scalar_t mean, int64_t n, double& sum_dy, double& dot) {
  double sum = 0, product = 0;
#pragma omp simd reduction(+ : sum, product)
  for (int64_t i = 0; i < n; ++i) {
    sum += g[i];
    product += static_cast<double>(g[i]) * static_cast<double>(x[i] - mean);
  }
  sum_dy += sum;
  dot += product;
}

template <typename scalar_t>
__attribute__((always_inline)) inline void input_gradient_row_loop(
    const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t n, const ChannelGradient<scalar_t>& k) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = (g[i] - k.dy_mean - (x[i] - k.mean) * k.x_scale) * k.dy_scale;
  }
}

template <typename scalar_t>
void add_gradient_sums(const scalar_t* g, const scalar_t* x, scalar_t mean, int64_t n, double& sum_dy, double& dot) {
  add_gradient_sums_loop(g, x, mean, n, sum_dy, dot);
}

template <typename scalar_t>
void input_gradient_row(
    const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t n, const ChannelGradient<scalar_t>& k) {
  input_gradient_row_loop(g, x, dx, n, k);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void add_gradient_sums_float(
    const float* g, const float* x, float mean, int64_t n, double& sum_dy, double& dot) {
  add_gradient_sums_loop<float>(g, x, mean, n, sum_dy, dot);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void input_gradient_row_float(
    const float* g, const float* x, float* dx, int64_t n, const ChannelGradient<float>& k) {
  input_gradient_row_loop<float>(g, x, dx, n, k);
}
template <>
void add_gradient_sums<float>(const float* g, const float* x, float mean, int64_t n, double& sum_dy, double& dot) {
  add_gradient_sums_float(g, x, mean, n, sum_dy, dot);
}
template <>
void input_gradient_row<float>(const float* g, const float* x, float* dx, int64_t n, const ChannelGradient<float>& k) {
  input_gradient_row_float(g, x, dx, n, k);
}
#endif

// --- (N, C, S) layout: channels in parallel, each a pass for its statistics
// and one to normalise --------------------------------------------------------

template <typename scalar_t>
void batch_norm_forward_kernel(
    const scalar_t* x, scalar_t* y, const scalar_t* weight, const scalar_t* bias, scalar_t* running_mean,
    scalar_t* running_var, scalar_t* save_mean, scalar_t* save_invstd, const BatchNormShape& shape,
    bool use_batch_stats, double momentum, double eps) {
  const int64_t channel_stride = shape.spatial;
  const int64_t sample_stride = shape.channels * shape.spatial;
  at::parallel_for(0, shape.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      ShiftedSums sums;
      if (use_batch_stats) {
        sums.shift = x[c * channel_stride];
        double sum = 0, sum_sq = 0;
        for (int64_t n = 0; n < shape.batch; ++n) {
          const scalar_t* row = x + n * sample_stride + c * channel_stride;
#pragma omp simd reduction(+ : sum, sum_sq)
          for (int64_t i = 0; i < shape.spatial; ++i) {
            const double d = static_cast<double>(row[i]) - sums.shift;
            sum += d;
            sum_sq += d * d;
          }
        }
        sums.sum = sum;
        sums.sum_sq = sum_sq;
      }
      const auto affine = channel_statistics(
          c, sums, shape.channel_numel(), weight, bias, running_mean, running_var, save_mean, save_invstd,
          use_batch_stats, momentum, eps);
      for (int64_t n = 0; n < shape.batch; ++n) {
        const scalar_t* in = x + n * sample_stride + c * channel_stride;
        scalar_t* out = y + n * sample_stride + c * channel_stride;
#pragma omp simd
        for (int64_t i = 0; i < shape.spatial; ++i) {
          out[i] = in[i] * affine.scale + affine.offset;
        }
      }
    }
  });
}

template <typename scalar_t>
void batch_norm_backward_kernel(
    const scalar_t* dy, const scalar_t* x, const scalar_t* weight, const scalar_t* save_mean,
    const scalar_t* save_invstd, scalar_t* dx, scalar_t* grad_weight, scalar_t* grad_bias, const BatchNormShape& shape,
    bool used_batch_stats) {
  const int64_t channel_stride = shape.spatial;
  const int64_t sample_stride = shape.channels * shape.spatial;
  at::parallel_for(0, shape.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const scalar_t mean = save_mean[c];
      double sum_dy = 0, dot = 0;  // Σ dy and Σ dy·(x - mean)
      for (int64_t n = 0; n < shape.batch; ++n) {
        const int64_t offset = n * sample_stride + c * channel_stride;
        add_gradient_sums(dy + offset, x + offset, mean, shape.spatial, sum_dy, dot);
      }
      const auto k = channel_gradient(
          c, sum_dy, dot, shape.channel_numel(), weight, save_mean, save_invstd, grad_weight, grad_bias,
          used_batch_stats);
      for (int64_t n = 0; n < shape.batch; ++n) {
        const int64_t offset = n * sample_stride + c * channel_stride;
        input_gradient_row(dy + offset, x + offset, dx + offset, shape.spatial, k);
      }
    }
  });
}

// --- channels_last (N, H, W, C): an (M, C) matrix, channels innermost -------
// The sums run over blocks of channels in parallel, each task reading the
// block's contiguous run in every row, in row order (deterministic whatever
// the number of threads); the elementwise pass runs over rows in parallel.

constexpr int64_t kChannelBlock = 16;

template <typename scalar_t>
void batch_norm_forward_kernel_channels_last(
    const scalar_t* x, scalar_t* y, const scalar_t* weight, const scalar_t* bias, scalar_t* running_mean,
    scalar_t* running_var, scalar_t* save_mean, scalar_t* save_invstd, const BatchNormShape& shape,
    bool use_batch_stats, double momentum, double eps) {
  const int64_t rows = shape.channel_numel();
  const int64_t channels = shape.channels;
  std::vector<scalar_t> scale(channels), offset(channels);
  at::parallel_for(0, (channels + kChannelBlock - 1) / kChannelBlock, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kChannelBlock;
      const int64_t width = std::min(kChannelBlock, channels - c0);
      double shift[kChannelBlock] = {}, sum[kChannelBlock] = {}, sum_sq[kChannelBlock] = {};
      if (use_batch_stats) {
        for (int64_t j = 0; j < width; ++j) {
          shift[j] = x[c0 + j];
        }
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* row = x + r * channels + c0;
#pragma omp simd
          for (int64_t j = 0; j < width; ++j) {
            const double d = static_cast<double>(row[j]) - shift[j];
            sum[j] += d;
            sum_sq[j] += d * d;
          }
        }
      }
      for (int64_t j = 0; j < width; ++j) {
        const auto affine = channel_statistics(
            c0 + j, ShiftedSums{shift[j], sum[j], sum_sq[j]}, rows, weight, bias, running_mean, running_var, save_mean,
            save_invstd, use_batch_stats, momentum, eps);
        scale[c0 + j] = affine.scale;
        offset[c0 + j] = affine.offset;
      }
    }
  });
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* in = x + r * channels;
      scalar_t* out = y + r * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        out[c] = in[c] * scale[c] + offset[c];
      }
    }
  });
}

template <typename scalar_t>
void batch_norm_backward_kernel_channels_last(
    const scalar_t* dy, const scalar_t* x, const scalar_t* weight, const scalar_t* save_mean,
    const scalar_t* save_invstd, scalar_t* dx, scalar_t* grad_weight, scalar_t* grad_bias, const BatchNormShape& shape,
    bool used_batch_stats) {
  const int64_t rows = shape.channel_numel();
  const int64_t channels = shape.channels;
  std::vector<scalar_t> mean(channels), dy_mean(channels), x_scale(channels), dy_scale(channels);
  at::parallel_for(0, (channels + kChannelBlock - 1) / kChannelBlock, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kChannelBlock;
      const int64_t width = std::min(kChannelBlock, channels - c0);
      double sum_dy[kChannelBlock] = {}, dot[kChannelBlock] = {};
      const scalar_t* block_mean = save_mean + c0;
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* g = dy + r * channels + c0;
        const scalar_t* in = x + r * channels + c0;
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) {
          sum_dy[j] += g[j];
          dot[j] += static_cast<double>(g[j]) * static_cast<double>(in[j] - block_mean[j]);
        }
      }
      for (int64_t j = 0; j < width; ++j) {
        const auto k = channel_gradient(
            c0 + j, sum_dy[j], dot[j], rows, weight, save_mean, save_invstd, grad_weight, grad_bias, used_batch_stats);
        mean[c0 + j] = k.mean;
        dy_mean[c0 + j] = k.dy_mean;
        x_scale[c0 + j] = k.x_scale;
        dy_scale[c0 + j] = k.dy_scale;
      }
    }
  });
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* g = dy + r * channels;
      const scalar_t* in = x + r * channels;
      scalar_t* out = dx + r * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        out[c] = (g[c] - dy_mean[c] - (in[c] - mean[c]) * x_scale[c]) * dy_scale[c];
      }
    }
  });
}

// --- entry points -----------------------------------------------------------

// Whether the contiguous data is an (M, C) matrix with channels innermost:
// channels_last, or any input whose spatial size is 1 ((N, C): BatchNorm1d
// after a linear layer), where the (N, C, S) kernels would walk each channel
// with a stride of C, one element per row.
bool as_rows_by_channels(at::MemoryFormat format, const BatchNormShape& shape) {
  return format == at::MemoryFormat::ChannelsLast || shape.spatial == 1;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> batch_norm_cpu(
    const Tensor& input_arg, const std::optional<Tensor>& weight_arg, const std::optional<Tensor>& bias_arg,
    const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var, bool training, double momentum,
    double eps) {
  const at::ScalarType parameter_dtype = check_batch_norm(input_arg, weight_arg, bias_arg, running_mean, running_var);
  if (is_reduced_precision(input_arg)) {  // in float32 (precision.h); parameters may be float32 already
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, save_mean, save_invstd, new_running_mean, new_running_var] = batch_norm_cpu(
        upcast(input_arg), upcast(weight_arg), upcast(bias_arg), upcast(running_mean), upcast(running_var), training,
        momentum, eps);
    return {output.to(input_arg.scalar_type()), save_mean, save_invstd, new_running_mean.to(parameter_dtype),
            new_running_var.to(parameter_dtype)};
  }
  const bool has_running_stats = running_mean.has_value() && running_mean->defined();
  const bool use_batch_stats = training || !has_running_stats;
  const BatchNormShape shape = make_batch_norm_shape(input_arg.sizes());
  // The output takes the input's memory format, as native (channels_last stays channels_last).
  const auto format = input_arg.suggest_memory_format();
  Tensor output = at::empty(input_arg.sizes(), input_arg.options().memory_format(format));
  Tensor save_mean = at::empty({shape.channels}, input_arg.options());
  Tensor save_invstd = at::empty({shape.channels}, input_arg.options());
  // The updated running statistics start as copies of the given ones.
  Tensor new_running_mean =
      has_running_stats ? running_mean->clone(at::MemoryFormat::Contiguous) : at::empty({0}, input_arg.options());
  Tensor new_running_var =
      has_running_stats ? running_var->clone(at::MemoryFormat::Contiguous) : at::empty({0}, input_arg.options());
  if (use_batch_stats && shape.channel_numel() == 0) {
    // No values to take statistics of: an empty result with NaN statistics;
    // the running statistics stay as they are.
    save_mean.fill_(std::numeric_limits<double>::quiet_NaN());
    save_invstd.fill_(std::numeric_limits<double>::quiet_NaN());
    return {output, save_mean, save_invstd, new_running_mean, new_running_var};
  }
  const Tensor input = input_arg.contiguous(format);
  const Tensor weight = weight_arg.has_value() && weight_arg->defined() ? weight_arg->contiguous() : Tensor();
  const Tensor bias = bias_arg.has_value() && bias_arg->defined() ? bias_arg->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_batch_norm_cpu", [&] {
    const auto kernel = as_rows_by_channels(format, shape) ? batch_norm_forward_kernel_channels_last<scalar_t>
                                                           : batch_norm_forward_kernel<scalar_t>;
    kernel(
        input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
        weight.defined() ? weight.const_data_ptr<scalar_t>() : nullptr,
        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
        has_running_stats ? new_running_mean.mutable_data_ptr<scalar_t>() : nullptr,
        has_running_stats ? new_running_var.mutable_data_ptr<scalar_t>() : nullptr,
        save_mean.mutable_data_ptr<scalar_t>(), save_invstd.mutable_data_ptr<scalar_t>(), shape, use_batch_stats,
        momentum, eps);
  });
  return {output, save_mean, save_invstd, new_running_mean, new_running_var};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_backward_cpu(
    const Tensor& grad_output_arg, const Tensor& input_arg, const std::optional<Tensor>& weight_arg,
    const Tensor& save_mean_arg, const Tensor& save_invstd_arg, bool used_batch_stats) {
  const at::ScalarType weight_dtype =
      check_batch_norm_backward(grad_output_arg, input_arg, weight_arg, save_mean_arg, save_invstd_arg);
  if (is_reduced_precision(input_arg)) {  // in float32 (precision.h)
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] = batch_norm_backward_cpu(
        upcast(grad_output_arg), upcast(input_arg), upcast(weight_arg), save_mean_arg, save_invstd_arg,
        used_batch_stats);
    return {grad_input.to(input_arg.scalar_type()), grad_weight.to(weight_dtype), grad_bias.to(weight_dtype)};
  }
  const BatchNormShape shape = make_batch_norm_shape(input_arg.sizes());
  const auto format = input_arg.suggest_memory_format();  // grad_input takes the input's, as native
  Tensor grad_input = at::empty(input_arg.sizes(), input_arg.options().memory_format(format));
  Tensor grad_weight = at::zeros({shape.channels}, input_arg.options());
  Tensor grad_bias = at::zeros({shape.channels}, input_arg.options());
  if (shape.channel_numel() == 0) {
    return {grad_input, grad_weight, grad_bias};
  }
  const Tensor grad_output = grad_output_arg.contiguous(format);
  const Tensor input = input_arg.contiguous(format);
  const Tensor weight = weight_arg.has_value() && weight_arg->defined() ? weight_arg->contiguous() : Tensor();
  const Tensor save_mean = save_mean_arg.contiguous();
  const Tensor save_invstd = save_invstd_arg.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_batch_norm_backward_cpu", [&] {
    const auto kernel = as_rows_by_channels(format, shape) ? batch_norm_backward_kernel_channels_last<scalar_t>
                                                           : batch_norm_backward_kernel<scalar_t>;
    kernel(
        grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
        weight.defined() ? weight.const_data_ptr<scalar_t>() : nullptr, save_mean.const_data_ptr<scalar_t>(),
        save_invstd.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
        grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), shape, used_batch_stats);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CPU, m) {
  m.impl("batch_norm", &batch_norm_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

}  // namespace pycnn
