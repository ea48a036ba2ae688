// pycnn's own float32 matrix product for the CPU kernels (gemm.cpp).
//
// Why not at::mm: ATen's float32 GEMM is MKL's, which on this project's AMD
// machines runs at about half the speed that oneDNN -- native convolution's
// library -- gets from the same cores (BENCHMARKS.md). This one uses AVX-512,
// or AVX2 + FMA, wherever the CPU has it, whoever made the CPU.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pycnn {
namespace cpu {

// Whether gemm() below runs pycnn's kernel on this CPU (AVX-512, or AVX2 and
// FMA; otherwise it hands the product to at::mm). PYCNN_CPU_GEMM=aten in the environment turns
// it off, to compare the two.
bool has_fast_gemm();

// out = a @ b, or out += a @ b when `accumulate`. a: [M, K], b: [K, N], out:
// [M, N], all of one dtype; a and b may have any strides (transposed views
// included), out's rows must be contiguous (stride(1) == 1). Float32 where
// has_fast_gemm() runs pycnn's kernel -- on every thread when called outside a
// parallel region, on the calling thread inside one -- other dtypes, and
// products with under 4 rows of a or a depth under 16, at::mm.
void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

// gemm() for the products of a chunk of samples side by side (corr2d's paths
// other than samples over threads): on a CPU with AVX2 but not AVX-512 these
// go to at::mm, whose MKL was faster than pycnn's AVX2 kernel on them -- the
// wide, deep products of small maps and the weight gradient (BENCHMARKS.md);
// elsewhere the same as gemm().
void chunk_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

// The left operand of many products, packed once: a convolution's weight,
// multiplied by each sample's columns in turn. gemm() packs its left operand
// on every call, on every thread that takes a share of it; for a weight of
// 128 x 1152 against the 144 columns of a 12x12 sample that copy cost a fifth
// of the multiply-adds. PackedLeft holds a (a view, any strides) and, where
// gemm() would run pycnn's kernel for it, its values in the micro-kernel's
// order.
class PackedLeft {
 public:
  explicit PackedLeft(const at::Tensor& a);
  const at::Tensor& matrix() const { return a_; }

 private:
  friend void gemm(at::Tensor& out, const PackedLeft& a, const at::Tensor& b, bool accumulate);
  at::Tensor a_;
  std::vector<float> packed_;  // empty where gemm() hands a to at::mm
  int64_t padded_rows_ = 0;    // a's rows rounded up to whole strips
};

// out = a @ b, or out += a @ b, as gemm() above, with a packed beforehand.
void gemm(at::Tensor& out, const PackedLeft& a, const at::Tensor& b, bool accumulate);

}  // namespace cpu
}  // namespace pycnn
