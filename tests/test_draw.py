"""The pictures of pycnn.models.draw and `python -m pycnn.models draw / features`:
they are written and are valid PNGs (signature, header, decodable, not blank),
and the features command fails with one clear line when the checkpoint or the
data is missing."""
import os
import struct
import subprocess
import sys
import zlib

import pytest
import torch

import pycnn.models
from pycnn import data
from pycnn.models.__main__ import load_checkpoint_model, main
from pycnn.models.draw import describe_stage, draw_features, draw_model, first_conv

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_DATA = os.path.isdir(data.DEFAULT_DATA_DIR)
NEEDS_DATA = pytest.mark.skipif(not HAS_DATA, reason=f"Fashion-MNIST is not in {data.DEFAULT_DATA_DIR}")


def check_png(path):
    """A PNG file: the signature, an IHDR chunk with a positive size and a valid CRC,
    and an image that matplotlib decodes into more than one colour."""
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", raw[16:24])
    assert width > 100 and height > 100
    assert struct.unpack(">I", raw[29:33])[0] == zlib.crc32(raw[12:29])
    assert raw.endswith(b"IEND\xaeB`\x82")
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.01, f"{path} is blank"
    return width, height


def run_cli(*argv, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pycnn.models", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["lenet", "googlenet", "densenet"])
def test_draw_model_writes_a_png(tmp_path, name):
    model = pycnn.models.create(name)
    path = draw_model(model, tmp_path / "sub" / f"{name}.png")  # the directory is created
    _, height = check_png(path)
    assert height > 40 * (len(list(model.children())) + 1)  # one row per stage and the input


def test_describe_stage():
    model = pycnn.models.create("googlenet")
    stages = dict(model.named_children())
    assert describe_stage(stages["b3"]) == "Inception ×2, MaxPool2d"
    assert describe_stage(stages["fc"]) == ""
    dense = dict(pycnn.models.create("densenet").named_children())["dense1"]
    assert describe_stage(dense) == "BatchNorm2d ×4, ReLU ×4, Conv2d ×4"


def test_draw_command(tmp_path):
    out = tmp_path / "resnet18.png"
    result = run_cli("draw", "resnet18", "--out", out, "--input-size", 1, 64, 64)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    check_png(out)


def test_draw_command_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["draw", "nosuchnet", "--out", str(tmp_path / "x.png")])
    assert exit.value.code == 2 and "unknown model 'nosuchnet'" in capsys.readouterr().err
    assert main(["draw", "lenet", "--out", str(tmp_path / "x.png"), "--input-size", "1", "32", "32"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line: lenet's fc1 is laid out for 28x28
    assert not (tmp_path / "x.png").exists()


def test_draw_features_in_process(tmp_path):
    torch.manual_seed(0)
    model = pycnn.models.create("resnet18")  # 64 kernels: 32 of them shown
    image = torch.rand(1, 96, 96)
    path = draw_features(model, image, tmp_path / "f.png", label=3, classes=data.CLASSES)
    check_png(path)
    assert first_conv(model) is model.b1[0]
    assert model.training  # the mode is restored


def test_load_checkpoint_model_takes_a_bare_state_dict(tmp_path):
    model = pycnn.models.create("lenet")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    loaded, side = load_checkpoint_model("lenet", str(tmp_path / "state.pt"))
    assert side is None
    torch.testing.assert_close(loaded.conv1[0].weight, model.conv1[0].weight)
    with pytest.raises(ValueError, match="does not hold lenet_bn's weights"):
        load_checkpoint_model("lenet_bn", str(tmp_path / "state.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a torch checkpoint"):
        load_checkpoint_model("lenet", str(tmp_path / "junk.pt"))


@pytest.fixture(scope="module")
def trained_lenet(tmp_path_factory):
    """A real pycnn.train checkpoint: LeNet, one epoch on 512 training images."""
    if not HAS_DATA:
        pytest.skip(f"Fashion-MNIST is not in {data.DEFAULT_DATA_DIR}")
    import pycnn.train

    out = tmp_path_factory.mktemp("run")
    assert pycnn.train.main(["--model", "lenet", "--epochs", "1", "--limit-train", "512", "--limit-test", "256",
                             "--batch-size", "64", "--workers", "0", "--threads", "1", "--device", "cpu",
                             "--quiet", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


@NEEDS_DATA
def test_features_command(tmp_path, trained_lenet):
    out = tmp_path / "features.png"
    result = run_cli("features", "lenet", "--checkpoint", trained_lenet, "--out", out, "--index", 7)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    check_png(out)


@NEEDS_DATA
def test_features_default_checkpoint(tmp_path, trained_lenet, monkeypatch):
    """The default checkpoint is runs/NAME/checkpoint.pt under the current directory."""
    (tmp_path / "runs" / "lenet").mkdir(parents=True)
    os.symlink(trained_lenet, tmp_path / "runs" / "lenet" / "checkpoint.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["features", "lenet", "--out", "f.png"]) == 0
    check_png(tmp_path / "f.png")


def test_features_command_without_a_checkpoint(tmp_path):
    result = run_cli("features", "lenet_bn", "--out", tmp_path / "f.png", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no checkpoint at runs/lenet_bn/checkpoint.pt" in result.stderr
    assert "python -m pycnn.train --model lenet_bn" in result.stderr
    assert not (tmp_path / "f.png").exists()


@NEEDS_DATA
def test_features_command_errors(tmp_path, trained_lenet, capsys):
    out = str(tmp_path / "f.png")
    assert main(["features", "lenet", "--checkpoint", str(trained_lenet), "--out", out,
                 "--data-dir", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Fashion-MNIST not found" in error
    assert main(["features", "lenet_bn", "--checkpoint", str(trained_lenet), "--out", out]) == 2
    assert "a checkpoint of model 'lenet', not 'lenet_bn'" in capsys.readouterr().err
    assert main(["features", "lenet", "--checkpoint", str(trained_lenet), "--out", out, "--index", "10000"]) == 2
    assert "--index 10000 is out of range 0..9999" in capsys.readouterr().err
    assert not os.path.exists(out)
