"""The C++ and CUDA sources are a fixed point of .clang-format (clang-format
23.1.5, the version .clang-format names; pinned in the test extra)."""
import re
import shutil
import subprocess

import pytest

from test_build import ROOT  # noqa: E402


def test_sources_are_formatted():
    binary = shutil.which("clang-format")
    if binary is None:
        pytest.skip("clang-format is not installed (pip install clang-format==23.1.5)")
    wanted = re.search(r"clang-format (\d+\.\d+\.\d+)", open(f"{ROOT}/.clang-format").read()).group(1)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    if wanted not in version:
        pytest.skip(f".clang-format is for clang-format {wanted}; this one is {version.strip()}")
    files = subprocess.run(["git", "ls-files", "csrc", "export/cpp"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    files = [f for f in files if f.endswith((".h", ".cpp", ".cu", ".cuh"))]
    assert files
    result = subprocess.run([binary, "--dry-run", "-Werror", *files], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, "not formatted; run clang-format -i on:\n" + result.stderr[-3000:]
