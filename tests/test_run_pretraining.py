"""run_pretraining.py end to end on tiny models: digits, an ImageFolder with awkward images, resume, two
processes, and the errors that must come before any training."""

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PRETRAIN_TINY, ROOT, torchrun
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForPreTraining, TrainerCallback

import run_pretraining
from mae_hf import MAEForPreTraining
from mae_hf.run_directory.files import folder_problems
from mae_hf.run_utils import parse_arguments

TINY = PRETRAIN_TINY


def run(tmp_path, *extra, callbacks=(), out="out"):
    argv = ["--output_dir", str(tmp_path / out), *TINY, *extra]
    return run_pretraining.main(argv, callbacks=callbacks)


def make_image_folder(root: Path, count: int = 12) -> Path:
    """JPEG RGB, PNG grayscale, PNG RGBA, JPEG CMYK and 16-bit PNG images in two class folders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        rgb = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
        kind = i % 5
        if kind == 0:
            Image.fromarray(rgb).save(folder / f"{i}.jpg")
        elif kind == 1:
            Image.fromarray(rgb[..., 0]).save(folder / f"{i}.png")
        elif kind == 2:
            Image.fromarray(np.dstack([rgb, rgb[..., :1]]), mode="RGBA").save(folder / f"{i}.png")
        elif kind == 3:
            Image.fromarray(rgb).convert("CMYK").save(folder / f"{i}.jpg")
        else:
            Image.fromarray(rng.integers(0, 65535, (20, 24), dtype=np.uint16)).save(folder / f"{i}.png")
    return root


def test_digits_end_to_end_saves_a_loadable_model(tmp_path):
    metrics = run(
        tmp_path,
        "--dataset_name",
        "digits",
        "--max_steps",
        "4",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_steps",
        "2",
        "--max_eval_samples",
        "32",
    )
    out = tmp_path / "out"
    assert np.isfinite(metrics["eval_loss"]) and metrics["train_loss"] > 0
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "reconstruction.png",
        "reconstructions/step_2.png",
        "eval_results.json",
        "checkpoint-4",
    ):
        assert (out / name).exists(), name
    model = AutoModelForPreTraining.from_pretrained(out)
    assert isinstance(model, MAEForPreTraining) and model.config.image_size == 16
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.size == {"height": 16, "width": 16}
    assert "eval_loss" in (out / "README.md").read_text()
    grid = Image.open(out / "reconstruction.png")
    # 4 columns and 2 rows of 1.15 in at 100 dpi, 0.8 in of titles, two notes (norm_pix_loss) below
    assert grid.size == (4 * 115 + 20, 2 * 115 + 80 + 25 + 2 * 32)


@pytest.mark.parametrize("decoding", ["fast", "pil", "gpu"])  # gpu: the device half runs on the CPU here
def test_image_folder_with_awkward_modes(tmp_path, decoding):
    make_image_folder(tmp_path / "images")
    batches = []

    class Spy(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            batches.append(state.global_step)

    metrics = run(
        tmp_path,
        "--train_dir",
        str(tmp_path / "images"),
        "--max_steps",
        "2",
        "--train_val_split",
        "0.25",
        "--image_decoding",
        decoding,
        callbacks=[Spy()],
    )
    assert np.isfinite(metrics["eval_loss"]) and metrics["train_loss"] > 0 and batches == [0, 1]


def test_gpu_decoding_feeds_the_model_decoded_batches(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "images")
    seen = []
    forward = MAEForPreTraining.forward

    def spy(self, pixel_values=None, **kwargs):
        seen.append((pixel_values.shape, pixel_values.dtype, pixel_values.device.type))
        return forward(self, pixel_values, **kwargs)

    monkeypatch.setattr(MAEForPreTraining, "forward", spy)
    run(
        tmp_path,
        "--train_dir",
        str(tmp_path / "images"),
        "--max_steps",
        "1",
        "--image_decoding",
        "gpu",
        "--do_eval",
        "false",
    )
    assert seen[0] == (torch.Size([8, 3, 16, 16]), torch.float32, "cpu")
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    parameters = sum(p.numel() for p in MAEForPreTraining.from_pretrained(tmp_path / "out").parameters())
    assert state["total_flos"] == 6 * parameters * 8 * 3 * 16 * 16  # transformers' estimate, on the decoded batch


def test_corrupt_image_is_named_or_skipped(tmp_path):
    images = make_image_folder(tmp_path / "images")
    (images / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match=r"cannot be decoded: .*broken\.jpg.*--skip_corrupt_images"):
        run(tmp_path, "--train_dir", str(images), "--max_steps", "1", "--do_eval", "false")
    assert not (tmp_path / "out" / "checkpoint-1").exists()
    metrics = run(
        tmp_path,
        "--train_dir",
        str(images),
        "--max_steps",
        "1",
        "--do_eval",
        "false",
        "--skip_corrupt_images",
        "--overwrite_output_dir",
    )
    assert metrics["train_loss"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_dir", "/no/such/folder"], "--train_dir /no/such/folder does not exist"),
        (["--image_size", "18"], "image_size 18 is not divisible by patch_size 4"),
        (["--dataset_name", "digits", "--push_to_hub"], "--push_to_hub needs the Hugging Face Hub"),
        (["--dataset_name", "digits", "--resume_from_checkpoint", "latest"], "no checkpoint-\\* folder"),
        ([], "give --dataset_name"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, "--max_steps", "1", *extra)
    assert not any((tmp_path / "out").glob("checkpoint-*"))


def test_empty_folder_and_existing_output_dir(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no image files"):
        run(tmp_path, "--train_dir", str(tmp_path / "empty"), "--max_steps", "1")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.bin").write_text("keep me")
    with pytest.raises(ValueError, match="already exists and is not empty; pass --overwrite_output_dir"):
        run(tmp_path, "--dataset_name", "digits", "--max_steps", "1")
    assert (tmp_path / "out" / "precious.bin").read_text() == "keep me"


class Killed(Exception):
    pass


class StopAfter(TrainerCallback):
    """Ends training after `step` as a kill would: an exception as step `step` + 1 begins (step `step`'s checkpoint
    and log are written), so no final model is saved. A graceful stop (`should_training_stop`, early stopping)
    saves one, and a resume then rightly finds the run finished."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise Killed(f"after step {state.global_step}")


