"""A faster pretraining input pipeline: encoded image -> RandomResizedCrop + flip + normalise, with the same output
distribution as `pretrain_transform` on PIL images, at 1.6-2x its images/s per worker (BENCHMARKS.md).

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
`gpu_decoding.py` holds the option that moves decoding, crop, flip and normalisation onto the GPU: workers then
only read the encoded bytes and draw the crop and flip. Both build on the primitives in `encoded.py`; this module
holds the CPU fast transform and the `--image_decoding` dispatcher above the three pipelines.
"""

import torch

from .encoded import CropFlipDraw, decode_crop, open_encoded
from .gpu_decoding import EncodedCropFlip
from .normalise import IMAGENET_MEAN, IMAGENET_STD, Normalize
from .transforms import ImageTransform, pretrain_transform


class FastRandomResizedCrop:
    """`pretrain_transform` (RandomResizedCrop(scale, bicubic) + flip + normalise) on encoded images."""

    def __init__(
        self,
        size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        min_scale: float = 0.2,
        flip: float = 0.5,
        num_channels: int = 3,
    ):
        self.size_hw = (size, size) if isinstance(size, int) else tuple(size)
        self.draw = CropFlipDraw(self.size_hw, min_scale, flip)
        self.num_channels = num_channels
        self.normalize = Normalize(mean, std)

    def __call__(self, value) -> torch.Tensor:
        image, data = open_encoded(value)
        crop, flip = self.draw(image)
        pixels = decode_crop(image, data, crop, self.size_hw, self.num_channels)
        return self.normalize(pixels.flip(-1) if flip else pixels)


class EncodedImageTransform(ImageTransform):
    """`ImageTransform` for a column cast to `datasets.Image(decode=False)`: the transform gets the encoded value."""

    def prepare(self, value):
        return value


def pretrain_image_transform(
    decoding: str, column: str, size, mean, std, *, min_scale: float, flip: float, num_channels: int
) -> ImageTransform:
    """The training batch transform for `--image_decoding` pil | fast | gpu (see the module docstring)."""
    if decoding == "pil":
        return ImageTransform(pretrain_transform(size, mean, std, min_scale, flip), column, num_channels)
    if decoding == "fast":
        transform = FastRandomResizedCrop(size, mean, std, min_scale, flip, num_channels)
    elif decoding == "gpu":
        transform = EncodedCropFlip(size, min_scale, flip, num_channels)
    else:
        raise ValueError(f"--image_decoding must be pil, fast or gpu, got {decoding!r}")
    return EncodedImageTransform(transform, column, num_channels)
