// corr2d on the CPU: im2col, then one BLAS GEMM per group.
//
// For every sample, the input patches that the kernel sees are unfolded into a
// column matrix cols[C/g * kh * kw, OH * OW] (im2col); the output of group g is
// then weight_g[O/g, C/g*kh*kw] @ cols_g. The backward runs the same GEMMs
// transposed: grad_cols = weight_gᵀ @ grad_out_g, folded back onto the input
// (col2im), and grad_weight_g += grad_out_g @ cols_gᵀ.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include "pycnn/checks.h"

namespace pycnn {
namespace {

struct Corr2dGeometry {
  int64_t channels, height, width;       // input plane
  int64_t kernel_h, kernel_w;
  int64_t out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  int64_t column_rows() const { return channels * kernel_h * kernel_w; }
  int64_t column_cols() const { return out_h * out_w; }
  // A 1x1 kernel with stride 1 and no padding reads the input as it is: the
  // column matrix is the input plane itself, and no im2col copy is needed.
  bool columns_are_input() const {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
  }
};

Corr2dGeometry make_geometry(
    IntArrayRef input_size, IntArrayRef weight_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  Corr2dGeometry g{};
  g.channels = input_size[1];
  g.height = input_size[2];
  g.width = input_size[3];
  g.kernel_h = weight_size[2];
  g.kernel_w = weight_size[3];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.out_h = corr2d_output_size(g.height, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
  g.out_w = corr2d_output_size(g.width, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
  return g;
}

// The output columns [first, last) whose input column ow*stride - pad + offset
// lies inside [0, width): everything outside reads zero padding.
inline void valid_range(
    int64_t offset, int64_t size, int64_t out_size, int64_t stride, int64_t pad, int64_t* first, int64_t* last) {
  // smallest o with o*stride >= pad - offset, largest o with o*stride <= size - 1 + pad - offset
  const int64_t lo = pad - offset;
  const int64_t hi = size - 1 + pad - offset;
  *first = lo <= 0 ? 0 : (lo + stride - 1) / stride;
  *last = hi < 0 ? 0 : std::min(out_size, hi / stride + 1);
  *first = std::min(*first, *last);
}

// cols[(c*kh + i)*kw + j, oh*OW + ow] = x[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (0 outside).
template <typename scalar_t>
void im2col(const scalar_t* x, const Corr2dGeometry& g, scalar_t* cols) {
  const int64_t L = g.column_cols();
  at::parallel_for(0, g.column_rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t j = row % g.kernel_w;
      const int64_t i = (row / g.kernel_w) % g.kernel_h;
      const int64_t c = row / (g.kernel_w * g.kernel_h);
      int64_t ow_first, ow_last;
      valid_range(j * g.dilation_w, g.width, g.out_w, g.stride_w, g.pad_w, &ow_first, &ow_last);
      scalar_t* dst_row = cols + row * L;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        scalar_t* dst = dst_row + oh * g.out_w;
        const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
        if (ih < 0 || ih >= g.height) {
          std::fill(dst, dst + g.out_w, scalar_t(0));
          continue;
        }
        const scalar_t* src = x + (c * g.height + ih) * g.width - g.pad_w + j * g.dilation_w;
        std::fill(dst, dst + ow_first, scalar_t(0));
        if (g.stride_w == 1) {
          std::copy(src + ow_first, src + ow_last, dst + ow_first);
        } else {
          for (int64_t ow = ow_first; ow < ow_last; ++ow) {
            dst[ow] = src[ow * g.stride_w];
          }
        }
        std::fill(dst + ow_last, dst + g.out_w, scalar_t(0));
      }
    }
  });
}

// The adjoint of im2col: every column entry is added back onto the input
// element it was read from. Rows of one channel only touch that channel, so
// channels run in parallel without races.
template <typename scalar_t>
void col2im(const scalar_t* cols, const Corr2dGeometry& g, scalar_t* dx) {
  const int64_t L = g.column_cols();
  const int64_t rows_per_channel = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      scalar_t* plane = dx + c * g.height * g.width;
      std::fill(plane, plane + g.height * g.width, scalar_t(0));
      for (int64_t k = 0; k < rows_per_channel; ++k) {
        const int64_t i = k / g.kernel_w;
        const int64_t j = k % g.kernel_w;
        int64_t ow_first, ow_last;
        valid_range(j * g.dilation_w, g.width, g.out_w, g.stride_w, g.pad_w, &ow_first, &ow_last);
        const scalar_t* src_row = cols + (c * rows_per_channel + k) * L;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
          if (ih < 0 || ih >= g.height) {
            continue;
          }
          const scalar_t* src = src_row + oh * g.out_w;
          scalar_t* dst = plane + ih * g.width - g.pad_w + j * g.dilation_w;
          for (int64_t ow = ow_first; ow < ow_last; ++ow) {
            dst[ow * g.stride_w] += src[ow];
          }
        }
      }
    }
  });
}

