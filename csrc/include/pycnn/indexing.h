// When a CUDA kernel may index in 32 bits: host-side arithmetic, shared by the
// kernels and tested on the CPU (tests/test_window_arithmetic.py).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>

namespace pycnn {

// Whether every index an elementwise kernel computes fits in int32_t: the
// kernel's element offsets are below the largest of `extents` (the numels of
// the tensors it reads and writes, and its item count), and a grid-stride loop
// over `count` items with `threads` threads in the grid reaches, at most, one
// stride past its last item: count - 1 + threads. Everything else it computes
// (a row, a window bound) is smaller than one of those offsets, or a small
// signed offset of one (a position in the padding), so int32_t holds it too.
inline bool fits_32bit_indexing(std::initializer_list<int64_t> extents, int64_t count, int64_t threads) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (const int64_t extent : extents) {
    if (extent < 0 || extent > kMax) {
      return false;
    }
  }
  return count >= 0 && threads >= 0 && count <= kMax - threads;
}

}  // namespace pycnn
