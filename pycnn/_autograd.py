"""Derivatives of every pycnn operator: reverse and forward mode, at any order.

Each of the ten operators -- the five forward operators and their five
backward operators -- gets a backward formula (reverse mode: the
vector-Jacobian product) and a jvp formula (forward mode: the Jacobian-vector
product). The formulas are written with pycnn's operators again, so the
derivative of a derivative is itself differentiable, to any order:

- corr2d and its two backward operators are bilinear; the derivative of each
  is one of the other two (or corr2d itself);
- the pooling operators are linear in their input and their backward
  operators linear in grad_output: the derivative of a pooling backward is the
  pooling forward (max pooling: a gather at the saved argmax), and there is no
  term in the input (piecewise constant, as native);
- batch_norm's backward operator is differentiated here in plain tensor
  arithmetic, through the batch statistics' own dependence on the input
  (``_normalised``): the saved mean and invstd are non-differentiable outputs
  of batch_norm, so a formula that took them as constants would give a
  plausible-looking wrong answer.

Each operator's formulas sit in one autograd function (forward without ctx,
setup_context, backward, jvp) that the operator's Autograd kernel runs (the
kernel is C++, csrc/python_module.cpp, so that a call that needs no
derivative skips Python), so torch.autograd, torch.autograd.forward_ad and torch.func (grad,
jvp, jacrev, jacfwd, hessian; vmap through the batching rules of
pycnn/_vmap.py, which the formulas' own operators reach too) all use it.
"""
import torch
from torch.autograd import forward_ad
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd.function import _SingleLevelFunction

from pycnn import _C

ops = torch.ops.pycnn
_JVP = torch._C._functorch.TransformType.Jvp


# --- shared: registration, saving, sums ---------------------------------------


def _register(name, *, setup_context, backward, jvp):
    """Registers the derivatives of pycnn::name as its Autograd kernel."""
    op = getattr(ops, name).default

    def below_autograd(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    # The autograd function runs forward and jvp with reverse and forward
    # gradients turned off. The modes of the caller are passed as a last
    # argument and restored there, so that the operators they call are still
    # differentiated by the levels below this one: torch.func's jvp(grad(f)),
    # or a backward pass through a jvp (jacrev(jacfwd(f))).
    def forward(*args):
        *args, (grad_mode, forward_grad_mode) = args
        with torch.set_grad_enabled(grad_mode), forward_ad._set_fwd_grad_enabled(forward_grad_mode):
            return below_autograd(*args)

    def setup_context_(ctx, inputs, output):
        ctx.modes = inputs[-1]
        setup_context(ctx, inputs[:-1], output)

    def backward_(ctx, *grads):
        return (*backward(ctx, *grads), None)

    def jvp_(ctx, *tangents):
        # Forward gradients stay off: see _refuse_nested_forward_mode.
        grad_mode, _ = ctx.modes
        with torch.set_grad_enabled(grad_mode):
            return jvp(ctx, *tangents[:-1])

    # A _SingleLevelFunction, not a torch.autograd.Function: this one is
    # applied by the dispatcher, at the one autograd level (plain autograd, or
    # one torch.func.grad / jvp level) that is dispatching the operator, as a
    # C++ autograd kernel would be. torch.autograd.Function.apply would hand
    # it to torch.func's own machinery instead, which is meant for calls
    # that come before the dispatcher and fails from inside it.
    function = type(
        f"pycnn_{name}_derivatives",
        (_SingleLevelFunction,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context_),
            "backward": staticmethod(backward_),
            "jvp": staticmethod(jvp_),
        },
    )

    def autograd_kernel(*args):
        # Record only when someone differentiates: reverse mode with an input
        # that requires grad, or inside a forward-mode (dual) level.
        grad_mode = torch.is_grad_enabled()
        if (grad_mode and torch._C._any_requires_grad(*args)) or forward_ad._current_level >= 0:
            modes = (grad_mode, torch._C._is_fwd_grad_enabled())
            if torch._C._are_functorch_transforms_active():
                _refuse_nested_forward_mode(name)
                with enable_single_level_autograd_function():
                    return function.apply(*args, modes)
            return function.apply(*args, modes)
        return below_autograd(*args)

    # The C++ Autograd kernel (csrc/python_module.cpp) calls this one for the
    # calls that need derivatives, and runs the others below autograd itself.
    _C._set_autograd_kernel(name, autograd_kernel)


