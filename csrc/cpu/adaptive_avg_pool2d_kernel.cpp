// adaptive_avg_pool2d on the CPU: output cell (i, j) averages the input rows
// [floor(i*H/OH), ceil((i+1)*H/OH)) and the matching columns, so any output
// size works; a 1x1 output is global average pooling. The backward spreads
// each gradient evenly over its cell.
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

// The cells' row and column ranges, computed once per call: the kernels
// below run over many small planes (global pooling of 1024 channels of 3x3),
// where working out each plane's ranges again (four integer divisions per
// cell) cost more than the sums.
struct Cells {
  std::vector<int64_t> h0, h1, w0, w1;
  bool global;  // one cell, the whole plane

  explicit Cells(const AdaptiveAvgPool2dGeometry& g) : global(g.out_h == 1 && g.out_w == 1) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      h0.push_back(adaptive_start(oh, g.in_h, g.out_h));
      h1.push_back(adaptive_end(oh, g.in_h, g.out_h));
    }
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      w0.push_back(adaptive_start(ow, g.in_w, g.out_w));
      w1.push_back(adaptive_end(ow, g.in_w, g.out_w));
    }
  }
  int64_t area(int64_t oh, int64_t ow) const { return (h1[oh] - h0[oh]) * (w1[ow] - w0[ow]); }
};

template <typename scalar_t>
void adaptive_avg_pool2d_forward_kernel(
    const scalar_t* input, scalar_t* output, int64_t planes, const AdaptiveAvgPool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const Cells cells(g);
  const int64_t plane_size = g.in_h * g.in_w;
  if (cells.global) {  // each plane's mean: one contiguous sum
    at::parallel_for(0, planes, 64, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* x = input + plane * plane_size;
        acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < plane_size; ++i) {
          sum += x[i];
        }
        output[plane] = static_cast<scalar_t>(sum / static_cast<acc_t>(plane_size));
      }
    });
    return;
  }
  at::parallel_for(0, planes * g.out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / g.out_h;
      const int64_t oh = task % g.out_h;
      const scalar_t* x = input + plane * plane_size;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        acc_t sum = 0;
        for (int64_t h = cells.h0[oh]; h < cells.h1[oh]; ++h) {
          for (int64_t w = cells.w0[ow]; w < cells.w1[ow]; ++w) {
            sum += x[h * g.in_w + w];
          }
        }
        output[task * g.out_w + ow] = static_cast<scalar_t>(sum / static_cast<acc_t>(cells.area(oh, ow)));
      }
    }
  });
}

// grad_input must be zero on entry.
template <typename scalar_t>
void adaptive_avg_pool2d_backward_kernel(
    const scalar_t* grad_output, scalar_t* grad_input, int64_t planes, const AdaptiveAvgPool2dGeometry& g) {
  const Cells cells(g);
  const int64_t plane_size = g.in_h * g.in_w;
  if (cells.global) {  // each plane's gradient spread evenly over it
    at::parallel_for(0, planes, 64, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        std::fill_n(
            grad_input + plane * plane_size, plane_size, grad_output[plane] / static_cast<scalar_t>(plane_size));
      }
    });
    return;
  }
  // Cells may overlap (when the sizes do not divide); each plane is written
  // by one task only.
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* dx = grad_input + plane * plane_size;
      const scalar_t* dy = grad_output + plane * g.out_h * g.out_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const scalar_t share = dy[oh * g.out_w + ow] / static_cast<scalar_t>(cells.area(oh, ow));
          for (int64_t h = cells.h0[oh]; h < cells.h1[oh]; ++h) {
            for (int64_t w = cells.w0[ow]; w < cells.w1[ow]; ++w) {
              dx[h * g.in_w + w] += share;
            }
          }
        }
      }
    }
  });
}

// The same on channels_last (N, H, W, C) data, channels innermost.
template <typename scalar_t>
void adaptive_avg_pool2d_forward_kernel_channels_last(
    const scalar_t* input, scalar_t* output, int64_t batch, int64_t channels, const AdaptiveAvgPool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(channels);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.out_h;
      const int64_t oh = task % g.out_h;
      const int64_t h0 = adaptive_start(oh, g.in_h, g.out_h);
      const int64_t h1 = adaptive_end(oh, g.in_h, g.out_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t w0 = adaptive_start(ow, g.in_w, g.out_w);
        const int64_t w1 = adaptive_end(ow, g.in_w, g.out_w);
        std::fill(sum.begin(), sum.end(), acc_t(0));
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = w0; w < w1; ++w) {
            const scalar_t* x = input + ((n * g.in_h + h) * g.in_w + w) * channels;
            for (int64_t c = 0; c < channels; ++c) {
              sum[c] += x[c];
            }
          }
        }
        const acc_t area = static_cast<acc_t>((h1 - h0) * (w1 - w0));
        scalar_t* out = output + (task * g.out_w + ow) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          out[c] = static_cast<scalar_t>(sum[c] / area);
        }
      }
    }
  });
}

