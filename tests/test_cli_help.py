"""Every command-line entry point answers ``--help``.

argparse %-formats help strings only when help is printed, so a stray ``%``
in an option's text (a percentage) crashes ``--help`` and nothing else: a bug
no other test would see.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MODULES = [
    "pycnn.train", "pycnn.check", "pycnn.data show",
    "pycnn.models list", "pycnn.models summary", "pycnn.models draw", "pycnn.models features",
    "pycnn.bench ops", "pycnn.bench models", "pycnn.bench overhead",
    "export.onnx", "export.torchscript", "export.program", "export.bench",
    "export.serve", "export.serve.loadtest",
]
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tools").iterdir()
                 if p.suffix == ".py" or p.name == "device_check")


def _help(argv):
    done = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
    return done.stdout


@pytest.mark.parametrize("command", MODULES)
def test_module_help(command):
    _help(["-m", *command.split()])


@pytest.mark.parametrize("script", SCRIPTS)
def test_tool_help(script):
    _help([script])


def test_train_help_lists_every_augmentation_preset():
    from pycnn.augment import PRESET_HELP
    text = " ".join(_help(["-m", "pycnn.train"]).split())
    for name in PRESET_HELP:
        assert f"{name}:" in text
    assert "10-100%" in text
