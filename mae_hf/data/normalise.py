"""Normalisation: the ImageNet mean / std (per channel count) and the one uint8 -> normalised float32 conversion
that every input pipeline (PIL, fast, GPU, segmentation) applies."""

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalisation(num_channels: int) -> tuple[tuple, tuple]:
    """ImageNet mean/std; models on 1-channel (or other) images use their channel average."""
    if num_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,) * num_channels, (sum(IMAGENET_STD) / 3,) * num_channels


class Normalize:
    """uint8 (..., C, H, W) (a tensor or a `tv_tensors.Image`, on any device) -> float32 (x / 255 - mean) / std.

    Fused: (x - 255 mean) * (1 / (255 std)), in place on the one float copy -- a quarter of the time of torchvision's
    `ToDtype(scale=True)` + `Normalize` (within 1e-6 of it), with the constants copied to each device once (a copy
    per call would make the GPU pipeline sync)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if not all(std):
            raise ValueError(f"std must not be 0, got {tuple(std)}")
        mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        scale = 1.0 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0)
        self.constants = {torch.device("cpu"): (mean, scale)}

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            raise TypeError(f"Normalize takes uint8 pixels, got {pixels.dtype}")
        if pixels.device not in self.constants:
            self.constants[pixels.device] = tuple(t.to(pixels.device) for t in self.constants[torch.device("cpu")])
        mean, scale = self.constants[pixels.device]
        return pixels.float().sub_(mean).mul_(scale)
