"""Data for the training scripts: loading (Hub, local folders, built-in demo sets), image checks, transforms."""

from .digits import load_digits_dataset
from .images import find_image_column, to_model_mode, verify_images
from .labels import check_labels, class_balanced_subset, find_label_column, label_names
from .loading import load_image_datasets
from .mixing import MixupCollator
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    collate_pixel_values,
    eval_transform,
    finetune_transform,
    normalisation,
    pretrain_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransform",
    "MixupCollator",
    "check_labels",
    "class_balanced_subset",
    "collate_pixel_values",
    "eval_transform",
    "find_image_column",
    "find_label_column",
    "finetune_transform",
    "label_names",
    "normalisation",
    "load_digits_dataset",
    "load_image_datasets",
    "pretrain_transform",
    "to_model_mode",
    "verify_images",
]
