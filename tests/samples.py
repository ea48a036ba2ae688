"""The test samples of every pycnn operator, in one place.

Each operator has one table of cases (shapes and arguments, device- and
dtype-free) that its correctness, gradient and opcheck tests all draw from,
builders that turn a case into the operator's arguments for a device and
dtype (the forward's, and its backward operators', computed from the
forward), and a table of bad calls with the error they must raise.

- corr2d: CORR2D (N, C, H, W, out_channels, kernel, stride, padding,
  dilation, groups); corr2d_tensors, corr2d_case (the functional's
  arguments), corr2d_args (the operator's), corr2d_backward_input_args,
  corr2d_backward_weight_args.
- max_pool2d, avg_pool2d, adaptive_avg_pool2d: POOL_CASES[op], case ->
  (input shape, torch.nn.functional keyword arguments); pool_input,
  pool_case, pool_op_args (the functional's arguments spelled as the
  operator's), pool_args, pool_backward_args. test_pooling.py runs the
  checks the three share over these.
- batch_norm: BATCH_NORM_SHAPES (rank -> input shape), BATCH_NORM_CASES
  (named configurations); batch_norm_args, batch_norm_backward_args.
- OPCHECK: operator -> {case label: args builder(device)}, each a case of the
  tables above (at a given dtype and memory format).
- ERRORS: operator -> {case: (args builder(device), message regex)}: calls
  the real kernels reject; test_errors.py checks their messages,
  test_fake_errors.py that the fake kernels raise the same.
"""

from __future__ import annotations

import pytest
import torch

from conftest import distinct_values

ops = torch.ops.pycnn


def pair(value):
    """An int or a tuple, as the functionals take it, as the operators' [a, b]."""
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


# --- corr2d -------------------------------------------------------------------

# (N, C, H, W, out_channels, kernel, stride, padding, dilation, groups)
CORR2D = {
    "odd_sizes": (2, 3, 7, 9, 5, (3, 3), 1, 0, 1, 1),
    "odd_sizes_padded": (3, 3, 9, 7, 4, (3, 5), 1, 1, 1, 1),
    "padded_3x3": (2, 3, 7, 6, 4, (3, 3), 1, 1, 1, 1),
    "kernel_1x1": (2, 4, 6, 5, 3, (1, 1), 1, 0, 1, 1),
    "kernel_1x1_batch_1": (1, 2, 6, 5, 3, (1, 1), 1, 0, 1, 1),
    "kernel_1x1_stride2": (2, 4, 7, 6, 3, (1, 1), 2, 0, 1, 1),
    "kernel_eq_input": (2, 3, 5, 4, 2, (5, 4), 1, 0, 1, 1),
    "kernel_eq_input_padded": (2, 3, 5, 4, 2, (5, 4), 1, (2, 1), 1, 1),
    "stride_gt_kernel": (2, 3, 11, 10, 4, (2, 2), 3, 0, 1, 1),
    "stride_gt_kernel_padded": (2, 3, 11, 10, 4, (2, 3), (4, 3), 1, 1, 1),
    "stride_3_even_kernel": (2, 3, 5, 5, 3, (2, 2), 3, 1, 1, 1),
    "dilation_padding": (2, 2, 9, 8, 3, (3, 3), 1, 2, 2, 1),
    "dilation_padding_stride": (2, 2, 10, 11, 3, (3, 2), 2, (2, 1), (2, 3), 1),
    "asymmetric": (2, 3, 8, 9, 4, (2, 3), (1, 2), (1, 0), (2, 1), 1),
    "asymmetric_2": (1, 2, 12, 7, 2, (4, 1), (3, 1), (0, 1), (1, 1), 1),
    "groups_1": (2, 6, 6, 7, 6, (3, 3), 1, 1, 1, 1),
    "groups_2": (2, 6, 6, 7, 6, (3, 3), 1, 1, 1, 2),
    "groups_2_strided_asymmetric": (2, 4, 9, 8, 6, (3, 2), (2, 1), (1, 0), (2, 1), 2),
    "groups_3": (2, 6, 6, 7, 9, (3, 3), 1, 1, 1, 3),
    "groups_6_depthwise": (2, 6, 6, 7, 6, (3, 3), 1, 1, 1, 6),
    "groups_6_depthwise_multiplier": (2, 6, 6, 7, 12, (3, 3), 2, 1, 1, 6),
    "groups_strided_dilated": (2, 4, 9, 9, 4, (2, 2), 2, 1, 2, 2),
    "batch_1": (1, 3, 6, 6, 2, (3, 3), 1, 0, 1, 1),
    "batch_many": (8, 2, 5, 5, 3, (3, 3), 1, 1, 1, 1),
    "single_pixel_input": (2, 3, 1, 1, 2, (1, 1), 1, 0, 1, 1),
    "single_pixel_padded": (2, 3, 1, 1, 2, (3, 3), 1, 1, 1, 1),
}


