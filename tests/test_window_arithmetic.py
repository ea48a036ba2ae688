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
