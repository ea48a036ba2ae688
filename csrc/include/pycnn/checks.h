// Argument checks shared by the CPU and CUDA entry points of every operator.
// Each message names the operator, the argument, the expected value and what
// was given, so a user can fix the call without reading this code.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <optional>
#include <vector>

#include "pycnn/precision.h"
#include "pycnn/window.h"

namespace pycnn {

using at::IntArrayRef;
using at::Tensor;

// A pair argument (kernel_size, stride, ...) has two elements, each >= minimum.
inline void check_pair(const char* op, const char* name, IntArrayRef value, int64_t minimum) {
  TORCH_CHECK(value.size() == 2, op, ": ", name, " must have 2 elements, got ", value);
  TORCH_CHECK(
      value[0] >= minimum && value[1] >= minimum, op, ": ", name, " must be >= ", minimum, " in both dimensions, got ",
      value);
}

inline void check_rank(const char* op, const char* name, const Tensor& t, int64_t rank, const char* layout) {
  TORCH_CHECK(
      t.dim() == rank, op, ": expected ", name, " of rank ", rank, " ", layout, ", got rank ", t.dim(), " with shape ",
      t.sizes());
}

// `other` must live on the same device and have the same dtype as `reference`.
inline void check_same_dtype_device(
    const char* op, const Tensor& reference, const char* name, const Tensor& other,
    const char* reference_name = "input") {
  TORCH_CHECK(
      other.device() == reference.device(), op, ": ", name, " is on ", other.device(), " but ", reference_name,
      " is on ", reference.device(), "; expected both on the same device");
  TORCH_CHECK(
      other.scalar_type() == reference.scalar_type(), op, ": ", name, " has dtype ", other.scalar_type(), " but ",
      reference_name, " has dtype ", reference.scalar_type(), "; expected the same dtype");
}

// Every kernel takes float32, float64, float16 and bfloat16, accumulating
// float16 and bfloat16 in float32 (precision.h).
inline void check_floating_dtype(const char* op, const Tensor& input) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || is_reduced_precision(input), op,
      ": input must be float32, float64, float16 or bfloat16, got ", dtype);
}

inline void check_spatial_output(const char* op, const Tensor& input, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(
      out_h >= 1 && out_w >= 1, op, ": the output size (", out_h, ", ", out_w,
      ") is below 1: the (dilated) window does not fit in the padded input of spatial size (", input.size(2), ", ",
      input.size(3), ")");
}

// --- corr2d -----------------------------------------------------------------

// The geometry of a cross-correlation, from the sizes alone: ranks, channels
// against weight and groups, stride/padding/dilation, and an output of at
// least 1x1. Returns the output shape (N, O, OH, OW).
inline std::vector<int64_t> corr2d_geometry(
    const char* op, IntArrayRef input_size, IntArrayRef weight_size, IntArrayRef stride, IntArrayRef padding,
    IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(
      input_size.size() == 4, op, ": expected input of rank 4 (N, C, H, W), got rank ", input_size.size(),
      " with shape ", input_size);
  TORCH_CHECK(
      weight_size.size() == 4, op,
      ": expected weight of rank 4 (out_channels, in_channels / groups, kH, kW), got rank ", weight_size.size(),
      " with shape ", weight_size);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  const int64_t out_channels = weight_size[0];
  TORCH_CHECK(
      out_channels >= 1 && out_channels % groups == 0, op, ": weight.size(0) (out_channels = ", out_channels,
      ") must be a positive multiple of groups = ", groups);
  TORCH_CHECK(
      weight_size[2] >= 1 && weight_size[3] >= 1, op,
      ": kernel size (weight.size(2), weight.size(3)) must be >= 1, got (", weight_size[2], ", ", weight_size[3], ")");
  TORCH_CHECK(
      input_size[1] == weight_size[1] * groups, op, ": input has ", input_size[1],
      " channels but weight expects in_channels = weight.size(1) * groups = ", weight_size[1], " * ", groups, " = ",
      weight_size[1] * groups);
  const int64_t out_h = corr2d_output_size(input_size[2], weight_size[2], padding[0], stride[0], dilation[0]);
  const int64_t out_w = corr2d_output_size(input_size[3], weight_size[3], padding[1], stride[1], dilation[1]);
  TORCH_CHECK(
      out_h >= 1 && out_w >= 1, op, ": the output size (", out_h, ", ", out_w,
      ") is below 1: the (dilated) kernel does not fit in the padded input of spatial size (", input_size[2], ", ",
      input_size[3], ")");
  return {input_size[0], out_channels, out_h, out_w};
}

