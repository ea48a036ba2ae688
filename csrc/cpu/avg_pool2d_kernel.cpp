// avg_pool2d on the CPU: each output is the sum over its window, clipped to
// the input, divided by PyTorch's divisor (see avg_pool_window in window.h).
// The backward spreads each gradient evenly over the same window.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "pycnn/checks.h"
#include "pycnn/geometry.h"

namespace pycnn {
namespace {

template <typename scalar_t>
void avg_pool2d_forward_kernel(const scalar_t* input, scalar_t* output, int64_t planes, const AvgPool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, planes * g.out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / g.out_h;
      const int64_t oh = task % g.out_h;
      const scalar_t* x = input + plane * g.in_h * g.in_w;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const AvgWindow win = g.window(oh, ow);
        acc_t sum = 0;
        for (int64_t h = win.h0; h < win.h1; ++h) {
          for (int64_t w = win.w0; w < win.w1; ++w) {
            sum += x[h * g.in_w + w];
          }
        }
        // A window clipped to nothing averages nothing: 0, as PyTorch.
        output[task * g.out_w + ow] =
            avg_pool_window_empty(win) ? scalar_t(0) : static_cast<scalar_t>(sum / win.divisor);
      }
    }
  });
}

template <typename scalar_t>
void avg_pool2d_backward_kernel(
    const scalar_t* grad_output, scalar_t* grad_input, int64_t planes, const AvgPool2dGeometry& g) {
  // Windows overlap; each plane is written by one task only.
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* dx = grad_input + plane * g.in_h * g.in_w;
      const scalar_t* dy = grad_output + plane * g.out_h * g.out_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const AvgWindow win = g.window(oh, ow);
          const scalar_t share = dy[oh * g.out_w + ow] / static_cast<scalar_t>(win.divisor);
          for (int64_t h = win.h0; h < win.h1; ++h) {
            for (int64_t w = win.w0; w < win.w1; ++w) {
              dx[h * g.in_w + w] += share;
            }
          }
        }
      }
    }
  });
}

// The same on channels_last (N, H, W, C) data, channels innermost: each
// window position adds one contiguous run of C values.
template <typename scalar_t>
void avg_pool2d_forward_kernel_channels_last(
    const scalar_t* input, scalar_t* output, int64_t batch, int64_t channels, const AvgPool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(channels);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.out_h;
      const int64_t oh = task % g.out_h;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const AvgWindow win = g.window(oh, ow);
        std::fill(sum.begin(), sum.end(), acc_t(0));
        for (int64_t h = win.h0; h < win.h1; ++h) {
          for (int64_t w = win.w0; w < win.w1; ++w) {
            const scalar_t* x = input + ((n * g.in_h + h) * g.in_w + w) * channels;
            for (int64_t c = 0; c < channels; ++c) {
              sum[c] += x[c];
            }
          }
        }
        const bool empty = avg_pool_window_empty(win);
        scalar_t* out = output + (task * g.out_w + ow) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          out[c] = empty ? scalar_t(0) : static_cast<scalar_t>(sum[c] / win.divisor);
        }
      }
    }
  });
}

template <typename scalar_t>
void avg_pool2d_backward_kernel_channels_last(
    const scalar_t* grad_output, scalar_t* grad_input, int64_t batch, int64_t channels, const AvgPool2dGeometry& g) {
  // Windows overlap; each sample is written by one task only.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const AvgWindow win = g.window(oh, ow);
          const scalar_t* dy = grad_output + ((n * g.out_h + oh) * g.out_w + ow) * channels;
          const scalar_t divisor = static_cast<scalar_t>(win.divisor);
          for (int64_t h = win.h0; h < win.h1; ++h) {
            for (int64_t w = win.w0; w < win.w1; ++w) {
              scalar_t* dx = grad_input + ((n * g.in_h + h) * g.in_w + w) * channels;
              for (int64_t c = 0; c < channels; ++c) {
                dx[c] += dy[c] / divisor;
              }
            }
          }
        }
      }
    }
  });
}

// --- entry points -----------------------------------------------------------

Tensor avg_pool2d_cpu(
    const Tensor& input_arg, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
    bool count_include_pad, std::optional<int64_t> divisor_override) {
  const auto output_shape =
      avg_pool2d_output_shape(input_arg, kernel_size, stride, padding, ceil_mode, divisor_override);
  if (is_reduced_precision(input_arg)) {  // in float32 (precision.h)
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return avg_pool2d_cpu(
               upcast(input_arg), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        .to(input_arg.scalar_type());
  }
  const auto format = input_arg.suggest_memory_format();  // the output takes it, as native
  Tensor output = at::empty(output_shape, input_arg.options().memory_format(format));
  if (output.numel() == 0) {
    return output;
  }
  const Tensor input = input_arg.contiguous(format);
  const AvgPool2dGeometry g = make_avg_pool2d_geometry(
      input.sizes(), output_shape, kernel_size, stride, padding, count_include_pad, divisor_override);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_avg_pool2d_cpu", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      avg_pool2d_forward_kernel_channels_last<scalar_t>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), input.size(0), input.size(1), g);
    } else {
      avg_pool2d_forward_kernel<scalar_t>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), input.size(0) * input.size(1), g);
    }
  });
  return output;
}

Tensor avg_pool2d_backward_cpu(
    const Tensor& grad_output_arg, const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
    IntArrayRef padding, bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const auto output_shape = avg_pool2d_output_shape(input, kernel_size, stride, padding, ceil_mode, divisor_override);
  check_grad_output("pycnn.avg_pool2d_backward", grad_output_arg, input, output_shape);
  if (is_reduced_precision(input)) {  // in float32 (precision.h)
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return avg_pool2d_backward_cpu(
               upcast(grad_output_arg), upcast(input), kernel_size, stride, padding, ceil_mode, count_include_pad,
               divisor_override)
        .to(input.scalar_type());
  }
  const auto format = input.suggest_memory_format();  // grad_input takes the input's, as native
  Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(format)).zero_();
  if (grad_output_arg.numel() == 0) {
    return grad_input;
  }
  const Tensor grad_output = grad_output_arg.contiguous(format);
  const AvgPool2dGeometry g = make_avg_pool2d_geometry(
      input.sizes(), output_shape, kernel_size, stride, padding, count_include_pad, divisor_override);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_avg_pool2d_backward_cpu", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      avg_pool2d_backward_kernel_channels_last<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), input.size(0), input.size(1),
          g);
    } else {
      avg_pool2d_backward_kernel<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
          input.size(0) * input.size(1), g);
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CPU, m) {
  m.impl("avg_pool2d", &avg_pool2d_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
}

}  // namespace pycnn
