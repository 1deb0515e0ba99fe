"""The one dataset loader of every script: the built-in demo sets, a local ADE20K-layout folder, a `save_to_disk`
folder, a parquet / arrow folder or Hub id, or ImageFolders (`--train_dir` / `--validation_dir`), as a DatasetDict
with `train` and `validation` splits (validation carved from train when the source has none; both truncated by
`--max_train_samples` / `--max_eval_samples`)."""

import os

from datasets import Dataset, DatasetDict, Features, Image, IterableDatasetDict, load_dataset, load_from_disk

from ..arguments import AnnotationDataArguments, ImageDataArguments
from .columns import find_segmentation_columns
from .digits import load_digits_dataset
from .digits_seg import DIGITS_SEG_LABELS, load_digits_seg_dataset
from .labels import ADE20K_LABELS, class_map_names
from .once import main_process_first_on_node

BUILTIN = {"digits": load_digits_dataset, "digits_seg": load_digits_seg_dataset}  # pretraining uses their images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
ADE_SPLITS = {"train": "training", "validation": "validation"}
SEGMENTATION_FEATURES = Features({"image": Image(), "annotation": Image()})


def check_image_dir(path: str, flag: str) -> None:
    """Fail early, naming the flag, on a missing or image-less folder."""
    if not os.path.isdir(path):
        raise ValueError(f"{flag} {path} does not exist or is not a folder")
    for _root, _dirs, files in os.walk(path):
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            return
    raise ValueError(f"{flag} {path} contains no image files ({', '.join(IMAGE_SUFFIXES)})")


def _image_files(folder: str) -> dict[str, str]:
    """{file name without suffix: path} of the image files in `folder`."""
    if not os.path.isdir(folder):
        raise ValueError(
            f"{folder} does not exist: an ADE20K-layout folder has images/training, images/validation, "
            "annotations/training and annotations/validation"
        )
    files = {}
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
            stem = os.path.splitext(name)[0]
            if stem in files:
                raise ValueError(
                    f"{files[stem]} and {os.path.join(folder, name)} share a name: images and "
                    "annotations pair up by file name without suffix"
                )
            files[stem] = os.path.join(folder, name)
    return files


def _unpaired(side: str, files: dict[str, str], missing: list[str]) -> str:
    if not missing:
        return ""
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f" {len(missing)} {side}: {', '.join(files[stem] for stem in missing[:5])}{more}."


def load_ade_folder(root: str, splits=tuple(ADE_SPLITS)) -> DatasetDict:
    """A local `ADEChallengeData2016/` folder (images/{training,validation}/*.jpg, annotations/.../*.png) as train
    and validation (or the `splits` given) with `image` and `annotation` columns (files read lazily; paths kept for
    error messages). Images and annotations pair up by file name without suffix."""
    loaded = {}
    for split in splits:
        folder = ADE_SPLITS[split]
        images = _image_files(os.path.join(root, "images", folder))
        annotations = _image_files(os.path.join(root, "annotations", folder))
        lonely_images = sorted(set(images) - set(annotations))
        lonely_annotations = sorted(set(annotations) - set(images))
        if lonely_images or lonely_annotations:
            raise ValueError(
                f"{root}: {folder} images and annotations do not pair up (by file name without suffix)."
                + _unpaired("image(s) without an annotation", images, lonely_images)
                + _unpaired("annotation(s) without an image", annotations, lonely_annotations)
            )
        if not images:
            raise ValueError(f"{os.path.join(root, 'images', folder)} contains no image files")
        stems = sorted(images)
        loaded[split] = Dataset.from_dict(
            {"image": [images[s] for s in stems], "annotation": [annotations[s] for s in stems]},
            features=SEGMENTATION_FEATURES,
        )
    return DatasetDict(loaded)


def is_ade_folder(name: str) -> bool:
    return os.path.isdir(name) and all(os.path.isdir(os.path.join(name, sub)) for sub in ("images", "annotations"))


def _is_saved(name: str) -> bool:
    """A folder written by `save_to_disk` (a DatasetDict or a single Dataset)."""
    markers = ("dataset_dict.json", "state.json")
    return os.path.isdir(name) and any(os.path.exists(os.path.join(name, marker)) for marker in markers)


def _load_named(args, training: bool, streaming: bool):
    name = args.dataset_name
    if name in BUILTIN:
        return BUILTIN[name](args.dataset_config_name)
    if is_ade_folder(name):  # evaluation alone reads no images/training
        return load_ade_folder(name, tuple(ADE_SPLITS) if training else ("validation",))
    if _is_saved(name):
        loaded = load_from_disk(name)
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
    return load_dataset(name, args.dataset_config_name, cache_dir=args.cache_dir, streaming=streaming)


