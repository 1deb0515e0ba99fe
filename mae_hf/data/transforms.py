"""torchvision v2 transforms for MAE pretraining and evaluation, applied lazily (in dataloader workers)."""

import torch
from torchvision.transforms import v2

from .images import to_model_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalisation(num_channels: int) -> tuple[tuple, tuple]:
    """ImageNet mean/std; models on 1-channel (or other) images use their channel average."""
    if num_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,) * num_channels, (sum(IMAGENET_STD) / 3,) * num_channels


def _to_tensor(mean, std) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def pretrain_transform(
    image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, min_scale: float = 0.2, flip: float = 0.5
) -> v2.Compose:
    """The official MAE augmentation: RandomResizedCrop(scale=(min_scale, 1), bicubic) + horizontal flip."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(flip),
            *_to_tensor(mean, std),
        ]
    )


def eval_transform(image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 1.0) -> v2.Compose:
    """Resize the shorter side to image_size / crop_pct, then centre-crop image_size (fine-tuning evaluation:
    crop_pct 0.875, i.e. 256 -> 224)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return v2.Compose(
        [
            v2.Resize(int(min(height, width) / crop_pct), interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop((height, width)),
            *_to_tensor(mean, std),
        ]
    )


class RandAugmentMstd(v2.RandAugment):
    """timm's `rand-m9-mstd0.5`, which the official fine-tuning uses, on torchvision's RandAugment: each image
    draws its magnitude from N(magnitude, magnitude_std) clipped to [0, 10]. torchvision's RandAugment has a fixed
    magnitude only; its ops and their ranges (shear 0.3, translate 0.45, rotate 30, enhance 0.9...) are timm's."""

    def __init__(self, magnitude: float = 9.0, magnitude_std: float = 0.5, num_ops: int = 2):
        super().__init__(num_ops=num_ops, magnitude=round(magnitude * 10), num_magnitude_bins=101)  # 0.1 steps
        self.mean_magnitude, self.magnitude_std = magnitude, magnitude_std

    def forward(self, *inputs):
        drawn = self.mean_magnitude + self.magnitude_std * float(torch.randn(()))
        self.magnitude = round(min(10.0, max(0.0, drawn)) * 10)
        return super().forward(*inputs)


def finetune_transform(
    image_size,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    min_scale: float = 0.08,
    rand_augment_magnitude: float | None = 9.0,
    rand_augment_std: float = 0.5,
    random_erasing: float = 0.25,
    flip: float = 0.5,
) -> v2.Compose:
    """The official fine-tuning augmentation (timm `create_transform` as main_finetune.py calls it):
    RandomResizedCrop(0.08-1, bicubic) + flip + RandAugment(m9, mstd 0.5) + normalise + RandomErasing(0.25,
    per-pixel random values). No RandAugment / erasing when their settings are None / 0 (linear probing)."""
    steps = [
        v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(flip),
    ]
    if rand_augment_magnitude:
        steps.append(RandAugmentMstd(rand_augment_magnitude, rand_augment_std))
    steps += _to_tensor(mean, std)
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(steps)


class ImageTransform:
    """A `datasets` batch transform: PIL images in `column` -> `pixel_values` tensors, and `label_column` ->
    `labels` when given (other columns dropped)."""

    def __init__(self, transform, column: str, num_channels: int = 3, label_column: str | None = None):
        self.transform, self.column, self.num_channels = transform, column, num_channels
        self.label_column = label_column

    def prepare(self, image):
        return to_model_mode(image, self.num_channels)

    def __call__(self, batch: dict) -> dict:
        out = {"pixel_values": [self.transform(self.prepare(image)) for image in batch[self.column]]}
        if self.label_column is not None:
            out["labels"] = batch[self.label_column]
        return out


def collate_pixel_values(examples: list[dict]) -> dict:
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch
