"""The three scripts' argument checks: Trainer arguments that break the image pipeline are refused before any data
or model work, naming the flag; training-length checks run before the images and the model, and never for
evaluation-only runs; evaluation arguments that the metrics depend on work both ways."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_modeling_segmentation import seg_config
from transformers import Trainer

import run_image_classification
import run_pretraining
import run_semantic_segmentation
from mae_hf.argument_checks import steps_per_epoch
from mae_hf.cli import parse_arguments
from mae_hf.run_utils import apply_recipe_schedule

COMMON = [
    "--report_to",
    "none",
    "--dataloader_num_workers",
    "0",
    "--save_strategy",
    "no",
    "--logging_steps",
    "1",
    "--seed",
    "0",
    "--patch_size",
    "8",
    "--hidden_size",
    "32",
    "--num_hidden_layers",
    "4",
    "--num_attention_heads",
    "2",
    "--intermediate_size",
    "64",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "4",
    "--max_train_samples",
    "16",
    "--max_eval_samples",
    "8",
]
SCRIPTS = {
    "pretraining": (
        run_pretraining,
        [
            "--dataset_name",
            "digits",
            "--image_size",
            "16",
            "--decoder_hidden_size",
            "16",
            "--decoder_num_attention_heads",
            "2",
            "--decoder_intermediate_size",
            "32",
            "--decoder_num_hidden_layers",
            "1",
        ],
    ),
    "classification": (run_image_classification, ["--dataset_name", "digits", "--image_size", "16"]),
    "segmentation": (
        run_semantic_segmentation,
        [
            "--dataset_name",
            "digits_seg",
            "--image_size",
            "32",
            "--crop_size",
            "32",
            "--resize_scale",
            "128",
            "32",
            "--out_indices",
            "0",
            "1",
            "2",
            "3",
            "--decode_channels",
            "16",
            "--auxiliary_channels",
            "8",
            "--num_visualized_images",
            "1",
            "--warmup_steps",
            "0",
        ],
    ),
}
LOADERS = {
    "pretraining": "load_image_datasets",
    "classification": "load_image_datasets",
    "segmentation": "load_segmentation_datasets",
}


def run(script, tmp_path, *extra, out="out"):
    module, arguments = SCRIPTS[script]
    return module.main(["--output_dir", str(tmp_path / out), *COMMON, *arguments, *extra])


def forbid(monkeypatch, module, *names):
    """Any call of these names fails the test: the refusal must come before them."""
    for name in names:

        def refuse(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} ran before the refusal")

        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--remove_unused_columns", "true"], "--remove_unused_columns True drops the image column"),
        (["--label_names", "image"], r"--label_names \['image'\]: this script's model takes its labels as"),
        (["--train_sampling_strategy", "group_by_length"], "--train_sampling_strategy group_by_length groups"),
        (["--label_smoothing_factor", "0.1"], "--label_smoothing_factor 0.1: transformers' label smoother"),
        (["--metric_for_best_model", "bleu"], "--metric_for_best_model bleu is not reported"),
    ],
)
def test_pipeline_breaking_trainer_arguments_are_refused_before_data(tmp_path, monkeypatch, script, flags, message):
    module = SCRIPTS[script][0]
    forbid(monkeypatch, module, LOADERS[script])
    with pytest.raises(ValueError, match=message):
        run(script, tmp_path, "--max_steps", "1", *flags)
    assert not (tmp_path / "out").exists()


def test_every_problem_is_named_at_once(tmp_path):
    with pytest.raises(ValueError, match="--remove_unused_columns True .*; --label_smoothing_factor 0.1"):
        run("classification", tmp_path, "--remove_unused_columns", "true", "--label_smoothing_factor", "0.1")


def test_best_model_metric_names_follow_each_evaluation(tmp_path, monkeypatch):
    for script, good in (
        ("pretraining", "eval_loss"),
        ("classification", "top5_accuracy"),
        ("segmentation", "iou_background"),
    ):
        forbid(monkeypatch, SCRIPTS[script][0], LOADERS[script])
        with pytest.raises(AssertionError, match="ran before the refusal"):  # accepted: it gets to the data
            run(script, tmp_path, "--max_steps", "1", "--metric_for_best_model", good)
    with pytest.raises(ValueError, match="gives eval_loss$"):  # --prediction_loss_only leaves only the loss
        run("classification", tmp_path, "--metric_for_best_model", "accuracy", "--prediction_loss_only", "true")


@pytest.mark.parametrize(
    "script, flags, message",
    [
        (
            "pretraining",
            ["--num_train_epochs", "2", "--warmup_epochs", "5"],
            r"--warmup_epochs 5 must be shorter than the training \(--num_train_epochs 2\)",
        ),
        (
            "segmentation",
            ["--max_steps", "40", "--warmup_steps", "1500"],  # the recipe's warmup, a short run
            "--warmup_steps 1500 must be fewer than the training's --max_steps 40",
        ),
        ("pretraining", ["--streaming"], "--streaming needs --max_steps"),
        ("pretraining", ["--streaming", "--max_steps", "4"], "--warmup_epochs needs the dataset size"),
    ],
)
def test_training_length_checks_without_data_come_first(tmp_path, monkeypatch, script, flags, message):
    forbid(monkeypatch, SCRIPTS[script][0], LOADERS[script])
    with pytest.raises(ValueError, match=message):
        run(script, tmp_path, *flags)


@pytest.mark.parametrize(
    "script, flags, message",
    [
        # the default 40 warmup epochs against 4 steps of 4 of the 16 images (1 epoch)
        ("pretraining", ["--max_steps", "4"], r"--warmup_epochs 40 must be shorter than the training \(1 epochs\)"),
        ("classification", ["--max_steps", "4", "--warmup_epochs", "2"], r"shorter than the training \(1 epochs\)"),
        (
            "classification",
            [
                "--max_steps",
                "4",
                "--warmup_epochs",
                "0",
                "--dataloader_drop_last",
                "true",
                "--per_device_train_batch_size",
                "32",
            ],
            "the 16 training examples are fewer than one batch",
        ),
        # warmup steps against a length in epochs (4 steps of 4 images): was not checked, the lr never peaked
        (
            "segmentation",
            ["--num_train_epochs", "1", "--warmup_steps", "1500"],
            r"--warmup_steps 1500 must be fewer than the training's 4 steps \(--num_train_epochs 1 of 4 steps\)",
        ),
        (
            "pretraining",
            ["--num_train_epochs", "2", "--warmup_steps", "8", "--gradient_accumulation_steps", "3"],
            r"--warmup_steps 8 must be fewer than the training's 4 steps \(--num_train_epochs 2 of 2 steps\)",
        ),
    ],
)
def test_training_length_checks_come_before_images_and_model(tmp_path, monkeypatch, script, flags, message):
    """These need the number of training examples: they run once the split is listed, before any image is
    decoded and before the model is built."""
    module = SCRIPTS[script][0]
    forbid(
        monkeypatch,
        module,
        "build_model",
        "check_annotations" if script == "segmentation" else "verify_splits",
        *(["prepare_datasets"] if script == "pretraining" else ["attach_transforms"]),
    )
    with pytest.raises(ValueError, match=message):
        run(script, tmp_path, *flags)


@pytest.mark.parametrize(
    "size, batch, accumulation, drop_last",
    [(1500, 64, 5, False), (1500, 64, 1, True), (100, 8, 3, True), (64, 16, 4, False)],
)
def test_epochs_in_steps_are_the_trainers(tmp_path, size, batch, accumulation, drop_last):
    """--save_every_epochs counted floor(batches / accumulation) steps per epoch and ignored --dataloader_drop_last:
    with 24 batches and 5 accumulation steps, "every epoch" checkpointed every 4 of the epoch's 5 steps."""
    _, _, args, _ = parse_arguments(
        run_pretraining.ARGUMENTS,
        [
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "--report_to",
            "none",
            "--per_device_train_batch_size",
            str(batch),
            "--gradient_accumulation_steps",
            str(accumulation),
            "--dataloader_drop_last",
            str(drop_last),
            "--save_every_epochs",
            "1",
            "--do_eval",
            "false",
        ],
    )
    apply_recipe_schedule(args, size)
    trainer = Trainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=[{"x": i} for i in range(size)])
    batches = len(trainer.get_train_dataloader())
    assert args.save_steps == steps_per_epoch(args, size) == math.ceil(batches / accumulation)  # Trainer's count


