"""run_semantic_segmentation.py end to end on tiny models: digits_seg, an ADE20K-layout folder, an MAE
checkpoint as encoder, sliding-window evaluation, the pipeline, and input errors."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_ade_folder
from helpers import ROOT, SEGMENT_TINY, torchrun
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, pipeline

import run_semantic_segmentation
from mae_hf import MAEForPreTraining, MAEForSemanticSegmentation, MAESegmentationConfig

TINY = SEGMENT_TINY


def run(tmp_path, *extra, out="out"):
    return run_semantic_segmentation.main(["--output_dir", str(tmp_path / out), *TINY, *extra])


def make_ade_folder(root, count=4, bad_size=False, bad_label=False):
    """40x48 pairs; optionally file 1 holds label 200, file 2's annotation is 47 px wide."""
    labels = np.random.default_rng(1).integers(0, 151, (40, 48), dtype=np.uint8)
    labels[0, 0] = 200
    return write_ade_folder(
        root,
        count=count,
        shape=(40, 48),
        labels={"training": {1: labels}} if bad_label else None,
        sizes={"training": {2: (47, 40)}} if bad_size else None,
    )


def test_digits_seg_end_to_end_with_metrics_figures_and_pipeline(tmp_path):
    metrics = run(tmp_path, "--dataset_name", "digits_seg", "--max_steps", "3")
    for key in ("eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_iou_background"):
        assert key in metrics and (np.isnan(metrics[key]) or 0 <= metrics[key] <= 1), key
    out = tmp_path / "out"
    assert (out / "segmentation.png").exists() and (out / "preprocessor_config.json").exists()
    assert Image.open(out / "training_curves.png").size == (1260, 640)  # loss, eval loss, lr | mIoU
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert isinstance(model, MAEForSemanticSegmentation) and model.config.num_labels == 11
    segmenter = pipeline("image-segmentation", model=str(out))
    results = segmenter(Image.new("RGB", (50, 40), (20, 20, 20)))
    assert results and all(r["mask"].size == (50, 40) for r in results)
    assert {r["label"] for r in results} <= set(model.config.id2label.values())


def test_ade_folder_with_reduce_labels_and_sliding_window(tmp_path):
    root = make_ade_folder(tmp_path / "ADEChallengeData2016")
    metrics = run(
        tmp_path,
        "--dataset_name",
        str(root),
        "--reduce_labels",
        "--max_steps",
        "2",
        "--inference_mode",
        "slide",
        "--test_crop_size",
        "32",
        "--test_stride",
        "16",
    )
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert len(config["id2label"]) == 150 and config["inference_mode"] == "slide"
    assert "eval_mean_iou" in metrics


