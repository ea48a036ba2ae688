"""Fashion-MNIST for training pycnn's models: IDX reader, dataset, loaders.

    from pycnn.data import FashionMNIST, make_loader, prepare_images, CLASSES
    train = FashionMNIST("train")                  # the 60,000 training images (uint8, 1x28x28)
    test = FashionMNIST("test")                    # the 10,000 test images
    loader = make_loader(train, batch_size=256, shuffle=True, seed=0, size=(28, 28))

The data is the real Fashion-MNIST, read from its IDX files (``*-ubyte.gz`` or
uncompressed) by :func:`read_idx`. The default directory is
``/usr/share/datasets/fashion-mnist`` (Debian's package ``dataset-fashion-mnist``);
:func:`download` fetches the official files into another directory.

Images stay uint8 28x28 in memory (47 MB for the training set). A batch becomes
float in [0, 1] resized (bilinear) to the model's input size by
:func:`prepare_images` -- in the loader's worker processes (``size=`` given), or
on the device after the copy (``size=None`` in the loader, then call
prepare_images in the training loop), which is what the training CLI does on
CUDA: the copy stays 28x28 uint8 and the GPU interpolates. Either way the
whole set is never resized up front (224x224 floats for 60k images is 12 GB).

Augmentation (``augment=True`` or a preset name of pycnn.augment: "flip-crop",
the default, is a random horizontal flip and a random 28x28 crop of the image
padded by 2 pixels with zeros; "course", "erase", ... come from
torchvision.transforms.v2), drawn per batch from a seed of (seed, epoch, rank,
batch number), so a run's batches do not depend on the number of workers, and
a resumed run sees the same batches.

    python -m pycnn.data show --augment course --out grid.png    # augmented training images
"""
from __future__ import annotations

import gzip
import os
import tempfile
import urllib.request
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pycnn.augment import make_augmentation
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# The 10 classes, in label order (Zalando's names).
CLASSES: Tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# split -> (images file, labels file), without the .gz suffix.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}
IMAGE_HW = (28, 28)
AUGMENT_PADDING = 2

