// corr2d's direct loops for grouped convolutions with few channels per group
// (corr2d_direct.h says why).
//
// Output plane (n, o) is a sum over its group's input channels c and the
// kernel taps (i, j) of weight[o, c, i, j] times a shifted window of input
// plane (n, c). The loops are arranged so that every tap is the same shift of
// one buffer for every output:
//
// - The padded input plane is split into stride_h * stride_w phase planes
//   (one when the stride is 1): phase (a, b) holds the padded input's rows
//   a, a + stride_h, ... and columns b, b + stride_w, .... Tap (i, j) reads
//   one phase only -- the one of (i * dilation_h, j * dilation_w) -- at rows
//   and columns shifted by whole steps.
// - The output is computed in "wide" rows with the phase planes' pitch Pw
//   (the last Pw - OW entries of each are scrap, dropped at the end).
//
// Then out_wide[l] = bias + sum over taps t of w_t * phases[offset_t + l]:
// accumulate_taps below, which holds a block of outputs -- four output
// channels by two vectors -- in registers while it runs through all the taps
// and channels (each vector loaded serves four outputs), instead of a pass
// over the whole plane per tap.
//
// The backward uses the same buffers. The input's gradient is the adjoint --
// grad_phase[offset_t + l] += w_t * grad_out_wide[l] -- written as a gather,
// grad_phase[m] = sum_t w_t * grad_out_wide[m - offset_t], over a copy of
// grad_out_wide with a zero margin in front, so that it is accumulate_taps
// again; the phases are then gathered back onto the input's gradient. The
// weight's gradient is grad_w_t = dot(grad_out_wide, phases[offset_t:]).
//
// Scrap entries are zero in grad_out_wide, so they add w * 0 to the input's
// gradient and 0 * x to the weight's: exactly nothing while w and x are
// finite. Where a weight is infinite or NaN, or a weight's gradient comes out
// so, the sums run again row by row over the real outputs only, so that a
// value no real output reads cannot turn a gradient into NaN.
#include "corr2d_direct.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// GCC notes that a function returning a 64-byte vector has an AVX-512 ABI;
// the vector helpers below are always inlined, so no such call exists.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace pycnn {
namespace cpu {
namespace {

// The direct loops run grouped layers with at most this many input channels
// per group (im2col + GEMM makes a product per group, of as many rows)...
constexpr int64_t kMaxDirectChannelsPerGroup = 16;
// ... and, otherwise, at most this many output channels per group.
constexpr int64_t kMaxDirectOutputsPerGroup = 32;
// An ungrouped layer of a batch smaller than the threads runs them with at
// most this many input channels (use_direct_corr2d).
constexpr int64_t kMaxSplitSampleChannels = 32;
// On output maps under 12x12 (use_direct_corr2d): the input's gradient runs
// the loops for at most this many output channels -- the depth of the rows'
// product grad_out_rows @ w_rows, too shallow for a GEMM below it -- ...
constexpr int64_t kMaxShallowOutputs = 16;
// ... or fewer input channels than this, where the rows do not run
// (corr2d_rows.cpp's kMinChannels) and im2col's copies are as short.
constexpr int64_t kFewInputChannels = 8;

// Multiply-adds that make one task of at::parallel_for worth its cost.
constexpr int64_t kMinTaskWork = 1 << 15;
// Samples whose planes the weight's gradient holds at once (backward_weight),
// at most, and the bytes they may take.
constexpr int64_t kDotSamples = 4;
constexpr int64_t kDotSamplesBytes = 256 * 1024;

// --- vector primitives ------------------------------------------------------
//
// Vectors of GCC's vector extension, kBytes wide: 64 (one AVX-512
// register), 32 (AVX2) or 16 (SSE2). The float loops are compiled three
// times, each for its instruction set and with vectors of its register width
// (a 64-byte vector on AVX2 is two registers, and the blocks of accumulators
// below would no longer fit in the 16 registers: the loops spilled to the
// stack and ran 13-22 times slower than native's), and the CPU's own is
// picked once (accumulate_taps<float>), so that pycnn runs on any x86-64 CPU.
// The buffers are laid out for the widest (Vec<T>::kLanes).

template <typename T, int kBytes = 64>
struct Vec {
  typedef T type __attribute__((vector_size(kBytes)));
  static constexpr int64_t kLanes = kBytes / sizeof(T);
  __attribute__((always_inline)) static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  __attribute__((always_inline)) static void store(T* p, type v) { std::memcpy(p, &v, sizeof v); }
};

// Outputs [0, K) of accumulate_taps_loop below on entries [l0, n), P
// vectors of each at a time, as far as whole blocks go (returns where they
// end): the K * P accumulators stay in registers while the loop runs through
// the taps, and each vector loaded from src serves all K outputs.
template <typename T, int kBytes, int K, int P>
__attribute__((always_inline)) inline int64_t accumulate_span(
    T* __restrict dst, int64_t dst_stride, const T* __restrict init, const T* __restrict src,
    const int64_t* __restrict offsets, const T* __restrict weights, int64_t weight_stride, int64_t taps, int64_t l0,
    int64_t n) {
  using V = Vec<T, kBytes>;
  constexpr int64_t L = V::kLanes;
  int64_t l = l0;
  for (; l + P * L <= n; l += P * L) {
    typename V::type acc[K * P];  // acc[k * P + q]: output k, vector q
#pragma GCC unroll 8
    for (int a = 0; a < K * P; ++a) {
      acc[a] = typename V::type{} + init[a / P];
    }
    for (int64_t t = 0; t < taps; ++t) {
      const T* s = src + offsets[t] + l;
      typename V::type x[P];
#pragma GCC unroll 8
      for (int q = 0; q < P; ++q) {
        x[q] = V::load(s + q * L);
      }
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) {
        const T w = weights[k * weight_stride + t];
#pragma GCC unroll 8
        for (int q = 0; q < P; ++q) {
          acc[k * P + q] += w * x[q];
        }
      }
    }
#pragma GCC unroll 8
    for (int a = 0; a < K * P; ++a) {
      V::store(dst + a / P * dst_stride + l + a % P * L, acc[a]);
    }
  }
  return l;
}

// Outputs [0, K): blocks of P vectors, then single vectors for the rest.
template <typename T, int kBytes, int K, int P>
__attribute__((always_inline)) inline void accumulate_block(
    T* dst, int64_t dst_stride, const T* init, const T* src, const int64_t* offsets, const T* weights,
    int64_t weight_stride, int64_t taps, int64_t n) {
  const int64_t done =
      accumulate_span<T, kBytes, K, P>(dst, dst_stride, init, src, offsets, weights, weight_stride, taps, 0, n);
  accumulate_span<T, kBytes, K, 1>(dst, dst_stride, init, src, offsets, weights, weight_stride, taps, done, n);
}

// For each output k < outputs: dst[k * dst_stride + l] = init[k] + the sum
// over taps t of weights[k * weight_stride + t] * src[offsets[t] + l], for l
// in [0, n); n is a multiple of Vec<T, kBytes>::kLanes. Outputs go four, two
// or one at a time (4 x 2 accumulators, two vectors loaded, one weight
// broadcast: 11 registers).
template <typename T, int kBytes = 64>
__attribute__((always_inline)) inline void accumulate_taps_loop(
    T* dst, int64_t dst_stride, const T* init, const T* src, const int64_t* offsets, const T* weights,
    int64_t weight_stride, int64_t taps, int64_t outputs, int64_t n) {
  int64_t k = 0;
  for (; k + 4 <= outputs; k += 4) {
    accumulate_block<T, kBytes, 4, 2>(
        dst + k * dst_stride, dst_stride, init + k, src, offsets, weights + k * weight_stride, weight_stride, taps, n);
  }
  for (; k + 2 <= outputs; k += 2) {
    accumulate_block<T, kBytes, 2, 2>(
        dst + k * dst_stride, dst_stride, init + k, src, offsets, weights + k * weight_stride, weight_stride, taps, n);
  }
  for (; k < outputs; ++k) {
    accumulate_block<T, kBytes, 1, 4>(
        dst + k * dst_stride, dst_stride, init + k, src, offsets, weights + k * weight_stride, weight_stride, taps, n);
  }
}

// The samples of one dot_taps call: its dot products run over `count`
// samples, sample s's operands `a_stride` and `src_stride` values after
// sample s - 1's, so that each sum is reduced across its vector lanes once
// for all of them rather than once a sample.
struct DotSamples {
  int64_t count, a_stride, src_stride;
};

// Outputs [0, K) of dot_taps_loop below: four taps at a time, so that each
// vector loaded from src serves K outputs and each loaded from a four taps.
template <typename T, int kBytes, int K>
__attribute__((always_inline)) inline void dot_block(
    const T* __restrict a, int64_t a_stride, const T* __restrict src, const int64_t* __restrict offsets, int64_t taps,
    int64_t n, DotSamples samples, T* __restrict out, int64_t out_stride) {
  using V = Vec<T, kBytes>;
  constexpr int64_t L = V::kLanes;
  for (int64_t t0 = 0; t0 < taps; t0 += 4) {
    const int64_t count = std::min<int64_t>(4, taps - t0);
    const T* s[4];
    for (int64_t j = 0; j < 4; ++j) {
      s[j] = src + offsets[t0 + std::min(j, count - 1)];  // past the last tap: the last again, dropped
    }
    typename V::type acc[K * 4];  // acc[k * 4 + j]: output k, tap t0 + j
#pragma GCC unroll 16
    for (int b = 0; b < K * 4; ++b) {
      acc[b] = typename V::type{};
    }
    for (int64_t sample = 0; sample < samples.count; ++sample) {
      const T* a_sample = a + sample * samples.a_stride;
      const int64_t src_shift = sample * samples.src_stride;
      for (int64_t l = 0; l < n; l += L) {
        typename V::type x[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          x[j] = V::load(s[j] + src_shift + l);
        }
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) {
          const auto y = V::load(a_sample + k * a_stride + l);
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) {
            acc[k * 4 + j] += y * x[j];
          }
        }
      }
    }
    for (int k = 0; k < K; ++k) {
      for (int64_t j = 0; j < count; ++j) {
        T sum = 0;
        for (int64_t lane = 0; lane < L; ++lane) {
          sum += acc[k * 4 + j][lane];
        }
        out[k * out_stride + t0 + j] = sum;
      }
    }
  }
}