class FirstOptimizerState(TrainerCallback):
    """The optimizer state as training (re)starts, before the first update."""

    state = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.state is None:
            self.state = {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()}


def test_resume_finishes_the_same_run(tmp_path):
    common = [
        "--dataset_name",
        "digits",
        "--max_steps",
        "8",
        "--save_steps",
        "4",
        "--do_eval",
        "false",
        "--max_train_samples",
        "256",
    ]
    run(tmp_path, *common, out="straight")
    with pytest.raises(Killed):
        run(tmp_path, *common, out="resumed", callbacks=[StopAfter(4)])
    assert (tmp_path / "resumed" / "checkpoint-4").is_dir() and not (tmp_path / "resumed" / "checkpoint-8").exists()
    restart = FirstOptimizerState()
    run(tmp_path, *common, "--resume_from_checkpoint", "latest", out="resumed", callbacks=[restart])

    histories = [json.loads((tmp_path / d / "trainer_state.json").read_text()) for d in ("straight", "resumed")]
    assert [h["global_step"] for h in histories] == [8, 8]
    lrs = [{e["step"]: e["learning_rate"] for e in h["log_history"] if "learning_rate" in e} for h in histories]
    assert lrs[0] == lrs[1] and len(lrs[0]) == 8  # the scheduler continued where it stopped
    losses = [[e["loss"] for e in h["log_history"] if "loss" in e] for h in histories]
    assert losses[0][:4] == losses[1][:4]  # same seed, same first half
    saved = torch.load(tmp_path / "resumed" / "checkpoint-4" / "optimizer.pt", weights_only=True)["state"]
    assert restart.state.keys() == saved.keys() and saved[0]["step"] == 4
    for key, moments in saved.items():
        for name, tensor in moments.items():
            torch.testing.assert_close(restart.state[key][name], tensor, rtol=0, atol=0)


