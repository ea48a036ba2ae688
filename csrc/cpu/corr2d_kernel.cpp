// corr2d on the CPU: im2col, then one GEMM per group (gemm.h: pycnn's own
// AVX-512 or AVX2 kernel where the CPU has one, else ATen's BLAS); grouped
// convolutions with few channels per group, and layers with few output
// channels on mid-sized maps (on small maps, the passes where they are
// faster), run direct loops instead (corr2d_direct.h, use_direct_corr2d);
// float32 3x3 and 5x5 stride-1 layers of many channels run Winograd (F(2x2, 3x3), F(2x2, 5x5)),
// forward and backward (corr2d_winograd.h, use_winograd_corr2d); float32
// layers with small output maps and at most 128 outputs run im2col over
// channels-last rows, the whole batch one product (corr2d_rows.h,
// use_rows_corr2d).
//
// The input patches that the kernel sees are unfolded into a column matrix
// cols[C * kh * kw, samples * OH * OW] (im2col), the patches of a chunk of
// consecutive samples side by side; the output of group g is then
// weight_g[O/g, C/g*kh*kw] @ cols_g. The backward runs the same GEMMs
// transposed: grad_cols = weight_gᵀ @ grad_out_g, folded back onto the input
// (col2im), and grad_weight_g += grad_out_g @ cols_gᵀ.
//
// A chunk holds enough samples to make the GEMMs at least kMinGemmColumns
// wide: for small images (a 3x3 map in ResNet's last stage) one sample alone
// gives a skinny GEMM that streams the whole weight matrix to do almost no
// work. With one sample per chunk, the output is written in place; with
// several, the GEMM result [O, samples * L] is transposed into (N, O, OH, OW).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <vector>

#include "corr2d_direct.h"
#include "corr2d_rows.h"
#include "corr2d_winograd.h"
#include "gemm.h"
#include "pycnn/checks.h"
#include "pycnn/geometry.h"

namespace pycnn {
namespace {

constexpr int64_t kMinGemmColumns = 1024;

// cols[(c*kh + i)*kw + j, oh*OW + ow] = x[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
// (0 outside), for one sample whose columns start at `cols` in a matrix
// whose rows are `row_stride` apart.
template <typename scalar_t>
void im2col(const scalar_t* x, const Corr2dGeometry& g, scalar_t* cols, int64_t row_stride) {
  at::parallel_for(0, g.column_rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t j = row % g.kernel_w;
      const int64_t i = (row / g.kernel_w) % g.kernel_h;
      const int64_t c = row / (g.kernel_w * g.kernel_h);
      const auto [ow_first, ow_last] = outputs_reading_inside(j * g.dilation_w, g.in_w, g.out_w, g.stride_w, g.pad_w);
      scalar_t* dst_row = cols + row * row_stride;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        scalar_t* dst = dst_row + oh * g.out_w;
        const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) {
          std::fill(dst, dst + g.out_w, scalar_t(0));
          continue;
        }
        const scalar_t* src = x + (c * g.in_h + ih) * g.in_w - g.pad_w + j * g.dilation_w;
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
void col2im(const scalar_t* cols, int64_t row_stride, const Corr2dGeometry& g, scalar_t* dx) {
  const int64_t rows_per_channel = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      scalar_t* plane = dx + c * g.in_h * g.in_w;
      std::fill(plane, plane + g.in_h * g.in_w, scalar_t(0));
      for (int64_t k = 0; k < rows_per_channel; ++k) {
        const int64_t i = k / g.kernel_w;
        const int64_t j = k % g.kernel_w;
        const auto [ow_first, ow_last] = outputs_reading_inside(j * g.dilation_w, g.in_w, g.out_w, g.stride_w, g.pad_w);
        const scalar_t* src_row = cols + (c * rows_per_channel + k) * row_stride;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
          if (ih < 0 || ih >= g.in_h) {
            continue;
          }
          const scalar_t* src = src_row + oh * g.out_w;
          scalar_t* dst = plane + ih * g.in_w - g.pad_w + j * g.dilation_w;
          if (g.stride_w == 1) {  // a loop the compiler vectorises
            for (int64_t ow = ow_first; ow < ow_last; ++ow) {
              dst[ow] += src[ow];
            }
          } else {
            for (int64_t ow = ow_first; ow < ow_last; ++ow) {
              dst[ow * g.stride_w] += src[ow];
            }
          }
        }
      }
    }
  });
}

