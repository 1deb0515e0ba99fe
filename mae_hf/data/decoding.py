"""A faster pretraining input pipeline: encoded image -> RandomResizedCrop + flip + normalise, with the same output
distribution as `pretrain_transform` on PIL images, in 0.5-0.6x the time per worker.

Where the time goes in the plain pipeline (`datasets` decodes to PIL, torchvision v2 on PIL, 500x375 JPEG of
~90 KB, 224 px, one thread): decode 1.4-2.3 ms (entropy decoding dominates; libjpeg's 1/2-scale decode saves only
~13 % of it), PIL crop + bicubic resize 1.0 ms, to-tensor + scale + normalise 0.6 ms. Here:
- the crop is drawn from the header's size before decoding, so a JPEG whose crop is at least 6x the output
  size is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (PIL `draft`); the exact (fractional) crop
  box is resampled from the reduced image, which keeps >= 3x the output resolution (see DCT_HEADROOM). At 224 px
  that needs crops of >= 1344 px: high-resolution datasets, rarely ImageNet;
- other JPEGs are decoded by torchvision's libjpeg-turbo decoder straight into a uint8 tensor;
- crop + bicubic antialiased resize + flip run on uint8 tensors (torch's vectorised kernels), and the float
  conversion and normalisation are one pass over the 224x224 output instead of three.
The crop parameters come from torchvision's own `RandomResizedCrop.make_params` on the same random generator, so
a seeded run crops exactly where the plain pipeline would.
`GPUImageDecoder` is the option that moves decoding, crop, flip and normalisation onto the GPU: workers then
only read the encoded bytes and draw the crop and flip.
"""

import io
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image as PILImage
from torchvision.io import ImageReadMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .images import to_model_mode
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, pretrain_transform

BICUBIC = v2.InterpolationMode.BICUBIC


def _open(value) -> tuple[PILImage.Image, bytes | None]:
    """A lazily opened image (header only) from a `datasets.Image(decode=False)` value, a path or a PIL image."""
    if isinstance(value, PILImage.Image):
        return value, None
    if isinstance(value, dict):
        data = value.get("bytes") or Path(value["path"]).read_bytes()
    elif isinstance(value, (str, Path)):
        data = Path(value).read_bytes()
    elif isinstance(value, (bytes, bytearray)):
        data = value
    else:
        raise TypeError(f"expected encoded image bytes, a path, a {{'bytes', 'path'}} dict or a PIL image, got "
                        f"{type(value).__name__}")
    return PILImage.open(io.BytesIO(data)), data


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


def _as_uint8_tensor(image: PILImage.Image, num_channels: int) -> torch.Tensor:
    """(C, H, W) uint8, one copy out of PIL."""
    return torch.from_numpy(np.array(to_model_mode(image, num_channels), copy=True)).view(
        image.height, image.width, num_channels
    ).permute(2, 0, 1)


