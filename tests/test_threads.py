"""The CPU kernels give the same results with several intra-op threads as with one.

The rest of the suite runs single-threaded (see conftest.py); here larger inputs
(enough work to be split across threads) are computed with 1 and with 4
threads and compared with each other and with native PyTorch.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_scaled, distinct_values


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(fn, nthreads):
    torch.set_num_threads(nthreads)
    out = fn()
    return [t.detach().clone() for t in (out if isinstance(out, (tuple, list)) else [out])]


CASES = {
    "conv2d": lambda PF, x, xd: PF.conv2d(x, torch.ones(8, 4, 3, 3, dtype=x.dtype) / 9, torch.ones(8), 1, 1, 1, 2),
    "max_pool2d": lambda PF, x, xd: PF.max_pool2d(xd, 3, 2, 1, return_indices=True),
    "avg_pool2d": lambda PF, x, xd: PF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    "adaptive_avg_pool2d": lambda PF, x, xd: PF.adaptive_avg_pool2d(x, (5, 7)),
    "batch_norm": lambda PF, x, xd: PF.batch_norm(x, torch.zeros(8), torch.ones(8), training=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_multithreaded_matches_single_threaded(PF, name, threads):
    x = torch.randn(8, 8, 24, 24).requires_grad_()
    xd = distinct_values((8, 8, 24, 24), torch.float32).requires_grad_()
    go = None

    def fwd_bwd():
        nonlocal go
        out = CASES[name](PF, x, xd)
        y = out[0] if isinstance(out, tuple) else out
        if go is None:
            go = torch.randn_like(y)
        leaf = xd if name == "max_pool2d" else x
        (g,) = torch.autograd.grad(y, leaf, go)
        return (*((out,) if not isinstance(out, tuple) else out), g)

    one = _run(fwd_bwd, 1)
    many = _run(fwd_bwd, 4)
    ref = _run(lambda: (*_flat(CASES[name](F, x, xd)), torch.autograd.grad(_first(CASES[name](F, x, xd)),
                                                                          xd if name == "max_pool2d" else x, go)[0]), 1)
    for a, b, r in zip(one, many, ref):
        if a.is_floating_point():
            assert_close_scaled(b, a, torch.float32, "pool" if "pool" in name else "conv")
            assert_close_scaled(a, r, torch.float32, "pool" if "pool" in name else "conv")
        else:
            assert torch.equal(a, b) and torch.equal(a, r)


def _flat(out):
    return out if isinstance(out, tuple) else (out,)


def _first(out):
    return out[0] if isinstance(out, tuple) else out