// Validates corr2d's arguments and returns the output shape (N, O, OH, OW).
inline std::vector<int64_t> corr2d_output_shape(
    const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "pycnn.corr2d";
  auto output_shape = corr2d_geometry(op, input.sizes(), weight.sizes(), stride, padding, dilation, groups);
  check_floating_dtype(op, input);
  check_same_dtype_device(op, input, "weight", weight);
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_device(op, input, "bias", *bias);
    TORCH_CHECK(
        bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape (", weight.size(0),
        ",) = (out_channels,), got ", bias->sizes());
  }
  return output_shape;
}

// Validates the arguments of corr2d_backward_input / corr2d_backward_weight:
// `other` is the weight or the input that comes with grad_output.
inline void check_corr2d_backward(
    const char* op, const Tensor& grad_output, const Tensor& other, const char* other_name, IntArrayRef input_size,
    IntArrayRef weight_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const auto output_shape = corr2d_geometry(op, input_size, weight_size, stride, padding, dilation, groups);
  check_floating_dtype(op, other);
  check_same_dtype_device(op, other, "grad_output", grad_output, other_name);
  TORCH_CHECK(
      grad_output.sizes() == IntArrayRef(output_shape), op, ": grad_output must have shape ", IntArrayRef(output_shape),
      ", got ", grad_output.sizes());
}

// --- pooling ----------------------------------------------------------------

inline void check_pool_padding(const char* op, IntArrayRef kernel_size, IntArrayRef padding) {
  TORCH_CHECK(
      padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
      ": padding must be at most half the kernel size, got padding ", padding, " for kernel_size ", kernel_size);
}

inline std::vector<int64_t> max_pool2d_output_shape(
    const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
    bool ceil_mode) {
  constexpr const char* op = "pycnn.max_pool2d";
  check_rank(op, "input", input, 4, "(N, C, H, W)");
  check_floating_dtype(op, input);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  check_pool_padding(op, kernel_size, padding);
  const int64_t out_h =
      pooling_output_size(input.size(2), kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode);
  const int64_t out_w =
      pooling_output_size(input.size(3), kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode);
  check_spatial_output(op, input, out_h, out_w);
  return {input.size(0), input.size(1), out_h, out_w};
}

inline std::vector<int64_t> avg_pool2d_output_shape(
    const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
    std::optional<int64_t> divisor_override) {
  constexpr const char* op = "pycnn.avg_pool2d";
  check_rank(op, "input", input, 4, "(N, C, H, W)");
  check_floating_dtype(op, input);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pool_padding(op, kernel_size, padding);
  TORCH_CHECK(
      !divisor_override.has_value() || *divisor_override != 0, op, ": divisor_override must be non-zero, got 0");
  const int64_t out_h = pooling_output_size(input.size(2), kernel_size[0], padding[0], stride[0], 1, ceil_mode);
  const int64_t out_w = pooling_output_size(input.size(3), kernel_size[1], padding[1], stride[1], 1, ceil_mode);
  check_spatial_output(op, input, out_h, out_w);
  return {input.size(0), input.size(1), out_h, out_w};
}

inline std::vector<int64_t> adaptive_avg_pool2d_output_shape(const Tensor& input, IntArrayRef output_size) {
  constexpr const char* op = "pycnn.adaptive_avg_pool2d";
  check_rank(op, "input", input, 4, "(N, C, H, W)");
  check_floating_dtype(op, input);
  check_pair(op, "output_size", output_size, 1);
  TORCH_CHECK(input.size(2) >= 1 && input.size(3) >= 1, op, ": input spatial size must be >= 1, got ", input.sizes());
  return {input.size(0), input.size(1), output_size[0], output_size[1]};
}

// The gradient of an operator's output must have exactly the output's shape.
inline void check_grad_output(const char* op, const Tensor& grad_output, const Tensor& input, IntArrayRef expected) {
  check_same_dtype_device(op, input, "grad_output", grad_output);
  TORCH_CHECK(
      grad_output.sizes() == expected, op, ": grad_output must have shape ", expected, ", got ", grad_output.sizes());
}

// max_pool2d_backward: grad_output and indices have the pooling's output shape
// (max_pool2d_output_shape of the input and window); indices are int64.
inline void check_max_pool2d_backward(
    const char* op, const Tensor& grad_output, const Tensor& input, const Tensor& indices, IntArrayRef output_shape) {
  check_grad_output(op, grad_output, input, output_shape);
  TORCH_CHECK(
      indices.scalar_type() == at::kLong && indices.device() == input.device(), op,
      ": indices must be int64 on the input's device, got ", indices.scalar_type(), " on ", indices.device());
  TORCH_CHECK(
      indices.sizes() == output_shape, op, ": indices must have grad_output's shape ", output_shape, ", got ",
      indices.sizes());
}

