// batch_norm on the CPU, over an (N, C, S) view of the input (S = L, H*W or 1).
//
// Channels are independent, so they run in parallel; each channel makes one
// pass for its statistics and one to normalise. The statistics are sums of
// (x - shift) with shift = the channel's first element, accumulated in
// double: the shift keeps the sum of squares from cancelling catastrophically
// when the mean is large against the spread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "pycnn/checks.h"

namespace pycnn {
namespace {

struct BatchNormShape {
  int64_t batch, channels, inner;  // N, C, S
  int64_t count() const { return batch * inner; }
};

BatchNormShape batch_norm_shape(const Tensor& input) {
  const int64_t batch = input.size(0);
  const int64_t channels = input.size(1);
  int64_t inner = 1;
  for (int64_t d = 2; d < input.dim(); ++d) {
    inner *= input.size(d);
  }
  return {batch, channels, inner};
}

template <typename scalar_t>
void batch_norm_forward_kernel(
    const scalar_t* x, scalar_t* y, const scalar_t* weight, const scalar_t* bias, scalar_t* running_mean,
    scalar_t* running_var, scalar_t* save_mean, scalar_t* save_invstd, const BatchNormShape& s,
    bool use_batch_stats, double momentum, double eps) {
  const int64_t channel_stride = s.inner;
  const int64_t sample_stride = s.channels * s.inner;
  at::parallel_for(0, s.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double mean, var;
      if (use_batch_stats) {
        const double shift = x[c * channel_stride];
        double sum = 0, sum_sq = 0;
        for (int64_t n = 0; n < s.batch; ++n) {
          const scalar_t* row = x + n * sample_stride + c * channel_stride;
#pragma omp simd reduction(+ : sum, sum_sq)
          for (int64_t i = 0; i < s.inner; ++i) {
            const double d = static_cast<double>(row[i]) - shift;
            sum += d;
            sum_sq += d * d;
          }
        }
        const double count = static_cast<double>(s.count());
        mean = shift + sum / count;
        var = std::max((sum_sq - sum * sum / count) / count, 0.0);
        if (running_mean != nullptr) {
          // PyTorch's update: the running variance takes the unbiased estimate.
          const double unbiased = s.count() > 1 ? var * count / (count - 1) : var;
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
      // y = x * scale + offset folds the normalisation and the affine map.
      const double gamma = weight != nullptr ? static_cast<double>(weight[c]) : 1.0;
      const double beta = bias != nullptr ? static_cast<double>(bias[c]) : 0.0;
      const scalar_t scale = static_cast<scalar_t>(gamma * invstd);
      const scalar_t offset = static_cast<scalar_t>(beta - mean * gamma * invstd);
      for (int64_t n = 0; n < s.batch; ++n) {
        const scalar_t* in = x + n * sample_stride + c * channel_stride;
        scalar_t* out = y + n * sample_stride + c * channel_stride;
#pragma omp simd
        for (int64_t i = 0; i < s.inner; ++i) {
          out[i] = in[i] * scale + offset;
        }
      }
    }
  });
}

template <typename scalar_t>
void batch_norm_backward_kernel(
    const scalar_t* dy, const scalar_t* x, const scalar_t* weight, const scalar_t* save_mean,
    const scalar_t* save_invstd, scalar_t* dx, scalar_t* grad_weight, scalar_t* grad_bias, const BatchNormShape& s,
    bool used_batch_stats) {
  const int64_t channel_stride = s.inner;
  const int64_t sample_stride = s.channels * s.inner;
  at::parallel_for(0, s.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const scalar_t mean = save_mean[c];
      const double invstd = save_invstd[c];
      double sum_dy = 0, dot = 0;  // Σ dy and Σ dy·(x - mean)
      for (int64_t n = 0; n < s.batch; ++n) {
        const scalar_t* g = dy + n * sample_stride + c * channel_stride;
        const scalar_t* in = x + n * sample_stride + c * channel_stride;
#pragma omp simd reduction(+ : sum_dy, dot)
        for (int64_t i = 0; i < s.inner; ++i) {
          sum_dy += g[i];
          dot += static_cast<double>(g[i]) * static_cast<double>(in[i] - mean);
        }
      }
      grad_bias[c] = static_cast<scalar_t>(sum_dy);
      grad_weight[c] = static_cast<scalar_t>(dot * invstd);
      const double gamma = weight != nullptr ? static_cast<double>(weight[c]) : 1.0;
      // With batch statistics, the mean and variance depend on x too:
      // dx = (dy - mean(dy) - (x - mean) * invstd² * mean(dy·(x - mean))) * invstd * gamma.
      const double count = static_cast<double>(s.count());
      const scalar_t dy_scale = static_cast<scalar_t>(invstd * gamma);
      const scalar_t dy_mean = used_batch_stats ? static_cast<scalar_t>(sum_dy / count) : scalar_t(0);
      const scalar_t x_scale = used_batch_stats ? static_cast<scalar_t>(dot * invstd * invstd / count) : scalar_t(0);
      for (int64_t n = 0; n < s.batch; ++n) {
        const scalar_t* g = dy + n * sample_stride + c * channel_stride;
        const scalar_t* in = x + n * sample_stride + c * channel_stride;
        scalar_t* out = dx + n * sample_stride + c * channel_stride;
#pragma omp simd
        for (int64_t i = 0; i < s.inner; ++i) {
          out[i] = (g[i] - dy_mean - (in[i] - mean) * x_scale) * dy_scale;
        }
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> batch_norm_cpu(
    const Tensor& input_arg, const std::optional<Tensor>& weight_arg, const std::optional<Tensor>& bias_arg,
    const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var, bool training,
    double momentum, double eps) {
  check_batch_norm(input_arg, weight_arg, bias_arg, running_mean, running_var);
  const bool has_running_stats = running_mean.has_value() && running_mean->defined();
  const bool use_batch_stats = training || !has_running_stats;
  const auto s = batch_norm_shape(input_arg);
  Tensor output = at::empty(input_arg.sizes(), input_arg.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor save_mean = at::empty({s.channels}, input_arg.options());
  Tensor save_invstd = at::empty({s.channels}, input_arg.options());
  // The updated running statistics start as copies of the given ones.
  Tensor new_running_mean = has_running_stats ? running_mean->clone(at::MemoryFormat::Contiguous)
                                              : at::empty({0}, input_arg.options());
  Tensor new_running_var = has_running_stats ? running_var->clone(at::MemoryFormat::Contiguous)
                                             : at::empty({0}, input_arg.options());
  if (use_batch_stats && s.count() == 0) {
    // No values to take statistics of: an empty result with NaN statistics;
    // the running statistics stay as they are.
    save_mean.fill_(std::numeric_limits<double>::quiet_NaN());
    save_invstd.fill_(std::numeric_limits<double>::quiet_NaN());
    return {output, save_mean, save_invstd, new_running_mean, new_running_var};
  }
  const Tensor input = input_arg.contiguous();
  const Tensor weight = weight_arg.has_value() && weight_arg->defined() ? weight_arg->contiguous() : Tensor();
  const Tensor bias = bias_arg.has_value() && bias_arg->defined() ? bias_arg->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_batch_norm_cpu", [&] {
    batch_norm_forward_kernel<scalar_t>(
        input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
        weight.defined() ? weight.const_data_ptr<scalar_t>() : nullptr,
        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
        has_running_stats ? new_running_mean.mutable_data_ptr<scalar_t>() : nullptr,
        has_running_stats ? new_running_var.mutable_data_ptr<scalar_t>() : nullptr,
        save_mean.mutable_data_ptr<scalar_t>(), save_invstd.mutable_data_ptr<scalar_t>(), s, use_batch_stats,
        momentum, eps);
  });
  return {output, save_mean, save_invstd, new_running_mean, new_running_var};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_backward_cpu(
    const Tensor& grad_output_arg, const Tensor& input_arg, const std::optional<Tensor>& weight_arg,
    const Tensor& save_mean_arg, const Tensor& save_invstd_arg, bool used_batch_stats) {
  check_batch_norm_backward(grad_output_arg, input_arg, weight_arg, save_mean_arg, save_invstd_arg);
  const auto s = batch_norm_shape(input_arg);
  Tensor grad_input = at::empty(input_arg.sizes(), input_arg.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor grad_weight = at::zeros({s.channels}, input_arg.options());
  Tensor grad_bias = at::zeros({s.channels}, input_arg.options());
  if (s.count() == 0) {
    return {grad_input, grad_weight, grad_bias};
  }
  const Tensor grad_output = grad_output_arg.contiguous();
  const Tensor input = input_arg.contiguous();
  const Tensor weight = weight_arg.has_value() && weight_arg->defined() ? weight_arg->contiguous() : Tensor();
  const Tensor save_mean = save_mean_arg.contiguous();
  const Tensor save_invstd = save_invstd_arg.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_batch_norm_backward_cpu", [&] {
    batch_norm_backward_kernel<scalar_t>(
        grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
        weight.defined() ? weight.const_data_ptr<scalar_t>() : nullptr, save_mean.const_data_ptr<scalar_t>(),
        save_invstd.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
        grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), s, used_batch_stats);
  });
  return {grad_input, grad_weight, grad_bias};
}

TORCH_LIBRARY_IMPL(pycnn, CPU, m) {
  m.impl("batch_norm", &batch_norm_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

}  // namespace pycnn
