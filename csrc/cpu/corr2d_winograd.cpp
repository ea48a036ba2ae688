// Winograd's minimal filtering for corr2d on the CPU (see corr2d_winograd.h):
// F(2x2, 3x3) and F(2x2, 5x5).
//
// For each 2x2 block of outputs (a tile) and each input channel, the block of
// input it reads, d (4x4 for a 3x3 kernel, 6x6 for a 5x5), becomes
// V = Bᵀ d B; each kernel g becomes U = G g Gᵀ, and the tile's outputs are
// Y = Aᵀ (sum over channels of U ⊙ V) A. For 3x3 kernels (interpolation
// points 0, 1, -1 and ∞):
//
//        | 1  0 -1  0 |        | 1    0    0  |
//   Bᵀ = | 0  1  1  0 |    G = | 1/2  1/2  1/2 |    Aᵀ = | 1  1  1  0 |
//        | 0 -1  1  0 |        | 1/2 -1/2  1/2 |         | 0  1 -1 -1 |
//        | 0  1  0 -1 |        | 0    0    1  |
//
// and for 5x5 kernels (points 0, 1, -1, 1/2, -2 and ∞):
//
//        | 1 -3/2  -2  3/2  1   0 |        |   1      0     0     0     0   |
//        | 0  -1   1/2 5/2  1   0 |        |  1/3    1/3   1/3   1/3   1/3  |
//   Bᵀ = | 0   1  -5/2 1/2  1   0 |    G = | -1/3    1/3  -1/3   1/3  -1/3  |
//        | 0  -2   -1   2   1   0 |        | -16/15 -8/15 -4/15 -2/15 -1/15 |
//        | 0  1/2  -1 -1/2  1   0 |        |  1/15 -2/15  4/15 -8/15 16/15  |
//        | 0   1  -3/2 -2  3/2  1 |        |   0      0     0     0     1   |
//
//   Aᵀ = | 1  1  1   1    1  0 |
//        | 0  1 -1  1/2  -2  1 |
//
// (On random data these points' float32 error was 2.5-3 times below that of
// the more usual 0, ±1, ±2 and ∞, and 3-4 times native's im2col error.)
//
// The channel sum of U ⊙ V is, for each entry ("tap") t of the tile's block
// (16 or 36), a matrix product: M[t] (O x tiles) = U[t] (O x C) @ V[t] (C x tiles).
// Tiles run in blocks of at most kTilesPerBlock, the blocks over the threads:
// a thread transforms its block's input into its own scratch, runs the
// products with the weight packed once for the call (PackedLeft), and
// transforms their result into its tiles of the output, so a block's data
// stays in that core's caches from one step to the next.
#include "corr2d_winograd.h"

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gemm.h"

namespace pycnn {
namespace cpu {
namespace {

// Each transform by its 1-D step: the 2-D transform applies it along the
// columns of a block, then along its rows. A step writes out only the terms
// whose coefficients are not zero, so that an inf or NaN of the input
// reaches exactly the outputs whose windows hold it (zero times inf would be
// a NaN in the others).

// F(2x2, 3x3), the matrices above.
struct F2x2_3x3 {
  static constexpr int kKernel = 3;
  static constexpr int kBlock = kKernel + 1;  // the input block of a 2x2 tile, on a side
  static constexpr int64_t kTaps = kBlock * kBlock;

  static inline void input(const float (&d)[kBlock], float (&v)[kBlock]) {  // v = Bᵀ d
    v[0] = d[0] - d[2];
    v[1] = d[1] + d[2];
    v[2] = d[2] - d[1];
    v[3] = d[1] - d[3];
  }
  static inline void kernel(const float (&g)[kKernel], float (&u)[kBlock]) {  // u = G g
    u[0] = g[0];
    u[1] = 0.5f * (g[0] + g[1] + g[2]);
    u[2] = 0.5f * (g[0] - g[1] + g[2]);
    u[3] = g[2];
  }
  static inline void output(const float (&m)[kBlock], float (&y)[2]) {  // y = Aᵀ m
    y[0] = m[0] + m[1] + m[2];
    y[1] = m[1] - m[2] - m[3];
  }
  // The weight gradient's steps, the transposes: w = A e, dg = Gᵀ du.
  static inline void grad_output(const float (&e)[2], float (&w)[kBlock]) {
    w[0] = e[0];
    w[1] = e[0] + e[1];
    w[2] = e[0] - e[1];
    w[3] = -e[1];
  }
  static inline void kernel_gradient(const float (&du)[kBlock], float (&dg)[kKernel]) {
    dg[0] = du[0] + 0.5f * (du[1] + du[2]);
    dg[1] = 0.5f * (du[1] - du[2]);
    dg[2] = 0.5f * (du[1] + du[2]) + du[3];
  }
};

// F(2x2, 5x5), the matrices above: 36 multiplications for a tile's 100
// multiply-adds (2.8 times fewer; F(2x2, 3x3) saves 2.25 times).
struct F2x2_5x5 {
  static constexpr int kKernel = 5;
  static constexpr int kBlock = kKernel + 1;
  static constexpr int64_t kTaps = kBlock * kBlock;