# IDX type codes (the third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataNotFoundError(FileNotFoundError):
    """Fashion-MNIST is not where it was looked for (message says how to get it)."""


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzip-compressed when the name ends in .gz) into a numpy array.

    Checks the magic number (two zero bytes, a known type code, 1..4 dimensions),
    that the header is complete and that the payload has exactly the number of
    bytes the dimensions and type imply. Raises ValueError naming the file
    otherwise (truncated file, wrong magic, corrupt gzip stream).
    """
    path = os.fspath(path)
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (EOFError, gzip.BadGzipFile, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable IDX file ({type(error).__name__}: {error})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise ValueError(
            f"{path}: not an IDX file: bad magic number 0x{raw[:4].hex()} "
            f"(expected 0x0000 followed by a type code in {{{', '.join(hex(c) for c in _IDX_DTYPES)}}} "
            f"and 1 to 4 dimensions)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {len(raw)} bytes, the header needs {header}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing data"
        raise ValueError(
            f"{path}: IDX file {what}: dimensions {'x'.join(map(str, dims))} of {dtype.name} need "
            f"{expected} bytes of data, found {payload}")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def find_file(data_dir: str, name: str) -> str:
    """The path of `name` (or `name`.gz) in data_dir; DataNotFoundError if neither exists."""
    for candidate in (name + ".gz", name):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(missing_message(data_dir, name))


def missing_message(data_dir: str, name: Optional[str] = None) -> str:
    what = f" ({name}[.gz] is missing)" if name else ""
    return (f"Fashion-MNIST not found in {data_dir}{what}. Install Debian's package {DEBIAN_PACKAGE} "
            f"(apt-get install {DEBIAN_PACKAGE}, which puts it in {DEFAULT_DATA_DIR}), "
            f"point --data-dir at a directory holding the IDX files, or pass --download to fetch them")


def load_split(split: str, data_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels int64 N) of split "train" or "test", validated."""
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    data_dir = data_dir or DEFAULT_DATA_DIR
    if not os.path.isdir(data_dir):
        raise DataNotFoundError(missing_message(data_dir))
    image_path, label_path = (find_file(data_dir, name) for name in FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_HW:
        raise ValueError(f"{image_path}: expected uint8 images of 28x28, got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{label_path}: expected a vector of uint8 labels, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise ValueError(f"{label_path}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    return images, labels.astype(np.int64)


def download(data_dir: str, base_url: str = DOWNLOAD_URL, force: bool = False) -> None:
    """Fetch the four official .gz files into data_dir (those not already there).

    Each file is written to a temporary file in data_dir and renamed into
    place once complete and readable by read_idx, so an interrupted download
    leaves nothing half-written. (Not exercised by the tests: no network there.)
    """
    os.makedirs(data_dir, exist_ok=True)
    for name in (n for pair in FILES.values() for n in pair):
        target = os.path.join(data_dir, name + ".gz")
        if os.path.isfile(target) and not force:
            continue
        url = base_url.rstrip("/") + "/" + name + ".gz"
        fd, tmp = tempfile.mkstemp(prefix="." + name + ".", suffix=".part.gz", dir=data_dir)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            read_idx(tmp)  # a complete, valid IDX file, or ValueError
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def prepare_images(images: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> float32 in [0, 1], resized bilinearly to `size` (H, W) if given
    and different (align_corners=False, no antialiasing, as torchvision's Resize on tensors)."""
    x = images.to(torch.float32).div_(255.0)
    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x


def augment_batch(images: torch.Tensor, generator: torch.Generator, padding: int = AUGMENT_PADDING) -> torch.Tensor:
    """Random horizontal flip and random crop (zero padding `padding`) of a uint8 (N, C, H, W) batch."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # N, 1, H, 1
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # N, 1, 1, W
        batch = torch.arange(n)[:, None, None, None]
        channels = torch.arange(images.shape[1])[None, :, None, None]
        images = padded[batch, channels, rows, cols]
    return images


def batch_seed(seed: int, epoch: int, rank: int, number: int) -> int:
    """A 63-bit seed for one batch's augmentation, from (seed, epoch, rank, batch number)."""
    return int(np.random.SeedSequence([seed, epoch, rank, number]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def check_classes(classes: Sequence[int]) -> Tuple[int, ...]:
    """`classes` as a tuple of distinct Fashion-MNIST labels, or ValueError."""
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes: give at least one label")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(CLASSES):
            raise ValueError(f"classes: {c!r} is not a Fashion-MNIST label (0 to {len(CLASSES) - 1})")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes: {list(classes)} names a label twice")
    return tuple(int(c) for c in classes)


class FashionMNIST(torch.utils.data.Dataset):
    """One split of Fashion-MNIST, held as uint8 (N, 1, 28, 28) images and int64 labels.

    ``dataset[i]`` gives (uint8 1x28x28 image, label). The loaders of
    :func:`make_loader` fetch whole batches through ``__getitems__`` instead:
    a batch of indices (with its augmentation seed) becomes
    (images, labels), the images prepared by :meth:`transform_batch`.

    Args:
        split: "train" or "test".
        data_dir: directory of the IDX files (default /usr/share/datasets/fashion-mnist).
        limit: keep only the first `limit` examples (of `classes`, if given).
        classes: keep only the examples of these labels (e.g. (5, 6, 7, 8, 9)),
            relabelled 0, 1, ... in the order given; ``dataset.classes`` names them.
        size: (H, W) to resize to in the loader (None: leave uint8 28x28 for the caller).
        augment: an augmentation preset of pycnn.augment for each training
            batch (True: "flip-crop", the random flip and crop; False: none).
    """

    def __init__(self, split: str = "train", data_dir: Optional[str] = None, limit: Optional[int] = None,
                 size: Optional[Sequence[int]] = None, augment=False, classes: Optional[Sequence[int]] = None):
        images, labels = load_split(split, data_dir)
        names = CLASSES
        if classes is not None:
            classes = check_classes(classes)
            keep = np.isin(labels, classes)
            relabel = np.zeros(len(CLASSES), dtype=labels.dtype)
            relabel[list(classes)] = np.arange(len(classes), dtype=labels.dtype)
            images, labels = images[keep], relabel[labels[keep]]
            names = tuple(CLASSES[c] for c in classes)
        if limit is not None:
            if limit <= 0:
                raise ValueError(f"limit must be positive, got {limit}")
            images, labels = images[:limit], labels[:limit]
        self.split = split
        self.images = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
        self.labels = torch.from_numpy(labels)
        self.size = tuple(size) if size is not None else None
        self.augment = augment
        self.augmentation = make_augmentation(augment, IMAGE_HW)
        self.classes = names

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def transform_batch(self, images: torch.Tensor, seed: Optional[int]) -> torch.Tensor:
        if self.augmentation is not None and seed is not None:
            images = self.augmentation(images, seed)
        if self.size is None:
            return images.contiguous()
        return prepare_images(images, self.size)

    def __getitems__(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        seed, indices = batch if isinstance(batch, SeededBatch) else (None, batch)
        index = torch.as_tensor(list(indices), dtype=torch.int64)
        return self.transform_batch(self.images[index], seed), self.labels[index]


class SeededBatch(tuple):
    """(augmentation seed, list of indices): what the batch samplers yield."""

    def __new__(cls, seed: int, indices: List[int]):
        return super().__new__(cls, (seed, indices))

    def __getnewargs__(self):
        return tuple(self)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of a (distributed) sampler, each with a seed from (seed, epoch, rank, batch number).

    Shuffling and sharding is torch's DistributedSampler (also for one process:
    num_replicas=1), whose order depends only on (seed, epoch): call
    set_epoch(epoch) before each epoch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False):
        self.sampler = torch.utils.data.DistributedSampler(
            range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.batch_size, self.seed, self.rank, self.drop_last = batch_size, seed, rank, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[SeededBatch]:
        indices = list(self.sampler)
        for number in range(len(self)):
            chunk = indices[number * self.batch_size:(number + 1) * self.batch_size]
            yield SeededBatch(batch_seed(self.seed, self.epoch, self.rank, number), chunk)


class ShardBatchSampler(torch.utils.data.Sampler):
    """In-order batches of this rank's shard (indices rank, rank + W, ...): evaluation,
    every example exactly once across ranks (no padding)."""

    def __init__(self, n: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(rank, n, num_replicas))
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]


def _collate_batch(batch):
    return batch  # __getitems__ already returns (images, labels)


def make_loader(dataset: FashionMNIST, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0,
                pin_memory: bool = False, num_replicas: int = 1, rank: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` yielding (images, labels) batches.

    shuffle=True: this rank's shard of a per-epoch permutation (call
    ``loader.batch_sampler.set_epoch(epoch)`` first), augmented if the dataset
    says so; shuffle=False: this rank's shard in order, never augmented.
    """
    if shuffle:
        sampler = EpochBatchSampler(len(dataset), batch_size, True, seed, num_replicas, rank)
    else:
        sampler = ShardBatchSampler(len(dataset), batch_size, num_replicas, rank)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=_collate_batch, num_workers=workers,
        pin_memory=pin_memory, persistent_workers=workers > 0)


def show_augmentation(preset: str, out: str, images: int = 4, versions: int = 7, seed: int = 0,
                      data_dir: Optional[str] = None) -> str:
    """A grid of training images: each row one image, then `versions` augmented
    copies of it (the batch seeds of epochs 0, 1, ...), as the course's
    show_images draws them; written to `out` (PNG). Returns `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    augmentation = make_augmentation(preset, IMAGE_HW)
    train_images, train_labels = load_split("train", data_dir)
    originals = torch.from_numpy(np.ascontiguousarray(train_images[:images])).unsqueeze(1)
    columns = [originals] + [originals if augmentation is None else augmentation(originals, batch_seed(seed, epoch, 0, 0))
                             for epoch in range(versions)]
    figure, axes = plt.subplots(images, versions + 1, figsize=(1.2 * (versions + 1), 1.3 * images), squeeze=False)
    for row in range(images):
        for column, batch in enumerate(columns):
            axis = axes[row][column]
            axis.imshow(batch[row, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("original" if column == 0 else f"epoch {column - 1}", fontsize=8)
        axes[row][0].set_ylabel(CLASSES[train_labels[row]], fontsize=8)
    figure.suptitle(f"--augment {preset}", fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse
    import sys

    from pycnn.augment import PRESET_HELP, presets_help

    parser = argparse.ArgumentParser(prog="python -m pycnn.data", description="Fashion-MNIST helpers")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="draw a grid of augmented training images")
    show.add_argument("--augment", default="flip-crop", choices=list(PRESET_HELP),
                      help=presets_help())
    show.add_argument("--out", default="augment.png", help="PNG to write (default augment.png)")
    show.add_argument("--images", type=int, default=4, help="training images, one row each (default 4)")
    show.add_argument("--versions", type=int, default=7, help="augmented copies of each (default 7)")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if args.images < 1 or args.versions < 1:
        parser.error("--images and --versions must be at least 1")
    try:
        print(f"wrote {show_augmentation(args.augment, args.out, args.images, args.versions, args.seed, args.data_dir)}")
    except DataNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


__all__ = ["CLASSES", "DEFAULT_DATA_DIR", "DEBIAN_PACKAGE", "DataNotFoundError", "FashionMNIST", "read_idx",
           "load_split", "download", "prepare_images", "augment_batch", "make_loader"]


if __name__ == "__main__":
    main()
