// First-order reverse mode of the five forward operators, as C++ autograd
// nodes, for the calls that need nothing else: an input requires grad, no
// input carries a forward-mode tangent, no torch.func transform is active
// (python_module.cpp decides). That is every layer of a training step.
//
// Each node is written the way ATen's generated ones are (VariableType's
// MaxPool2DWithIndicesBackward0 and the rest): a torch::autograd::Node with
// its saved tensors and arguments as typed members, and the recording done by
// hand -- next edges, saved variables, the call below autograd, set_history.
// torch::autograd::Function would do the same through an AutogradContext (a
// hash map of IValues for the arguments, its own wrapping of every output),
// which cost 10-20 µs more per forward + backward of a small layer (python -m
// pycnn.bench overhead; BENCHMARKS.md).
//
// Each backward here is the first-order formula of pycnn/_autograd.py, in the
// same operators: it calls them through the dispatcher, not below autograd,
// so that with create_graph=True their calls are recorded too and the
// derivative of this derivative is the Python one.
#include "first_order_autograd.h"

#include "typed_op.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <array>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>
#include <unordered_map>

namespace pycnn {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using torch::jit::Stack;

// A new node of type T. torch 2.13 holds autograd nodes in c10::intrusive_ptr
// (pytorch/pytorch#181782); earlier releases in a std::shared_ptr that must be
// freed by deleteNode (found by argument-dependent lookup: it is gone from the
// newer headers).
template <typename T>
auto make_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, T>) {
    return c10::make_intrusive<T>();
  } else {
    return std::shared_ptr<T>(new T(), [](T* node) { deleteNode(node); });
  }
}

// What every node below has in common: its name, and saved tensors that are
// freed once the backward has run (unless retain_graph=True).
template <size_t SavedCount>
struct PycnnNode : Node {
  explicit PycnnNode(const char* node_name) : node_name_(node_name) {}

  std::string name() const override { return node_name_; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable& variable : saved) {
      variable.reset_data();
    }
  }

  std::array<SavedVariable, SavedCount> saved;

 private:
  const char* node_name_;
};

// Whether a backward's own operator calls must go through their Autograd
// kernel: with create_graph=True (grad mode on during the backward), to be
// recorded for the next derivative; under a torch.func transform (whose keys
// stay in the thread's included set while it is active, as python_module.cpp
// checks); or when a gradient carries a forward-mode tangent. Otherwise the
// node calls the kernels below autograd: the same result, without boxing
// every argument for that kernel (a few µs a call).
bool backward_is_differentiated(const variable_list& grads) {
  if (at::GradMode::is_enabled() ||
      c10::impl::tls_local_dispatch_key_set().included_.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode)) {
    return true;
  }
  for (const Tensor& grad : grads) {
    if (grad.defined() && grad._fw_grad(/*level=*/0).defined()) {
      return true;
    }
  }
  return false;
}

// Runs the backward's operator calls below autograd unless
// backward_is_differentiated(grads).
struct BackwardCalls {
  explicit BackwardCalls(const variable_list& grads) {
    if (!backward_is_differentiated(grads)) {
      below_autograd.emplace();
    }
  }
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
};

// A tensor argument that may be None, as the backward operators take it.
std::optional<Tensor> optional_tensor(const Tensor& tensor) {
  return tensor.defined() ? std::optional<Tensor>(tensor) : std::nullopt;
}

// A saved tensor: the forward's tensors are inputs of the node's call (or
// outputs that are not differentiable), never the node's own outputs.
SavedVariable save(const Tensor& tensor) {
  return SavedVariable(tensor, /*is_output=*/false);
}

// --- corr2d -------------------------------------------------------------------
// Bilinear in (input, weight): the gradients are corr2d_backward_input and
// corr2d_backward_weight (which also gives the bias's, as output_mask asks).

