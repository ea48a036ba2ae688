"""Bad inputs: every class of invalid argument raises a clear error naming the argument.

Operator level (torch.ops.pycnn.*): RuntimeError with the messages of
csrc/include/pycnn/checks.h (the tables of bad calls are samples.ERRORS's,
which test_fake_errors.py also runs under FakeTensorMode). Functional level (pycnn.functional.*): ValueError
or RuntimeError whose message names the offending argument.
"""

import pytest
import torch

from conftest import CUDA_SKIP, HAS_CUDA
from samples import (
    AVG_POOL2D_ERRORS, BATCH_NORM_ERRORS, CORR2D_ERRORS, D1, ERRORS, INTEGER_INPUT, K3, MAX_POOL2D_ERRORS, ONE, P1,
    S1, ZERO, batch_norm_call,
)

ARG_ERRORS = (ValueError, RuntimeError)


def t(*shape, device="cpu", dtype=torch.float32):
    return torch.randn(*shape, device=device, dtype=dtype)


# ---------------------------------------------------------------------------
# corr2d
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CORR2D_ERRORS), ids=list(CORR2D_ERRORS))
def test_corr2d_op_errors(ops, case, device):
    make, msg = ERRORS["corr2d"][case]
    with pytest.raises(RuntimeError, match=msg):
        ops.corr2d(*make(device))


def test_corr2d_op_rejects_integer_input(ops, device):
    x = torch.ones(1, 3, 5, 5, dtype=torch.int64, device=device)
    w = torch.ones(2, 3, 3, 3, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match=r"pycnn\.corr2d: .*input must be float32.*got Long"):
        ops.corr2d(x, w, None, ONE, ZERO, ONE, 1)


@CUDA_SKIP
def test_corr2d_op_device_mismatch(ops):
    x, w = t(1, 3, 5, 5, device="cuda"), t(2, 3, 3, 3)
    with pytest.raises(RuntimeError, match=r"weight is on cpu but input is on cuda"):
        ops.corr2d(x, w, None, ONE, ZERO, ONE, 1)


def test_corr2d_backward_grad_output_errors(ops, device):
    x, w = t(2, 3, 6, 6, device=device), t(4, 3, 3, 3, device=device)
    good = t(2, 4, 4, 4, device=device)
    ops.corr2d_backward_input(good, w, [2, 3, 6, 6], ONE, ZERO, ONE, 1)  # sanity: valid call
    ops.corr2d_backward_weight(good, x, [4, 3, 3, 3], ONE, ZERO, ONE, 1)
    for bad in (t(2, 4, 5, 4, device=device), t(2, 3, 4, 4, device=device), t(1, 4, 4, 4, device=device)):
        with pytest.raises(RuntimeError, match=r"grad_output must have shape"):
            ops.corr2d_backward_input(bad, w, [2, 3, 6, 6], ONE, ZERO, ONE, 1)
        with pytest.raises(RuntimeError, match=r"grad_output must have shape"):
            ops.corr2d_backward_weight(bad, x, [4, 3, 3, 3], ONE, ZERO, ONE, 1)
    with pytest.raises(RuntimeError, match=r"grad_output has dtype Double"):
        ops.corr2d_backward_input(good.double(), w, [2, 3, 6, 6], ONE, ZERO, ONE, 1)
    with pytest.raises(RuntimeError, match=r"grad_output has dtype Double"):
        ops.corr2d_backward_weight(good.double(), x, [4, 3, 3, 3], ONE, ZERO, ONE, 1)


# ---------------------------------------------------------------------------
# max_pool2d / avg_pool2d
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(MAX_POOL2D_ERRORS), ids=list(MAX_POOL2D_ERRORS))
def test_max_pool2d_op_errors(ops, case, device):
    make, msg = ERRORS["max_pool2d"][case]
    with pytest.raises(RuntimeError, match=msg):
        ops.max_pool2d(*make(device))


@pytest.mark.parametrize("case", list(AVG_POOL2D_ERRORS), ids=list(AVG_POOL2D_ERRORS))
def test_avg_pool2d_op_errors(ops, case, device):
    make, msg = ERRORS["avg_pool2d"][case]
    with pytest.raises(RuntimeError, match=msg):
        ops.avg_pool2d(*make(device))


def test_pool_ops_reject_integer_input(ops, device):
    x = torch.ones(1, 2, 5, 5, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match=r"pycnn\.max_pool2d: " + INTEGER_INPUT):
        ops.max_pool2d(x, K3, S1, P1, D1, False)
    with pytest.raises(RuntimeError, match=r"pycnn\.avg_pool2d: " + INTEGER_INPUT):
        ops.avg_pool2d(x, K3, S1, P1, False, True, None)
    with pytest.raises(RuntimeError, match=r"pycnn\.adaptive_avg_pool2d: " + INTEGER_INPUT):
        ops.adaptive_avg_pool2d(x, [2, 2])


