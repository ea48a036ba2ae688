"""pycnn.data: the IDX reader on the real Fashion-MNIST and on broken files, the dataset and loaders."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from pycnn import data as pdata

REAL = pytest.mark.skipif(not os.path.isdir(pdata.DEFAULT_DATA_DIR),
                          reason=f"Fashion-MNIST is not installed in {pdata.DEFAULT_DATA_DIR} "
                                 f"(apt-get install {pdata.DEBIAN_PACKAGE})")


def write_idx(path, array, code=0x08, compress=None, cut=0, magic=None):
    header = magic if magic is not None else bytes([0, 0, code, array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = array.astype(array.dtype.newbyteorder(">")).tobytes()
    raw = (header + payload)[:len(header + payload) - cut]
    compress = str(path).endswith(".gz") if compress is None else compress
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(raw)
    return path


@REAL
def test_real_files():
    images, labels = pdata.load_split("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [6000] * 10
    images, labels = pdata.load_split("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    raw = pdata.read_idx(os.path.join(pdata.DEFAULT_DATA_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert raw.dtype == np.uint8 and raw.shape == (10000,)


def test_classes():
    assert len(pdata.CLASSES) == 10 and pdata.CLASSES[0] == "T-shirt/top" and pdata.CLASSES[9] == "Ankle boot"


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.float32, 0x0D)])
def test_round_trip(tmp_path, name, dtype, code):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    back = pdata.read_idx(write_idx(tmp_path / name, array, code))
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("name", ["bad-idx3-ubyte", "bad-idx3-ubyte.gz"])
def test_truncated(tmp_path, name):
    path = write_idx(tmp_path / name, np.zeros((3, 28, 28), np.uint8), cut=100)
    with pytest.raises(ValueError, match=r"bad-idx3-ubyte.*truncated.*3x28x28"):
        pdata.read_idx(path)
    path = write_idx(tmp_path / name, np.zeros((3, 28, 28), np.uint8), cut=3 * 784 + 4)  # into the header
    with pytest.raises(ValueError, match=r"bad-idx3-ubyte.*truncated IDX header"):
        pdata.read_idx(path)


def test_trailing_data(tmp_path):
    path = tmp_path / "long-idx1-ubyte"
    write_idx(path, np.zeros(5, np.uint8))
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="long-idx1-ubyte.*trailing data"):
        pdata.read_idx(path)


@pytest.mark.parametrize("magic", [b"\x00\x00\x08\x07", b"\x1f\x00\x08\x01", b"\x00\x00\x07\x01", b"PK\x03\x04"])
def test_wrong_magic(tmp_path, magic):
    path = write_idx(tmp_path / "magic-idx1-ubyte", np.zeros(5, np.uint8), magic=magic)
    with pytest.raises(ValueError, match="magic-idx1-ubyte.*bad magic number"):
        pdata.read_idx(path)


def test_corrupt_gzip_and_tiny(tmp_path):
    path = tmp_path / "broken-idx1-ubyte.gz"
    good = gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 1000) + bytes(1000))
    path.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match="broken-idx1-ubyte.gz: not a readable IDX file"):
        pdata.read_idx(path)
    tiny = tmp_path / "tiny-idx1-ubyte"
    tiny.write_bytes(b"\0\0")
    with pytest.raises(ValueError, match="tiny-idx1-ubyte.*shorter than the 4-byte magic"):
        pdata.read_idx(tiny)


def test_missing_data(tmp_path):
    with pytest.raises(pdata.DataNotFoundError, match="dataset-fashion-mnist.*--data-dir.*--download"):
        pdata.FashionMNIST("train", str(tmp_path / "nowhere"))
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(pdata.DataNotFoundError, match="train-labels-idx1-ubyte.*missing.*dataset-fashion-mnist"):
        pdata.FashionMNIST("train", str(tmp_path))


def test_inconsistent_split(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        pdata.load_split("test", str(tmp_path))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3, 10], np.uint8))
    with pytest.raises(ValueError, match="label 10 out of range"):
        pdata.load_split("test", str(tmp_path))


def test_prepare_and_augment():
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    x = pdata.prepare_images(images)
    assert x.dtype == torch.float32 and torch.equal(x * 255, images.float())
    y = pdata.prepare_images(images, (96, 96))
    assert y.shape == (5, 1, 96, 96) and 0 <= y.min() and y.max() <= 1
    ref = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, ref.clamp(0, 1))
    a = pdata.augment_batch(images, torch.Generator().manual_seed(3))
    b = pdata.augment_batch(images, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    # every augmented image is a flipped or not, shifted by at most 2 pixels, copy of its original
    for orig, aug in zip(images, a):
        padded = torch.nn.functional.pad(orig, (2, 2, 2, 2))
        found = any(torch.equal(aug, v[:, dy:dy + 28, dx:dx + 28])
                    for v in (padded, padded.flip(-1)) for dy in range(5) for dx in range(5))
        assert found


def fake_dir(tmp_path, n=50):
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", n // 2)):
        images, labels = pdata.FILES[split]
        write_idx(tmp_path / (images + ".gz"), rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / labels, rng.integers(0, 10, count).astype(np.uint8))
    return str(tmp_path)


def test_loaders(tmp_path):
    directory = fake_dir(tmp_path)
    train = pdata.FashionMNIST("train", directory, size=(32, 32), augment=True)
    assert len(train) == 50 and train[3][0].shape == (1, 28, 28)
    loader = pdata.make_loader(train, 16, shuffle=True, seed=1)
    loader.batch_sampler.set_epoch(0)
    first = [(x.clone(), y.clone()) for x, y in loader]
    assert [len(y) for _, y in first] == [16, 16, 16, 2] and first[0][0].shape == (16, 1, 32, 32)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(train.labels.tolist())
    again = list(loader)  # same epoch: same batches, same augmentation
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    loader.batch_sampler.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in loader]), torch.cat([y for _, y in first]))
    # two ranks: disjoint shards covering the set
    shards = []
    for rank in range(2):
        shard = pdata.make_loader(train, 8, shuffle=True, seed=1, num_replicas=2, rank=rank)
        shard.batch_sampler.set_epoch(0)
        shards.append([i for _, idx in shard.batch_sampler for i in idx])
    assert not set(shards[0]) & set(shards[1]) and len(set(shards[0]) | set(shards[1])) == 50
    evals = [[i for b in pdata.make_loader(train, 8, False, num_replicas=2, rank=r).batch_sampler for i in b]
             for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(50))


def test_loader_workers_same_batches(tmp_path):
    directory = fake_dir(tmp_path)
    train = pdata.FashionMNIST("train", directory, augment=True)
    batches = []
    for workers in (0, 2):
        loader = pdata.make_loader(train, 16, shuffle=True, seed=5, workers=workers)
        loader.batch_sampler.set_epoch(2)
        batches.append([x for x, _ in loader])
    assert all(torch.equal(a, b) for a, b in zip(*batches))


@REAL
def test_download_from_a_local_mirror(tmp_path):
    # No network here: a file:// URL exercises the same urllib path (fetch, validate, rename).
    target = tmp_path / "fm"
    pdata.download(str(target), base_url="file://" + pdata.DEFAULT_DATA_DIR)
    assert sorted(os.listdir(target)) == sorted(n + ".gz" for pair in pdata.FILES.values() for n in pair)
    images, labels = pdata.load_split("test", str(target))
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    with pytest.raises(OSError):
        pdata.download(str(tmp_path / "other"), base_url="file://" + str(tmp_path / "no-such-mirror"))
    assert os.listdir(tmp_path / "other") == []  # nothing half-written left behind
