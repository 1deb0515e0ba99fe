"""Label columns that are not class ids, made class ids or refused before any image is decoded or model built:
class names (strings) mapped as an ImageFolder maps folder names, one mapping for every split and saved with the
model; integral floats cast; fractional floats, nulls and other types refused naming the column. Through
`class_id_labels`, the classification script, and the feature monitor (`python -m mae_hf.evaluate_features`)."""

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from helpers import FINETUNE_ARCHITECTURE, QUIET, flags
from PIL import Image
from transformers import pipeline

import run_image_classification
import run_pretraining
from mae_hf import evaluate_features
from mae_hf.data import class_id_labels, load_digits_dataset, load_image_datasets

TINY_PRETRAINED = Path(__file__).parent / "data" / "tiny_mae_digits"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TINY = [
    *flags(image_size=16),
    *FINETUNE_ARCHITECTURE,
    *flags(per_device_train_batch_size=16, warmup_epochs=0),
    *QUIET,
    *flags(seed=0),
]
DATA = dict(dataset_config_name=None, cache_dir=None, train_dir=None, validation_dir=None, train_val_split=0.15)
DATA.update(max_train_samples=None, max_eval_samples=None)


def splits(train, validation):
    return {"train": Dataset.from_dict({"label": train}), "validation": Dataset.from_dict({"label": validation})}


def labelled_digits(folder: Path, label_of, counts=(48, 24)) -> Path:
    """A parquet dataset of the first digits of each split, with `label_of(digit)` as their labels."""
    digits = load_digits_dataset()
    folder.mkdir()
    for split, count in zip(("train", "validation"), counts):
        part = digits[split].select(range(count))
        values = [label_of(digit) for digit in part["label"]]
        part.remove_columns("label").add_column("label", values).to_parquet(str(folder / f"{split}.parquet"))
    return folder


def test_class_names_share_one_mapping_over_the_splits():
    """Sorted names -> 0..C-1, from the train split, as an ImageFolder; datasets' own class_encode_column would
    number each split by its own names (validation 'cat', 'dog' as 0, 1)."""
    data = splits(["dog", "cat", "bird", "dog"], ["cat", "dog"])
    class_id_labels(data, "label")
    assert data["train"].features["label"] == ClassLabel(names=["bird", "cat", "dog"])
    assert data["train"]["label"] == [2, 1, 0, 2] and data["validation"]["label"] == [1, 2]
    assert data["validation"].features["label"].names == ["bird", "cat", "dog"]
    data = splits(["dog", "cat"], ["fish", "cat", "eel"])
    with pytest.raises(ValueError, match=r"validation label 'eel' \(column 'label'; 2 such name\(s\)\) is not one of "):
        class_id_labels(data, "label")
    data = splits(["dog"], ["cat"])  # a saved model's classes, by id
    class_id_labels(data, "label", classes=["dog", "cat"])
    assert data["validation"]["label"] == [1]
    data = splits(["dog"], ["cat"])  # the monitor: the classes of both splits
    class_id_labels(data, "label", defining=["train", "validation"])
    assert data["train"]["label"] == [1] and data["validation"]["label"] == [0]


@pytest.mark.parametrize(
    "train, message",
    [
        ([0.0, 1.5], r"train label column 'label' holds 1.5, not a class id"),
        ([0.0, float("nan")], r"train label column 'label' holds nan, not a class id"),
        (["dog", None], r"train label column 'label' has missing labels \(null\)"),
        ([True, False], r"train label column 'label' holds Value\('bool'\): labels must be integers"),
        ([[0, 1], [1]], r"train label column 'label' holds List\(Value\('int64'\)\)"),
    ],
)
def test_labels_that_are_not_class_ids_are_refused(train, message):
    with pytest.raises(ValueError, match=message):
        class_id_labels(splits(train, train[:1]), "label")


def test_integral_floats_are_class_ids_and_ids_stay_as_they_are():
    data = splits([0.0, 3.0], [2.0])  # pandas writes an int column with a missing value as floats
    class_id_labels(data, "label")
    assert data["train"].features["label"] == Value("int64") and data["train"]["label"] == [0, 3]
    data = {"train": Dataset.from_dict({"label": [5, 1]}), "validation": Dataset.from_dict({"label": ["a"]})}
    with pytest.raises(ValueError, match="holds class names in some splits, numbers in others"):
        class_id_labels(data, "label")
    digits = load_digits_dataset()
    class_id_labels(digits, "label")
    assert digits["train"].features["label"] == load_digits_dataset()["train"].features["label"]


