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
// The AVX-512 code is compiled for that target function by function
// (__attribute__((target))), so the rest of pycnn still runs on any x86-64
// CPU; has_fast_gemm() asks the CPU at run time.
#include "gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYCNN_HAVE_AVX512_GEMM 1
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

#ifdef PYCNN_HAVE_AVX512_GEMM

// packed[p * kMR + i] = a(row0 + i, col0 + p), zero below the last row, for
// each strip of kMR rows: the strips follow each other.
void pack_a(const float* a, int64_t rs, int64_t cs, int64_t rows, int64_t depth, float* packed) {
  for (int64_t strip = 0; strip < rows; strip += kMR) {
    const int64_t height = std::min(kMR, rows - strip);
    if (cs == 1) {  // rows of a contiguous: read each row in order (the block of packed is in L2)
      for (int64_t i = 0; i < kMR; ++i) {
        const float* src = i < height ? a + (strip + i) * rs : nullptr;
        for (int64_t p = 0; p < depth; ++p) {
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
      // b is a transposed matrix (cols.t() in the weight gradient): read each
      // of its columns in order, rather than 32 of them at once element by
      // element; the strip of packed (KC x 32) stays in L1.
      for (int64_t j = 0; j < kNR; ++j) {
        const float* src = j < width ? b + (strip + j) * cs : nullptr;
        for (int64_t p = 0; p < depth; ++p) {
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
// rows <= kMR, cols <= kNR. `load` adds to what c holds.
__attribute__((target("avx512f,fma"))) void micro_kernel(
    int64_t depth, const float* a, const float* b, float* c, int64_t ldc, int64_t rows, int64_t cols, bool load) {
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    acc[i][0] = _mm512_setzero_ps();
    acc[i][1] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < depth; ++p) {
    const __m512 b0 = _mm512_loadu_ps(b);
    const __m512 b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMR;
    b += kNR;
  }
  const __mmask16 left = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
  const __mmask16 right = cols >= 32 ? __mmask16(0xFFFF) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1) : 0;
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    if (i < rows) {
      float* row = c + i * ldc;
      __m512 lo = acc[i][0];
      __m512 hi = acc[i][1];
      if (load) {
        lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(left, row));
        hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(right, row + 16));
      }
      _mm512_mask_storeu_ps(row, left, lo);
      _mm512_mask_storeu_ps(row + 16, right, hi);
    }
  }
}

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

// c[M, N] (+)= a[M, K] @ b[K, N] on the calling thread.
void gemm_serial(
    int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t b_rs,
    int64_t b_cs, float* c, int64_t ldc, bool accumulate) {
  Buffers& buffers = thread_buffers();
  if (K == 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < M; ++i) {
        std::fill(c + i * ldc, c + i * ldc + N, 0.0f);
      }
    }
    return;
  }
  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = std::min(kKC, K - pc);
      const bool load = accumulate || pc > 0;  // the first block of k writes c, the rest add
      pack_b(b + pc * b_rs + jc * b_cs, b_rs, b_cs, kc, nc, buffers.b.data());
      for (int64_t ic = 0; ic < M; ic += kMC) {
        const int64_t mc = std::min(kMC, M - ic);
        pack_a(a + ic * a_rs + pc * a_cs, a_rs, a_cs, mc, kc, buffers.a.data());
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            micro_kernel(
                kc, buffers.a.data() + ir * kc, buffers.b.data() + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc,
                std::min(kMR, mc - ir), std::min(kNR, nc - jr), load);
          }
        }
      }
    }
  }
}

bool cpu_has_avx512() {
  static const bool has = [] {
    const char* choice = std::getenv("PYCNN_CPU_GEMM");
    if (choice != nullptr && std::strcmp(choice, "aten") == 0) {
      return false;
    }
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}

#endif  // PYCNN_HAVE_AVX512_GEMM

}  // namespace

bool has_fast_gemm() {
#ifdef PYCNN_HAVE_AVX512_GEMM
  return cpu_has_avx512();
#else
  return false;
#endif
}

void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  // A product with few rows of a or a short depth (a depthwise or per-group
  // convolution: 1 x 9 weights) is mostly packing here; BLAS's matrix-vector
  // paths are faster for it.
  const bool worth_packing = a.size(0) >= kMinRows && a.size(1) >= kMinDepth;
  const bool ours = worth_packing && has_fast_gemm() && out.scalar_type() == at::kFloat &&
      a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && out.stride(1) == 1;
  if (!ours) {
    if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
    return;
  }
#ifdef PYCNN_HAVE_AVX512_GEMM
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const float* pa = a.const_data_ptr<float>();
  const float* pb = b.const_data_ptr<float>();
  float* pc = out.mutable_data_ptr<float>();
  const int64_t ldc = out.stride(0);
  const auto run = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    gemm_serial(
        m1 - m0, n1 - n0, K, pa + m0 * a.stride(0), a.stride(0), a.stride(1), pb + n0 * b.stride(1), b.stride(0),
        b.stride(1), pc + m0 * ldc + n0, ldc, accumulate);
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
#endif
}

}  // namespace cpu
}  // namespace pycnn