def _refuse_nested_forward_mode(name):
    """Forward mode nested in forward mode (jacfwd(jacfwd(f)), jvp of a jvp)
    would lose the outer tangent of every jvp formula: PyTorch runs an autograd
    function's jvp with forward gradients off, and cannot give a tangent a
    tangent at the same forward-AD level -- its own autograd functions return
    zeros there. A clear error instead."""
    stack = torch._C._functorch.get_interpreter_stack()
    if stack[-1].key() == _JVP and any(level.key() == _JVP for level in stack[:-1]):
        raise RuntimeError(
            f"pycnn::{name}: forward-mode AD nested in forward-mode AD (torch.func.jvp or jacfwd inside another, "
            "e.g. jacfwd(jacfwd(f))) is not supported; make one of the two reverse mode: jacfwd(jacrev(f)) "
            "(what torch.func.hessian does), jacrev(jacfwd(f)) or jacrev(jacrev(f))"
        )


def _save(ctx, *tensors):
    """Saves tensors for backward and for jvp alike (ctx.saved_tensors in both)."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def _add(*terms):
    """The sum of the terms that are not None (None if all are)."""
    total = None
    for term in terms:
        if term is not None:
            total = term if total is None else total + term
    return total


# --- corr2d -------------------------------------------------------------------
# y = corr2d(x, w) + b is bilinear in (x, w): each partial derivative is one of
# corr2d, corr2d_backward_input (the adjoint in x) and corr2d_backward_weight
# (the adjoint in w). ctx.args = (stride, padding, dilation, groups).


def _corr2d_setup_context(ctx, inputs, output):
    input, weight, bias, *args = inputs
    _save(ctx, input, weight)
    ctx.args = args
    ctx.has_bias = bias is not None
    ctx.output_shape = output.shape


def _corr2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = ops.corr2d_backward_input(grad_output, weight, input.shape, *ctx.args)
    mask = [needs[1], ctx.has_bias and needs[2]]
    if any(mask):  # only what is needed: an output not in the mask is not computed (an empty tensor)
        grad_weight, grad_bias = ops.corr2d_backward_weight(grad_output, input, weight.shape, *ctx.args, mask)
        grad_weight = grad_weight if mask[0] else None
        grad_bias = grad_bias if mask[1] else None
    return grad_input, grad_weight, grad_bias, None, None, None, None


def _corr2d_jvp(ctx, input_t, weight_t, bias_t, *_):
    input, weight = ctx.saved_tensors
    along_input = ops.corr2d(input_t, weight, bias_t, *ctx.args) if input_t is not None else None
    along_weight = ops.corr2d(input, weight_t, None, *ctx.args) if weight_t is not None else None
    tangent = _add(along_input, along_weight)
    if bias_t is not None and input_t is None:
        tangent = _add(tangent, bias_t.view(1, -1, 1, 1).expand(ctx.output_shape))
    return tangent


_register("corr2d", setup_context=_corr2d_setup_context, backward=_corr2d_backward, jvp=_corr2d_jvp)


def _corr2d_backward_input_setup_context(ctx, inputs, output):
    grad_output, weight, input_size, *args = inputs
    _save(ctx, grad_output, weight)
    ctx.args = args
    ctx.input_size = input_size


def _corr2d_backward_input_backward(ctx, grad_grad_input):
    grad_output, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_grad_output = ops.corr2d(grad_grad_input, weight, None, *ctx.args) if needs[0] else None
    grad_weight = None
    if needs[1]:
        grad_weight = ops.corr2d_backward_weight(
            grad_output, grad_grad_input, weight.shape, *ctx.args, [True, False])[0]
    return grad_grad_output, grad_weight, None, None, None, None, None


def _corr2d_backward_input_jvp(ctx, grad_output_t, weight_t, *_):
    grad_output, weight = ctx.saved_tensors
    return _add(
        ops.corr2d_backward_input(grad_output_t, weight, ctx.input_size, *ctx.args) if grad_output_t is not None else None,
        ops.corr2d_backward_input(grad_output, weight_t, ctx.input_size, *ctx.args) if weight_t is not None else None,
    )


_register(
    "corr2d_backward_input",
    setup_context=_corr2d_backward_input_setup_context,
    backward=_corr2d_backward_input_backward,
    jvp=_corr2d_backward_input_jvp,
)


def _output_mask(rest):
    """corr2d_backward_weight's output_mask, from the arguments after groups (none: the default)."""
    return [bool(m) for m in rest[0]] if rest else [True, True]


