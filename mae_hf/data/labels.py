"""Class labels: their names, range checks, and fixed class-balanced label subsets; for segmentation, class maps
(one class id per pixel): reading them, ADE20K's label reduction, and checks of every annotation before training."""

import functools
import logging
from collections import defaultdict

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from .images import load_reduced, open_lazily, upright_size
from .once import map_split

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
# PIL modes that hold one class id per pixel; RGB "colour maps" need converting to ids first.
CLASS_MAP_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
# The 150 SceneParsing classes, ids 1..150 in the PNGs (0 = "other"), as mmsegmentation's ADE20KDataset names them.
ADE20K_LABELS = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip


def class_id_labels(datasets, column: str, classes: list[str] | None = None, defining=None) -> None:
    """Make the label `column` of every split (a dict of datasets, changed in place) class ids, before any image is
    decoded, or refuse it naming the column:

    - integer columns stay as they are (`check_labels` checks their range against the model), and so do `ClassLabel`
      columns numbered as the reference classes (`classes`, else the train split's `ClassLabel`); a `ClassLabel`
      numbered otherwise that shares names with them gets their ids by name (`_align_class_labels`);
    - strings are class names, mapped as an ImageFolder maps folder names: the sorted names get ids 0..C-1, one
      mapping for every split, stored as a `ClassLabel` (so the model's id2label / label2id carry the names):
      `classes` (names by id, e.g. a saved model's) when given, else the names found in the `defining` splits
      (default: train, or every split without one); a name outside the mapping is refused, naming it and its split;
    - floats with integral values (3.0: pandas stores an int column with a missing value as floats) are cast to
      int64; any other value (1.5, nan) is refused, naming it;
    - missing labels (null) and other types (booleans, lists, images) are refused.
    Raises ValueError."""
    _align_class_labels(datasets, column, classes)
    types = {split: (dataset.features or {}).get(column) for split, dataset in datasets.items()}
    kinds = {split: _label_kind(feature, column, split) for split, feature in types.items()}
    if "string" in kinds.values() and len(set(kinds.values())) > 1:
        raise ValueError(f"label column {column!r} holds class names in some splits, numbers in others: {types}")
    if "string" in kinds.values() or "float" in kinds.values():
        values = {split: datasets[split].unique(column) for split in datasets if kinds[split] != "ids"}
        for split, found in values.items():
            if None in found:
                raise ValueError(f"{split} label column {column!r} has missing labels (null)")
    if "float" in kinds.values():
        for split in [s for s in datasets if kinds[s] == "float"]:
            if fractional := [v for v in values[split] if not float(v).is_integer()]:
                raise ValueError(
                    f"{split} label column {column!r} holds {fractional[0]!r}, not a class id: labels must be "
                    "integers (class ids) or strings (class names)"
                )
            datasets[split] = datasets[split].cast_column(column, Value("int64"))
    if "string" in kinds.values():
        if classes is None:
            chosen = defining or (["train"] if "train" in datasets else list(datasets))
            classes = sorted({str(v) for split in chosen if kinds[split] == "string" for v in values[split]})
            source = f"the classes of the {' and '.join(chosen)} split(s)"
        else:
            source = "the model's classes"
        for split in [s for s in datasets if kinds[s] == "string"]:
            if unknown := sorted(set(values[split]) - set(classes)):
                raise _unknown_names(split, unknown, column, source, classes)
            datasets[split] = datasets[split].cast_column(column, ClassLabel(names=list(classes)))
        logger.info(f"label column {column!r}: {len(classes)} class names mapped to ids 0..{len(classes) - 1}")