// For each output k < outputs and tap t < taps: out[k * out_stride + t] =
// the sum over l < n of a[k * a_stride + l] * src[offsets[t] + l]; n is a
// multiple of Vec<T, kBytes>::kLanes. Outputs go kMaxK (4 x 4 accumulators,
// five vectors loaded: 21 registers, for AVX-512's 32), two or one at a time.
template <typename T, int kBytes = 64, int kMaxK = 4>
__attribute__((always_inline)) inline void dot_taps_loop(
    const T* a, int64_t a_stride, const T* src, const int64_t* offsets, int64_t taps, int64_t outputs, int64_t n,
    DotSamples samples, T* out, int64_t out_stride) {
  int64_t k = 0;
  if constexpr (kMaxK >= 4) {
    for (; k + 4 <= outputs; k += 4) {
      dot_block<T, kBytes, 4>(
          a + k * a_stride, a_stride, src, offsets, taps, n, samples, out + k * out_stride, out_stride);
    }
  }
  for (; k + 2 <= outputs; k += 2) {
    dot_block<T, kBytes, 2>(
        a + k * a_stride, a_stride, src, offsets, taps, n, samples, out + k * out_stride, out_stride);
  }
  for (; k < outputs; ++k) {
    dot_block<T, kBytes, 1>(
        a + k * a_stride, a_stride, src, offsets, taps, n, samples, out + k * out_stride, out_stride);
  }
}

