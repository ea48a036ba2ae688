"""Configures and builds CMakeLists.txt (libpycnn_ops.so, no Python) against the
LibTorch inside the installed torch package.

    python tools/cmake_build.py [BUILD_DIR] [--cuda] [-- extra cmake arguments]

A CUDA build of torch makes LibTorch's CMake config look for the CUDA
toolkit, even for a CPU-only library; this script points it at nvcc
(CUDA_HOME) and at the CUDA libraries that the pip packages installed.
"""
import argparse
import glob
import os
import subprocess
import sys

# As in setup.py: a wrapper /usr/local/bin/nvcc would make torch guess
# CUDA_HOME=/usr/local; prefer the toolkit's standard location.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_arguments():
    if torch.version.cuda is None:
        return []
    if CUDA_HOME is None:
        raise SystemExit("torch is a CUDA build, and LibTorch's CMake config needs the CUDA toolkit: set CUDA_HOME")
    arguments = [f"-DCUDA_TOOLKIT_ROOT_DIR={CUDA_HOME}", f"-DCMAKE_CUDA_COMPILER={os.path.join(CUDA_HOME, 'bin', 'nvcc')}"]
    try:
        import nvidia  # the CUDA libraries of the pip build of torch

        nvrtc = sorted(p for base in nvidia.__path__ for p in glob.glob(os.path.join(base, "*", "lib", "libnvrtc.so*")))
        if nvrtc:
            arguments.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    except ImportError:
        pass
    return arguments


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", nargs="?", default=os.path.join(ROOT, "build", "cmake"))
    parser.add_argument("--cuda", action="store_true", help="build the CUDA kernels too (PYCNN_WITH_CUDA=ON)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    parser.add_argument("extra", nargs="*", help="more cmake arguments (after --)")
    args = parser.parse_args(argv)
    configure = ["cmake", "-S", ROOT, "-B", args.build_dir, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                 f"-DPYCNN_WITH_CUDA={'ON' if args.cuda else 'OFF'}", *cuda_arguments(), *args.extra]
    env = dict(os.environ)
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # LibTorch's config probes for GPUs without it
    subprocess.run(configure, check=True, env=env)
    subprocess.run(["cmake", "--build", args.build_dir, "-j", str(args.jobs)], check=True, env=env)
    print(os.path.join(args.build_dir, "libpycnn_ops.so"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