def decode_crop(image: PILImage.Image, data: bytes | None, crop: dict, size_hw: tuple, num_channels: int = 3):
    """The (C, *size_hw) uint8 crop (top/left/height/width in full-size pixels, bicubic, antialiased) of a lazily
    opened `image` (its encoded `data` when known), decoded at the smallest DCT scale the crop allows."""
    scale = _dct_scale(image, (crop["height"], crop["width"]), size_hw)
    if scale > 1:
        image.draft("L" if num_channels == 1 else "RGB", (image.width // scale, image.height // scale))
        # The crop in reduced pixels is fractional: PIL resamples a float box exactly (torch needs whole pixels).
        box = [crop["left"], crop["top"], crop["left"] + crop["width"], crop["top"] + crop["height"]]
        image = to_model_mode(image, num_channels).resize(
            size_hw[::-1], PILImage.Resampling.BICUBIC, box=[edge / scale for edge in box]
        )
        return _as_uint8_tensor(image, num_channels)
    if data is not None and image.format == "JPEG" and image.mode in ("RGB", "L"):
        read_mode = ImageReadMode.GRAY if num_channels == 1 else ImageReadMode.RGB
        pixels = torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode)
    else:
        pixels = _as_uint8_tensor(image, num_channels)
    return F.resized_crop(pixels, **crop, size=list(size_hw), interpolation=BICUBIC, antialias=True)


class Normalize:
    """uint8 (..., C, H, W) -> float32 (x / 255 - mean) / std in one pass over the output."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        self.scale = 1.0 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, scale = self.mean.to(pixels.device), self.scale.to(pixels.device)
        return pixels.float().sub_(mean).mul_(scale)


class FastRandomResizedCrop:
    """`pretrain_transform` (RandomResizedCrop(scale, bicubic) + flip + normalise) on encoded images."""

    def __init__(self, size, mean=IMAGENET_MEAN, std=IMAGENET_STD, min_scale: float = 0.2, flip: float = 0.5,
                 num_channels: int = 3):
        self.size_hw = (size, size) if isinstance(size, int) else tuple(size)
        self.crop = v2.RandomResizedCrop(self.size_hw, scale=(min_scale, 1.0), interpolation=BICUBIC)
        self.flip, self.num_channels = flip, num_channels
        self.normalize = Normalize(mean, std)

    def draw(self, image: PILImage.Image) -> tuple[dict, bool]:
        """The crop (torchvision's draw, same random stream) and whether to flip (as v2.RandomHorizontalFlip)."""
        crop = self.crop.make_params([image])
        return crop, bool(torch.rand(1) < self.flip)

    def __call__(self, value) -> torch.Tensor:
        image, data = _open(value)
        crop, flip = self.draw(image)
        pixels = decode_crop(image, data, crop, self.size_hw, self.num_channels)
        return self.normalize(pixels.flip(-1) if flip else pixels)


class EncodedImageTransform(ImageTransform):
    """`ImageTransform` for a column cast to `datasets.Image(decode=False)`: the transform gets the encoded value."""

    def prepare(self, value):
        return value


def pretrain_image_transform(decoding: str, column: str, size, mean, std, min_scale, flip, num_channels):
    """The training batch transform for `--image_decoding` pil | fast | gpu (see the module docstring)."""
    if decoding == "pil":
        return ImageTransform(pretrain_transform(size, mean, std, min_scale, flip), column, num_channels)
    if decoding not in ("fast", "gpu"):
        raise ValueError(f"--image_decoding must be pil, fast or gpu, got {decoding!r}")
    crop_cls = FastRandomResizedCrop if decoding == "fast" else EncodedCropFlip
    return EncodedImageTransform(crop_cls(size, mean, std, min_scale, flip, num_channels), column, num_channels)


class EncodedCropFlip(FastRandomResizedCrop):
    """The worker half of the GPU pipeline: reads the encoded bytes and draws crop and flip, decodes nothing that
    the GPU can decode (non-JPEG or CMYK files are decoded here, to uint8)."""

    def __call__(self, value) -> dict:
        image, data = _open(value)
        crop, flip = self.draw(image)
        if data is not None and image.format == "JPEG" and image.mode in ("RGB", "L"):
            encoded = np.frombuffer(data, dtype=np.uint8)  # 1-D: decoded on the device
        else:
            encoded = _as_uint8_tensor(image, self.num_channels).numpy()  # (C, H, W)
        box = np.array([crop["top"], crop["left"], crop["height"], crop["width"]])
        return {"encoded_image": encoded, "crop": box, "flip": flip}


def collate_encoded(examples: list[dict]) -> dict:
    """Batch of `EncodedCropFlip` outputs. Bytes and boxes stay numpy arrays: accelerate moves tensors to the GPU,
    and nvJPEG reads encoded bytes from host memory; the boxes are read on the host (no device sync)."""
    batch = {
        "encoded_images": [example["pixel_values"]["encoded_image"] for example in examples],
        "crops": np.stack([example["pixel_values"]["crop"] for example in examples]),
        "flips": torch.tensor([example["pixel_values"]["flip"] for example in examples]),
    }
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch


class GPUImageDecoder:
    """The device half: nvJPEG decodes the whole batch at once (`torchvision.io.decode_jpeg(list, device=...)`),
    then crop + bicubic resize, flip and normalise run on the device. Works on the CPU as well (tests)."""

    def __init__(self, size, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_channels: int = 3):
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.read_mode = ImageReadMode.GRAY if num_channels == 1 else ImageReadMode.RGB
        self.normalize = Normalize(mean, std)

    def decode(self, encoded: list[np.ndarray], device) -> list[torch.Tensor]:
        jpegs = [i for i, array in enumerate(encoded) if array.ndim == 1]
        images = [torch.from_numpy(array).to(device) if array.ndim == 3 else None for array in encoded]
        if jpegs:
            data = [torch.frombuffer(bytearray(encoded[i]), dtype=torch.uint8) for i in jpegs]
            decoded = torchvision.io.decode_jpeg(data, mode=self.read_mode, device=device)
            for i, image in zip(jpegs, decoded):
                images[i] = image
        return images

    def __call__(self, encoded: list[np.ndarray], crops: np.ndarray, flips: torch.Tensor, device) -> torch.Tensor:
        """(B, C, H, W) normalised float32 on `device`."""
        images = self.decode(encoded, device)
        crops = crops.tolist()  # boxes differ per image: one resize each (small kernels on the GPU)
        pixels = torch.stack([
            F.resized_crop(image, top, left, height, width, self.size, interpolation=BICUBIC, antialias=True)
            for image, (top, left, height, width) in zip(images, crops)
        ])
        flips = flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
        return self.normalize(torch.where(flips, pixels.flip(-1), pixels))
