"""The built package: it refuses a torch it was not built for, with a message
that says how to rebuild, and, once installed, imports from any directory."""
import importlib
import os
import subprocess
import sys

import pytest

import pycnn
from pycnn import _library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torch_mismatch_is_caught_with_rebuild_instructions(monkeypatch):
    info = importlib.import_module("pycnn._build_info")
    monkeypatch.setattr(info, "TORCH_VERSION", "1.0.0+other")
    with pytest.raises(ImportError, match=r"built against torch 1\.0\.0\+other.*pip install --no-build-isolation \."):
        _library.load_library()


def test_missing_build_is_reported_with_build_instructions(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycnn._build_info", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"not built.*pip install --no-build-isolation \."):
        _library.load_library()


def test_build_info_matches_the_running_torch():
    import torch

    assert importlib.import_module("pycnn._build_info").TORCH_VERSION == torch.__version__
    assert isinstance(pycnn.cuda_kernels_built(), bool)


def test_installed_package_imports_from_another_directory(tmp_path):
    # Outside the repository, `import pycnn` finds the installed copy (if any).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util as u; s = u.find_spec('pycnn'); print(s.origin if s else '')"
    origin = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    if not origin.stdout.strip():
        pytest.skip("pycnn is not installed (pip install --no-build-isolation .)")
    assert not origin.stdout.strip().startswith(ROOT + os.sep + "pycnn")
    program = (
        "import torch, pycnn, pycnn.functional as PF\n"
        "x = torch.randn(2, 3, 8, 8)\n"
        "torch.testing.assert_close(PF.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(x, 2))\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
