#!/usr/bin/env python
"""What a `digits_seg` training crop contains, measured: the real training transform (random rescale, random crop,
padding) applied to the real canvases, then every digit in the crop found as a connected stroke region.

    python experiments/digits_seg_crops.py            # the old demo's settings vs those of configs/segment_digits.yaml

Per setting: the height of the digits in the crops (px; the source digits are 8 px), the share of digits cut by the
crop border, the share of crops without any digit pixel, and the share of padding (ignored) pixels.
"""

import argparse

import numpy as np
import torch
import yaml
from scipy import ndimage

from mae_hf.data import SegmentationTrainTransform, digits_seg, load_digits_seg_dataset

# The settings of the demo before issue 11: 64 px canvases of 12-28 px digits, rescaled to fit (128, 32) x U(0.5, 2)
# (canvas 16-64 px), 32 px crops.
OLD = {
    "canvas": 64,
    "digit_sizes": (12, 28),
    "crop_size": 32,
    "resize_scale": (128, 32),
    "ratio_range": (0.5, 2.0),
    "cat_max_ratio": 0.75,
}


def current(config_path: str) -> dict:
    with open(config_path) as f:
        config = yaml.safe_load(f)
    return {
        "canvas": digits_seg.CANVAS,
        "digit_sizes": digits_seg.DIGIT_SIZES,
        "crop_size": config["crop_size"],
        "resize_scale": tuple(config["resize_scale"]),
        "ratio_range": tuple(config["ratio_range"]),
        "cat_max_ratio": config["cat_max_ratio"],
    }


def measure(setting: dict, crops: int, seed: int = 0) -> dict:
    """Statistics of `crops` training crops under `setting` (canvas and transform settings)."""
    saved = digits_seg.CANVAS, digits_seg.DIGIT_SIZES
    digits_seg.CANVAS, digits_seg.DIGIT_SIZES = setting["canvas"], setting["digit_sizes"]
    try:
        train = load_digits_seg_dataset()["train"]
    finally:
        digits_seg.CANVAS, digits_seg.DIGIT_SIZES = saved
    transform = SegmentationTrainTransform(
        setting["crop_size"],
        scale=setting["resize_scale"],
        ratio_range=setting["ratio_range"],
        cat_max_ratio=setting["cat_max_ratio"],
        flip=0.0,
        photometric=False,
    )
    torch.manual_seed(seed)
    heights, cut, empty, padding = [], 0, 0, []
    for index in np.random.default_rng(seed).integers(0, len(train), crops):
        labels = transform(train[int(index)]["image"], train[int(index)]["annotation"])[1].numpy()
        padding.append((labels == 255).mean())
        strokes = (labels > 0) & (labels != 255)
        empty += not strokes.any()
        # a digit: its strokes, closed over small gaps (thin strokes of one digit may touch only diagonally)
        regions, _ = ndimage.label(ndimage.binary_closing(strokes, iterations=1) | strokes, structure=np.ones((3, 3)))
        valid_h, valid_w = (labels != 255).any(1).sum(), (labels != 255).any(0).sum()  # padding: bottom, right
        for rows, columns in ndimage.find_objects(regions):
            heights.append(rows.stop - rows.start)
            cut += rows.start == 0 or columns.start == 0 or rows.stop == valid_h or columns.stop == valid_w
    heights = np.asarray(heights)
    return {
        "digit height p5/p50/p95 (px)": np.percentile(heights, [5, 50, 95]).round(1).tolist(),
        "digits under 8 px": round(float((heights < 8).mean()), 3),
        "digits cut by the crop border": round(cut / max(len(heights), 1), 3),
        "crops without a digit": round(empty / crops, 3),
        "padding (ignored) pixels": round(float(np.mean(padding)), 3),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/segment_digits.yaml")
    parser.add_argument("--crops", type=int, default=1000)
    args = parser.parse_args(argv)
    for name, setting in (("before (issue 11)", OLD), (args.config, current(args.config))):
        print(f"{name}: {setting}")
        for key, value in measure(setting, args.crops).items():
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
