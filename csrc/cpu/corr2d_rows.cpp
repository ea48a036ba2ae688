// corr2d's channels-last rows (corr2d_rows.h says why).
//
// With x the input in channels-last order (N, H, W, C), the column matrix of
// a chunk of samples is
//
//   rows[(n, oh, ow), (i, j, c)] = x[n, oh * sh - ph + i * dh, ow * sw - pw + j * dw, c]
//
// (0 where the tap falls on padding): one row per output position, each tap
// one run of C contiguous values. With the weight permuted to w_rows[o, (i,
// j, c)] (O, kh, kw, C), the three passes are products of these matrices:
//
//   out_rows[(n, oh, ow), o]  = rows @ w_rowsᵀ              (the output, channels-last)
//   grad_rows                 = grad_out_rows @ w_rows       (then folded back onto x's gradient)
//   grad_w_rows[o, (i, j, c)] = grad_out_rowsᵀ @ rows        (summed over the chunks)
//
// The fold is unfold's adjoint: every run of C values is added back onto the
// input position it was read from. Positions of one sample only touch that
// sample, so the fold runs in parallel over samples, and over blocks of
// channels when there are fewer samples than threads.
#include "corr2d_rows.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "gemm.h"

namespace pycnn {
namespace cpu {
namespace {

// An output map of fewer positions than this (11x11 and smaller: the
// models' 7x7, 6x6, 5x5 and 3x3 stages) runs the rows; larger ones keep the
// im2col path, whose map-row copies are long enough there and whose samples
// spread over the threads with the weight packed once (python -m pycnn.bench
// ops).
constexpr int64_t kMaxOutputPositions = 128;
// Fewer input channels make each tap's run too short to beat im2col's copies.
constexpr int64_t kMinChannels = 8;
// More output channels than this keep im2col: there the products
// [positions, kh * kw * C] @ [kh * kw * C, O] ran slower than im2col's
// [O, C * kh * kw] @ [C * kh * kw, positions] (GoogLeNet's 96 -> 208 on 6x6 at batch 1:
// forward 0.40 ms against 0.27, ResNet-18's 1x1 stride-2 128 -> 256 at
// batch 64: 3.2 against 1.8), where 10 to 128 outputs ran 1.2-2 times faster.
constexpr int64_t kMaxOutputChannels = 128;
// The column matrix of a chunk holds at most this many values (64 MB of
// float32); a larger batch runs chunk after chunk.
constexpr int64_t kMaxRowsElements = int64_t{1} << 24;
// Values copied or added that make one task of at::parallel_for worth its cost.
constexpr int64_t kMinTaskElements = 1 << 14;

bool rows_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("PYCNN_CPU_ROWS");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

// Input row ih (or column iw) that output oh reads at tap i, given as the
// forward's arithmetic: oh * stride - pad + i * dilation.
inline int64_t source(int64_t out, int64_t stride, int64_t pad, int64_t tap, int64_t dilation) {
  return out * stride - pad + tap * dilation;
}

// The rows of samples [first, first + samples) of x (N, H, W, C) into rows
// [samples * OH * OW, kh * kw * C].
void unfold_rows(const float* x, const Corr2dGeometry& g, int64_t first, int64_t samples, float* rows) {
  const int64_t C = g.channels, L = g.column_cols(), K = g.column_rows();
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / K);
  at::parallel_for(0, samples * L, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = first + r / L, oh = r % L / g.out_w, ow = r % g.out_w;
      float* dst = rows + r * K;
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        const int64_t ih = source(oh, g.stride_h, g.pad_h, i, g.dilation_h);
        for (int64_t j = 0; j < g.kernel_w; ++j, dst += C) {
          const int64_t iw = source(ow, g.stride_w, g.pad_w, j, g.dilation_w);
          if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) {
            std::fill(dst, dst + C, 0.0f);
          } else {
            std::memcpy(dst, x + ((n * g.in_h + ih) * g.in_w + iw) * C, C * sizeof(float));
          }
        }
      }
    }
  });
}

// The adjoint of unfold_rows: grad_rows [samples * OH * OW, kh * kw * C]
// added up onto samples [first, first + samples) of grad_x (N, H, W, C),
// which it overwrites there.
void fold_rows(const float* grad_rows, const Corr2dGeometry& g, int64_t first, int64_t samples, float* grad_x) {
  const int64_t C = g.channels, L = g.column_cols(), K = g.column_rows();
  // Blocks of channels (whole 16-value vectors) enough to give every thread a task.
  const int64_t threads = at::get_num_threads();
  const int64_t wanted = std::min<int64_t>((threads + samples - 1) / samples, (C + 15) / 16);
  const int64_t block_width = ((C + wanted - 1) / wanted + 15) / 16 * 16;
  const int64_t blocks = (C + block_width - 1) / block_width;
  const int64_t plane = g.in_h * g.in_w * C;
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / (L * K / blocks));
  at::parallel_for(0, samples * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / blocks, c0 = task % blocks * block_width, c1 = std::min(C, c0 + block_width);
      float* dx = grad_x + (first + s) * plane;
      for (int64_t p = 0; p < g.in_h * g.in_w; ++p) {
        std::fill(dx + p * C + c0, dx + p * C + c1, 0.0f);
      }
      for (int64_t l = 0; l < L; ++l) {
        const int64_t oh = l / g.out_w, ow = l % g.out_w;
        const float* src = grad_rows + (s * L + l) * K;
        for (int64_t i = 0; i < g.kernel_h; ++i) {
          const int64_t ih = source(oh, g.stride_h, g.pad_h, i, g.dilation_h);
          for (int64_t j = 0; j < g.kernel_w; ++j, src += C) {
            const int64_t iw = source(ow, g.stride_w, g.pad_w, j, g.dilation_w);
            if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) {
              continue;
            }
            float* dst = dx + (ih * g.in_w + iw) * C;
            for (int64_t c = c0; c < c1; ++c) {  // a loop the compiler vectorises
              dst[c] += src[c];
            }
          }
        }
      }
    }
  });
}

