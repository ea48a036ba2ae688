"""pycnn.augment's presets (torchvision.transforms.v2 per image, one seed per
batch): deterministic per seed and independent of anything else the process
did, "flip-crop" bit for bit the recipes' augmentation, the same batches with
any number of loader workers, clear errors; and python -m pycnn.data show."""
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")

from pycnn import augment  # noqa: E402
from pycnn import data as pdata  # noqa: E402
from test_data import fake_dir  # noqa: E402

PRESETS = list(augment.PRESET_HELP)
RANDOM_PRESETS = [name for name in PRESETS if name != "none"]


def batch(n=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize("preset", RANDOM_PRESETS)
def test_each_preset_is_a_function_of_the_seed_only(preset):
    augmentation = augment.make_augmentation(preset)
    images = batch()
    first = augmentation(images, 7)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    torch.manual_seed(1234)  # what the process drew before does not matter ...
    torch.rand(5)
    state = torch.random.get_rng_state()
    assert torch.equal(augmentation(images, 7), first)
    assert torch.equal(torch.random.get_rng_state(), state)  # ... and the global generator is left alone
    assert not torch.equal(augmentation(images, 8), first)  # another batch seed, another batch
    # Each image draws its own parameters: the copies of one image differ.
    same = images[:1].repeat(16, 1, 1, 1)
    out = augmentation(same, 3)
    assert len({bytes(image.numpy()) for image in out}) > 1


def test_flip_crop_is_the_recipes_augmentation():
    images = batch()
    for seed in (0, 1, 99):
        expected = pdata.augment_batch(images, torch.Generator().manual_seed(seed))
        assert torch.equal(augment.make_augmentation("flip-crop")(images, seed), expected)
        assert torch.equal(augment.make_augmentation(True)(images, seed), expected)
    assert augment.make_augmentation("none") is None and augment.make_augmentation(False) is None


@pytest.mark.parametrize("preset", ["course", "erase"])
def test_loader_batches_do_not_depend_on_workers(tmp_path, preset):
    train = pdata.FashionMNIST("train", fake_dir(tmp_path), augment=preset)
    batches = []
    for workers in (0, 2):
        loader = pdata.make_loader(train, 16, shuffle=True, seed=5, workers=workers)
        loader.batch_sampler.set_epoch(1)
        batches.append([x for x, _ in loader])
    assert all(torch.equal(a, b) for a, b in zip(*batches))
    loader.batch_sampler.set_epoch(2)
    assert not all(torch.equal(a, b) for a, (b, _) in zip(batches[0], loader))


def test_bad_presets_and_batches_are_clear_errors():
    with pytest.raises(ValueError, match="unknown augmentation preset 'mixup'; the presets: none, flip-crop"):
        augment.make_augmentation("mixup")
    with pytest.raises(ValueError, match="uint8"):
        augment.make_augmentation("course")(batch().float(), 0)


def test_show_writes_the_grid(tmp_path):
    if not pdata.os.path.isdir(pdata.DEFAULT_DATA_DIR):
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path / "grid.png"
    result = subprocess.run([sys.executable, "-m", "pycnn.data", "show", "--augment", "course", "--out", str(out),
                             "--images", "2", "--versions", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([sys.executable, "-m", "pycnn.data", "show", "--data-dir", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
