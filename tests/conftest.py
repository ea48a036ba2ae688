"""Shared fixtures and helpers for the pycnn test suite.

Every operator is checked against native PyTorch (torch.nn.functional): the
forward outputs and the gradients of every differentiable input are compared
on identical leaf copies of the same data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any, Callable, Iterable, Sequence

import pytest
import torch

# Make `import pycnn` work from the repository root without installation.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "pycnn",
        deadline=None,
        max_examples=30,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    # A longer, randomised search for bugs: PYCNN_HYPOTHESIS_PROFILE=thorough
    settings.register_profile("thorough", parent=settings.get_profile("pycnn"), max_examples=400, derandomize=False)
    settings.load_profile(os.environ.get("PYCNN_HYPOTHESIS_PROFILE", "pycnn"))
except ImportError:  # pragma: no cover - hypothesis is a test requirement
    pass

# One intra-op thread by default: the tests run many tiny operators, for which
# OpenMP start-up and contention (e.g. on a busy 2-core machine) dominate. The
# multi-threaded code paths are exercised by test_threads.py. Override with
# PYCNN_TEST_THREADS=<n>.
torch.set_num_threads(int(os.environ.get("PYCNN_TEST_THREADS", "1")))

HAS_CUDA = torch.cuda.is_available()
CUDA_SKIP = pytest.mark.skipif(not HAS_CUDA, reason="CUDA is not available on this machine")

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA_SKIP)]
FLOAT_DTYPES = [torch.float32, torch.float64]
HALF_DTYPES = [torch.float16, torch.bfloat16]
ALL_DTYPES = FLOAT_DTYPES + HALF_DTYPES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    if HAS_CUDA:
        torch.cuda.manual_seed_all(0)
    yield


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@pytest.fixture(params=FLOAT_DTYPES, ids=_dtype_id)
def dtype(request) -> torch.dtype:
    """float32 / float64: supported on every device."""
    return request.param


@pytest.fixture(params=ALL_DTYPES, ids=_dtype_id)
def any_dtype(request, device) -> torch.dtype:
    """float32, float64, float16 and bfloat16, on every device."""
    return request.param


@pytest.fixture(scope="session")
def pycnn_mod():
    import pycnn  # noqa: F401  (loads the extension and registers the ops)

    return pycnn


@pytest.fixture(scope="session")
def PF(pycnn_mod):
    """pycnn.functional"""
    import pycnn.functional

    return pycnn.functional


@pytest.fixture(scope="session")
def PN(pycnn_mod):
    """pycnn.nn"""
    import pycnn.nn

    return pycnn.nn


@pytest.fixture(scope="session")
def ops(pycnn_mod):
    """torch.ops.pycnn, after the extension is loaded."""
    return torch.ops.pycnn


# ---------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------

# (rtol, atol) per dtype and kind of operator. atol is scaled by the magnitude
# of the reference (see `assert_close_scaled`).
_TOLERANCES = {
    "conv": {
        torch.float64: (1e-7, 1e-9),
        torch.float32: (1e-4, 1e-5),
        torch.float16: (1e-2, 1e-2),
        torch.bfloat16: (5e-2, 5e-2),
    },
    "pool": {
        torch.float64: (1e-10, 1e-12),
        torch.float32: (1e-5, 1e-6),
        torch.float16: (1e-2, 1e-3),
        torch.bfloat16: (2e-2, 1e-2),
    },
    "norm": {
        torch.float64: (1e-7, 1e-9),
        torch.float32: (1e-4, 1e-5),
        torch.float16: (2e-2, 2e-2),
        torch.bfloat16: (5e-2, 5e-2),
    },
}


def tolerances(dtype: torch.dtype, kind: str = "conv") -> tuple[float, float]:
    return _TOLERANCES[kind][dtype]


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype native PyTorch computes the reference in."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def assert_close_scaled(actual, expected, dtype, kind="conv", msg=""):
    """assert_close with an absolute tolerance relative to the reference's scale."""
    rtol, atol = tolerances(dtype, kind)
    expected = expected.detach()
    actual = actual.detach().to(expected.dtype)
    scale = 1.0
    if expected.numel() > 0:
        finite = expected[torch.isfinite(expected)]
        if finite.numel() > 0:
            scale = max(1.0, float(finite.abs().max()))
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol * scale, equal_nan=True, msg=lambda m: f"{msg}\n{m}" if msg else m
    )


# ---------------------------------------------------------------------------
# pycnn vs native comparison
# ---------------------------------------------------------------------------


