"""Resuming: bit-exact continuation of all three scripts with 0 and 2 dataloader workers, `latest` choosing only
complete checkpoints of the same run (and saying why it skipped others), --overwrite_output_dir moving a previous
run's checkpoints aside, the errors for a checkpoint of another model size and a missing model folder, a finished
run resumed again, and an evaluation crash that still saves its step's checkpoint."""

import json
import logging
import shutil

import pytest
import torch
from helpers import FINETUNE_ARCHITECTURE as ARCHITECTURE
from helpers import FINETUNE_TINY, PRETRAIN_TINY, SEGMENT_TINY
from safetensors.torch import load_file
from test_run_pretraining import Killed, StopAfter
from transformers import TrainerCallback

import run_image_classification
import run_pretraining
import run_semantic_segmentation

STEPS = [
    "--max_steps",
    "8",
    "--save_strategy",
    "steps",
    "--save_steps",
    "3",
    "--eval_strategy",
    "no",
    "--do_eval",
    "false",
]
SCRIPTS = {  # each with its random augmentation on: 5 steps per epoch, so checkpoint-3 is mid-epoch
    "pretraining": (run_pretraining.main, [*PRETRAIN_TINY, "--dataset_name", "digits", "--max_train_samples", "40"]),
    "finetuning": (
        run_image_classification.main,  # RandAugment, random erasing, mixup/cutmix, drop path
        [
            *FINETUNE_TINY,
            *ARCHITECTURE,
            "--max_train_samples",
            "40",
            "--per_device_train_batch_size",
            "8",
            "--drop_path_rate",
            "0.1",
        ],
    ),
    "segmentation": (
        run_semantic_segmentation.main,  # rescale, crop, flip, photometric distortion
        [*SEGMENT_TINY, "--dataset_name", "digits_seg", "--max_train_samples", "20"],
    ),
}


def run(script, out, *extra, callbacks=()):
    main, argv = SCRIPTS[script]
    return main(["--output_dir", str(out), *argv, *STEPS, *extra], callbacks=callbacks)


def losses_and_weights(out):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry], load_file(out / "model.safetensors")


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_mid_epoch_is_bit_exact_with_0_and_2_workers(tmp_path, script):
    run(script, tmp_path / "straight")
    losses, weights = losses_and_weights(tmp_path / "straight")
    assert len(losses) == 8
    for workers in ("0", "2"):
        out = tmp_path / f"resumed_{workers}"
        with pytest.raises(Killed):
            run(script, out, "--dataloader_num_workers", workers, callbacks=[StopAfter(5)])  # checkpoint-3 on disk
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
        run(script, out, "--dataloader_num_workers", workers, "--resume_from_checkpoint", "latest")
        resumed_losses, resumed_weights = losses_and_weights(out)
        assert resumed_losses == losses, workers  # every step, identical floats
        assert resumed_weights.keys() == weights.keys()
        for name, tensor in weights.items():
            assert torch.equal(resumed_weights[name], tensor), (workers, name)


def test_resume_with_persistent_workers_is_bit_exact(tmp_path):
    # Persistent workers start the DataLoader's iterator once per process; its workers' base seed, drawn from torch's
    # global generator, then shifted the stochastic-depth draws of a resumed run from its first full epoch on.
    workers = ["--dataloader_num_workers", "2", "--dataloader_persistent_workers", "true"]
    run("finetuning", tmp_path / "straight", *workers)
    with pytest.raises(Killed):
        run("finetuning", tmp_path / "resumed", *workers, callbacks=[StopAfter(5)])  # checkpoint-3: mid-epoch
    run("finetuning", tmp_path / "resumed", *workers, "--resume_from_checkpoint", "latest")
    (losses, weights), (resumed_losses, resumed_weights) = map(
        losses_and_weights, (tmp_path / "straight", tmp_path / "resumed")
    )
    assert resumed_losses == losses
    assert all(torch.equal(resumed_weights[name], tensor) for name, tensor in weights.items())


def pretrain(tmp_path, *extra, callbacks=(), out="out"):
    return run("pretraining", tmp_path / out, *extra, callbacks=callbacks)