// Narrow maps (a 7x7 or 3x3 output, ResNet's and GoogLeNet's last stages):
// each row of im2col and col2im above is a few elements long, and the work
// of setting it up (the kernel offset, the valid range, the copy calls)
// outweighs the copy. There, one table of source offsets within a sample,
// offsets[row * L + l] (-1 for padding), computed once per call, turns each
// sample's im2col into one gather and its col2im into one scatter-add.
constexpr int64_t kMaxTableWidth = 8;

// The table for g, or an empty one where the row-by-row copies are used.
std::vector<int32_t> im2col_offsets(const Corr2dGeometry& g) {
  const int64_t sample_elements = g.channels * g.in_h * g.in_w;  // the offsets are int32
  if (g.out_w > kMaxTableWidth || g.columns_are_input() || sample_elements > std::numeric_limits<int32_t>::max()) {
    return {};
  }
  const int64_t L = g.column_cols();
  std::vector<int32_t> offsets(g.column_rows() * L);
  for (int64_t row = 0; row < g.column_rows(); ++row) {
    const int64_t j = row % g.kernel_w;
    const int64_t i = (row / g.kernel_w) % g.kernel_h;
    const int64_t c = row / (g.kernel_w * g.kernel_h);
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
        const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        offsets[row * L + oh * g.out_w + ow] = inside ? static_cast<int32_t>((c * g.in_h + ih) * g.in_w + iw) : -1;
      }
    }
  }
  return offsets;
}

// im2col of one sample through the table.
template <typename scalar_t>
void im2col_table(
    const scalar_t* x, const Corr2dGeometry& g, const int32_t* offsets, scalar_t* cols, int64_t row_stride) {
  const int64_t L = g.column_cols();
  at::parallel_for(0, g.column_rows(), 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int32_t* from = offsets + row * L;
      scalar_t* dst = cols + row * row_stride;
      for (int64_t l = 0; l < L; ++l) {
        dst[l] = from[l] >= 0 ? x[from[l]] : scalar_t(0);
      }
    }
  });
}

// col2im of one sample through the table. A channel's rows only touch that
// channel's plane, so channels run in parallel without races.
template <typename scalar_t>
void col2im_table(
    const scalar_t* cols, int64_t row_stride, const Corr2dGeometry& g, const int32_t* offsets, scalar_t* dx) {
  const int64_t L = g.column_cols();
  const int64_t rows_per_channel = g.kernel_h * g.kernel_w;
  const int64_t plane = g.in_h * g.in_w;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    std::fill(dx + begin * plane, dx + end * plane, scalar_t(0));
    for (int64_t row = begin * rows_per_channel; row < end * rows_per_channel; ++row) {
      const int32_t* to = offsets + row * L;
      const scalar_t* src = cols + row * row_stride;
      for (int64_t l = 0; l < L; ++l) {
        if (to[l] >= 0) {
          dx[to[l]] += src[l];
        }
      }
    }
  });
}

// A chunk of consecutive samples [first, first + size) and the scratch
// buffers of the thread that processes it.
struct Chunk {
  int64_t first, size;
  int slot;
};

// Per-thread scratch buffers, allocated on first use for a whole chunk and
// viewed smaller for a shorter last chunk.
class Scratch {
 public:
  Scratch(int64_t elements, const at::TensorOptions& options)
      : elements_(elements), options_(options), buffers_(at::get_num_threads()) {}

  // The first rows * cols elements of this thread's buffer, as a matrix.
  Tensor matrix(int slot, int64_t rows, int64_t cols) {
    Tensor& buffer = buffers_[slot];
    if (!buffer.defined()) {
      buffer = at::empty({elements_}, options_);
    }
    return buffer.narrow(0, 0, rows * cols).view({rows, cols});
  }

 private:
  int64_t elements_;
  at::TensorOptions options_;
  std::vector<Tensor> buffers_;
};

