"""Batching rules of every pycnn operator, for torch.vmap (and vmap over torch.func.grad).

A rule folds vmap's batch dimension (size B) into a dimension the kernel
already handles, runs the kernel once and unfolds the result -- no loop:

- into the batch dimension N, where samples stay independent: pooling, and
  corr2d or batch_norm with weights (and statistics) shared by all B;
- into the channels C, as B * C channels, where each of the B needs its own
  weights or statistics: corr2d with per-sample weights (a grouped
  convolution with B * groups groups), corr2d_backward_weight (a weight
  gradient per sample), batch_norm with batch statistics (each of the B
  normalises with its own).

An unbatched argument that must be folded with batched ones is expanded to B.
"""
import torch

ops = torch.ops.pycnn


# --- shared: folding vmap's dimension into the kernel's -----------------------


def _first(tensor, dim, size):
    """tensor with its vmapped dimension first; an unbatched one expanded to size."""
    return tensor.movedim(dim, 0) if dim is not None else tensor.expand(size, *tensor.shape)


def _into_batch(tensor, dim, size):
    """(B, N, ...) -> (B * N, ...)"""
    return _first(tensor, dim, size).flatten(0, 1)


def _into_channels(tensor, dim, size):
    """(B, N, C, ...) -> (N, B * C, ...)"""
    return _first(tensor, dim, size).movedim(0, 1).flatten(1, 2)


def _into_rows(tensor, dim, size):
    """(B, C, ...) -> (B * C, ...) for weights and per-channel vectors; None stays None."""
    return None if tensor is None else _first(tensor, dim, size).flatten(0, 1)


def _from_batch(tensor, size):
    return tensor.unflatten(0, (size, -1))


def _from_channels(tensor, size):
    return tensor.unflatten(1, (size, -1))


# --- corr2d -------------------------------------------------------------------


@torch.library.register_vmap("pycnn::corr2d")
def _corr2d_vmap(info, in_dims, input, weight, bias, stride, padding, dilation, groups):
    input_dim, weight_dim, bias_dim = in_dims[:3]
    size = info.batch_size
    if weight_dim is None and bias_dim is None:
        output = ops.corr2d(_into_batch(input, input_dim, size), weight, bias, stride, padding, dilation, groups)
        return _from_batch(output, size), 0
    output = ops.corr2d(
        _into_channels(input, input_dim, size),
        _into_rows(weight, weight_dim, size),
        _into_rows(bias, bias_dim, size),
        stride, padding, dilation, groups * size,
    )
    return _from_channels(output, size), 1


@torch.library.register_vmap("pycnn::corr2d_backward_input")
def _corr2d_backward_input_vmap(info, in_dims, grad_output, weight, input_size, stride, padding, dilation, groups):
    grad_output_dim, weight_dim = in_dims[:2]
    size = info.batch_size
    n, c, h, w = input_size
    if weight_dim is None:
        grad_input = ops.corr2d_backward_input(
            _into_batch(grad_output, grad_output_dim, size), weight, [size * n, c, h, w],
            stride, padding, dilation, groups,
        )
        return _from_batch(grad_input, size), 0
    grad_input = ops.corr2d_backward_input(
        _into_channels(grad_output, grad_output_dim, size), _into_rows(weight, weight_dim, size),
        [n, size * c, h, w], stride, padding, dilation, groups * size,
    )
    return _from_channels(grad_input, size), 1


@torch.library.register_vmap("pycnn::corr2d_backward_weight")
def _corr2d_backward_weight_vmap(info, in_dims, grad_output, input, weight_size, stride, padding, dilation, groups,
                                 output_mask=(True, True)):
    # One weight gradient per sample: never summed over B, so always grouped.
    grad_output_dim, input_dim = in_dims[:2]
    size = info.batch_size
    mask = [bool(m) for m in output_mask]
    grad_weight, grad_bias = ops.corr2d_backward_weight(
        _into_channels(grad_output, grad_output_dim, size), _into_channels(input, input_dim, size),
        [size * weight_size[0], *weight_size[1:]], stride, padding, dilation, groups * size, mask,
    )
    # An output not computed is one empty (0,) tensor, unbatched.
    outputs = [_from_batch(t, size) if m else t for t, m in zip((grad_weight, grad_bias), mask)]
    return tuple(outputs), tuple(0 if m else None for m in mask)


# --- max_pool2d ---------------------------------------------------------------
# Every plane is pooled on its own: B folds into N, whatever is batched (as in
# avg_pool2d and adaptive_avg_pool2d).