@pytest.mark.parametrize(
    "script, flags, message",
    [
        (
            "segmentation",
            ["--per_device_train_batch_size", "1"],
            "--per_device_train_batch_size 1: UperNet's pooling module .* cannot train on one example",
        ),
        # 9 = 2 x 4 + 1: the first epoch ends on a batch of one image
        ("segmentation", ["--max_train_samples", "9"], "the 9 training examples leave a last batch of 1 example"),
        ("segmentation", ["--max_train_samples", "9", "--max_steps", "5"], "--dataloader_drop_last true"),
        (
            "classification",
            ["--linear_probe", "--max_train_samples", "9", "--per_device_train_batch_size", "4"],
            "the linear probe's BatchNorm head cannot train: pass --dataloader_drop_last true",
        ),
    ],
)
def test_batches_of_one_example_are_refused_where_batchnorm_trains(tmp_path, monkeypatch, script, flags, message):
    """BatchNorm over a batch of one raises "Expected more than 1 value per channel" mid-training, at the latest
    at the end of the first epoch. Refused before the model is built and images are decoded."""
    forbid(monkeypatch, SCRIPTS[script][0], "build_model", "attach_transforms")
    arguments = ["--warmup_steps", "0", "--max_steps", "3", *flags] if script == "segmentation" else flags
    with pytest.raises(ValueError, match=message):
        run(script, tmp_path, *arguments)


