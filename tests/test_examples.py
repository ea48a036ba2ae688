"""Every script in examples/ runs (exit status 0: pycnn agreed with native in
the script itself) and prints the course's numbers. The numbers that depend on
a random start (the learning exercise, batch-norm's moving statistics) are
checked against properties and against native PyTorch recomputed here, not
against hard-coded results."""
import contextlib
import io
import os
import re
import runpy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

# name -> extra arguments. Each runs once, when a test first asks for its output:
# in this process (runpy, as `python examples/NAME.py ARGS` would run it, which
# saves starting torch ten times), and the first one also as a command from
# another directory, which checks how examples/_check.py finds pycnn.
RUNS = {
    "01_corr2d.py": [], "02_edge_detection.py": [], "03_learn_kernel.py": [], "04_padding_stride.py": [],
    "05_channels.py": [], "06_pooling.py": [], "07_batch_norm.py": [], "08_shape_walk.py": [],
    "08_shape_walk.py --size 96": ["--size", "96", "googlenet", "resnet18", "densenet"],
}
_results = {}


def _run_in_process(key):
    script = os.path.join(EXAMPLES, key.split()[0])
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_path, saved_threads = sys.argv, list(sys.path), torch.get_num_threads()
    sys.argv = [script, *RUNS[key]]
    sys.path.insert(0, EXAMPLES)
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        torch.set_num_threads(saved_threads)
    return code, stdout.getvalue(), stderr.getvalue()


def output(key) -> str:
    """The stdout of the example run `key`, after checking that it succeeded."""
    if key not in _results:
        _results[key] = _run_in_process(key)
    code, stdout, stderr = _results[key]
    assert code == 0, f"{key} failed ({code}):\n{stdout}\n{stderr}"
    return stdout


def numbers(text: str):
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?", text)]


def after(text: str, heading: str, until: str = None):
    """The numbers printed after the line that starts with `heading` (its own excluded), up to `until`."""
    start = text.index("\n", text.index(heading)) + 1
    end = text.index(until, start) if until else len(text)
    return numbers(text[start:end])


def test_every_example_is_run():
    scripts = sorted(n for n in os.listdir(EXAMPLES) if re.match(r"\d\d_.*\.py$", n))
    assert scripts == sorted({key.split()[0] for key in RUNS})
    assert len(scripts) == 8


def test_an_example_runs_as_a_command_from_another_directory(tmp_path):
    # No PYTHONPATH: examples/_check.py finds the checkout (or an installed pycnn) by itself.
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "01_corr2d.py")], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=""), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == output("01_corr2d.py")


def test_corr2d():
    out = output("01_corr2d.py")
    assert out.count("tensor([[19., 25.],\n        [37., 43.]])") == 5
    assert "all agree with native PyTorch" in out


def test_edge_detection():
    out = output("02_edge_detection.py")
    assert "columns of 1: [1]  columns of -1: [5]" in out
    edges = after(out, "Y = corr2d(X, K)", "columns of 1")
    assert edges == [0, 1, 0, 0, 0, -1, 0] * 6
    assert after(out, "corr2d(X.T, K)", "all agree") == [0] * 40