struct Corr2dBackward : PycnnNode<2> {
  Corr2dBackward() : PycnnNode("pycnn::Corr2dBackward") {}
  c10::DimVector stride, padding, dilation;
  int64_t groups = 1;

  variable_list apply(variable_list&& grads) override {
    static const auto backward_input = typed_op<Tensor(
        const Tensor&, const Tensor&, c10::SymIntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, int64_t)>(
        "pycnn::corr2d_backward_input");
    static const auto backward_weight = typed_op<std::tuple<Tensor, Tensor>(
        const Tensor&, const Tensor&, c10::SymIntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, int64_t,
        std::array<bool, 2>)>("pycnn::corr2d_backward_weight");
    variable_list result(3);  // input, weight, bias
    if (!grads[0].defined()) {
      return result;
    }
    const Tensor input = saved[0].unpack();
    const Tensor weight = saved[1].unpack();
    const BackwardCalls calls(grads);
    if (task_should_compute_output(0)) {
      result[0] = backward_input.call(grads[0], weight, input.sym_sizes(), stride, padding, dilation, groups);
    }
    // Only what is needed: an output not in the mask is not computed.
    const std::array<bool, 2> mask{task_should_compute_output(1), task_should_compute_output(2)};
    if (mask[0] || mask[1]) {
      auto [grad_weight, grad_bias] =
          backward_weight.call(grads[0], input, weight.sym_sizes(), stride, padding, dilation, groups, mask);
      result[1] = mask[0] ? grad_weight : Tensor();
      result[2] = mask[1] ? grad_bias : Tensor();
    }
    return result;
  }
};

void corr2d(Stack* stack) {
  static const auto op = typed_op<Tensor(
      const Tensor&, const Tensor&, const std::optional<Tensor>&, IntArrayRef, IntArrayRef, IntArrayRef, int64_t)>(
      "pycnn::corr2d");
  const size_t first = stack->size() - 7;
  auto& args = *stack;
  const Tensor input = args[first].toTensor();
  const Tensor weight = args[first + 1].toTensor();
  const auto bias = args[first + 2].toOptional<Tensor>();
  const auto node = make_node<Corr2dBackward>();
  node->stride = args[first + 3].toDimVector();
  node->padding = args[first + 4].toDimVector();
  node->dilation = args[first + 5].toDimVector();
  node->groups = args[first + 6].toInt();
  torch::jit::drop(*stack, 7);

  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias));
  node->saved = {save(input), save(weight)};
  Tensor output;
  {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = op.call(input, weight, bias, node->stride, node->padding, node->dilation, node->groups);
  }
  torch::autograd::set_history(output, node);
  stack->emplace_back(std::move(output));
}

// --- max_pool2d ---------------------------------------------------------------
// Linear in the input for the saved argmax; the indices are not differentiable.

struct MaxPool2dBackward : PycnnNode<2> {
  MaxPool2dBackward() : PycnnNode("pycnn::MaxPool2dBackward") {}
  c10::DimVector kernel_size, stride, padding, dilation;
  bool ceil_mode = false;

  variable_list apply(variable_list&& grads) override {
    static const auto backward_op = typed_op<Tensor(
        const Tensor&, const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool)>(
        "pycnn::max_pool2d_backward");
    if (!grads[0].defined() || !task_should_compute_output(0)) {
      return {Tensor()};
    }
    const BackwardCalls calls(grads);
    return {backward_op.call(
        grads[0], saved[0].unpack(), saved[1].unpack(), kernel_size, stride, padding, dilation, ceil_mode)};
  }
};

