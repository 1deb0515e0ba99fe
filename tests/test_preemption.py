"""Pre-emption: SIGTERM / SIGUSR1 sent at several moments of a run — mid-epoch, during an evaluation, during the
feature monitor, during a checkpoint save, during the final evaluation — stop it with one complete checkpoint of
the step it reached and exit status 75; `--resume_from_checkpoint latest` then gives the uninterrupted run's losses,
evaluations and weights (0 steps lost). Under torchrun a signal that reaches one process stops both at one step.
transformers' --enable_jit_checkpoint no longer makes a stopped run look finished. Each run that is signalled runs in
a forked process of its own."""

import json
import logging
import multiprocessing
import os
import pathlib
import signal
import sys
import traceback

import numpy as np
import pytest
import torch
from helpers import PRETRAIN_TINY as TINY
from helpers import ROOT, torchrun
from safetensors.torch import load_file
from test_resume import SCRIPTS, STEPS
from transformers import TrainerCallback

import run_image_classification
import run_pretraining
import run_semantic_segmentation
from mae_hf import monitor
from mae_hf.run_directory.checkpoints import checkpoint_folders, checkpoint_problems
from mae_hf.run_directory.files import read_manifest
from mae_hf.run_directory.lock import LOCK_NAME
from mae_hf.run_directory.preemption import EXIT_PREEMPTED

ONLY_THEIR_CHECKPOINT = ["--save_steps", "100"]  # no periodic checkpoint before step 8: the signal's is the only one
EVALUATIONS = ["--do_eval", "true", "--eval_strategy", "steps", "--eval_steps", "2", "--max_eval_samples", "8"]
MONITOR = ["--monitor_dataset", "digits", "--monitor_train_samples", "32", "--monitor_eval_samples", "16"]
SCORED = ("loss", "learning_rate", "grad_norm", "eval_loss", "eval_accuracy", "eval_top1", "eval_mean_iou")


def _child(main, argv, callbacks, setup) -> None:
    torch.set_num_threads(1)  # a forked process must not enter its parent's OpenMP pool (see test_checkpointing)
    try:
        if setup is not None:
            setup()
        main(argv, callbacks=list(callbacks))
    except SystemExit as stop:
        os._exit(stop.code if isinstance(stop.code, int) else 1)
    except BaseException:  # noqa: BLE001 - reported through the exit code, the traceback on stderr
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def in_child(main, argv, callbacks=(), setup=None) -> int:
    process = multiprocessing.get_context("fork").Process(target=_child, args=(main, argv, callbacks, setup))
    process.start()
    process.join(300)
    if process.is_alive():
        process.kill()
        process.join()
    return process.exitcode


