"""A wrong call fails at trace time as it fails in eager.

The fake kernels (pycnn/_ops.py) check their arguments as the real kernels
do: under FakeTensorMode -- what torch.compile and torch.export trace with --
every bad call of samples.ERRORS raises the eager RuntimeError, word for word.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map_only

from samples import ERRORS

CASES = [pytest.param(op, case, id=f"{op}-{case}") for op in ERRORS for case in ERRORS[op]]


def test_every_operator_has_bad_calls(ops):
    names = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pycnn::")}
    assert names == set(ERRORS), f"operators without bad calls: {names ^ set(ERRORS)}"


def _fake_error(op, args):
    mode = FakeTensorMode()
    fake_args = tree_map_only(torch.Tensor, mode.from_tensor, args)
    with pytest.raises(Exception) as fake:
        with mode:
            op(*fake_args)
    return fake.value


@pytest.mark.parametrize("op_name,case", CASES)
def test_fake_kernel_raises_the_eager_error(ops, op_name, case, device):
    make, message = ERRORS[op_name][case]
    op = getattr(ops, op_name).default
    args = make(device)
    with pytest.raises(RuntimeError, match=message) as eager:
        op(*args)
    fake = _fake_error(op, args)
    assert type(fake) is type(eager.value), f"fake raised {type(fake).__name__}: {fake}"
    assert str(fake) == str(eager.value)


# Whatever the dtype, the fake names it as C++ does (ScalarType names: UInt16, Float8_e4m3fn, ...).
OTHER_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                torch.uint64, torch.complex64, torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("dtype", OTHER_DTYPES, ids=str)
def test_fake_kernel_names_every_dtype_as_eager(ops, dtype):
    x = torch.zeros(1, 2, 5, 5, dtype=dtype)
    op = ops.adaptive_avg_pool2d.default
    with pytest.raises(RuntimeError, match="input must be float32, float64, float16 or bfloat16") as eager:
        op(x, [2, 2])
    assert str(_fake_error(op, (x, [2, 2]))) == str(eager.value)


FORWARD = ["corr2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm"]


@pytest.mark.parametrize("op_name", FORWARD)
def test_export_fails_with_the_eager_error(ops, op_name):
    # The first bad call of each forward operator, traced by torch.export.
    make, message = next(iter(ERRORS[op_name].values()))
    args = make("cpu")
    op = getattr(ops, op_name).default
    with pytest.raises(RuntimeError) as eager:
        op(*args)
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    class Call(torch.nn.Module):
        def forward(self, *tensors):
            call = list(args)
            for i, t in zip(positions, tensors):
                call[i] = t
            return op(*call)

    with pytest.raises(Exception) as traced:
        torch.export.export(Call(), tuple(args[i] for i in positions))
    assert str(eager.value) in str(traced.value)
