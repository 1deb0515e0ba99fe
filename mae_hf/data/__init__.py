"""Data for the training scripts: loading (Hub, local folders, built-in demo sets), image checks, transforms."""

from .digits import load_digits_dataset
from .images import find_image_column, to_model_mode, verify_images
from .loading import load_image_datasets
from .transforms import IMAGENET_MEAN, IMAGENET_STD, collate_pixel_values, eval_transform, pretrain_transform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "collate_pixel_values",
    "eval_transform",
    "find_image_column",
    "load_digits_dataset",
    "load_image_datasets",
    "pretrain_transform",
    "to_model_mode",
    "verify_images",
]
