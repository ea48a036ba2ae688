"""torch.library.opcheck on every pycnn operator (schema, autograd registration,
fake tensor kernels, AOT dispatch with dynamic shapes), on cases of the
operators' shared samples (samples.OPCHECK)."""

import pytest
import torch

from samples import OPCHECK

PARAMS = [pytest.param(op, name, id=f"{op}-{name}") for op in OPCHECK for name in OPCHECK[op]]


def test_every_operator_is_covered(ops):
    schemas = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pycnn::")}
    assert schemas == set(OPCHECK), f"operators without an opcheck case: {schemas ^ set(OPCHECK)}"


@pytest.mark.parametrize("op_name,case", PARAMS)
def test_opcheck(ops, op_name, case, device):
    args = OPCHECK[op_name][case](device)
    op = getattr(ops, op_name).default
    torch.library.opcheck(op, args)
