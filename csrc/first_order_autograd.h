// First-order reverse mode of the five forward operators, as C++ autograd
// nodes (first_order_autograd.cpp).
#pragma once

#include <ATen/core/stack.h>

#include <string>

namespace pycnn {

// Runs a call of pycnn::<name> whose arguments are the last ones on the stack
// and records it for reverse mode with a C++ node; its results replace the
// arguments. The node's backward calls the backward operators through the
// dispatcher, so a backward pass with create_graph=True records those calls
// in turn (by their Autograd kernel) and higher derivatives still work.
using FirstOrderKernel = void (*)(torch::jit::Stack* stack);

// The kernel of a forward operator (corr2d, max_pool2d, avg_pool2d,
// adaptive_avg_pool2d, batch_norm); nullptr for a backward operator, whose
// calls are only recorded when a derivative of a derivative is asked for.
FirstOrderKernel first_order_kernel(const std::string& name);

}  // namespace pycnn