def _corr2d_backward_weight_setup_context(ctx, inputs, output):
    grad_output, input, weight_size, stride, padding, dilation, groups, *rest = inputs
    _save(ctx, grad_output, input)
    ctx.args = (stride, padding, dilation, groups)
    ctx.mask = _output_mask(rest)
    ctx.weight_size = weight_size
    ctx.num_inputs = len(inputs)  # output_mask may be left out (its default): then the kernel gets 7


def _corr2d_backward_weight_backward(ctx, grad_grad_weight, grad_grad_bias):
    grad_output, input = ctx.saved_tensors
    needs = ctx.needs_input_grad
    # An output not computed (output_mask) is an empty tensor, and so is its
    # (materialised) gradient: it contributes nothing.
    grad_grad_weight = grad_grad_weight if ctx.mask[0] else None
    grad_grad_bias = grad_grad_bias if ctx.mask[1] else None
    # grad_weight = <grad_output, input patches>, grad_bias = Σ grad_output.
    grad_grad_output = grad_input = None
    if needs[0] and grad_grad_weight is not None:
        grad_grad_output = ops.corr2d(input, grad_grad_weight, grad_grad_bias, *ctx.args)
    elif needs[0] and grad_grad_bias is not None:
        grad_grad_output = grad_grad_bias.view(1, -1, 1, 1).expand(grad_output.shape)
    if needs[1] and grad_grad_weight is not None:
        grad_input = ops.corr2d_backward_input(grad_output, grad_grad_weight, input.shape, *ctx.args)
    return (grad_grad_output, grad_input) + (None,) * (ctx.num_inputs - 2)


def _corr2d_backward_weight_jvp(ctx, grad_output_t, input_t, *_):
    grad_output, input = ctx.saved_tensors
    mask = ctx.mask
    grad_weight_t = grad_bias_t = None
    if grad_output_t is not None:
        grad_weight_t, grad_bias_t = ops.corr2d_backward_weight(
            grad_output_t, input, ctx.weight_size, *ctx.args, mask)
    if input_t is not None and mask[0]:
        along_input, _ = ops.corr2d_backward_weight(grad_output, input_t, ctx.weight_size, *ctx.args, [True, False])
        grad_weight_t = _add(grad_weight_t, along_input)
    # An output not computed has an empty tangent.
    if not mask[0]:
        grad_weight_t = grad_output.new_empty(0)
    if not mask[1]:
        grad_bias_t = grad_output.new_empty(0)
    return grad_weight_t, grad_bias_t


_register(
    "corr2d_backward_weight",
    setup_context=_corr2d_backward_weight_setup_context,
    backward=_corr2d_backward_weight_backward,
    jvp=_corr2d_backward_weight_jvp,
)


# --- max_pool2d ---------------------------------------------------------------
# Linear in the input for fixed argmax indices (flat h * W + w per plane).


def _gather_planes(values, indices):
    """values[n, c].flatten()[indices[n, c]]: what max pooling picks from a tensor shaped like its input."""
    planes = indices.shape[:2]
    return values.reshape(*planes, -1).gather(2, indices.reshape(*planes, -1)).view(indices.shape)


def _max_pool2d_setup_context(ctx, inputs, output):
    _save(ctx, inputs[0], output[1])
    ctx.args = inputs[1:]
    ctx.mark_non_differentiable(output[1])


def _max_pool2d_backward(ctx, grad_output, _grad_indices):
    input, indices = ctx.saved_tensors
    return ops.max_pool2d_backward(grad_output, input, indices, *ctx.args), None, None, None, None, None


