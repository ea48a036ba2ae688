"""The index arithmetic of csrc/include/pycnn/window.h, compiled on its own and
checked by brute force. Some of it runs only in CUDA kernels (the candidate
windows of max_pool2d's gathering backward): this checks it without a GPU."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = r"""
#include <cstdio>
#include "pycnn/window.h"
using namespace pycnn;

int main() {
  long failures = 0, checked = 0;
  for (int64_t in = 1; in <= 9; ++in)
  for (int64_t kernel = 1; kernel <= 4; ++kernel)
  for (int64_t pad = 0; pad <= kernel / 2; ++pad)
  for (int64_t stride = 1; stride <= 4; ++stride)
  for (int64_t dilation = 1; dilation <= 3; ++dilation)
  for (int ceil = 0; ceil <= 1; ++ceil) {
    const int64_t out = pooling_output_size(in, kernel, pad, stride, dilation, ceil);
    if (out < 1) continue;
    for (int64_t i = 0; i < in; ++i) {
      // By definition: the outputs whose window span [o*s - p, o*s - p + (k-1)*d] holds i.
      const OutputRange range = outputs_containing(i, pad, kernel, stride, dilation, out);
      // The CUDA kernels' 32-bit index path computes the same range in int32_t.
      const OutputRange<int32_t> range32 = outputs_containing<int32_t>(
          (int32_t)i, (int32_t)pad, (int32_t)kernel, (int32_t)stride, (int32_t)dilation, (int32_t)out);
      ++checked;
      if (range32.begin != range.begin || range32.end != range.end) {
        if (++failures < 10) std::printf("outputs_containing<int32_t> differs in=%ld i=%ld\n", (long)in, (long)i);
      }
      for (int64_t o = 0; o < out; ++o) {
        const bool spans = o * stride - pad <= i && i <= o * stride - pad + (kernel - 1) * dilation;
        const bool listed = o >= range.begin && o < range.end;
        ++checked;
        if (spans != listed) {
          if (++failures < 10) std::printf("outputs_containing in=%ld k=%ld p=%ld s=%ld d=%ld i=%ld o=%ld\n",
                                           (long)in, (long)kernel, (long)pad, (long)stride, (long)dilation, (long)i, (long)o);
        }
      }
    }
    for (int64_t o = 0; o < out; ++o) {
      // A window is empty exactly when none of its taps is inside the input.
      bool any = false;
      for (int64_t j = 0; j < kernel; ++j) {
        const int64_t tap = o * stride - pad + j * dilation;
        any = any || (tap >= 0 && tap < in);
      }
      ++checked;
      if (max_pool_window_empty(o, in, kernel, pad, stride, dilation) == any) {
        if (++failures < 10) std::printf("max_pool_window_empty in=%ld k=%ld p=%ld s=%ld d=%ld o=%ld\n",
                                         (long)in, (long)kernel, (long)pad, (long)stride, (long)dilation, (long)o);
      }
    }
  }
  // Adaptive windows in both index types.
  for (int64_t in = 1; in <= 20; ++in)
  for (int64_t out = 1; out <= 20; ++out)
  for (int64_t i = 0; i < out; ++i) {
    ++checked;
    if (adaptive_start<int32_t>((int32_t)i, (int32_t)in, (int32_t)out) != adaptive_start(i, in, out) ||
        adaptive_end<int32_t>((int32_t)i, (int32_t)in, (int32_t)out) != adaptive_end(i, in, out)) {
      if (++failures < 10) std::printf("adaptive window in=%ld out=%ld i=%ld\n", (long)in, (long)out, (long)i);
    }
  }
  // floor_div in both index types, negative numerators included.
  for (int64_t a = -50; a <= 50; ++a)
  for (int64_t b = 1; b <= 7; ++b) {
    int64_t expected = a / b;
    if (expected * b > a) --expected;
    ++checked;
    if (floor_div(a, b) != expected || floor_div<int32_t>((int32_t)a, (int32_t)b) != expected) {
      if (++failures < 10) std::printf("floor_div a=%ld b=%ld\n", (long)a, (long)b);
    }
  }
  std::printf("checked %ld, failures %ld\n", checked, failures);
  return failures != 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_window_arithmetic_by_brute_force(tmp_path):
    source = tmp_path / "window_check.cpp"
    source.write_text(PROGRAM)
    binary = tmp_path / "window_check"
    subprocess.run(["g++", "-std=c++17", "-O1", "-I", os.path.join(ROOT, "csrc", "include"), str(source),
                    "-o", str(binary)], check=True, capture_output=True, text=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "failures 0" in result.stdout and "checked 0," not in result.stdout


INDEXING_PROGRAM = r"""
#include <cstdio>
#include <cstdint>
#include "pycnn/indexing.h"
using namespace pycnn;

int main() {
  long failures = 0;
  const int64_t max32 = INT32_MAX;
  const int64_t threads = int64_t{1} << 28;  // the largest grid of blocks_for
  struct Case { int64_t extent, count, threads; bool expected; };
  const Case cases[] = {
      {0, 0, 0, true},
      {1000, 1000, 1024, true},
      {max32, 1, 0, true},                     // an extent at the limit
      {max32 + 1, 1, 0, false},                // one past it
      {max32 - threads, max32 - threads, threads, true},   // count + threads = INT32_MAX exactly
      {max32 - threads + 1, max32 - threads + 1, threads, false},
      {int64_t{1} << 31, 10, 256, false},       // 2^31 elements (tests/test_cuda.py's max_pool2d)
      {int64_t{2} * 32768 * 32769, int64_t{32768} * 32769 / 2, threads, false},
      {-1, 0, 0, false},
  };
  for (const Case& c : cases) {
    if (fits_32bit_indexing({c.extent, c.count}, c.count, c.threads) != c.expected) {
      ++failures;
      std::printf("fits_32bit_indexing extent=%ld count=%ld threads=%ld\n", (long)c.extent, (long)c.count,
                  (long)c.threads);
    }
  }
  // Several extents: the largest decides.
  if (fits_32bit_indexing({10, max32 + 1, 10}, 10, 256) || !fits_32bit_indexing({10, max32, 10}, 10, 256)) {
    ++failures;
    std::printf("fits_32bit_indexing with several extents\n");
  }
  std::printf("failures %ld\n", failures);
  return failures != 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_32bit_indexing_decision(tmp_path):
    """The host-side rule by which the CUDA kernels choose int32 or int64 indices (pycnn/indexing.h)."""
    source = tmp_path / "indexing_check.cpp"
    source.write_text(INDEXING_PROGRAM)
    binary = tmp_path / "indexing_check"
    subprocess.run(["g++", "-std=c++17", "-O1", "-I", os.path.join(ROOT, "csrc", "include"), str(source),
                    "-o", str(binary)], check=True, capture_output=True, text=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "failures 0" in result.stdout
