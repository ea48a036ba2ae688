"""pycnn.train --model tv:NAME: torchvision's classifiers, converted to pycnn's kernels, on Fashion-MNIST.

Tiny CPU runs (a few dozen 32x32 images): files, checkpoint, resume, backends, torchrun, errors.
"""
import os
import subprocess
import sys

import pytest
import torch

from pycnn import data as pdata
from pycnn import train as ptrain

torchvision = pytest.importorskip("torchvision")

import pycnn.nn  # noqa: E402
from pycnn.convert import checked_input_size, torchvision_classifier  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_data = pytest.mark.skipif(
    not os.path.isdir(pdata.DEFAULT_DATA_DIR),
    reason=f"Fashion-MNIST is not installed in {pdata.DEFAULT_DATA_DIR} (apt-get install {pdata.DEBIAN_PACKAGE})")

# The smallest run train.py offers: 64 training and 64 test images at 32x32, batches of 32, one epoch.
TINY = ["--resize", 32, "--limit-train", 64, "--limit-test", 64, "--batch-size", 32, "--epochs", 1,
        "--workers", 0, "--quiet", "--seed", 5]


def run(*argv):
    return ptrain.main([str(a) for a in argv])


def checkpoint(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


def metrics(out):
    import json
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


@needs_data
def test_tiny_run_checkpoint_and_resume(tmp_path):
    out = tmp_path / "run"
    assert run("--model", "tv:resnet18", "--out", out, *TINY) == 0
    ckpt = checkpoint(out)
    assert ckpt["epoch"] == 1 and ckpt["config"]["model"] == "tv:resnet18"
    assert ckpt["config"]["num_classes"] == 10 and ckpt["config"]["recipe"] == "reference"
    assert ckpt["config"]["resize"] == 32 and ckpt["config"]["backend"] == "pycnn"
    # The checkpoint is the converted model's state_dict: the same keys as torchvision's, one input channel.
    assert ckpt["model"]["conv1.weight"].shape == (64, 1, 7, 7) and ckpt["model"]["fc.weight"].shape == (10, 512)
    native = torchvision_classifier("resnet18", 10, 1, backend="native")
    native.load_state_dict(ckpt["model"])
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "curves.png", "metrics.json"]
    # Resume to two epochs (options from the checkpoint) = two epochs uninterrupted.
    assert run("--model", "tv:resnet18", "--resume", "--epochs", 2, "--out", out, "--workers", 0, "--quiet") == 0
    full = tmp_path / "full"
    assert run("--model", "tv:resnet18", "--out", full, *TINY, "--epochs", 2) == 0  # the last --epochs wins
    part_records, full_records = metrics(out), metrics(full)
    assert [r["epoch"] for r in part_records] == [1, 2]
    for part_record, full_record in zip(part_records, full_records):
        assert part_record["train_loss"] == pytest.approx(full_record["train_loss"], abs=1e-5)
    for key, value in checkpoint(full)["model"].items():
        torch.testing.assert_close(checkpoint(out)["model"][key], value, rtol=0, atol=1e-5, msg=key)
    # A recipe option that differs from the checkpoint's is refused, as for pycnn's own models.
    assert run("--model", "tv:resnet18", "--resume", "--num-classes", 12, "--out", out, "--quiet") == 2


@needs_data
def test_backends_agree_and_options(tmp_path):
    losses = {}
    for backend in ("pycnn", "native"):
        out = tmp_path / backend
        assert run("--model", "tv:mobilenet_v3_small", "--backend", backend, "--num-classes", 12,
                   "--model-option", "dropout=0.0", "--out", out, *TINY) == 0
        losses[backend] = metrics(out)[0]["train_loss"]
        assert checkpoint(out)["model"]["classifier.3.weight"].shape[0] == 12
    assert losses["pycnn"] == pytest.approx(losses["native"], rel=1e-3)


@needs_data
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pycnn.train", "--model", "tv:resnet18", "--device", "cpu", "--out", str(out),
         *map(str, TINY)], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch   1/1") == 1
    ckpt = checkpoint(out)
    assert ckpt["epoch"] == 1 and len(ckpt["rng"]) == 2


def test_unknown_torchvision_name(capsys):
    with pytest.raises(SystemExit) as exit_:
        ptrain.build_parser().parse_args(["--model", "tv:resnet19"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown torchvision classification model 'resnet19'" in err
    assert "torchvision.models.list_models(module=torchvision.models)" in err
    with pytest.raises(SystemExit):
        ptrain.build_parser().parse_args(["--model", "resnet19"])
    assert "or tv:NAME for a torchvision classifier" in capsys.readouterr().err


def test_sizes_and_errors(tmp_path, capsys):
    config = dict(model="tv:alexnet", num_classes=10, backend="pycnn", model_options={}, resize=32, quiet=True)
    with pytest.raises(ptrain.UserError, match="tv:alexnet cannot take 32x32 inputs"):
        ptrain.create_model(config)
    model, size = ptrain.create_model(dict(config, model="tv:squeezenet1_1", resize=None))
    assert size == (96, 96) and type(model.features[0]) is pycnn.nn.Conv2d and model.features[0].in_channels == 1
    with pytest.raises(ptrain.UserError, match="tv:resnet18: .*unexpected keyword argument 'width_divisor'"):
        ptrain.create_model(dict(config, model="tv:resnet18", model_options={"width_divisor": 4}))
    # Inception v3: 299x299 by default, without its auxiliary head; it takes 75x75.
    inception = torchvision_classifier("inception_v3", 10, 1)
    assert inception.default_input_size == (1, 299, 299) and inception.AuxLogits is None
    assert checked_input_size(inception, 75) == (1, 75, 75)
    assert run("--model", "tv:resnet18", "--num-classes", 5, "--out", tmp_path, "--quiet") == 2
    assert "--num-classes must be at least 10" in capsys.readouterr().err
    assert run("--model", "tv:resnet18", "--recipe", "best", "--out", tmp_path, "--quiet") == 2
    assert "no best recipe for tv:resnet18" in capsys.readouterr().err