def corr2d_tensors(n, c, h, w, o, kernel, groups, dtype, device, bias=True):
    """(input, weight, bias or None) of a cross-correlation of that geometry."""
    x = torch.randn(n, c, h, w, dtype=dtype, device=device)
    wt = torch.randn(o, c // groups, *kernel, dtype=dtype, device=device)
    b = torch.randn(o, dtype=dtype, device=device) if bias else None
    return x, wt, b


def corr2d_case(case, dtype, device, bias=True, batch=None, height=None, width=None):
    """(input, weight, bias) and (stride, padding, dilation, groups) of CORR2D[case]
    in the functionals' spelling; batch/height/width override its sizes."""
    n, c, h, w, o, kernel, stride, padding, dilation, groups = CORR2D[case]
    tensors = corr2d_tensors(batch or n, c, height or h, width or w, o, kernel, groups, dtype, device, bias)
    return tensors, (stride, padding, dilation, groups)


def corr2d_args(case, device, dtype=torch.float32, *, bias=True, channels_last=False, requires_grad=False):
    """The arguments of torch.ops.pycnn.corr2d for CORR2D[case]."""
    (x, wt, b), (stride, padding, dilation, groups) = corr2d_case(case, dtype, device, bias)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for t in (x, wt, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    return (x, wt, b, pair(stride), pair(padding), pair(dilation), groups)


def _corr2d_grad_output(case, device, dtype):
    x, wt, _, *window = corr2d_args(case, device, dtype, bias=False)
    grad_output = torch.randn_like(ops.corr2d(x, wt, None, *window))
    return x, wt, grad_output, window


def corr2d_backward_input_args(case, device, dtype=torch.float32):
    """The arguments of corr2d_backward_input for CORR2D[case]: a random grad_output of corr2d's output shape."""
    x, wt, grad_output, window = _corr2d_grad_output(case, device, dtype)
    return (grad_output, wt, list(x.shape), *window)


def corr2d_backward_weight_args(case, device, dtype=torch.float32):
    """The arguments of corr2d_backward_weight for CORR2D[case]."""
    x, wt, grad_output, window = _corr2d_grad_output(case, device, dtype)
    return (grad_output, x, list(wt.shape), *window)


# --- max_pool2d ---------------------------------------------------------------

# (N, C, H, W, kernel_size, stride, padding, dilation, ceil_mode)
_MAX_POOL2D = {
    "odd_sizes": (2, 3, 7, 9, 3, 2, 0, 1, False),
    "odd_sizes_overlap": (2, 3, 9, 7, 3, 1, 1, 1, False),
    "padded_stride2": (2, 3, 7, 6, 3, 2, 1, 1, False),
    "kernel_1x1": (2, 3, 5, 6, 1, 1, 0, 1, False),
    "kernel_1x1_stride2": (2, 3, 5, 6, 1, 2, 0, 1, False),
    "kernel_2x2": (2, 3, 6, 6, 2, 2, 0, 1, False),
    "kernel_eq_input": (2, 3, 5, 4, (5, 4), None, 0, 1, False),
    "kernel_eq_input_padded": (2, 3, 5, 4, (5, 4), 1, (2, 2), 1, False),
    "stride_gt_kernel": (2, 3, 11, 10, 2, 3, 0, 1, False),
    "stride_gt_kernel_padded": (2, 3, 11, 10, (2, 3), (4, 3), 1, 1, False),
    "dilation_padding": (2, 2, 9, 8, 3, 1, 1, 2, False),
    "dilation_padding_stride": (2, 2, 10, 11, (3, 2), 2, (1, 1), (2, 3), False),
    "asymmetric": (2, 3, 8, 9, (2, 3), (1, 2), (1, 0), (1, 2), False),
    "asymmetric_2": (1, 2, 12, 7, (4, 1), (3, 1), (2, 0), 1, False),
    "ceil_basic": (2, 3, 7, 7, 2, 2, 0, 1, True),
    "ceil_window_in_left_padding": (2, 3, 5, 5, 2, 2, 1, 1, True),
    "ceil_last_window_dropped": (2, 3, 5, 6, 2, 2, 1, 1, True),
    "ceil_pad_stride3": (2, 2, 7, 8, 3, 3, 1, 1, True),
    "ceil_asymmetric": (2, 2, 6, 9, (3, 2), (2, 3), (1, 1), 1, True),
    "ceil_dilated": (2, 2, 9, 10, 3, 2, 1, 2, True),
    "ceil_dilated_asymmetric": (2, 3, 9, 8, (3, 2), (2, 3), 1, (2, 1), True),
    "ceil_kernel4_stride3": (1, 2, 4, 5, 4, 3, 2, 1, True),
    "batch_1": (1, 4, 6, 6, 2, 2, 0, 1, False),
    "batch_many": (8, 2, 6, 6, 3, 2, 1, 1, False),
    "single_pixel": (2, 3, 1, 1, 1, 1, 0, 1, False),
    "single_pixel_padded": (2, 3, 1, 1, 3, 1, 1, 1, True),
}

# --- avg_pool2d ---------------------------------------------------------------
# count_include_pad and divisor_override vary over every case (the tests' parameters).

# (N, C, H, W, kernel_size, stride, padding, ceil_mode)
_AVG_POOL2D = {
    "odd_sizes": (2, 3, 7, 9, 3, 2, 0, False),
    "odd_sizes_overlap": (2, 3, 9, 7, 3, 1, 1, False),
    "padded_stride2": (2, 3, 7, 6, 3, 2, 1, False),
    "kernel_1x1": (2, 3, 5, 6, 1, 1, 0, False),
    "kernel_1x1_stride2": (2, 3, 5, 6, 1, 2, 0, False),
    "kernel_2x2_stride1": (1, 2, 6, 6, 2, 1, 0, False),
    "kernel_eq_input": (2, 3, 5, 4, (5, 4), None, 0, False),
    "kernel_eq_input_padded": (2, 3, 5, 4, (5, 4), 1, (2, 2), False),
    "stride_gt_kernel": (2, 3, 11, 10, 2, 3, 0, False),
    "stride_gt_kernel_padded": (2, 3, 11, 10, (2, 3), (4, 3), 1, False),
    "asymmetric": (2, 3, 8, 9, (2, 3), (1, 2), (1, 0), False),
    "asymmetric_2": (1, 2, 12, 7, (4, 1), (3, 1), (2, 0), False),
    "ceil_basic": (2, 3, 7, 7, 2, 2, 0, True),
    "ceil_window_in_left_padding": (2, 3, 5, 5, 2, 2, 1, True),
    "ceil_last_window_dropped": (2, 3, 5, 6, 2, 2, 1, True),
    "ceil_pad_stride3": (2, 2, 7, 8, 3, 3, 1, True),
    "ceil_asymmetric": (2, 2, 6, 9, (3, 2), (2, 3), (1, 1), True),
    "ceil_asymmetric_2": (2, 3, 9, 8, (3, 2), (2, 3), 1, True),
    "ceil_kernel4_stride3": (1, 2, 4, 5, 4, 3, 2, True),
    "ceil_past_right_padding": (1, 2, 6, 6, 3, 2, 1, True),
    "batch_1": (1, 4, 6, 6, 2, 2, 0, False),
    "batch_many": (8, 2, 6, 6, 3, 2, 1, False),
    "single_pixel": (2, 3, 1, 1, 1, 1, 0, False),
    "single_pixel_padded": (2, 3, 1, 1, 3, 1, 1, True),
}

# --- adaptive_avg_pool2d ------------------------------------------------------

# (input shape, output_size as passed to the functional). The grid test varies the batch.
_ADAPTIVE_AVG_POOL2D = {
    "global_int": ((2, 3, 7, 9), 1),
    "global_pair": ((2, 3, 6, 5), (1, 1)),
    "global_square": ((2, 3, 5, 5), (1, 1)),
    "identity": ((2, 3, 5, 7), (5, 7)),
    "divisible": ((2, 3, 8, 6), (4, 3)),
    "non_divisible": ((2, 3, 7, 9), (3, 4)),
    "non_divisible_2": ((2, 3, 13, 10), (5, 7)),
    "larger_than_input": ((2, 3, 3, 4), (5, 7)),
    "upsample_2_channels": ((1, 2, 3, 4), (5, 6)),
    "int_size": ((2, 3, 9, 8), 4),
    "none_height": ((2, 3, 9, 8), (None, 3)),
    "none_width": ((2, 3, 9, 8), (2, None)),
    "none_both": ((2, 3, 5, 6), (None, None)),
    "single_pixel_input": ((2, 3, 1, 1), (2, 3)),
    "row_input": ((2, 3, 1, 9), (1, 4)),
}

# --- the poolings' samples, in one table ---------------------------------------

POOL_OPS = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]

POOL_CASES = {
    "max_pool2d": {
        name: ((n, c, h, w), dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil))
        for name, (n, c, h, w, k, s, p, d, ceil) in _MAX_POOL2D.items()
    },
    "avg_pool2d": {
        name: ((n, c, h, w), dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil))
        for name, (n, c, h, w, k, s, p, ceil) in _AVG_POOL2D.items()
    },
    "adaptive_avg_pool2d": {
        name: (shape, dict(output_size=out)) for name, (shape, out) in _ADAPTIVE_AVG_POOL2D.items()
    },
}


