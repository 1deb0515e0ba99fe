#!/usr/bin/env python
"""Does an encoder know which digit each patch lies on? A linear probe per block, on `digits_seg`:

    python experiments/digits_seg_probe.py outputs/digits_seg_label_efficiency/pretrain   # MAE vs random init

For each block, the token features (the maps the segmentation neck reads) of the patches that hold at least 3
stroke pixels of a training canvas train a logistic regression to the digit under the patch; its accuracy on the
validation canvases (digits no training canvas uses) is printed, for the encoder given and for the same
architecture at random init. Chance is about 10 %. It takes well under a minute and tells whether MAE pretraining
has learnt what segmentation needs before any fine-tuning is spent on it.
"""

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from mae_hf import MAEConfig, MAEModel
from mae_hf.data import SegmentationEvalTransform, load_digits_seg_dataset

MIN_STROKE_PIXELS = 3


def token_features(model: MAEModel, dataset, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per block: (tokens, D) features of the patches on strokes; and their digit (0..9)."""
    patch, blocks = model.config.patch_size, tuple(range(model.config.num_hidden_layers))
    transform = SegmentationEvalTransform(scale=model.config.image_hw)
    features, digits = [[] for _ in blocks], []
    for example in dataset.select(range(min(count, len(dataset)))):
        pixels, labels = transform(example["image"], example["annotation"])
        with torch.no_grad():
            maps = model.get_intermediate_layers(pixels[None], blocks, interpolate_pos_encoding=True)
        rows, columns = labels.shape[0] // patch, labels.shape[1] // patch
        per_patch = labels[: rows * patch, : columns * patch].reshape(rows, patch, columns, patch)
        per_patch = per_patch.permute(0, 2, 1, 3).reshape(rows * columns, patch * patch)
        strokes = (per_patch > 0) & (per_patch != 255)
        keep = strokes.sum(1) >= MIN_STROKE_PIXELS
        digits.append((torch.where(strokes, per_patch, 0).max(1).values[keep] - 1).numpy())
        for block, level in enumerate(maps):
            features[block].append(level[0].flatten(1).T[keep].numpy())
    return [np.concatenate(f) for f in features], np.concatenate(digits)


def probe(model: MAEModel, canvases: int) -> list[float]:
    data = load_digits_seg_dataset()
    train_x, train_y = token_features(model, data["train"], canvases)
    test_x, test_y = token_features(model, data["validation"], canvases)
    return [LogisticRegression(max_iter=2000).fit(x, train_y).score(t, test_y) for x, t in zip(train_x, test_x)]


def probe_encoder(encoder: str, canvases: int = 400, random_init: bool = False) -> list[float]:
    """Probe accuracy per block (0..1) of the encoder saved in `encoder`, or of its architecture at random init
    (torch seed 0, so every call builds the same random encoder)."""
    torch.manual_seed(0)
    if random_init:
        model = MAEModel(MAEConfig.from_pretrained(encoder))
    else:
        model = MAEModel.from_pretrained(encoder)
    return probe(model.eval(), canvases)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoder", help="an MAE checkpoint folder (pretraining or any task model)")
    parser.add_argument("--canvases", type=int, default=400, help="training canvases for the probe (validation: 200)")
    args = parser.parse_args(argv)
    for name, random_init in (("random init", True), (args.encoder, False)):
        scores = probe_encoder(args.encoder, args.canvases, random_init)
        print(f"{name}: probe accuracy per block " + ", ".join(f"{100 * s:.1f} %" for s in scores), flush=True)


if __name__ == "__main__":
    main()
