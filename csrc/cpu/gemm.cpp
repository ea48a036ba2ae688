// A float32 GEMM for AVX-512 CPUs, in the layered style of BLIS / GotoBLAS:
//
//   for each block of NC columns of b and c:
//     for each block of KC rows of b (and columns of a):
//       pack b's KC x NC block into strips NR columns wide       (packed_b)
//       for each block of MC rows of a and c:
//         pack a's MC x KC block into strips MR rows tall        (packed_a)
//         for each MR x NR tile of c: the micro-kernel
//
// The micro-kernel keeps a 12 x 32 tile of c in 24 of the 32 AVX-512
// registers and, for each k, loads 32 values of b (two registers), broadcasts
// 12 values of a, and does 24 fused multiply-adds. Packing puts what the
// micro-kernel reads next to each other in memory (and zero-pads the edges),
// so that any strides of a and b -- transposed views included -- cost one
// copy, and the blocks fit the caches: a KC x NR strip of b (32 KB) in L1, an
// MC x KC block of a (96 KB) in L2.
//
// On a CPU with AVX2 and FMA but not AVX-512, the same packed strips go to
// an AVX2 micro-kernel that computes each 12 x 32 tile as four 6 x 16
// sub-tiles (12 accumulators in the 16 registers); ATen's MKL reached 23-47
// GFLOP/s on such a machine (BENCHMARKS.md).
//
// The vector code is compiled for its target function by function
// (__attribute__((target))), so the rest of pycnn still runs on any x86-64
// CPU; has_fast_gemm() asks the CPU at run time.
#include "gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYCNN_HAVE_X86_GEMM 1
#include <immintrin.h>
#endif

namespace pycnn {
namespace cpu {
namespace {

constexpr int64_t kMR = 12;   // rows of a c tile
constexpr int64_t kNR = 32;   // columns of a c tile: two AVX-512 registers
constexpr int64_t kKC = 256;  // depth of a packed block
constexpr int64_t kMC = 96;   // rows of a packed block of a (8 strips)
constexpr int64_t kNC = 2048; // columns of a packed block of b (64 strips)

// Smaller products go to ATen (gemm()).
constexpr int64_t kMinRows = 4;
constexpr int64_t kMinDepth = 16;

// Below this many multiply-adds, splitting a product over threads costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 18;

#ifdef PYCNN_HAVE_X86_GEMM

// out[p * out_stride + j] = in[j * in_stride + p] for p < 8, j < 8: eight
// rows of eight contiguous values in, their transpose out (eight loads, an
// 8 x 8 transpose in registers, eight stores). Packs either operand where
// the micro-kernel's order runs across the matrix's rows: b's columns when
// they are contiguous (a transposed b), a's rows (row-major a).
__attribute__((target("avx2"))) void transpose_8x8(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  __m256 r[8];
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm256_loadu_ps(in + j * in_stride);  // in row j: in(j, 0..7)
  }
  __m256 t[8], u[8];
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
  }
  for (int j = 0; j < 8; j += 4) {
    u[j] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int p = 0; p < 4; ++p) {
    _mm256_storeu_ps(out + p * out_stride, _mm256_permute2f128_ps(u[p], u[p + 4], 0x20));
    _mm256_storeu_ps(out + (p + 4) * out_stride, _mm256_permute2f128_ps(u[p], u[p + 4], 0x31));
  }
}

// The same for four rows: out[p * out_stride + j] = in[j * in_stride + p]
// for p < 8, j < 4 (the last four of a 12-row strip of a).
__attribute__((target("avx2"))) void transpose_4x8(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  __m256 r[4];
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_loadu_ps(in + j * in_stride);
  }
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  // u[q] holds column q in its low half and column q + 4 in its high half.
  const __m256 u[4] = {
      _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
      _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};
  for (int q = 0; q < 4; ++q) {
    _mm_storeu_ps(out + q * out_stride, _mm256_castps256_ps128(u[q]));
    _mm_storeu_ps(out + (q + 4) * out_stride, _mm256_extractf128_ps(u[q], 1));
  }
}

