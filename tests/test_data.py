"""Data: the built-in digits, image-mode conversion, image-column detection, corrupt-image checks, transforms."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from mae_hf.data import (
    find_image_column,
    load_digits_dataset,
    pretrain_transform,
    to_model_mode,
    verify_images,
)
from mae_hf.data.digits import digit_images


def test_digits_are_real_and_split_the_same_way_every_time():
    first, second = load_digits_dataset(), load_digits_dataset()
    assert (len(first["train"]), len(first["validation"])) == (1500, 297)
    assert first["validation"]["label"] == second["validation"]["label"]
    assert set(first["train"]["label"]) == set(range(10))
    images, labels = digit_images()
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert np.array_equal(np.asarray(images[0]), np.round(raw.images[0] * 255 / 16).astype(np.uint8))
    assert first["train"][0]["image"].size == (8, 8)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb_or_l(mode):
    image = Image.new("RGB", (4, 3), (200, 100, 50)).convert(mode)
    assert to_model_mode(image).mode == "RGB" and to_model_mode(image).size == (4, 3)
    assert to_model_mode(image, num_channels=1).mode == "L"


def test_sixteen_bit_images_are_rescaled_not_clipped():
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    converted = np.asarray(to_model_mode(Image.fromarray(array), num_channels=1))
    assert converted.tolist() == [[0, 128, 255]]


def test_image_column_detection_and_errors():
    ds = Dataset.from_dict({"picture": [Image.new("RGB", (2, 2))], "y": [0]}).cast_column("picture", ImageFeature())
    assert find_image_column(ds) == "picture"
    with pytest.raises(ValueError, match=r"--image_column_name 'img' is not a column.*\['picture', 'y'\]"):
        find_image_column(ds, "img")
    with pytest.raises(ValueError, match=r"no image column; pass --image_column_name.*\['a'\]"):
        find_image_column(Dataset.from_dict({"a": [1]}))


def test_verify_images_names_or_drops_corrupt_files(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    ds = Dataset.from_dict({"image": [str(good), str(bad), str(good)]}).cast_column("image", ImageFeature())
    with pytest.raises(ValueError, match=r"1 train image\(s\) cannot be decoded: .*bad\.jpg"):
        verify_images(ds, "image")
    kept, skipped = verify_images(ds, "image", skip_corrupt=True)
    assert skipped == 1 and len(kept) == 2


def test_pretrain_transform_output():
    torch.manual_seed(0)
    out = pretrain_transform(16)(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_mixup_collator_gives_smoothed_soft_targets_that_the_loss_accepts():
    from conftest import tiny_config

    from mae_hf import MAEForImageClassification
    from mae_hf.data import MixupCollator

    torch.manual_seed(0)
    examples = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 4} for i in range(6)]
    batch = MixupCollator(num_classes=4, label_smoothing=0.1)(examples)
    targets = batch["labels"]
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(1), torch.ones(6))
    assert targets.min() >= 0.1 / 4 - 1e-6  # smoothing floor
    assert (targets > 0.1 / 4 + 1e-6).sum(1).max() == 2  # two classes mixed per image
    plain = MixupCollator(num_classes=4, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.1)(examples)
    assert torch.allclose(plain["labels"][0], torch.tensor([0.925, 0.025, 0.025, 0.025]))
    assert torch.equal(plain["pixel_values"], torch.stack([e["pixel_values"] for e in examples]))
    model = MAEForImageClassification(tiny_config(num_labels=4))
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0


def test_class_balanced_subset_is_fixed_and_balanced():
    from mae_hf.data import class_balanced_subset

    train = load_digits_dataset()["train"]
    first = class_balanced_subset(train, "label", 0.1, seed=0)
    second = class_balanced_subset(train, "label", 0.1, seed=0)
    assert first["label"] == second["label"] and len(first) == 151  # per-class rounding
    counts = np.bincount(first["label"])
    assert counts.min() >= 13 and counts.max() <= 17  # 10 % of each class (about 150 per class)
    with pytest.raises(ValueError, match="leaves class"):
        class_balanced_subset(train, "label", 0.001)


def test_randaugment_draws_a_magnitude_per_image():
    from mae_hf.data.transforms import RandAugmentMstd

    augment = RandAugmentMstd(9.0, 0.5)
    drawn = set()
    image = Image.new("RGB", (16, 16), (100, 50, 25))
    for _ in range(20):
        augment(image)
        drawn.add(augment.magnitude)
    assert len(drawn) > 3 and all(70 <= m <= 100 for m in drawn)  # N(9, 0.5) in tenths, clipped at 10


def test_one_normalisation_matches_torchvision_within_float32_rounding():
    from torchvision.transforms import v2

    from mae_hf.data import Normalize, normalisation

    pixels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(3, 16, 16)  # every uint8 value per channel
    for mean, std in (normalisation(3), normalisation(1), ((0.0,) * 3, (1.0,) * 3)):
        inputs = pixels[: len(mean)]
        reference = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(inputs))
        assert torch.allclose(Normalize(mean, std)(inputs), reference, rtol=0, atol=1e-6)
    # mean 0 / std 1 reads back as colour / 255 exactly, as torchvision's scaling gives it
    assert torch.equal(Normalize((0.0,) * 3, (1.0,) * 3)(pixels), v2.ToDtype(torch.float32, scale=True)(pixels))
    with pytest.raises(TypeError, match="uint8"):
        Normalize()(pixels.float())
    with pytest.raises(ValueError, match="std must not be 0"):
        Normalize((0.5,), (0.0,))