def test_two_processes_have_the_same_global_batch(tmp_path):
    common = [
        *TINY,
        "--dataset_name",
        "digits",
        "--max_train_samples",
        "64",
        "--num_train_epochs",
        "1",
        "--do_eval",
        "false",
        "--use_cpu",
        "--save_strategy",
        "no",
    ]
    two = torchrun(
        ROOT / "run_pretraining.py",
        [
            *common,
            "--output_dir",
            str(tmp_path / "two"),
            "--per_device_train_batch_size",
            "8",
            "--finite_loss_check",
            "log",  # its check all-reduces across ranks
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
        ],
    )
    assert two.returncode == 0, two.stderr[-4000:]
    run_pretraining.main([*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "16"])
    states = [json.loads((tmp_path / d / "trainer_state.json").read_text()) for d in ("one", "two")]
    assert [s["global_step"] for s in states] == [4, 4]  # 64 samples / global batch 16
    lrs = [[e["learning_rate"] for e in s["log_history"] if "learning_rate" in e] for s in states]
    assert lrs[0] == lrs[1]  # lr = blr x 16 / 256 in both
    assert "2 process(es)" in two.stderr
    # Each example's crop, flip and mask are drawn from its index, whichever process loads it: the same losses.
    losses = [[e["loss"] for e in s["log_history"] if "loss" in e] for s in states]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    # Checkpoints: every process's RNG state in the folder, renamed into place by process 0 (nothing left staged).
    for step in (2, 4):
        folder = tmp_path / "two" / f"checkpoint-{step}"
        assert folder_problems(str(folder)) == [] and (folder / "rng_state_1.pth").exists()
    assert not list((tmp_path / "two").glob(".tmp-*"))
    assert two.stderr.count("***** Running MAE pretraining *****") == 1  # the main process only
    assert "Global batch         = 16 = 8 per device x 2 process(es) x 1 accumulation step(s)" in two.stderr
    assert "find_unused_parameters" not in two.stderr and "pin_memory" not in two.stderr  # once printed per rank