def pool_input(op, shape, dtype=torch.float32, device="cpu", *, channels_last=False, requires_grad=False):
    """An input for the pooling op: distinct values in every plane for max pooling
    (no ties, so the argmax is unique), normal values for the others."""
    if op == "max_pool2d":
        x = distinct_values(shape, dtype, device)
    else:
        x = torch.randn(shape, dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def pool_case(op, case, dtype=torch.float32, device="cpu", **input_options):
    """(input, functional keyword arguments) of POOL_CASES[op][case]."""
    shape, kwargs = POOL_CASES[op][case]
    return pool_input(op, shape, dtype, device, **input_options), dict(kwargs)


def pool_op_args(op, kwargs, input_shape):
    """The functional's keyword arguments as the operator's arguments after the input."""
    if op == "adaptive_avg_pool2d":
        out = kwargs["output_size"]
        out = list(out) if isinstance(out, (tuple, list)) else [out, out]
        return ([size if o is None else o for o, size in zip(out, input_shape[-2:])],)
    kernel = pair(kwargs["kernel_size"])
    stride = kernel if kwargs.get("stride") is None else pair(kwargs["stride"])
    padding = pair(kwargs.get("padding", 0))
    ceil_mode = kwargs.get("ceil_mode", False)
    if op == "max_pool2d":
        return (kernel, stride, padding, pair(kwargs.get("dilation", 1)), ceil_mode)
    return (kernel, stride, padding, ceil_mode, kwargs.get("count_include_pad", True), kwargs.get("divisor_override"))


def pool_args(op, case, device, dtype=torch.float32, *, channels_last=False, requires_grad=False, **kwargs):
    """The arguments of torch.ops.pycnn.<op> for POOL_CASES[op][case]; kwargs
    override the case's (count_include_pad, divisor_override)."""
    x, case_kwargs = pool_case(op, case, dtype, device, channels_last=channels_last, requires_grad=requires_grad)
    return (x, *pool_op_args(op, dict(case_kwargs, **kwargs), x.shape))


def pool_backward_args(op, forward_args):
    """The arguments of <op>_backward: a random grad_output of the forward's output shape."""
    x, *rest = forward_args
    x = x.detach()
    output = getattr(ops, op)(x, *rest)
    if op == "max_pool2d":
        output, indices = output
        return (torch.randn_like(output), x, indices, *rest)
    if op == "adaptive_avg_pool2d":
        return (torch.randn_like(output), x)
    return (torch.randn_like(output), x, *rest)


# --- batch_norm ---------------------------------------------------------------

BATCH_NORM_SHAPES = {"2d": (6, 4), "3d": (3, 4, 5), "4d": (3, 4, 5, 6)}

# Named cases, for the tests of higher derivatives: (shape, training, running statistics, affine)
BATCH_NORM_CASES = {
    "train_4d": ((3, 4, 5, 6), True, True, True),
    "train_4d_no_affine": ((3, 4, 3, 2), True, False, False),
    "train_3d": ((3, 4, 5), True, True, True),
    "train_2d": ((6, 4), True, False, True),
    "eval_4d": ((3, 4, 5, 6), False, True, True),
    "eval_2d": ((6, 4), False, True, False),
}


def batch_norm_stats(c, dtype, device):
    """(running_mean, running_var)"""
    rm = torch.randn(c, dtype=dtype, device=device) * 0.5
    rv = torch.rand(c, dtype=dtype, device=device) + 0.5
    return rm, rv


def batch_norm_affine(c, dtype, device, affine):
    """(weight, bias), each None unless affine names it ("both", "weight", "bias", "none")."""
    w = torch.randn(c, dtype=dtype, device=device) if affine in ("both", "weight") else None
    b = torch.randn(c, dtype=dtype, device=device) if affine in ("both", "bias") else None
    return w, b


def batch_norm_args(rank, device, dtype=torch.float32, *, affine="both", running=True, training=True,
                    requires_grad=False, momentum=0.1, eps=1e-5):
    """The arguments of torch.ops.pycnn.batch_norm (input, weight, bias,
    running_mean, running_var, training, momentum, eps) for an input of
    BATCH_NORM_SHAPES[rank]."""
    shape = BATCH_NORM_SHAPES[rank]
    c = shape[1]
    x = torch.randn(shape, dtype=dtype, device=device).requires_grad_(requires_grad)
    w, b = batch_norm_affine(c, dtype, device, affine)
    w = w.requires_grad_(requires_grad) if w is not None else None
    b = b.requires_grad_(requires_grad) if b is not None else None
    rm, rv = batch_norm_stats(c, dtype, device) if running else (None, None)
    return (x, w, b, rm, rv, training, momentum, eps)


def batch_norm_backward_args(forward_args):
    """The arguments of batch_norm_backward for batch_norm's: a random grad_output,
    and the statistics batch_norm saved."""
    x, w, b, rm, rv, training, momentum, eps = (a.detach() if isinstance(a, torch.Tensor) else a for a in forward_args)
    out, save_mean, save_invstd = ops.batch_norm(x, w, b, rm, rv, training, momentum, eps)[:3]
    return (torch.randn_like(out), x, w, save_mean, save_invstd, training or rm is None)


# --- opcheck ------------------------------------------------------------------
# Cases of the tables above, each at a dtype and memory format, with inputs
# that require grad (so opcheck tests the autograd registration) or not.

_F64 = dict(dtype=torch.float64)
_GRAD = dict(requires_grad=True)


def _bn_case(rank, **kw):
    return lambda d: batch_norm_args(rank, d, **kw)


_BATCH_NORM_OPCHECK = {
    "train_4d_stats": dict(rank="4d", requires_grad=True),
    "train_3d_nostats": dict(rank="3d", running=False, requires_grad=True),
    "train_2d_noaffine": dict(rank="2d", affine="none", requires_grad=True),
    "eval_4d_stats": dict(rank="4d", training=False, requires_grad=True),
    "eval_nostats_f64": dict(rank="3d", running=False, training=False, requires_grad=True, **_F64),
    "train_no_grad": dict(rank="4d"),
}

_POOL_OPCHECK = {
    "max_pool2d": {
        "basic": lambda d: pool_args("max_pool2d", "padded_stride2", d, **_GRAD),
        "ceil_dilated": lambda d: pool_args("max_pool2d", "ceil_dilated_asymmetric", d, **_GRAD),
        "channels_last_f64": lambda d: pool_args("max_pool2d", "kernel_2x2", d, channels_last=True, **_GRAD, **_F64),
    },
    "avg_pool2d": {
        "basic": lambda d: pool_args("avg_pool2d", "padded_stride2", d, **_GRAD),
        "ceil_exclude_pad": lambda d: pool_args(
            "avg_pool2d", "ceil_asymmetric_2", d, count_include_pad=False, **_GRAD
        ),
        "divisor": lambda d: pool_args(
            "avg_pool2d", "kernel_2x2_stride1", d, channels_last=True, divisor_override=3, **_GRAD, **_F64
        ),
    },
    "adaptive_avg_pool2d": {
        "non_divisible": lambda d: pool_args("adaptive_avg_pool2d", "non_divisible", d, **_GRAD),
        "global": lambda d: pool_args("adaptive_avg_pool2d", "global_square", d, channels_last=True, **_GRAD),
        "upsample_f64": lambda d: pool_args("adaptive_avg_pool2d", "upsample_2_channels", d, **_GRAD, **_F64),
    },
}


def _backward_of(op, cases):
    return {name: (lambda d, make=make: pool_backward_args(op, make(d))) for name, make in cases.items()}


OPCHECK = {
    "corr2d": {
        "basic": lambda d: corr2d_args("padded_3x3", d, requires_grad=True),
        "nobias_groups_strided": lambda d: corr2d_args("groups_2_strided_asymmetric", d, bias=False, requires_grad=True),
        "channels_last_f64": lambda d: corr2d_args(
            "kernel_1x1_batch_1", d, bias=False, channels_last=True, requires_grad=True, **_F64
        ),
        "no_grad": lambda d: corr2d_args("stride_3_even_kernel", d),
    },
    "corr2d_backward_input": {
        "groups": lambda d: corr2d_backward_input_args("groups_2_strided_asymmetric", d),
        "basic": lambda d: corr2d_backward_input_args("padded_3x3", d),
    },
    "corr2d_backward_weight": {
        "groups": lambda d: corr2d_backward_weight_args("groups_2_strided_asymmetric", d),
        "basic_f64": lambda d: corr2d_backward_weight_args("padded_3x3", d, torch.float64),
        # output_mask: an output not asked for is an empty (0,) tensor.
        "weight_only": lambda d: (*corr2d_backward_weight_args("padded_3x3", d), [True, False]),
        "bias_only": lambda d: (*corr2d_backward_weight_args("groups_2_strided_asymmetric", d), [False, True]),
    },
    **{
        name: cases
        for op, forward in _POOL_OPCHECK.items()
        for name, cases in ((op, forward), (f"{op}_backward", _backward_of(op, forward)))
    },
    "batch_norm": {name: _bn_case(**kw) for name, kw in _BATCH_NORM_OPCHECK.items()},
    "batch_norm_backward": {
        name: (lambda d, kw=kw: batch_norm_backward_args(_bn_case(**kw)(d))) for name, kw in _BATCH_NORM_OPCHECK.items()
    },
}


# --- bad calls ----------------------------------------------------------------
# ERRORS[op][case] = (args builder(device), regex of the RuntimeError's message,
# matched with re.search as pytest.raises(match=...) does). CORR2D_ERRORS,
# MAX_POOL2D_ERRORS, AVG_POOL2D_ERRORS and BATCH_NORM_ERRORS are the tables
# test_errors.py parametrises over (their regexes without the operator's name).


def _t(*shape, device="cpu", dtype=torch.float32):
    return torch.randn(*shape, device=device, dtype=dtype)


ONE, ZERO = [1, 1], [0, 0]
INTEGER_INPUT = r"input must be float32, float64, float16 or bfloat16, got Int"


def _corr2d(x, w, b=None, stride=ONE, padding=ZERO, dilation=ONE, groups=1):
    return lambda d: (x(d), w(d), b(d) if b else None, stride, padding, dilation, groups)


def _shape(*shape, dtype=torch.float32):
    return lambda d: _t(*shape, device=d, dtype=dtype)


CORR2D_ERRORS = {
    "input_rank_3": (_corr2d(_shape(3, 5, 5), _shape(2, 3, 3, 3)), r"expected input of rank 4 \(N, C, H, W\), got rank 3"),
    "input_rank_5": (_corr2d(_shape(1, 1, 3, 5, 5), _shape(2, 3, 3, 3)),
                     r"expected input of rank 4 \(N, C, H, W\), got rank 5"),
    "weight_rank_2": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3)), r"expected weight of rank 4"),
    "channels_mismatch": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 4, 3, 3)),
                          r"input has 3 channels but weight expects in_channels = weight\.size\(1\) \* groups = 4 \* 1 = 4"),
    "channels_vs_groups": (_corr2d(_shape(1, 6, 5, 5), _shape(6, 2, 3, 3), groups=2),
                           r"input has 6 channels but weight expects in_channels = .*2 \* 2 = 4"),
    "out_channels_vs_groups": (_corr2d(_shape(1, 6, 5, 5), _shape(5, 3, 3, 3), groups=2),
                               r"weight\.size\(0\) \(out_channels = 5\) must be a positive multiple of groups = 2"),
    "groups_zero": (_corr2d(_shape(1, 6, 5, 5), _shape(6, 6, 3, 3), groups=0), r"groups must be >= 1, got 0"),
    "groups_negative": (_corr2d(_shape(1, 6, 5, 5), _shape(6, 6, 3, 3), groups=-2), r"groups must be >= 1, got -2"),
    "kernel_zero": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 0, 3)), r"kernel size .* must be >= 1"),
    "stride_zero": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), stride=[1, 0]), r"stride must be >= 1"),
    "stride_negative": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), stride=[-1, 1]), r"stride must be >= 1"),
    "stride_three_elements": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), stride=[1, 1, 1]),
                              r"stride must have 2 elements"),
    "dilation_zero": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), dilation=[0, 1]), r"dilation must be >= 1"),
    "padding_negative": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), padding=[0, -1]), r"padding must be >= 0"),
    "output_below_1": (_corr2d(_shape(1, 3, 3, 3), _shape(2, 3, 5, 5)), r"the output size \(-1, -1\) is below 1"),
    "output_below_1_dilated": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), dilation=[3, 1]),
                               r"the output size \(-1, 3\) is below 1"),
    "weight_dtype": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3, dtype=torch.float64)),
                     r"weight has dtype Double but input has dtype Float"),
    "bias_dtype": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), _shape(2, dtype=torch.float64)),
                   r"bias has dtype Double but input has dtype Float"),
    "bias_shape": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), _shape(3)), r"bias must have shape \(2,\)"),
    "bias_rank": (_corr2d(_shape(1, 3, 5, 5), _shape(2, 3, 3, 3), _shape(1, 2)), r"bias must have shape \(2,\)"),
}

