"""Exports of the classic models: ONNX (standard operators only), TorchScript
and torch.export programs (pycnn's operators intact), and their CLIs.

Most tests call the library functions in-process (export.onnx.export_onnx, ...)
for speed; a few run the CLIs (python -m export.<format>) end to end.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import pycnn  # noqa: E402,F401
import pycnn.functional as PF  # noqa: E402
import pycnn.models  # noqa: E402
import pycnn.nn  # noqa: E402
import pycnn.onnx  # noqa: E402
from export import _common  # noqa: E402
from export import onnx as onnx_export  # noqa: E402
from export import program as program_export  # noqa: E402
from export import torchscript as torchscript_export  # noqa: E402
from pycnn.data import CLASSES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = pycnn.models.list_models()
RTOL = 1e-4  # largest difference, relative to the output's scale
NEEDS_DATA = pytest.mark.skipif(not _common.fashion_mnist_available(),
                                reason=f"Fashion-MNIST is not installed in {_common.FASHION_MNIST_DIR} "
                                       "(apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    # conftest.py runs the suite on one thread; the 224x224 models want both cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, min(2, os.cpu_count() or 1)))
    _common.quiet_exporter_logs()
    yield
    torch.set_num_threads(threads)


def _relative_diff(actual, expected) -> float:
    actual = torch.as_tensor(actual).to(torch.float64)
    expected = expected.detach().to(torch.float64)
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def _cli(module, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", f"export.{module}", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _leftovers(directory):
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


# --- every model, every format ------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_every_format_agrees_with_pytorch(name, tmp_path):
    """ONNX (onnxruntime), TorchScript (torch.jit.load) and .pt2 (torch.export.load)
    give PyTorch's output at batch 1 and 3 (one dynamic batch dimension)."""
    torch.manual_seed(0)
    model = pycnn.models.create(name).eval()
    inputs = [_common.random_batch(model.default_input_size, n, seed=n) for n in (1, 3)]
    with torch.no_grad():
        references = [model(x) for x in inputs]

    path = str(tmp_path / f"{name}.onnx")
    proto = onnx_export.export_onnx(model, path)
    assert onnx_export.non_standard_nodes(proto) == set()
    assert not proto.functions
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert not any("pycnn" in n.domain or "pycnn" in n.op_type for n in proto.graph.node)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    for x, ref, out in zip(inputs, references, onnx_export.run_onnx(path, inputs)):
        assert _relative_diff(out, ref) <= RTOL, f"onnx batch {x.shape[0]}"
    os.remove(path)

    path = str(tmp_path / f"{name}.pt")
    torchscript_export.export_torchscript(model, path)
    loaded = torch.jit.load(path)
    kinds = torchscript_export.graph_operators(loaded)
    assert torchscript_export.pycnn_operators(kinds), kinds
    assert not torchscript_export.native_operators(kinds), kinds
    assert not any(k.startswith(("aten::conv", "aten::_convolution", "aten::max_pool", "aten::avg_pool",
                                 "aten::batch_norm")) for k in kinds)
    with torch.no_grad():
        for x, ref in zip(inputs, references):
            assert _relative_diff(loaded(x), ref) <= RTOL, f"torchscript batch {x.shape[0]}"
    del loaded
    os.remove(path)

    path = str(tmp_path / f"{name}.pt2")
    program_export.export_program(model, path)
    outputs, names = program_export.run_program(path, inputs)
    assert program_export.pycnn_operators(names) and not program_export.native_operators(names), names
    for x, ref, out in zip(inputs, references, outputs):
        assert _relative_diff(out, ref) <= RTOL, f"pt2 batch {x.shape[0]}"
    assert _leftovers(tmp_path) == []


@NEEDS_DATA
def test_real_images_same_classes(tmp_path):
    """On real Fashion-MNIST test images, the ONNX file picks PyTorch's classes."""
    model, _, input_size = _common.load_model("lenet_bn", str(_lenet_bn_checkpoint(tmp_path)), warn=False)
    x = _common.real_batch(input_size, 16)
    assert x.shape == (16, *input_size) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.no_grad():
        reference = model(x)
    path = str(tmp_path / "lenet_bn.onnx")
    onnx_export.export_onnx(model, path)
    comparison = _common.compare("fashion-mnist", reference, onnx_export.run_onnx(path, [x])[0])
    assert comparison.agree == 16 and comparison.relative_diff <= RTOL and comparison.ok(RTOL)


def _lenet_bn_checkpoint(tmp_path):
    """A pycnn.train-style checkpoint of lenet_bn with non-trivial batch-norm statistics."""
    torch.manual_seed(1)
    model = pycnn.models.create("lenet_bn")
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "config": {"model": "lenet_bn", "model_options": {}}, "epoch": 1}, path)
    return path


