"""Loads the compiled operator library, pycnn._C, and checks that it was built
for the torch that is running."""
import importlib

import torch

_REBUILD = "rebuild it against the installed torch from the repository root:  pip install --no-build-isolation ."


def _build_info():
    try:
        return importlib.import_module("pycnn._build_info")
    except ImportError:
        raise ImportError(f"pycnn's compiled operators are not built; {_REBUILD}") from None


def load_library():
    info = _build_info()
    if info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"pycnn was built against torch {info.TORCH_VERSION}, but torch {torch.__version__} is installed; "
            f"{_REBUILD}"
        )
    try:
        importlib.import_module("pycnn._C")
    except ImportError as error:
        raise ImportError(f"pycnn's compiled operators could not be loaded ({error}); {_REBUILD}") from error


def cuda_kernels_built() -> bool:
    """True when this build of pycnn contains the CUDA kernels."""
    return bool(_build_info().WITH_CUDA)