# corr2d of a (2, 3, 6, 6) input and a (4, 3, 3, 3) weight: a (2, 4, 4, 4) output.
_CORR2D_BACKWARD_GRAD_OUTPUT_ERRORS = {
    "grad_output_height": ((2, 4, 5, 4), torch.float32, r"grad_output must have shape \[2, 4, 4, 4\], got \[2, 4, 5, 4\]"),
    "grad_output_channels": ((2, 3, 4, 4), torch.float32, r"grad_output must have shape \[2, 4, 4, 4\]"),
    "grad_output_batch": ((1, 4, 4, 4), torch.float32, r"grad_output must have shape \[2, 4, 4, 4\]"),
    "grad_output_dtype": ((2, 4, 4, 4), torch.float64, r"grad_output has dtype Double"),
}


def _corr2d_backward_errors(op, other_shape, size):
    errors = {
        name: (lambda d, shape=shape, dtype=dtype: (_t(*shape, device=d, dtype=dtype), _t(*other_shape, device=d),
                                                    size, ONE, ZERO, ONE, 1), rf"pycnn\.{op}: " + msg)
        for name, (shape, dtype, msg) in _CORR2D_BACKWARD_GRAD_OUTPUT_ERRORS.items()
    }
    errors["groups_zero"] = (lambda d: (_t(2, 4, 4, 4, device=d), _t(*other_shape, device=d), size, ONE, ZERO, ONE, 0),
                             rf"pycnn\.{op}: groups must be >= 1, got 0")
    errors["integer_other"] = (
        lambda d: (_t(2, 4, 4, 4, device=d), torch.ones(*other_shape, dtype=torch.int32, device=d), size, ONE, ZERO, ONE, 1),
        rf"pycnn\.{op}: " + INTEGER_INPUT,
    )
    return errors