# --- the translations, operator by operator -----------------------------------


class _Functional(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


_weight = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(0))
_bias = torch.randn(6, generator=torch.Generator().manual_seed(1))
TRANSLATIONS = {
    "corr2d_groups_stride_dilation_bias": lambda x: PF.conv2d(x, _weight, _bias, stride=(2, 1), padding=(2, 1),
                                                                dilation=(2, 1), groups=2),
    "corr2d_no_bias": lambda x: PF.conv2d(x, _weight, None, padding=1, groups=2),
    "max_pool2d_ceil_padding_dilation": lambda x: PF.max_pool2d(x, 3, stride=2, padding=1, dilation=(1, 2),
                                                                  ceil_mode=True),
    "max_pool2d_indices": lambda x: PF.max_pool2d(x, 2, return_indices=True)[1].to(torch.float32),
    "avg_pool2d_ceil_include_pad": lambda x: PF.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True),
    "avg_pool2d_ceil_exclude_pad": lambda x: PF.avg_pool2d(x, (3, 2), stride=2, padding=1, ceil_mode=True,
                                                           count_include_pad=False),
    "avg_pool2d_divisor_override": lambda x: PF.avg_pool2d(x, 3, stride=2, padding=1, divisor_override=5),
    "adaptive_avg_pool2d_global": lambda x: PF.adaptive_avg_pool2d(x, 1),
    "adaptive_avg_pool2d_divisible": lambda x: PF.adaptive_avg_pool2d(x, (3, 2)),
    "batch_norm_eval_no_affine": lambda x: PF.batch_norm(x, torch.linspace(-1, 1, 4), torch.linspace(0.5, 2, 4),
                                                         training=False, eps=1e-3),
}


@pytest.mark.parametrize("case", list(TRANSLATIONS))
def test_translation_matches_operator(case, tmp_path):
    x = torch.randn(2, 4, 9, 12, generator=torch.Generator().manual_seed(2))
    module = _Functional(TRANSLATIONS[case]).eval()
    with torch.no_grad():
        expected = module(x)
    path = str(tmp_path / "op.onnx")
    proto = onnx_export.export_onnx(module, path, input_size=tuple(x.shape[1:]))
    assert onnx_export.non_standard_nodes(proto) == set()
    actual = onnx_export.run_onnx(path, [x])[0]
    torch.testing.assert_close(torch.as_tensor(actual), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn, message", [
    (lambda x: PF.adaptive_avg_pool2d(x, (4, 5)), "not divisible"),
    (lambda x: PF.avg_pool2d(x, 3, stride=2, ceil_mode=True, divisor_override=4), "divisor_override"),
], ids=["adaptive_not_divisible", "divisor_override_ceil_mode"])
def test_untranslatable_arguments_are_clear_errors(fn, message, tmp_path):
    path = tmp_path / "op.onnx"
    with pytest.raises(_common.ExportError, match=message):
        onnx_export.export_onnx(_Functional(fn).eval(), str(path), input_size=(4, 9, 12))
    assert not path.exists()


def test_your_own_model_exports_with_pycnn_onnx(tmp_path):
    """The README's example: a user's nn.Sequential of pycnn.nn layers, exported
    with torch.onnx.export and pycnn.onnx's translation table alone (no export
    package), is a standard-ONNX file that onnxruntime runs as PyTorch does, at
    any batch size."""
    import onnxruntime

    torch.manual_seed(5)
    model = torch.nn.Sequential(
        pycnn.nn.Conv2d(3, 8, 3, padding=1), pycnn.nn.BatchNorm2d(8), torch.nn.ReLU(),
        pycnn.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        pycnn.nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=4, bias=False), torch.nn.ReLU(),
        pycnn.nn.AvgPool2d(2, count_include_pad=False, padding=1), pycnn.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, 32), pycnn.nn.BatchNorm1d(32), torch.nn.Linear(32, 5))
    model.train()(torch.randn(16, 3, 20, 20))  # running statistics that are not the defaults
    model.eval()
    path = str(tmp_path / "mine.onnx")
    torch.onnx.export(model, (torch.rand(2, 3, 20, 20),), path, dynamo=True,
                      custom_translation_table=pycnn.onnx.translation_table(),
                      dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["x"], output_names=["y"])
    proto = onnx.load(path)
    assert onnx_export.non_standard_nodes(proto) == set()
    # (the exporter's optimiser may fold eval batch-norm into the layer before it)
    assert {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool"} <= {
        node.op_type for node in proto.graph.node}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.rand(batch, 3, 20, 20)
        with torch.no_grad():
            expected = model(x)
        actual = torch.as_tensor(session.run(["y"], {"x": x.numpy()})[0])
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# --- fixed batch and the Triton repository ------------------------------------


