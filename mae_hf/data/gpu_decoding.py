"""`--image_decoding gpu`: dataloader workers only read the encoded files and draw crop + flip; the main process
decodes the whole batch with nvJPEG (`torchvision.io.decode_jpeg(list, device="cuda")`) and crops, resizes
(bicubic, antialiased), flips and normalises on the device, so the CPU no longer bounds images/s.
The same code runs on the CPU device, which is how the tests check it against the CPU fast path."""

import numpy as np
import torch
import torchvision
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as F

from .encoded import BICUBIC, CropFlipDraw, as_uint8_tensor, libjpeg_decodable, open_encoded
from .normalise import IMAGENET_MEAN, IMAGENET_STD, Normalize


class EncodedCropFlip:
    """The worker half: {'encoded_image', 'crop', 'flip'} per image. JPEG bytes stay encoded; files nvJPEG cannot
    take (other formats, CMYK, EXIF-rotated) are decoded here to a (C, H, W) uint8 array."""

    def __init__(self, size, min_scale: float = 0.2, flip: float = 0.5, num_channels: int = 3):
        size_hw = (size, size) if isinstance(size, int) else tuple(size)
        self.draw, self.num_channels = CropFlipDraw(size_hw, min_scale, flip), num_channels

    def __call__(self, value) -> dict:
        image, data = open_encoded(value)
        crop, flip = self.draw(image)
        if libjpeg_decodable(image, data):
            encoded = np.frombuffer(data, dtype=np.uint8)
        else:
            encoded = as_uint8_tensor(image, self.num_channels).numpy()
        box = np.array([crop["top"], crop["left"], crop["height"], crop["width"]])
        return {"encoded_image": encoded, "crop": box, "flip": flip}


def collate_encoded(examples: list[dict]) -> dict:
    """A batch of `EncodedCropFlip` outputs. Bytes and boxes stay numpy arrays: accelerate moves tensors to the
    GPU, but nvJPEG reads encoded bytes from host memory, and the boxes are read on the host (no device sync)."""
    batch = {
        "encoded_images": [example["pixel_values"]["encoded_image"] for example in examples],
        "crops": np.stack([example["pixel_values"]["crop"] for example in examples]),
        "flips": torch.tensor([example["pixel_values"]["flip"] for example in examples]),
    }
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch


class GPUImageDecoder:
    """The device half: `(encoded_images, crops, flips)` -> (B, C, H, W) normalised float32 pixel_values."""

    def __init__(self, size, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_channels: int = 3):
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.read_mode = ImageReadMode.GRAY if num_channels == 1 else ImageReadMode.RGB
        self.normalize = Normalize(mean, std)

    def decode(self, encoded: list[np.ndarray], device) -> list[torch.Tensor]:
        jpegs = [i for i, array in enumerate(encoded) if array.ndim == 1]
        images = [torch.from_numpy(array).to(device) if array.ndim == 3 else None for array in encoded]
        if jpegs:
            data = [torch.frombuffer(bytearray(encoded[i]), dtype=torch.uint8) for i in jpegs]  # writable copies
            for i, image in zip(jpegs, torchvision.io.decode_jpeg(data, mode=self.read_mode, device=device)):
                images[i] = image
        return images

    def __call__(self, encoded: list[np.ndarray], crops: np.ndarray, flips: torch.Tensor, device) -> torch.Tensor:
        images = self.decode(encoded, device)
        pixels = torch.stack(
            [  # boxes differ per image: one resize each (small kernels on a GPU)
                F.resized_crop(image, top, left, height, width, self.size, interpolation=BICUBIC, antialias=True)
                for image, (top, left, height, width) in zip(images, crops.tolist())
            ]
        )
        flips = flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
        return self.normalize(torch.where(flips, pixels.flip(-1), pixels))