def _max_pool2d_jvp(ctx, input_t, *_):
    _, indices = ctx.saved_tensors
    return _gather_planes(input_t, indices), None


_register("max_pool2d", setup_context=_max_pool2d_setup_context, backward=_max_pool2d_backward, jvp=_max_pool2d_jvp)


def _max_pool2d_backward_setup_context(ctx, inputs, output):
    _, input, indices, *args = inputs
    _save(ctx, input, indices)
    ctx.args = args


def _max_pool2d_backward_backward(ctx, grad_grad_input):
    # Linear in grad_output; piecewise constant in the input (native: zeros).
    _, indices = ctx.saved_tensors
    return (_gather_planes(grad_grad_input, indices),) + (None,) * 7


def _max_pool2d_backward_jvp(ctx, grad_output_t, *_):
    input, indices = ctx.saved_tensors
    return ops.max_pool2d_backward(grad_output_t, input, indices, *ctx.args) if grad_output_t is not None else None


_register(
    "max_pool2d_backward",
    setup_context=_max_pool2d_backward_setup_context,
    backward=_max_pool2d_backward_backward,
    jvp=_max_pool2d_backward_jvp,
)


# --- avg_pool2d ---------------------------------------------------------------
# Linear: the derivative of the forward is the backward operator, and of the
# backward operator (in grad_output) the forward.


def _avg_pool2d_setup_context(ctx, inputs, output):
    _save(ctx, inputs[0])
    ctx.args = inputs[1:]


def _avg_pool2d_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return (ops.avg_pool2d_backward(grad_output, input, *ctx.args),) + (None,) * 6


def _avg_pool2d_jvp(ctx, input_t, *_):
    return ops.avg_pool2d(input_t, *ctx.args)


_register("avg_pool2d", setup_context=_avg_pool2d_setup_context, backward=_avg_pool2d_backward, jvp=_avg_pool2d_jvp)


def _avg_pool2d_backward_setup_context(ctx, inputs, output):
    _save(ctx, inputs[1])
    ctx.args = inputs[2:]


def _avg_pool2d_backward_backward(ctx, grad_grad_input):
    return (ops.avg_pool2d(grad_grad_input, *ctx.args),) + (None,) * 7


def _avg_pool2d_backward_jvp(ctx, grad_output_t, *_):
    (input,) = ctx.saved_tensors
    return ops.avg_pool2d_backward(grad_output_t, input, *ctx.args) if grad_output_t is not None else None


_register(
    "avg_pool2d_backward",
    setup_context=_avg_pool2d_backward_setup_context,
    backward=_avg_pool2d_backward_backward,
    jvp=_avg_pool2d_backward_jvp,
)


# --- adaptive_avg_pool2d ------------------------------------------------------
# Linear, as avg_pool2d.


def _adaptive_avg_pool2d_setup_context(ctx, inputs, output):
    _save(ctx, inputs[0])
    ctx.output_size = inputs[1]


def _adaptive_avg_pool2d_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return ops.adaptive_avg_pool2d_backward(grad_output, input), None


def _adaptive_avg_pool2d_jvp(ctx, input_t, _):
    return ops.adaptive_avg_pool2d(input_t, ctx.output_size)


_register(
    "adaptive_avg_pool2d",
    setup_context=_adaptive_avg_pool2d_setup_context,
    backward=_adaptive_avg_pool2d_backward,
    jvp=_adaptive_avg_pool2d_jvp,
)


def _adaptive_avg_pool2d_backward_setup_context(ctx, inputs, output):
    grad_output, input = inputs
    _save(ctx, input)
    ctx.output_size = list(grad_output.shape[-2:])


def _adaptive_avg_pool2d_backward_backward(ctx, grad_grad_input):
    return ops.adaptive_avg_pool2d(grad_grad_input, ctx.output_size), None


def _adaptive_avg_pool2d_backward_jvp(ctx, grad_output_t, _):
    (input,) = ctx.saved_tensors
    return ops.adaptive_avg_pool2d_backward(grad_output_t, input) if grad_output_t is not None else None


_register(
    "adaptive_avg_pool2d_backward",
    setup_context=_adaptive_avg_pool2d_backward_setup_context,
    backward=_adaptive_avg_pool2d_backward_backward,
    jvp=_adaptive_avg_pool2d_backward_jvp,
)