void max_pool2d(Stack* stack) {
  static const auto op =
      typed_op<std::tuple<Tensor, Tensor>(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool)>(
          "pycnn::max_pool2d");
  const size_t first = stack->size() - 6;
  auto& args = *stack;
  const Tensor input = args[first].toTensor();
  const auto node = make_node<MaxPool2dBackward>();
  node->kernel_size = args[first + 1].toDimVector();
  node->stride = args[first + 2].toDimVector();
  node->padding = args[first + 3].toDimVector();
  node->dilation = args[first + 4].toDimVector();
  node->ceil_mode = args[first + 5].toBool();
  torch::jit::drop(*stack, 6);

  node->set_next_edges(torch::autograd::collect_next_edges(input));
  Tensor output, indices;
  {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(output, indices) =
        op.call(input, node->kernel_size, node->stride, node->padding, node->dilation, node->ceil_mode);
  }
  node->saved = {save(input), save(indices)};
  torch::autograd::set_history(output, node);
  stack->emplace_back(std::move(output));
  stack->emplace_back(std::move(indices));
}

// --- avg_pool2d ---------------------------------------------------------------
// Linear: the gradient is the backward operator (which takes the input for
// its shape).

struct AvgPool2dBackward : PycnnNode<1> {
  AvgPool2dBackward() : PycnnNode("pycnn::AvgPool2dBackward") {}
  c10::DimVector kernel_size, stride, padding;
  bool ceil_mode = false;
  bool count_include_pad = true;
  std::optional<int64_t> divisor_override;

  variable_list apply(variable_list&& grads) override {
    static const auto backward_op = typed_op<Tensor(
        const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool, std::optional<int64_t>)>(
        "pycnn::avg_pool2d_backward");
    if (!grads[0].defined() || !task_should_compute_output(0)) {
      return {Tensor()};
    }
    const BackwardCalls calls(grads);
    return {backward_op.call(
        grads[0], saved[0].unpack(), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)};
  }
};

void avg_pool2d(Stack* stack) {
  static const auto op =
      typed_op<Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool, std::optional<int64_t>)>(
          "pycnn::avg_pool2d");
  const size_t first = stack->size() - 7;
  auto& args = *stack;
  const Tensor input = args[first].toTensor();
  const auto node = make_node<AvgPool2dBackward>();
  node->kernel_size = args[first + 1].toDimVector();
  node->stride = args[first + 2].toDimVector();
  node->padding = args[first + 3].toDimVector();
  node->ceil_mode = args[first + 4].toBool();
  node->count_include_pad = args[first + 5].toBool();
  node->divisor_override = args[first + 6].toOptional<int64_t>();
  torch::jit::drop(*stack, 7);

  node->set_next_edges(torch::autograd::collect_next_edges(input));
  node->saved = {save(input)};
  Tensor output;
  {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = op.call(
        input, node->kernel_size, node->stride, node->padding, node->ceil_mode, node->count_include_pad,
        node->divisor_override);
  }
  torch::autograd::set_history(output, node);
  stack->emplace_back(std::move(output));
}

// --- adaptive_avg_pool2d ------------------------------------------------------
// Linear, as avg_pool2d.

struct AdaptiveAvgPool2dBackward : PycnnNode<1> {
  AdaptiveAvgPool2dBackward() : PycnnNode("pycnn::AdaptiveAvgPool2dBackward") {}

  variable_list apply(variable_list&& grads) override {
    static const auto backward_op =
        typed_op<Tensor(const Tensor&, const Tensor&)>("pycnn::adaptive_avg_pool2d_backward");
    if (!grads[0].defined() || !task_should_compute_output(0)) {
      return {Tensor()};
    }
    const BackwardCalls calls(grads);
    return {backward_op.call(grads[0], saved[0].unpack())};
  }
};

void adaptive_avg_pool2d(Stack* stack) {
  static const auto op = typed_op<Tensor(const Tensor&, IntArrayRef)>("pycnn::adaptive_avg_pool2d");
  const size_t first = stack->size() - 2;
  auto& args = *stack;
  const Tensor input = args[first].toTensor();
  const auto output_size = args[first + 1].toDimVector();
  torch::jit::drop(*stack, 2);

  const auto node = make_node<AdaptiveAvgPool2dBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  node->saved = {save(input)};
  Tensor output;
  {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = op.call(input, output_size);
  }
  torch::autograd::set_history(output, node);
  stack->emplace_back(std::move(output));
}