# (kernel_size, stride, padding, dilation, ceil_mode) / (kernel_size, stride, padding, ceil_mode, count_include_pad,
# divisor_override) after an input of the given shape.
K3, S1, P1, D1 = [3, 3], [1, 1], [1, 1], [1, 1]

MAX_POOL2D_ERRORS = {
    "input_rank_3": ((3, 5, 5), (K3, S1, P1, D1, False), r"expected input of rank 4 \(N, C, H, W\), got rank 3"),
    "input_rank_2": ((5, 5), (K3, S1, P1, D1, False), r"expected input of rank 4 \(N, C, H, W\), got rank 2"),
    "kernel_zero": ((1, 2, 5, 5), ([0, 3], S1, ZERO, D1, False), r"kernel_size must be >= 1"),
    "kernel_negative": ((1, 2, 5, 5), ([3, -1], S1, ZERO, D1, False), r"kernel_size must be >= 1"),
    "stride_zero": ((1, 2, 5, 5), (K3, [0, 1], P1, D1, False), r"stride must be >= 1"),
    "padding_negative": ((1, 2, 5, 5), (K3, S1, [-1, 0], D1, False), r"padding must be >= 0"),
    "dilation_zero": ((1, 2, 5, 5), (K3, S1, P1, [1, 0], False), r"dilation must be >= 1"),
    "padding_over_half": ((1, 2, 5, 5), (K3, S1, [2, 1], D1, False), r"padding must be at most half the kernel size"),
    "padding_over_half_w": ((1, 2, 5, 5), ([4, 2], S1, [2, 2], D1, False), r"padding must be at most half the kernel size"),
    "output_below_1": ((1, 2, 3, 3), ([5, 5], S1, ZERO, D1, False), r"the output size \(-1, -1\) is below 1"),
    "output_below_1_dilated": ((1, 2, 5, 5), (K3, S1, ZERO, [1, 3], False), r"the output size \(3, -1\) is below 1"),
}

