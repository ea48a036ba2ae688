"""An image file -> a model input, the way training prepares Fashion-MNIST
(the server's classify endpoint), with numpy and Pillow only: the server
process imports neither torch nor pycnn.

    x = image_to_input(png_bytes, (28, 28))    # float32 (1, 1, 28, 28) in [0, 1]

Any size, colour or grey, PNG or JPEG (or anything else Pillow decodes) becomes
a Fashion-MNIST-like picture first: turned upright (EXIF orientation), alpha
composited onto black, converted to grey (ITU-R 601-2 luma; 16-bit grey scaled
to 8 bits), padded to a square
with black, and resized to 28x28 with Pillow's antialiased bilinear filter.
From there it is the training transform, pycnn.data.prepare_images: scaled to
[0, 1] and resized bilinearly (align_corners=False, no antialiasing, as
torch.nn.functional.interpolate) to the model's input size. A 28x28 grey PNG
of a test image therefore gives the very tensor the model saw in testing: the
same bits at 28x28; resized, the same interpolation weights, bit for bit, and
values that can differ from torch's in the last bit or two (torch's CPU kernel
fuses its multiply-adds differently on each instruction set).

Fashion-MNIST garments are light on a black background; a photo of a dark
garment on white should be inverted before it is sent.
"""
from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from export.serve.protocol import ProtocolError

# Fashion-MNIST's image size (pycnn.data.IMAGE_HW; a test keeps the two equal).
IMAGE_HW = (28, 28)

# Refuse decompression bombs well before Pillow's own limit (about 179M pixels).
MAX_PIXELS = 50_000_000


def decode(data: bytes) -> Image.Image:
    """The decoded image, or a ProtocolError saying why not."""
    if not data:
        raise ProtocolError("the request has no image (send the file as the body or as a multipart 'file' field)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ProtocolError(f"the body ({len(data)} bytes) is not an image Pillow can decode; send a PNG or JPEG") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ProtocolError(f"the image is {width}x{height} pixels; at most {MAX_PIXELS:,} pixels are accepted")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ProtocolError(f"the {image.format or ''} image does not decode: {error}".replace("  ", " ")) from None
    return image


def to_fashion_mnist(image: Image.Image) -> np.ndarray:
    """uint8 (28, 28): upright, alpha over black, grey, padded square, resized."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grey (PNG): Pillow's conversion to L clips at 255; scale instead.
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(wide / 257).clip(0, 255).astype(np.uint8) if wide.max() > 255
                                else wide.astype(np.uint8), "L")
    grey = image.convert("L")
    side = max(grey.size)
    if grey.size != (side, side):
        square = Image.new("L", (side, side), 0)
        square.paste(grey, ((side - grey.width) // 2, (side - grey.height) // 2))
        grey = square
    if grey.size != IMAGE_HW[::-1]:
        grey = grey.resize(IMAGE_HW[::-1], Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.uint8)


def bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """float32 (size_out, size_in): row i holds the two weights with which
    output pixel i mixes its input neighbours (align_corners=False).

    The source coordinate is scale * (i + 0.5) - 0.5 in float32, rounded once
    (float64 holds the exact product), as torch's kernel computes it with one
    fused multiply-add; clamped at 0 on the left, repeated at the right edge.
    """
    scale = np.float32(size_in) / np.float32(size_out)
    source = (np.float64(scale) * (np.arange(size_out) + 0.5) - 0.5).astype(np.float32)
    source = np.maximum(source, np.float32(0))
    left = source.astype(np.int64)
    right = np.minimum(left + 1, size_in - 1)
    right_weight = source - left.astype(np.float32)
    weights = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    weights[rows, left] = np.float32(1) - right_weight
    weights[rows, right] += right_weight  # at the right edge both are the same pixel
    return weights


def resize_bilinear(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """float32 (H, W) -> (size[0], size[1]), bilinear, clamped to [0, 1]."""
    height, width = image.shape
    if (height, width) == tuple(size):
        return image
    rows = bilinear_weights(height, size[0])
    columns = bilinear_weights(width, size[1])
    return np.clip(rows @ image @ columns.T, 0.0, 1.0)


def image_to_input(data: bytes, size: Sequence[int]) -> np.ndarray:
    """float32 (1, 1, H, W) for a model whose input is 1 x H x W."""
    pixels = to_fashion_mnist(decode(data)).astype(np.float32) / np.float32(255)
    return resize_bilinear(pixels, tuple(size))[None, None].astype(np.float32, copy=False)


def input_png(plane: np.ndarray) -> str:
    """A model input plane (float32 H x W in [0, 1]) as a grey PNG, base64: what the model sees."""
    pixels = np.round(np.clip(plane, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