# --- batch_norm ---------------------------------------------------------------
# Per channel c, over its M = N * H * W values: x̂ = (x - mean) * invstd,
# y = w * x̂ + b. With batch statistics (training, or no running statistics)
# mean and invstd are functions of x; with running statistics, constants.


def _per_channel(values, like):
    """A (C,) tensor viewed to broadcast over an (N, C, *) tensor."""
    return values.view((1, -1) + (1,) * (like.dim() - 2))


def _channel_dims(tensor):
    return [0] + list(range(2, tensor.dim()))


def _channel_mean(tensor):
    return tensor.mean(_channel_dims(tensor), keepdim=True)


def _channel_sum(tensor):
    return tensor.sum(_channel_dims(tensor))


def _normalised(input, save_mean, save_invstd, used_batch_stats):
    """(x̂, invstd), broadcastable over the input, differentiable in the input to any order.

    With batch statistics, the mean and the (biased) variance are recomputed
    from the input, so that derivatives see their dependence on it. eps, which
    the backward operator is not given, is recovered from the saved invstd as a
    constant: every derivative of (var + eps) ** -1/2 depends on var + eps only.
    """
    if not used_batch_stats:
        invstd = _per_channel(save_invstd, input).to(input.dtype)
        return (input - _per_channel(save_mean, input).to(input.dtype)) * invstd, invstd
    mean = _channel_mean(input)
    var = _channel_mean((input - mean) ** 2)
    eps = (_per_channel(save_invstd, input).to(input.dtype) ** -2 - var).detach()
    invstd = (var + eps).rsqrt()
    return (input - mean) * invstd, invstd


def _weight_or_one(weight, like):
    return 1.0 if weight is None else _per_channel(weight, like)


def _batch_norm_setup_context(ctx, inputs, output):
    input, weight, bias, running_mean, running_var, training, momentum, eps = inputs
    _, save_mean, save_invstd, new_running_mean, new_running_var = output
    _save(ctx, input, weight, save_mean, save_invstd)
    ctx.used_batch_stats = training or running_mean is None
    ctx.mark_non_differentiable(save_mean, save_invstd, new_running_mean, new_running_var)


def _batch_norm_backward(ctx, grad_output, *_grad_statistics):
    input, weight, save_mean, save_invstd = ctx.saved_tensors
    grad_input, grad_weight, grad_bias = ops.batch_norm_backward(
        grad_output, input, weight, save_mean, save_invstd, ctx.used_batch_stats
    )
    needs = ctx.needs_input_grad
    return (
        grad_input if needs[0] else None,
        grad_weight if needs[1] else None,
        grad_bias if needs[2] else None,
        None,
        None,
        None,
        None,
        None,
    )


def _batch_norm_jvp(ctx, input_t, weight_t, bias_t, *_):
    input, weight, save_mean, save_invstd = ctx.saved_tensors
    tangent = None
    if input_t is not None:
        # The Jacobian of y in x is symmetric, so its product with a tangent is
        # the backward operator's grad_input with the tangent as grad_output.
        tangent = ops.batch_norm_backward(input_t, input, weight, save_mean, save_invstd, ctx.used_batch_stats)[0]
    if weight_t is not None:
        x_hat, _ = _normalised(input, save_mean, save_invstd, ctx.used_batch_stats)
        tangent = _add(tangent, _per_channel(weight_t, input) * x_hat)
    if bias_t is not None:
        tangent = _add(tangent, _per_channel(bias_t, input).expand(input.shape))
    return tangent, None, None, None, None


_register("batch_norm", setup_context=_batch_norm_setup_context, backward=_batch_norm_backward, jvp=_batch_norm_jvp)


def _batch_norm_backward_setup_context(ctx, inputs, output):
    grad_output, input, weight, save_mean, save_invstd, used_batch_stats = inputs
    _save(ctx, grad_output, input, weight, save_mean, save_invstd)
    ctx.used_batch_stats = used_batch_stats