// packed[p * kMR + i] = a(row0 + i, col0 + p), zero below the last row, for
// each strip of kMR rows: the strips follow each other.
void pack_a(const float* a, int64_t rs, int64_t cs, int64_t rows, int64_t depth, float* packed) {
  for (int64_t strip = 0; strip < rows; strip += kMR) {
    const int64_t height = std::min(kMR, rows - strip);
    if (cs == 1) {
      // Rows of a contiguous (a row-major a: the rows of corr2d_rows.cpp,
      // multiplied by a weight of few columns, where this packing cost as
      // much as the multiply-adds element by element): a whole strip 8 x 8
      // and 4 x 8 blocks at a time, transposed in registers; the rest, and a
      // last strip of fewer rows, read row by row.
      static_assert(kMR == 8 + 4, "a strip is one 8 x 8 and one 4 x 8 block per 8 of depth");
      int64_t p0 = 0;
      if (height == kMR) {
        for (; p0 + 8 <= depth; p0 += 8) {
          const float* src = a + strip * rs + p0;
          transpose_8x8(src, rs, packed + p0 * kMR, kMR);
          transpose_4x8(src + 8 * rs, rs, packed + p0 * kMR + 8, kMR);
        }
      }
      for (int64_t i = 0; i < kMR; ++i) {
        const float* src = i < height ? a + (strip + i) * rs : nullptr;
        for (int64_t p = p0; p < depth; ++p) {
          packed[p * kMR + i] = src != nullptr ? src[p] : 0.0f;
        }
      }
      packed += depth * kMR;
      continue;
    }
    for (int64_t p = 0; p < depth; ++p) {
      const float* src = a + strip * rs + p * cs;
      int64_t i = 0;
      for (; i < height; ++i) {
        packed[i] = src[i * rs];
      }
      for (; i < kMR; ++i) {
        packed[i] = 0.0f;
      }
      packed += kMR;
    }
  }
}

// packed[p * kNR + j] = b(row0 + p, col0 + j), zero right of the last column,
// for each strip of kNR columns.
void pack_b(const float* b, int64_t rs, int64_t cs, int64_t depth, int64_t cols, float* packed) {
  for (int64_t strip = 0; strip < cols; strip += kNR) {
    const int64_t width = std::min(kNR, cols - strip);
    if (rs == 1 && cs != 1) {
      // b is a transposed matrix (cols.t() in the weight gradient), whose
      // columns are contiguous: 8 x 8 blocks transposed in registers, then
      // each column's rest in order (rather than 32 columns at once element
      // by element); the strip of packed (KC x 32) stays in L1.
      const int64_t whole_columns = width / 8 * 8, whole_depth = depth / 8 * 8;
      for (int64_t j = 0; j < whole_columns; j += 8) {
        for (int64_t p = 0; p < whole_depth; p += 8) {
          transpose_8x8(b + (strip + j) * cs + p, cs, packed + p * kNR + j, kNR);
        }
      }
      for (int64_t j = 0; j < kNR; ++j) {
        const float* src = j < width ? b + (strip + j) * cs : nullptr;
        for (int64_t p = j < whole_columns ? whole_depth : 0; p < depth; ++p) {
          packed[p * kNR + j] = src != nullptr ? src[p] : 0.0f;
        }
      }
      packed += depth * kNR;
      continue;
    }
    for (int64_t p = 0; p < depth; ++p) {
      const float* src = b + p * rs + strip * cs;
      if (cs == 1 && width == kNR) {
        std::memcpy(packed, src, kNR * sizeof(float));
      } else {
        int64_t j = 0;
        for (; j < width; ++j) {
          packed[j] = src[j * cs];
        }
        for (; j < kNR; ++j) {
          packed[j] = 0.0f;
        }
      }
      packed += kNR;
    }
  }
}

// c[0:rows, 0:cols] (+)= packed_a-strip @ packed_b-strip over `depth`: one tile,
// rows <= kMR, cols <= 16 * kVectors. `load` adds to what c holds. kVectors
// is 2 (a whole 32-column tile), or 1 for a last strip of at most 16 columns
// (a 12x12 sample's 144 columns end in one): the half tile does half the
// multiply-adds, where the whole one would add zeros for the other half.
template <int kVectors>
__attribute__((target("avx512f,fma"))) void micro_kernel(
    int64_t depth, const float* a, const float* b, float* c, int64_t ldc, int64_t rows, int64_t cols, bool load) {
  __m512 acc[kMR][kVectors];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    for (int v = 0; v < kVectors; ++v) {
      acc[i][v] = _mm512_setzero_ps();
    }
  }
  for (int64_t p = 0; p < depth; ++p) {
    __m512 bv[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      bv[v] = _mm512_loadu_ps(b + 16 * v);
    }
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      for (int v = 0; v < kVectors; ++v) {
        acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
    a += kMR;
    b += kNR;
  }
  __mmask16 mask[kVectors];
  for (int v = 0; v < kVectors; ++v) {
    const int64_t width = std::clamp<int64_t>(cols - 16 * v, 0, 16);
    mask[v] = width == 16 ? __mmask16(0xFFFF) : __mmask16((1u << width) - 1);
  }
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    if (i < rows) {
      float* row = c + i * ldc;
      for (int v = 0; v < kVectors; ++v) {
        __m512 sum = acc[i][v];
        if (load) {
          sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask[v], row + 16 * v));
        }
        _mm512_mask_storeu_ps(row + 16 * v, mask[v], sum);
      }
    }
  }
}

