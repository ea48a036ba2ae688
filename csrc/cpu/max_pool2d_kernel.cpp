// max_pool2d on the CPU: one pass over each window, in PyTorch's order.
//
// The index of a maximum is its flat position h * W + w inside its (n, c)
// plane, as torch.nn.functional.max_pool2d(return_indices=True) gives it. The
// backward routes each gradient to that position (a window entirely in the
// padding routes it nowhere).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "pycnn/checks.h"

namespace pycnn {
namespace {

template <typename scalar_t>
void max_pool2d_forward_kernel(
    const scalar_t* input, scalar_t* output, int64_t* indices, int64_t planes, int64_t in_h, int64_t in_w,
    int64_t out_h, int64_t out_w, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  // One task is one output row of one plane: enough tasks to fill every core
  // even when there are few planes.
  at::parallel_for(0, planes * out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / out_h;
      const int64_t oh = task % out_h;
      const scalar_t* x = input + plane * in_h * in_w;
      const MaxWindow rows = max_pool_window(oh, in_h, kernel[0], padding[0], stride[0], dilation[0]);
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const MaxWindow cols = max_pool_window(ow, in_w, kernel[1], padding[1], stride[1], dilation[1]);
        // As PyTorch: start from -inf at the window's first element; a NaN
        // always wins (NaN > x is false, so test it explicitly), the last
        // NaN of the window if there are several.
        int64_t best_index = rows.start * in_w + cols.start;
        scalar_t best = -std::numeric_limits<scalar_t>::infinity();
        for (int64_t h = rows.start; h < rows.end; h += dilation[0]) {
          for (int64_t w = cols.start; w < cols.end; w += dilation[1]) {
            const scalar_t value = x[h * in_w + w];
            if (value > best || std::isnan(value)) {
              best = value;
              best_index = h * in_w + w;
            }
          }
        }
        output[task * out_w + ow] = best;
        indices[task * out_w + ow] = best_index;
      }
    }
  });
}

// Which output rows and columns have windows that lie entirely in the padding
// (max_pool_window_empty): their gradient goes nowhere, in both layouts' backward.
struct EmptyWindows {
  std::vector<char> rows, cols;
};

EmptyWindows empty_windows(
    int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, IntArrayRef kernel, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation) {
  EmptyWindows empty{std::vector<char>(out_h), std::vector<char>(out_w)};
  for (int64_t oh = 0; oh < out_h; ++oh) {
    empty.rows[oh] = max_pool_window_empty(oh, in_h, kernel[0], padding[0], stride[0], dilation[0]);
  }
  for (int64_t ow = 0; ow < out_w; ++ow) {
    empty.cols[ow] = max_pool_window_empty(ow, in_w, kernel[1], padding[1], stride[1], dilation[1]);
  }
  return empty;
}

template <typename scalar_t>
void max_pool2d_backward_kernel(
    const scalar_t* grad_output, const int64_t* indices, scalar_t* grad_input, int64_t planes, int64_t in_h,
    int64_t in_w, int64_t out_h, int64_t out_w, const EmptyWindows& empty) {
  // An empty window routes its gradient nowhere; so does any index past the plane.
  const int64_t in_size = in_h * in_w;
  const int64_t out_size = out_h * out_w;
  // Windows overlap, so two outputs may route to one input element; a plane
  // is only ever written by the task that owns it, so planes run in parallel,
  // and each adds in a fixed order: deterministic.
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* dx = grad_input + plane * in_size;
      const scalar_t* dy = grad_output + plane * out_size;
      const int64_t* idx = indices + plane * out_size;
      for (int64_t oh = 0; oh < out_h; ++oh) {
        if (empty.rows[oh]) {
          continue;
        }
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const int64_t k = oh * out_w + ow;
          if (!empty.cols[ow] && idx[k] >= 0 && idx[k] < in_size) {
            dx[idx[k]] += dy[k];
          }
        }
      }
    }
  });
}