def _flatten(out) -> list:
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def _copy(t: torch.Tensor, dtype: torch.dtype | None, requires_grad: bool) -> torch.Tensor:
    c = t.detach().clone()  # preserve_format: keeps channels_last and other dense strides
    if dtype is not None and c.is_floating_point() and c.dtype != dtype:
        c = c.to(dtype)
    if requires_grad:
        c.requires_grad_(True)
    return c


class Comparison:
    """What `compare_with_native` computed, for further checks by the test."""

    def __init__(self, pycnn_args, native_args, pycnn_out, native_out, pycnn_grads, native_grads):
        self.pycnn_args = pycnn_args
        self.native_args = native_args
        self.pycnn_out = pycnn_out
        self.native_out = native_out
        self.pycnn_grads = pycnn_grads
        self.native_grads = native_grads


def compare_with_native(
    pycnn_fn: Callable,
    native_fn: Callable,
    args: Sequence[Any],
    kwargs: dict | None = None,
    *,
    kind: str = "conv",
    grad: bool | Iterable[int] = True,
    views: dict[int, Callable] | None = None,
    exact_forward: bool = False,
    check_backward: bool = True,
) -> Comparison:
    """Run pycnn_fn and native_fn on identical leaf copies of `args` and compare.

    * args: positional arguments; tensors are copied (one leaf per side).
      float16/bfloat16 tensors are upcast to float32 on the native side.
    * grad: True → every floating tensor argument requires grad; an iterable
      of indices → only those; False → none.
    * views: index → function applied to the leaf before the call (e.g. a
      transposed or sliced view), so the operator sees a non-contiguous input
      while the gradient is taken w.r.t. the leaf.
    * The forward outputs (a tensor or a tuple) are compared; integer outputs
      with torch.equal. Then a random grad_output (the same on both sides) is
      back-propagated and the gradient of every leaf that requires grad is
      compared, including its shape.
    """
    kwargs = kwargs or {}
    views = views or {}
    tensor_idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    if grad is True:
        grad_idx = {i for i in tensor_idx if args[i].is_floating_point()}
    elif grad is False:
        grad_idx = set()
    else:
        grad_idx = {i for i in grad if isinstance(args[i], torch.Tensor)}

    low_dtype = None
    for i in tensor_idx:
        if args[i].is_floating_point():
            low_dtype = args[i].dtype
            break
    work_dtype = low_dtype or torch.float32
    ref_dtype = reference_dtype(work_dtype)

    def make(side_dtype):
        leaves = []
        call = []
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                leaf = _copy(a, side_dtype, i in grad_idx)
                leaves.append(leaf)
                call.append(views[i](leaf) if i in views else leaf)
            else:
                leaves.append(a)
                call.append(a)
        return leaves, call

    p_leaves, p_call = make(None)
    n_leaves, n_call = make(ref_dtype if ref_dtype != work_dtype else None)

    p_out = pycnn_fn(*p_call, **kwargs)
    n_out = native_fn(*n_call, **kwargs)

    p_list, n_list = _flatten(p_out), _flatten(n_out)
    assert len(p_list) == len(n_list), f"pycnn returned {len(p_list)} outputs, native {len(n_list)}"
    for k, (po, no) in enumerate(zip(p_list, n_list)):
        assert isinstance(po, torch.Tensor), f"output {k} is {type(po)}, expected a tensor"
        assert po.shape == no.shape, f"output {k}: shape {tuple(po.shape)} != native {tuple(no.shape)}"
        assert po.device == no.device, f"output {k}: device {po.device} != native {no.device}"
        if no.is_floating_point():
            assert po.dtype == work_dtype, f"output {k}: dtype {po.dtype} != input dtype {work_dtype}"
            if exact_forward and ref_dtype == work_dtype:
                torch.testing.assert_close(po.detach(), no.detach(), rtol=0, atol=0, equal_nan=True)
            else:
                assert_close_scaled(po, no, work_dtype, kind, msg=f"forward output {k}")
        else:
            assert po.dtype == no.dtype, f"output {k}: dtype {po.dtype} != native {no.dtype}"
            assert torch.equal(po, no), f"output {k} (integer) differs from native:\n{po}\n{no}"

    p_grads, n_grads = {}, {}
    if check_backward and grad_idx:
        p_outs = [o for o in p_list if o.is_floating_point() and o.requires_grad]
        n_outs = [o for o in n_list if o.is_floating_point() and o.requires_grad]
        assert len(p_outs) == len(n_outs), "pycnn outputs that require grad differ from native"
        if n_outs:
            gos = [torch.randn(o.shape, dtype=work_dtype, device=o.device) for o in p_outs]
            p_inputs = [p_leaves[i] for i in sorted(grad_idx)]
            n_inputs = [n_leaves[i] for i in sorted(grad_idx)]
            pg = torch.autograd.grad(p_outs, p_inputs, gos, allow_unused=True)
            ng = torch.autograd.grad(n_outs, n_inputs, [g.to(ref_dtype) for g in gos], allow_unused=True)
            for i, a, b, leaf in zip(sorted(grad_idx), pg, ng, p_inputs):
                if b is None:
                    b = torch.zeros_like(n_leaves[i])
                assert a is not None, f"pycnn gave no gradient for argument {i}"
                assert a.shape == leaf.shape, f"grad of argument {i}: shape {tuple(a.shape)} != {tuple(leaf.shape)}"
                assert a.dtype == leaf.dtype, f"grad of argument {i}: dtype {a.dtype} != {leaf.dtype}"
                assert_close_scaled(a, b, work_dtype, kind, msg=f"gradient of argument {i}")
                p_grads[i], n_grads[i] = a, b
    return Comparison(p_leaves, n_leaves, p_out, n_out, p_grads, n_grads)