template <typename scalar_t>
void adaptive_avg_pool2d_backward_kernel_channels_last(
    const scalar_t* grad_output, scalar_t* grad_input, int64_t batch, int64_t channels,
    const AdaptiveAvgPool2dGeometry& g) {
  // Cells may overlap; each sample is written by one task only.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.in_h, g.out_h);
        const int64_t h1 = adaptive_end(oh, g.in_h, g.out_h);
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t w0 = adaptive_start(ow, g.in_w, g.out_w);
          const int64_t w1 = adaptive_end(ow, g.in_w, g.out_w);
          const scalar_t area = static_cast<scalar_t>((h1 - h0) * (w1 - w0));
          const scalar_t* dy = grad_output + ((n * g.out_h + oh) * g.out_w + ow) * channels;
          for (int64_t h = h0; h < h1; ++h) {
            for (int64_t w = w0; w < w1; ++w) {
              scalar_t* dx = grad_input + ((n * g.in_h + h) * g.in_w + w) * channels;
              for (int64_t c = 0; c < channels; ++c) {
                dx[c] += dy[c] / area;
              }
            }
          }
        }
      }
    }
  });
}

// --- entry points -----------------------------------------------------------

Tensor adaptive_avg_pool2d_cpu(const Tensor& input_arg, IntArrayRef output_size) {
  const auto output_shape = adaptive_avg_pool2d_output_shape(input_arg, output_size);
  if (is_reduced_precision(input_arg)) {  // in float32 (precision.h)
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return adaptive_avg_pool2d_cpu(upcast(input_arg), output_size).to(input_arg.scalar_type());
  }
  const auto format = input_arg.suggest_memory_format();  // the output takes it, as native
  Tensor output = at::empty(output_shape, input_arg.options().memory_format(format));
  if (output.numel() == 0) {
    return output;
  }
  const Tensor input = input_arg.contiguous(format);
  const AdaptiveAvgPool2dGeometry g = make_adaptive_avg_pool2d_geometry(input.sizes(), output_shape);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_adaptive_avg_pool2d_cpu", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      adaptive_avg_pool2d_forward_kernel_channels_last<scalar_t>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), input.size(0), input.size(1), g);
    } else {
      adaptive_avg_pool2d_forward_kernel<scalar_t>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), input.size(0) * input.size(1), g);
    }
  });
  return output;
}

Tensor adaptive_avg_pool2d_backward_cpu(const Tensor& grad_output_arg, const Tensor& input) {
  constexpr const char* op = "pycnn.adaptive_avg_pool2d_backward";
  TORCH_CHECK(grad_output_arg.dim() == 4, op, ": expected grad_output of rank 4, got ", grad_output_arg.sizes());
  const auto output_shape = adaptive_avg_pool2d_output_shape(input, {grad_output_arg.size(2), grad_output_arg.size(3)});
  check_grad_output(op, grad_output_arg, input, output_shape);
  if (is_reduced_precision(input)) {  // in float32 (precision.h)
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return adaptive_avg_pool2d_backward_cpu(upcast(grad_output_arg), upcast(input)).to(input.scalar_type());
  }
  const auto format = input.suggest_memory_format();  // grad_input takes the input's, as native
  Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(format));
  const bool global_planes = format != at::MemoryFormat::ChannelsLast && output_shape[2] == 1 && output_shape[3] == 1;
  if (!global_planes) {  // the kernels add into grad_input; global pooling's writes every element
    grad_input.zero_();
  }
  if (grad_output_arg.numel() == 0) {
    return grad_input;
  }
  const Tensor grad_output = grad_output_arg.contiguous(format);
  const AdaptiveAvgPool2dGeometry g = make_adaptive_avg_pool2d_geometry(input.sizes(), output_shape);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_adaptive_avg_pool2d_backward_cpu", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      adaptive_avg_pool2d_backward_kernel_channels_last<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), input.size(0), input.size(1),
          g);
    } else {
      adaptive_avg_pool2d_backward_kernel<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
          input.size(0) * input.size(1), g);
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CPU, m) {
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cpu);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cpu);
}

}  // namespace pycnn