AVG_POOL2D_ERRORS = {
    "input_rank_3": ((3, 5, 5), (K3, S1, P1, False, True, None), r"expected input of rank 4 \(N, C, H, W\), got rank 3"),
    "kernel_zero": ((1, 2, 5, 5), ([0, 3], S1, ZERO, False, True, None), r"kernel_size must be >= 1"),
    "stride_zero": ((1, 2, 5, 5), (K3, [1, 0], P1, False, True, None), r"stride must be >= 1"),
    "padding_negative": ((1, 2, 5, 5), (K3, S1, [0, -2], False, True, None), r"padding must be >= 0"),
    "padding_over_half": ((1, 2, 5, 5), ([2, 2], S1, [1, 2], False, True, None),
                          r"padding must be at most half the kernel size"),
    "output_below_1": ((1, 2, 3, 2), ([3, 3], S1, ZERO, False, True, None), r"the output size \(1, 0\) is below 1"),
    "divisor_zero": ((1, 2, 5, 5), (K3, S1, P1, False, True, 0), r"divisor_override must be non-zero"),
}


def _pool_errors(op, table):
    errors = {
        name: (lambda d, shape=shape, args=args: (_t(*shape, device=d), *args), rf"pycnn\.{op}: " + msg)
        for name, (shape, args, msg) in table.items()
    }
    args = next(iter(table.values()))[1]
    errors["integer_input"] = (lambda d: (torch.ones(1, 2, 5, 5, dtype=torch.int32, device=d), *args),
                               rf"pycnn\.{op}: " + INTEGER_INPUT)
    return errors


# max_pool2d / avg_pool2d of a (2, 3, 6, 6) input with a 2x2 window, stride 2: a (2, 3, 3, 3) output.
_MAX_WINDOW = ([2, 2], [2, 2], ZERO, D1, False)
_AVG_WINDOW = ([2, 2], [2, 2], ZERO, False, True, None)


def _max_pool2d_backward(grad_output=None, indices=None, window=_MAX_WINDOW):
    def make(d):
        x = _t(2, 3, 6, 6, device=d)
        out, idx = ops.max_pool2d(x, *_MAX_WINDOW)
        go = torch.randn_like(out) if grad_output is None else grad_output(d)
        return (go, x, idx if indices is None else indices(idx), *window)

    return make


def _avg_pool2d_backward(grad_output, window=_AVG_WINDOW):
    return lambda d: (grad_output(d), _t(2, 3, 6, 6, device=d), *window)


_MAX_BACKWARD = r"pycnn\.max_pool2d_backward: "
_AVG_BACKWARD = r"pycnn\.avg_pool2d_backward: "
_ADAPTIVE = r"pycnn\.adaptive_avg_pool2d: "
_ADAPTIVE_BACKWARD = r"pycnn\.adaptive_avg_pool2d_backward: "


def batch_norm_call(device, x_shape=(3, 4, 5, 5), c=4, dtype=torch.float32, **over):
    """batch_norm's arguments (training) with the given ones replaced."""
    args = dict(
        input=_t(*x_shape, device=device, dtype=dtype),
        weight=_t(c, device=device, dtype=dtype),
        bias=_t(c, device=device, dtype=dtype),
        running_mean=torch.zeros(c, device=device, dtype=dtype),
        running_var=torch.ones(c, device=device, dtype=dtype),
    )
    args.update(over)
    return (args["input"], args["weight"], args["bias"], args["running_mean"], args["running_var"], True, 0.1, 1e-5)


def _bn_error(**over):
    """A builder of batch_norm_call(device, **over); a callable value is called with the device."""
    return lambda d: batch_norm_call(d, **{k: (v(d) if callable(v) else v) for k, v in over.items()})


