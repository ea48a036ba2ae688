"""tools/device_check, the one-command GPU check: its dry run exercises every
step on the CPU, so that the script is known to work before a GPU is lent."""
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "device_check")


def _module():
    loader = importlib.machinery.SourceFileLoader("device_check", SCRIPT)
    spec = importlib.util.spec_from_loader("device_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _run(*args, timeout=1500):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_budgets_fit_one_nine_minute_command():
    steps = _module().STEPS
    assert sum(step.budget for step in steps) <= 9 * 60
    assert len({step.name for step in steps}) == len(steps)


def test_dry_run_passes_every_step(tmp_path):
    result = _run("--dry-run", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["dry_run"] and report["passed"]
    assert [s["step"] for s in report["steps"]] == [s.name for s in _module().STEPS]
    assert all(s["status"] == "passed" for s in report["steps"]), [(s["step"], s["tail"]) for s in report["steps"]]
    summary = (tmp_path / "summary.md").read_text()
    assert "| bench_ops | passed |" in summary
    assert "| pooling |" in summary and "| lenet |" in summary  # the benchmark tables, ready to paste
    assert (tmp_path / "junit.xml").exists()
    assert "accuracy" in (tmp_path / "logs" / "cpp_runner.log").read_text()


def test_step_over_its_budget_is_stopped_and_reported(tmp_path):
    module = _module()
    step = module.Step("sleepy", 1, 1, lambda ctx: [[sys.executable, "-c", "import time; time.sleep(30)"]])
    ctx = module.Context(out=str(tmp_path), dry_run=True, data_dir=None, arch=None, device="cpu")
    record = module.run_step(step, ctx, str(tmp_path / "sleepy.log"))
    assert record["status"] == "timeout" and record["seconds"] < 10
    assert "ran past its budget" in record["tail"]


def test_unknown_step_is_refused(tmp_path):
    result = _run("--dry-run", "--out", str(tmp_path), "--only", "build,nope", timeout=60)
    assert result.returncode == 2 and "unknown step(s) nope" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_without_a_gpu_it_says_so(tmp_path):
    result = _run("--out", str(tmp_path), timeout=60)
    assert result.returncode == 2 and "no GPU is visible" in result.stderr