template <typename T>
inline void accumulate_taps(
    T* dst, int64_t dst_stride, const T* init, const T* src, const int64_t* offsets, const T* weights,
    int64_t weight_stride, int64_t taps, int64_t outputs, int64_t n) {
  // Compiled for any x86-64 (float64): SSE2's register width (see Vec).
  accumulate_taps_loop<T, 16>(dst, dst_stride, init, src, offsets, weights, weight_stride, taps, outputs, n);
}
template <typename T>
inline void dot_taps(
    const T* a, int64_t a_stride, const T* src, const int64_t* offsets, int64_t taps, int64_t outputs, int64_t n,
    DotSamples samples, T* out, int64_t out_stride) {
  dot_taps_loop<T, 16, 2>(a, a_stride, src, offsets, taps, outputs, n, samples, out, out_stride);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// The float loops for each instruction set (see Vec): AVX-512 with 64-byte
// vectors; AVX2 + FMA and SSE2 (any x86-64) with their own register widths,
// and two outputs at a time in dot_taps (4 x 4 accumulators would not fit in
// 16 registers).
__attribute__((target("arch=x86-64-v4"))) void accumulate_taps_avx512(
    float* dst, int64_t dst_stride, const float* init, const float* src, const int64_t* offsets, const float* weights,
    int64_t weight_stride, int64_t taps, int64_t outputs, int64_t n) {
  accumulate_taps_loop<float, 64>(dst, dst_stride, init, src, offsets, weights, weight_stride, taps, outputs, n);
}
__attribute__((target("arch=x86-64-v3"))) void accumulate_taps_avx2(
    float* dst, int64_t dst_stride, const float* init, const float* src, const int64_t* offsets, const float* weights,
    int64_t weight_stride, int64_t taps, int64_t outputs, int64_t n) {
  accumulate_taps_loop<float, 32>(dst, dst_stride, init, src, offsets, weights, weight_stride, taps, outputs, n);
}
void accumulate_taps_sse2(
    float* dst, int64_t dst_stride, const float* init, const float* src, const int64_t* offsets, const float* weights,
    int64_t weight_stride, int64_t taps, int64_t outputs, int64_t n) {
  accumulate_taps_loop<float, 16>(dst, dst_stride, init, src, offsets, weights, weight_stride, taps, outputs, n);
}
__attribute__((target("arch=x86-64-v4"))) void dot_taps_avx512(
    const float* a, int64_t a_stride, const float* src, const int64_t* offsets, int64_t taps, int64_t outputs,
    int64_t n, DotSamples samples, float* out, int64_t out_stride) {
  dot_taps_loop<float, 64, 4>(a, a_stride, src, offsets, taps, outputs, n, samples, out, out_stride);
}
__attribute__((target("arch=x86-64-v3"))) void dot_taps_avx2(
    const float* a, int64_t a_stride, const float* src, const int64_t* offsets, int64_t taps, int64_t outputs,
    int64_t n, DotSamples samples, float* out, int64_t out_stride) {
  dot_taps_loop<float, 32, 2>(a, a_stride, src, offsets, taps, outputs, n, samples, out, out_stride);
}
void dot_taps_sse2(
    const float* a, int64_t a_stride, const float* src, const int64_t* offsets, int64_t taps, int64_t outputs,
    int64_t n, DotSamples samples, float* out, int64_t out_stride) {
  dot_taps_loop<float, 16, 2>(a, a_stride, src, offsets, taps, outputs, n, samples, out, out_stride);
}

// The widest instruction set of this CPU that the loops are compiled for.
enum class Isa { kSse2, kAvx2, kAvx512 };
Isa cpu_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl")) {
      return Isa::kAvx512;
    }
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? Isa::kAvx2 : Isa::kSse2;
  }();
  return isa;
}