_F64_4 = _shape(4, dtype=torch.float64)
_HALF_INPUT = _shape(3, 4, 5, 5, dtype=torch.float16)
BATCH_NORM_ERRORS = {
    "input_rank_1": (_bn_error(input=_shape(4)),
                     r"expected input of rank 2 \(N, C\), 3 \(N, C, L\) or 4 \(N, C, H, W\), got rank 1"),
    "input_rank_5": (_bn_error(input=_shape(2, 4, 3, 3, 3)), r"expected input of rank 2 .*got rank 5"),
    "weight_shape": (_bn_error(weight=_shape(5)), r"weight must have shape \(4,\) = \(num_channels,\)"),
    "bias_shape": (_bn_error(bias=_shape(4, 1)), r"bias must have shape \(4,\)"),
    "running_mean_shape": (_bn_error(running_mean=lambda d: torch.zeros(3, device=d)), r"running_mean must have shape \(4,\)"),
    "running_var_shape": (_bn_error(running_var=lambda d: torch.ones(8, device=d)), r"running_var must have shape \(4,\)"),
    "weight_dtype": (_bn_error(weight=_F64_4), r"weight has dtype Double but input has dtype Float"),
    "bias_dtype": (_bn_error(bias=_F64_4), r"bias has dtype Double but input has dtype Float"),
    "running_mean_dtype": (_bn_error(running_mean=_F64_4), r"running_mean has dtype Double but input has dtype Float"),
    "running_var_dtype": (_bn_error(running_var=_F64_4), r"running_var has dtype Double but input has dtype Float"),
}

# batch_norm of a (3, 4, 5, 5) input with a weight and batch statistics.


def _bn_backward(grad_output=None, input=None, weight=None, save_mean=None, save_invstd=None):
    def make(d):
        x, w = _t(3, 4, 5, 5, device=d), _t(4, device=d)
        out, mean, invstd = ops.batch_norm(x, w, None, None, None, True, 0.1, 1e-5)[:3]
        pick = lambda given, default: default if given is None else given(d)  # noqa: E731
        return (pick(grad_output, torch.randn_like(out)), pick(input, x), pick(weight, w), pick(save_mean, mean),
                pick(save_invstd, invstd), True)

    return make


_BN_BACKWARD = r"pycnn\.batch_norm_backward: "


def _on_cpu_too(make):
    """A bad call with one argument on the CPU beside a CUDA input: on CUDA only."""
    def call(d):
        if d == "cpu":
            pytest.skip("needs a second device: CUDA")
        return make(d)

    return call


# cases that only CUDA can build (one argument on the CPU beside CUDA tensors)
_DEVICE_ERRORS = {
    "corr2d": ("weight_on_cpu", _on_cpu_too(lambda d: (_t(1, 3, 5, 5, device=d), _t(2, 3, 3, 3), None, ONE, ZERO, ONE, 1)),
               r"pycnn\.corr2d: weight is on cpu but input is on cuda"),
    "batch_norm": ("running_mean_on_cpu", _on_cpu_too(_bn_error(running_mean=lambda d: torch.zeros(4))),
                   r"pycnn\.batch_norm: running_mean is on cpu but input is on cuda"),
    "max_pool2d_backward": ("indices_on_cpu", _on_cpu_too(_max_pool2d_backward(indices=lambda idx: idx.cpu())),
                            _MAX_BACKWARD + r"indices must be int64 on the input's device, got Long on cpu"),
}

