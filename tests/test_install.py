"""`pip install .` as users type it: from a fresh clone, with build isolation,
the extension is compiled against the torch already installed (no second
torch is fetched); without torch, the message says what to install first.
Slow (a build of the C++ kernels): marked so."""
import os
import shutil
import subprocess
import sys
import venv

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
                                 reason="needs git and a git checkout")]


def _fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", ROOT, str(clone)], check=True)
    return clone


def test_plain_pip_install_builds_against_the_installed_torch(tmp_path):
    clone, target = _fresh_clone(tmp_path), tmp_path / "target"
    env = dict(os.environ, PYCNN_BUILD_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-v", "--no-deps", "--progress-bar", "off",
                             "--target", str(target), str(clone)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Collecting torch" not in result.stdout  # no second torch in the build environment
    program = ("import torch, pycnn, pycnn._build_info as info, pycnn.functional as PF\n"
               "x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)\n"
               "torch.testing.assert_close(PF.conv2d(x, w), torch.nn.functional.conv2d(x, w))\n"
               "print(pycnn.__file__, info.TORCH_VERSION, sep='\\n')\n")
    env = dict(os.environ, PYTHONPATH=str(target))
    ran = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    origin, built_for = ran.stdout.split()
    assert origin.startswith(str(target))
    assert built_for == torch.__version__  # the wheel records the torch it was compiled against


def test_without_torch_the_message_says_what_to_install(tmp_path):
    clone = _fresh_clone(tmp_path)
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=True)
    python = str(bare / "bin" / "python")
    result = subprocess.run([python, "-m", "pip", "install", "--no-deps", str(clone)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "none is installed in this environment" in result.stdout + result.stderr
    assert "pip install torch==" in result.stdout + result.stderr


def test_editable_install_builds_in_place(tmp_path):
    # A new venv that sees this environment's packages (torch among them) through a .pth file.
    clone = _fresh_clone(tmp_path)
    env_dir = tmp_path / "editable"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    site_dir = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site_dir, "outer_environment.pth"), "w") as pth:
        pth.write(os.path.dirname(os.path.dirname(torch.__file__)) + "\n")
    env = dict(os.environ, PYCNN_BUILD_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    result = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--progress-bar", "off", "-e", str(clone)],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    ran = subprocess.run([python, "-c", "import pycnn, pycnn._build_info as info; print(pycnn.__file__, info.TORCH_VERSION)"],
                         cwd=clone, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    origin, built_for = ran.stdout.split()
    assert origin.startswith(str(clone)) and built_for == torch.__version__