def test_mae_checkpoint_as_encoder(tmp_path):
    mae = MAEForPreTraining(
        tiny_config(image_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    )
    mae.save_pretrained(tmp_path / "mae")
    run(
        tmp_path,
        "--dataset_name",
        "digits_seg",
        "--model_name_or_path",
        str(tmp_path / "mae"),
        "--max_steps",
        "1",
        "--do_eval",
        "false",
    )
    model = MAEForSemanticSegmentation.from_pretrained(tmp_path / "out")
    assert model.vit.pos_embed.shape == (1, 17, 32)  # 16 px checkpoint resampled to 32 px (4x4 patches)


@pytest.mark.parametrize(
    "problem, message",
    [
        ("size", r"ADE_training_00000002.*\(47, 40\).*\(48, 40\)|\(48, 40\).*\(47, 40\)"),
        ("label", r"ADE_training_00000001.*200"),
    ],
)
def test_bad_annotations_are_named(tmp_path, problem, message):
    root = make_ade_folder(tmp_path / "ADEChallengeData2016", bad_size=problem == "size", bad_label=problem == "label")
    with pytest.raises(ValueError, match=message):
        run(tmp_path, "--dataset_name", str(root), "--max_steps", "1", "--num_labels", "151")
    assert not (tmp_path / "out").exists()


def odd_size_ade_folder(root):
    """ADE20K-layout pairs of odd, different sizes; annotations hold blocks of classes 0..6 (0 = 'other')."""
    rng = np.random.default_rng(3)
    sizes = {"training": [(40, 48)] * 2, "validation": [(37, 53), (61, 29), (45, 45), (23, 71)]}
    for split, shapes in sizes.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i, (height, width) in enumerate(shapes):
            blocks = rng.integers(0, 7, (height // 7 + 1, width // 7 + 1)).astype(np.uint8)
            annotation = np.kron(blocks, np.ones((7, 7), dtype=np.uint8))[:height, :width]
            image = rng.integers(0, 60, (height, width, 3)) + 25 * annotation[..., None]
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / split / f"ADE_{split}_{i:08d}.png")
            Image.fromarray(annotation, mode="L").save(root / "annotations" / split / f"ADE_{split}_{i:08d}.png")
    return root


def direct_scores(model_dir, root, scale=(128, 32)):
    """mmsegmentation's scoring, computed here image by image: the image resized (keep ratio) for the model, the
    logits resized back (bilinear) to the annotation's size, the annotation as read from its file (0 -> ignored,
    1..150 -> 0..149), one confusion matrix over all images. Returns {class name: IoU} of the classes present."""
    from torchvision.transforms.v2 import functional as TF

    model = MAEForSemanticSegmentation.from_pretrained(model_dir).eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    matrix = np.zeros((150, 150), dtype=np.int64)
    for path in sorted((root / "images" / "validation").iterdir()):
        image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        labels = np.asarray(Image.open(root / "annotations" / "validation" / path.name)).astype(np.int64)
        labels = np.where(labels == 0, 255, labels - 1)
        height, width = labels.shape
        factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
        resized = TF.resize(image, [int(height * factor + 0.5), int(width * factor + 0.5)], antialias=False)
        with torch.no_grad():
            logits = model(((resized.float() / 255 - mean) / std)[None]).logits
        prediction = (
            torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            .argmax(dim=1)[0]
            .numpy()
        )
        counted = labels != 255
        matrix += np.bincount(150 * labels[counted] + prediction[counted], minlength=150 * 150).reshape(150, 150)
    intersection = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    return {model.config.id2label[c]: intersection[c] / union[c] for c in range(150) if union[c] > 0}


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_ade_scores_at_the_original_annotation_size_like_mmsegmentation(tmp_path, mode):
    root = odd_size_ade_folder(tmp_path / "ADEChallengeData2016")
    data = [
        "--dataset_name",
        str(root),
        "--reduce_labels",
        "--inference_mode",
        mode,
        "--test_crop_size",
        "32",
        "--test_stride",
        "21",
    ]
    run(tmp_path, *data, "--max_steps", "30", "--learning_rate", "3e-3", "--do_eval", "false", out="model")
    scores = {}
    for batch in (1, 3):  # 3: images of different sizes in one batch
        scores[batch] = run(
            tmp_path,
            *data,
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--do_train",
            "false",
            "--per_device_eval_batch_size",
            str(batch),
            out=f"eval_{batch}",
        )
    expected = direct_scores(tmp_path / "model", root)
    assert len(expected) >= 4 and sum(value > 0 for value in expected.values()) >= 2  # predictions that overlap
    for batch, metrics in scores.items():
        ours = {
            key.removeprefix("eval_iou_"): value
            for key, value in metrics.items()
            if key.startswith("eval_iou_") and not np.isnan(value)
        }
        assert ours.keys() == expected.keys(), batch
        for name, value in expected.items():
            assert ours[name] == pytest.approx(value, abs=1e-9), (batch, name)
        assert metrics["eval_mean_iou"] == pytest.approx(np.mean(list(expected.values())), abs=1e-9)


@pytest.mark.parametrize("flip", ["0", "1"])
def test_flip_probability_reaches_the_training_transform(tmp_path, flip):
    """--flip_probability was parsed but never passed on: every digit was flipped half of the time."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    from mae_hf.run_utils import parse_arguments

    columns = np.arange(32)[None, :] // 8 + 4 * (np.arange(32)[:, None] // 16)  # classes grow left to right
    pair = {"image": [Image.new("RGB", (32, 32))], "annotation": [Image.fromarray(columns.astype(np.uint8), "L")]}
    datasets = {
        split: Dataset.from_dict(pair, features=Features({"image": ImageFeature(), "annotation": ImageFeature()}))
        for split in ("train", "validation")
    }
    _, data_args, _ = parse_arguments(
        (
            run_semantic_segmentation.SegmentationModelArguments,
            run_semantic_segmentation.SegmentationDataArguments,
            run_semantic_segmentation.SegmentationTrainingArguments,
        ),
        [
            "--output_dir",
            str(tmp_path),
            "--crop_size",
            "32",
            "--resize_scale",
            "32",
            "32",
            "--ratio_range",
            "1",
            "1",
            "--flip_probability",
            flip,
        ],
    )
    config = MAEForSemanticSegmentation.config_class(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=8,
        out_indices=(0, 1, 2, 3),
    )
    train = run_semantic_segmentation.attach_transforms(datasets, ("image", "annotation"), data_args, config)["train"]
    for _ in range(12):
        labels = train[0]["labels"]
        steps = labels[:, 1:] - labels[:, :-1]
        assert (steps <= 0).all() if flip == "1" else (steps >= 0).all()


def test_two_processes_score_odd_sizes_like_one(tmp_path):
    """Maps of different widths on the two processes: the Trainer pads only the height before gathering."""
    root = odd_size_ade_folder(tmp_path / "ADEChallengeData2016")
    data = ["--dataset_name", str(root), "--reduce_labels", "--num_visualized_images", "0"]
    run(tmp_path, *data, "--max_steps", "30", "--learning_rate", "3e-3", "--do_eval", "false", out="model")
    two = torchrun(
        ROOT / "run_semantic_segmentation.py",
        [
            "--output_dir",
            str(tmp_path / "two"),
            *TINY,
            *data,
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--do_train",
            "false",
            "--use_cpu",
            "--per_device_eval_batch_size",
            "2",
        ],
    )
    assert two.returncode == 0, two.stderr[-4000:]
    metrics = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    expected = direct_scores(tmp_path / "model", root)
    ours = {k.removeprefix("eval_iou_"): v for k, v in metrics.items() if k.startswith("eval_iou_") and not np.isnan(v)}
    assert ours.keys() == expected.keys()
    assert all(ours[name] == pytest.approx(value, abs=1e-9) for name, value in expected.items())


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (0, 1, 1, 1)])
def test_unused_parameters_rule_matches_the_gradients(out_indices):
    """The script asks DDP to search for parameters without gradients exactly when some exist (the search costs a
    graph traversal per step, and transformers' default search warns on every process when there are none)."""
    config = MAESegmentationConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=out_indices,
        decode_channels=16,
        auxiliary_channels=8,
        num_labels=3,
    )
    model = MAEForSemanticSegmentation(config).train()
    model(torch.randn(2, 3, 16, 16), labels=torch.randint(0, 3, (2, 16, 16))).loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert run_semantic_segmentation.has_unused_parameters(config) == bool(unused)


@pytest.mark.parametrize("split", ["training", "validation"])
def test_truncated_image_is_named_before_training_or_skipped(tmp_path, split, caplog):
    root = make_ade_folder(tmp_path / "ADEChallengeData2016")
    image = root / "images" / split / f"ADE_{split}_00000001.jpg"
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])  # headers intact, pixels cut off
    with pytest.raises(
        ValueError, match=rf"its image .*ADE_{split}_00000001\.jpg cannot be read .*--skip_corrupt_images"
    ):
        run(tmp_path, "--dataset_name", str(root), "--max_steps", "1", "--num_labels", "151")
    assert not (tmp_path / "out").exists()
    with caplog.at_level(logging.WARNING, logger="mae_hf"):
        metrics = run(
            tmp_path,
            "--dataset_name",
            str(root),
            "--max_steps",
            "1",
            "--num_labels",
            "151",
            "--skip_corrupt_images",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "1",
        )
    assert metrics["train_loss"] > 0 and "eval_mean_iou" in metrics
    name = {"training": "train", "validation": "validation"}[split]
    assert f"skipped 1 {name} image/annotation pair(s) that cannot be read (--skip_corrupt_images)" in caplog.text