  static inline void input(const float (&d)[kBlock], float (&v)[kBlock]) {  // v = Bᵀ d
    v[0] = d[0] + d[4] - 2.0f * d[2] + 1.5f * (d[3] - d[1]);
    v[1] = d[4] - d[1] + 0.5f * d[2] + 2.5f * d[3];
    v[2] = d[4] + d[1] - 2.5f * d[2] + 0.5f * d[3];
    v[3] = d[4] - d[2] + 2.0f * (d[3] - d[1]);
    v[4] = d[4] - d[2] + 0.5f * (d[1] - d[3]);
    v[5] = d[1] + d[5] - 2.0f * d[3] + 1.5f * (d[4] - d[2]);
  }
  static inline void kernel(const float (&g)[kKernel], float (&u)[kBlock]) {  // u = G g
    const float even = g[0] + g[2] + g[4], odd = g[1] + g[3];
    u[0] = g[0];
    u[1] = (even + odd) * (1.0f / 3.0f);
    u[2] = (odd - even) * (1.0f / 3.0f);
    u[3] = -(16.0f * g[0] + 8.0f * g[1] + 4.0f * g[2] + 2.0f * g[3] + g[4]) * (1.0f / 15.0f);
    u[4] = (g[0] - 2.0f * g[1] + 4.0f * g[2] - 8.0f * g[3] + 16.0f * g[4]) * (1.0f / 15.0f);
    u[5] = g[4];
  }
  static inline void output(const float (&m)[kBlock], float (&y)[2]) {  // y = Aᵀ m
    y[0] = m[0] + m[1] + m[2] + m[3] + m[4];
    y[1] = m[1] - m[2] + 0.5f * m[3] - 2.0f * m[4] + m[5];
  }
  static inline void grad_output(const float (&e)[2], float (&w)[kBlock]) {  // w = A e
    w[0] = e[0];
    w[1] = e[0] + e[1];
    w[2] = e[0] - e[1];
    w[3] = e[0] + 0.5f * e[1];
    w[4] = e[0] - 2.0f * e[1];
    w[5] = e[1];
  }
  static inline void kernel_gradient(const float (&du)[kBlock], float (&dg)[kKernel]) {  // dg = Gᵀ du
    const float sum = (du[1] + du[2]) * (1.0f / 3.0f), difference = (du[1] - du[2]) * (1.0f / 3.0f);
    dg[0] = du[0] + difference - (16.0f * du[3] - du[4]) * (1.0f / 15.0f);
    dg[1] = sum - (8.0f * du[3] + 2.0f * du[4]) * (1.0f / 15.0f);
    dg[2] = difference - (4.0f * du[3] - 4.0f * du[4]) * (1.0f / 15.0f);
    dg[3] = sum - (2.0f * du[3] + 8.0f * du[4]) * (1.0f / 15.0f);
    dg[4] = difference - (du[3] - 16.0f * du[4]) * (1.0f / 15.0f) + du[5];
  }
};

// Below this many channels on either side, the products are too shallow or
// too narrow to repay the transforms: with 16 channels im2col + GEMM did
// better, with 32 (DenseNet's 32-output layers) Winograd did (forward and
// both gradients together). With many input channels, fewer output channels
// do: NiN's 3x3 384 -> 10 on a 5x5 map took 0.4 of im2col's time, 128 -> 10
// and 128 -> 16 on 12x12 0.8; 64 -> 16 on 24x24 took 1.3.
constexpr int64_t kMinChannels = 32;
constexpr int64_t kManyChannels = 128;
constexpr int64_t kMinOutChannelsOfMany = 8;

// The same thresholds held for F(2x2, 5x5), forward and input gradient
// against im2col + GEMM (2 threads, two runs): 0.53-0.56 of its time for
// 96 -> 256 on 26x26 and 16x16 and 128 -> 128 on 12x12 at batch 8 (NiN's,
// AlexNet's and GoogLeNet's shapes), 0.72 for 96 -> 256 on 26x26 at batch 1,
// 0.62-0.79 for 32 -> 96 on 12x12, 0.76-1.15 on 6x6 maps; its weight
// gradient 0.53-0.73, but 1.11 for 32 -> 64 on 6x6 at batch 8 (BENCHMARKS.md).

// Below this many tiles in the batch, transforming the weight (16 or 36 x O
// x C values, again for every call, as training changes it) costs more than
// the multiply-adds saved.
constexpr int64_t kMinTiles = 64;

// Outputs narrower than this (ResNet's and DenseNet's 3x3 maps) fill 2x2
// tiles poorly: a 3x3 output takes 4 tiles of 16 products, 64 against the 81
// multiply-adds of the direct sum, and the transforms cost more than that saves.
constexpr int64_t kMinOutputSize = 4;

// Tiles of a block: wide enough products for the GEMM's 32-column tiles,
// small enough that a block's transformed input and products stay in cache.
constexpr int64_t kTilesPerBlock = 192;

bool winograd_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("PYCNN_CPU_WINOGRAD");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

// The transforms' loops are vector loops (over channels, or over the
// kernels of a row of U): GCC compiles each of them three times, for
// AVX-512, AVX2 and any x86-64, and the CPU picks one when the library loads.
// Each is written once, as an always-inlined template (..._of), and compiled
// in those three versions once per Winograd variant by an overload. The
// loops over a block's rows and columns inside the vector loop must be
// unrolled for GCC to vectorise it (`#pragma GCC unroll`): F(2x2, 5x5)'s
// 6x6 blocks are past its own limit, and without them its transforms ran
// one channel at a time and took more than half of the layer's time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYCNN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYCNN_VECTOR_CLONES
#endif
#define PYCNN_INLINE inline __attribute__((always_inline))

// u[t * tap_stride + n] = (G g_n Gᵀ)[t] for the kernels g_n, n < count, whose
// kKernel² values start at kernels + n * kernel_stride (flipped in both axes
// when `flip`). Returns whether every value was finite.
template <typename F>
PYCNN_INLINE bool transform_kernels_of(
    const float* kernels, int64_t kernel_stride, bool flip, int64_t count, float* u, int64_t tap_stride) {
  constexpr int K = F::kKernel, B = F::kBlock;
  int64_t offsets[K * K];
#pragma GCC unroll 36
  for (int k = 0; k < K * K; ++k) {
    offsets[k] = flip ? K * K - 1 - k : k;
  }
  float probe = 0.0f;  // 0 * every value: NaN if one is inf or NaN
#pragma omp simd reduction(+ : probe)
  for (int64_t n = 0; n < count; ++n) {
    const float* kernel = kernels + n * kernel_stride;
    float gg[B][K];  // G g, column by column
#pragma GCC unroll 36
    for (int j = 0; j < K; ++j) {
      float column[K], transformed[B];
#pragma GCC unroll 36
      for (int i = 0; i < K; ++i) {
        column[i] = kernel[offsets[i * K + j]];
        probe += 0.0f * column[i];
      }
      F::kernel(column, transformed);
#pragma GCC unroll 36
      for (int i = 0; i < B; ++i) {
        gg[i][j] = transformed[i];
      }
    }
#pragma GCC unroll 36
    for (int i = 0; i < B; ++i) {  // (G g) Gᵀ, row i
      float row[B];
      F::kernel(gg[i], row);
#pragma GCC unroll 36
      for (int j = 0; j < B; ++j) {
        u[(i * B + j) * tap_stride + n] = row[j];
      }
    }
  }
  return probe == 0.0f;
}

PYCNN_VECTOR_CLONES bool transform_kernels(
    F2x2_3x3, const float* kernels, int64_t kernel_stride, bool flip, int64_t count, float* u, int64_t tap_stride) {
  return transform_kernels_of<F2x2_3x3>(kernels, kernel_stride, flip, count, u, tap_stride);
}

PYCNN_VECTOR_CLONES bool transform_kernels(
    F2x2_5x5, const float* kernels, int64_t kernel_stride, bool flip, int64_t count, float* u, int64_t tap_stride) {
  return transform_kernels_of<F2x2_5x5>(kernels, kernel_stride, flip, count, u, tap_stride);
}

// U[t][row][col] = (G g Gᵀ)[t] for each kernel. Forward: row = o, col = c,
// g = weight[o][c]. Input gradient: row = c, col = o, g = weight[o][c]
// flipped in both axes (the transposed, flipped weight of corr2d_winograd.h).
// `finite`, if given, is set to whether every weight is finite.
template <typename F>
at::Tensor transform_weight(const at::Tensor& weight, bool for_input_gradient, bool* finite = nullptr) {
  constexpr int64_t kernel_size = F::kKernel * F::kKernel;
  const int64_t out_channels = weight.size(0);
  const int64_t channels = weight.size(1);
  const int64_t rows = for_input_gradient ? channels : out_channels;
  const int64_t depth = for_input_gradient ? out_channels : channels;
  at::Tensor transformed = at::empty({F::kTaps, rows, depth}, weight.options());
  const float* w = weight.const_data_ptr<float>();
  float* u = transformed.mutable_data_ptr<float>();
  // Along a row of U: the next input channel's kernel (forward), or the next
  // output channel's (input gradient).
  const int64_t row_stride = for_input_gradient ? kernel_size : channels * kernel_size;
  const int64_t col_stride = for_input_gradient ? channels * kernel_size : kernel_size;
  std::atomic<bool> all_finite{true};
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      if (!transform_kernels(
              F{}, w + row * row_stride, col_stride, for_input_gradient, depth, u + row * depth, rows * depth)) {
        all_finite = false;
      }
    }
  });
  if (finite != nullptr) {
    *finite = all_finite;
  }
  return transformed;
}

