"""What every example shares: importing pycnn, and comparing it with native PyTorch.

Each example imports this module first (``from _check import check``). It makes
``import pycnn`` find the checkout that examples/ belongs to when that checkout
has a built library (pycnn/_C*, which the build copies next to the sources),
and the installed pycnn otherwise; and it provides :func:`check`, which stops the example with exit status 1 when
pycnn's result disagrees with native PyTorch's, so that running an example is
a test.
"""
import glob
import os
import sys

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if glob.glob(os.path.join(_CHECKOUT, "pycnn", "_C*")):
    sys.path.insert(0, _CHECKOUT)
import pycnn  # noqa: E402,F401

import torch  # noqa: E402


def check(what, ours, native, atol=1e-6, rtol=1e-5):
    """Exit with status 1, saying what differs, unless `ours` equals `native`
    (tensors: same shape and allclose; anything else: ==)."""
    if isinstance(ours, torch.Tensor) or isinstance(native, torch.Tensor):
        ours, native = torch.as_tensor(ours), torch.as_tensor(native)
        same = ours.shape == native.shape and torch.allclose(
            ours.double(), native.double(), atol=atol, rtol=rtol)
    else:
        same = ours == native
    if not same:
        print(f"MISMATCH {what}:\n  pycnn:  {ours}\n  native: {native}", file=sys.stderr)
        sys.exit(1)
