"""pycnn: hand-written C++ and CUDA kernels for CNN layers, as PyTorch operators.

Importing pycnn loads the compiled library, which registers the operators
``torch.ops.pycnn.*`` (corr2d, max_pool2d, avg_pool2d, adaptive_avg_pool2d,
batch_norm and their backwards), then registers their fake kernels and autocast
rules (pycnn/_ops.py), their derivatives (pycnn/_autograd.py) and their vmap
batching rules (pycnn/_vmap.py). Use them through :mod:`pycnn.functional` (a drop-in
for ``torch.nn.functional``) or :mod:`pycnn.nn` (drop-ins for ``torch.nn``).
"""
from pycnn._library import cuda_kernels_built, load_library

load_library()

from pycnn import _autograd, _ops, _vmap  # noqa: E402,F401  (registrations)
from pycnn import functional, nn  # noqa: E402
from pycnn.convert import ConversionError, convert  # noqa: E402  (pycnn.convert: the function)
from pycnn.fusion import FuseReport, fuse  # noqa: E402

__version__ = "0.1.0"
__all__ = ["functional", "nn", "convert", "ConversionError", "fuse", "FuseReport", "cuda_kernels_built", "__version__"]