// Samples per chunk: enough for GEMMs kMinGemmColumns wide, at most the batch;
// and, when the chunks are spread over the threads (for_each_chunk), a chunk
// count that is a multiple of the threads, so that no thread is left with a
// second chunk while the others idle (a 3x3 map wants 114 samples a chunk: a
// batch of 256 in chunks of 114, 114 and 28 kept one thread busy for 2/2.3 of
// the time; four chunks of 64 split it evenly).
int64_t samples_per_chunk(const Corr2dGeometry& g, int64_t batch) {
  const int64_t wanted = (kMinGemmColumns + g.column_cols() - 1) / g.column_cols();
  const int64_t size = std::max<int64_t>(1, std::min(wanted, batch));
  const int64_t threads = at::get_num_threads();
  int64_t chunks = (batch + size - 1) / size;
  if (threads <= 1 || chunks < threads) {
    return size;
  }
  chunks = (chunks + threads - 1) / threads * threads;
  return (batch + chunks - 1) / chunks;
}

// Runs body(chunk) for every chunk of the batch. With at least as many chunks
// as threads, chunks are spread over the threads (each with its own scratch
// `slot`) and the GEMMs inside run single-threaded; with fewer, chunks go one
// by one (slot 0) and im2col, col2im and each GEMM use every thread instead.
template <typename Body>
void for_each_chunk(int64_t batch, int64_t chunk_size, const Body& body) {
  const int64_t chunks = (batch + chunk_size - 1) / chunk_size;
  const auto run = [&](int64_t index, int slot) {
    const int64_t first = index * chunk_size;
    body(Chunk{first, std::min(chunk_size, batch - first), slot});
  };
  if (chunks >= at::get_num_threads() && at::get_num_threads() > 1) {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      // Dispatch state is thread-local: worker threads need their own guard
      // to skip autograd in the ATen GEMM calls (see corr2d_cpu).
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t index = begin; index < end; ++index) {
        run(index, at::get_thread_num());
      }
    });
  } else {
    for (int64_t index = 0; index < chunks; ++index) {
      run(index, 0);
    }
  }
}

// The column matrix [C*kh*kw, chunk.size * L] of a chunk: the input itself for
// one sample with a plain 1x1 kernel, otherwise im2col into scratch.
// `offsets`: im2col_offsets(g) (empty: the row-by-row im2col).
Tensor chunk_columns(
    const Tensor& input, const Corr2dGeometry& g, const std::vector<int32_t>& offsets, const Chunk& chunk,
    Scratch& scratch) {
  const int64_t L = g.column_cols();
  if (chunk.size == 1 && g.columns_are_input()) {
    return input[chunk.first].view({g.column_rows(), L});
  }
  Tensor cols = scratch.matrix(chunk.slot, g.column_rows(), chunk.size * L);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_im2col", [&] {
    const int64_t sample_elements = g.channels * g.in_h * g.in_w;
    for (int64_t s = 0; s < chunk.size; ++s) {
      const scalar_t* x = input.const_data_ptr<scalar_t>() + (chunk.first + s) * sample_elements;
      scalar_t* dst = cols.mutable_data_ptr<scalar_t>() + s * L;
      if (offsets.empty()) {
        im2col<scalar_t>(x, g, dst, chunk.size * L);
      } else {
        im2col_table<scalar_t>(x, g, offsets.data(), dst, chunk.size * L);
      }
    }
  });
  return cols;
}

// grad_output of a chunk as [O, chunk.size * L], the layout of the GEMM
// result: a view for one sample, a transposed copy into scratch otherwise.
Tensor chunk_grad_output(const Tensor& grad_output, const Chunk& chunk, Scratch& scratch) {
  const int64_t out_channels = grad_output.size(1);
  const int64_t L = grad_output.size(2) * grad_output.size(3);
  if (chunk.size == 1) {
    return grad_output[chunk.first].view({out_channels, L});
  }
  Tensor channel_major = scratch.matrix(chunk.slot, out_channels, chunk.size * L);
  channel_major.view({out_channels, chunk.size, L})
      .copy_(grad_output.narrow(0, chunk.first, chunk.size).view({chunk.size, out_channels, L}).transpose(0, 1));
  return channel_major;
}

// col2im of one sample: `cols` (its columns, rows `row_stride` apart) added
// up onto its gradient `grad_input_s` (C, H, W), which it overwrites.
// `offsets`: im2col_offsets(g) (empty: the row-by-row col2im).
void fold_columns(
    const Tensor& cols, int64_t row_stride, const Corr2dGeometry& g, const std::vector<int32_t>& offsets,
    const Tensor& grad_input_s) {
  AT_DISPATCH_FLOATING_TYPES(cols.scalar_type(), "pycnn_col2im", [&] {
    const scalar_t* src = cols.const_data_ptr<scalar_t>();
    scalar_t* dx = grad_input_s.mutable_data_ptr<scalar_t>();
    if (offsets.empty()) {
      col2im<scalar_t>(src, row_stride, g, dx);
    } else {
      col2im_table<scalar_t>(src, row_stride, g, offsets.data(), dx);
    }
  });
}

