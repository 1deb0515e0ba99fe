"""`digits`: scikit-learn's 1,797 real 8x8 handwritten digits as a small image data set, shipped with the package
so every script runs with nothing downloaded."""

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

NUM_VALIDATION = 297  # fixed, so results are comparable across runs and machines
SPLIT_SEED = 0


def digit_images() -> tuple[list[PILImage.Image], np.ndarray]:
    """The digits as 8x8 grayscale PIL images (16 grey levels scaled to 0..255) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    return [PILImage.fromarray(image, mode="L") for image in pixels], digits.target


def load_digits_dataset(config_name: str | None = None) -> DatasetDict:
    """train (1,500) / validation (297) with `image` and `label` columns; the split is the same everywhere.
    There is one configuration: `config_name` must be None or "default" (ValueError otherwise)."""
    if config_name not in (None, "default"):
        raise ValueError(f"digits has one configuration, 'default'; got {config_name!r}")
    images, labels = digit_images()
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    order = np.random.RandomState(SPLIT_SEED).permutation(len(images))
    splits = {"validation": order[:NUM_VALIDATION], "train": order[NUM_VALIDATION:]}
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {"image": [images[i] for i in index], "label": [int(labels[i]) for i in index]}, features=features
            )
            for name, index in (("train", splits["train"]), ("validation", splits["validation"]))
        }
    )
