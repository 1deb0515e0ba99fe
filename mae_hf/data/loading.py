"""Image datasets from the Hub, local folders (ImageFolder, parquet, arrow) or the built-in demo sets, as a
DatasetDict with `train` and `validation` splits."""

import os

from datasets import DatasetDict, IterableDatasetDict, load_dataset, load_from_disk

from ..arguments import ImageDataArguments
from .digits import load_digits_dataset
from .digits_seg import load_digits_seg_dataset

BUILTIN = {"digits": load_digits_dataset, "digits_seg": load_digits_seg_dataset}  # pretraining uses their images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def check_image_dir(path: str, flag: str) -> None:
    """Fail early, naming the flag, on a missing or image-less folder."""
    if not os.path.isdir(path):
        raise ValueError(f"{flag} {path} does not exist or is not a folder")
    for _root, _dirs, files in os.walk(path):
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            return
    raise ValueError(f"{flag} {path} contains no image files ({', '.join(IMAGE_SUFFIXES)})")


def _streaming(args) -> bool:
    return getattr(args, "streaming", False)  # only pretraining streams


def _load_named(args: ImageDataArguments):
    name = args.dataset_name
    if name in BUILTIN:
        return BUILTIN[name](args.dataset_config_name)
    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_dict.json")) or os.path.exists(os.path.join(name, "state.json"))
    ):
        return load_from_disk(name)  # a folder written by save_to_disk
    return load_dataset(name, args.dataset_config_name, cache_dir=args.cache_dir, streaming=_streaming(args))


def _load_folders(args: ImageDataArguments):
    files = {}
    if args.train_dir:
        check_image_dir(args.train_dir, "--train_dir")
        files["train"] = os.path.join(args.train_dir, "**")
    if args.validation_dir:
        check_image_dir(args.validation_dir, "--validation_dir")
        files["validation"] = os.path.join(args.validation_dir, "**")
    return load_dataset(
        "imagefolder", data_files=files, cache_dir=args.cache_dir, streaming=_streaming(args)
    )


def check_train_split(datasets, training: bool) -> None:
    """Training needs a train split; evaluation alone (`training` False) needs a validation split or a train split
    to carve one from."""
    if "train" in datasets or (not training and "validation" in datasets):
        return
    if training:
        raise ValueError(f"the dataset has no 'train' split; splits: {list(datasets)}")
    raise ValueError(f"the dataset has neither a 'validation' split to evaluate nor a 'train' split to carve one "
                     f"from; splits: {list(datasets)}")


def load_image_datasets(args: ImageDataArguments, seed: int = 42,
                        training: bool = True) -> DatasetDict | IterableDatasetDict:
    """train + validation; validation is carved from train (`train_val_split`, seeded) when the source has none.
    Evaluation alone (`training` False) takes a source without a train split (e.g. --validation_dir alone): then
    the result has only validation."""
    no_folder = args.train_dir is None and (training or args.validation_dir is None)
    if args.dataset_name is None and no_folder:
        raise ValueError("give --dataset_name (a Hub id, a local folder, or 'digits') or --train_dir"
                         + (" (--validation_dir needs --train_dir)" if args.validation_dir else ""))
    datasets = _load_named(args) if args.dataset_name is not None else _load_folders(args)
    check_train_split(datasets, training)
    if "validation" not in datasets:
        if _streaming(args):
            raise ValueError("a streamed dataset needs its own validation split (or use --do_eval False)")
        carved = datasets["train"].train_test_split(test_size=args.train_val_split, seed=seed)
        datasets = DatasetDict(train=carved["train"], validation=carved["test"])
    if not _streaming(args):
        for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
            if limit is not None and split in datasets:
                datasets[split] = datasets[split].select(range(min(limit, len(datasets[split]))))
    return datasets