template <>
inline void accumulate_taps<float>(
    float* dst, int64_t dst_stride, const float* init, const float* src, const int64_t* offsets, const float* weights,
    int64_t weight_stride, int64_t taps, int64_t outputs, int64_t n) {
  static const auto loop = cpu_isa() == Isa::kAvx512 ? &accumulate_taps_avx512
      : cpu_isa() == Isa::kAvx2                      ? &accumulate_taps_avx2
                                                     : &accumulate_taps_sse2;
  loop(dst, dst_stride, init, src, offsets, weights, weight_stride, taps, outputs, n);
}
template <>
inline void dot_taps<float>(
    const float* a, int64_t a_stride, const float* src, const int64_t* offsets, int64_t taps, int64_t outputs,
    int64_t n, DotSamples samples, float* out, int64_t out_stride) {
  static const auto loop = cpu_isa() == Isa::kAvx512 ? &dot_taps_avx512
      : cpu_isa() == Isa::kAvx2                      ? &dot_taps_avx2
                                                     : &dot_taps_sse2;
  loop(a, a_stride, src, offsets, taps, outputs, n, samples, out, out_stride);
}
#endif

inline int64_t round_up(int64_t n, int64_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

template <typename T>
bool all_finite(const T* begin, const T* end) {
  return std::all_of(begin, end, [](T v) { return std::isfinite(v); });
}

// --- the buffers of one call ------------------------------------------------

template <typename T>
struct Planes {
  const Corr2dGeometry& g;
  int64_t groups;
  int64_t channels_per_group, out_per_group;  // C / groups, O / groups
  int64_t taps;                               // kh * kw
  int64_t phase_h, phase_w;                   // rows and columns (the pitch) of a phase plane
  int64_t wide_size;                          // the wide rows of an output plane: OH * Pw, rounded up to vectors
  int64_t phase_size;                         // a phase plane, its overhang, rounded up to vectors
  int64_t phases_size;                        // all stride_h * stride_w phases of one channel
  int64_t margin;                             // the largest offset of a tap within its phase
  int64_t grad_size;                          // margin + a phase plane: grad_out_wide in the gather
  std::vector<int64_t> tap_offsets;           // [c * taps + t]: where tap t of channel c starts

  Planes(const Corr2dGeometry& geometry, int64_t groups_, int64_t out_channels)
      : g(geometry),
        groups(groups_),
        channels_per_group(geometry.channels / groups_),
        out_per_group(out_channels / groups_),
        taps(geometry.kernel_h * geometry.kernel_w),
        phase_h((geometry.in_h + 2 * geometry.pad_h + geometry.stride_h - 1) / geometry.stride_h),
        phase_w((geometry.in_w + 2 * geometry.pad_w + geometry.stride_w - 1) / geometry.stride_w),
        wide_size(round_up(geometry.out_h * phase_w, Vec<T>::kLanes)),
        margin(
            (geometry.kernel_h - 1) * geometry.dilation_h / geometry.stride_h * phase_w +
            (geometry.kernel_w - 1) * geometry.dilation_w / geometry.stride_w) {
    // A tap reads wide_size values from its offset (at most `margin`), and
    // the gather writes every entry of a phase plane: both fit.
    phase_size = round_up(std::max(margin + wide_size, phase_h * phase_w), Vec<T>::kLanes);
    phases_size = geometry.stride_h * geometry.stride_w * phase_size;
    grad_size = margin + phase_size;
    for (int64_t c = 0; c < channels_per_group; ++c) {
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          tap_offsets.push_back(c * phases_size + phase_of(i, j) * phase_size + offset_in_phase(i, j));
        }
      }
    }
  }

  int64_t in_plane() const { return g.in_h * g.in_w; }
  int64_t out_plane() const { return g.out_h * g.out_w; }
  int64_t phase_of(int64_t i, int64_t j) const {
    return (i * g.dilation_h % g.stride_h) * g.stride_w + j * g.dilation_w % g.stride_w;
  }
  int64_t offset_in_phase(int64_t i, int64_t j) const {
    return i * g.dilation_h / g.stride_h * phase_w + j * g.dilation_w / g.stride_w;
  }
  // Multiply-adds of one output plane.
  int64_t plane_work() const { return std::max<int64_t>(1, channels_per_group * taps * wide_size); }

  // The phase planes of input plane x (their padding and overhang stay zero).
  void split(const T* x, T* phases) const {
    for_each_phase_row([&](int64_t h, int64_t b, int64_t first, int64_t last, int64_t start) {
      const T* src = x + h * g.in_w + b - g.pad_w;  // entry q holds input column q * stride_w + b - pad_w
      if (g.stride_w == 1) {
        std::copy(src + first, src + last, phases + start + first);
        return;
      }
      for (int64_t q = first; q < last; ++q) {
        phases[start + q] = src[q * g.stride_w];
      }
    });
  }
  // The adjoint of split: input plane x := the interior of the phase planes.
  void gather(const T* phases, T* x) const {
    for_each_phase_row([&](int64_t h, int64_t b, int64_t first, int64_t last, int64_t start) {
      T* dst = x + h * g.in_w + b - g.pad_w;
      if (g.stride_w == 1) {
        std::copy(phases + start + first, phases + start + last, dst + first);
        return;
      }
      for (int64_t q = first; q < last; ++q) {
        dst[q * g.stride_w] = phases[start + q];
      }
    });
  }
  // body(h, b, first, last, start) for each input row h and column phase b:
  // the columns b, b + stride_w, ... of padded row h + pad_h lie in the phase
  // planes from index `start` on, and those in [first, last) are the input's.
  template <typename Body>
  void for_each_phase_row(const Body& body) const {
    for (int64_t b = 0; b < g.stride_w; ++b) {
      // q with pad_w <= q * stride_w + b < pad_w + in_w
      const int64_t first = g.pad_w > b ? (g.pad_w - b + g.stride_w - 1) / g.stride_w : 0;
      const int64_t last = std::max(first, (g.pad_w + g.in_w - b + g.stride_w - 1) / g.stride_w);
      for (int64_t h = 0, row = g.pad_h; h < g.in_h; ++h, ++row) {
        const int64_t row_phase = g.stride_h == 1 ? 0 : row % g.stride_h;
        const int64_t row_in_phase = g.stride_h == 1 ? row : row / g.stride_h;
        body(h, b, first, last, (row_phase * g.stride_w + b) * phase_size + row_in_phase * phase_w);
      }
    }
  }
  // Wide rows (whose scrap stays zero) := output plane y, and back.
  void widen(const T* y, T* wide) const {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      std::copy(y + oh * g.out_w, y + (oh + 1) * g.out_w, wide + oh * phase_w);
    }
  }
  void narrow(const T* wide, T* y) const {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      std::copy(wide + oh * phase_w, wide + oh * phase_w + g.out_w, y + oh * g.out_w);
    }
  }
};