@torch.library.register_vmap("pycnn::max_pool2d")
def _max_pool2d_vmap(info, in_dims, input, *args):
    output, indices = ops.max_pool2d(_into_batch(input, in_dims[0], info.batch_size), *args)
    return (_from_batch(output, info.batch_size), _from_batch(indices, info.batch_size)), (0, 0)


@torch.library.register_vmap("pycnn::max_pool2d_backward")
def _max_pool2d_backward_vmap(info, in_dims, grad_output, input, indices, *args):
    size = info.batch_size
    grad_input = ops.max_pool2d_backward(
        *(_into_batch(t, d, size) for t, d in zip((grad_output, input, indices), in_dims)), *args
    )
    return _from_batch(grad_input, size), 0


# --- avg_pool2d ---------------------------------------------------------------
# As max_pool2d: B folds into N.


@torch.library.register_vmap("pycnn::avg_pool2d")
def _avg_pool2d_vmap(info, in_dims, input, *args):
    return _from_batch(ops.avg_pool2d(_into_batch(input, in_dims[0], info.batch_size), *args), info.batch_size), 0


@torch.library.register_vmap("pycnn::avg_pool2d_backward")
def _avg_pool2d_backward_vmap(info, in_dims, grad_output, input, *args):
    size = info.batch_size
    grad_input = ops.avg_pool2d_backward(
        _into_batch(grad_output, in_dims[0], size), _into_batch(input, in_dims[1], size), *args
    )
    return _from_batch(grad_input, size), 0


# --- adaptive_avg_pool2d ------------------------------------------------------
# As max_pool2d: B folds into N.


@torch.library.register_vmap("pycnn::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_vmap(info, in_dims, input, output_size):
    size = info.batch_size
    return _from_batch(ops.adaptive_avg_pool2d(_into_batch(input, in_dims[0], size), output_size), size), 0


@torch.library.register_vmap("pycnn::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_vmap(info, in_dims, grad_output, input):
    size = info.batch_size
    grad_input = ops.adaptive_avg_pool2d_backward(
        _into_batch(grad_output, in_dims[0], size), _into_batch(input, in_dims[1], size)
    )
    return _from_batch(grad_input, size), 0


# --- batch_norm ---------------------------------------------------------------


@torch.library.register_vmap("pycnn::batch_norm")
def _batch_norm_vmap(info, in_dims, input, weight, bias, running_mean, running_var, training, momentum, eps):
    size = info.batch_size
    uses_batch_stats = training or running_mean is None
    if not uses_batch_stats and all(d is None for d in in_dims[1:5]):
        # Shared running statistics and parameters: the samples are independent.
        output, *statistics = ops.batch_norm(
            _into_batch(input, in_dims[0], size), weight, bias, running_mean, running_var, training, momentum, eps
        )
        return (_from_batch(output, size), *statistics), (0, None, None, None, None)
    # Statistics of each of the B on its own: B * C channels.
    output, save_mean, save_invstd, new_running_mean, new_running_var = ops.batch_norm(
        _into_channels(input, in_dims[0], size),
        *(_into_rows(t, d, size) for t, d in zip((weight, bias, running_mean, running_var), in_dims[1:5])),
        training, momentum, eps,
    )
    running_dim = None if running_mean is None else 0
    return (
        _from_channels(output, size),
        _from_batch(save_mean, size),
        _from_batch(save_invstd, size),
        new_running_mean if running_mean is None else _from_batch(new_running_mean, size),
        new_running_var if running_mean is None else _from_batch(new_running_var, size),
    ), (1, 0, 0, running_dim, running_dim)


@torch.library.register_vmap("pycnn::batch_norm_backward")
def _batch_norm_backward_vmap(info, in_dims, grad_output, input, weight, save_mean, save_invstd, used_batch_stats):
    # Per-sample grad_weight and grad_bias: always B * C channels.
    size = info.batch_size
    grad_input, grad_weight, grad_bias = ops.batch_norm_backward(
        _into_channels(grad_output, in_dims[0], size),
        _into_channels(input, in_dims[1], size),
        _into_rows(weight, in_dims[2], size),
        _into_rows(save_mean, in_dims[3], size),
        _into_rows(save_invstd, in_dims[4], size),
        used_batch_stats,
    )
    return (_from_channels(grad_input, size), _from_batch(grad_weight, size), _from_batch(grad_bias, size)), (1, 0, 0)