// t (N, C, H, W), any layout, as (N, H, W, C) contiguous: no copy when t is
// channels-last already.
at::Tensor channels_last_rows(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).contiguous();
}

// The weight (O, C, kh, kw) as w_rows[o, (i, j, c)], the order of a row's taps.
at::Tensor weight_rows(const at::Tensor& weight) {
  return weight.permute({0, 2, 3, 1}).contiguous().view({weight.size(0), -1});
}

// Samples per chunk (batch >= 1, a non-empty map): as many as keep the
// column matrix within kMaxRowsElements.
int64_t samples_per_chunk(const Corr2dGeometry& g, int64_t batch) {
  return std::clamp<int64_t>(kMaxRowsElements / (g.column_cols() * g.column_rows()), 1, std::max<int64_t>(batch, 1));
}

}  // namespace

bool use_rows_corr2d(const Corr2dGeometry& g, int64_t out_channels, int64_t groups, at::ScalarType dtype) {
  return rows_enabled() && dtype == at::kFloat && groups == 1 && !g.columns_are_input() && g.channels >= kMinChannels &&
      out_channels <= kMaxOutputChannels && g.column_cols() > 0 && g.column_cols() < kMaxOutputPositions;
}

at::Tensor corr2d_rows_forward(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const Corr2dGeometry& g) {
  const int64_t batch = input.size(0), O = weight.size(0), L = g.column_cols(), K = g.column_rows();
  const at::Tensor x = channels_last_rows(input);
  const at::Tensor w_rows = weight_rows(weight);
  at::Tensor out = at::empty({batch, g.out_h, g.out_w, O}, input.options());
  const at::Tensor out_rows = out.view({batch * L, O});
  if (bias.defined()) {
    out_rows.copy_(bias.view({1, O}).expand_as(out_rows));
  }
  const int64_t chunk = samples_per_chunk(g, batch);
  at::Tensor rows = at::empty({chunk * L, K}, input.options());
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t samples = std::min(chunk, batch - first);
    at::Tensor rows_s = rows.narrow(0, 0, samples * L);
    unfold_rows(x.const_data_ptr<float>(), g, first, samples, rows_s.mutable_data_ptr<float>());
    at::Tensor out_s = out_rows.narrow(0, first * L, samples * L);
    chunk_gemm(out_s, rows_s, w_rows.t(), /*accumulate=*/bias.defined());
  }
  return out.permute({0, 3, 1, 2});
}

at::Tensor corr2d_rows_backward_input(
    const at::Tensor& grad_output, const at::Tensor& weight, const Corr2dGeometry& g) {
  const int64_t batch = grad_output.size(0), O = weight.size(0), L = g.column_cols(), K = g.column_rows();
  const at::Tensor grad_out_rows = channels_last_rows(grad_output).view({batch * L, O});
  const at::Tensor w_rows = weight_rows(weight);
  at::Tensor grad_x = at::empty({batch, g.in_h, g.in_w, g.channels}, grad_output.options());
  const int64_t chunk = samples_per_chunk(g, batch);
  at::Tensor grad_rows = at::empty({chunk * L, K}, grad_output.options());
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t samples = std::min(chunk, batch - first);
    at::Tensor grad_rows_s = grad_rows.narrow(0, 0, samples * L);
    chunk_gemm(grad_rows_s, grad_out_rows.narrow(0, first * L, samples * L), w_rows, /*accumulate=*/false);
    fold_rows(grad_rows_s.const_data_ptr<float>(), g, first, samples, grad_x.mutable_data_ptr<float>());
  }
  return grad_x.permute({0, 3, 1, 2});
}

at::Tensor corr2d_rows_backward_weight(
    const at::Tensor& grad_output, const at::Tensor& input, const Corr2dGeometry& g, int64_t out_channels) {
  const int64_t batch = input.size(0), O = out_channels, L = g.column_cols(), K = g.column_rows();
  if (batch == 0) {  // no samples, nothing summed: a zero gradient (the loop below writes nothing)
    return at::zeros({O, g.channels, g.kernel_h, g.kernel_w}, input.options());
  }
  const at::Tensor x = channels_last_rows(input);
  const at::Tensor grad_out_rows = channels_last_rows(grad_output).view({batch * L, O});
  at::Tensor grad_w_rows = at::empty({O, K}, input.options());
  const int64_t chunk = samples_per_chunk(g, batch);
  at::Tensor rows = at::empty({chunk * L, K}, input.options());
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t samples = std::min(chunk, batch - first);
    at::Tensor rows_s = rows.narrow(0, 0, samples * L);
    unfold_rows(x.const_data_ptr<float>(), g, first, samples, rows_s.mutable_data_ptr<float>());
    chunk_gemm(grad_w_rows, grad_out_rows.narrow(0, first * L, samples * L).t(), rows_s, /*accumulate=*/first > 0);
  }
  return grad_w_rows.view({O, g.kernel_h, g.kernel_w, g.channels}).permute({0, 3, 1, 2}).contiguous();
}

}  // namespace cpu
}  // namespace pycnn
