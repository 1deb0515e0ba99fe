"""Class labels: the label column, its names, range checks, and fixed class-balanced label subsets."""

from collections import defaultdict

import numpy as np
from datasets import ClassLabel

from .columns import find_column

LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "fine_label")


def find_label_column(dataset, name: str | None = None) -> str:
    """The label column: `name` when given, else the first `ClassLabel` feature, else a usual name."""
    return find_column(dataset, name, ClassLabel, LABEL_COLUMN_NAMES, "--label_column_name", "label")


def label_names(dataset, column: str) -> list[str]:
    """Class names by id: the ClassLabel names, else the ids 0..max as strings."""
    feature = (dataset.features or {}).get(column)
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(i) for i in range(int(max(dataset[column])) + 1)]


def check_labels(dataset, column: str, num_labels: int, split: str) -> None:
    """Every label must be a class id in [0, num_labels): fail before training, naming the value and the split."""
    labels = np.asarray(dataset[column])
    bad = labels[(labels < 0) | (labels >= num_labels)]
    if bad.size:
        raise ValueError(
            f"{split} label {int(bad[0])} is outside num_labels={num_labels} (labels must be 0..{num_labels - 1}; "
            f"{bad.size} such example(s))"
        )


def class_balanced_subset(dataset, column: str, fraction: float, seed: int = 0):
    """The same `fraction` of every class (rounded), chosen with a fixed seed: semi-supervised comparisons use
    the same labelled examples whatever the training seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--label_fraction must be in (0, 1], got {fraction}")
    by_class = defaultdict(list)
    for index, label in enumerate(dataset[column]):
        by_class[label].append(index)
    rng = np.random.RandomState(seed)
    keep = []
    for label in sorted(by_class):
        count = int(round(fraction * len(by_class[label])))
        if count == 0:
            raise ValueError(
                f"--label_fraction {fraction} leaves class {label} with no example ({len(by_class[label])} in train)"
            )
        keep += rng.choice(by_class[label], size=count, replace=False).tolist()
    return dataset.select(sorted(keep))