// --- batch_norm ---------------------------------------------------------------
// The backward operator gives all three gradients, through the batch
// statistics when they were used; the saved statistics and the new running
// statistics are not differentiable (pycnn/_autograd.py says why that is
// still exact at every order), and neither are the running statistics: the
// node's edges are (input, weight, bias), an absent one an empty edge.

struct BatchNormBackward : PycnnNode<4> {
  BatchNormBackward() : PycnnNode("pycnn::BatchNormBackward") {}
  bool used_batch_stats = true;

  variable_list apply(variable_list&& grads) override {
    static const auto backward_op = typed_op<std::tuple<Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&, const Tensor&, bool)>(
        "pycnn::batch_norm_backward");
    variable_list result(3);  // input, weight, bias
    if (!grads[0].defined()) {
      return result;
    }
    const BackwardCalls calls(grads);
    auto [grad_input, grad_weight, grad_bias] = backward_op.call(
        grads[0], saved[0].unpack(), optional_tensor(saved[1].unpack()), saved[2].unpack(), saved[3].unpack(),
        used_batch_stats);
    result[0] = task_should_compute_output(0) ? grad_input : Tensor();
    result[1] = task_should_compute_output(1) ? grad_weight : Tensor();
    result[2] = task_should_compute_output(2) ? grad_bias : Tensor();
    return result;
  }
};

void batch_norm(Stack* stack) {
  static const auto op = typed_op<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&, const std::optional<Tensor>&,
      const std::optional<Tensor>&, bool, double, double)>("pycnn::batch_norm");
  const size_t first = stack->size() - 8;
  auto& args = *stack;
  const Tensor input = args[first].toTensor();
  const auto weight = args[first + 1].toOptional<Tensor>();
  const auto bias = args[first + 2].toOptional<Tensor>();
  const auto running_mean = args[first + 3].toOptional<Tensor>();
  const auto running_var = args[first + 4].toOptional<Tensor>();
  const bool training = args[first + 5].toBool();
  const double momentum = args[first + 6].toDouble();
  const double eps = args[first + 7].toDouble();
  torch::jit::drop(*stack, 8);

  if (!torch::autograd::compute_requires_grad(input, weight, bias)) {
    // Only a running statistic requires grad: nothing here is differentiable in it.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto results = op.call(input, weight, bias, running_mean, running_var, training, momentum, eps);
    std::apply([&](auto&... result) { (stack->emplace_back(std::move(result)), ...); }, results);
    return;
  }
  const auto node = make_node<BatchNormBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias));
  node->used_batch_stats = training || !(running_mean.has_value() && running_mean->defined());
  Tensor output, save_mean, save_invstd, new_running_mean, new_running_var;
  {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(output, save_mean, save_invstd, new_running_mean, new_running_var) =
        op.call(input, weight, bias, running_mean, running_var, training, momentum, eps);
  }
  node->saved = {save(input), save(weight.value_or(Tensor())), save(save_mean), save(save_invstd)};
  torch::autograd::set_history(output, node);
  for (Tensor* result : {&output, &save_mean, &save_invstd, &new_running_mean, &new_running_var}) {
    stack->emplace_back(std::move(*result));
  }
}

}  // namespace

FirstOrderKernel first_order_kernel(const std::string& name) {
  static const std::unordered_map<std::string, FirstOrderKernel> kernels{
      {"corr2d", &corr2d},         {"max_pool2d", &max_pool2d},
      {"avg_pool2d", &avg_pool2d}, {"adaptive_avg_pool2d", &adaptive_avg_pool2d},
      {"batch_norm", &batch_norm},
  };
  const auto found = kernels.find(name);
  return found == kernels.end() ? nullptr : found->second;
}

}  // namespace pycnn