// Tasks of at::parallel_for: (sample, group) pairs, enough of them per task
// to be worth its cost.
template <typename T>
int64_t group_grain(const Planes<T>& p) {
  return std::max<int64_t>(1, kMinTaskWork / (p.plane_work() * p.out_per_group));
}

// Channels of a group per task of the forward (output channels) and of the
// input's gradient (input channels): all of them where the batch's (sample,
// group) pairs give every thread a task already; else the group cut into as
// few blocks, whole multiples of accumulate_taps' four, as give each thread
// one -- so that one sample of an ungrouped layer (VGG's 16 -> 32 on
// 112x112 at batch 1) runs on every thread, each splitting or widening the
// sample's planes for its own block.
inline int64_t channels_per_task(int64_t channels, int64_t pairs) {
  const int64_t threads = at::get_num_threads();
  if (pairs >= threads) {
    return channels;
  }
  const int64_t wanted = (threads + pairs - 1) / pairs;
  return std::min(channels, round_up((channels + wanted - 1) / wanted, 4));
}

// --- forward ----------------------------------------------------------------

template <typename T>
void forward(const T* x, const T* w, const T* bias, const Planes<T>& p, T* y, int64_t batch) {
  const Corr2dGeometry& g = p.g;
  const int64_t out_channels = p.out_per_group * p.groups;
  const int64_t group_taps = p.channels_per_group * p.taps;
  const std::vector<T> zeros(p.out_per_group, T(0));
  // Tasks: (sample, group, block of the group's outputs) -- see channels_per_task.
  const int64_t block = channels_per_task(p.out_per_group, batch * p.groups);
  const int64_t blocks = (p.out_per_group + block - 1) / block;
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / (p.plane_work() * block));
  at::parallel_for(0, batch * p.groups * blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> phases(p.channels_per_group * p.phases_size, T(0));
    std::vector<T> acc(block * p.wide_size);
    int64_t split_pair = -1;  // the (sample, group) whose planes `phases` holds
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / blocks;
      const int64_t n = pair / p.groups;
      const int64_t group = pair % p.groups;
      const int64_t first_channel = group * p.channels_per_group;
      const int64_t first_out = group * p.out_per_group + task % blocks * block;
      const int64_t outputs = std::min(block, (group + 1) * p.out_per_group - first_out);
      if (pair != split_pair) {
        for (int64_t c = 0; c < p.channels_per_group; ++c) {
          p.split(x + (n * g.channels + first_channel + c) * p.in_plane(), phases.data() + c * p.phases_size);
        }
        split_pair = pair;
      }
      accumulate_taps<T>(
          acc.data(), p.wide_size, bias != nullptr ? bias + first_out : zeros.data(), phases.data(),
          p.tap_offsets.data(), w + first_out * group_taps, group_taps, group_taps, outputs, p.wide_size);
      for (int64_t o = 0; o < outputs; ++o) {
        p.narrow(acc.data() + o * p.wide_size, y + (n * out_channels + first_out + o) * p.out_plane());
      }
    }
  });
}