def test_triton_config_dynamic_batch():
    config = onnx_export.triton_config("resnet18", (1, 96, 96), 10, None)
    assert config == (
        'name: "resnet18"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 256\n'
        'input [\n  {\n    name: "input"\n    data_type: TYPE_FP32\n    dims: [ 1, 96, 96 ]\n  }\n]\n'
        'output [\n  {\n    name: "logits"\n    data_type: TYPE_FP32\n    dims: [ 10 ]\n  }\n]\n'
        'dynamic_batching { }\n')


def test_cli_onnx_fixed_batch_and_triton_repo(tmp_path):
    out, repo = tmp_path / "lenet.onnx", tmp_path / "triton"
    result = _cli("onnx", "--model", "lenet", "--out", str(out), "--batch-size", "2", "--triton-repo", str(repo),
                  "--checkpoint", str(_lenet_checkpoint(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(repo)) == ["lenet"]
    assert sorted(os.listdir(repo / "lenet")) == ["1", "config.pbtxt", "labels.txt"]
    assert (repo / "lenet" / "labels.txt").read_text().splitlines() == list(CLASSES)  # Triton's label file
    assert os.listdir(repo / "lenet" / "1") == ["model.onnx"]
    assert (repo / "lenet" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    config = (repo / "lenet" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 0" in config
    assert "dynamic_batching" not in config  # a fixed batch cannot be gathered
    assert "dims: [ 2, 1, 28, 28 ]" in config and "dims: [ 2, 10 ]" in config
    assert config.count("TYPE_FP32") == 2 and 'name: "input"' in config and 'name: "logits"' in config
    assert config.count('label_filename: "labels.txt"') == 1  # on the output: Triton's classification
    proto = onnx.load(str(out))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 1, 28, 28]
    assert {p.key: json.loads(p.value) for p in proto.metadata_props} == {"labels": list(CLASSES)}


def test_cli_onnx_fp16(tmp_path):
    """--fp16: float16 weights and compute inside, FP32 input and output
    outside; the check batch within float16's tolerance; the whole test set's
    accuracy printed beside float32's, and a loss beyond --fp16-max-drop fails
    the export (nothing written)."""
    out = tmp_path / "lenet16.onnx"
    result = _cli("onnx", "--model", "lenet", "--out", str(out), "--fp16", "--checkpoint",
                  str(_lenet_checkpoint(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "float16 weights and compute" in result.stdout
    proto = onnx.load(str(out))
    io_types = {t.type.tensor_type.elem_type for t in [*proto.graph.input, *proto.graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}
    weight_types = {t.data_type for t in proto.graph.initializer if t.dims} - {onnx.TensorProto.INT64}  # (shapes)
    assert weight_types == {onnx.TensorProto.FLOAT16}
    if _common.fashion_mnist_available():
        line = next(line for line in result.stdout.splitlines() if line.startswith("test accuracy"))
        assert "(10,000 images)" in line and "float16 ONNX" in line and "top-1 agreement" in line
        strict = tmp_path / "strict.onnx"
        refused = _cli("onnx", "--model", "lenet", "--out", str(strict), "--fp16", "--fp16-max-drop", "-1",
                       "--checkpoint", str(_lenet_checkpoint(tmp_path)))
        assert refused.returncode == 1 and "more than --fp16-max-drop" in refused.stderr
        assert not strict.exists() and not _leftovers(tmp_path)


# --- the CLIs -----------------------------------------------------------------


def _lenet_checkpoint(tmp_path):
    path = tmp_path / "lenet-checkpoint.pt"
    if not path.exists():
        torch.manual_seed(3)
        torch.save({"model": pycnn.models.create("lenet").state_dict(), "config": {"model": "lenet"}}, path)
    return path


@pytest.mark.parametrize("module, extension, format_text", [
    ("onnx", "onnx", "ONNX, opset 18"),
    ("torchscript", "pt", "pycnn::corr2d"),
    ("program", "pt2", "pycnn.corr2d.default"),
])
def test_cli_exports_lenet(module, extension, format_text, tmp_path):
    out = tmp_path / "sub" / f"lenet.{extension}"
    result = _cli(module, "--model", "lenet", "--out", str(out), "--checkpoint", str(_lenet_checkpoint(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert out.is_file() and _leftovers(out.parent) == []
    for text in ("model       lenet", "61,706", format_text, "file size", "output      " + str(out), "[ok]"):
        assert text in result.stdout, result.stdout
    if _common.fashion_mnist_available():
        assert "fashion-mnist batch 8" in result.stdout and "(8/8)" in result.stdout
    assert "random batch 3" in result.stdout and "UNTRAINED" not in result.stderr


def test_default_paths_and_untrained_warning(tmp_path, monkeypatch, capsys):
    """Without --checkpoint and --out: untrained weights (a loud warning) into exports/NAME.pt2."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_main(program_export, ["--model", "lenet"], capsys)
    assert code == 0, err
    assert "WARNING" in err and "UNTRAINED" in err and "untrained" in out
    assert (tmp_path / "exports" / "lenet.pt2").is_file()


def test_default_checkpoint_is_used(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs" / "lenet").mkdir(parents=True)
    os.replace(_lenet_checkpoint(tmp_path), tmp_path / "runs" / "lenet" / "checkpoint.pt")
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_main(program_export, ["--model", "lenet", "--out", "l.pt2"], capsys)
    assert code == 0, err
    assert os.path.join("runs", "lenet", "checkpoint.pt") in out and "UNTRAINED" not in err


def test_cli_unknown_model_lists_known_ones(tmp_path):
    result = _cli("onnx", "--model", "resnet50", "--out", str(tmp_path / "x.onnx"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "unknown model 'resnet50'" in result.stderr and all(name in result.stderr for name in MODELS)
    assert os.listdir(tmp_path) == []


def _run_main(module, argv, capsys):
    """A CLI's main in-process, through run_cli: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        _common.run_cli(lambda: module.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _error_line(err):
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("module", [onnx_export, torchscript_export, program_export], ids=lambda m: m.__name__)
def test_error_cases(module, tmp_path, capsys):
    out = tmp_path / "out" / "model.x"
    # a checkpoint of another architecture: keys and shapes differ
    other = tmp_path / "other.pt"
    torch.save(pycnn.models.create("lenet_bn").state_dict(), other)
    code, _, err = _run_main(module, ["--model", "lenet", "--checkpoint", str(other), "--out", str(out)], capsys)
    assert code == 2 and "does not fit model lenet" in _error_line(err)
    # a pycnn.train checkpoint whose config names another model
    renamed = tmp_path / "renamed.pt"
    torch.save({"model": pycnn.models.create("lenet").state_dict(), "config": {"model": "lenet_bn"}}, renamed)
    code, _, err = _run_main(module, ["--model", "lenet", "--checkpoint", str(renamed), "--out", str(out)], capsys)
    assert code == 2 and "is of model 'lenet_bn', not 'lenet'" in _error_line(err)
    # same keys, another shape (lenet for 3 classes)
    shapes = tmp_path / "shapes.pt"
    torch.save(pycnn.models.create("lenet", num_classes=3).state_dict(), shapes)
    code, _, err = _run_main(module, ["--model", "lenet", "--checkpoint", str(shapes), "--out", str(out)], capsys)
    assert code == 2 and "has shape (3, 84)" in _error_line(err)
    # a missing checkpoint
    code, _, err = _run_main(module, ["--model", "lenet", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)],
                             capsys)
    assert code == 2 and "does not exist" in _error_line(err)
    # a file that is not a checkpoint
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = _run_main(module, ["--model", "lenet", "--checkpoint", str(junk), "--out", str(out)], capsys)
    assert code == 2 and "cannot read checkpoint" in _error_line(err)
    assert not out.parent.exists()
    # an unwritable output path (its directory would be inside a regular file)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _run_main(module, ["--model", "lenet", "--checkpoint", str(_lenet_checkpoint(tmp_path)),
                                      "--out", str(blocker / "model.x")], capsys)
    assert code == 2 and "cannot write" in _error_line(err)
    assert blocker.read_text() == "" and _leftovers(tmp_path) == []


def test_cli_failed_check_leaves_no_file(tmp_path, capsys):
    """A file that does not pass its check (here: tolerance 0 for onnxruntime's
    float rounding) is not put in place; exit status 1."""
    out = tmp_path / "lenet.onnx"
    code, stdout, err = _run_main(onnx_export, ["--model", "lenet", "--checkpoint", str(_lenet_checkpoint(tmp_path)),
                                                "--out", str(out), "--tolerance", "0"], capsys)
    assert code == 1 and "FAILED" in stdout and "nothing written" in err
    assert os.listdir(tmp_path) == ["lenet-checkpoint.pt"]


def test_failed_export_removes_temporary_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with _common.atomic_output(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise RuntimeError("export crashed")
    assert target.read_text() == "previous" and sorted(os.listdir(tmp_path)) == ["model.onnx"]
