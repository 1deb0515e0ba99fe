"""Encoded images to uint8 tensors, the primitives of the fast input pipelines (`decoding.py`, `gpu_decoding.py`):
opening without decoding, drawing the crop from the header's size, reduced-scale JPEG decoding and the choice
between PIL and torchvision's libjpeg-turbo / nvJPEG decoders. Imports no other decoding module."""

import io
from pathlib import Path

import numpy as np
import torch
import torchvision
from datasets.utils.file_utils import xopen
from PIL import Image as PILImage
from torchvision.io import ImageReadMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .images import to_model_mode, upright

BICUBIC = v2.InterpolationMode.BICUBIC


def open_encoded(value) -> tuple[PILImage.Image, bytes | None]:
    """A lazily opened image (header read, nothing decoded) and its encoded bytes, from a
    `datasets.Image(decode=False)` value, a path (local or remote, as `datasets` opens it), bytes or a PIL image.

    Images with an EXIF orientation are turned upright as `datasets.Image` does, which decodes them here (bytes
    then None: the crop is drawn on the upright size and no reduced-scale decode applies)."""
    if isinstance(value, PILImage.Image):
        return value, None
    if isinstance(value, dict):
        data = value.get("bytes") or _read(value["path"])
    elif isinstance(value, (str, Path)):
        data = _read(str(value))
    elif isinstance(value, (bytes, bytearray)):
        data = value
    else:
        raise TypeError(
            f"expected encoded image bytes, a path, a {{'bytes', 'path'}} dict or a PIL image, got "
            f"{type(value).__name__}"
        )
    image = PILImage.open(io.BytesIO(data))
    turned = upright(image)
    return (image, data) if turned is image else (turned, None)


def _read(path: str) -> bytes:
    with xopen(path, "rb") as file:  # local files, hf://, zip:// and URLs, like datasets' own decoding
        return file.read()


# libjpeg's 1/s decode is a weaker low-pass than bicubic antialiasing (and slightly softer near the output's
# Nyquist): with the reduced crop kept at >= 3x the output, the bicubic resize still shapes the result. Measured on
# 1024 px JPEGs (tests/test_decoding.py), output pixel std vs the plain pipeline's: 64 px 1.002, 32 px 0.989 (mean
# |difference| under 0.8 of 255); with 2x headroom 0.993 / 0.978, with 1x 0.94 at 64 px.
DCT_HEADROOM = 3


def _dct_scale(image: PILImage.Image, crop_hw: tuple[int, int], size_hw: tuple[int, int]) -> int:
    """The largest of 8, 4, 2 (else 1) by which this JPEG can be decoded, the crop staying >= DCT_HEADROOM x
    the output."""
    if image.format != "JPEG":
        return 1
    for scale in (8, 4, 2):
        if min(crop_hw[0] / size_hw[0], crop_hw[1] / size_hw[1]) >= DCT_HEADROOM * scale:
            return scale
    return 1


def as_uint8_tensor(image: PILImage.Image, num_channels: int) -> torch.Tensor:
    """(C, H, W) uint8, one copy out of PIL."""
    return (
        torch.from_numpy(np.array(to_model_mode(image, num_channels), copy=True))
        .view(image.height, image.width, num_channels)
        .permute(2, 0, 1)
    )


def libjpeg_decodable(image: PILImage.Image, data: bytes | None) -> bool:
    """Encoded YCbCr or grayscale JPEG bytes, which torchvision's decoder (CPU or nvJPEG) takes as they are; CMYK and
    other formats go through PIL."""
    return data is not None and image.format == "JPEG" and image.mode in ("RGB", "L")


def decode_crop(image: PILImage.Image, data: bytes | None, crop: dict, size_hw: tuple, num_channels: int = 3):
    """The (C, *size_hw) uint8 crop (top/left/height/width in full-size pixels, bicubic, antialiased) of a lazily
    opened `image` (its encoded `data` when known), decoded at the smallest DCT scale the crop allows."""
    scale = _dct_scale(image, (crop["height"], crop["width"]), size_hw) if data is not None else 1  # else decoded
    if scale > 1:
        image.draft("L" if num_channels == 1 else "RGB", (image.width // scale, image.height // scale))
        # The crop in reduced pixels is fractional: PIL resamples a float box exactly (torch needs whole pixels).
        box = [crop["left"], crop["top"], crop["left"] + crop["width"], crop["top"] + crop["height"]]
        image = to_model_mode(image, num_channels).resize(
            size_hw[::-1], PILImage.Resampling.BICUBIC, box=[edge / scale for edge in box]
        )
        return as_uint8_tensor(image, num_channels)
    if libjpeg_decodable(image, data):
        read_mode = ImageReadMode.GRAY if num_channels == 1 else ImageReadMode.RGB
        pixels = torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode)
    else:
        pixels = as_uint8_tensor(image, num_channels)
    return F.resized_crop(pixels, **crop, size=list(size_hw), interpolation=BICUBIC, antialias=True)


class CropFlipDraw:
    """RandomResizedCrop's box (torchvision's own draw, same random stream) and a flip decision (as
    v2.RandomHorizontalFlip), from the image size alone."""

    def __init__(self, size_hw: tuple, min_scale: float = 0.2, flip: float = 0.5):
        self.crop = v2.RandomResizedCrop(size_hw, scale=(min_scale, 1.0), interpolation=BICUBIC)
        self.flip = flip

    def __call__(self, image: PILImage.Image) -> tuple[dict, bool]:
        return self.crop.make_params([image]), bool(torch.rand(1) < self.flip)
