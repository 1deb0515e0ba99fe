"""run_semantic_segmentation.py end to end on tiny models: digits_seg, an ADE20K-layout folder, an MAE
checkpoint as encoder, sliding-window evaluation, the pipeline, and input errors."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_ade_folder
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, pipeline

import run_semantic_segmentation
from mae_hf import MAEForPreTraining, MAEForSemanticSegmentation, MAESegmentationConfig

TINY = [
    "--image_size", "32", "--crop_size", "32", "--resize_scale", "128", "32", "--patch_size", "8",
    "--hidden_size", "32", "--num_hidden_layers", "4", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--out_indices", "0", "1", "2", "3", "--decode_channels", "16", "--auxiliary_channels", "8",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--warmup_steps", "0",
    "--logging_steps", "1", "--report_to", "none", "--dataloader_num_workers", "0", "--save_strategy", "no",
    "--eval_strategy", "no", "--num_visualized_images", "2", "--seed", "0", "--max_eval_samples", "8",
    "--max_train_samples", "16",
]


def run(tmp_path, *extra, out="out"):
    return run_semantic_segmentation.main(["--output_dir", str(tmp_path / out), *TINY, *extra])


def make_ade_folder(root, count=4, bad_size=False, bad_label=False):
    """40x48 pairs; optionally file 1 holds label 200, file 2's annotation is 47 px wide."""
    labels = np.random.default_rng(1).integers(0, 151, (40, 48), dtype=np.uint8)
    labels[0, 0] = 200
    return write_ade_folder(
        root, count=count, shape=(40, 48),
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
    metrics = run(tmp_path, "--dataset_name", str(root), "--reduce_labels", "--max_steps", "2",
                  "--inference_mode", "slide", "--test_crop_size", "32", "--test_stride", "16")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert len(config["id2label"]) == 150 and config["inference_mode"] == "slide"
    assert "eval_mean_iou" in metrics


def test_mae_checkpoint_as_encoder(tmp_path):
    mae = MAEForPreTraining(tiny_config(image_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                        intermediate_size=64))
    mae.save_pretrained(tmp_path / "mae")
    run(tmp_path, "--dataset_name", "digits_seg", "--model_name_or_path", str(tmp_path / "mae"), "--max_steps", "1",
        "--do_eval", "false")
    model = MAEForSemanticSegmentation.from_pretrained(tmp_path / "out")
    assert model.vit.pos_embed.shape == (1, 17, 32)  # 16 px checkpoint resampled to 32 px (4x4 patches)


@pytest.mark.parametrize("problem, message", [("size", r"ADE_training_00000002.*\(47, 40\).*\(48, 40\)|\(48, 40\).*\(47, 40\)"),
                                              ("label", r"ADE_training_00000001.*200")])
def test_bad_annotations_are_named(tmp_path, problem, message):
    root = make_ade_folder(tmp_path / "ADEChallengeData2016", bad_size=problem == "size", bad_label=problem == "label")
    with pytest.raises(ValueError, match=message):
        run(tmp_path, "--dataset_name", str(root), "--max_steps", "1", "--num_labels", "151")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (0, 1, 1, 1)])
def test_unused_parameters_rule_matches_the_gradients(out_indices):
    """The script asks DDP to search for parameters without gradients exactly when some exist (the search costs a
    graph traversal per step, and transformers' default search warns on every process when there are none)."""
    config = MAESegmentationConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=4,
                                   num_attention_heads=2, intermediate_size=64, out_indices=out_indices,
                                   decode_channels=16, auxiliary_channels=8, num_labels=3)
    model = MAEForSemanticSegmentation(config).train()
    model(torch.randn(2, 3, 16, 16), labels=torch.randint(0, 3, (2, 16, 16))).loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert run_semantic_segmentation.has_unused_parameters(config) == bool(unused)


@pytest.mark.parametrize("split", ["training", "validation"])
def test_truncated_image_is_named_before_training_or_skipped(tmp_path, split, caplog):
    root = make_ade_folder(tmp_path / "ADEChallengeData2016")
    image = root / "images" / split / f"ADE_{split}_00000001.jpg"
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])  # headers intact, pixels cut off
    with pytest.raises(ValueError, match=rf"its image .*ADE_{split}_00000001\.jpg cannot be read .*--skip_corrupt_images"):
        run(tmp_path, "--dataset_name", str(root), "--max_steps", "1", "--num_labels", "151")
    assert not (tmp_path / "out").exists()
    with caplog.at_level(logging.WARNING, logger="mae_hf"):
        metrics = run(tmp_path, "--dataset_name", str(root), "--max_steps", "1", "--num_labels", "151",
                      "--skip_corrupt_images", "--eval_strategy", "steps", "--eval_steps", "1")
    assert metrics["train_loss"] > 0 and "eval_mean_iou" in metrics
    name = {"training": "train", "validation": "validation"}[split]
    assert f"skipped 1 {name} image/annotation pair(s) that cannot be read (--skip_corrupt_images)" in caplog.text
