"""Property-based tests: random shapes and arguments, pycnn vs native, forward and backward.

Where native PyTorch rejects a combination of arguments, pycnn must reject it
too (ValueError or RuntimeError); otherwise the results must match.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import compare_with_native, distinct_values

_THOROUGH = os.environ.get("PYCNN_HYPOTHESIS_PROFILE") == "thorough"


def examples(n):
    """n examples normally; the profile's (larger) number with the thorough profile."""
    return settings.default.max_examples if _THOROUGH else n


DTYPES = st.sampled_from([torch.float32, torch.float64])
SEEDS = st.integers(0, 2**31 - 1)
ERRORS = (ValueError, RuntimeError)


def pair(lo, hi):
    return st.tuples(st.integers(lo, hi), st.integers(lo, hi))


def int_or_pair(lo, hi):
    return st.one_of(st.integers(lo, hi), pair(lo, hi))


def _as_pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _native_or_error(native_fn, pycnn_fn, *args, **kwargs):
    """If native rejects the arguments, pycnn must too; returns True when valid."""
    try:
        native_fn(*args, **kwargs)
    except ERRORS:
        with pytest.raises(ERRORS):
            pycnn_fn(*args, **kwargs)
        return False
    return True


@st.composite
def conv_args(draw):
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 3))
    o = groups * draw(st.integers(1, 3))
    n = draw(st.integers(0, 3))
    h, w = draw(pair(1, 10))
    kh, kw = draw(pair(1, 4))
    stride = draw(int_or_pair(1, 3))
    dilation = draw(int_or_pair(1, 3))
    padding = draw(st.one_of(int_or_pair(0, 3), st.sampled_from(["same", "valid"])))
    if padding == "same":
        stride = 1
    bias = draw(st.booleans())
    unbatched = draw(st.booleans()) and n == 1
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed"]))
    return dict(n=n, c=c, o=o, h=h, w=w, kh=kh, kw=kw, groups=groups, stride=stride, dilation=dilation,
                padding=padding, bias=bias, unbatched=unbatched, layout=layout)