def test_classifier_trained_on_class_names_predicts_them(tmp_path, caplog):
    """The names become id2label / label2id of the saved model (the pipeline shows them); evaluation alone maps the
    names through the model's classes; a resumed run is the same run (its mapping does not move)."""
    data = labelled_digits(tmp_path / "named", lambda digit: NAMES[digit])
    common = [*TINY, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"), "--save_steps", "2"]
    trained = run_image_classification.main([*common, "--max_steps", "2", "--save_strategy", "steps"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(sorted(NAMES))}
    assert config["label2id"] == {name: i for i, name in enumerate(sorted(NAMES))}
    predictions = pipeline("image-classification", model=str(tmp_path / "out"))(Image.new("L", (8, 8), 128))
    assert {p["label"] for p in predictions} <= set(NAMES)
    again = run_image_classification.main(
        [*TINY, "--dataset_name", str(data), "--output_dir", str(tmp_path / "eval")]
        + ["--model_name_or_path", str(tmp_path / "out"), "--do_train", "false"]
    )
    assert again["eval_accuracy"] == trained["eval_accuracy"]
    with caplog.at_level(logging.INFO, logger="mae_hf"):
        resumed = run_image_classification.main([*common, "--max_steps", "2", "--resume_from_checkpoint", "latest"])
    assert "this run is finished" in caplog.text  # the same run identity
    assert resumed["eval_accuracy"] == trained["eval_accuracy"]


def test_bad_label_columns_are_refused_before_the_model_is_built(tmp_path, monkeypatch):
    def not_reached(*args, **kwargs):
        raise AssertionError("the model was built (and images decoded after it) before the labels were checked")

    monkeypatch.setattr(run_image_classification, "build_model", not_reached)
    floats = labelled_digits(tmp_path / "floats", lambda digit: digit + 0.5)
    argv = [*TINY, "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--dataset_name"]
    with pytest.raises(ValueError, match=r"train label column 'label' holds \d\.5, not a class id"):
        run_image_classification.main([*argv, str(floats)])
    unseen = labelled_digits(tmp_path / "unseen", lambda digit: NAMES[digit], counts=(3, 24))  # 3 digits in train
    with pytest.raises(ValueError, match=r"validation label '[a-z]+' \(column 'label'; \d such name\(s\)\) is not one"):
        run_image_classification.main([*argv, str(unseen)])


def test_feature_monitor_takes_class_names_and_refuses_fractions(tmp_path):
    named = labelled_digits(tmp_path / "named", lambda digit: NAMES[digit], counts=(60, 30))
    metrics = evaluate_features.main([str(TINY_PRETRAINED), "--dataset", str(named), "--crop_pct", "1"])
    assert 0 <= metrics["eval_knn_top1_cls"] <= 1
    floats = labelled_digits(tmp_path / "floats", lambda digit: digit / 2)
    with pytest.raises(ValueError, match=r"monitor's data set .* label column 'label' holds \d\.5, not a class id"):
        evaluate_features.main([str(TINY_PRETRAINED), "--dataset", str(floats), "--crop_pct", "1"])


def test_pretraining_refuses_monitor_labels_before_decoding_its_training_images(tmp_path, monkeypatch):
    def not_reached(*args, **kwargs):
        raise AssertionError("the training images were decoded before the monitor's labels were checked")

    monkeypatch.setattr(run_pretraining, "verify_splits", not_reached)
    floats = labelled_digits(tmp_path / "floats", lambda digit: digit / 2)
    argv = [*TINY, "--output_dir", str(tmp_path / "out"), "--dataset_name", "digits", "--max_steps", "1"]
    with pytest.raises(ValueError, match=r"monitor's data set .* label column 'label' holds \d\.5, not a class id"):
        run_pretraining.main([*argv, "--monitor_dataset", str(floats)])


def test_splits_the_run_does_not_read_are_not_checked(tmp_path):
    """A source's test split is never read: its labels need not be class ids (imagenet-1k's test labels are -1, a
    test split may have no label column, or null names), and its images are not decoded."""
    digits = load_digits_dataset()
    test = digits["validation"].select(range(8))
    for name, split in [
        ("unlabelled", test.cast_column("label", Value("int64")).map(lambda row: {"label": -1})),  # imagenet-1k
        ("no_label_column", test.remove_columns("label")),
    ]:
        DatasetDict(train=digits["train"].select(range(48)), validation=test, test=split).save_to_disk(tmp_path / name)
        loaded = load_image_datasets(SimpleNamespace(**DATA, dataset_name=str(tmp_path / name)))
        assert sorted(loaded) == ["train", "validation"]
        argv = [*TINY, "--dataset_name", str(tmp_path / name), "--output_dir", str(tmp_path / f"out_{name}")]
        assert "eval_accuracy" in run_image_classification.main([*argv, "--max_steps", "1"])
    named = labelled_digits(tmp_path / "named", lambda digit: NAMES[digit])
    Dataset.from_dict({"image": test["image"], "label": [None] * 8}).to_parquet(str(named / "test.parquet"))
    argv = [*TINY, "--dataset_name", str(named), "--output_dir", str(tmp_path / "out_named"), "--max_steps", "1"]
    assert "eval_accuracy" in run_image_classification.main(argv)
    # evaluation alone does not read the train split: a class the model lacks there is no error
    other = tmp_path / "other_train"
    other.mkdir()
    shutil.copy(named / "validation.parquet", other / "validation.parquet")
    Dataset.from_dict({"image": test["image"], "label": ["eleven"] * 8}).to_parquet(str(other / "train.parquet"))
    evaluate = [*TINY, "--dataset_name", str(other), "--output_dir", str(tmp_path / "eval"), "--do_train", "false"]
    assert "eval_accuracy" in run_image_classification.main(
        [*evaluate, "--model_name_or_path", str(tmp_path / "out_named")]
    )


def test_class_labels_numbered_otherwise_get_the_reference_ids_by_name():
    """A ClassLabel split numbered otherwise than the train split (or a saved model) takes their id of each name."""

    def split(names, labels):
        return Dataset.from_dict({"label": labels}, features=Features({"label": ClassLabel(names=names)}))

    data = {"train": split(["a", "b", "c"], [0, 1, 2]), "validation": split(["a", "c"], [1, 0, 1])}
    class_id_labels(data, "label")
    assert data["validation"].features["label"].names == ["a", "b", "c"] and data["validation"]["label"] == [2, 0, 2]
    data = {"validation": split(["a", "b"], [0, 1])}
    class_id_labels(data, "label", classes=["b", "a"])
    assert data["validation"]["label"] == [1, 0]
    data = {"validation": split(["a", "x", "y"], [0, 1, 2])}
    with pytest.raises(
        ValueError, match=r"validation label 'x' \(column 'label'; 2 such name\(s\)\) is not one of the"
    ):
        class_id_labels(data, "label", classes=["b", "a"])
    data = {"validation": split(["cat", "dog"], [0, 1])}  # nothing in common with ids as names: ids kept
    class_id_labels(data, "label", classes=["0", "1"])
    assert data["validation"].features["label"].names == ["cat", "dog"] and data["validation"]["label"] == [0, 1]


def test_evaluation_of_an_image_folder_without_some_classes_scores_them_by_name(tmp_path):
    """An ImageFolder of validation images alone numbers the class folders it has: without 'eight' (the first of
    the sorted names) every id would shift by one. Scored by name, it scores as the same images with names."""
    data = labelled_digits(tmp_path / "named", lambda digit: NAMES[digit], counts=(96, 60))
    common = [*TINY, "--per_device_eval_batch_size", "64", "--dataloader_num_workers", "0"]
    run_image_classification.main(
        [*common, "--dataset_name", str(data), "--output_dir", str(tmp_path / "model"), "--max_steps", "12"]
        + ["--base_learning_rate", "5e-3", "--save_strategy", "no", "--do_eval", "false"]
    )
    validation = load_dataset("parquet", data_files=str(data / "validation.parquet"), split="train")
    validation = validation.filter(lambda label: label != "eight", input_columns="label")
    (tmp_path / "kept").mkdir()
    validation.to_parquet(str(tmp_path / "kept" / "validation.parquet"))
    for index, row in enumerate(validation):
        (tmp_path / "folders" / row["label"]).mkdir(parents=True, exist_ok=True)
        row["image"].save(tmp_path / "folders" / row["label"] / f"{index}.png")
    evaluate = [*common, "--model_name_or_path", str(tmp_path / "model"), "--do_train", "false"]
    by_name = run_image_classification.main(
        [*evaluate, "--dataset_name", str(tmp_path / "kept")] + ["--output_dir", str(tmp_path / "by_name")]
    )
    by_folder = run_image_classification.main(
        [*evaluate, "--validation_dir", str(tmp_path / "folders")] + ["--output_dir", str(tmp_path / "by_folder")]
    )
    assert by_folder["eval_loss"] == pytest.approx(by_name["eval_loss"], rel=1e-6)
    assert by_folder["eval_accuracy"] == by_name["eval_accuracy"]