def _align_class_labels(datasets, column: str, classes: list[str] | None) -> None:
    """Give `ClassLabel` splits numbered otherwise than the reference classes (`classes`, else the train split's
    `ClassLabel` names) the reference's id of each of their names, in place, reading the label column only. An
    ImageFolder of the validation images alone (a class without images has no folder) or a split built on its own
    numbers the same names otherwise: its ids would be scored against other classes. A name the reference lacks is
    refused, naming it; a `ClassLabel` that shares no name with the reference (names that are ids, "0" or "LABEL_0",
    on one side) keeps its ids. Raises ValueError."""
    features = {split: (dataset.features or {}).get(column) for split, dataset in datasets.items()}
    source = "the model's classes"
    if classes is None:
        if not isinstance(features.get("train"), ClassLabel):
            return
        classes, source = features["train"].names, "the classes of the train split"
    position = {name: i for i, name in enumerate(classes)}
    for split, feature in features.items():
        if (
            not isinstance(feature, ClassLabel)
            or feature.names == list(classes)
            or not position.keys() & {*feature.names}
        ):
            continue
        found = np.unique(np.asarray(datasets[split][column]))
        names = [feature.names[i] for i in found if 0 <= i < len(feature.names)]  # others: check_labels refuses them
        if unknown := sorted(set(names) - position.keys()):
            raise _unknown_names(split, unknown, column, source, classes)
        ids = np.array([position.get(name, -1) for name in feature.names])

        def renumber(labels, ids=ids):
            labels = np.asarray(labels)
            inside = (labels >= 0) & (labels < len(ids))
            return {column: np.where(inside, ids[np.where(inside, labels, 0)], labels).tolist()}

        aligned = datasets[split].features.copy()
        aligned[column] = ClassLabel(names=list(classes))
        datasets[split] = datasets[split].map(
            renumber, input_columns=column, batched=True, features=aligned, desc=f"numbering {split} labels by name"
        )
        logger.info(f"{split} label column {column!r}: class ids renumbered by name as {source}")


def _unknown_names(split: str, unknown: list, column: str, source: str, classes: list[str]) -> ValueError:
    shown = ", ".join(map(repr, classes[:10])) + (", ..." if len(classes) > 10 else "")
    return ValueError(
        f"{split} label {unknown[0]!r} (column {column!r}; {len(unknown)} such name(s)) is not one of {source}: {shown}"
    )


def _label_kind(feature, column: str, split: str) -> str:
    """'ids' (ClassLabel, integers), 'string' or 'float'; ValueError for anything else."""
    if isinstance(feature, ClassLabel) or (isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))):
        return "ids"
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return "string"
    if isinstance(feature, Value) and feature.dtype.startswith("float"):
        return "float"
    raise ValueError(
        f"{split} label column {column!r} holds {feature}: labels must be integers (class ids) or strings (class names)"
    )


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


def annotation_array(annotation: PILImage.Image) -> np.ndarray:
    """A class map as a writable (H, W) array: uint8 for 8-bit maps, int64 for 16/32-bit ones."""
    if annotation.mode not in CLASS_MAP_MODES:
        raise ValueError(
            f"an annotation must hold one class id per pixel (PIL modes {', '.join(CLASS_MAP_MODES)}); "
            f"got mode {annotation.mode}"
        )
    array = np.array(annotation)  # a copy: PIL's buffer is read-only
    return array if array.dtype == np.uint8 else array.astype(np.int64)


def reduce_labels_map(array: np.ndarray) -> np.ndarray:
    """ADE20K's convention: 0 ("other") -> 255 (ignored), 1..150 -> 0..149; 255 stays 255. Same shape and dtype."""
    reduced = array.astype(np.int64) - 1
    reduced[(array == 0) | (array == IGNORE_INDEX)] = IGNORE_INDEX
    return reduced.astype(array.dtype)


def _stats_batch(
    batch: dict, image_column: str, annotation_column: str, reduce_labels: bool, decode_images: bool = True
) -> dict:
    out = {"image_size": [], "annotation_size": [], "labels": [], "error": []}
    for image_value, annotation_value in zip(batch[image_column], batch[annotation_column]):
        image_size, annotation_size, labels, error = [], [], [], ""
        try:
            with open_lazily(image_value) as image:
                image_size = upright_size(image)
                if decode_images:
                    load_reduced(image)  # a truncated image fails here, not in the first training step
            with open_lazily(annotation_value) as annotation:
                annotation_size = upright_size(annotation)
                array = annotation_array(annotation)
            if reduce_labels:
                array = reduce_labels_map(array)
            # bincount is a single pass for 8-bit maps; np.unique sorts
            labels = (
                np.flatnonzero(np.bincount(array.ravel(), minlength=256))
                if array.dtype == np.uint8
                else np.unique(array)
            ).tolist()
        except Exception as exception:  # noqa: BLE001 - reported with the file's name below
            error = f"{type(exception).__name__}: {exception}"
        for key, value in zip(out, (image_size, annotation_size, labels, error)):
            out[key].append(value)
    return out


