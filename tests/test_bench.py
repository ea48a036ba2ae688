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
    code, out, err = bench("ops", "--only", "pooling", "--batch", "1", "--repeats", "1", "--tables", "shapes")
    assert code == 0, err
    assert len(rows(out, "pooling")) >= 5
    assert re.search(r"\| pooling \| 1 \| [0-9]+ \| [0-9.]+ \|", out)  # the geometric-mean summary row


def test_ops_table_in_channels_last():
    code, out, err = bench("ops", "--only", "batch_norm", "--batch", "2", "--repeats", "1", "--channels-last",
                           "--tables", "shapes")
    assert code == 0, err
    assert "channels_last" in out.splitlines()[0]
    assert len(rows(out, "batch_norm")) >= 5


def _cells(row):
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _section(stdout, heading):
    """The lines of the section whose heading starts with `heading`, up to the next heading."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def test_ops_batches_and_the_widened_convolutions():
    code, out, err = bench("ops", "--only", "corr2d", "--batches", "1,2", "--repeats", "1", "--tables", "shapes",
                           "--max-gmacs", "0.02")
    assert code == 0, err
    table = rows(out, "corr2d")
    measured = [r for r in table if _cells(r)[2].startswith("(")]
    for row in measured:
        cells = _cells(row)
        assert cells[3] in ("1", "2")
        assert float(cells[4]) > 0 and float(cells[5]) > 0 and 0 < float(cells[6]) < float("inf")
    names = {_cells(r)[1] for r in measured}
    (left_out,) = [line for line in out.splitlines() if line.startswith("Left out: ")]
    assert "at batch 2 (over --max-gmacs 0.02)" in left_out
    shown = list(names) + left_out.split("; ")
    for kind in ("grouped", "depthwise", "dilated"):
        assert any(kind in n for n in shown), kind
    for model in ("lenet", "alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet"):
        assert any(model + " " in n for n in shown), model  # shapes read off every model
    assert any("(+" in n for n in names)  # de-duplicated: a geometry met again is counted, not repeated
    assert len(names) > 40
    summary = [r for r in table if not _cells(r)[2].startswith("(")]
    assert [_cells(r)[1] for r in summary] == ["1", "2", "all"]
    for row in summary:
        cells = _cells(row)
        assert int(cells[2]) > 0 and float(cells[3]) > 0 and float(cells[5]) >= float(cells[3])


def test_ops_batch_norm_shapes_include_eval_and_leave_out_batch_one_training():
    code, out, err = bench("ops", "--only", "batch_norm", "--batch", "1", "--repeats", "1", "--tables", "shapes")
    assert code == 0, err
    names = [_cells(r)[1] for r in rows(out, "batch_norm") if _cells(r)[2].startswith("(")]
    assert any(n.endswith("eval") for n in names)
    assert "BN1d(120) at batch 1 (training batch-norm needs more than one value per channel)" in out


def test_ops_overhead_table_covers_every_family():
    code, out, err = bench("ops", "--tables", "overhead", "--quick")
    assert code == 0, err
    section = _section(out, "Per-call overhead")
    families = {_cells(r)[0] for r in section if r.startswith("| ") and not r.startswith("| family")
                and not r.startswith("|---")}
    assert families == {"corr2d", "pooling", "batch_norm"}
    for row in section:
        if row.startswith(("| corr2d", "| pooling", "| batch_norm")):
            cells = _cells(row)
            assert len(cells) == 8 and all(float(c) == float(c) for c in cells[2:])


def test_ops_scaling_table():
    code, out, err = bench("ops", "--tables", "scaling", "--quick", "--repeats", "1")
    assert code == 0, err
    section = _section(out, "Scaling")
    data = [_cells(r) for r in section if r.startswith(("| corr2d", "| pooling"))]
    assert {(c[0], c[2]) for c in data} == {(f, s) for f in ("corr2d", "pooling") for s in ("batch", "map")}
    for cells in data:
        assert len(cells) == 11 and float(cells[8]) > 0 and float(cells[9]) > 0 and float(cells[10]) > 0
    firsts = {}
    for cells in data:
        firsts.setdefault((cells[0], cells[2]), cells)
    assert all(c[5] == "1" and c[9] == "1.0" for c in firsts.values())  # relative to the first row
    assert [int(c[5]) for c in data if c[:3] == ["corr2d", "conv 3x3 p1 64→64", "batch"]] == [1, 8]


def test_ops_bad_options_say_what_is_wrong():
    code, _, err = bench("ops", "--batches", "1,x")
    assert code != 0 and "comma-separated positive integers" in err
    code, _, err = bench("ops", "--tables", "shapes,nope")
    assert code != 0 and "unknown table(s) nope" in err


def test_models_bench_has_a_default_batch_for_every_model():
    import pycnn.models
    from pycnn.bench.models import DEFAULT_BATCH

    for device, batches in DEFAULT_BATCH.items():
        assert set(batches) == set(pycnn.models.list_models()), device