@settings(max_examples=examples(40), deadline=None)
@given(a=conv_args(), dtype=DTYPES, seed=SEEDS)
def test_conv2d_property(PF, device, a, dtype, seed):
    torch.manual_seed(seed)
    # Filter the combinations where the dilated kernel does not fit the padded input.
    if isinstance(a["padding"], str):
        pad = (0, 0)
    else:
        pad = _as_pair(a["padding"])
    dil = _as_pair(a["dilation"])
    if a["padding"] != "same":
        assume(a["h"] + 2 * pad[0] >= dil[0] * (a["kh"] - 1) + 1)
        assume(a["w"] + 2 * pad[1] >= dil[1] * (a["kw"] - 1) + 1)
    h, w = a["h"], a["w"]
    if a["layout"] == "transposed":
        h, w = w, h
    x = torch.randn(a["n"], a["c"], h, w, dtype=dtype, device=device)
    views = {}
    if a["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif a["layout"] == "transposed":
        views[0] = lambda t: t.transpose(-1, -2)
    if a["unbatched"]:
        x = x[0]
    weight = torch.randn(a["o"], a["c"] // a["groups"], a["kh"], a["kw"], dtype=dtype, device=device)
    bias = torch.randn(a["o"], dtype=dtype, device=device) if a["bias"] else None
    compare_with_native(
        PF.conv2d, F.conv2d, [x, weight, bias, a["stride"], a["padding"], a["dilation"], a["groups"]], views=views
    )


@st.composite
def pool_args(draw, with_dilation):
    n = draw(st.integers(0, 3))
    c = draw(st.integers(1, 4))
    h, w = draw(pair(1, 12))
    kernel = draw(int_or_pair(1, 4))
    kh, kw = _as_pair(kernel)
    stride = draw(st.one_of(st.none(), int_or_pair(1, 4)))
    padding = draw(st.one_of(st.integers(0, min(kh, kw) // 2), st.tuples(st.integers(0, kh // 2), st.integers(0, kw // 2))))
    dilation = draw(int_or_pair(1, 3)) if with_dilation else 1
    ceil_mode = draw(st.booleans())
    unbatched = draw(st.booleans()) and n == 1
    layout = draw(st.sampled_from(["contiguous", "channels_last", "sliced"]))
    return dict(n=n, c=c, h=h, w=w, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                ceil_mode=ceil_mode, unbatched=unbatched, layout=layout)


def _pool_input(a, dtype, device, distinct):
    shape = (a["n"], a["c"], a["h"], a["w"])
    if a["layout"] == "sliced":
        shape = (a["n"], 2 * a["c"], a["h"], a["w"])
    x = distinct_values(shape, dtype, device) if distinct else torch.randn(shape, dtype=dtype, device=device)
    views = {}
    if a["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif a["layout"] == "sliced":
        views[0] = lambda t: t[:, ::2] if t.dim() == 4 else t[::2]
    if a["unbatched"]:
        x = x[0]
    return x, views


@settings(max_examples=examples(40), deadline=None)
@given(a=pool_args(with_dilation=True), dtype=DTYPES, seed=SEEDS, return_indices=st.booleans())
def test_max_pool2d_property(PF, device, a, dtype, seed, return_indices):
    torch.manual_seed(seed)
    x, views = _pool_input(a, dtype, device, distinct=True)
    kw = dict(kernel_size=a["kernel"], stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
              ceil_mode=a["ceil_mode"], return_indices=return_indices)
    xv = views[0](x) if views else x
    assume(_native_or_error(F.max_pool2d, PF.max_pool2d, xv, **kw))
    compare_with_native(PF.max_pool2d, F.max_pool2d, [x], kw, views=views, kind="pool", exact_forward=True)


@settings(max_examples=examples(40), deadline=None)
@given(
    a=pool_args(with_dilation=False),
    dtype=DTYPES,
    seed=SEEDS,
    count_include_pad=st.booleans(),
    divisor_override=st.one_of(st.none(), st.integers(1, 10)),
)
def test_avg_pool2d_property(PF, device, a, dtype, seed, count_include_pad, divisor_override):
    torch.manual_seed(seed)
    x, views = _pool_input(a, dtype, device, distinct=False)
    kw = dict(kernel_size=a["kernel"], stride=a["stride"], padding=a["padding"], ceil_mode=a["ceil_mode"],
              count_include_pad=count_include_pad, divisor_override=divisor_override)
    xv = views[0](x) if views else x
    assume(_native_or_error(F.avg_pool2d, PF.avg_pool2d, xv, **kw))
    compare_with_native(PF.avg_pool2d, F.avg_pool2d, [x], kw, views=views, kind="pool")


@settings(max_examples=examples(30), deadline=None)
@given(
    n=st.integers(0, 3),
    c=st.integers(1, 4),
    hw=pair(1, 12),
    out=st.one_of(st.integers(1, 8), st.tuples(st.one_of(st.none(), st.integers(1, 8)), st.one_of(st.none(), st.integers(1, 8)))),
    dtype=DTYPES,
    seed=SEEDS,
    layout=st.sampled_from(["contiguous", "channels_last", "transposed"]),
)
def test_adaptive_avg_pool2d_property(PF, device, n, c, hw, out, dtype, seed, layout):
    torch.manual_seed(seed)
    x = torch.randn(n, c, *hw, dtype=dtype, device=device)
    views = {}
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        views[0] = lambda t: t.transpose(-1, -2)
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x, out], views=views, kind="pool")


@settings(max_examples=examples(40), deadline=None)
@given(
    rank=st.integers(2, 4),
    n=st.integers(1, 4),
    c=st.integers(1, 5),
    spatial=st.lists(st.integers(1, 5), min_size=2, max_size=2),
    training=st.booleans(),
    stats=st.booleans(),
    affine=st.sampled_from(["both", "weight", "bias", "none"]),
    momentum=st.floats(0.0, 1.0),
    eps=st.floats(1e-5, 1e-1),
    dtype=DTYPES,
    seed=SEEDS,
    steps=st.integers(1, 3),
)
def test_batch_norm_property(PF, device, rank, n, c, spatial, training, stats, affine, momentum, eps, dtype, seed, steps):
    torch.manual_seed(seed)
    if not training:
        stats = True  # native F.batch_norm requires running statistics in eval mode
    shape = (n, c, *spatial[: rank - 2])
    values_per_channel = n
    for s in spatial[: rank - 2]:
        values_per_channel *= s
    rm = torch.randn(c, dtype=dtype, device=device) if stats else None
    rv = (torch.rand(c, dtype=dtype, device=device) + 0.5) if stats else None
    w = torch.randn(c, dtype=dtype, device=device) if affine in ("both", "weight") else None
    b = torch.randn(c, dtype=dtype, device=device) if affine in ("both", "bias") else None
    if training and values_per_channel == 1:
        x = torch.randn(shape, dtype=dtype, device=device)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            PF.batch_norm(x, rm, rv, w, b, training, momentum, eps)
        return
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-9)
    for _ in range(steps):
        x = torch.randn(shape, dtype=dtype, device=device) * 2 + 1
        cmp = compare_with_native(
            PF.batch_norm, F.batch_norm, [x, rm, rv, w, b, training, momentum, eps], grad=[0, 3, 4], kind="norm"
        )
        if stats:
            # compare_with_native updates copies of the statistics: compare them,
            # then start the next step from pycnn's
            torch.testing.assert_close(cmp.pycnn_args[1], cmp.native_args[1], **tol)
            torch.testing.assert_close(cmp.pycnn_args[2], cmp.native_args[2], **tol)
            rm, rv = cmp.pycnn_args[1], cmp.pycnn_args[2]