// --- backward: input --------------------------------------------------------

template <typename T>
void backward_input(const T* dy, const T* w, const Planes<T>& p, T* dx, int64_t batch) {
  const Corr2dGeometry& g = p.g;
  const int64_t out_channels = p.out_per_group * p.groups;
  const int64_t group_taps = p.channels_per_group * p.taps;
  // The gather's taps, phase by phase: tap (o, i, j) of phase k reads the
  // wide grad_output of the group's o-th channel backwards from
  // margin - offset_in_phase(i, j), with weight[o, c, i, j] for channel c.
  struct GatherTap {
    int64_t out, tap, shift;  // o within the group, i * kw + j, offset_in_phase(i, j)
  };
  const int64_t phases = g.stride_h * g.stride_w;
  std::vector<std::vector<GatherTap>> taps_of(phases);
  std::vector<std::vector<int64_t>> offsets_of(phases);
  for (int64_t o = 0; o < p.out_per_group; ++o) {
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const int64_t k = p.phase_of(i, j);
        taps_of[k].push_back({o, i * g.kernel_w + j, p.offset_in_phase(i, j)});
        offsets_of[k].push_back(o * p.grad_size + p.margin - p.offset_in_phase(i, j));
      }
    }
  }
  const std::vector<T> zeros(p.channels_per_group, T(0));
  // Tasks: (sample, group, block of the group's input channels) -- see channels_per_task.
  const int64_t block = channels_per_task(p.channels_per_group, batch * p.groups);
  const int64_t blocks = (p.channels_per_group + block - 1) / block;
  const int64_t grain = std::max<int64_t>(
      1, kMinTaskWork / std::max<int64_t>(1, p.plane_work() * p.out_per_group * block / p.channels_per_group));
  at::parallel_for(0, batch * p.groups * blocks, grain, [&](int64_t begin, int64_t end) {
    // grad_wide: the group's wide grad_output planes, each after a zero margin.
    std::vector<T> grad_wide(p.out_per_group * p.grad_size, T(0));
    std::vector<T> grad_phases(block * p.phases_size);
    std::vector<T> weights(block * p.out_per_group * p.taps);
    int64_t widened_pair = -1;  // the (sample, group) whose planes grad_wide holds
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / blocks;
      const int64_t n = pair / p.groups;
      const int64_t group = pair % p.groups;
      const int64_t first_out = group * p.out_per_group;
      const int64_t first_channel = task % blocks * block;  // within the group
      const int64_t channels = std::min(block, p.channels_per_group - first_channel);
      if (pair != widened_pair) {
        for (int64_t o = 0; o < p.out_per_group; ++o) {
          p.widen(
              dy + (n * out_channels + first_out + o) * p.out_plane(), grad_wide.data() + o * p.grad_size + p.margin);
        }
        widened_pair = pair;
      }
      const T* w_group = w + first_out * group_taps;
      for (int64_t k = 0; k < phases; ++k) {
        // Phase k of every channel c of the block at once: weights[c][t].
        const auto& taps = taps_of[k];
        const int64_t count = taps.size();
        for (int64_t c = 0; c < channels; ++c) {
          for (int64_t t = 0; t < count; ++t) {
            weights[c * count + t] = w_group[taps[t].out * group_taps + (first_channel + c) * p.taps + taps[t].tap];
          }
        }
        T* dst = grad_phases.data() + k * p.phase_size;
        if (all_finite(weights.data(), weights.data() + channels * count)) {
          // (No taps, as for a 1x1 kernel with stride 2 in all but one phase: zero.)
          accumulate_taps<T>(
              dst, p.phases_size, zeros.data(), grad_wide.data(), offsets_of[k].data(), weights.data(), count, count,
              channels, p.phase_size);
          continue;
        }
        // The scatter, row by row over the real outputs (see the top).
        for (int64_t c = 0; c < channels; ++c) {
          T* dst_c = dst + c * p.phases_size;
          std::fill(dst_c, dst_c + p.phase_size, T(0));
          for (int64_t t = 0; t < count; ++t) {
            const T weight = weights[c * count + t];
            const T* src = grad_wide.data() + taps[t].out * p.grad_size + p.margin;
            for (int64_t oh = 0; oh < g.out_h; ++oh) {
              for (int64_t ow = 0; ow < g.out_w; ++ow) {
                dst_c[taps[t].shift + oh * p.phase_w + ow] += weight * src[oh * p.phase_w + ow];
              }
            }
          }
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        p.gather(
            grad_phases.data() + c * p.phases_size,
            dx + (n * g.channels + group * p.channels_per_group + first_channel + c) * p.in_plane());
      }
    }
  });
}