// One correlation of a square kernel, stride 1: input (batch, channels,
// in_h, in_w) padded by pad_h, pad_w, to output (batch, out_channels, out_h,
// out_w).
struct Problem {
  int64_t batch, channels, in_h, in_w, pad_h, pad_w, out_channels, out_h, out_w;

  int64_t tiles_h() const { return (out_h + 1) / 2; }
  int64_t tiles_w() const { return (out_w + 1) / 2; }
  int64_t tiles() const { return batch * tiles_h() * tiles_w(); }
};

// Where tile `index` of the batch lies: its sample and its top-left output.
struct Tile {
  int64_t sample, oh, ow;
};

inline Tile locate(const Problem& p, int64_t index) {
  const int64_t per_sample = p.tiles_h() * p.tiles_w();
  const int64_t within = index % per_sample;
  return {index / per_sample, 2 * (within / p.tiles_w()), 2 * (within % p.tiles_w())};
}

// The transforms are vector loops over channels: the input is read
// channels-last (N, H, W, C), so that the values of a tile's block are rows
// of C contiguous channels, and each block's transformed input is stored
// v[t][q][c] -- tile q's channels contiguous -- which the GEMM reads as the
// transposed view [C, tiles].

// v[(t * count + q) * channels + c] = (Bᵀ d B)[t], d the input block of
// channel c that tile first + q reads, zero outside the input; x (N, H, W, C).
// `zeros`: `channels` zeros, read for the block's values outside the input.
template <typename F>
PYCNN_INLINE void transform_input_of(
    const float* x, const Problem& p, int64_t first, int64_t count, const float* zeros, float* v) {
  constexpr int B = F::kBlock;
  const int64_t channels = p.channels;
  const int64_t tap_stride = count * channels;
  for (int64_t q = 0; q < count; ++q) {
    const Tile tile = locate(p, first + q);
    const float* d[B * B];
#pragma GCC unroll 36
    for (int i = 0; i < B; ++i) {
      const int64_t ih = tile.oh - p.pad_h + i;
#pragma GCC unroll 36
      for (int j = 0; j < B; ++j) {
        const int64_t iw = tile.ow - p.pad_w + j;
        const bool inside = ih >= 0 && ih < p.in_h && iw >= 0 && iw < p.in_w;
        d[i * B + j] = inside ? x + ((tile.sample * p.in_h + ih) * p.in_w + iw) * channels : zeros;
      }
    }
    float* out = v + q * channels;
#pragma omp simd  // the rows read and the rows written never overlap
    for (int64_t c = 0; c < channels; ++c) {
      float bd[B][B];  // Bᵀ d, column by column
#pragma GCC unroll 36
      for (int j = 0; j < B; ++j) {
        float column[B], transformed[B];
#pragma GCC unroll 36
        for (int i = 0; i < B; ++i) {
          column[i] = d[i * B + j][c];
        }
        F::input(column, transformed);
#pragma GCC unroll 36
        for (int i = 0; i < B; ++i) {
          bd[i][j] = transformed[i];
        }
      }
#pragma GCC unroll 36
      for (int i = 0; i < B; ++i) {  // (Bᵀ d) B, row i
        float row[B];
        F::input(bd[i], row);
#pragma GCC unroll 36
        for (int j = 0; j < B; ++j) {
          out[(i * B + j) * tap_stride + c] = row[j];
        }
      }
    }
  }
}