def test_pool_backward_grad_output_errors(ops, device):
    x = t(2, 3, 6, 6, device=device)
    out, idx = ops.max_pool2d(x, [2, 2], [2, 2], ZERO, D1, False)
    window = ([2, 2], [2, 2], ZERO, D1, False)
    ops.max_pool2d_backward(torch.randn_like(out), x, idx, *window)  # sanity: valid call
    for bad in (t(2, 3, 3, 4, device=device), t(2, 3, 9, device=device), t(1, 3, 3, 3, device=device)):
        # the expected shape is the pooling's output shape, (2, 3, 3, 3)
        with pytest.raises(RuntimeError, match=r"pycnn\.max_pool2d_backward: grad_output must have shape \[2, 3, 3, 3\]"):
            ops.max_pool2d_backward(bad, x, idx, *window)
    with pytest.raises(RuntimeError, match=r"pycnn\.max_pool2d_backward: .*indices"):
        ops.max_pool2d_backward(torch.randn_like(out), x, idx[:, :, :2], *window)
    with pytest.raises(RuntimeError, match=r"grad_output has dtype Double"):
        ops.max_pool2d_backward(torch.randn_like(out).double(), x, idx, *window)

    args = ([2, 2], [2, 2], ZERO, False, True, None)
    out = ops.avg_pool2d(x, *args)
    ops.avg_pool2d_backward(torch.randn_like(out), x, *args)
    with pytest.raises(RuntimeError, match=r"grad_output must have shape"):
        ops.avg_pool2d_backward(t(2, 3, 4, 3, device=device), x, *args)
    with pytest.raises(RuntimeError, match=r"grad_output has dtype Double"):
        ops.avg_pool2d_backward(torch.randn_like(out).double(), x, *args)


# ---------------------------------------------------------------------------
# adaptive_avg_pool2d
# ---------------------------------------------------------------------------


def test_adaptive_avg_pool2d_op_errors(ops, device):
    op = r"pycnn\.adaptive_avg_pool2d: "
    with pytest.raises(RuntimeError, match=op + r"expected input of rank 4 \(N, C, H, W\), got rank 3"):
        ops.adaptive_avg_pool2d(t(3, 5, 5, device=device), [2, 2])
    with pytest.raises(RuntimeError, match=op + r"output_size must be >= 1"):
        ops.adaptive_avg_pool2d(t(1, 3, 5, 5, device=device), [0, 2])
    with pytest.raises(RuntimeError, match=op + r"output_size must be >= 1"):
        ops.adaptive_avg_pool2d(t(1, 3, 5, 5, device=device), [2, -1])
    with pytest.raises(RuntimeError, match=op + r"input spatial size must be >= 1"):
        ops.adaptive_avg_pool2d(t(1, 3, 0, 5, device=device), [2, 2])


def test_adaptive_avg_pool2d_backward_grad_output_errors(ops, device):
    x = t(2, 3, 7, 6, device=device)
    ops.adaptive_avg_pool2d_backward(t(2, 3, 3, 2, device=device), x)  # sanity: valid call
    with pytest.raises(RuntimeError, match=r"grad_output"):
        ops.adaptive_avg_pool2d_backward(t(2, 3, 3, device=device), x)
    with pytest.raises(RuntimeError, match=r"grad_output"):
        ops.adaptive_avg_pool2d_backward(t(2, 4, 3, 2, device=device), x)
    with pytest.raises(RuntimeError, match=r"grad_output has dtype Double"):
        ops.adaptive_avg_pool2d_backward(t(2, 3, 3, 2, device=device, dtype=torch.float64), x)


# ---------------------------------------------------------------------------
# batch_norm
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BATCH_NORM_ERRORS))
def test_batch_norm_op_errors(ops, case, device):
    make, msg = ERRORS["batch_norm"][case]
    with pytest.raises(RuntimeError, match=msg):
        ops.batch_norm(*make(device))