class GradientlessParameters(TrainerCallback):
    """The DDP setting the run starts with, and the trainable parameters that its first backward left without a
    gradient (those DDP's search is for)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.find_unused = args.ddp_find_unused_parameters

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_no_search_for_unused_parameters_at_mask_ratio_0(tmp_path):
    """The mask token still gets a gradient (its zero-length copies are in the graph): searching anyway made DDP
    warn on every process that it found none."""
    seen = GradientlessParameters()
    run(
        tmp_path,
        "--dataset_name",
        "digits",
        "--mask_ratio",
        "0",
        "--max_steps",
        "1",
        "--do_eval",
        "false",
        "--max_train_samples",
        "16",
        callbacks=[seen],
    )
    assert seen.without == [] and seen.find_unused is False


def test_start_banner_and_no_warning_at_every_evaluation(tmp_path, caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(
            tmp_path,
            "--dataset_name",
            "digits",
            "--max_train_samples",
            "80",
            "--max_steps",
            "6",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--save_steps",
            "2",
            "--max_eval_samples",
            "16",
        )
    assert not [w for w in caught if "pin_memory" in str(w.message)]  # was: one per evaluation loader, on the CPU
    banner = caplog.text[caplog.text.index("***** Running MAE pretraining *****") :]
    for line in (
        "Examples             = 80 training, 16 validation",
        "Epochs               = 1",
        "Global batch         = 8 = 8 per device x 1 process(es) x 1 accumulation step(s)",
        "Optimization steps   = 6 (10 per epoch)",
        "Learning rate        = 3.125e-05 = base 0.001 x 8 / 256, cosine after 0 warmup steps",
        "Trainable parameters = ",
        "Masked patches       = 12 of 16 per image (mask ratio 0.75); the encoder sees 4",
    ):
        assert line in banner, line
    assert caplog.text.count("***** Running MAE pretraining *****") == 1


def test_each_warning_once_per_run_even_when_filters_change():
    """Libraries reset Python's warning registry (any `catch_warnings` block does), which let a warning repeat at
    every evaluation; setup_logging shows each one once."""
    code = (
        "import warnings\n"
        "from transformers import TrainingArguments\n"
        "from mae_hf.run_utils import setup_logging\n"
        "setup_logging(TrainingArguments(output_dir='unused', report_to='none'))\n"
        "for _ in range(3):\n"
        "    warnings.warn('the same warning')\n"
        "    with warnings.catch_warnings():\n"
        "        pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("the same warning") == 1, result.stderr


def test_config_file_with_overrides(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("dataset_name: digits\nhidden_size: 48\nnum_train_epochs: 3\nnorm_pix_loss: false\n")
    model_args, data_args, training_args, _ = parse_arguments(
        run_pretraining.ARGUMENTS, [str(config), "--output_dir", str(tmp_path), "--num_train_epochs", "5"]
    )
    assert (model_args.hidden_size, model_args.norm_pix_loss, data_args.dataset_name) == (48, False, "digits")
    assert training_args.num_train_epochs == 5 and training_args.weight_decay == 0.05
    assert (training_args.adam_beta1, training_args.adam_beta2) == (0.9, 0.95)


def test_visualize_cli_writes_next_to_the_model(tmp_path):
    run(tmp_path, "--dataset_name", "digits", "--max_steps", "1", "--do_eval", "false")
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(image)
    training_figure = (tmp_path / "out" / "reconstruction.png").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "mae_hf.visualize", str(tmp_path / "out"), str(image), str(image)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figure = Image.open(tmp_path / "out" / "reconstruction_images.png")
    assert figure.width == Image.open(tmp_path / "out" / "reconstruction.png").width  # the same 4-column layout
    assert (tmp_path / "out" / "reconstruction.png").read_bytes() == training_figure  # left alone
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["digit.png"]  # nothing in the current folder


def test_visualize_cli_takes_a_hub_id_with_an_output(tmp_path, capsys):
    """A Hub id has no folder to write next to: it needs --output, and with it is loaded as before."""
    from mae_hf.visualize import cli as visualize

    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    with pytest.raises(SystemExit):
        visualize.main(["someone/mae-digits", str(image)])
    assert "for a model on the Hub, give --output" in capsys.readouterr().err
    with pytest.raises(OSError, match="huggingface.co"):  # offline here: the Hub was asked for it
        visualize.main(["someone/mae-digits", str(image), "--output", str(tmp_path / "figure.png")])


def test_wandb_offline_logs_the_run_and_the_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(
        tmp_path,
        "--dataset_name",
        "digits",
        "--max_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "1",
        "--max_eval_samples",
        "16",
        "--report_to",
        "wandb",
        "--run_name",
        "offline-test",
        "--monitor_dataset",
        "digits",
        "--monitor_train_samples",
        "32",
        "--monitor_eval_samples",
        "16",
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = list(runs[0].rglob("*.wandb"))
    assert logged and logged[0].stat().st_size > 0
    assert list(runs[0].rglob("eval/reconstruction_*.png"))  # the figure went to wandb as an image
    assert list(runs[0].rglob("eval/training_curves_*.png"))


@pytest.mark.parametrize("decoding", ["fast", "gpu"])
def test_local_parquet_folder_streamed(tmp_path, decoding):
    from mae_hf.data import load_digits_dataset

    digits = load_digits_dataset()
    folder = tmp_path / "parquet"
    folder.mkdir()
    digits["train"].select(range(64)).to_parquet(str(folder / "train.parquet"))
    digits["validation"].select(range(16)).to_parquet(str(folder / "validation.parquet"))
    metrics = run(
        tmp_path,
        "--dataset_name",
        str(folder),
        "--streaming",
        "--max_steps",
        "2",
        "--warmup_steps",
        "1",
        "--image_decoding",
        decoding,
    )
    assert np.isfinite(metrics["eval_loss"]) and metrics["train_loss"] > 0
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        run(tmp_path, "--dataset_name", str(folder), "--streaming", "--overwrite_output_dir")


def test_saved_model_works_with_the_feature_extraction_pipeline(tmp_path):
    from transformers import pipeline

    run(tmp_path, "--dataset_name", "digits", "--max_steps", "1", "--do_eval", "false")
    extractor = pipeline("image-feature-extraction", model=str(tmp_path / "out"))
    features = extractor(Image.new("RGB", (30, 20), (10, 200, 30)), return_tensors=True)
    assert tuple(features.shape) == (1, 1 + 16, 32)  # class token + 4x4 patches, hidden size 32


# A bank of 101 images and 37 scored ones: with 2 processes and batches of 16 the shares (51/50, 19/18) are uneven.
MONITOR = [
    "--monitor_dataset",
    "digits",
    "--monitor_train_samples",
    "101",
    "--monitor_eval_samples",
    "37",
    "--monitor_crop_pct",
    "1",
]
MONITOR_KEYS = ("eval_knn_top1_cls", "eval_knn_top1_mean", "eval_linear_top1_cls", "eval_linear_top1_mean")


def test_monitor_is_logged_at_every_evaluation_plotted_and_reproduced_by_the_cli(tmp_path):
    logged = {}

    class Spy(TrainerCallback):  # what the progress bar, wandb and TensorBoard callbacks receive
        def on_log(self, args, state, control, logs=None, **kwargs):
            if "eval_loss" in logs:
                logged.setdefault(state.global_step, []).append(dict(logs))

    metrics = run(
        tmp_path,
        "--dataset_name",
        "digits",
        "--max_steps",
        "4",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--eval_on_start",
        "--max_eval_samples",
        "32",
        *MONITOR,
        "--metric_for_best_model",
        "eval_knn_top1_mean",
        callbacks=[Spy()],
    )
    assert sorted(logged) == [0, 2, 4] and len(logged[4]) == 2  # step 0, during training, and the final evaluation
    for logs in itertools.chain(*logged.values()):
        assert all(0 <= logs[key] <= 1 for key in MONITOR_KEYS) and logs["eval_monitor_runtime"] >= 0
    assert all(metrics[key] == logged[4][0][key] for key in MONITOR_KEYS)  # unchanged weights: the same numbers
    assert logged[4][1]["eval_monitor_runtime"] == 0.0  # ... not computed twice
    out = tmp_path / "out"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_knn_top1_cls" in e] == [0, 2, 4]
    state = json.loads((out / "trainer_state.json").read_text())  # the Trainer can pick checkpoints by it
    assert state["best_metric"] == max(e["eval_knn_top1_mean"] for e in history if "eval_knn_top1_mean" in e)
    assert Image.open(out / "training_curves.png").size == (1260, 640)  # 5 panels: 3 + 2

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mae_hf.evaluate_features",
            str(out),
            "--dataset",
            "digits",
            "--train_samples",
            "101",
            "--eval_samples",
            "37",
            "--crop_pct",
            "1",
            "--batch_size",
            "16",
            "--output",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cli = json.loads((tmp_path / "m.json").read_text())
    assert {key: cli[key] for key in MONITOR_KEYS} == {key: metrics[key] for key in MONITOR_KEYS}


def test_two_processes_gather_the_monitor_features(tmp_path):
    common = [
        *TINY,
        "--dataset_name",
        "digits",
        "--do_train",
        "false",
        "--max_eval_samples",
        "16",
        "--use_cpu",
        *MONITOR,
    ]
    two = torchrun(ROOT / "run_pretraining.py", [*common, "--output_dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-4000:]
    one = run_pretraining.main([*common, "--output_dir", str(tmp_path / "one")])
    gathered = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert {key: gathered[key] for key in MONITOR_KEYS} == {key: one[key] for key in MONITOR_KEYS}


def test_monitor_errors_come_before_training(tmp_path):
    with pytest.raises(ValueError, match="--monitor_label_column_name 'digit' is not a column"):
        run(tmp_path, "--dataset_name", "digits", "--max_steps", "1", *MONITOR, "--monitor_label_column_name", "digit")
    with pytest.raises(ValueError, match="monitor's data set .*--monitor_train_dir.*/no/such/folder does not exist"):
        run(tmp_path, "--dataset_name", "digits", "--max_steps", "1", "--monitor_train_dir", "/no/such/folder")
    with pytest.raises(ValueError, match="alternative ways to give the monitor data source"):
        run(tmp_path, "--dataset_name", "digits", "--max_steps", "1", *MONITOR, "--monitor_train_dir", "/x")
    with pytest.raises(ValueError, match="--metric_for_best_model eval_knn_top1_cls is not reported"):  # no monitor
        run(tmp_path, "--dataset_name", "digits", "--max_steps", "1", "--metric_for_best_model", "eval_knn_top1_cls")
    assert not (tmp_path / "out").exists()


def test_monitor_without_evaluations_is_refused_before_the_data(tmp_path, monkeypatch):
    """It was skipped with a warning once the data was loaded. (Under a --do_eval false given above it, e.g. over the
    demo config, the monitor is switched off: test_cli.)"""
    monkeypatch.setattr(run_pretraining, "load_image_datasets", None)  # a call would fail the test
    with pytest.raises(ValueError, match="--monitor_dataset digits .*needs an evaluation, which --do_eval false"):
        run(tmp_path, "--dataset_name", "digits", "--max_steps", "1", "--do_eval", "false", *MONITOR)
    assert not (tmp_path / "out").exists()


def test_evaluation_alone_needs_no_train_split(tmp_path):
    """--do_train false reads only validation: an ImageFolder given as --validation_dir alone, a parquet folder
    without train. A training run still needs a train split, and says so."""
    from mae_hf.data import load_digits_dataset

    folder = make_image_folder(tmp_path / "val", count=6)
    metrics = run(tmp_path, "--validation_dir", str(folder), "--do_train", "false", out="folder")
    assert np.isfinite(metrics["eval_loss"]) and "train_loss" not in metrics
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    load_digits_dataset()["validation"].select(range(16)).to_parquet(str(parquet / "validation.parquet"))
    for decoding in ("fast", "pil"):
        metrics = run(
            tmp_path,
            "--dataset_name",
            str(parquet),
            "--do_train",
            "false",
            "--image_decoding",
            decoding,
            out=f"parquet_{decoding}",
        )
        assert np.isfinite(metrics["eval_loss"])
    with pytest.raises(ValueError, match="the dataset has no 'train' split"):
        run(tmp_path, "--dataset_name", str(parquet), out="train")
    with pytest.raises(ValueError, match="--validation_dir needs --train_dir"):
        run(tmp_path, "--validation_dir", str(folder), out="train")