// --- backward: weight -------------------------------------------------------

// A block of output channels of one group per task, so that no two threads
// write one weight; each task sums over the whole batch, and splits every
// input plane of its group into phases for every sample, so a group is cut
// into as few blocks as keep every thread busy: one where there are groups
// enough, else one a thread (an ungrouped 32-channel layer on two threads:
// two blocks of 16, where blocks of 8 made each thread split the input twice).
template <typename T>
void backward_weight(const T* dy, const T* x, const Planes<T>& p, T* dw, int64_t batch) {
  const Corr2dGeometry& g = p.g;
  const int64_t out_channels = p.out_per_group * p.groups;
  const int64_t group_taps = p.channels_per_group * p.taps;
  const int64_t threads = at::get_num_threads();
  const int64_t wanted_blocks = std::clamp<int64_t>((threads + p.groups - 1) / p.groups, 1, p.out_per_group);
  const int64_t block_size = (p.out_per_group + wanted_blocks - 1) / wanted_blocks;
  const int64_t blocks = (p.out_per_group + block_size - 1) / block_size;  // per group
  const int64_t grain = std::max<int64_t>(1, group_grain(p) * blocks / std::max<int64_t>(1, batch));
  // Up to kDotSamples samples at a time, their planes side by side, so that
  // dot_taps reduces each sum across its lanes once for all of them: on a
  // small map the reductions cost about as much as the dot products. As
  // many as fit in kDotSamplesBytes; a large map's planes, whose long dot
  // products make the reductions cheap, go one sample at a time.
  const int64_t phases_of_sample = p.channels_per_group * p.phases_size;
  const int64_t grad_of_sample = block_size * p.wide_size;
  const int64_t samples_at_once = std::clamp<int64_t>(
      std::min<int64_t>(
          kDotSamplesBytes / (static_cast<int64_t>(sizeof(T)) * (phases_of_sample + grad_of_sample)), batch),
      1, kDotSamples);
  at::parallel_for(0, p.groups * blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> phases(samples_at_once * phases_of_sample, T(0));
    std::vector<T> grad_wide(samples_at_once * grad_of_sample, T(0));
    std::vector<T> sums(block_size * p.taps);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t group = task / blocks;
      const int64_t first_out = group * p.out_per_group + task % blocks * block_size;
      const int64_t outputs = std::min(block_size, (group + 1) * p.out_per_group - first_out);
      std::fill(dw + first_out * group_taps, dw + (first_out + outputs) * group_taps, T(0));
      for (int64_t n0 = 0; n0 < batch; n0 += samples_at_once) {
        const int64_t count = std::min(samples_at_once, batch - n0);
        for (int64_t s = 0; s < count; ++s) {
          for (int64_t c = 0; c < p.channels_per_group; ++c) {
            const T* x_c = x + ((n0 + s) * g.channels + group * p.channels_per_group + c) * p.in_plane();
            p.split(x_c, phases.data() + s * phases_of_sample + c * p.phases_size);
          }
          for (int64_t o = 0; o < outputs; ++o) {
            p.widen(
                dy + ((n0 + s) * out_channels + first_out + o) * p.out_plane(),
                grad_wide.data() + s * grad_of_sample + o * p.wide_size);
          }
        }
        const DotSamples samples{count, grad_of_sample, phases_of_sample};
        for (int64_t c = 0; c < p.channels_per_group; ++c) {
          // sums[o * taps + t]: these samples' part of grad_weight[first_out + o, c, t]
          const int64_t* offsets = p.tap_offsets.data() + c * p.taps;
          dot_taps<T>(
              grad_wide.data(), p.wide_size, phases.data(), offsets, p.taps, outputs, p.wide_size, samples, sums.data(),
              p.taps);
          for (int64_t o = 0; o < outputs; ++o) {
            for (int64_t t = 0; t < p.taps; ++t) {
              T& sum = sums[o * p.taps + t];
              if (!std::isfinite(sum)) {
                // Again, row by row over the real outputs only (see the top).
                sum = 0;
                for (int64_t s = 0; s < count; ++s) {
                  const T* grad_o = grad_wide.data() + s * grad_of_sample + o * p.wide_size;
                  const T* phase = phases.data() + s * phases_of_sample + offsets[t];
                  for (int64_t oh = 0; oh < g.out_h; ++oh) {
                    for (int64_t ow = 0; ow < g.out_w; ++ow) {
                      sum += grad_o[oh * p.phase_w + ow] * phase[oh * p.phase_w + ow];
                    }
                  }
                }
              }
              dw[(first_out + o) * group_taps + c * p.taps + t] += sum;
            }
          }
        }
      }
    }
  });
}

}  // namespace