PYCNN_VECTOR_CLONES void transform_input(
    F2x2_3x3, const float* x, const Problem& p, int64_t first, int64_t count, const float* zeros, float* v) {
  transform_input_of<F2x2_3x3>(x, p, first, count, zeros, v);
}

PYCNN_VECTOR_CLONES void transform_input(
    F2x2_5x5, const float* x, const Problem& p, int64_t first, int64_t count, const float* zeros, float* v) {
  transform_input_of<F2x2_5x5>(x, p, first, count, zeros, v);
}

// The block's outputs: y[2x2 outputs of tile first + q, channel o] = Aᵀ m A
// (+ bias[o]), m the block's entries m[(t * out_channels + o) * count + q]; y
// (N, O, OH, OW); outputs past the edge of an odd-sized map are dropped.
// `work`: 4 * count floats.
template <typename F>
PYCNN_INLINE void transform_output_of(
    const float* m, const float* bias, const Problem& p, int64_t first, int64_t count, float* y, float* work) {
  constexpr int B = F::kBlock;
  const int64_t tap_stride = p.out_channels * count;
  const int64_t plane = p.out_h * p.out_w;
  float* y00 = work;  // each tile's four outputs, in tile order
  float* y01 = work + count;
  float* y10 = work + 2 * count;
  float* y11 = work + 3 * count;
  for (int64_t o = 0; o < p.out_channels; ++o) {
    const float b = bias != nullptr ? bias[o] : 0.0f;
    const float* src = m + o * count;
#pragma omp simd
    for (int64_t q = 0; q < count; ++q) {
      float am[2][B];  // Aᵀ m, column by column
#pragma GCC unroll 36
      for (int j = 0; j < B; ++j) {
        float column[B], two[2];
#pragma GCC unroll 36
        for (int i = 0; i < B; ++i) {
          column[i] = src[(i * B + j) * tap_stride + q];
        }
        F::output(column, two);
        am[0][j] = two[0];
        am[1][j] = two[1];
      }
      float top[2], bottom[2];  // (Aᵀ m) A
      F::output(am[0], top);
      F::output(am[1], bottom);
      y00[q] = top[0] + b;
      y01[q] = top[1] + b;
      y10[q] = bottom[0] + b;
      y11[q] = bottom[1] + b;
    }
    for (int64_t q = 0; q < count; ++q) {
      const Tile tile = locate(p, first + q);
      float* dst = y + (tile.sample * p.out_channels + o) * plane + tile.oh * p.out_w + tile.ow;
      const bool second_col = tile.ow + 1 < p.out_w;
      dst[0] = y00[q];
      if (second_col) {
        dst[1] = y01[q];
      }
      if (tile.oh + 1 < p.out_h) {
        dst[p.out_w] = y10[q];
        if (second_col) {
          dst[p.out_w + 1] = y11[q];
        }
      }
    }
  }
}

