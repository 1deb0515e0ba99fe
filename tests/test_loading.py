"""The one dataset loader (`mae_hf.data.loading`): every task reads every source the same way."""

from types import SimpleNamespace

import numpy as np
from conftest import write_ade_folder
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image

from mae_hf.data import find_image_column, load_image_datasets, load_segmentation_datasets


def data_args(name, **overrides):
    fields = dict(
        dataset_name=name,
        dataset_config_name=None,
        image_column_name=None,
        annotation_column_name=None,
        train_dir=None,
        validation_dir=None,
        streaming=False,
        train_val_split=0.25,
        max_train_samples=None,
        max_eval_samples=None,
        cache_dir=None,
        reduce_labels=False,
        num_labels=None,
    )
    return SimpleNamespace(**{**fields, **overrides})


def pairs(count=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = {
        "image": [Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)) for _ in range(count)],
        "annotation": [Image.fromarray(rng.integers(0, 5, (6, 5), dtype=np.uint8), mode="L") for _ in range(count)],
    }
    return Dataset.from_dict(rows, features=Features({"image": ImageFeature(), "annotation": ImageFeature()}))


def test_pretraining_reads_an_ade_folder_as_its_images_not_images_and_maps_mixed(tmp_path):
    root = write_ade_folder(tmp_path / "ADEChallengeData2016", count=3)
    datasets = load_image_datasets(data_args(str(root)))
    assert {split: len(rows) for split, rows in datasets.items()} == {"train": 3, "validation": 3}
    column = find_image_column(datasets["train"])
    assert column == "image" and datasets["train"][0][column].mode == "RGB"


def test_a_saved_single_dataset_loads_for_every_task(tmp_path):
    pairs().save_to_disk(str(tmp_path / "saved"))  # a Dataset, not a DatasetDict: it is the train split
    images = load_image_datasets(data_args(str(tmp_path / "saved")))
    segmentation, *_ = load_segmentation_datasets(data_args(str(tmp_path / "saved")))
    assert (len(images["train"]), len(images["validation"])) == (6, 2)
    assert images["validation"]["image"] == segmentation["validation"]["image"]


def test_every_task_carves_and_truncates_the_same_rows(tmp_path):
    (tmp_path / "data").mkdir()
    pairs(count=20).to_parquet(str(tmp_path / "data" / "train.parquet"))
    args = data_args(str(tmp_path), max_train_samples=7, max_eval_samples=3)
    images = load_image_datasets(args, seed=3)
    segmentation, image_column, annotation_column, names = load_segmentation_datasets(args, seed=3)
    assert (image_column, annotation_column, names) == ("image", "annotation", [str(i) for i in range(5)])
    for split, count in (("train", 7), ("validation", 3)):
        assert len(images[split]) == len(segmentation[split]) == count
        for row in range(count):
            same = np.asarray(images[split][row]["image"]), np.asarray(segmentation[split][row]["image"])
            assert np.array_equal(*same)
