// float16 and bfloat16: where the kernels have no reduced-precision path of
// their own (the CPU kernels, and batch-norm with float32 parameters), they
// run the float32 kernel on upcast copies and round each result once, so
// every sum accumulates in float32 -- what the CUDA kernels do in registers.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace pycnn {

inline bool is_reduced_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// A float32 copy of a float16 / bfloat16 tensor; any other tensor as it is.
inline at::Tensor upcast(const at::Tensor& t) {
  return t.defined() && is_reduced_precision(t) ? t.to(at::kFloat) : t;
}

inline std::optional<at::Tensor> upcast(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) {
    return t;
  }
  return upcast(*t);
}

}  // namespace pycnn