def test_evaluation_alone_needs_no_train_split(tmp_path):
    """--do_train false scores an ADE20K folder that has only images/validation and annotations/validation, and a
    save_to_disk folder that has only a validation split; training still needs the training part."""
    import shutil

    from datasets import DatasetDict

    from mae_hf.data import load_digits_seg_dataset

    root = make_ade_folder(tmp_path / "ADEChallengeData2016")
    data = ["--dataset_name", str(root), "--reduce_labels"]
    run(tmp_path, *data, "--max_steps", "2", "--do_eval", "false", out="model")
    model = ["--model_name_or_path", str(tmp_path / "model"), "--do_train", "false"]
    full = run(tmp_path, *data, *model, out="eval")
    for side in ("images", "annotations"):
        shutil.rmtree(root / side / "training")
    alone = run(tmp_path, *data, *model, out="eval_alone")
    assert alone["eval_mean_iou"] == pytest.approx(full["eval_mean_iou"])
    with pytest.raises(ValueError, match="images/training"):
        run(tmp_path, *data, "--max_steps", "1", out="train")
    saved = tmp_path / "validation_only"
    DatasetDict(validation=load_digits_seg_dataset()["validation"].select(range(8))).save_to_disk(str(saved))
    metrics = run(tmp_path, "--dataset_name", str(saved), "--num_labels", "11", "--do_train", "false", out="saved")
    assert 0 <= metrics["eval_mean_iou"] <= 1
