"""Segmentation data: digits_seg, ADE20K-layout folders, column detection, annotation checks, the joint
image + class-map augmentation (alignment, NEAREST maps, crops, cat_max_ratio) and padding collation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import write_ade_folder
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from mae_hf.data import (
    ADE20K_LABELS,
    SegmentationBatchTransform,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    check_annotations,
    collate_segmentation,
    collate_segmentation_with_sizes,
    find_segmentation_columns,
    load_ade_folder,
    load_image_datasets,
    load_segmentation_datasets,
    reduce_labels_map,
)
from mae_hf.data.digits_seg import DIGITS_SEG_LABELS, digit_pools, load_digits_seg_dataset
from mae_hf.data.transforms import CatMaxRandomCrop

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # pixel_values = colour / 255, easy to read back


def data_args(name, **overrides):
    fields = dict(
        dataset_name=name,
        dataset_config_name=None,
        image_column_name=None,
        annotation_column_name=None,
        train_val_split=0.25,
        max_train_samples=None,
        max_eval_samples=None,
        cache_dir=None,
        reduce_labels=False,
        num_labels=None,
    )
    return SimpleNamespace(**{**fields, **overrides})


def write_ade(root, labels=None, sizes=None, count=3):
    return write_ade_folder(root, count=count, labels=labels, sizes=sizes)


@pytest.fixture(scope="module")
def digits_seg():
    return load_digits_seg_dataset()


# ---------------------------------------------------------------------------------------------------- digits_seg


def test_digits_seg_is_deterministic_and_loads_by_name(digits_seg):
    assert (len(digits_seg["train"]), len(digits_seg["validation"])) == (800, 200)
    datasets, image_column, annotation_column, names = load_segmentation_datasets(data_args("digits_seg"))
    assert (image_column, annotation_column, names) == ("image", "annotation", DIGITS_SEG_LABELS)
    for i in (0, 123, 799):
        for column in ("image", "annotation"):
            assert np.array_equal(np.asarray(datasets["train"][i][column]), np.asarray(digits_seg["train"][i][column]))
    pools = digit_pools()
    assert not set(pools["train"]) & set(pools["validation"])  # validation canvases use unseen digits


def test_digits_seg_unlabelled_configuration_for_pretraining(digits_seg):
    unlabelled = load_digits_seg_dataset("unlabelled")
    assert unlabelled["train"].column_names == ["image"] and len(unlabelled["train"]) == 10_000
    assert unlabelled["validation"].column_names == ["image"]
    for i in (0, 199):  # the same validation images as the labelled configuration
        assert np.array_equal(
            np.asarray(unlabelled["validation"][i]["image"]), np.asarray(digits_seg["validation"][i]["image"])
        )
    assert not np.array_equal(np.asarray(unlabelled["train"][0]["image"]), np.asarray(digits_seg["train"][0]["image"]))
    assert load_digits_seg_dataset("default")["train"].column_names == ["image", "annotation"]
    with pytest.raises(ValueError, match="digits_seg has the configurations default, unlabelled; got 'labelled'"):
        load_digits_seg_dataset("labelled")
    images = load_image_datasets(
        SimpleNamespace(
            dataset_name="digits_seg",
            dataset_config_name="unlabelled",
            train_dir=None,
            streaming=False,
            max_train_samples=None,
            max_eval_samples=None,
            cache_dir=None,
        )
    )
    assert len(images["train"]) == 10_000  # what run_pretraining.py reads with --dataset_config_name unlabelled


def test_digits_seg_classes_follow_the_strokes(digits_seg):
    counts = np.zeros(11, dtype=np.int64)
    for example in digits_seg["validation"].select(range(100)):
        image, annotation = np.asarray(example["image"]), np.asarray(example["annotation"])
        assert example["image"].mode == "RGB" and example["annotation"].mode == "L" and image.shape[:2] == (32, 32)
        counts += np.bincount(annotation.ravel(), minlength=11)[:11]
        assert annotation.max() <= 10
        brightness = image.max(axis=-1)
        assert brightness[annotation > 0].min() >= 90  # stroke pixels are bright ...
        assert brightness[annotation == 0].mean() < 45  # ... on a dark background
        assert (annotation[brightness > 150] > 0).all()  # every clearly bright pixel is a stroke
        for digit in set(np.unique(annotation).tolist()) - {0}:
            rows, columns = np.nonzero(annotation == digit)
            box = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
            assert len(rows) < 0.9 * box  # the strokes, not their box
            assert rows.max() - rows.min() + 1 >= 12  # digits drawn at 14-22 px: two pixels per source pixel
    assert counts.sum() == 100 * 32 * 32 and (counts > 0).all()  # all 11 classes occur


# ---------------------------------------------------------------------------------------------------- folders


def test_ade_folder_loads_and_reduce_labels(tmp_path):
    root = write_ade(tmp_path / "ADEChallengeData2016")
    datasets = load_ade_folder(str(root))
    assert {k: len(v) for k, v in datasets.items()} == {"train": 3, "validation": 3}
    example = datasets["train"][0]
    assert example["image"].size == example["annotation"].size == (12, 10) and example["annotation"].mode == "L"
    _, _, _, names = load_segmentation_datasets(data_args(str(root), reduce_labels=True))
    assert names == ADE20K_LABELS and len(names) == 150
    assert load_segmentation_datasets(data_args(str(root)))[3][:2] == ["other", "wall"]

    raw = np.array([[0, 1, 2], [149, 150, 255]], dtype=np.uint8)
    reduced = reduce_labels_map(raw)
    assert reduced.dtype == np.uint8 and reduced.tolist() == [[255, 0, 1], [148, 149, 255]]


def test_ade_folder_errors_name_files_and_folders(tmp_path):
    root = write_ade(tmp_path / "ade")
    (root / "images" / "training" / "ADE_extra.jpg").write_bytes(
        (root / "images" / "training" / "ADE_training_00000000.jpg").read_bytes()
    )
    with pytest.raises(ValueError, match=r"1 image\(s\) without an annotation: .*ADE_extra\.jpg"):
        load_ade_folder(str(root))
    (root / "images" / "training" / "ADE_extra.jpg").unlink()
    (root / "annotations" / "validation" / "ADE_validation_00000001.png").unlink()
    with pytest.raises(ValueError, match=r"validation .*1 image\(s\) without an annotation: .*_00000001\.jpg"):
        load_ade_folder(str(root))
    for sub in ("training", "validation"):
        for path in (root / "annotations" / sub).iterdir():
            path.unlink()
        (root / "annotations" / sub).rmdir()
    with pytest.raises(ValueError, match=r"annotations/training does not exist"):
        load_ade_folder(str(root))


def test_parquet_columns_are_detected_and_errors_list_columns(tmp_path):
    rng = np.random.default_rng(0)
    rows = {
        "pixel_values": [Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)) for _ in range(8)],
        "label": [Image.fromarray(rng.integers(0, 5, (6, 5), dtype=np.uint8), mode="L") for _ in range(8)],
        "scene": list(range(8)),
    }
    features = Features({"pixel_values": ImageFeature(), "label": ImageFeature(), "scene": Value("int64")})
    (tmp_path / "data").mkdir()
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "data" / "train.parquet"))
    datasets, image_column, annotation_column, names = load_segmentation_datasets(data_args(str(tmp_path)))
    assert (image_column, annotation_column) == ("pixel_values", "label")
    assert (len(datasets["train"]), len(datasets["validation"])) == (6, 2) and names == [str(i) for i in range(5)]
    with pytest.raises(ValueError, match=r"--annotation_column_name 'mask'.*\['pixel_values', 'label', 'scene'\]"):
        load_segmentation_datasets(data_args(str(tmp_path), annotation_column_name="mask"))
    with pytest.raises(ValueError, match=r"no annotation column.*\['pixel_values', 'scene'\]"):
        find_segmentation_columns(Dataset.from_dict({"pixel_values": [1], "scene": [0]}))
    with pytest.raises(ValueError, match=r"column 'label' holds .*not images.*--annotation_column_name"):
        find_segmentation_columns(Dataset.from_dict({"image": [Image.new("RGB", (2, 2))], "label": [3]}))


# ---------------------------------------------------------------------------------------------------- checks


def test_check_annotations_names_files_sizes_and_values(tmp_path):
    bad_label = np.full((10, 12), 3, dtype=np.uint8)
    bad_label[0, 0], bad_label[0, 1] = 200, 255
    root = write_ade(tmp_path / "ade", labels={"training": {1: bad_label}}, sizes={"training": {2: (11, 10)}})
    datasets = load_ade_folder(str(root))
    with pytest.raises(
        ValueError,
        match=r"ADE_training_00000002\.png has size \(11, 10\).*"
        r"ADE_training_00000002\.jpg has size \(12, 10\)",
    ):
        check_annotations(datasets["train"].select([0, 2]), "image", "annotation", 151)
    with pytest.raises(ValueError, match=r"ADE_training_00000001\.png has label 200.*num_labels=151"):
        check_annotations(datasets["train"].select([0, 1]), "image", "annotation", 151)
    check_annotations(datasets["validation"], "image", "annotation", 151)  # 0..150; 255 would be allowed too
    ok = np.array([[0, 1, 150, 255]], dtype=np.uint8).repeat(10, 0).repeat(3, 1)
    root = write_ade(tmp_path / "ade2", labels={"training": {0: ok}}, count=1)
    check_annotations(load_ade_folder(str(root))["train"], "image", "annotation", 150, reduce_labels=True)
    with pytest.raises(ValueError, match=r"label 150 \(151 before --reduce_labels\)"):
        root = write_ade(tmp_path / "ade3", labels={"training": {0: ok + (ok == 150)}}, count=1)
        check_annotations(load_ade_folder(str(root))["train"], "image", "annotation", 150, reduce_labels=True)


def test_check_annotations_names_rows_without_files():
    features = Features({"image": ImageFeature(), "annotation": ImageFeature()})
    ds = Dataset.from_dict(
        {"image": [Image.new("RGB", (4, 4))] * 2, "annotation": [Image.new("L", (4, 4)), Image.new("L", (4, 5), 9)]},
        features=features,
    )
    with pytest.raises(ValueError, match=r"row 1 has size \(4, 5\).*row 1 has size \(4, 4\)"):
        check_annotations(ds, "image", "annotation", 5)


# ---------------------------------------------------------------------------------------------------- transforms


def stripes(width=64, height=48, stripe=8):
    """A class map of vertical stripes (class = x // stripe) and an image whose colour encodes the class."""
    classes = np.broadcast_to(np.arange(width) // stripe, (height, width)).astype(np.uint8)
    palette = np.stack([20 + 30 * np.arange(8), 230 - 30 * np.arange(8), np.full(8, 100)], axis=1)
    return Image.fromarray(palette[classes].astype(np.uint8)), Image.fromarray(classes, mode="L")


def test_train_transform_keeps_image_and_map_aligned():
    image, annotation = stripes()
    transform = SegmentationTrainTransform(32, scale=(128, 48), ratio_range=(0.5, 2.0), photometric=False, **PLAIN)
    agree = total = 0
    for seed in range(20):
        torch.manual_seed(seed)
        pixel_values, labels = transform(image, annotation)
        assert pixel_values.shape == (3, 32, 32) and pixel_values.dtype == torch.float32
        assert labels.shape == (32, 32) and labels.dtype == torch.int64
        assert set(labels.unique().tolist()) <= set(range(8)) | {255}
        valid = labels != 255
        red = pixel_values[0] * 255
        nearest = ((red - 20) / 30).round().clamp(0, 7).long()
        exact = valid & ((red - 20 - 30 * nearest).abs() < 1)  # pixels whose colour is one stripe's, unblended
        assert torch.equal(nearest[exact], labels[exact])
        assert (pixel_values[:, ~valid] == 0).all()  # padding: 0 in the image where the map is 255
        agree += (nearest[valid] == labels[valid]).sum().item()
        total += valid.sum().item()
    assert agree / total > 0.9  # only the bilinear blends at stripe borders may differ


def blocks(width=64, height=48, block=8):
    """A class map of block x block tiles whose class encodes both the row and the column of the tile (6 x 8
    tiles, classes 0..47), and an image whose red channel encodes the tile's row and green its column."""
    rows, columns = np.arange(height)[:, None] // block, np.arange(width)[None, :] // block
    classes = (rows * (width // block) + columns).astype(np.uint8)
    image = np.stack(np.broadcast_arrays(20 + 30 * rows, 20 + 25 * columns, np.full_like(rows, 100)), -1)
    return Image.fromarray(image.astype(np.uint8)), Image.fromarray(classes, mode="L")


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_rescale_crop_and_flip_move_image_and_map_together_in_both_directions(flip):
    image, annotation = blocks()
    transform = SegmentationTrainTransform(
        32, scale=(128, 48), ratio_range=(0.5, 2.0), flip=flip, photometric=False, cat_max_ratio=1.0, **PLAIN
    )
    agree = total = 0
    for seed in range(20):
        torch.manual_seed(seed)
        pixel_values, labels = transform(image, annotation)
        red, green = pixel_values[0] * 255, pixel_values[1] * 255
        row, column = ((red - 20) / 30).round().long(), ((green - 20) / 25).round().long()
        exact = (labels != 255) & ((red - 20 - 30 * row).abs() < 1) & ((green - 20 - 25 * column).abs() < 1)
        assert torch.equal((row * 8 + column)[exact], labels[exact])  # unblended pixels: the map says the same tile
        valid = labels != 255
        agree += ((row * 8 + column)[valid] == labels[valid]).sum().item()
        total += valid.sum().item()
        columns_seen = column[exact].reshape(-1)
        if flip and len(columns_seen.unique()) > 1:  # flipped: the columns decrease from left to right
            first, last = exact.nonzero()[:, 1].min(), exact.nonzero()[:, 1].max()
            assert column[exact & (torch.arange(32) == first)].max() > column[exact & (torch.arange(32) == last)].min()
    assert agree / total > 0.85  # only bilinear blends at tile borders may differ


def test_photometric_distortion_changes_the_image_only():
    image, annotation = stripes()
    plain = SegmentationTrainTransform(32, scale=(128, 48), photometric=False, **PLAIN)
    distorted = SegmentationTrainTransform(32, scale=(128, 48), photometric=True, **PLAIN)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        a = plain(image, annotation)
        torch.manual_seed(seed)
        b = distorted(image, annotation)  # geometry draws come first: the same crop and flip
        assert torch.equal(a[1], b[1])
        changed += not torch.allclose(a[0], b[0])
    assert changed > 0


def test_maps_are_resized_nearest_and_small_images_padded():
    rng = np.random.default_rng(0)
    values = np.array([3, 77, 200, 255], dtype=np.uint8)
    annotation = Image.fromarray(values[rng.integers(0, 4, (20, 30))], mode="L")
    image = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    transform = SegmentationTrainTransform(24, scale=(60, 20), ratio_range=(0.5, 2.0), **PLAIN)
    for seed in range(10):
        torch.manual_seed(seed)
        pixel_values, labels = transform(image, annotation)
        assert pixel_values.shape == (3, 24, 24) and labels.shape == (24, 24)
        assert set(labels.unique().tolist()) <= {3, 77, 200, 255}  # NEAREST: no new values
    torch.manual_seed(0)
    small = SegmentationTrainTransform(64, scale=(30, 20), ratio_range=(1.0, 1.0), **PLAIN)
    pixel_values, labels = small(image, annotation)  # 30x20 < 64x64: padded at the bottom and right
    assert pixel_values.shape == (3, 64, 64) and (labels[20:] == 255).all() and (labels[:, 30:] == 255).all()
    assert (pixel_values[:, 20:] == 0).all() and (pixel_values[:, :, 30:] == 0).all()
    reduced = SegmentationTrainTransform(24, scale=(60, 20), reduce_labels=True, **PLAIN)
    assert set(reduced(image, annotation)[1].unique().tolist()) <= {2, 76, 199, 255}


def test_cat_max_ratio_is_respected_when_possible():
    classes = np.zeros((64, 64), dtype=np.uint8)
    classes[:, 32:] = 1  # a 32 px crop is balanced only when it straddles the middle
    annotation, image = Image.fromarray(classes, mode="L"), Image.new("RGB", (64, 64))

    def balanced_crops(cat_max_ratio):
        transform = SegmentationTrainTransform(
            32, scale=(64, 64), ratio_range=(1.0, 1.0), cat_max_ratio=cat_max_ratio, photometric=False, **PLAIN
        )
        count = 0
        for seed in range(30):
            torch.manual_seed(seed)
            labels = transform(image, annotation)[1]
            count += (labels == 0).float().mean().item() < 0.75 and (labels == 1).float().mean().item() < 0.75
        return count

    assert balanced_crops(0.75) >= 29 and balanced_crops(1.0) <= 20
    crop = CatMaxRandomCrop(2)  # 255 does not count: 2 of class 0 + 2 of class 1 is balanced
    assert crop._balanced(torch.tensor([[0, 1, 255, 255], [1, 0, 255, 255]]), (0, 0, 2, 4))


def test_eval_transform_resizes_the_image_and_leaves_the_annotation_untouched():
    image, annotation = stripes(48, 40, stripe=6)
    pixel_values, labels = SegmentationEvalTransform(scale=(128, 32), **PLAIN)(image, annotation)
    assert pixel_values.shape == (3, 32, 38)  # x 0.8: the shorter side is 32 (mmseg's Resize, keep_ratio)
    assert labels.dtype == torch.int64 and np.array_equal(labels.numpy(), np.asarray(annotation))  # as in the file
    reduced = SegmentationEvalTransform(scale=(128, 32), reduce_labels=True, **PLAIN)(image, annotation)[1]
    assert np.array_equal(reduced.numpy(), reduce_labels_map(np.asarray(annotation)))


def test_batch_transform_and_collate_pad_with_0_and_255(digits_seg):
    ds = digits_seg["train"].select(range(3))
    ds = ds.with_transform(SegmentationBatchTransform(SegmentationEvalTransform(scale=(32, 16)), "image", "annotation"))
    batch = collate_segmentation([ds[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["labels"].shape == (3, 32, 32)  # maps: original
    examples = [
        {"pixel_values": torch.ones(3, 4, 5), "labels": torch.full((4, 5), 2)},
        {"pixel_values": torch.ones(3, 6, 3), "labels": torch.full((6, 3), 1)},
    ]
    batch = collate_segmentation(examples)
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (2, 3, 6, 5) and batch["labels"].dtype == torch.int64
    assert (batch["pixel_values"][0, :, 4:] == 0).all() and (batch["labels"][0, 4:] == 255).all()
    assert (batch["pixel_values"][1, :, :, 3:] == 0).all() and (batch["labels"][1, :, 3:] == 255).all()
    assert (batch["labels"][0, :4] == 2).all() and (batch["labels"][1, :, :3] == 1).all()
    same = collate_segmentation([examples[0], examples[0]])
    assert torch.equal(same["pixel_values"], torch.stack([examples[0]["pixel_values"]] * 2))


def test_evaluation_collator_pads_images_and_maps_separately_and_gives_their_sizes():
    examples = [
        {"pixel_values": torch.ones(3, 4, 6), "labels": torch.full((9, 13), 2)},
        {"pixel_values": torch.ones(3, 5, 3), "labels": torch.full((11, 7), 1)},
    ]
    batch = collate_segmentation_with_sizes(examples)
    assert batch["pixel_values"].shape == (2, 3, 5, 6) and batch["labels"].shape == (2, 11, 13)
    assert batch["image_sizes"].tolist() == [[4, 6], [5, 3]] and batch["label_sizes"].tolist() == [[9, 13], [11, 7]]
    assert (batch["labels"][0, 9:] == 255).all() and (batch["labels"][1, :, 7:] == 255).all()
    unlabelled = collate_segmentation_with_sizes([{"pixel_values": e["pixel_values"]} for e in examples])
    assert set(unlabelled) == {"pixel_values", "image_sizes"}