def test_batch_norm_op_rejects_integer_input(ops, device):
    args = batch_norm_call(device, input=torch.ones(3, 4, 5, 5, dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match=r"pycnn\.batch_norm: " + INTEGER_INPUT):
        ops.batch_norm(*args)


def test_batch_norm_mixed_precision_rules(ops, device):
    # float32 parameters beside a float16 / bfloat16 input are accepted (as native); any other mix is not
    half = dict(device=device, dtype=torch.float16)
    ops.batch_norm(*batch_norm_call(device, input=t(3, 4, 5, 5, **half)))  # all float32 parameters: mixed precision
    ops.batch_norm(*batch_norm_call(device, dtype=torch.float16))  # all float16
    with pytest.raises(RuntimeError, match=r"pycnn\.batch_norm: bias has dtype Half but weight has dtype Float; "
                                           r"expected weight, bias, running_mean and running_var in one dtype"):
        ops.batch_norm(*batch_norm_call(device, input=t(3, 4, 5, 5, **half), bias=t(4, **half)))
    with pytest.raises(RuntimeError, match=r"pycnn\.batch_norm: weight has dtype Float but input has dtype Double"):
        ops.batch_norm(*batch_norm_call(device, input=t(3, 4, 5, 5, device=device, dtype=torch.float64)))


def test_batch_norm_backward_grad_output_errors(ops, device):
    x = t(3, 4, 5, 5, device=device)
    w = t(4, device=device)
    out, mean, invstd = ops.batch_norm(x, w, None, None, None, True, 0.1, 1e-5)[:3]
    ops.batch_norm_backward(torch.randn_like(out), x, w, mean, invstd, True)  # sanity: valid call
    with pytest.raises(RuntimeError, match=r"grad_output must have shape"):
        ops.batch_norm_backward(t(3, 4, 5, 4, device=device), x, w, mean, invstd, True)
    with pytest.raises(RuntimeError, match=r"grad_output has dtype Double"):
        ops.batch_norm_backward(torch.randn_like(out).double(), x, w, mean, invstd, True)


# ---------------------------------------------------------------------------
# pycnn.functional: errors name the argument
# ---------------------------------------------------------------------------


def _conv_call(PF, d, **over):
    kw = dict(input=t(2, 3, 6, 6, device=d), weight=t(4, 3, 3, 3, device=d), bias=None, stride=1, padding=0,
              dilation=1, groups=1)
    kw.update(over)
    return lambda: PF.conv2d(**kw)


CONV_FUNCTIONAL_ERRORS = {
    "padding_string": (dict(padding="foo"), "padding"),
    "padding_negative": (dict(padding=-1), "padding"),
    "padding_negative_pair": (dict(padding=(1, -1)), "padding"),
    "stride_zero": (dict(stride=0), "stride"),
    "stride_negative_pair": (dict(stride=(1, -2)), "stride"),
    "dilation_zero": (dict(dilation=0), "dilation"),
    "groups_zero": (dict(groups=0), "groups"),
    "groups_not_dividing_channels": (dict(groups=2, weight=t(4, 1, 3, 3)), "channels|groups"),
    "channels_mismatch": (dict(weight=t(4, 2, 3, 3)), "channels"),
    "input_rank_2": (dict(input=t(6, 6)), "input"),
    "input_rank_5": (dict(input=t(1, 2, 3, 6, 6)), "input"),
    "weight_dtype": (dict(weight=t(4, 3, 3, 3, dtype=torch.float64)), "weight"),
    "bias_dtype": (dict(bias=t(4, dtype=torch.float64)), "bias"),
    "bias_shape": (dict(bias=t(5)), "bias"),
    "output_below_1": (dict(weight=t(4, 3, 7, 7)), "output size"),
    "integer_input": (dict(input=torch.ones(2, 3, 6, 6, dtype=torch.int32), weight=torch.ones(4, 3, 3, 3, dtype=torch.int32)),
                      "float16 or bfloat16"),
}


def _to(over, device):
    if device != "cpu" and any(
        isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16) for v in over.values()
    ):
        pytest.skip("half precision is supported on CUDA")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in over.items()}


@pytest.mark.parametrize("case", list(CONV_FUNCTIONAL_ERRORS), ids=list(CONV_FUNCTIONAL_ERRORS))
def test_conv2d_functional_errors(PF, case, device):
    over, name = CONV_FUNCTIONAL_ERRORS[case]
    with pytest.raises(ARG_ERRORS, match=name):
        _conv_call(PF, device, **_to(over, device))()


POOL_FUNCTIONAL_ERRORS = {
    "kernel_zero": (dict(kernel_size=0), "kernel_size"),
    "kernel_negative_pair": (dict(kernel_size=(2, -1)), "kernel_size"),
    "stride_zero": (dict(kernel_size=2, stride=0), "stride"),
    "padding_negative": (dict(kernel_size=3, padding=-1), "padding"),
    "padding_over_half": (dict(kernel_size=3, padding=2), "padding"),
    "padding_over_half_pair": (dict(kernel_size=(4, 2), padding=(1, 2)), "padding"),
    "output_below_1": (dict(kernel_size=7), "output size"),
    "input_rank_2": (dict(kernel_size=2, input=t(6, 6)), "input"),
    "input_rank_5": (dict(kernel_size=2, input=t(1, 1, 3, 6, 6)), "input"),
    "integer_input": (dict(kernel_size=2, input=torch.ones(1, 3, 6, 6, dtype=torch.int32)), "float16 or bfloat16"),
}