PYCNN_VECTOR_CLONES void transform_output(
    F2x2_3x3, const float* m, const float* bias, const Problem& p, int64_t first, int64_t count, float* y,
    float* work) {
  transform_output_of<F2x2_3x3>(m, bias, p, first, count, y, work);
}

PYCNN_VECTOR_CLONES void transform_output(
    F2x2_5x5, const float* m, const float* bias, const Problem& p, int64_t first, int64_t count, float* y,
    float* work) {
  transform_output_of<F2x2_5x5>(m, bias, p, first, count, y, work);
}

// The batch's tiles in `count` blocks of `size` tiles (the last one shorter):
// blocks of at most max_tiles, as many as the threads at least (when there
// are tiles for it) and a multiple of them, of equal sizes.
struct Blocks {
  int64_t count, size;
};

Blocks plan_blocks(int64_t tiles, int64_t max_tiles) {
  const int64_t threads = at::get_num_threads();
  int64_t blocks = (tiles + max_tiles - 1) / max_tiles;
  if (threads > 1 && tiles >= 32 * threads) {
    blocks = (blocks + threads - 1) / threads * threads;
  }
  const int64_t size = (tiles + blocks - 1) / blocks;
  return {(tiles + size - 1) / size, size};
}

// y (N, O, OH, OW) = the correlation of x (N, H, W, C) with the kernels
// whose transform is `transformed` ([taps, out_channels, channels]), plus
// bias (nullptr: none).
template <typename F>
void run(const float* x, const at::Tensor& transformed, const float* bias, const Problem& p, float* y) {
  constexpr int64_t taps = F::kTaps;
  const int64_t tiles = p.tiles();
  const auto [blocks, block_tiles] = plan_blocks(tiles, kTilesPerBlock);

  std::vector<PackedLeft> packed;
  packed.reserve(taps);
  for (int64_t t = 0; t < taps; ++t) {
    packed.emplace_back(transformed[t]);
  }
  const std::vector<float> zeros(p.channels, 0.0f);
  const int64_t block_floats = taps * (p.channels + p.out_channels) * block_tiles;
  // One slot per thread that gets blocks: at::parallel_for numbers them from 0.
  const int64_t slots = std::min<int64_t>(at::get_num_threads(), blocks);
  at::Tensor scratch = at::empty({slots, block_floats + 4 * block_tiles}, transformed.options());

  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // Dispatch state is thread-local: a worker needs its own guard to skip
    // autograd in the ATen calls below (the kernel is what autograd records).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const int64_t slot = at::get_thread_num();
    TORCH_INTERNAL_ASSERT(slot < slots);  // two threads on one slot would race
    at::Tensor mine = scratch[slot];
    float* work = mine.mutable_data_ptr<float>() + block_floats;
    for (int64_t index = begin; index < end; ++index) {
      const int64_t first = index * block_tiles;
      const int64_t count = std::min(block_tiles, tiles - first);
      // v[t] is [tiles, C]; the GEMM reads it transposed, as [C, tiles].
      const at::Tensor v = mine.narrow(0, 0, taps * count * p.channels).view({taps, count, p.channels});
      at::Tensor m =
          mine.narrow(0, taps * count * p.channels, taps * p.out_channels * count).view({taps, p.out_channels, count});
      transform_input(F{}, x, p, first, count, zeros.data(), v.mutable_data_ptr<float>());
      for (int64_t t = 0; t < taps; ++t) {
        at::Tensor m_t = m[t];
        gemm(m_t, packed[t], v[t].t(), /*accumulate=*/false);
      }
      transform_output(F{}, m.const_data_ptr<float>(), bias, p, first, count, y, work);
    }
  });
}