// The same two passes on channels_last (N, H, W, C) data, with the channels
// innermost: each window position is one contiguous run of C values, so the
// loops over channels vectorise. Outputs and indices are channels_last too;
// an index is still the flat position h * W + w in its plane.
template <typename scalar_t>
void max_pool2d_forward_kernel_channels_last(
    const scalar_t* input, scalar_t* output, int64_t* indices, int64_t batch, int64_t channels, int64_t in_h,
    int64_t in_w, int64_t out_h, int64_t out_w, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
    IntArrayRef dilation) {
  at::parallel_for(0, batch * out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / out_h;
      const int64_t oh = task % out_h;
      const MaxWindow rows = max_pool_window(oh, in_h, kernel[0], padding[0], stride[0], dilation[0]);
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const MaxWindow cols = max_pool_window(ow, in_w, kernel[1], padding[1], stride[1], dilation[1]);
        scalar_t* best = output + (task * out_w + ow) * channels;
        int64_t* best_index = indices + (task * out_w + ow) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          best[c] = -std::numeric_limits<scalar_t>::infinity();
          best_index[c] = rows.start * in_w + cols.start;
        }
        for (int64_t h = rows.start; h < rows.end; h += dilation[0]) {
          for (int64_t w = cols.start; w < cols.end; w += dilation[1]) {
            const scalar_t* x = input + ((n * in_h + h) * in_w + w) * channels;
            for (int64_t c = 0; c < channels; ++c) {
              if (x[c] > best[c] || std::isnan(x[c])) {
                best[c] = x[c];
                best_index[c] = h * in_w + w;
              }
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void max_pool2d_backward_kernel_channels_last(
    const scalar_t* grad_output, const int64_t* indices, scalar_t* grad_input, int64_t batch, int64_t channels,
    int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, const EmptyWindows& empty) {
  const int64_t in_size = in_h * in_w;
  // Each sample is written by one task only, in a fixed order.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t* dx = grad_input + n * in_size * channels;
      for (int64_t oh = 0; oh < out_h; ++oh) {
        if (empty.rows[oh]) {
          continue;
        }
        for (int64_t ow = 0; ow < out_w; ++ow) {
          if (empty.cols[ow]) {
            continue;
          }
          const int64_t k = ((n * out_h + oh) * out_w + ow) * channels;
          for (int64_t c = 0; c < channels; ++c) {
            const int64_t index = indices[k + c];
            if (index >= 0 && index < in_size) {
              dx[index * channels + c] += grad_output[k + c];
            }
          }
        }
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor> max_pool2d_cpu(
    const Tensor& input_arg, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
    bool ceil_mode) {
  const auto output_shape = max_pool2d_output_shape(input_arg, kernel_size, stride, padding, dilation, ceil_mode);
  if (is_reduced_precision(input_arg)) {  // in float32 (precision.h): exact, as a max is
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, indices] = max_pool2d_cpu(upcast(input_arg), kernel_size, stride, padding, dilation, ceil_mode);
    return {output.to(input_arg.scalar_type()), indices};
  }
  // The output takes the input's memory format, as native (NCHW or channels_last).
  const auto format = input_arg.suggest_memory_format();
  Tensor output = at::empty(output_shape, input_arg.options().memory_format(format));
  Tensor indices = at::empty(output_shape, input_arg.options().dtype(at::kLong).memory_format(format));
  if (output.numel() == 0) {
    return {output, indices};
  }
  const Tensor input = input_arg.contiguous(format);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_max_pool2d_cpu", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      max_pool2d_forward_kernel_channels_last<scalar_t>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(),
          input.size(0), input.size(1), input.size(2), input.size(3), output.size(2), output.size(3), kernel_size,
          stride, padding, dilation);
    } else {
      max_pool2d_forward_kernel<scalar_t>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(),
          input.size(0) * input.size(1), input.size(2), input.size(3), output.size(2), output.size(3), kernel_size,
          stride, padding, dilation);
    }
  });
  return {output, indices};
}

Tensor max_pool2d_backward_cpu(
    const Tensor& grad_output_arg, const Tensor& input, const Tensor& indices_arg, IntArrayRef kernel_size,
    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  constexpr const char* op = "pycnn.max_pool2d_backward";
  const auto output_shape = max_pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode);
  check_max_pool2d_backward(op, grad_output_arg, input, indices_arg, output_shape);
  if (is_reduced_precision(input)) {  // in float32 (precision.h)
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return max_pool2d_backward_cpu(
               upcast(grad_output_arg), upcast(input), indices_arg, kernel_size, stride, padding, dilation, ceil_mode)
        .to(input.scalar_type());
  }
  const auto format = input.suggest_memory_format();  // grad_input takes the input's, as native
  Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(format)).zero_();
  if (grad_output_arg.numel() == 0) {
    return grad_input;
  }
  const Tensor grad_output = grad_output_arg.contiguous(format);
  const Tensor indices = indices_arg.contiguous(format);
  const EmptyWindows empty =
      empty_windows(input.size(2), input.size(3), output_shape[2], output_shape[3], kernel_size, stride, padding,
                    dilation);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_max_pool2d_backward_cpu", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      max_pool2d_backward_kernel_channels_last<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), input.size(0), input.size(1), input.size(2), input.size(3),
          output_shape[2], output_shape[3], empty);
    } else {
      max_pool2d_backward_kernel<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), input.size(0) * input.size(1), input.size(2), input.size(3),
          output_shape[2], output_shape[3], empty);
    }
  });
  return grad_input;
}

TORCH_LIBRARY_IMPL(pycnn, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
}

}  // namespace pycnn