def _learn_natively():
    """Exercise 3 on torch.nn.Conv2d alone, from the same seed: the losses every 5 steps and the result."""
    torch.manual_seed(0)
    start = torch.rand(1, 1, 1, 2)
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    X = X.reshape(1, 1, 6, 8)
    Y = F.conv2d(X, torch.tensor([[[[1.0, -1.0]]]]))
    conv = torch.nn.Conv2d(1, 1, kernel_size=(1, 2))
    with torch.no_grad():
        conv.weight.copy_(start)
        conv.bias.zero_()
    losses = []
    for step in range(1, 21):
        conv.zero_grad()
        loss = ((conv(X) - Y) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            conv.weight -= 0.01 * conv.weight.grad
            conv.bias -= 0.01 * conv.bias.grad
        if step % 5 == 0:
            losses.append(loss.item())
    return losses, conv.weight.detach().reshape(2), conv.bias.item()


def test_learning_the_kernel_back():
    out = output("03_learn_kernel.py")
    steps = re.findall(r"step\s+(\d+), loss ([\d.e+-]+)", out)
    assert [int(s) for s, _ in steps] == [5, 10, 15, 20]
    losses = [float(v) for _, v in steps]
    # The loss falls strongly and steadily (measured with seed 0: 6.41, 1.64, 0.442, 0.122).
    assert all(a > 2 * b for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.5 and losses[-1] < losses[0] / 20
    weight = numbers(re.search(r"learnt:\s+weight \[([^\]]*)\]", out).group(1))
    bias = float(re.search(r"learnt:.*?bias (-?[\d.]+)", out).group(1))
    assert abs(weight[0] - 1) < 0.2 and abs(weight[1] + 1) < 0.2 and abs(bias) < 0.1
    # The same numbers as native PyTorch taking the same steps from the same start.
    native_losses, native_weight, native_bias = _learn_natively()
    assert losses == pytest.approx(native_losses, rel=1e-3)
    assert weight == pytest.approx(native_weight.tolist(), abs=1e-4)
    assert bias == pytest.approx(native_bias, abs=1e-4)
    assert "pycnn's gradients equal native's at every step" in out


def test_learning_gradients_equal_native_at_every_step():
    import pycnn.nn as pnn

    torch.manual_seed(0)
    X = torch.ones((1, 1, 6, 8))
    X[..., 2:6] = 0
    Y = F.conv2d(X, torch.tensor([[[[1.0, -1.0]]]]))
    ours = pnn.Conv2d(1, 1, kernel_size=(1, 2))
    native = torch.nn.Conv2d(1, 1, kernel_size=(1, 2))
    native.load_state_dict(ours.state_dict())
    for _ in range(20):
        for net in (ours, native):
            net.zero_grad()
            ((net(X) - Y) ** 2).sum().backward()
        torch.testing.assert_close(ours.weight.grad, native.weight.grad)
        torch.testing.assert_close(ours.bias.grad, native.bias.grad)
        with torch.no_grad():
            for net in (ours, native):
                for p in net.parameters():
                    p -= 0.01 * p.grad


def test_padding_and_stride():
    out = output("04_padding_stride.py")
    shapes = re.findall(r"output (\d+)x(\d+), formula (\d+)x(\d+)", out)
    assert [tuple(map(int, s)) for s in shapes] == [(8, 8, 8, 8), (8, 8, 8, 8), (4, 4, 4, 4), (2, 2, 2, 2)]


def test_channels():
    out = output("05_channels.py")
    assert after(out, "two input channels:", "weight of") == [56, 72, 104, 120]
    assert "weight of three output channels: (3, 2, 2, 2)" in out
    assert after(out, "three output channels:", "1x1") == [56, 72, 104, 120, 76, 100, 148, 172, 96, 128, 192, 224]
    difference = float(re.search(r"summed = ([\d.e+-]+)", out).group(1))
    assert difference < 1e-6


def test_pooling():
    out = output("06_pooling.py")
    assert after(out, "max pooling, 2x2 window", "avg pooling") == [4, 5, 7, 8]
    assert after(out, "avg pooling, 2x2 window", "X =") == [2, 3, 5, 6]
    assert after(out, "MaxPool2d(3):", "MaxPool2d(3, padding") == [10]
    assert after(out, "MaxPool2d(3, padding=1, stride=2):", "MaxPool2d((2, 4)") == [5, 7, 13, 15]
    assert after(out, "MaxPool2d((2, 4), padding=(1, 2), stride=(2, 3)):", "AvgPool2d") == [1, 3, 9, 11, 13, 15]
    X = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    for include in (True, False):
        heading = f"AvgPool2d(3, padding=1, stride=2, count_include_pad={include}):"
        printed = after(out, heading, "AvgPool2d" if include else "two channels")
        native = F.avg_pool2d(X, 3, stride=2, padding=1, count_include_pad=include)
        assert printed == pytest.approx(native.flatten().tolist(), abs=1e-4)
    assert after(out, "two channels", "4x4 input") == [5, 7, 13, 15, 6, 8, 14, 16]
    assert "4x4 input, window 3, stride 2, padding 0: output 1x1, with ceil_mode 2x2" in out
    assert "5x5 input, window 2, stride 2, padding 1: output 3x3, with ceil_mode 3x3 (not 4" in out


def test_batch_norm():
    out = output("07_batch_norm.py")
    training = re.findall(r"training mode, per channel: mean \[([^\]]*)\], std \[([^\]]*)\]", out)
    prediction = re.findall(r"prediction mode, per channel: mean \[([^\]]*)\], std \[([^\]]*)\]", out)
    assert [len(numbers(m)) for m, _ in training] == [3, 6]
    for mean, std in training:  # normalised with the batch's own statistics
        assert all(abs(v) < 1e-3 for v in numbers(mean))
        assert all(abs(v - 1) < 2e-3 for v in numbers(std))
    for mean, _ in prediction:  # with moving statistics that have moved 27% of the way after 3 batches
        assert all(v > 0.5 for v in numbers(mean))
    moving_mean = [numbers(m) for m in re.findall(r"moving mean after 3 batches:\s+\[([^\]]*)\]", out)]
    biased = [numbers(m) for m in re.findall(r"course's rule \(biased\):\s+\[([^\]]*)\]", out)]
    unbiased = [numbers(m) for m in re.findall(r"PyTorch's rule \(unbiased\):\s+\[([^\]]*)\]", out)]
    assert len(moving_mean) == len(biased) == len(unbiased) == 2
    for means in moving_mean:  # 0.1 * (0.81 + 0.9 + 1) * 3 = 0.813 expected, batches of mean 3
        assert all(0.4 < v < 1.2 for v in means)
    for b, u in zip(biased, unbiased):
        assert all(x < y for x, y in zip(b, u))
    assert "num_batches_tracked 3" in out


# The course's shapes (ARCHITECTURES.md), without the batch dimension.
COURSE_SHAPES = {
    "lenet": [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (400,)],
    "lenet_bn": [(6, 24, 24), (6, 12, 12), (16, 8, 8), (16, 4, 4), (256,)],
    "alexnet": [(96, 54, 54), (96, 26, 26), (256, 26, 26), (256, 12, 12), (384, 12, 12), (384, 12, 12),
                (256, 12, 12), (256, 5, 5), (6400,)],
    "vgg11": [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (512, 7, 7), (25088,)],
    "nin": [(96, 54, 54), (96, 26, 26), (256, 26, 26), (256, 12, 12), (384, 12, 12), (384, 5, 5)],
    "resnet18": [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)],
}
COURSE_SHAPES_96 = {
    "googlenet": [(64, 24, 24), (192, 12, 12), (480, 6, 6), (832, 3, 3), (1024,)],
    "resnet18": [(64, 24, 24), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3)],
    "densenet": [(64, 24, 24), (192, 24, 24), (96, 12, 12), (224, 12, 12), (112, 6, 6), (240, 6, 6),
                 (120, 3, 3), (248, 3, 3)],
}


