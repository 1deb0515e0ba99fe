"""Data for the training scripts: loading (Hub, local folders, built-in demo sets), column finding, image and label
checks, transforms, collators.

Each module imports only modules listed before it (tests/test_data_layout.py checks there is no cycle): columns,
normalise, images, labels, encoded (decode primitives), collate, transforms, gpu_decoding, decoding (the
`--image_decoding` dispatcher), digits, digits_seg, loading, mixing, seeding."""

from .collate import collate_pixel_values, collate_segmentation, collate_segmentation_with_sizes
from .columns import find_image_column, find_label_column, find_segmentation_columns
from .digits import load_digits_dataset
from .digits_seg import DIGITS_SEG_LABELS, load_digits_seg_dataset
from .images import to_model_mode, verify_images
from .labels import (
    ADE20K_LABELS,
    check_annotations,
    check_labels,
    class_balanced_subset,
    class_id_labels,
    label_names,
    reduce_labels_map,
)
from .loading import load_ade_folder, load_image_datasets, load_segmentation_datasets
from .mixing import MixupCollator
from .normalise import IMAGENET_MEAN, IMAGENET_STD, Normalize, normalisation
from .transforms import (
    ImageTransform,
    SegmentationBatchTransform,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    eval_transform,
    finetune_transform,
    pretrain_transform,
)

__all__ = [
    "ADE20K_LABELS",
    "DIGITS_SEG_LABELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransform",
    "MixupCollator",
    "Normalize",
    "SegmentationBatchTransform",
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "check_annotations",
    "check_labels",
    "class_balanced_subset",
    "class_id_labels",
    "collate_pixel_values",
    "collate_segmentation",
    "collate_segmentation_with_sizes",
    "eval_transform",
    "find_image_column",
    "find_label_column",
    "find_segmentation_columns",
    "finetune_transform",
    "label_names",
    "load_ade_folder",
    "load_digits_dataset",
    "load_digits_seg_dataset",
    "load_image_datasets",
    "load_segmentation_datasets",
    "normalisation",
    "pretrain_transform",
    "reduce_labels_map",
    "to_model_mode",
    "verify_images",
]
