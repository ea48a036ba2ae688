"""The benchmark commands run and print their tables (no timing is asserted: these
machines are shared and noisy; the figures are read from BENCHMARKS.md's runs)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*argv):
    result = subprocess.run([sys.executable, "-m", "pycnn.bench", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    return result.returncode, result.stdout, result.stderr


def rows(stdout, first_cell):
    return [line for line in stdout.splitlines() if line.startswith(f"| {first_cell} ")]


def test_models_table_at_another_input_size():
    code, out, err = bench("models", "--models", "resnet18,densenet", "--batch", "2", "--repeats", "1",
                           "--resize", "32")
    assert code == 0, err
    for name in ("resnet18", "densenet"):
        (row,) = rows(out, name)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "1x32x32" and cells[2] == "2"
        assert float(cells[3]) > 0 and float(cells[4]) > 0  # pycnn and native ms


def test_models_bad_arguments_say_what_is_wrong():
    code, _, err = bench("models", "--models", "lenet,nope")
    assert code != 0 and "unknown model(s) nope" in err
    code, _, err = bench("models", "--models", "lenet", "--resize", "0")
    assert code != 0 and "--resize must be positive" in err
    code, _, err = bench("models", "--models", "lenet_bn", "--resize", "32")  # its Linear layer expects 28x28
    assert code != 0 and "lenet_bn cannot take 32x32 inputs" in err and "Traceback" not in err


def test_ops_table_and_geometric_means():
    code, out, err = bench("ops", "--only", "pooling", "--batch", "1", "--repeats", "1")
    assert code == 0, err
    assert len(rows(out, "pooling")) >= 5
    assert re.search(r"\| pooling \| [0-9.]+ \|", out)  # the geometric-mean summary row


def test_ops_table_in_channels_last():
    code, out, err = bench("ops", "--only", "batch_norm", "--batch", "2", "--repeats", "1", "--channels-last")
    assert code == 0, err
    assert "channels_last" in out.splitlines()[0]
    assert len(rows(out, "batch_norm")) >= 5