def _walks(out):
    walks = {}
    for block in re.split(r"\n(?=\w+: X = )", out.strip()):
        name = block.split(":", 1)[0]
        shapes = [tuple(int(v) for v in s.split(",") if v.strip())[1:]
                  for s in re.findall(r"output shape: \(([^)]*)\)", block)]
        params = re.search(r"parameters: ([\d,]+)", block)
        if shapes:
            walks[name] = (shapes, int(params.group(1).replace(",", "")))
    return walks


def test_shape_walks():
    import pycnn.models

    walks = _walks(output("08_shape_walk.py"))  # the script checked every stage against the native twin
    assert list(walks) == pycnn.models.list_models()
    for name, expected in COURSE_SHAPES.items():
        assert walks[name][0][:len(expected)] == expected, name
    for name, (shapes, params) in walks.items():
        assert shapes[-1] == (10,), name
    for name in ("lenet", "googlenet", "densenet"):  # the cheap ones, against the native twin's stages here
        twin = pycnn.models.create(name, backend="native")
        size = (1, 28, 28) if name.startswith("lenet") else (1, 224, 224)
        assert walks[name][0] == list(twin.stage_shapes(size).values()), name
        assert walks[name][1] == sum(p.numel() for p in twin.parameters()), name
    assert walks["lenet"][1] == 61706


def test_shape_walks_at_96():
    walks = _walks(output("08_shape_walk.py --size 96"))
    assert list(walks) == ["googlenet", "resnet18", "densenet"]
    for name, expected in COURSE_SHAPES_96.items():
        assert walks[name][0][:len(expected)] == expected, name


def test_an_example_fails_when_pycnn_disagrees(capsys, monkeypatch):
    """examples/_check.py's check() exits with status 1 and says what differs."""
    monkeypatch.syspath_prepend(EXAMPLES)
    from _check import check

    check("an agreement", torch.ones(2), torch.ones(2) + 1e-9)
    with pytest.raises(SystemExit) as exit:
        check("a deliberate difference", torch.ones(2), torch.zeros(2))
    assert exit.value.code == 1
    assert "MISMATCH a deliberate difference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check("a shape difference", torch.ones(2), torch.ones(3))