@pytest.mark.parametrize("case", list(POOL_FUNCTIONAL_ERRORS), ids=list(POOL_FUNCTIONAL_ERRORS))
@pytest.mark.parametrize("fn", ["max_pool2d", "avg_pool2d"])
def test_pool_functional_errors(PF, case, fn, device):
    over, name = POOL_FUNCTIONAL_ERRORS[case]
    kw = dict(input=t(2, 3, 6, 6, device=device))
    kw.update(_to(over, device))
    with pytest.raises(ARG_ERRORS, match=name):
        getattr(PF, fn)(**kw)


def test_max_pool2d_functional_dilation_error(PF, device):
    with pytest.raises(ARG_ERRORS, match="dilation"):
        PF.max_pool2d(t(2, 3, 6, 6, device=device), 2, dilation=0)


def test_avg_pool2d_functional_divisor_error(PF, device):
    with pytest.raises(ARG_ERRORS, match="divisor_override"):
        PF.avg_pool2d(t(2, 3, 6, 6, device=device), 2, divisor_override=0)


def test_adaptive_avg_pool2d_functional_errors(PF, device):
    with pytest.raises(ARG_ERRORS, match="input"):
        PF.adaptive_avg_pool2d(t(6, 6, device=device), 2)
    with pytest.raises(ARG_ERRORS, match="input"):
        PF.adaptive_avg_pool2d(t(1, 1, 2, 6, 6, device=device), 2)
    with pytest.raises(ARG_ERRORS, match="output_size"):
        PF.adaptive_avg_pool2d(t(1, 2, 6, 6, device=device), (1, 2, 3))
    with pytest.raises(ARG_ERRORS, match="float16 or bfloat16"):
        PF.adaptive_avg_pool2d(torch.ones(1, 2, 6, 6, dtype=torch.int32, device=device), 2)


BN_FUNCTIONAL_ERRORS = {
    "weight_shape": (dict(weight=t(5)), "weight"),
    "bias_shape": (dict(bias=t(3)), "bias"),
    "running_mean_shape": (dict(running_mean=torch.zeros(2)), "running_mean"),
    "running_var_dtype": (dict(running_var=torch.ones(4, dtype=torch.float64)), "running_var"),
    "running_mean_dtype": (dict(running_mean=torch.zeros(4, dtype=torch.float64)), "running_mean"),
    "weight_dtype": (dict(weight=t(4, dtype=torch.float64)), "weight"),
    "input_rank_5": (dict(input=t(2, 4, 3, 3, 3)), "input"),
    "integer_input": (dict(input=torch.ones(3, 4, 5, dtype=torch.int32), running_mean=None, running_var=None),
                      "float16 or bfloat16"),
}


@pytest.mark.parametrize("case", list(BN_FUNCTIONAL_ERRORS), ids=list(BN_FUNCTIONAL_ERRORS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_functional_errors(PF, case, training, device):
    over, name = BN_FUNCTIONAL_ERRORS[case]
    if training is False and "running_mean" in over and over["running_mean"] is None:
        pytest.skip("eval without running statistics is a different error")
    kw = dict(input=t(3, 4, 5, 5), running_mean=torch.zeros(4), running_var=torch.ones(4), weight=t(4), bias=t(4),
              training=training)
    kw.update(over)
    kw = _to(kw, device)
    with pytest.raises(ARG_ERRORS, match=name):
        PF.batch_norm(**kw)


def test_errors_propagate_through_modules(PN, device):
    conv = PN.Conv2d(3, 4, 3).to(device)
    with pytest.raises(ARG_ERRORS, match="channels"):
        conv(t(1, 5, 6, 6, device=device))
    with pytest.raises(ARG_ERRORS, match="weight|dtype"):
        conv(t(1, 3, 6, 6, device=device, dtype=torch.float64))
    bn = PN.BatchNorm2d(4).to(device)
    with pytest.raises(ARG_ERRORS, match="running_mean|weight|shape"):
        bn(t(2, 3, 5, 5, device=device))


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA is not available on this machine")
def test_functional_device_mismatch(PF):
    with pytest.raises(ARG_ERRORS, match="weight"):
        PF.conv2d(t(1, 3, 5, 5, device="cuda"), t(2, 3, 3, 3))
    with pytest.raises(ARG_ERRORS, match="running_mean"):
        PF.batch_norm(t(3, 4, 5, 5, device="cuda"), torch.zeros(4), torch.ones(4, device="cuda"), training=True)