void im2col_sample(const Tensor& input_sample, const Corr2dGeometry& g, Tensor& cols) {
  AT_DISPATCH_FLOATING_TYPES(input_sample.scalar_type(), "pycnn_im2col", [&] {
    im2col<scalar_t>(input_sample.const_data_ptr<scalar_t>(), g, cols.mutable_data_ptr<scalar_t>());
  });
}

void col2im_sample(const Tensor& cols, const Corr2dGeometry& g, Tensor& grad_input_sample) {
  AT_DISPATCH_FLOATING_TYPES(cols.scalar_type(), "pycnn_col2im", [&] {
    col2im<scalar_t>(cols.const_data_ptr<scalar_t>(), g, grad_input_sample.mutable_data_ptr<scalar_t>());
  });
}

// Runs body(sample, slot) for every sample. With at least as many samples as
// threads, samples are spread over the threads (each with its own buffers,
// `slot` in [0, num_threads)) and the GEMMs inside run single-threaded; with
// fewer, samples go one by one (slot 0) and im2col and each GEMM use every
// thread instead.
template <typename Body>
void for_each_sample(int64_t batch, const Body& body) {
  if (batch >= at::get_num_threads() && at::get_num_threads() > 1) {
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      // Dispatch state is thread-local: worker threads need their own guard
      // to skip autograd in the ATen GEMM calls (see corr2d_cpu).
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      const int slot = at::get_thread_num();
      for (int64_t n = begin; n < end; ++n) {
        body(n, slot);
      }
    });
  } else {
    for (int64_t n = 0; n < batch; ++n) {
      body(n, 0);
    }
  }
}

// The per-sample column matrix: the input itself for plain 1x1 kernels,
// otherwise im2col into this thread's buffer.
Tensor columns_of(const Tensor& input_sample, const Corr2dGeometry& g, std::vector<Tensor>& buffers, int slot) {
  if (g.columns_are_input()) {
    return input_sample.view({g.column_rows(), g.column_cols()});
  }
  Tensor& cols = buffers[slot];
  if (!cols.defined()) {
    cols = at::empty({g.column_rows(), g.column_cols()}, input_sample.options());
  }
  im2col_sample(input_sample, g, cols);
  return cols;
}

}  // namespace

Tensor corr2d_cpu(
    const Tensor& input_arg, const Tensor& weight_arg, const std::optional<Tensor>& bias_arg, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const auto output_shape = corr2d_output_shape(input_arg, weight_arg, bias_arg, stride, padding, dilation, groups);
  // The GEMMs below are ATen calls on tensors that may require grad: this
  // kernel is itself the computation autograd records, so skip autograd.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  Tensor output = at::empty(output_shape, input_arg.options());
  if (output.numel() == 0) {
    return output;
  }
  const Tensor input = input_arg.contiguous();
  const Tensor weight = weight_arg.contiguous();
  const bool has_bias = bias_arg.has_value() && bias_arg->defined();
  const auto g = make_geometry(input.sizes(), weight.sizes(), stride, padding, dilation);
  const int64_t out_channels_per_group = weight.size(0) / groups;
  const int64_t rows_per_group = g.column_rows() / groups;
  const Tensor weight_groups = weight.view({groups, out_channels_per_group, rows_per_group});
  const Tensor bias_groups =
      has_bias ? bias_arg->contiguous().view({groups, out_channels_per_group, 1}) : Tensor();

  std::vector<Tensor> buffers(at::get_num_threads());
  for_each_sample(input.size(0), [&](int64_t n, int slot) {
    const Tensor cols = columns_of(input[n], g, buffers, slot).view({groups, rows_per_group, g.column_cols()});
    Tensor out = output[n].view({groups, out_channels_per_group, g.column_cols()});
    for (int64_t k = 0; k < groups; ++k) {
      Tensor out_k = out[k];
      if (has_bias) {
        at::addmm_out(out_k, bias_groups[k], weight_groups[k], cols[k]);
      } else {
        at::mm_out(out_k, weight_groups[k], cols[k]);
      }
    }
  });
  return output;
}