// Whether a chunk of several samples runs one GEMM per sample, reading its
// columns of the chunk's matrix and writing its own (O, L) block of the output
// (or reading its own block of grad_output), instead of one GEMM for the chunk
// and a transposing copy. Only pycnn's GEMM takes the strided column view
// without a copy, and a sample's L columns must fill its 32-column tiles well.
constexpr int64_t kMinColumnsPerSample = 128;

// (Not for the small per-group products of a depthwise convolution, which go
// to ATen: one call per sample and group would multiply its per-call cost.)
inline bool gemm_per_sample(const Tensor& t, const Chunk& chunk, int64_t L, int64_t groups) {
  return chunk.size > 1 && L >= kMinColumnsPerSample && groups == 1 && t.scalar_type() == at::kFloat &&
      cpu::has_fast_gemm();
}

// Whether the samples of the batch are spread over the threads, each thread
// unfolding its own samples and multiplying them by the weight packed once
// for the call (cpu::PackedLeft), rather than each sample's GEMM split over
// the threads: split in whole 32-column tiles, a 12x12 sample's 144 columns
// went 96 / 48 to two threads, and each thread packed the weight again.
inline bool samples_over_threads(const Tensor& t, int64_t batch, int64_t L, int64_t groups) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && batch >= threads && L >= kMinColumnsPerSample && groups == 1 && t.scalar_type() == at::kFloat &&
      cpu::has_fast_gemm();
}

// Runs body(sample, slot) for every sample, spread over the threads; `slot`
// is the thread's scratch buffer (Scratch).
template <typename Body>
void for_each_sample(int64_t batch, const Body& body) {
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see for_each_chunk
    for (int64_t s = begin; s < end; ++s) {
      body(s, at::get_thread_num());
    }
  });
}

// A plain 1x1 layer (stride 1, no padding, ungrouped) on a small map --
// GoogLeNet's 832-channel layers on 3x3: a sample's product would be a few
// columns wide, and the chunk path's im2col and transposes copy the input
// and output row by row, a few elements at a time (at batch 64, 0.8 ms
// against the GEMM's 0.05). The whole batch is one product instead,
// channel-major: x as [C, N * L] (one permuting copy), out = w @ x as
// [O, N * L], permuted back into (N, O, H, W) -- each copy one ATen call.
inline bool pointwise_as_one_product(const Corr2dGeometry& g, int64_t groups, int64_t batch, const Tensor& t) {
  return g.columns_are_input() && groups == 1 && batch > 1 && g.column_cols() < kMinColumnsPerSample &&
      t.scalar_type() == at::kFloat;
}

// t (N, C, H, W) as the matrix [C, N * H * W].
Tensor channel_major(const Tensor& t) {
  return t.transpose(0, 1).reshape({t.size(1), -1});
}

// The matrix m [C, N * H * W] written into out (N, C, H, W).
void copy_from_channel_major(Tensor& out, const Tensor& m) {
  out.copy_(m.view({out.size(1), out.size(0), out.size(2), out.size(3)}).transpose(0, 1));
}

// --- entry points -----------------------------------------------------------

// The paths of corr2d_cpu and its backward that take a geometry as it is,
// in the order they are tried: each runs what its header describes (for
// this pass) and an earlier one did not take. The rows path is decided
// before the entry points make NCHW copies of their tensors, as it reads any
// layout (a channels_last input went through an NCHW copy and back). kOther:
// pointwise or im2col + GEMM, chosen below on the tensors. winograd = false:
// the path after Winograd's, where its backward declined a non-finite weight
// or sum.
enum class Corr2dPath { kWinograd, kDirect, kRows, kOther };

Corr2dPath corr2d_path(
    cpu::Corr2dPass pass, const Corr2dGeometry& g, int64_t out_channels, int64_t groups, int64_t batch,
    at::ScalarType dtype, bool winograd = true) {
  const bool direct = cpu::use_direct_corr2d(g, out_channels, groups, batch, pass);
  if (direct && cpu::direct_before_winograd(g, out_channels, groups, pass)) {
    return Corr2dPath::kDirect;
  }
  if (winograd && cpu::use_winograd_corr2d(g, out_channels, groups, batch, dtype)) {
    return Corr2dPath::kWinograd;
  }
  if (direct) {
    return Corr2dPath::kDirect;
  }
  if (cpu::use_rows_corr2d(g, out_channels, groups, dtype)) {
    return Corr2dPath::kRows;
  }
  return Corr2dPath::kOther;
}