@pytest.mark.parametrize(
    "script, flags",
    [
        ("segmentation", ["--max_steps", "2"]),  # 3 batches an epoch: it stops before the batch of one
        ("segmentation", ["--max_steps", "3", "--dataloader_drop_last", "true"]),
        ("classification", ["--max_steps", "3", "--warmup_epochs", "0"]),  # fine-tuning has no BatchNorm
    ],
)
def test_batches_of_one_example_train_where_no_batchnorm_sees_them(tmp_path, script, flags):
    metrics = run(script, tmp_path, "--max_train_samples", "9", "--do_eval", "false", *flags)
    assert np.isfinite(metrics["train_loss"])
    config = seg_config(pool_scales=(2, 3))  # 2x2 maps: four values per channel even for one image
    one_process = SimpleNamespace(sync_batchnorm=True, world_size=1)
    assert run_semantic_segmentation.per_device_batchnorm(config, one_process) is None


@pytest.fixture
def classifier(tmp_path):
    run(
        "classification",
        tmp_path,
        "--max_steps",
        "1",
        "--warmup_epochs",
        "0",
        "--eval_strategy",
        "no",
        out="classifier",
    )
    return tmp_path / "classifier"


def test_evaluation_alone_is_not_refused_for_training_reasons(tmp_path, classifier):
    # A warmup longer than the (unused) --max_steps, a label share that leaves classes empty, a training sampler, a
    # best-model metric (chosen among training's evaluations): training matters only.
    metrics = run(
        "classification",
        tmp_path,
        "--model_name_or_path",
        str(classifier),
        "--do_train",
        "false",
        "--max_steps",
        "2",
        "--warmup_epochs",
        "5",
        "--label_fraction",
        "0.001",
        "--dataloader_drop_last",
        "true",
        "--per_device_train_batch_size",
        "64",
        "--train_sampling_strategy",
        "group_by_length",
        "--metric_for_best_model",
        "bleu",
        out="eval",
    )
    assert np.isfinite(metrics["eval_loss"])
    for script, flags in (
        ("pretraining", ["--max_steps", "2"]),  # against the default 40 warmup epochs
        ("segmentation", ["--max_steps", "5", "--warmup_steps", "1500"]),
    ):
        metrics = run(script, tmp_path, "--do_train", "false", *flags, out=f"eval_{script}")
        assert np.isfinite(metrics["eval_loss"])
    saved = json.loads((classifier / "config.json").read_text())
    assert saved["problem_type"] == "single_label_classification"  # what the script trained, whatever it started from


@pytest.mark.parametrize(
    "flags",
    [
        ["--batch_eval_metrics", "true"],
        ["--eval_do_concat_batches", "false"],
        ["--batch_eval_metrics", "true", "--eval_do_concat_batches", "false"],
    ],
)
def test_classification_metrics_whatever_the_evaluation_arguments(tmp_path, classifier, flags):
    evaluate = ["--model_name_or_path", str(classifier), "--do_train", "false"]
    expected = run("classification", tmp_path, *evaluate, out="plain")
    got = run("classification", tmp_path, *evaluate, *flags, out="flags")
    for key in ("eval_accuracy", "eval_top5_accuracy"):
        assert got[key] == pytest.approx(expected[key]), key


def test_segmentation_metrics_whatever_the_evaluation_arguments(tmp_path):
    run("segmentation", tmp_path, "--max_steps", "1", "--eval_strategy", "no", out="segmenter")
    evaluate = ["--model_name_or_path", str(tmp_path / "segmenter"), "--do_train", "false"]
    expected = run("segmentation", tmp_path, *evaluate, out="streamed")  # --batch_eval_metrics is its default
    for flags in (
        ["--batch_eval_metrics", "false"],
        ["--batch_eval_metrics", "false", "--eval_do_concat_batches", "false"],
    ):
        got = run("segmentation", tmp_path, *evaluate, *flags, out="at_once")
        for key in ("eval_mean_iou", "eval_overall_accuracy"):
            assert got[key] == pytest.approx(expected[key], nan_ok=True), key
    assert 0 <= expected["eval_overall_accuracy"] <= 1
