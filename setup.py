"""Builds pycnn's compiled operators, ``pycnn._C``, against the installed torch.

C++ kernels (csrc/cpu) are always built; CUDA kernels (csrc/cuda) as well when
the installed torch is a CUDA build and nvcc is found. The extension is
compiled against the torch that will run it: `pip install .` goes through
pycnn's build backend (_build_backend/pycnn_backend.py), which finds the torch
installed in the target environment even in an isolated build, and
`pip install --no-build-isolation .` uses it directly.

Environment: MAX_JOBS (parallel compile jobs), TORCH_CUDA_ARCH_LIST (GPU
architectures; default here "9.0+PTX" when no GPU is visible),
PYCNN_BUILD_CUDA=0 to skip the CUDA kernels.
"""
import glob
import os
import sys

from setuptools import setup

# torch derives CUDA_HOME from the nvcc on PATH; a wrapper script such as
# /usr/local/bin/nvcc would make it /usr/local, where the CUDA headers are not.
# Without an explicit CUDA_HOME, prefer the toolkit's standard location.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "pycnn builds against the installed torch, and none was found in this build environment.\n"
        "Install torch first (pip install torch==2.13.0, or any torch >= 2.6), then: pip install ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "pycnn"


def cuda_decision():
    """Whether to build the CUDA kernels, and why (printed in the build output)."""
    if os.environ.get("PYCNN_BUILD_CUDA", "1") == "0":
        return False, "PYCNN_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None:
        return False, f"torch {torch.__version__} is a CUDA build but nvcc was not found (set CUDA_HOME)"
    return True, f"torch {torch.__version__} is a CUDA {torch.version.cuda} build and nvcc is in {CUDA_HOME}"


def write_build_info(with_cuda):
    """pycnn/_build_info.py records the torch this build is for; pycnn checks it at import."""
    path = os.path.join(ROOT, PACKAGE, "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time; do not edit.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"WITH_CUDA = {with_cuda!r}\n")
        f.write(f"CUDA_VERSION = {torch.version.cuda if with_cuda else None!r}\n")


class BuildExtensionInTree(BuildExtension):
    """Also places the built library next to the sources in pycnn/, so that
    `import pycnn` works from the repository root (where ./pycnn shadows the
    installed copy) as well as from any other directory."""

    def run(self):
        super().run()
        if self.inplace:
            return
        for ext in self.extensions:
            built = self.get_ext_fullpath(ext.name)
            self.copy_file(built, os.path.join(ROOT, PACKAGE, os.path.basename(built)))


def pip_cuda_include_dirs():
    """Headers of the CUDA libraries (cuBLAS, cuSPARSE, ...) that the PyPI CUDA
    build of torch installs as nvidia-* packages; ATen's CUDA headers include
    them, and a bare nvcc install may not have them."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted({d for base in nvidia.__path__ for d in glob.glob(os.path.join(base, "*", "include"))})


def make_extension():
    with_cuda, reason = cuda_decision()
    print(f"pycnn: building {'C++ and CUDA' if with_cuda else 'C++ only'} kernels: {reason}", flush=True)
    write_build_info(with_cuda)

    python_sources = ["csrc/python_module.cpp", "csrc/first_order_autograd.cpp", "csrc/eager_entry.cpp"]
    sources = ["csrc/pycnn.cpp", *python_sources] + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-fopenmp"]
    extra_compile_args = {"cxx": cxx_flags}
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0+PTX"
        print(f"pycnn: CUDA architectures: {os.environ.get('TORCH_CUDA_ARCH_LIST', 'those of the visible GPUs')}")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        include_dirs += pip_cuda_include_dirs()
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        extension = CUDAExtension
    else:
        extension = CppExtension
    return extension(
        name=f"{PACKAGE}._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtensionInTree},
)