bool use_direct_corr2d(const Corr2dGeometry& g, int64_t out_channels, int64_t groups, int64_t batch, Corr2dPass pass) {
  if (groups > 1 && g.channels / groups <= kMaxDirectChannelsPerGroup) {
    return true;
  }
  // An ungrouped layer with few output channels (DenseNet's 32-channel 3x3
  // layers, first layers): each unfolded input value feeds few products, so
  // im2col's copy costs about as much as the GEMM. With stride 1.
  const int64_t outputs = g.out_h * g.out_w;
  if (out_channels / groups > kMaxDirectOutputsPerGroup || g.kernel_h * g.kernel_w == 1 || g.stride_h != 1 ||
      g.stride_w != 1 || outputs > 112 * 112) {
    return false;
  }
  // On maps of 12x12 to 112x112, every pass. Where the batch is smaller than
  // the threads, one sample's outputs are split over them
  // (channels_per_task): there layers of few input channels gained (VGG's
  // 16 -> 32 on 112x112 at batch 1: 1.5-1.8 native's time against im2col's
  // 2.3-4.1), those of many lost (DenseNet's 192 -> 32 on 12x12: 1.40-1.48
  // against 1.14-1.23).
  if (outputs >= 12 * 12) {
    return batch * groups >= at::get_num_threads() || g.channels <= kMaxSplitSampleChannels;
  }
  if (groups != 1) {
    return false;
  }
  // Smaller maps (NiN's 384 -> 10 on 5x5, DenseNet's last two stages,
  // LeNet's 6 -> 16), where the other paths are the channels-last rows or,
  // under 8 input channels, im2col. Each pass as measured against them at
  // batch 1, 8 and 64 (BENCHMARKS.md):
  switch (pass) {
    case Corr2dPass::kForward:
      // 1.5-4 times faster than the rows at batch 1 and 8 (NiN's: 0.31 ms
      // against 0.77 at batch 8); on 3x3 maps at batch 64 about 10% slower.
      return outputs > 3 * 3 || batch < 64;
    case Corr2dPass::kBackwardInput:
      // The rows' product grad_out_rows @ w_rows is O deep: for NiN's 10
      // outputs the loops took half the rows' time; for DenseNet's 32 the
      // rows were faster from batch 8 on.
      return out_channels <= kMaxShallowOutputs || g.channels < kFewInputChannels || batch < at::get_num_threads();
    case Corr2dPass::kBackwardWeight:
      // A dot product per tap: 2-15 times the rows' time where the rows run
      // (measured while each sum was still reduced sample by sample, before
      // backward_weight's samples at once), faster where they do not.
      return g.channels < kFewInputChannels;
  }
  return false;
}

bool direct_before_winograd(const Corr2dGeometry& g, int64_t out_channels, int64_t groups, Corr2dPass pass) {
  // NiN's 384 -> 10 on 5x5: 0.31 ms against Winograd's 0.46 at batch 8, 1.86
  // against 2.50 at 64 (its input gradient: 0.63 against 0.45, 4.1 against 2.9).
  return pass == Corr2dPass::kForward && groups == 1 && out_channels <= kMaxShallowOutputs &&
      g.out_h * g.out_w < 12 * 12;
}

void corr2d_direct_forward(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const Corr2dGeometry& g, int64_t groups,
    at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_corr2d_direct", [&] {
    const Planes<scalar_t> planes(g, groups, weight.size(0));
    forward<scalar_t>(
        input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, planes, output.mutable_data_ptr<scalar_t>(),
        input.size(0));
  });
}

void corr2d_direct_backward_input(
    const at::Tensor& grad_output, const at::Tensor& weight, const Corr2dGeometry& g, int64_t groups,
    at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "pycnn_corr2d_direct_backward_input", [&] {
    const Planes<scalar_t> planes(g, groups, weight.size(0));
    backward_input<scalar_t>(
        grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), planes,
        grad_input.mutable_data_ptr<scalar_t>(), grad_input.size(0));
  });
}

void corr2d_direct_backward_weight(
    const at::Tensor& grad_output, const at::Tensor& input, const Corr2dGeometry& g, int64_t groups,
    at::Tensor& grad_weight) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pycnn_corr2d_direct_backward_weight", [&] {
    const Planes<scalar_t> planes(g, groups, grad_weight.size(0));
    backward_weight<scalar_t>(
        grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), planes,
        grad_weight.mutable_data_ptr<scalar_t>(), input.size(0));
  });
}

}  // namespace cpu
}  // namespace pycnn