def _load_folders(args: ImageDataArguments, streaming: bool):
    files = {}
    if args.train_dir:
        check_image_dir(args.train_dir, "--train_dir")
        files["train"] = os.path.join(args.train_dir, "**")
    if args.validation_dir:
        check_image_dir(args.validation_dir, "--validation_dir")
        files["validation"] = os.path.join(args.validation_dir, "**")
    return load_dataset("imagefolder", data_files=files, cache_dir=args.cache_dir, streaming=streaming)


def check_train_split(datasets, training: bool) -> None:
    """Training needs a train split; evaluation alone (`training` False) needs a validation split or a train split
    to carve one from."""
    if "train" in datasets or (not training and "validation" in datasets):
        return
    if training:
        raise ValueError(f"the dataset has no 'train' split; splits: {list(datasets)}")
    raise ValueError(
        f"the dataset has neither a 'validation' split to evaluate nor a 'train' split to carve one "
        f"from; splits: {list(datasets)}"
    )


def _load_splits(args, seed: int, training: bool, streaming: bool = False) -> DatasetDict | IterableDatasetDict:
    """The source's train and validation splits, `train` required when `training` and `validation` carved from it
    (`train_val_split`, seeded) when missing; both truncated unless streamed. Evaluation alone takes a source
    without a train split: then there is only validation. Other splits are left out: nothing reads them, and their
    labels need not be class ids (imagenet-1k's test labels are -1; a test split may have no label column)."""
    with main_process_first_on_node():  # `datasets` caches what it builds (Arrow files, split indices) for the others
        named = args.dataset_name is not None
        datasets = _load_named(args, training, streaming) if named else _load_folders(args, streaming)
        check_train_split(datasets, training)
        datasets = type(datasets)({split: datasets[split] for split in ("train", "validation") if split in datasets})
        if "validation" not in datasets:
            if streaming:
                raise ValueError("a streamed dataset needs its own validation split (or use --do_eval False)")
            carved = datasets["train"].train_test_split(test_size=args.train_val_split, seed=seed)
            datasets = DatasetDict(train=carved["train"], validation=carved["test"])
    if not streaming:
        for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
            if limit is not None and split in datasets:
                datasets[split] = datasets[split].select(range(min(limit, len(datasets[split]))))
    return datasets


def load_image_datasets(
    args: ImageDataArguments, seed: int = 42, training: bool = True, streaming: bool = False
) -> DatasetDict | IterableDatasetDict:
    """train + validation for classification and pretraining (`streaming`: pretraining's --streaming). Evaluation
    alone (`training` False) takes a source without a train split (e.g. --validation_dir alone): then only
    validation."""
    no_folder = args.train_dir is None and (training or args.validation_dir is None)
    if args.dataset_name is None and no_folder:
        raise ValueError(
            "give --dataset_name (a Hub id, a local folder, or 'digits') or --train_dir"
            + (" (--validation_dir needs --train_dir)" if args.validation_dir else "")
        )
    return _load_splits(args, seed, training, streaming)


def _known_class_names(name: str) -> list[str] | None:
    """The class names (id 0 first) of a source that defines them."""
    if name == "digits_seg":
        return DIGITS_SEG_LABELS
    return ["other", *ADE20K_LABELS] if is_ade_folder(name) else None


def load_segmentation_datasets(
    args: AnnotationDataArguments, seed: int = 42, training: bool = True
) -> tuple[DatasetDict, str, str, list[str]]:
    """(train + validation, image column, annotation column, class names by id).

    `args.dataset_name`: 'digits_seg', a local ADE20K-layout folder (images/ + annotations/), a save_to_disk or
    parquet/arrow folder, or a Hub id with image and annotation columns. Validation is carved from train
    (`train_val_split`, seeded) when the source has none; `max_train_samples` / `max_eval_samples` truncate.
    """
    if args.dataset_name is None:
        raise ValueError(
            "give --dataset_name ('digits_seg', an ADEChallengeData2016 folder, a local "
            "parquet/arrow folder or a Hub id)"
        )
    datasets = _load_splits(args, seed, training)
    image_column, annotation_column = find_segmentation_columns(
        datasets["train" if "train" in datasets else "validation"],
        args.image_column_name,
        args.annotation_column_name,
    )
    names = class_map_names(
        datasets,
        image_column,
        annotation_column,
        args.reduce_labels,
        args.num_labels,
        _known_class_names(args.dataset_name),
    )
    return datasets, image_column, annotation_column, names