// AVX2: one 6 x 16 sub-tile of a tile, c[0:6, 0:16] (+)= a-rows @ b-columns,
// reading the packed strips of the AVX-512 kernel (a: kMR values a step, of
// which rows 0-5 from `a`; b: kNR values a step, columns 0-15 from `b`).
__attribute__((target("avx2,fma"))) void sub_tile_avx2(
    int64_t depth, const float* a, const float* b, float* c, int64_t ldc, bool load) {
  __m256 acc[6][2];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) {
    acc[i][0] = _mm256_setzero_ps();
    acc[i][1] = _mm256_setzero_ps();
  }
  for (int64_t p = 0; p < depth; ++p) {
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMR;
    b += kNR;
  }
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) {
    float* row = c + i * ldc;
    __m256 lo = acc[i][0], hi = acc[i][1];
    if (load) {
      lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
      hi = _mm256_add_ps(hi, _mm256_loadu_ps(row + 8));
    }
    _mm256_storeu_ps(row, lo);
    _mm256_storeu_ps(row + 8, hi);
  }
}

// AVX2: the micro-kernel's contract (c[0:rows, 0:cols] (+)= one tile, rows <=
// kMR, cols <= kNR) as the sub-tiles that hold any of those entries; an edge
// tile goes through a scratch tile, so nothing outside c's rows and columns is
// written.
__attribute__((target("avx2,fma"))) void micro_kernel_avx2(
    int64_t depth, const float* a, const float* b, float* c, int64_t ldc, int64_t rows, int64_t cols, bool load) {
  if (rows == kMR && cols == kNR) {
    for (int64_t i = 0; i < kMR; i += 6) {
      for (int64_t j = 0; j < kNR; j += 16) {
        sub_tile_avx2(depth, a + i, b + j, c + i * ldc + j, ldc, load);
      }
    }
    return;
  }
  alignas(32) float tile[kMR * kNR];
  for (int64_t i = 0; i < rows; i += 6) {
    for (int64_t j = 0; j < cols; j += 16) {
      sub_tile_avx2(depth, a + i, b + j, tile + i * kNR + j, kNR, /*load=*/false);
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      c[i * ldc + j] = (load ? c[i * ldc + j] : 0.0f) + tile[i * kNR + j];
    }
  }
}

// The micro-kernels this CPU runs (see has_fast_gemm), or none.
enum class GemmIsa { kNone, kAvx2, kAvx512 };
GemmIsa gemm_isa();

// The packing buffers of this thread, reused from call to call.
struct Buffers {
  std::vector<float> a, b;
};

Buffers& thread_buffers() {
  thread_local Buffers buffers;
  if (buffers.a.empty()) {
    buffers.a.resize(kMC * kKC);
    buffers.b.resize(kKC * kNC);
  }
  return buffers;
}

// The left operand of one product: a matrix that is packed block by block as
// the product goes, or one packed beforehand (PackedLeft: every KC block of
// depth in turn, each the strips of all `padded_rows` rows), of which the
// product uses the rows from `row0`.
struct Left {
  const float* a;
  int64_t rs, cs;
  const float* packed;
  int64_t padded_rows, row0;

  // The packed MC x KC block at rows [ic, ic + mc) and depth [pc, pc + kc).
  const float* block(int64_t ic, int64_t mc, int64_t pc, int64_t kc, float* buffer) const {
    if (packed != nullptr) {
      return packed + pc * padded_rows + (row0 + ic) * kc;
    }
    pack_a(a + ic * rs + pc * cs, rs, cs, mc, kc, buffer);
    return buffer;
  }
};

// c[M, N] (+)= a[M, K] @ b[K, N] on the calling thread.
void gemm_serial(
    int64_t M, int64_t N, int64_t K, const Left& a, const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc,
    bool accumulate) {
  Buffers& buffers = thread_buffers();
  if (K == 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < M; ++i) {
        std::fill(c + i * ldc, c + i * ldc + N, 0.0f);
      }
    }
    return;
  }
  const bool avx2 = gemm_isa() == GemmIsa::kAvx2;  // the micro-kernel, once per product
  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = std::min(kKC, K - pc);
      const bool load = accumulate || pc > 0;  // the first block of k writes c, the rest add
      pack_b(b + pc * b_rs + jc * b_cs, b_rs, b_cs, kc, nc, buffers.b.data());
      for (int64_t ic = 0; ic < M; ic += kMC) {
        const int64_t mc = std::min(kMC, M - ic);
        const float* packed_a = a.block(ic, mc, pc, kc, buffers.a.data());
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            const int64_t cols = std::min(kNR, nc - jr);
            const auto kernel = avx2 ? micro_kernel_avx2 : cols > 16 ? micro_kernel<2> : micro_kernel<1>;
            kernel(
                kc, packed_a + ir * kc, buffers.b.data() + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc,
                std::min(kMR, mc - ir), cols, load);
          }
        }
      }
    }
  }
}