def _batch_norm_backward_backward(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
    """Derivatives of <ggx, grad_input> + <ggw, grad_weight> + <ggb, grad_bias>,
    where (batch statistics, means over each channel's M values)
        grad_input  = w * invstd * (gy - mean(gy) - x̂ * mean(gy * x̂)),
        grad_weight = Σ gy * x̂,  grad_bias = Σ gy,
    and with running statistics grad_input = w * invstd * gy."""
    grad_output, input, weight, save_mean, save_invstd = ctx.saved_tensors
    needs = ctx.needs_input_grad
    x_hat, invstd = _normalised(input, save_mean, save_invstd, ctx.used_batch_stats)
    w = _weight_or_one(weight, input)
    gy, ggx = grad_output, grad_grad_input
    ggw, ggb = _per_channel(grad_grad_weight, input), _per_channel(grad_grad_bias, input)
    d_grad_output = d_input = d_weight = None
    if ctx.used_batch_stats:
        mean_gy, mean_gy_x = _channel_mean(gy), _channel_mean(gy * x_hat)
        mean_ggx, mean_ggx_x = _channel_mean(ggx), _channel_mean(ggx * x_hat)
        centred_gy = gy - mean_gy - x_hat * mean_gy_x  # grad_input / (w * invstd)
        if needs[0]:
            d_grad_output = w * invstd * (ggx - mean_ggx - x_hat * mean_ggx_x) + ggw * x_hat + ggb
        if needs[1]:
            mean_ggx_gy = _channel_mean(ggx * gy)
            d_input = ggw * invstd * centred_gy - w * invstd**2 * (
                x_hat * (mean_ggx_gy - mean_gy * mean_ggx - mean_gy_x * mean_ggx_x)
                + mean_ggx_x * gy
                + mean_gy_x * ggx
                - mean_ggx_x * mean_gy
                - mean_gy_x * mean_ggx
                - 2 * mean_ggx_x * mean_gy_x * x_hat
            )
        if needs[2] and weight is not None:
            d_weight = _channel_sum(ggx * invstd * centred_gy)
    else:
        if needs[0]:
            d_grad_output = w * invstd * ggx + ggw * x_hat + ggb
        if needs[1]:
            d_input = ggw * invstd * gy
        if needs[2] and weight is not None:
            d_weight = _channel_sum(ggx * invstd * gy)
    return d_grad_output, d_input, d_weight, None, None, None


def _batch_norm_backward_jvp(ctx, grad_output_t, input_t, weight_t, *_):
    grad_output, input, weight, save_mean, save_invstd = ctx.saved_tensors
    x_hat, invstd = _normalised(input, save_mean, save_invstd, ctx.used_batch_stats)
    w = _weight_or_one(weight, input)
    gy = grad_output
    gy_t = torch.zeros_like(gy) if grad_output_t is None else grad_output_t
    if ctx.used_batch_stats:
        mean_gy_x = _channel_mean(gy * x_hat)
        if input_t is None:
            x_hat_t = invstd_t = torch.zeros((), dtype=input.dtype, device=input.device)
        else:
            mean_x_t = _channel_mean(x_hat * input_t)
            x_hat_t = invstd * (input_t - _channel_mean(input_t) - x_hat * mean_x_t)
            invstd_t = -(invstd**2) * mean_x_t
        centred = gy - _channel_mean(gy) - x_hat * mean_gy_x
        grad_weight_t = _channel_sum(gy_t * x_hat + gy * x_hat_t)
        centred_t = gy_t - _channel_mean(gy_t) - x_hat_t * mean_gy_x - x_hat * _channel_mean(gy_t * x_hat + gy * x_hat_t)
        grad_input_t = w * (invstd_t * centred + invstd * centred_t)
    else:
        x_hat_t = 0 if input_t is None else invstd * input_t
        grad_weight_t = _channel_sum(gy_t * x_hat + gy * x_hat_t)
        grad_input_t = w * invstd * gy_t
        centred = gy
    if weight_t is not None:
        grad_input_t = grad_input_t + _per_channel(weight_t, input) * invstd * centred
    return grad_input_t, grad_weight_t, _channel_sum(gy_t)


_register(
    "batch_norm_backward",
    setup_context=_batch_norm_backward_setup_context,
    backward=_batch_norm_backward_backward,
    jvp=_batch_norm_backward_jvp,
)