Tensor corr2d_backward_input_cpu(
    const Tensor& grad_output_arg, const Tensor& weight_arg, c10::SymIntArrayRef input_size_sym, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const auto input_size = C10_AS_INTARRAYREF_SLOW(input_size_sym);
  check_corr2d_backward(
      "pycnn.corr2d_backward_input", grad_output_arg, weight_arg, "weight", input_size, weight_arg.sizes(), stride,
      padding, dilation, groups);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see corr2d_cpu

  Tensor grad_input = at::empty(input_size, grad_output_arg.options());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const Tensor grad_output = grad_output_arg.contiguous();
  const Tensor weight = weight_arg.contiguous();
  const auto g = make_geometry(input_size, weight.sizes(), stride, padding, dilation);
  const int64_t out_channels_per_group = weight.size(0) / groups;
  const int64_t rows_per_group = g.column_rows() / groups;
  // weight_gᵀ: [rows_per_group, out_channels_per_group]
  const Tensor weight_t = weight.view({groups, out_channels_per_group, rows_per_group}).transpose(1, 2);

  std::vector<Tensor> buffers(at::get_num_threads());
  for_each_sample(grad_input.size(0), [&](int64_t n, int slot) {
    const Tensor grad_out = grad_output[n].view({groups, out_channels_per_group, g.column_cols()});
    Tensor grad_in = grad_input[n];
    if (g.columns_are_input()) {
      Tensor grad_in_groups = grad_in.view({groups, rows_per_group, g.column_cols()});
      for (int64_t k = 0; k < groups; ++k) {
        Tensor dst = grad_in_groups[k];
        at::mm_out(dst, weight_t[k], grad_out[k]);
      }
      return;
    }
    Tensor& cols = buffers[slot];
    if (!cols.defined()) {
      cols = at::empty({g.column_rows(), g.column_cols()}, grad_output.options());
    }
    Tensor cols_groups = cols.view({groups, rows_per_group, g.column_cols()});
    for (int64_t k = 0; k < groups; ++k) {
      Tensor dst = cols_groups[k];
      at::mm_out(dst, weight_t[k], grad_out[k]);
    }
    col2im_sample(cols, g, grad_in);
  });
  return grad_input;
}

std::tuple<Tensor, Tensor> corr2d_backward_weight_cpu(
    const Tensor& grad_output_arg, const Tensor& input_arg, c10::SymIntArrayRef weight_size_sym, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const auto weight_size = C10_AS_INTARRAYREF_SLOW(weight_size_sym);
  check_corr2d_backward(
      "pycnn.corr2d_backward_weight", grad_output_arg, input_arg, "input", input_arg.sizes(), weight_size, stride,
      padding, dilation, groups);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see corr2d_cpu

  const Tensor grad_output = grad_output_arg.contiguous();
  const Tensor input = input_arg.contiguous();
  const auto g = make_geometry(input.sizes(), weight_size, stride, padding, dilation);
  const int64_t out_channels = weight_size[0];
  const int64_t out_channels_per_group = out_channels / groups;
  const int64_t rows_per_group = g.column_rows() / groups;
  const int64_t batch = input.size(0);

  // grad_bias: grad_output summed over the batch and every output position.
  Tensor grad_bias = grad_output.view({batch, out_channels, g.column_cols()}).sum({0, 2});

  // Each thread accumulates its samples' contributions into its own slot;
  // the slots are summed at the end, so no two threads write one element.
  const int64_t slots = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(batch, 1));
  Tensor partial = at::zeros({slots, groups, out_channels_per_group, rows_per_group}, input.options());
  std::vector<Tensor> buffers(at::get_num_threads());
  for_each_sample(batch, [&](int64_t n, int slot) {
    const Tensor cols = columns_of(input[n], g, buffers, slot).view({groups, rows_per_group, g.column_cols()});
    const Tensor grad_out = grad_output[n].view({groups, out_channels_per_group, g.column_cols()});
    Tensor acc = partial[slot];
    for (int64_t k = 0; k < groups; ++k) {
      Tensor acc_k = acc[k];
      acc_k.addmm_(grad_out[k], cols[k].t());
    }
  });
  Tensor grad_weight = (slots == 1 ? partial[0] : partial.sum(0)).view(weight_size);
  return {grad_weight, grad_bias};
}

TORCH_LIBRARY_IMPL(pycnn, CPU, m) {
  m.impl("corr2d", &corr2d_cpu);
  m.impl("corr2d_backward_input", &corr2d_backward_input_cpu);
  m.impl("corr2d_backward_weight", &corr2d_backward_weight_cpu);
}

}  // namespace pycnn