// --- batch_norm -------------------------------------------------------------

// batch_norm's optional per-channel tensors (weight, bias, running
// statistics) are vectors of length C on the input's device, all of one dtype:
// the input's, or float32 with a float16 / bfloat16 input (mixed precision, as
// native accepts). Returns that dtype (the input's when none is given).
inline at::ScalarType check_channel_vectors(
    const char* op, const Tensor& input,
    std::initializer_list<std::pair<const char*, const std::optional<Tensor>*>> vectors) {
  std::optional<at::ScalarType> dtype;
  const char* first = nullptr;
  for (const auto& [name, vector] : vectors) {
    if (!vector->has_value() || !(*vector)->defined()) {
      continue;
    }
    const Tensor& t = **vector;
    TORCH_CHECK(
        t.device() == input.device(), op, ": ", name, " is on ", t.device(), " but input is on ", input.device(),
        "; expected both on the same device");
    TORCH_CHECK(
        t.scalar_type() == input.scalar_type() || (t.scalar_type() == at::kFloat && is_reduced_precision(input)), op,
        ": ", name, " has dtype ", t.scalar_type(), " but input has dtype ", input.scalar_type(),
        "; expected the same dtype (or float32 with a float16 or bfloat16 input)");
    TORCH_CHECK(
        !dtype || *dtype == t.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ", first,
        " has dtype ", *dtype, "; expected weight, bias, running_mean and running_var in one dtype");
    TORCH_CHECK(
        t.dim() == 1 && t.size(0) == input.size(1), op, ": ", name, " must have shape (", input.size(1),
        ",) = (num_channels,), got ", t.sizes());
    if (!dtype) {
      dtype = t.scalar_type();
      first = name;
    }
  }
  return dtype.value_or(input.scalar_type());
}

inline void check_batch_norm_input(const char* op, const Tensor& input) {
  TORCH_CHECK(
      input.dim() >= 2 && input.dim() <= 4, op,
      ": expected input of rank 2 (N, C), 3 (N, C, L) or 4 (N, C, H, W), got rank ", input.dim(), " with shape ",
      input.sizes());
  check_floating_dtype(op, input);
}

// Validates batch_norm's arguments; returns the dtype of its parameters and
// running statistics (check_channel_vectors).
inline at::ScalarType check_batch_norm(
    const Tensor& input, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var) {
  constexpr const char* op = "pycnn.batch_norm";
  check_batch_norm_input(op, input);
  const at::ScalarType parameter_dtype = check_channel_vectors(
      op, input,
      {{"weight", &weight}, {"bias", &bias}, {"running_mean", &running_mean}, {"running_var", &running_var}});
  const bool has_mean = running_mean.has_value() && running_mean->defined();
  const bool has_var = running_var.has_value() && running_var->defined();
  TORCH_CHECK(
      has_mean == has_var, op, ": running_mean and running_var must be given together, got running_mean ",
      has_mean ? "defined" : "None", " and running_var ", has_var ? "defined" : "None");
  return parameter_dtype;
}

// Validates batch_norm_backward's arguments; returns the weight's dtype (the
// input's without a weight), which grad_weight and grad_bias take. save_mean /
// save_invstd are the statistics batch_norm returned: vectors of length C in
// the accumulation dtype (float32 for float16/bfloat16 input, input's dtype
// otherwise).
inline at::ScalarType check_batch_norm_backward(
    const Tensor& grad_output, const Tensor& input, const std::optional<Tensor>& weight, const Tensor& save_mean,
    const Tensor& save_invstd) {
  constexpr const char* op = "pycnn.batch_norm_backward";
  check_batch_norm_input(op, input);
  check_grad_output(op, grad_output, input, input.sizes());
  const at::ScalarType weight_dtype = check_channel_vectors(op, input, {{"weight", &weight}});
  for (const auto& [name, stat] : {std::pair<const char*, const Tensor&>{"save_mean", save_mean},
                                   std::pair<const char*, const Tensor&>{"save_invstd", save_invstd}}) {
    TORCH_CHECK(
        stat.dim() == 1 && stat.size(0) == input.size(1) && stat.device() == input.device(), op, ": ", name,
        " must have shape (", input.size(1), ",) on the input's device, got ", stat.sizes(), " on ", stat.device());
    TORCH_CHECK(
        stat.scalar_type() == at::toOpMathType(input.scalar_type()), op, ": ", name, " must have dtype ",
        at::toOpMathType(input.scalar_type()), ", got ", stat.scalar_type());
  }
  return weight_dtype;
}

}  // namespace pycnn