def _annotation_stats(
    dataset: Dataset,
    image_column: str,
    annotation_column: str,
    reduce_labels: bool,
    num_proc: int | None = None,
    split: str = "train",
    decode_images: bool = True,
) -> Dataset:
    """Per row: image and annotation sizes from the headers, the class ids present (decoding the map), any error.
    The same function and arguments each time, so `datasets` reuses its cache for file-backed sets."""
    raw = dataset.select_columns([image_column, annotation_column])
    raw = raw.cast_column(image_column, Image(decode=False)).cast_column(annotation_column, Image(decode=False))
    ints = Sequence(Value("int64"))  # explicit: a first batch of empty lists would otherwise infer nulls
    features = Features({"image_size": ints, "annotation_size": ints, "labels": ints, "error": Value("string")})
    function = functools.partial(
        _stats_batch,
        image_column=image_column,
        annotation_column=annotation_column,
        reduce_labels=reduce_labels,
        decode_images=decode_images,
    )
    return map_split(  # each process reads its share of the files
        raw,
        function,
        batched=True,
        num_proc=num_proc,
        remove_columns=raw.column_names,
        features=features,
        desc=f"checking {split} annotations",
    )


def check_annotations(
    dataset: Dataset,
    image_column: str,
    annotation_column: str,
    num_labels: int,
    reduce_labels: bool = False,
    split: str = "train",
    num_proc: int | None = None,
    skip_corrupt: bool = False,
    decode_images: bool = True,
) -> tuple[Dataset, int]:
    """Before training: every image decodes (JPEGs at 1/8 scale; skipped when `decode_images` is False), every
    annotation opens, is a class map the size of its image, and holds only class ids in [0, num_labels) or 255
    (ignored), after `reduce_labels` when set. A ValueError counts the bad rows and names the first three files
    (rows when there is no file) with both sizes or the offending value. With `skip_corrupt`, rows whose image or
    annotation cannot be read are left out instead (other faults still raise). Returns (the dataset, the number
    of rows left out)."""
    stats = _annotation_stats(dataset, image_column, annotation_column, reduce_labels, num_proc, split, decode_images)
    files = dataset.select_columns([image_column, annotation_column])
    files = files.cast_column(image_column, Image(decode=False)).cast_column(annotation_column, Image(decode=False))

    def name(index: int, column: str) -> str:
        return files[index][column].get("path") or f"row {index}"

    problems, unreadable = [], []
    for index, (image_size, annotation_size, labels, error) in enumerate(
        zip(stats["image_size"], stats["annotation_size"], stats["labels"], stats["error"])
    ):
        if error:
            unreadable.append(index)
            if not skip_corrupt:
                problems.append(
                    f"annotation {name(index, annotation_column)} or its image "
                    f"{name(index, image_column)} cannot be read ({error})"
                )
        elif image_size != annotation_size:
            problems.append(
                f"annotation {name(index, annotation_column)} has size {tuple(annotation_size)} but its "
                f"image {name(index, image_column)} has size {tuple(image_size)} (width, height)"
            )
        elif bad := [v for v in labels if v >= num_labels and v != IGNORE_INDEX]:
            raw = f" ({bad[0] + 1} before --reduce_labels)" if reduce_labels else ""
            problems.append(
                f"annotation {name(index, annotation_column)} has label {bad[0]}{raw}, outside "
                f"num_labels={num_labels} (ids must be 0..{num_labels - 1}, or 255 = ignored)"
            )
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        hint = "" if skip_corrupt or not unreadable else " (--skip_corrupt_images leaves unreadable pairs out)"
        raise ValueError(f"{len(problems)} bad {split} annotation(s): {'; '.join(problems[:3])}{more}{hint}")
    if unreadable:
        dataset = dataset.select(sorted(set(range(len(dataset))) - set(unreadable)))
    return dataset, len(unreadable)


def class_map_names(
    datasets,
    image_column: str,
    annotation_column: str,
    reduce_labels: bool = False,
    num_labels: int | None = None,
    known: list[str] | None = None,
) -> list[str]:
    """Segmentation class names by id: `known` (the source's own names, id 0 first; id 0 dropped with
    `reduce_labels`), else the ids up to `num_labels`, else up to the largest id in the annotations of every split
    (which reads every map; ValueError when they hold only 255)."""
    if known is not None:
        return list(known[1:]) if reduce_labels else list(known)
    if num_labels:
        return [str(i) for i in range(num_labels)]
    logger.info("no --num_labels: scanning the annotations for the largest class id (pass --num_labels to skip)")
    largest = max(
        max(
            (
                v
                for row in _annotation_stats(d, image_column, annotation_column, reduce_labels, split=split)["labels"]
                for v in row
                if v != IGNORE_INDEX
            ),
            default=-1,
        )
        for split, d in datasets.items()
    )
    if largest < 0:
        raise ValueError("the annotations hold no class ids other than 255 (ignored); pass --num_labels")
    return [str(i) for i in range(largest + 1)]
