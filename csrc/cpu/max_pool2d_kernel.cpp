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
#include "pycnn/geometry.h"

namespace pycnn {
namespace {

template <typename scalar_t>
void max_pool2d_forward_kernel(
    const scalar_t* input, scalar_t* output, int64_t* indices, int64_t planes, const MaxPool2dGeometry& g) {
  // One task is one output row of one plane: enough tasks to fill every core
  // even when there are few planes.
  at::parallel_for(0, planes * g.out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / g.out_h;
      const int64_t oh = task % g.out_h;
      const scalar_t* x = input + plane * g.in_h * g.in_w;
      const MaxWindow rows = max_pool_window(oh, g.in_h, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const MaxWindow cols = max_pool_window(ow, g.in_w, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
        // As PyTorch: start from -inf at the window's first element; a NaN
        // always wins (NaN > x is false, so test it explicitly), the last
        // NaN of the window if there are several.
        int64_t best_index = rows.start * g.in_w + cols.start;
        scalar_t best = -std::numeric_limits<scalar_t>::infinity();
        for (int64_t h = rows.start; h < rows.end; h += g.dilation_h) {
          for (int64_t w = cols.start; w < cols.end; w += g.dilation_w) {
            const scalar_t value = x[h * g.in_w + w];
            if (value > best || std::isnan(value)) {
              best = value;
              best_index = h * g.in_w + w;
            }
          }
        }
        output[task * g.out_w + ow] = best;
        indices[task * g.out_w + ow] = best_index;
      }
    }
  });
}

// Which output rows and columns have windows that lie entirely in the padding
// (max_pool_window_empty): their gradient goes nowhere, in both layouts' backward.
struct EmptyWindows {
  std::vector<char> rows, cols;
};

EmptyWindows empty_windows(const MaxPool2dGeometry& g) {
  EmptyWindows empty{std::vector<char>(g.out_h), std::vector<char>(g.out_w)};
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    empty.rows[oh] = max_pool_window_empty(oh, g.in_h, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
  }
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    empty.cols[ow] = max_pool_window_empty(ow, g.in_w, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
  }
  return empty;
}

template <typename scalar_t>
void max_pool2d_backward_kernel(
    const scalar_t* grad_output, const int64_t* indices, scalar_t* grad_input, int64_t planes,
    const MaxPool2dGeometry& g, const EmptyWindows& empty) {
  // An empty window routes its gradient nowhere; so does any index past the plane.
  const int64_t in_size = g.in_h * g.in_w;
  const int64_t out_size = g.out_h * g.out_w;
  // Windows overlap, so two outputs may route to one input element; a plane
  // is only ever written by the task that owns it, so planes run in parallel,
  // and each adds in a fixed order: deterministic.
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* dx = grad_input + plane * in_size;
      const scalar_t* dy = grad_output + plane * out_size;
      const int64_t* idx = indices + plane * out_size;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        if (empty.rows[oh]) {
          continue;
        }
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t k = oh * g.out_w + ow;
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
    const scalar_t* input, scalar_t* output, int64_t* indices, int64_t batch, int64_t channels,
    const MaxPool2dGeometry& g) {
  at::parallel_for(0, batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.out_h;
      const int64_t oh = task % g.out_h;
      const MaxWindow rows = max_pool_window(oh, g.in_h, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const MaxWindow cols = max_pool_window(ow, g.in_w, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
        scalar_t* best = output + (task * g.out_w + ow) * channels;
        int64_t* best_index = indices + (task * g.out_w + ow) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          best[c] = -std::numeric_limits<scalar_t>::infinity();
          best_index[c] = rows.start * g.in_w + cols.start;
        }
        for (int64_t h = rows.start; h < rows.end; h += g.dilation_h) {
          for (int64_t w = cols.start; w < cols.end; w += g.dilation_w) {
            const scalar_t* x = input + ((n * g.in_h + h) * g.in_w + w) * channels;
            for (int64_t c = 0; c < channels; ++c) {
              if (x[c] > best[c] || std::isnan(x[c])) {
                best[c] = x[c];
                best_index[c] = h * g.in_w + w;
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
    const MaxPool2dGeometry& g, const EmptyWindows& empty) {
  const int64_t in_size = g.in_h * g.in_w;
  // Each sample is written by one task only, in a fixed order.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t* dx = grad_input + n * in_size * channels;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        if (empty.rows[oh]) {
          continue;
        }
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          if (empty.cols[ow]) {
            continue;
          }
          const int64_t k = ((n * g.out_h + oh) * g.out_w + ow) * channels;
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

// --- entry points -----------------------------------------------------------

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
  const MaxPool2dGeometry g =
      make_max_pool2d_geometry(input.sizes(), output_shape, kernel_size, stride, padding, dilation);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_max_pool2d_cpu", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      max_pool2d_forward_kernel_channels_last<scalar_t>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(),
          input.size(0), input.size(1), g);
    } else {
      max_pool2d_forward_kernel<scalar_t>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(),
          input.size(0) * input.size(1), g);
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
  const MaxPool2dGeometry g =
      make_max_pool2d_geometry(input.sizes(), output_shape, kernel_size, stride, padding, dilation);
  const EmptyWindows empty = empty_windows(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_max_pool2d_backward_cpu", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      max_pool2d_backward_kernel_channels_last<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), input.size(0), input.size(1), g, empty);
    } else {
      max_pool2d_backward_kernel<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), input.size(0) * input.size(1), g, empty);
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
}

}  // namespace pycnn
