"""run_image_classification.py end to end on tiny models: fine-tuning from an MAE checkpoint, from scratch,
linear probing, evaluation alone, pipelines, and the errors that must come before training."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from datasets import DatasetDict
from helpers import FINETUNE_ARCHITECTURE, FINETUNE_TINY
from PIL import Image
from transformers import AutoModelForImageClassification, TrainerCallback, pipeline

import run_image_classification
from mae_hf import MAEForImageClassification, MAEForPreTraining
from mae_hf.lars import LARS

TINY = FINETUNE_TINY
ARCHITECTURE = FINETUNE_ARCHITECTURE


@pytest.fixture
def pretrained(tmp_path):
    """A tiny MAE pretraining checkpoint at 16 px."""
    config = tiny_config(image_size=16, patch_size=4, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    model = MAEForPreTraining(config)
    model.save_pretrained(tmp_path / "mae")
    return tmp_path / "mae"


def run(tmp_path, *extra, callbacks=(), out="out"):
    return run_image_classification.main(["--output_dir", str(tmp_path / out), *TINY, *extra], callbacks=callbacks)


class Capture(TrainerCallback):
    optimizer = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = optimizer


def test_finetune_from_mae_checkpoint_saves_a_pipeline_ready_classifier(tmp_path, pretrained):
    capture = Capture()
    metrics = run(tmp_path, "--model_name_or_path", str(pretrained), "--max_steps", "3", callbacks=[capture])
    assert 0 <= metrics["eval_accuracy"] <= 1 and metrics["eval_accuracy"] <= metrics["eval_top5_accuracy"] <= 1
    groups = capture.optimizer.param_groups  # layer decay 0.65 over depth 2
    assert sorted({round(g["lr_scale"], 6) for g in groups}) == [round(0.65**3, 6), round(0.65**2, 6), 0.65, 1.0]
    out = tmp_path / "out"
    model = AutoModelForImageClassification.from_pretrained(out)
    assert isinstance(model, MAEForImageClassification) and model.config.id2label[3] == "3"
    classify = pipeline("image-classification", model=str(out))
    results = classify(Image.new("L", (8, 8), 128))
    assert len(results) == 5 and {r["label"] for r in results} <= {str(d) for d in range(10)}
    assert abs(sum(r["score"] for r in classify(Image.new("RGB", (40, 30)), top_k=10)) - 1) < 1e-4
    assert "eval_accuracy" in (out / "README.md").read_text()
    assert Image.open(out / "training_curves.png").size == (1260, 640)  # loss, eval loss, lr | top-1


def test_from_scratch_and_evaluation_alone(tmp_path):
    trained = run(tmp_path, *ARCHITECTURE, "--max_steps", "2")
    again = run(tmp_path, "--model_name_or_path", str(tmp_path / "out"), "--do_train", "false", out="eval")
    assert again["eval_accuracy"] == pytest.approx(trained["eval_accuracy"])
    assert again["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)


def test_linear_probe_freezes_the_encoder_and_uses_lars(tmp_path, pretrained):
    capture = Capture()
    run(tmp_path, "--model_name_or_path", str(pretrained), "--linear_probe", "--max_steps", "3", callbacks=[capture])
    assert isinstance(capture.optimizer.optimizer, LARS)  # inside accelerate's wrapper
    groups = capture.optimizer.param_groups
    assert {g["initial_lr"] for g in groups} == {0.1 * 16 / 256}  # blr 0.1, no layer decay
    assert all(g["weight_decay"] == 0 for g in groups)
    assert sum(len(g["params"]) for g in groups) == 2  # the head's weight and bias only
    probe = MAEForImageClassification.from_pretrained(tmp_path / "out")
    assert probe.config.head_batchnorm and probe.config.pooling == "cls"
    assert isinstance(probe.head[0], torch.nn.BatchNorm1d) and probe.head[0].num_batches_tracked > 0
    encoder = MAEForPreTraining.from_pretrained(pretrained).vit.state_dict()
    for name, tensor in probe.vit.state_dict().items():
        torch.testing.assert_close(tensor, encoder[name], rtol=0, atol=0, msg=name)


def test_label_fraction_trains_on_a_balanced_subset(tmp_path, pretrained):
    metrics = run(
        tmp_path,
        "--model_name_or_path",
        str(pretrained),
        "--max_train_samples",
        "200",
        "--label_fraction",
        "0.1",
        "--num_train_epochs",
        "1",
    )
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # 20 examples (2 per class) at batch 16
    assert np.isfinite(metrics["eval_loss"])


def test_errors_before_training(tmp_path, pretrained):
    with pytest.raises(
        ValueError,
        match=r"does not fit .*vit\.blocks\.0\.attn\.qkv\.weight is \(96, 32\) in the checkpoint but \(144, 48\) in the model",
    ):
        run(tmp_path, "--model_name_or_path", str(pretrained), "--hidden_size", "48", "--num_attention_heads", "2")
    with pytest.raises(ValueError, match="leaves class .* with no example"):
        run(tmp_path, "--model_name_or_path", str(pretrained), "--label_fraction", "0.001")
    images_only = tmp_path / "images_only"
    images_only.mkdir()
    from mae_hf.data import load_digits_dataset

    digits = load_digits_dataset()
    for split in ("train", "validation"):
        digits[split].remove_columns("label").select(range(8)).to_parquet(str(images_only / f"{split}.parquet"))
    with pytest.raises(ValueError, match=r"no label column.*\['image'\]"):
        run(tmp_path, "--model_name_or_path", str(pretrained), "--dataset_name", str(images_only))
    assert not (tmp_path / "out").exists()


def test_labels_outside_the_models_classes(tmp_path):
    run(tmp_path, *ARCHITECTURE, "--max_steps", "1")
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    from mae_hf.data import load_digits_dataset

    digits = load_digits_dataset()
    for split in ("train", "validation"):
        data = (
            digits[split]
            .select(range(8))
            .cast_column("label", digits[split].features["label"].__class__(num_classes=20))
        )
        data.map(lambda e: {"label": e["label"] + 10}).to_parquet(str(shifted / f"{split}.parquet"))
    # Evaluation alone reads (so checks) only the validation split; its class names "10".."19" are not the model's.
    with pytest.raises(
        ValueError, match=r"validation label '1\d' \(column 'label'; 6 such name\(s\)\) is not one of the"
    ):
        run(
            tmp_path,
            "--model_name_or_path",
            str(tmp_path / "out"),
            "--dataset_name",
            str(shifted),
            "--do_train",
            "false",
            out="eval",
        )


def test_evaluation_alone_needs_no_train_split(tmp_path):
    """--do_train false scores a dataset that has only a validation split (a save_to_disk folder), or an ImageFolder
    given as --validation_dir alone, with the trained model's classes."""
    from mae_hf.data import load_digits_dataset

    trained = run(tmp_path, *ARCHITECTURE, "--max_steps", "2")
    validation = load_digits_dataset()["validation"]
    saved = tmp_path / "validation_only"
    DatasetDict(validation=validation).save_to_disk(str(saved))
    model = ["--model_name_or_path", str(tmp_path / "out"), "--do_train", "false"]
    again = run(tmp_path, *model, "--dataset_name", str(saved), out="eval")
    assert again["eval_accuracy"] == pytest.approx(trained["eval_accuracy"])
    folder = tmp_path / "images"
    for i, example in enumerate(validation.select(range(48))):
        (folder / str(example["label"])).mkdir(parents=True, exist_ok=True)
        example["image"].save(folder / str(example["label"]) / f"{i}.png")
    words = [w for w in TINY if w not in ("--dataset_name", "digits")]  # the folder instead
    from_folder = run_image_classification.main(
        ["--output_dir", str(tmp_path / "eval_folder"), *words, *model, "--validation_dir", str(folder)]
    )
    assert from_folder["eval_accuracy"] == pytest.approx(again["eval_accuracy"])  # the same 48 images
    with pytest.raises(ValueError, match="the dataset has no 'train' split"):
        run(tmp_path, "--dataset_name", str(saved), *ARCHITECTURE, out="train")