GemmIsa gemm_isa() {
  static const GemmIsa isa = [] {
    const char* choice = std::getenv("PYCNN_CPU_GEMM");
    if (choice != nullptr && std::strcmp(choice, "aten") == 0) {
      return GemmIsa::kNone;
    }
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
      return GemmIsa::kAvx512;
    }
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? GemmIsa::kAvx2 : GemmIsa::kNone;
  }();
  return isa;
}

#endif  // PYCNN_HAVE_X86_GEMM

}  // namespace

bool has_fast_gemm() {
#ifdef PYCNN_HAVE_X86_GEMM
  return gemm_isa() != GemmIsa::kNone;
#else
  return false;
#endif
}

namespace {

// Whether gemm() runs pycnn's kernel for a left operand a: a product with
// few rows of a or a short depth (a depthwise or per-group convolution: 1 x 9
// weights) is mostly packing here; BLAS's matrix-vector paths are faster.
bool ours_for_left(const at::Tensor& a) {
  return a.size(0) >= kMinRows && a.size(1) >= kMinDepth && has_fast_gemm() && a.scalar_type() == at::kFloat;
}

bool ours_for_rest(const at::Tensor& out, const at::Tensor& b) {
  return out.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && out.stride(1) == 1;
}

void aten_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

#ifdef PYCNN_HAVE_X86_GEMM
// out (+)= a @ b with pycnn's kernel, over every thread when called outside a
// parallel region. `packed`: a packed beforehand (PackedLeft), or null.
void run_gemm(
    at::Tensor& out, const at::Tensor& a, const float* packed, int64_t padded_rows, const at::Tensor& b,
    bool accumulate) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const float* pa = a.const_data_ptr<float>();
  const float* pb = b.const_data_ptr<float>();
  float* pc = out.mutable_data_ptr<float>();
  const int64_t ldc = out.stride(0);
  const auto run = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const Left left{pa + m0 * a.stride(0), a.stride(0), a.stride(1), packed, padded_rows, m0};
    gemm_serial(
        m1 - m0, n1 - n0, K, left, pb + n0 * b.stride(1), b.stride(0), b.stride(1), pc + m0 * ldc + n0, ldc,
        accumulate);
  };
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || at::in_parallel_region() || M * N * K < kMinParallelWork) {
    run(0, M, 0, N);
    return;
  }
  // Split the wider side of c into whole tiles, one share per thread.
  if (N >= M) {
    const int64_t strips = (N + kNR - 1) / kNR;
    at::parallel_for(0, strips, (strips + threads - 1) / threads, [&](int64_t begin, int64_t end) {
      run(0, M, begin * kNR, std::min(N, end * kNR));
    });
  } else {
    const int64_t strips = (M + kMR - 1) / kMR;
    at::parallel_for(0, strips, (strips + threads - 1) / threads, [&](int64_t begin, int64_t end) {
      run(begin * kMR, std::min(M, end * kMR), 0, N);
    });
  }
}
#endif

}  // namespace

void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (!ours_for_left(a) || !ours_for_rest(out, b)) {
    aten_gemm(out, a, b, accumulate);
    return;
  }
#ifdef PYCNN_HAVE_X86_GEMM
  run_gemm(out, a, nullptr, 0, b, accumulate);
#endif
}

void chunk_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
#ifdef PYCNN_HAVE_X86_GEMM
  if (gemm_isa() == GemmIsa::kAvx2) {
    aten_gemm(out, a, b, accumulate);
    return;
  }
#endif
  gemm(out, a, b, accumulate);
}

PackedLeft::PackedLeft(const at::Tensor& a) : a_(a) {
#ifdef PYCNN_HAVE_X86_GEMM
  if (!ours_for_left(a)) {
    return;
  }
  const int64_t M = a.size(0), K = a.size(1);
  padded_rows_ = (M + kMR - 1) / kMR * kMR;
  packed_.resize(padded_rows_ * K);
  const float* pa = a.const_data_ptr<float>();
  for (int64_t pc = 0; pc < K; pc += kKC) {
    pack_a(
        pa + pc * a.stride(1), a.stride(0), a.stride(1), M, std::min(kKC, K - pc), packed_.data() + pc * padded_rows_);
  }
#endif
}

void gemm(at::Tensor& out, const PackedLeft& a, const at::Tensor& b, bool accumulate) {
  if (a.packed_.empty() || !ours_for_rest(out, b)) {
    gemm(out, a.a_, b, accumulate);
    return;
  }
#ifdef PYCNN_HAVE_X86_GEMM
  run_gemm(out, a.a_, a.packed_.data(), a.padded_rows_, b, accumulate);
#endif
}

}  // namespace cpu
}  // namespace pycnn
