"""Image augmentation by preset name, from torchvision.transforms.v2, applied to
whole uint8 batches and reproducible from one seed per batch.

    augmentation = make_augmentation("course")            # None for "none"
    images = augmentation(images, seed)                   # uint8 (N, C, H, W) -> the same shape

Presets (``python -m pycnn.train --augment PRESET``, ``python -m pycnn.data show --augment PRESET``):

  none       no augmentation
  flip-crop  a random horizontal flip and a random crop of the image padded by 2
             pixels with zeros (pycnn.data.augment_batch, the recipes' default,
             what ``--augment`` alone means)
  flip       a random horizontal flip
  course     the course's combination: a horizontal flip, a random resized crop
             (10%-100% of the area, aspect ratio 0.5-2, back to the image size)
             and colour jitter of brightness and contrast (0.5 each; saturation
             and hue have no meaning for grey images)
  erase      flip-crop, then random erasing (p 0.5 of a 2%-20% rectangle, zeros)

Every image of a batch draws its own parameters (torchvision's transforms draw
one set per call, so they are called image by image), from torch's generator
seeded with the batch's seed inside torch.random.fork_rng: the batch depends on
(seed, the images) only -- not on the process, the worker or what ran before --
so data order and augmentation still depend only on (seed, epoch, rank, batch)
and ``--resume`` stays exact. The images may be on any device (on CUDA the
transforms run there; their random parameters come from the CPU generator).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

PRESET_HELP = {
    "none": "no augmentation",
    "flip-crop": "random horizontal flip and 2-pixel-padded random crop (the recipes' default)",
    "flip": "random horizontal flip",
    "course": "the course's flip + random resized crop (10-100%, ratio 0.5-2) + brightness/contrast jitter 0.5",
    "erase": "flip-crop, then random erasing (p 0.5, 2-20% of the area)",
}
DEFAULT_PRESET = "flip-crop"


def presets_help() -> str:
    """The presets for an argparse help string (which argparse %-formats, so
    the percentages are escaped)."""
    return "; ".join(f"{name}: {text}" for name, text in PRESET_HELP.items()).replace("%", "%%")


def _v2():
    try:
        from torchvision.transforms import v2
    except ImportError as error:  # pragma: no cover -- torchvision is a dependency
        raise ImportError(f"augmentation presets need torchvision ({error}); pip install torchvision") from None
    return v2


class Augmentation:
    """A preset: callable on a uint8 batch with the batch's seed."""

    def __init__(self, name: str, per_image: Optional[Callable] = None, flip_crop_first: bool = False):
        self.name = name
        self.per_image = per_image  # a torchvision transform of one (C, H, W) image
        self.flip_crop_first = flip_crop_first

    def __repr__(self) -> str:
        return f"Augmentation({self.name!r})"

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"augmentation takes a uint8 (N, C, H, W) batch, got {images.dtype} "
                             f"{tuple(images.shape)}")
        from pycnn.data import augment_batch

        if self.flip_crop_first:
            images = augment_batch(images.cpu(), torch.Generator().manual_seed(seed)).to(images.device)
        if self.per_image is None or len(images) == 0:
            return images
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.per_image(image) for image in images])


def _presets() -> Dict[str, Callable[[tuple], Optional[Augmentation]]]:
    def course(size):
        v2 = _v2()
        return Augmentation("course", v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomResizedCrop(size, scale=(0.1, 1.0), ratio=(0.5, 2.0), antialias=True),
            v2.ColorJitter(brightness=0.5, contrast=0.5),
        ]))

    def erase(size):
        v2 = _v2()
        return Augmentation("erase", v2.RandomErasing(p=0.5, scale=(0.02, 0.2), value=0), flip_crop_first=True)

    return {
        "none": lambda size: None,
        "flip-crop": lambda size: Augmentation("flip-crop", flip_crop_first=True),
        "flip": lambda size: Augmentation("flip", _v2().RandomHorizontalFlip()),
        "course": course,
        "erase": erase,
    }


def make_augmentation(preset, size=(28, 28)) -> Optional[Augmentation]:
    """The augmentation of `preset` (a name; True means the default, False or
    None no augmentation) for images of `size` (H, W); None when it does nothing."""
    if preset is None or preset is False:
        return None
    if preset is True:
        preset = DEFAULT_PRESET
    presets = _presets()
    if preset not in presets:
        raise ValueError(f"unknown augmentation preset {preset!r}; the presets: {', '.join(presets)}")
    return presets[preset](tuple(size))


__all__ = ["Augmentation", "DEFAULT_PRESET", "PRESET_HELP", "make_augmentation"]