Tensor corr2d_cpu(
    const Tensor& input_arg, const Tensor& weight_arg, const std::optional<Tensor>& bias_arg, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const auto output_shape = corr2d_output_shape(input_arg, weight_arg, bias_arg, stride, padding, dilation, groups);
  // The GEMMs below are ATen calls on tensors that may require grad: this
  // kernel is itself the computation autograd records, so skip autograd.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  if (is_reduced_precision(input_arg)) {  // in float32 (precision.h)
    return corr2d_cpu(upcast(input_arg), upcast(weight_arg), upcast(bias_arg), stride, padding, dilation, groups)
        .to(input_arg.scalar_type());
  }
  Tensor output = at::empty(output_shape, input_arg.options());
  if (output.numel() == 0) {
    return output;
  }
  const Tensor weight = weight_arg.contiguous();
  const bool has_bias = bias_arg.has_value() && bias_arg->defined();
  const auto g = make_corr2d_geometry(input_arg.sizes(), weight.sizes(), stride, padding, dilation);
  const Corr2dPath path =
      corr2d_path(cpu::Corr2dPass::kForward, g, weight.size(0), groups, input_arg.size(0), input_arg.scalar_type());
  if (path == Corr2dPath::kRows) {  // before the NCHW copy below: the rows read any layout (see corr2d_path)
    return cpu::corr2d_rows_forward(input_arg, weight, has_bias ? bias_arg->contiguous() : Tensor(), g)
        .contiguous(input_arg.suggest_memory_format());
  }
  const Tensor input = input_arg.contiguous();
  if (path == Corr2dPath::kWinograd) {
    cpu::corr2d_winograd_forward(input, weight, has_bias ? bias_arg->contiguous() : Tensor(), g, output);
    return output.contiguous(input_arg.suggest_memory_format());
  }
  if (path == Corr2dPath::kDirect) {
    cpu::corr2d_direct_forward(input, weight, has_bias ? bias_arg->contiguous() : Tensor(), g, groups, output);
    return output.contiguous(input_arg.suggest_memory_format());
  }
  if (pointwise_as_one_product(g, groups, input.size(0), input)) {
    const Tensor x = channel_major(input);
    Tensor result = at::empty({weight.size(0), x.size(1)}, input.options());
    if (has_bias) {
      result.copy_(bias_arg->view({-1, 1}).expand_as(result));
    }
    cpu::gemm(result, weight.view({weight.size(0), -1}), x, /*accumulate=*/has_bias);
    copy_from_channel_major(output, result);
    return output.contiguous(input_arg.suggest_memory_format());
  }
  const int64_t out_channels = weight.size(0);
  const int64_t out_channels_per_group = out_channels / groups;
  const int64_t rows_per_group = g.column_rows() / groups;
  const int64_t L = g.column_cols();
  const Tensor weight_groups = weight.view({groups, out_channels_per_group, rows_per_group});
  const Tensor bias_groups = has_bias ? bias_arg->contiguous().view({groups, out_channels_per_group, 1}) : Tensor();

  const std::vector<int32_t> offsets = im2col_offsets(g);
  if (samples_over_threads(input, input.size(0), L, groups)) {
    const cpu::PackedLeft packed_weight(weight_groups[0]);
    Scratch columns_scratch(g.column_rows() * L, input.options());
    for_each_sample(input.size(0), [&](int64_t s, int slot) {
      const Tensor cols = chunk_columns(input, g, offsets, Chunk{s, 1, slot}, columns_scratch);
      Tensor out_s = output[s].view({out_channels, L});
      if (has_bias) {
        out_s.copy_(bias_groups[0].expand_as(out_s));
      }
      cpu::gemm(out_s, packed_weight, cols, /*accumulate=*/has_bias);
    });
    return output.contiguous(input_arg.suggest_memory_format());
  }
  const int64_t chunk_size = samples_per_chunk(g, input.size(0));
  Scratch columns_scratch(g.column_rows() * chunk_size * L, input.options());
  Scratch result_scratch(out_channels * chunk_size * L, input.options());
  // out_k = bias_k + weight_k @ cols_k, for group k.
  const auto multiply = [&](Tensor out_k, int64_t k, const Tensor& cols_k) {
    if (has_bias) {
      out_k.copy_(bias_groups[k].expand_as(out_k));
    }
    cpu::chunk_gemm(out_k, weight_groups[k], cols_k, /*accumulate=*/has_bias);
  };
  for_each_chunk(input.size(0), chunk_size, [&](const Chunk& chunk) {
    const int64_t width = chunk.size * L;
    const Tensor cols = chunk_columns(input, g, offsets, chunk, columns_scratch).view({groups, rows_per_group, width});
    if (gemm_per_sample(input, chunk, L, groups)) {
      for (int64_t s = 0; s < chunk.size; ++s) {
        Tensor out_groups = output[chunk.first + s].view({groups, out_channels_per_group, L});
        for (int64_t k = 0; k < groups; ++k) {
          multiply(out_groups[k], k, cols[k].narrow(1, s * L, L));
        }
      }
      return;
    }
    // One sample: straight into the output. Several: into scratch, then transposed.
    Tensor result = chunk.size == 1 ? output[chunk.first].view({out_channels, L})
                                    : result_scratch.matrix(chunk.slot, out_channels, width);
    Tensor result_groups = result.view({groups, out_channels_per_group, width});
    for (int64_t k = 0; k < groups; ++k) {
      multiply(result_groups[k], k, cols[k]);
    }
    if (chunk.size > 1) {
      output.narrow(0, chunk.first, chunk.size)
          .view({chunk.size, out_channels, L})
          .copy_(result.view({out_channels, chunk.size, L}).transpose(0, 1));
    }
  });
  return output.contiguous(input_arg.suggest_memory_format());  // as native: channels_last in, channels_last out
}