// The weight's gradient. With Y = Aᵀ (U ⊙ V) A for each tile, the gradient
// of U = G g Gᵀ is, for each tap, a sum over tiles:
// dU[t] (O x C) = Σ_q (A dY_q Aᵀ)[t] V_q[t] -- 16 (or 36) matrix products of
// depth tiles -- and the kernel's gradient is dg = Gᵀ dU G.

// w[(t * count + q) * out_channels + o] = (A e Aᵀ)[t], e the 2x2 block of
// grad_output (N, OH, OW, O) of tile first + q and channel o, zero past the
// edge of an odd-sized map; A = (Aᵀ)ᵀ, kBlock x 2.
template <typename F>
PYCNN_INLINE void transform_grad_output_of(
    const float* gy, const Problem& p, int64_t first, int64_t count, const float* zeros, float* w) {
  constexpr int B = F::kBlock;
  const int64_t channels = p.out_channels;
  const int64_t tap_stride = count * channels;
  for (int64_t q = 0; q < count; ++q) {
    const Tile tile = locate(p, first + q);
    const float* e[2][2];
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        const bool inside = tile.oh + i < p.out_h && tile.ow + j < p.out_w;
        e[i][j] = inside ? gy + ((tile.sample * p.out_h + tile.oh + i) * p.out_w + tile.ow + j) * channels : zeros;
      }
    }
    float* out = w + q * channels;
#pragma omp simd  // the 4 rows read and the rows written never overlap
    for (int64_t o = 0; o < channels; ++o) {
      float ae[B][2];  // A e, column by column
#pragma GCC unroll 2
      for (int j = 0; j < 2; ++j) {
        const float column[2] = {e[0][j][o], e[1][j][o]};
        float transformed[B];
        F::grad_output(column, transformed);
#pragma GCC unroll 36
        for (int i = 0; i < B; ++i) {
          ae[i][j] = transformed[i];
        }
      }
#pragma GCC unroll 36
      for (int i = 0; i < B; ++i) {  // (A e) Aᵀ, row i
        float row[B];
        F::grad_output(ae[i], row);
#pragma GCC unroll 36
        for (int j = 0; j < B; ++j) {
          out[(i * B + j) * tap_stride + o] = row[j];
        }
      }
    }
  }
}

PYCNN_VECTOR_CLONES void transform_grad_output(
    F2x2_3x3, const float* gy, const Problem& p, int64_t first, int64_t count, const float* zeros, float* w) {
  transform_grad_output_of<F2x2_3x3>(gy, p, first, count, zeros, w);
}

PYCNN_VECTOR_CLONES void transform_grad_output(
    F2x2_5x5, const float* gy, const Problem& p, int64_t first, int64_t count, const float* zeros, float* w) {
  transform_grad_output_of<F2x2_5x5>(gy, p, first, count, zeros, w);
}

// Tiles of a block of the weight's gradient, for 16 taps: each block adds its
// products onto the thread's dU (taps x O x C), so longer blocks read and
// write it less; with 36 taps, blocks hold as many values, fewer tiles.
constexpr int64_t kTileTapsPerGradientBlock = 512 * 16;

