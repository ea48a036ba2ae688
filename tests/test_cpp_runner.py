"""pycnn_infer, the C++ (LibTorch) runner built by CMakeLists.txt, classifies
real Fashion-MNIST test images with a TorchScript model exactly as Python does."""
import os
import subprocess

import pytest
import torch

import pycnn.models
from pycnn import data

DATA_DIR = data.DEFAULT_DATA_DIR
IMAGES = 300  # enough to see a mismatch, few enough for ResNet-18 on 2 CPU cores

pytestmark = pytest.mark.skipif(
    not os.path.isdir(DATA_DIR), reason=f"Fashion-MNIST is not installed in {DATA_DIR} (dataset-fashion-mnist)"
)


def python_predictions(model, count):
    """The reference: the same test images, prepared as training prepares them, through the eager model."""
    images, _ = data.load_split("test")
    x = data.prepare_images(torch.from_numpy(images[:count]).unsqueeze(1), model.default_input_size[1:])
    with torch.no_grad():
        return model(x).argmax(1).tolist()


@pytest.mark.parametrize("name", ["lenet", "resnet18"])
def test_cpp_runner_matches_python(cmake_build, tmp_path, name):
    torch.manual_seed(0)
    model = pycnn.models.create(name).eval()
    model_path = tmp_path / f"{name}.pt"
    torch.jit.save(torch.jit.script(model), str(model_path))
    predictions_path = tmp_path / "predictions.txt"
    result = subprocess.run(
        [os.path.join(cmake_build, "pycnn_infer"), str(model_path), "--limit", str(IMAGES), "--batch-size", "64",
         "--predictions", str(predictions_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy:" in result.stdout and "images/s" in result.stdout
    cpp = [int(line) for line in predictions_path.read_text().split()]
    assert cpp == python_predictions(model, IMAGES)


def test_cpp_runner_reports_bad_arguments(cmake_build, tmp_path):
    runner = os.path.join(cmake_build, "pycnn_infer")
    missing = subprocess.run([runner], capture_output=True, text=True)
    assert missing.returncode == 2 and "no model file given" in missing.stderr
    model_path = tmp_path / "lenet.pt"
    torch.jit.save(torch.jit.script(pycnn.models.create("lenet").eval()), str(model_path))
    no_data = subprocess.run([runner, str(model_path), "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert no_data.returncode == 1 and "dataset-fashion-mnist" in no_data.stderr