ERRORS = {
    "corr2d": {
        **{name: (make, r"pycnn\.corr2d: " + msg) for name, (make, msg) in CORR2D_ERRORS.items()},
        "integer_input": (lambda d: (torch.ones(1, 3, 5, 5, dtype=torch.int64, device=d),
                                     torch.ones(2, 3, 3, 3, dtype=torch.int64, device=d), None, ONE, ZERO, ONE, 1),
                          r"pycnn\.corr2d: .*input must be float32.*got Long"),
    },
    "corr2d_backward_input": {
        **_corr2d_backward_errors("corr2d_backward_input", (4, 3, 3, 3), [2, 3, 6, 6]),
        "input_size_rank_3": (lambda d: (_t(2, 4, 4, 4, device=d), _t(4, 3, 3, 3, device=d), [2, 3, 6], ONE, ZERO,
                                         ONE, 1),
                              r"pycnn\.corr2d_backward_input: expected input of rank 4 \(N, C, H, W\), got rank 3"),
        "weight_rank_3": (lambda d: (_t(2, 4, 4, 4, device=d), _t(4, 3, 3, device=d), [2, 3, 6, 6], ONE, ZERO, ONE, 1),
                          r"pycnn\.corr2d_backward_input: expected weight of rank 4"),
    },
    "corr2d_backward_weight": {
        **_corr2d_backward_errors("corr2d_backward_weight", (2, 3, 6, 6), [4, 3, 3, 3]),
        "weight_size_channels": (lambda d: (_t(2, 4, 4, 4, device=d), _t(2, 3, 6, 6, device=d), [4, 2, 3, 3], ONE,
                                            ZERO, ONE, 1),
                                 r"pycnn\.corr2d_backward_weight: input has 3 channels but weight expects"),
    },
    "max_pool2d": _pool_errors("max_pool2d", MAX_POOL2D_ERRORS),
    "max_pool2d_backward": {
        "grad_output_width": (_max_pool2d_backward(grad_output=_shape(2, 3, 3, 4)),
                              _MAX_BACKWARD + r"grad_output must have shape \[2, 3, 3, 3\], got \[2, 3, 3, 4\]"),
        "grad_output_rank_3": (_max_pool2d_backward(grad_output=_shape(2, 3, 9)),
                               _MAX_BACKWARD + r"grad_output must have shape \[2, 3, 3, 3\]"),
        "grad_output_batch": (_max_pool2d_backward(grad_output=_shape(1, 3, 3, 3)),
                              _MAX_BACKWARD + r"grad_output must have shape \[2, 3, 3, 3\]"),
        "grad_output_dtype": (_max_pool2d_backward(grad_output=_shape(2, 3, 3, 3, dtype=torch.float64)),
                              _MAX_BACKWARD + r"grad_output has dtype Double"),
        "indices_shape": (_max_pool2d_backward(indices=lambda idx: idx[:, :, :2]),
                          _MAX_BACKWARD + r"indices must have grad_output's shape \[2, 3, 3, 3\], got \[2, 3, 2, 3\]"),
        "indices_dtype": (_max_pool2d_backward(indices=lambda idx: idx.int()),
                          _MAX_BACKWARD + r"indices must be int64 on the input's device, got Int"),
        "kernel_zero": (_max_pool2d_backward(window=([0, 2], [2, 2], ZERO, D1, False)),
                        r"pycnn\.max_pool2d: kernel_size must be >= 1"),
    },
    "avg_pool2d": _pool_errors("avg_pool2d", AVG_POOL2D_ERRORS),
    "avg_pool2d_backward": {
        "grad_output_shape": (_avg_pool2d_backward(grad_output=_shape(2, 3, 4, 3)),
                              _AVG_BACKWARD + r"grad_output must have shape \[2, 3, 3, 3\], got \[2, 3, 4, 3\]"),
        "grad_output_dtype": (_avg_pool2d_backward(grad_output=_shape(2, 3, 3, 3, dtype=torch.float64)),
                              _AVG_BACKWARD + r"grad_output has dtype Double"),
        "divisor_zero": (_avg_pool2d_backward(grad_output=_shape(2, 3, 3, 3), window=([2, 2], [2, 2], ZERO, False,
                                                                                        True, 0)),
                         r"pycnn\.avg_pool2d: divisor_override must be non-zero"),
    },
    "adaptive_avg_pool2d": {
        "input_rank_3": (lambda d: (_t(3, 5, 5, device=d), [2, 2]),
                         _ADAPTIVE + r"expected input of rank 4 \(N, C, H, W\), got rank 3"),
        "output_size_zero": (lambda d: (_t(1, 3, 5, 5, device=d), [0, 2]), _ADAPTIVE + r"output_size must be >= 1"),
        "output_size_negative": (lambda d: (_t(1, 3, 5, 5, device=d), [2, -1]), _ADAPTIVE + r"output_size must be >= 1"),
        "output_size_three_elements": (lambda d: (_t(1, 3, 5, 5, device=d), [2, 2, 2]),
                                       _ADAPTIVE + r"output_size must have 2 elements"),
        "input_height_zero": (lambda d: (_t(1, 3, 0, 5, device=d), [2, 2]),
                              _ADAPTIVE + r"input spatial size must be >= 1"),
        "integer_input": (lambda d: (torch.ones(1, 2, 5, 5, dtype=torch.int32, device=d), [2, 2]),
                          _ADAPTIVE + INTEGER_INPUT),
    },
    "adaptive_avg_pool2d_backward": {
        # The CPU and CUDA kernels word this one differently (rank 4, or rank 4 (N, C, OH, OW)).
        "grad_output_rank_3": (lambda d: (_t(2, 3, 3, device=d), _t(2, 3, 7, 6, device=d)),
                               _ADAPTIVE_BACKWARD + r"expected grad_output of rank 4"),
        "grad_output_channels": (lambda d: (_t(2, 4, 3, 2, device=d), _t(2, 3, 7, 6, device=d)),
                                 _ADAPTIVE_BACKWARD + r"grad_output must have shape \[2, 3, 3, 2\], got \[2, 4, 3, 2\]"),
        "grad_output_dtype": (lambda d: (_t(2, 3, 3, 2, device=d, dtype=torch.float64), _t(2, 3, 7, 6, device=d)),
                              _ADAPTIVE_BACKWARD + r"grad_output has dtype Double"),
        "grad_output_size_zero": (lambda d: (_t(2, 3, 0, 2, device=d), _t(2, 3, 7, 6, device=d)),
                                  _ADAPTIVE + r"output_size must be >= 1"),
    },
    "batch_norm": {
        **{name: (make, r"pycnn\.batch_norm: " + msg) for name, (make, msg) in BATCH_NORM_ERRORS.items()},
        "integer_input": (_bn_error(input=lambda d: torch.ones(3, 4, 5, 5, dtype=torch.int32, device=d)),
                          r"pycnn\.batch_norm: " + INTEGER_INPUT),
        "parameters_in_two_dtypes": (_bn_error(input=_HALF_INPUT, bias=_shape(4, dtype=torch.float16)),
                                     r"pycnn\.batch_norm: bias has dtype Half but weight has dtype Float; "
                                     r"expected weight, bias, running_mean and running_var in one dtype"),
        "float_parameters_double_input": (_bn_error(input=_shape(3, 4, 5, 5, dtype=torch.float64)),
                                          r"pycnn\.batch_norm: weight has dtype Float but input has dtype Double"),
        "running_mean_without_var": (_bn_error(running_var=None),
                                     r"pycnn\.batch_norm: running_mean and running_var must be given together, "
                                     r"got running_mean defined and running_var None"),
    },
    "batch_norm_backward": {
        "grad_output_shape": (_bn_backward(grad_output=_shape(3, 4, 5, 4)),
                              _BN_BACKWARD + r"grad_output must have shape \[3, 4, 5, 5\], got \[3, 4, 5, 4\]"),
        "grad_output_dtype": (_bn_backward(grad_output=_shape(3, 4, 5, 5, dtype=torch.float64)),
                              _BN_BACKWARD + r"grad_output has dtype Double"),
        "input_rank_5": (_bn_backward(grad_output=_shape(3, 4, 5, 5, 1), input=_shape(3, 4, 5, 5, 1)),
                         _BN_BACKWARD + r"expected input of rank 2 .*got rank 5"),
        "weight_shape": (_bn_backward(weight=_shape(5)), _BN_BACKWARD + r"weight must have shape \(4,\)"),
        "save_mean_shape": (_bn_backward(save_mean=_shape(3)),
                            _BN_BACKWARD + r"save_mean must have shape \(4,\) on the input's device, got \[3\]"),
        "save_invstd_dtype": (_bn_backward(save_invstd=_F64_4),
                              _BN_BACKWARD + r"save_invstd must have dtype Float, got Double"),
    },
}
for _op, (_case, _make, _message) in _DEVICE_ERRORS.items():
    ERRORS[_op][_case] = (_make, _message)