class Signal(TrainerCallback):
    """Sends `sig` to this process at step `step`: as the step begins (mid-epoch), or in the evaluation at that step
    (`during="evaluation"`), or in the evaluation after training (`during="final evaluation"`)."""

    def __init__(self, step: int, sig=signal.SIGTERM, during: str = "step"):
        self.step, self.sig, self.during, self.trained, self.sent_at = step, sig, during, False, None

    def send(self, state):
        if self.sent_at is None:
            self.sent_at = state.global_step
            os.kill(os.getpid(), self.sig)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.during == "step" and state.global_step == self.step:
            self.send(state)

    def on_prediction_step(self, args, state, control, **kwargs):
        final = self.during == "final evaluation" and self.trained
        if final or (self.during == "evaluation" and state.global_step == self.step):
            self.send(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.trained = True


def scored_history(out) -> list[dict]:
    """Every logged entry's training and evaluation values (not timings)."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [{k: v for k, v in entry.items() if k in SCORED or k == "step"} for entry in history]


def assert_same_run(resumed, straight):
    assert scored_history(resumed) == scored_history(straight)  # every loss and evaluation, identical floats
    weights, expected = load_file(resumed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], tensor) for name, tensor in expected.items())


def preempt_and_resume(script, tmp_path, extra=(), callbacks=(), setup=None) -> tuple[int, int]:
    """The run signalled (in a child), checked to have stopped with exit 75 and one complete checkpoint and no
    finished model, then resumed with `latest`. Returns (step of the stop checkpoint, steps lost)."""
    main, base = SCRIPTS[script]
    argv = ["--output_dir", str(tmp_path / "preempted"), *base, *STEPS, *ONLY_THEIR_CHECKPOINT, *extra]
    assert in_child(main, argv, callbacks, setup) == EXIT_PREEMPTED
    out = tmp_path / "preempted"
    (step, checkpoint), *_ = checkpoint_folders(str(out))
    assert checkpoint_problems(checkpoint) == []
    assert (read_manifest(str(out)) or {}).get("status") is None  # neither trained nor finished
    assert in_child(main, [*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert read_manifest(str(out))["status"] == "finished"
    return step


@pytest.mark.parametrize("script", SCRIPTS)
def test_sigterm_mid_epoch_stops_at_the_next_step_with_its_checkpoint_and_resumes_bit_exact(tmp_path, script):
    main, base = SCRIPTS[script]
    main(["--output_dir", str(tmp_path / "straight"), *base, *STEPS, *ONLY_THEIR_CHECKPOINT])
    signal_ = Signal(3)  # as step 4 begins (mid-epoch: 5 steps per epoch)
    step = preempt_and_resume(script, tmp_path, callbacks=[signal_])
    assert step == 4  # the step running when the signal came completed, then its checkpoint: 0 steps lost
    assert_same_run(tmp_path / "preempted", tmp_path / "straight")


class SignalEveryProcess(Signal):
    """SIGTERM to this process and to its DataLoader workers, as Slurm signals every process of a job step."""

    def send(self, state):
        if self.sent_at is None:
            self.sent_at = state.global_step
            with open(f"/proc/self/task/{os.getpid()}/children") as file:
                workers = [int(pid) for pid in file.read().split()]
            assert len(workers) == 2
            for pid in [*workers, os.getpid()]:
                os.kill(pid, signal.SIGTERM)


def test_sigterm_to_every_process_dataloader_workers_included(tmp_path):
    # Workers killed by SIGTERM made the main process fail ("DataLoader worker ... is killed by signal") before it
    # could save: they inherit the handler and leave the stop to the main process.
    workers = ["--dataloader_num_workers", "2"]
    run_pretraining.main(["--output_dir", str(tmp_path / "straight"), *SCRIPTS["pretraining"][1], *STEPS, *workers])
    assert preempt_and_resume("pretraining", tmp_path, workers, [SignalEveryProcess(3)]) == 4
    assert_same_run(tmp_path / "preempted", tmp_path / "straight")


def test_sigusr1_as_slurm_sends_it_stops_the_same_way(tmp_path):
    run_pretraining.main(["--output_dir", str(tmp_path / "straight"), *SCRIPTS["pretraining"][1], *STEPS])
    assert preempt_and_resume("pretraining", tmp_path, callbacks=[Signal(5, signal.SIGUSR1)]) == 6
    assert_same_run(tmp_path / "preempted", tmp_path / "straight")


@pytest.mark.parametrize("script", SCRIPTS)
def test_signal_during_an_evaluation_abandons_it_and_the_resumed_run_evaluates_that_step_first(tmp_path, script):
    main, base = SCRIPTS[script]
    main(["--output_dir", str(tmp_path / "straight"), *base, *STEPS, *ONLY_THEIR_CHECKPOINT, *EVALUATIONS])
    step = preempt_and_resume(script, tmp_path, EVALUATIONS, [Signal(4, during="evaluation")])
    assert step == 4
    manifest = read_manifest(str(tmp_path / "preempted" / "checkpoint-4"))
    assert manifest["evaluation_pending"] is True
    assert_same_run(tmp_path / "preempted", tmp_path / "straight")  # the evaluation at step 4 included


def test_an_abandoned_evaluation_still_counts_for_the_best_checkpoint(tmp_path):
    # The resumed run's first evaluation is the one at step 4, judged for the best checkpoint as it would have been
    # (Trainer's `_determine_best_metric`); the worst loss wins here so that the best moves with every evaluation.
    best = [*EVALUATIONS, "--save_steps", "2", "--metric_for_best_model", "eval_loss", "--greater_is_better", "true"]
    run_pretraining.main(["--output_dir", str(tmp_path / "straight"), *SCRIPTS["pretraining"][1], *STEPS, *best])
    preempt_and_resume("pretraining", tmp_path, best, [Signal(4, during="evaluation")])
    states = [
        json.loads((d / "trainer_state.json").read_text()) for d in (tmp_path / "preempted", tmp_path / "straight")
    ]
    assert states[0]["best_metric"] == states[1]["best_metric"]
    assert states[0]["best_global_step"] == states[1]["best_global_step"]
    assert scored_history(tmp_path / "preempted") == scored_history(tmp_path / "straight")


def _signal_in_the_monitor_at_call(number: int):
    """A setup for the child: the monitor's `number`-th feature extraction sends SIGTERM."""

    def setup():
        extract, calls = monitor.encoder_features, []

        def signalling(*args, **kwargs):
            calls.append(1)
            if len(calls) == number:
                os.kill(os.getpid(), signal.SIGTERM)
            return extract(*args, **kwargs)

        monitor.encoder_features = signalling

    return setup


def test_signal_during_the_feature_monitor_abandons_it(tmp_path):
    extra = [*EVALUATIONS, *MONITOR]
    run_pretraining.main(["--output_dir", str(tmp_path / "straight"), *SCRIPTS["pretraining"][1], *STEPS, *extra])
    # calls 1-2: the evaluation at step 2 (train and scored features); call 3: the one at step 4
    assert preempt_and_resume("pretraining", tmp_path, extra, setup=_signal_in_the_monitor_at_call(3)) == 4
    monitored = [
        [
            (e["step"], e["eval_knn_top1_cls"])
            for e in json.loads((d / "trainer_state.json").read_text())["log_history"]
            if "eval_knn_top1_cls" in e
        ]
        for d in (tmp_path / "preempted", tmp_path / "straight")
    ]
    assert [step for step, _ in monitored[0]] == [2, 4, 6, 8]  # the abandoned one (step 4) run by the resumed run
    assert monitored[0] == monitored[1]
    assert_same_run(tmp_path / "preempted", tmp_path / "straight")


def _signal_while_saving(step: int):
    """A setup for the child: SIGTERM while the optimizer state of checkpoint-`step` is written."""

    def setup():
        save = torch.save

        def signalling(obj, f, *args, **kwargs):
            if str(f).endswith(os.path.join(f".tmp-checkpoint-{step}", f"checkpoint-{step}", "optimizer.pt")):
                os.kill(os.getpid(), signal.SIGTERM)
            return save(obj, f, *args, **kwargs)

        torch.save = signalling

    return setup


def test_signal_during_a_checkpoint_save_completes_it_and_stops_there(tmp_path):
    run_pretraining.main(["--output_dir", str(tmp_path / "straight"), *SCRIPTS["pretraining"][1], *STEPS])
    every_2 = ["--save_steps", "2"]
    assert preempt_and_resume("pretraining", tmp_path, every_2, setup=_signal_while_saving(4)) == 4  # no step 5
    assert_same_run(tmp_path / "preempted", tmp_path / "straight")


def test_signal_during_the_final_evaluation_keeps_the_trained_model_and_the_resume_only_evaluates(tmp_path):
    main, base = SCRIPTS["pretraining"]
    final_eval = ["--do_eval", "true", "--eval_strategy", "no", "--max_eval_samples", "8"]
    main(["--output_dir", str(tmp_path / "straight"), *base, *STEPS, *final_eval])
    out = tmp_path / "preempted"
    argv = ["--output_dir", str(out), *base, *STEPS, *final_eval]
    assert in_child(main, argv, [Signal(0, during="final evaluation")]) == EXIT_PREEMPTED
    assert read_manifest(str(out))["status"] == "trained" and not (out / "eval_results.json").exists()
    steps = StepCounter()
    assert in_child(main, [*argv, "--resume_from_checkpoint", "latest"], [steps]) == 0
    assert read_manifest(str(out))["status"] == "finished"
    evaluated = [json.loads((d / "eval_results.json").read_text()) for d in (out, tmp_path / "straight")]
    assert evaluated[0]["eval_loss"] == evaluated[1]["eval_loss"]
    assert_same_run(out, tmp_path / "straight")


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps += 1
        raise AssertionError("a trained run was trained again")


def test_enable_jit_checkpoint_stop_is_not_taken_for_the_end_of_training(tmp_path):
    # transformers' JIT checkpoint saved on SIGTERM and let train() return: the run was marked finished at that step
    # and its resume said "this run is finished" (step 4 of 8).
    main, base = SCRIPTS["pretraining"]
    argv = ["--output_dir", str(tmp_path / "out"), *base, *STEPS, *ONLY_THEIR_CHECKPOINT, "--enable_jit_checkpoint"]
    assert in_child(main, argv, [Signal(3)]) == EXIT_PREEMPTED
    assert in_child(main, [*argv, "--resume_from_checkpoint", "latest"]) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert read_manifest(str(tmp_path / "out"))["stopped_by"] == "planned steps (8)"


# ---------------------------------------------------------------------------------------------------- torchrun

SIGNAL_ONE_RANK = """
import importlib, os, signal, sys, time
from transformers import TrainerCallback
from mae_hf.run_directory.preemption import stop_request

class SignalRank(TrainerCallback):  # {signal} to {target} from rank {rank} only, as step {step} begins
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == {step} and args.process_index == {rank}:
            os.kill({target}, signal.{signal})
            deadline = time.time() + 60  # a signal forwarded by torchrun comes later: training must not end first
            while stop_request.signal_name is None and time.time() < deadline:
                time.sleep(0.01)

importlib.import_module("{module}").main(sys.argv[1:], callbacks=[SignalRank()])
"""


TWO_PROCESSES = [
    *TINY,
    "--dataset_name",
    "digits",
    "--max_train_samples",
    "64",
    "--max_steps",
    "6",
    "--do_eval",
    "false",
    "--use_cpu",
    "--save_strategy",
    "steps",
    "--save_steps",
    "100",
]


@pytest.mark.parametrize("stop", [3, 5])  # 4 steps per epoch: mid-epoch in the first epoch, and in the second
def test_two_processes_stop_at_one_step_when_only_one_is_signalled_and_resume_to_the_end(tmp_path, stop):
    # Resumed in the second epoch, the rest of that epoch took the first epoch's order and draws: accelerate's
    # skip_first_batches nests the batch sampler once more, and set_epoch no longer reached the (epoch, index) sampler.
    script = tmp_path / "signal_rank_1.py"
    signalled = dict(rank=1, step=stop - 1, target="os.getpid()", signal="SIGTERM", module="run_pretraining")
    script.write_text(SIGNAL_ONE_RANK.format(**signalled))
    out = tmp_path / "two"
    stopped = torchrun(script, [*TWO_PROCESSES, "--output_dir", str(out)])
    # torchrun reports the first process to exit (with 75) and sends SIGTERM to the other, which has stopped already
    assert stopped.returncode != 0 and f"exitcode: {EXIT_PREEMPTED}" in stopped.stderr, stopped.stderr[-4000:]
    assert f"a stop signal (received by another process): stopped after step {stop}" in stopped.stderr  # rank 0's
    assert [step for step, _ in checkpoint_folders(str(out))] == [stop]  # rank 0 was not signalled, stopped there too
    checkpoint = out / f"checkpoint-{stop}"
    assert checkpoint_problems(str(checkpoint)) == [] and (checkpoint / "rng_state_1.pth").exists()
    resumed = torchrun(
        ROOT / "run_pretraining.py", [*TWO_PROCESSES, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    one = tmp_path / "one"
    run_pretraining.main([*TWO_PROCESSES, "--output_dir", str(one), "--per_device_train_batch_size", "16"])
    losses = [
        [e["loss"] for e in json.loads((d / "trainer_state.json").read_text())["log_history"] if "loss" in e]
        for d in (out, one)
    ]
    assert len(losses[0]) == 6
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)  # one process = two (gloo), resume included


MODULES = {
    "pretraining": "run_pretraining",
    "finetuning": "run_image_classification",
    "segmentation": "run_semantic_segmentation",
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_torchrun_forwards_sigusr1_to_both_processes_which_stop_at_one_step(tmp_path, script):
    # Slurm's `--signal=USR1@...` (without B:) reaches torchrun; with --signals_to_handle it forwards it.
    program = tmp_path / "signal_launcher.py"
    target = dict(rank=0, step=2, target="os.getppid()", signal="SIGUSR1", module=MODULES[script])
    program.write_text(SIGNAL_ONE_RANK.format(**target))
    out = tmp_path / "two"
    argv = [*SCRIPTS[script][1], *STEPS, *ONLY_THEIR_CHECKPOINT, "--use_cpu", "--output_dir", str(out)]
    launcher = ["--signals_to_handle", "SIGTERM,SIGINT,SIGUSR1,SIGUSR2"]
    stopped = torchrun(program, argv, launcher)
    assert stopped.returncode != 0
    (step, checkpoint), *_ = checkpoint_folders(str(out))
    assert step in (2, 3) and checkpoint_problems(checkpoint) == [], stopped.stderr[-4000:]
    assert (pathlib.Path(checkpoint) / "rng_state_1.pth").exists()  # both processes saved into it
    assert (read_manifest(str(out)) or {}).get("status") is None


# ---------------------------------------------------------------------------------------------------- before training

LOADERS = {
    "pretraining": (run_pretraining, "load_image_datasets"),
    "finetuning": (run_image_classification, "load_image_datasets"),
    "segmentation": (run_semantic_segmentation, "load_segmentation_datasets"),
}


def _signal_while_loading_data(script: str, sig):
    """A setup for the child: `sig` arrives while the script loads its data (before the run directory is opened)."""

    def setup():
        module, name = LOADERS[script]
        load = getattr(module, name)

        def signalling(*args, **kwargs):
            os.kill(os.getpid(), sig)
            return load(*args, **kwargs)

        setattr(module, name, signalling)

    return setup


@pytest.mark.parametrize("script", SCRIPTS)
def test_signal_while_the_data_are_loaded_exits_75_at_once_and_auto_starts_the_run(tmp_path, script, capfd):
    # Loading and checking the data can outlast the grace period; the signal killed the process (status 143 in a
    # shell), which a requeue rule for 75 (a Kubernetes podFailurePolicy) counts as a failure.
    main, base = SCRIPTS[script]
    argv = ["--output_dir", str(tmp_path / "out"), *base, *STEPS]
    assert in_child(main, argv, setup=_signal_while_loading_data(script, signal.SIGUSR1)) == EXIT_PREEMPTED
    assert "SIGUSR1 received before training started: nothing to save" in capfd.readouterr().err
    assert checkpoint_folders(str(tmp_path / "out")) == []
    assert in_child(main, [*argv, "--resume_from_checkpoint", "auto"]) == 0
    assert read_manifest(str(tmp_path / "out"))["status"] == "finished"


class SignalAtTrainBegin(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)


def _log_to_stderr():
    """A setup for the child: mae_hf's log on stderr (under pytest, logging.basicConfig adds no handler)."""
    logging.getLogger("mae_hf").addHandler(logging.StreamHandler(sys.stderr))


def test_a_run_stopped_before_its_first_step_is_told_to_start_again_with_auto(tmp_path, capfd):
    # The advice was `--resume_from_checkpoint latest`, which then failed: "no checkpoint-* folder".
    main, base = SCRIPTS["pretraining"]
    argv = ["--output_dir", str(tmp_path / "out"), *base, *STEPS]
    assert in_child(main, argv, [SignalAtTrainBegin()], _log_to_stderr) == EXIT_PREEMPTED
    err = capfd.readouterr().err
    assert "pre-empted: SIGTERM before the first step" in err
    assert "nothing is saved yet: start the run again with --resume_from_checkpoint auto" in err
    assert "resume_from_checkpoint latest" not in err
    assert in_child(main, [*argv, "--resume_from_checkpoint", "auto"]) == 0


def _signal_while_the_lock_is_written():
    """A setup for the child: SIGTERM between the creation of the lock file and the writing of its content."""

    def setup():
        dump = json.dump

        def signalling(obj, *args, **kwargs):
            if isinstance(obj, dict) and "process_start" in obj:
                os.kill(os.getpid(), signal.SIGTERM)
            return dump(obj, *args, **kwargs)

        json.dump = signalling

    return setup


def test_a_signal_while_the_lock_is_taken_leaves_no_lock_behind(tmp_path):
    # An empty lock file was left, which refused the requeued run for a minute ("other runs keep taking it").
    main, base = SCRIPTS["pretraining"]
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *base, *STEPS]
    assert in_child(main, argv, setup=_signal_while_the_lock_is_written()) == EXIT_PREEMPTED
    assert not (out / LOCK_NAME).exists()
    assert in_child(main, [*argv, "--resume_from_checkpoint", "auto"]) == 0