// dg[k] = Gᵀ dU_k G for the kernels k in [begin, end), dU_k's entries at
// du[t * kernels + k], after adding into them the other `slots` - 1 partial
// sums, `slot_stride` apart. Returns whether every sum was finite.
template <typename F>
PYCNN_INLINE bool transform_weight_gradient_of(
    float* du, int64_t slots, int64_t slot_stride, int64_t kernels, int64_t begin, int64_t end, float* dg) {
  constexpr int K = F::kKernel, B = F::kBlock;
  for (int64_t slot = 1; slot < slots; ++slot) {
    for (int t = 0; t < F::kTaps; ++t) {
      float* into = du + t * kernels;
      const float* from = du + slot * slot_stride + t * kernels;
      for (int64_t k = begin; k < end; ++k) {
        into[k] += from[k];
      }
    }
  }
  bool finite = true;
  for (int64_t k = begin; k < end; ++k) {
    float u[B][B];
    for (int t = 0; t < F::kTaps; ++t) {
      u[t / B][t % B] = du[t * kernels + k];
      finite = finite && std::isfinite(u[t / B][t % B]);
    }
    float gu[K][B];  // Gᵀ dU, column by column
    for (int j = 0; j < B; ++j) {
      float column[B], transformed[K];
      for (int i = 0; i < B; ++i) {
        column[i] = u[i][j];
      }
      F::kernel_gradient(column, transformed);
      for (int i = 0; i < K; ++i) {
        gu[i][j] = transformed[i];
      }
    }
    float* out = dg + k * K * K;
    for (int i = 0; i < K; ++i) {  // (Gᵀ dU) G, row i
      float row[K];
      F::kernel_gradient(gu[i], row);
      for (int j = 0; j < K; ++j) {
        out[i * K + j] = row[j];
      }
    }
  }
  return finite;
}

PYCNN_VECTOR_CLONES bool transform_weight_gradient(
    F2x2_3x3, float* du, int64_t slots, int64_t slot_stride, int64_t kernels, int64_t begin, int64_t end, float* dg) {
  return transform_weight_gradient_of<F2x2_3x3>(du, slots, slot_stride, kernels, begin, end, dg);
}

PYCNN_VECTOR_CLONES bool transform_weight_gradient(
    F2x2_5x5, float* du, int64_t slots, int64_t slot_stride, int64_t kernels, int64_t begin, int64_t end, float* dg) {
  return transform_weight_gradient_of<F2x2_5x5>(du, slots, slot_stride, kernels, begin, end, dg);
}

// grad_weight (O, C, k, k) of the correlation of x (N, H, W, C) giving
// grad_output gy (N, OH, OW, O); false where a sum dU is not finite (see
// corr2d_winograd_backward_weight).
template <typename F>
bool run_weight_gradient(const float* x, const float* gy, const Problem& p, float* grad_weight) {
  constexpr int64_t taps = F::kTaps;
  const int64_t tiles = p.tiles();
  const auto [blocks, block_tiles] = plan_blocks(tiles, kTileTapsPerGradientBlock / taps);
  const int64_t slots = std::min<int64_t>(at::get_num_threads(), blocks);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  // Each thread sums its blocks' products into its own slot of `partial`
  // (every thread gets at least one block: the first one overwrites).
  at::Tensor partial = at::empty({slots, taps, p.out_channels, p.channels}, options);
  const std::vector<float> zeros(std::max(p.channels, p.out_channels), 0.0f);
  const int64_t block_floats = taps * (p.channels + p.out_channels) * block_tiles;
  at::Tensor scratch = at::empty({slots, block_floats}, options);

  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see run
    const int64_t slot = at::get_thread_num();
    TORCH_INTERNAL_ASSERT(slot < slots);
    at::Tensor mine = scratch[slot];
    at::Tensor sum = partial[slot];
    for (int64_t index = begin; index < end; ++index) {
      const int64_t first = index * block_tiles;
      const int64_t count = std::min(block_tiles, tiles - first);
      const at::Tensor v = mine.narrow(0, 0, taps * count * p.channels).view({taps, count, p.channels});
      const at::Tensor w =
          mine.narrow(0, taps * count * p.channels, taps * count * p.out_channels).view({taps, count, p.out_channels});
      transform_input(F{}, x, p, first, count, zeros.data(), v.mutable_data_ptr<float>());
      transform_grad_output(F{}, gy, p, first, count, zeros.data(), w.mutable_data_ptr<float>());
      for (int64_t t = 0; t < taps; ++t) {
        at::Tensor sum_t = sum[t];
        gemm(sum_t, w[t].t(), v[t], /*accumulate=*/index != begin);
      }
    }
  });

  // dg = Gᵀ dU G for each kernel, dU the slots' sum.
  const int64_t kernels = p.out_channels * p.channels;
  std::atomic<bool> all_finite{true};
  at::parallel_for(0, kernels, 256, [&](int64_t begin, int64_t end) {
    if (!transform_weight_gradient(
            F{}, partial.mutable_data_ptr<float>(), slots, taps * kernels, kernels, begin, end, grad_weight)) {
      all_finite = false;
    }
  });
  return all_finite;
}

}  // namespace