Tensor corr2d_backward_input_cpu(
    const Tensor& grad_output_arg, const Tensor& weight_arg, c10::SymIntArrayRef input_size_arg, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const auto input_size = C10_AS_INTARRAYREF_SLOW(input_size_arg);
  check_corr2d_backward(
      "pycnn.corr2d_backward_input", grad_output_arg, weight_arg, "weight", input_size, weight_arg.sizes(), stride,
      padding, dilation, groups);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see corr2d_cpu
  if (is_reduced_precision(grad_output_arg)) {  // in float32 (precision.h)
    return corr2d_backward_input_cpu(
               upcast(grad_output_arg), upcast(weight_arg), input_size_arg, stride, padding, dilation, groups)
        .to(grad_output_arg.scalar_type());
  }

  Tensor grad_input = at::empty(input_size, grad_output_arg.options());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const Tensor weight = weight_arg.contiguous();
  const auto g = make_corr2d_geometry(input_size, weight.sizes(), stride, padding, dilation);
  constexpr auto pass = cpu::Corr2dPass::kBackwardInput;
  Corr2dPath path = corr2d_path(pass, g, weight.size(0), groups, input_size[0], grad_output_arg.scalar_type());
  if (path == Corr2dPath::kWinograd) {
    if (cpu::corr2d_winograd_backward_input(grad_output_arg.contiguous(), weight, g, grad_input)) {
      return grad_input.contiguous(grad_output_arg.suggest_memory_format());
    }
    path =
        corr2d_path(pass, g, weight.size(0), groups, input_size[0], grad_output_arg.scalar_type(), /*winograd=*/false);
  }
  if (path == Corr2dPath::kRows) {  // before the NCHW copy below, as in corr2d_cpu
    return cpu::corr2d_rows_backward_input(grad_output_arg, weight, g)
        .contiguous(grad_output_arg.suggest_memory_format());
  }
  const Tensor grad_output = grad_output_arg.contiguous();
  if (path == Corr2dPath::kDirect) {
    cpu::corr2d_direct_backward_input(grad_output, weight, g, groups, grad_input);
    return grad_input.contiguous(grad_output_arg.suggest_memory_format());
  }
  if (pointwise_as_one_product(g, groups, input_size[0], grad_output)) {  // grad_x = wᵀ @ grad_out
    const Tensor grad_out = channel_major(grad_output);
    Tensor result = at::empty({g.channels, grad_out.size(1)}, grad_output.options());
    cpu::gemm(result, weight.view({weight.size(0), -1}).t(), grad_out, /*accumulate=*/false);
    copy_from_channel_major(grad_input, result);
    return grad_input.contiguous(grad_output_arg.suggest_memory_format());
  }
  const int64_t out_channels = weight.size(0);
  const int64_t out_channels_per_group = out_channels / groups;
  const int64_t rows_per_group = g.column_rows() / groups;
  const int64_t L = g.column_cols();
  // weight_gᵀ: [rows_per_group, out_channels_per_group]
  const Tensor weight_t = weight.view({groups, out_channels_per_group, rows_per_group}).transpose(1, 2);

  const std::vector<int32_t> offsets = im2col_offsets(g);
  if (samples_over_threads(grad_output, input_size[0], L, groups)) {
    const cpu::PackedLeft packed_weight_t(weight_t[0]);
    Scratch columns_scratch(g.column_rows() * L, grad_output.options());
    for_each_sample(input_size[0], [&](int64_t s, int slot) {
      const Tensor grad_out_s = grad_output[s].view({out_channels, L});
      if (g.columns_are_input()) {  // the GEMM gives the input's gradient directly
        Tensor dst = grad_input[s].view({g.column_rows(), L});
        cpu::gemm(dst, packed_weight_t, grad_out_s, /*accumulate=*/false);
        return;
      }
      Tensor cols = columns_scratch.matrix(slot, g.column_rows(), L);
      cpu::gemm(cols, packed_weight_t, grad_out_s, /*accumulate=*/false);
      fold_columns(cols, L, g, offsets, grad_input[s]);
    });
    return grad_input.contiguous(grad_output_arg.suggest_memory_format());
  }
  const int64_t chunk_size = samples_per_chunk(g, input_size[0]);
  Scratch columns_scratch(g.column_rows() * chunk_size * L, grad_output.options());
  Scratch grad_output_scratch(out_channels * chunk_size * L, grad_output.options());
  for_each_chunk(input_size[0], chunk_size, [&](const Chunk& chunk) {
    const int64_t width = chunk.size * L;
    const bool per_sample = gemm_per_sample(grad_output, chunk, L, groups);
    const Tensor grad_out = per_sample
        ? Tensor()
        : chunk_grad_output(grad_output, chunk, grad_output_scratch).view({groups, out_channels_per_group, width});
    if (chunk.size == 1 && g.columns_are_input()) {
      // The columns are the input: the GEMM gives the input's gradient directly.
      Tensor grad_in = grad_input[chunk.first].view({groups, rows_per_group, L});
      for (int64_t k = 0; k < groups; ++k) {
        Tensor dst = grad_in[k];
        cpu::chunk_gemm(dst, weight_t[k], grad_out[k], /*accumulate=*/false);
      }
      return;
    }
    Tensor cols = columns_scratch.matrix(chunk.slot, g.column_rows(), width);
    Tensor cols_groups = cols.view({groups, rows_per_group, width});
    if (per_sample) {
      for (int64_t s = 0; s < chunk.size; ++s) {
        const Tensor grad_out_s = grad_output[chunk.first + s].view({groups, out_channels_per_group, L});
        for (int64_t k = 0; k < groups; ++k) {
          Tensor dst = cols_groups[k].narrow(1, s * L, L);
          cpu::chunk_gemm(dst, weight_t[k], grad_out_s[k], /*accumulate=*/false);
        }
      }
    } else {
      for (int64_t k = 0; k < groups; ++k) {
        Tensor dst = cols_groups[k];
        cpu::chunk_gemm(dst, weight_t[k], grad_out[k], /*accumulate=*/false);
      }
    }
    for (int64_t s = 0; s < chunk.size; ++s) {
      fold_columns(cols.narrow(1, s * L, L), width, g, offsets, grad_input[chunk.first + s]);
    }
  });
  return grad_input.contiguous(grad_output_arg.suggest_memory_format());
}

