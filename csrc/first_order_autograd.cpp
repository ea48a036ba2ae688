// First-order reverse mode of the five forward operators, as C++ autograd
// nodes (torch::autograd::Function), for the calls that need nothing else:
// an input requires grad, no input carries a forward-mode tangent, no
// torch.func transform is active (python_module.cpp decides). That is every
// layer of a training step; recording it in C++ costs a few microseconds less
// per call than pycnn/_autograd.py's Python function (python -m pycnn.bench
// overhead), which still handles forward mode, torch.func and the backward
// operators' own derivatives.
//
// Each backward here is the first-order formula of pycnn/_autograd.py, in the
// same operators: it calls them through the dispatcher, not below autograd,
// so that with create_graph=True their calls are recorded too and the
// derivative of this derivative is the Python one.
#include "first_order_autograd.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <array>
#include <optional>
#include <tuple>
#include <unordered_map>

namespace pycnn {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using torch::jit::Stack;

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// A tensor argument of a node's forward that may be None. An absent one is
// not one of the node's inputs (torch::autograd::Function counts only the
// tensors), so the position of every later tensor in needs_input_grad shifts.
bool present(const std::optional<Tensor>& tensor) {
  return tensor.has_value() && tensor->defined();
}

std::optional<Tensor> optional_tensor(const Tensor& tensor) {
  return tensor.defined() ? std::optional<Tensor>(tensor) : std::nullopt;
}

// --- corr2d -------------------------------------------------------------------
// Bilinear in (input, weight): the gradients are corr2d_backward_input and
// corr2d_backward_weight (which also gives the bias's, as output_mask asks).

struct Corr2d : torch::autograd::Function<Corr2d> {
  static Tensor forward(
      AutogradContext* ctx, const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
      IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    static const auto op = typed_op<Tensor(
        const Tensor&, const Tensor&, const std::optional<Tensor>&, IntArrayRef, IntArrayRef, IntArrayRef, int64_t)>(
        "pycnn::corr2d");
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = present(bias);
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_input = typed_op<Tensor(
        const Tensor&, const Tensor&, c10::SymIntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, int64_t)>(
        "pycnn::corr2d_backward_input");
    static const auto backward_weight = typed_op<std::tuple<Tensor, Tensor>(
        const Tensor&, const Tensor&, c10::SymIntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, int64_t,
        std::array<bool, 2>)>("pycnn::corr2d_backward_weight");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& input = saved[0];
    const Tensor& weight = saved[1];
    const auto stride = ctx->saved_data["stride"].toDimVector();
    const auto padding = ctx->saved_data["padding"].toDimVector();
    const auto dilation = ctx->saved_data["dilation"].toDimVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_input = backward_input.call(grads[0], weight, input.sym_sizes(), stride, padding, dilation, groups);
    }
    // Only what is needed: an output not in the mask is not computed.
    const std::array<bool, 2> mask{ctx->needs_input_grad(1), has_bias && ctx->needs_input_grad(2)};
    if (mask[0] || mask[1]) {
      std::tie(grad_weight, grad_bias) =
          backward_weight.call(grads[0], input, weight.sym_sizes(), stride, padding, dilation, groups, mask);
      grad_weight = mask[0] ? grad_weight : Tensor();
      grad_bias = mask[1] ? grad_bias : Tensor();
    }
    return {grad_input, grad_weight, grad_bias, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

void corr2d(Stack* stack) {
  const size_t first = stack->size() - 7;
  auto& args = *stack;
  Tensor output = Corr2d::apply(
      args[first].toTensor(), args[first + 1].toTensor(), args[first + 2].toOptional<Tensor>(),
      args[first + 3].toDimVector(), args[first + 4].toDimVector(), args[first + 5].toDimVector(),
      args[first + 6].toInt());
  torch::jit::drop(*stack, 7);
  stack->emplace_back(std::move(output));
}

// --- max_pool2d ---------------------------------------------------------------
// Linear in the input for the saved argmax; the indices are not differentiable.

struct MaxPool2d : torch::autograd::Function<MaxPool2d> {
  static variable_list forward(
      AutogradContext* ctx, const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
      IntArrayRef dilation, bool ceil_mode) {
    static const auto op =
        typed_op<std::tuple<Tensor, Tensor>(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool)>(
            "pycnn::max_pool2d");
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["ceil_mode"] = ceil_mode;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, indices] = op.call(input, kernel_size, stride, padding, dilation, ceil_mode);
    ctx->save_for_backward({input, indices});
    ctx->mark_non_differentiable({indices});
    return {output, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = typed_op<Tensor(
        const Tensor&, const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool)>(
        "pycnn::max_pool2d_backward");
    const variable_list saved = ctx->get_saved_variables();
    Tensor grad_input = backward_op.call(
        grads[0], saved[0], saved[1], ctx->saved_data["kernel_size"].toDimVector(),
        ctx->saved_data["stride"].toDimVector(), ctx->saved_data["padding"].toDimVector(),
        ctx->saved_data["dilation"].toDimVector(), ctx->saved_data["ceil_mode"].toBool());
    return {grad_input, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

void max_pool2d(Stack* stack) {
  const size_t first = stack->size() - 6;
  auto& args = *stack;
  variable_list outputs = MaxPool2d::apply(
      args[first].toTensor(), args[first + 1].toDimVector(), args[first + 2].toDimVector(),
      args[first + 3].toDimVector(), args[first + 4].toDimVector(), args[first + 5].toBool());
  torch::jit::drop(*stack, 6);
  stack->emplace_back(std::move(outputs[0]));
  stack->emplace_back(std::move(outputs[1]));
}

// --- avg_pool2d ---------------------------------------------------------------
// Linear: the gradient is the backward operator (which takes the input for
// its shape).

struct AvgPool2d : torch::autograd::Function<AvgPool2d> {
  static Tensor forward(
      AutogradContext* ctx, const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
      bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
    static const auto op =
        typed_op<Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool, std::optional<int64_t>)>(
            "pycnn::avg_pool2d");
    ctx->save_for_backward({input});
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = typed_op<Tensor(
        const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool, std::optional<int64_t>)>(
        "pycnn::avg_pool2d_backward");
    const variable_list saved = ctx->get_saved_variables();
    Tensor grad_input = backward_op.call(
        grads[0], saved[0], ctx->saved_data["kernel_size"].toDimVector(), ctx->saved_data["stride"].toDimVector(),
        ctx->saved_data["padding"].toDimVector(), ctx->saved_data["ceil_mode"].toBool(),
        ctx->saved_data["count_include_pad"].toBool(), ctx->saved_data["divisor_override"].toOptional<int64_t>());
    return {grad_input, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

void avg_pool2d(Stack* stack) {
  const size_t first = stack->size() - 7;
  auto& args = *stack;
  Tensor output = AvgPool2d::apply(
      args[first].toTensor(), args[first + 1].toDimVector(), args[first + 2].toDimVector(),
      args[first + 3].toDimVector(), args[first + 4].toBool(), args[first + 5].toBool(),
      args[first + 6].toOptional<int64_t>());
  torch::jit::drop(*stack, 7);
  stack->emplace_back(std::move(output));
}

// --- adaptive_avg_pool2d ------------------------------------------------------
// Linear, as avg_pool2d.

struct AdaptiveAvgPool2d : torch::autograd::Function<AdaptiveAvgPool2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, IntArrayRef output_size) {
    static const auto op = typed_op<Tensor(const Tensor&, IntArrayRef)>("pycnn::adaptive_avg_pool2d");
    ctx->save_for_backward({input});
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(input, output_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        typed_op<Tensor(const Tensor&, const Tensor&)>("pycnn::adaptive_avg_pool2d_backward");
    return {backward_op.call(grads[0], ctx->get_saved_variables()[0]), Tensor()};
  }
};

void adaptive_avg_pool2d(Stack* stack) {
  const size_t first = stack->size() - 2;
  auto& args = *stack;
  Tensor output = AdaptiveAvgPool2d::apply(args[first].toTensor(), args[first + 1].toDimVector());
  torch::jit::drop(*stack, 2);
  stack->emplace_back(std::move(output));
}

// --- batch_norm ---------------------------------------------------------------
// The backward operator gives all three gradients, through the batch
// statistics when they were used; the saved statistics and the new running
// statistics are not differentiable (pycnn/_autograd.py says why that is
// still exact at every order).

struct BatchNorm : torch::autograd::Function<BatchNorm> {
  static variable_list forward(
      AutogradContext* ctx, const Tensor& input, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
      const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var, bool training,
      double momentum, double eps) {
    static const auto op = typed_op<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
        const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&, const std::optional<Tensor>&,
        const std::optional<Tensor>&, bool, double, double)>("pycnn::batch_norm");
    variable_list outputs(5);
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(outputs[0], outputs[1], outputs[2], outputs[3], outputs[4]) =
          op.call(input, weight, bias, running_mean, running_var, training, momentum, eps);
    }
    ctx->save_for_backward({input, present(weight) ? *weight : Tensor(), outputs[1], outputs[2]});
    ctx->saved_data["used_batch_stats"] = training || !present(running_mean);
    // The positions of weight and bias among the node's inputs (see present()).
    ctx->saved_data["weight_input"] = present(weight) ? int64_t{1} : int64_t{-1};
    ctx->saved_data["bias_input"] = present(bias) ? int64_t{1} + present(weight) : int64_t{-1};
    ctx->mark_non_differentiable({outputs[1], outputs[2], outputs[3], outputs[4]});
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = typed_op<std::tuple<Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&, const Tensor&, bool)>(
        "pycnn::batch_norm_backward");
    const variable_list saved = ctx->get_saved_variables();
    const auto needs = [&](const char* input) {
      const int64_t index = ctx->saved_data[input].toInt();
      return index >= 0 && ctx->needs_input_grad(index);
    };
    auto [grad_input, grad_weight, grad_bias] = backward_op.call(
        grads[0], saved[0], optional_tensor(saved[1]), saved[2], saved[3],
        ctx->saved_data["used_batch_stats"].toBool());
    return {ctx->needs_input_grad(0) ? grad_input : Tensor(),
            needs("weight_input") ? grad_weight : Tensor(),
            needs("bias_input") ? grad_bias : Tensor(),
            Tensor(),
            Tensor(),
            Tensor(),
            Tensor(),
            Tensor()};
  }
};

void batch_norm(Stack* stack) {
  const size_t first = stack->size() - 8;
  auto& args = *stack;
  variable_list outputs = BatchNorm::apply(
      args[first].toTensor(), args[first + 1].toOptional<Tensor>(), args[first + 2].toOptional<Tensor>(),
      args[first + 3].toOptional<Tensor>(), args[first + 4].toOptional<Tensor>(), args[first + 5].toBool(),
      args[first + 6].toDouble(), args[first + 7].toDouble());
  torch::jit::drop(*stack, 8);
  for (Tensor& output : outputs) {
    stack->emplace_back(std::move(output));
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
