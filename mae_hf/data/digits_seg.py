"""`digits_seg`: a small semantic-segmentation set built from scikit-learn's real 8x8 handwritten digits, shipped
with the package so segmentation runs with nothing downloaded.

Each 32x32 canvas holds 1-3 digits (as many as fit), each drawn (bicubic) at 8-16 px -- one to two pixels per
pixel of the 8x8 source -- at a random position, no two boxes touching, on a dark noisy background. The annotation is a per-pixel class map: 0 background, 1 + digit on the
digit's strokes (its upscaled intensity above a threshold, so the mask follows the strokes, not the box).
Two configurations (`--dataset_config_name`):

- `default`: 800 labelled training canvases and 200 validation canvases (`image` + `annotation`);
- `unlabelled`: 10,000 training canvases without annotations (`image` only) for MAE pretraining, drawn from the
  same training digits as `default`'s train split but with their own seed, and the same 200 validation images.

Validation canvases are drawn from source digits that no training canvas uses; everything is seeded.
"""

import functools

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from .digits import digit_images

DIGITS_SEG_LABELS = ["background", *(str(d) for d in range(10))]
CONFIGS = ("default", "unlabelled")
CANVAS = 32
DIGIT_SIZES = (8, 16)  # inclusive; the source digits are 8 px: never shrunk below what they hold
MAX_DIGITS = 3
STROKE_THRESHOLD = 0.4  # share of full intensity: the anti-aliased rim below it stays background
NUM_CANVASES = {"train": 800, "validation": 200, "unlabelled": 10_000}
SPLIT_SEEDS = {"train": 0, "validation": 1, "unlabelled": 2}
VALIDATION_SHARE = 0.2  # of the 1,797 source digits, kept for validation canvases only
POOL_SEED = 0


def digit_pools() -> dict[str, np.ndarray]:
    """Indices (into scikit-learn's digits) that each split draws from: disjoint, fixed."""
    order = np.random.RandomState(POOL_SEED).permutation(1797)
    count = int(round(VALIDATION_SHARE * len(order)))
    return {"validation": np.sort(order[:count]), "train": np.sort(order[count:])}


def _boxes(rng: np.random.Generator, sizes: list[int]) -> list[tuple[int, int, int]]:
    """(top, left, size) for each digit that fits, boxes at least 1 px apart (rejection sampling)."""
    placed = []
    for size in sizes:
        for _ in range(20):
            top, left = rng.integers(0, CANVAS - size + 1, size=2)
            if all(top + size < t or t + s < top or left + size < l or l + s < left for t, l, s in placed):
                placed.append((int(top), int(left), size))
                break
    return placed


def _canvas(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (CANVAS, CANVAS, 3) uint8 image and its (CANVAS, CANVAS) uint8 class map."""
    image = np.clip(rng.normal(20.0, 8.0, (CANVAS, CANVAS, 3)), 0, 255)
    annotation = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    sizes = rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1, size=rng.integers(1, MAX_DIGITS + 1)).tolist()
    for top, left, size in _boxes(rng, sizes):
        index = rng.integers(len(digits))
        strokes = PILImage.fromarray(digits[index]).resize((size, size), PILImage.BICUBIC)
        alpha = np.asarray(strokes, dtype=np.float64)[..., None] / 255.0
        colour = rng.uniform(120.0, 255.0, 3)
        colour[rng.integers(3)] = 255.0  # one full channel: strokes are always bright
        window = (slice(top, top + size), slice(left, left + size))
        image[window] = image[window] * (1 - alpha) + colour * alpha
        annotation[window][alpha[..., 0] > STROKE_THRESHOLD] = 1 + labels[index]
    return image.round().astype(np.uint8), annotation


def _split(pixels: np.ndarray, labels: np.ndarray, pool: np.ndarray, split: str, annotated: bool) -> Dataset:
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    canvases = [_canvas(rng, pixels[pool], labels[pool]) for _ in range(NUM_CANVASES[split])]
    columns = {"image": [PILImage.fromarray(image, mode="RGB") for image, _ in canvases]}
    if annotated:
        columns["annotation"] = [PILImage.fromarray(annotation, mode="L") for _, annotation in canvases]
    return Dataset.from_dict(columns, features=Features({name: Image() for name in columns}))


@functools.lru_cache(maxsize=2)
def _build(config_name: str, settings: tuple) -> DatasetDict:
    """`settings`: the module's canvas settings, so that a change of them (experiments) is not served stale."""
    images, labels = digit_images()
    pixels = np.stack([np.asarray(image) for image in images])  # (1797, 8, 8), 0..255
    pools = digit_pools()
    validation = _split(pixels, labels, pools["validation"], "validation", annotated=config_name == "default")
    train_split = "train" if config_name == "default" else "unlabelled"
    train = _split(pixels, labels, pools["train"], train_split, annotated=config_name == "default")
    return DatasetDict(train=train, validation=validation)


def load_digits_seg_dataset(config_name: str | None = None) -> DatasetDict:
    """`default` (None): train (800) / validation (200) canvases with `image` (RGB) and `annotation` (L, 0..10)
    columns. `unlabelled`: train (10,000) / validation (200) with `image` only. The same everywhere; built once per
    process (a few seconds per thousand canvases), each call returns its own DatasetDict. Classes:
    `DIGITS_SEG_LABELS`. Raises ValueError for another configuration name."""
    config_name = config_name or "default"
    if config_name not in CONFIGS:
        raise ValueError(f"digits_seg has the configurations {', '.join(CONFIGS)}; got {config_name!r}")
    settings = (CANVAS, tuple(DIGIT_SIZES), MAX_DIGITS, tuple(sorted(NUM_CANVASES.items())))
    return DatasetDict(_build(config_name, settings))