bool use_winograd_corr2d(
    const Corr2dGeometry& g, int64_t out_channels, int64_t groups, int64_t batch, at::ScalarType dtype) {
  const int64_t kernel = g.kernel_h;
  const int64_t tiles = batch * ((g.out_h + 1) / 2) * ((g.out_w + 1) / 2);
  // The 128 -> 8 rule of the thresholds above was measured on 3x3 layers only.
  const bool f2x2_5x5 = kernel == 5 && out_channels >= kMinChannels;
  return winograd_enabled() && dtype == at::kFloat && groups == 1 && g.kernel_w == kernel &&
      (kernel == 3 || f2x2_5x5) && g.stride_h == 1 && g.stride_w == 1 && g.dilation_h == 1 && g.dilation_w == 1 &&
      g.pad_h <= kernel - 1 && g.pad_w <= kernel - 1 && g.channels >= kMinChannels &&
      (out_channels >= kMinChannels || (g.channels >= kManyChannels && out_channels >= kMinOutChannelsOfMany)) &&
      g.out_h >= kMinOutputSize && g.out_w >= kMinOutputSize && tiles >= kMinTiles;
}

namespace {

template <typename F>
void forward(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const Corr2dGeometry& g,
    at::Tensor& output) {
  const Problem p{input.size(0), g.channels, g.in_h, g.in_w, g.pad_h, g.pad_w, weight.size(0), g.out_h, g.out_w};
  const at::Tensor input_nhwc = input.permute({0, 2, 3, 1}).contiguous();
  run<F>(
      input_nhwc.const_data_ptr<float>(), transform_weight<F>(weight, /*for_input_gradient=*/false),
      bias.defined() ? bias.const_data_ptr<float>() : nullptr, p, output.mutable_data_ptr<float>());
}

template <typename F>
bool backward_input(
    const at::Tensor& grad_output, const at::Tensor& weight, const Corr2dGeometry& g, at::Tensor& grad_input) {
  bool finite = true;
  const at::Tensor transformed = transform_weight<F>(weight, /*for_input_gradient=*/true, &finite);
  if (!finite) {
    return false;
  }
  // corr2d(grad_output, weight transposed and flipped, padding k - 1 - padding):
  // an output of out_h + 2 * (k - 1 - pad_h) - (k - 1) = in_h rows.
  constexpr int64_t k = F::kKernel;
  const Problem p{grad_output.size(0), weight.size(0), g.out_h, g.out_w, k - 1 - g.pad_h,
                  k - 1 - g.pad_w,     g.channels,     g.in_h,  g.in_w};
  const at::Tensor grad_output_nhwc = grad_output.permute({0, 2, 3, 1}).contiguous();
  run<F>(grad_output_nhwc.const_data_ptr<float>(), transformed, nullptr, p, grad_input.mutable_data_ptr<float>());
  return true;
}

}  // namespace

void corr2d_winograd_forward(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const Corr2dGeometry& g,
    at::Tensor& output) {
  if (g.kernel_h == 5) {
    forward<F2x2_5x5>(input, weight, bias, g, output);
  } else {
    forward<F2x2_3x3>(input, weight, bias, g, output);
  }
}

bool corr2d_winograd_backward_input(
    const at::Tensor& grad_output, const at::Tensor& weight, const Corr2dGeometry& g, at::Tensor& grad_input) {
  return g.kernel_h == 5 ? backward_input<F2x2_5x5>(grad_output, weight, g, grad_input)
                         : backward_input<F2x2_3x3>(grad_output, weight, g, grad_input);
}

bool corr2d_winograd_backward_weight(
    const at::Tensor& grad_output, const at::Tensor& input, const Corr2dGeometry& g, at::Tensor& grad_weight) {
  const Problem p{input.size(0), g.channels, g.in_h, g.in_w, g.pad_h, g.pad_w, grad_output.size(1), g.out_h, g.out_w};
  const at::Tensor input_nhwc = input.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor grad_output_nhwc = grad_output.permute({0, 2, 3, 1}).contiguous();
  const auto run = g.kernel_h == 5 ? &run_weight_gradient<F2x2_5x5> : &run_weight_gradient<F2x2_3x3>;
  return run(
      input_nhwc.const_data_ptr<float>(), grad_output_nhwc.const_data_ptr<float>(), p,
      grad_weight.mutable_data_ptr<float>());
}

}  // namespace cpu
}  // namespace pycnn