# Non-contiguous views of 4-D inputs: name -> (view, shape of the base tensor).
NONCONTIG_VIEWS = {
    "transposed_hw": (lambda t: t.transpose(2, 3), (2, 3, 8, 7)),
    "sliced_hw": (lambda t: t[:, :, 1:-1:2, ::2], (2, 3, 13, 12)),
    "sliced_channels": (lambda t: t[:, 1::2], (2, 6, 7, 7)),
    "permuted_batch": (lambda t: t.permute(1, 0, 2, 3), (3, 2, 6, 7)),
}


def distinct_values(shape, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """A tensor whose every (H, W) plane holds distinct values (no max-pool ties).

    Values are integers in [-(H*W)/2, (H*W)/2) scaled by 1/4, exactly representable
    in every float dtype for planes of up to 256 elements.
    """
    *lead, h, w = shape
    planes = 1
    for s in lead:
        planes *= s
    if planes == 0 or h * w == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    perm = torch.argsort(torch.rand(planes, h * w), dim=1).to(torch.float64)
    vals = (perm - (h * w) // 2) / 4.0
    return vals.reshape(shape).to(dtype=dtype, device=device)


GRAD_OUTPUT_LAYOUTS = {
    # y.sum(): autograd passes an expanded (stride-0) grad_output
    "expanded": lambda y, g: y.sum() * 0.5,
    # a transposed (non-contiguous) grad_output: TransposeBackward of a contiguous gradient
    "transposed": lambda y, g: (y.transpose(-1, -2) * g.transpose(-1, -2).contiguous()).sum(),
    # a permuted (batch-last) grad_output
    "permuted": lambda y, g: (y.movedim(0, -1) * g.movedim(0, -1).contiguous()).sum(),
    # channels_last grad_output
    "channels_last": lambda y, g: (y * g.contiguous(memory_format=torch.channels_last)).sum()
    if y.dim() == 4
    else (y * g).sum(),
}


def check_grad_output_layouts(pycnn_fn, native_fn, inputs, kind="conv"):
    """Backward with grad_outputs of unusual layouts (as autograd produces them)
    gives the same gradients as native."""
    for name, loss in GRAD_OUTPUT_LAYOUTS.items():
        p_in = [t.detach().clone().requires_grad_() for t in inputs]
        n_in = [t.detach().clone().requires_grad_() for t in inputs]
        yp, yn = pycnn_fn(*p_in), native_fn(*n_in)
        yp = yp[0] if isinstance(yp, tuple) else yp
        yn = yn[0] if isinstance(yn, tuple) else yn
        g = torch.randn_like(yn)
        gp = torch.autograd.grad(loss(yp, g), p_in)
        gn = torch.autograd.grad(loss(yn, g), n_in)
        for a, b in zip(gp, gn):
            assert_close_scaled(a, b, inputs[0].dtype, kind, msg=f"grad_output layout {name}")


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory):
    """CMakeLists.txt built once per session (tools/cmake_build.py): the folder
    holding libpycnn_ops.so and pycnn_infer."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build_dir = tmp_path_factory.mktemp("cmake")
    result = subprocess.run(
        [sys.executable, os.path.join(_ROOT, "tools", "cmake_build.py"), str(build_dir)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return str(build_dir)