def test_latest_skips_incomplete_and_foreign_checkpoints_and_says_why(tmp_path, caplog):
    with pytest.raises(Killed):
        pretrain(tmp_path, "--max_steps", "6", callbacks=[StopAfter(3)])
    out = tmp_path / "out"
    shutil.copytree(out / "checkpoint-3", out / "checkpoint-9")  # a newer one, but with a broken optimizer state
    (out / "checkpoint-9" / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
    other = tmp_path / "other"  # a checkpoint of another run (another seed) in the same folder
    pretrain(tmp_path, "--max_steps", "6", "--seed", "1", out="other")
    shutil.copytree(other / "checkpoint-6", out / "checkpoint-6")
    with caplog.at_level(logging.INFO, logger="mae_hf"):
        pretrain(tmp_path, "--max_steps", "6", "--resume_from_checkpoint", "latest")
    log = caplog.text
    assert "skipping checkpoint-9 is incomplete or corrupt: optimizer.pt has" in log
    assert "skipping checkpoint-6 belongs to another run (seed: 1 there, 0 here)" in log
    assert f"resuming from {out / 'checkpoint-3'} (step 3; the newest complete checkpoint of this run" in log
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]


def test_overwrite_output_dir_moves_the_previous_runs_checkpoints_aside(tmp_path):
    # The user's story: a finished 12-step run; the same folder reused for a 8-step run with another seed, killed
    # after step 7; `latest` must resume the new run's checkpoint, never the old run's checkpoint-12.
    pretrain(tmp_path, "--max_steps", "12", "--save_steps", "4", "--seed", "1")
    out = tmp_path / "out"
    old = load_file(out / "checkpoint-12" / "model.safetensors")
    with pytest.raises(Killed):
        pretrain(tmp_path, "--overwrite_output_dir", callbacks=[StopAfter(7)])
    aside = list(out.glob("overwritten-*"))
    assert len(aside) == 1
    assert sorted(p.name for p in aside[0].iterdir()) == [
        "all_results.json",
        "checkpoint-12",
        "checkpoint-4",
        "checkpoint-8",
        "mae_hf_manifest.json",
        "train_results.json",
    ]
    assert torch.equal(
        load_file(aside[0] / "checkpoint-12" / "model.safetensors")["vit.cls_token"], old["vit.cls_token"]
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    pretrain(tmp_path, "--overwrite_output_dir", "--resume_from_checkpoint", "latest")
    pretrain(tmp_path, out="straight")
    assert losses_and_weights(out)[0] == losses_and_weights(tmp_path / "straight")[0]


def test_overwrite_output_dir_does_not_mix_the_previous_runs_results(tmp_path):
    # The previous run evaluated, the new one does not: its all_results.json merged the old eval_loss into the new
    # run's results, and the old eval_results.json and reconstructions/step_N.png stayed beside them.
    pretrain(
        tmp_path,
        "--max_steps",
        "4",
        "--do_eval",
        "true",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "4",
        "--max_eval_samples",
        "8",
        "--seed",
        "1",
    )
    out = tmp_path / "out"
    assert "eval_loss" in json.loads((out / "all_results.json").read_text())
    pretrain(tmp_path, "--max_steps", "3", "--overwrite_output_dir")
    assert "eval_loss" not in json.loads((out / "all_results.json").read_text())
    assert not (out / "eval_results.json").exists() and not (out / "reconstructions").exists()
    (aside,) = out.glob("overwritten-*")
    assert (aside / "eval_results.json").exists() and (aside / "reconstructions" / "step_4.png").exists()


def test_resuming_a_finished_run_keeps_its_results(tmp_path, caplog):
    pretrain(tmp_path, "--max_steps", "6")
    out = tmp_path / "out"
    kept = {name: (out / name).read_bytes() for name in ("train_results.json", "README.md", "model.safetensors")}
    with caplog.at_level(logging.INFO, logger="mae_hf"):
        metrics = pretrain(tmp_path, "--max_steps", "6", "--resume_from_checkpoint", "latest")
    assert "this run is finished: nothing to train" in caplog.text
    assert metrics["train_loss"] > 0
    assert {name: (out / name).read_bytes() for name in kept} == kept


def test_resuming_a_finished_run_that_kept_only_its_best_checkpoint_keeps_its_results(tmp_path):
    # --save_total_limit 1 with --load_best_model_at_end deletes the last checkpoint at the end; `latest` is then the
    # best one (here the worst loss: greater_is_better), from which the resume trained again and rewrote the results.
    best = [
        "--save_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--do_eval",
        "true",
        "--max_eval_samples",
        "8",
        "--load_best_model_at_end",
        "true",
        "--metric_for_best_model",
        "eval_loss",
        "--greater_is_better",
        "true",
        "--save_total_limit",
        "1",
    ]
    pretrain(tmp_path, "--max_steps", "6", *best)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    kept = {name: (out / name).read_bytes() for name in ("train_results.json", "README.md", "trainer_state.json")}
    pretrain(tmp_path, "--max_steps", "6", *best, "--resume_from_checkpoint", "latest")
    assert {name: (out / name).read_bytes() for name in kept} == kept


def test_checkpoint_of_another_model_size_fails_before_training(tmp_path):
    pretrain(tmp_path, "--max_steps", "3")
    steps = []

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    message = (
        r"holds a model of another size than this run's: hidden_size 32 there, 48 here; intermediate_size "
        r"64 there, 96 here \(\d+ tensor\(s\) differ, e.g. .* there, .* here\)"
    )
    with pytest.raises(ValueError, match=message):
        pretrain(
            tmp_path,
            "--hidden_size",
            "48",
            "--intermediate_size",
            "96",
            "--resume_from_checkpoint",
            str(tmp_path / "out" / "checkpoint-3"),
            callbacks=[Steps()],
        )
    assert steps == []


def test_checkpoint_of_another_task_fails_before_training_naming_model_name_or_path(tmp_path):
    # A pretraining checkpoint given to the fine-tuning script to start from: the weights loaded in part, then the
    # optimizer's state failed with "loaded state dict has a different number of parameter groups".
    pretrain(
        tmp_path,
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        *ARCHITECTURE,  # two blocks, as the fine-tuning script's tiny model
    )
    checkpoint = tmp_path / "out" / "checkpoint-2"
    message = (
        rf"--resume_from_checkpoint {checkpoint} holds a MAEForPreTraining, this run trains a "
        r"MAEForImageClassification: .* pass it as --model_name_or_path"
    )
    with pytest.raises(ValueError, match=message):
        run("finetuning", tmp_path / "finetuned", "--resume_from_checkpoint", str(checkpoint))


@pytest.mark.parametrize("main", [run_pretraining.main, run_image_classification.main, run_semantic_segmentation.main])
def test_missing_model_folder_is_named(tmp_path, main):
    (tmp_path / "outputs").mkdir()
    for path in (str(tmp_path / "outputs" / "pretrain"), "./no/such/model"):
        with pytest.raises(ValueError, match=r"--model_name_or_path .*: the folder .* does not exist"):
            main(["--output_dir", str(tmp_path / "out"), "--model_name_or_path", path, "--dataset_name", "digits"])
    with pytest.raises(ValueError, match=r"is neither a local folder \(there is none at .*\) nor a model the Hub"):
        main(
            [
                "--output_dir",
                str(tmp_path / "out"),
                "--model_name_or_path",
                "nobody-here/mae",
                "--dataset_name",
                "digits",
            ]
        )


def test_an_evaluation_crash_still_saves_the_checkpoint_of_its_step(tmp_path, monkeypatch):
    from mae_hf.trainer import MAETrainer

    evaluate = MAETrainer.evaluate

    def crash_at_step_4(self, *args, **kwargs):
        if self.state.global_step == 4:
            raise RuntimeError("evaluation crashed")
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(MAETrainer, "evaluate", crash_at_step_4)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        pretrain(
            tmp_path,
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--save_steps",
            "2",
            "--do_eval",
            "true",
            "--max_eval_samples",
            "8",
        )
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
