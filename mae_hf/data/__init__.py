"""Data for the training scripts: loading (Hub, local folders, built-in demo sets), image checks, transforms."""

from .digits import load_digits_dataset
from .digits_seg import DIGITS_SEG_LABELS, load_digits_seg_dataset
from .images import find_image_column, to_model_mode, verify_images
from .labels import check_labels, class_balanced_subset, find_label_column, label_names
from .loading import load_image_datasets
from .mixing import MixupCollator
from .segmentation import (
    ADE20K_LABELS,
    SegmentationBatchTransform,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    check_annotations,
    collate_segmentation,
    collate_segmentation_with_sizes,
    load_ade_folder,
    load_segmentation_datasets,
    reduce_labels_map,
)
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
    "ADE20K_LABELS",
    "DIGITS_SEG_LABELS",
    "SegmentationBatchTransform",
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "check_annotations",
    "collate_segmentation",
    "collate_segmentation_with_sizes",
    "load_ade_folder",
    "load_digits_seg_dataset",
    "load_segmentation_datasets",
    "reduce_labels_map",
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