std::tuple<Tensor, Tensor> corr2d_backward_weight_cpu(
    const Tensor& grad_output_arg, const Tensor& input_arg, c10::SymIntArrayRef weight_size_arg, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups, std::array<bool, 2> output_mask) {
  const auto weight_size = C10_AS_INTARRAYREF_SLOW(weight_size_arg);
  check_corr2d_backward(
      "pycnn.corr2d_backward_weight", grad_output_arg, input_arg, "input", input_arg.sizes(), weight_size, stride,
      padding, dilation, groups);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see corr2d_cpu
  if (is_reduced_precision(input_arg)) {  // in float32 (precision.h)
    auto [grad_weight, grad_bias] = corr2d_backward_weight_cpu(
        upcast(grad_output_arg), upcast(input_arg), weight_size_arg, stride, padding, dilation, groups, output_mask);
    return {grad_weight.to(input_arg.scalar_type()), grad_bias.to(input_arg.scalar_type())};
  }
  // An output not asked for is an empty (0,) tensor, and not computed.
  const auto not_computed = [&] { return at::empty({0}, input_arg.options()); };

  const auto g = make_corr2d_geometry(input_arg.sizes(), weight_size, stride, padding, dilation);
  const int64_t out_channels = weight_size[0];
  const int64_t out_channels_per_group = out_channels / groups;
  const int64_t rows_per_group = g.column_rows() / groups;
  const int64_t L = g.column_cols();
  const int64_t batch = input_arg.size(0);

  // grad_bias: grad_output summed over the batch and every output position.
  Tensor grad_bias = output_mask[1] ? grad_output_arg.sum({0, 2, 3}) : not_computed();
  if (!output_mask[0]) {
    return {not_computed(), grad_bias};
  }
  constexpr auto pass = cpu::Corr2dPass::kBackwardWeight;
  Corr2dPath path = corr2d_path(pass, g, out_channels, groups, batch, input_arg.scalar_type());
  if (path == Corr2dPath::kWinograd) {
    Tensor grad_weight = at::empty(weight_size, input_arg.options());
    if (cpu::corr2d_winograd_backward_weight(grad_output_arg.contiguous(), input_arg.contiguous(), g, grad_weight)) {
      return {grad_weight, grad_bias};
    }
    path = corr2d_path(pass, g, out_channels, groups, batch, input_arg.scalar_type(), /*winograd=*/false);
  }
  if (path == Corr2dPath::kRows) {  // before the NCHW copies below, as in corr2d_cpu
    return {cpu::corr2d_rows_backward_weight(grad_output_arg, input_arg, g, out_channels), grad_bias};
  }
  const Tensor grad_output = grad_output_arg.contiguous();
  const Tensor input = input_arg.contiguous();
  if (path == Corr2dPath::kDirect) {
    Tensor grad_weight = at::empty(weight_size, input.options());
    cpu::corr2d_direct_backward_weight(grad_output, input, g, groups, grad_weight);
    return {grad_weight, grad_bias};
  }
  if (pointwise_as_one_product(g, groups, batch, input)) {  // grad_w = grad_out @ xᵀ
    Tensor grad_weight = at::empty({out_channels, g.channels}, input.options());
    cpu::gemm(grad_weight, channel_major(grad_output), channel_major(input).t(), /*accumulate=*/false);
    return {grad_weight.view(weight_size), grad_bias};
  }

  // Each thread accumulates its chunks' contributions into its own slot; the
  // slots are summed at the end, so no two threads write one element.
  Tensor partial = at::zeros({at::get_num_threads(), groups, out_channels_per_group, rows_per_group}, input.options());
  const int64_t chunk_size = samples_per_chunk(g, batch);
  const std::vector<int32_t> offsets = im2col_offsets(g);
  Scratch columns_scratch(g.column_rows() * chunk_size * L, input.options());
  Scratch grad_output_scratch(out_channels * chunk_size * L, input.options());
  for_each_chunk(batch, chunk_size, [&](const Chunk& chunk) {
    const int64_t width = chunk.size * L;
    const Tensor cols = chunk_columns(input, g, offsets, chunk, columns_scratch).view({groups, rows_per_group, width});
    const Tensor grad_out =
        chunk_grad_output(grad_output, chunk, grad_output_scratch).view({groups, out_channels_per_group, width});
    Tensor acc = partial[chunk.slot];
    for (int64_t k = 0; k < groups; ++k) {
      Tensor acc_k = acc[k];
      cpu::chunk_gemm(acc_k, grad_out[k], cols[k].t(), /*accumulate=*/true);
    }
  });
  Tensor grad_weight = partial.sum(0).view(weight_size);
  return {grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, CPU, m) {
  m.impl("corr2d", &corr2d_cpu);
  m.impl("corr2d_backward_input", &corr2d_backward_input_cpu);
  m.impl("corr2d_backward_weight", &corr2d_backward_weight_cpu);
}

}  // namespace pycnn
