// The schema of every pycnn operator, in one place.
//
// This file has no Python in it: CMakeLists.txt builds it with the kernels
// into a plain shared library for LibTorch programs; python_module.cpp adds
// the module init that makes the same code importable as pycnn._C.
//
// Each device registers its kernels in its own file (cpu/<op>_kernel.cpp with
// TORCH_LIBRARY_IMPL(pycnn, CPU, m), cuda/<op>_kernel.cu with
// TORCH_LIBRARY_IMPL(pycnn, CUDA, m)). Fake (meta) kernels and autograd are
// registered from Python (pycnn/_ops.py) once this library is loaded.
#include <torch/library.h>

TORCH_LIBRARY(pycnn, m) {
  // 2-D cross-correlation (what torch.nn.Conv2d computes). The backward is two
  // operators so that autograd computes only the gradients that are needed;
  // corr2d_backward_weight's output_mask says which of (grad_weight, grad_bias)
  // to compute, and an output not asked for is an empty (0,) tensor.
  m.def(
      "corr2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "corr2d_backward_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "corr2d_backward_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool[2] output_mask=[True, True]) "
      "-> (Tensor grad_weight, Tensor grad_bias)");

  // Max pooling: values and the per-plane flat argmax (h * W + w), as PyTorch.
  // The backward takes the window too, so that a kernel can gather, for each
  // input element, from the windows that may hold it (deterministic, no
  // atomics), and so that grad_output's shape is checked against the pooling's.
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> (Tensor output, Tensor indices)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");

  // Average pooling with PyTorch's padding / ceil_mode / divisor rules.
  m.def(
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");

  // Adaptive average pooling to any output size (1x1 is global average pooling).
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");

  // Batch normalisation over dim 1 of an (N, C, *) input. With training=True
  // (or no running statistics) it normalises with the batch statistics. The
  // operator is functional, so autograd, torch.export and torch.compile can
  // handle it: instead of updating the running statistics in place it returns
  // their updated values (new_running_mean / new_running_var: the momentum
  // update in training, the unchanged values in eval, empty (0,) tensors when
  // no running statistics are given); pycnn.functional.batch_norm copies them
  // back, as torch.nn.functional.batch_norm updates in place.
  // save_mean / save_invstd are the statistics used, for the backward.
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
      "Tensor? running_var, bool training, float momentum, float eps) "
      "-> (Tensor output, Tensor save_mean, Tensor save_invstd, Tensor new_running_mean, Tensor new_running_var)");
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor save_mean, "
      "Tensor save_invstd, bool used_batch_stats) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}
