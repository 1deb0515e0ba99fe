"""The output directory of a run: checksums that catch a flipped bit in each kind of checkpoint file (and in the final
model), the step taken from the manifest, one run per directory (a lock that a second run meets, stale locks of dead
runs taken over), settings changed on resume applied or refused by name (the non-finite loss message's advice
followed end to end), data described by content (staged elsewhere, the same run), one wandb run per run."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from helpers import PRETRAIN_TINY as TINY
from helpers import ROOT
from test_preemption import Signal, in_child
from test_resume import SCRIPTS, STEPS
from test_run_pretraining import Killed, StopAfter, make_image_folder
from transformers import TrainerCallback

import run_pretraining
from mae_hf.run_directory import lock as run_lock
from mae_hf.run_directory.checkpoints import checkpoint_folders, checkpoint_problems, checkpoint_step
from mae_hf.run_directory.files import MANIFEST_NAME, folder_problems, read_manifest
from mae_hf.run_directory.identity import path_content
from mae_hf.run_directory.resume import newest_complete_checkpoint
from mae_hf.trainer import NonFiniteLossError

PRETRAIN = SCRIPTS["pretraining"][1]


def pretrain(out, *extra, callbacks=()):
    return run_pretraining.main(["--output_dir", str(out), *PRETRAIN, *STEPS, *extra], callbacks=callbacks)


def flip_bit(path, offset=None):
    """Flip one bit in the middle of the file (its size unchanged)."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after step 6 (checkpoints 3 and 6, no final model), made once."""
    out = tmp_path_factory.mktemp("stopped") / "out"
    with pytest.raises(Killed):
        pretrain(out, callbacks=[StopAfter(6)])
    return out


def corrupt(path):
    if path.name == "trainer_state.json":  # an edit of the step, size unchanged
        path.write_text(path.read_text().replace('"global_step": 6', '"global_step": 9'))
    else:
        flip_bit(path)


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"]
)
def test_a_flipped_bit_in_each_checkpoint_file_is_named_skipped_by_latest_and_refused_as_a_path(
    tmp_path, stopped_run, name
):
    out = tmp_path / "out"
    shutil.copytree(stopped_run, out)
    corrupt(out / "checkpoint-6" / name)
    problems = checkpoint_problems(str(out / "checkpoint-6"))
    assert len(problems) == 1 and problems[0].startswith(f"{name} is corrupt: its xxh3_128 checksum is ")
    found, skipped = newest_complete_checkpoint(str(out))
    assert found == str(out / "checkpoint-3")
    assert skipped == [f"checkpoint-6 is incomplete or corrupt: {problems[0]}"]
    with pytest.raises(ValueError, match=rf"checkpoint-6 is not a complete, intact checkpoint: {name} is corrupt"):
        pretrain(out, "--resume_from_checkpoint", str(out / "checkpoint-6"))


def test_latest_resumes_the_newest_intact_checkpoint_past_a_corrupt_one(tmp_path, stopped_run, caplog):
    # The story of the issue: a flipped bit in the newest checkpoint's weights trained on into NaN; `latest`, as the
    # NaN message advises, picked the same checkpoint again.
    out = tmp_path / "out"
    shutil.copytree(stopped_run, out)
    flip_bit(out / "checkpoint-6" / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="mae_hf"):
        pretrain(out, "--resume_from_checkpoint", "latest")
    assert "skipping checkpoint-6 is incomplete or corrupt: model.safetensors is corrupt" in caplog.text
    assert f"resuming from {out / 'checkpoint-3'} (step 3;" in caplog.text
    pretrain(tmp_path / "straight")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()


def test_the_step_comes_from_the_manifest_and_must_agree_with_trainer_state_and_the_folder(tmp_path, stopped_run):
    out = tmp_path / "out"
    shutil.copytree(stopped_run, out)
    assert checkpoint_step(str(out / "checkpoint-6")) == 6
    os.rename(out / "checkpoint-6", out / "checkpoint-8")  # the folder name disagrees
    assert checkpoint_problems(str(out / "checkpoint-8")) == [
        "the step differs: 6 in trainer_state.json, 6 in mae_hf_manifest.json, 8 in the folder name"
    ]
    plain = out / "checkpoint-3"  # a checkpoint of plain transformers (no manifest), its trainer_state edited
    os.remove(plain / MANIFEST_NAME)
    (plain / "trainer_state.json").write_text(
        (plain / "trainer_state.json").read_text().replace('"global_step": 3', '"global_step": 5')
    )
    assert checkpoint_step(str(plain)) == 5
    assert checkpoint_problems(str(plain)) == ["the step differs: 5 in trainer_state.json, 3 in the folder name"]


def test_a_corrupt_final_model_is_not_a_finished_run_and_is_saved_again_from_the_last_checkpoint(tmp_path, caplog):
    out = tmp_path / "out"
    pretrain(out, "--max_steps", "6")
    good = (out / "model.safetensors").read_bytes()
    assert read_manifest(str(out))["files"]["model.safetensors"]["xxh3_128"]
    flip_bit(out / "model.safetensors")
    assert folder_problems(str(out))[0].startswith("model.safetensors is corrupt")
    with caplog.at_level(logging.INFO, logger="mae_hf"):
        pretrain(out, "--max_steps", "6", "--resume_from_checkpoint", "latest")
    assert "checkpoint-6 is the end of training: saving its model" in caplog.text
    assert (out / "model.safetensors").read_bytes() == good and folder_problems(str(out)) == []


def test_auto_starts_resumes_and_leaves_a_finished_run_alone_with_one_command_line(tmp_path, caplog):
    # What a requeued job runs each time: `--resume_from_checkpoint auto`.
    out = tmp_path / "out"
    with pytest.raises(Killed):
        pretrain(out, "--resume_from_checkpoint", "auto", callbacks=[StopAfter(3)])  # a fresh start
    with caplog.at_level(logging.INFO, logger="mae_hf"):
        pretrain(out, "--resume_from_checkpoint", "auto")
    assert f"resuming from {out / 'checkpoint-3'} (step 3;" in caplog.text
    kept = (out / "model.safetensors").read_bytes()
    pretrain(out, "--resume_from_checkpoint", "auto")
    assert "this run is finished: nothing to train" in caplog.text and (out / "model.safetensors").read_bytes() == kept
    with pytest.raises(ValueError, match=r"auto: no complete checkpoint of this run .*belongs to another run \(seed"):
        pretrain(out, "--seed", "1", "--resume_from_checkpoint", "auto")


# ---------------------------------------------------------------------------------------------------- the lock


def test_a_second_run_on_the_same_output_dir_is_refused_naming_the_first(tmp_path):
    # Two runs on one --output_dir (another seed): both ended with exit 0, every file belonged to one of them, and
    # with frequent saves one crashed on the other's .tmp-checkpoint-* that it had deleted as a leftover.
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *PRETRAIN, *STEPS, "--save_steps", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, *argv], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while not list(out.glob("checkpoint-*")) and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        message = rf"--output_dir {out} is in use by another run \(host {socket.gethostname()}, pid {first.pid}, "
        with pytest.raises(ValueError, match=message + r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"):
            run_pretraining.main([*argv, "--seed", "1", "--overwrite_output_dir"])
        with pytest.raises(ValueError, match=message):
            run_pretraining.main([*argv, "--resume_from_checkpoint", "latest"])
        holder = json.loads((out / run_lock.LOCK_NAME).read_text())
    finally:
        assert first.wait(300) == 0, first.stderr.read()[-3000:]
    assert holder["pid"] == first.pid
    assert not (out / run_lock.LOCK_NAME).exists()  # released at the end
    seeds = {read_manifest(str(path))["run_identity"]["seed"] for path in out.glob("checkpoint-*")}
    assert seeds == {0} and read_manifest(str(out))["run_identity"]["seed"] == 0


SLOW_RUN = """
import sys, time
from transformers import TrainerCallback
import run_pretraining

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.5)

run_pretraining.main(sys.argv[1:], callbacks=[Slow()])
"""


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def write_lock(folder, **holder):
    folder.mkdir(parents=True, exist_ok=True)
    content = {"host": socket.gethostname(), "pid": dead_pid(), "started": time.time() - 3600, **holder}
    (folder / run_lock.LOCK_NAME).write_text(json.dumps(content))
    return folder / run_lock.LOCK_NAME


def test_the_stale_lock_of_a_dead_run_is_taken_over(tmp_path, caplog):
    # A run killed with SIGKILL (or on a node that died) leaves its lock; the resume must not be refused.
    out = tmp_path / "out"
    with pytest.raises(Killed):
        pretrain(out, callbacks=[StopAfter(3)])
    write_lock(out)
    with caplog.at_level(logging.WARNING, logger="mae_hf"):
        pretrain(out, "--resume_from_checkpoint", "latest")
    assert "taking over the lock of" in caplog.text and "its process is gone" in caplog.text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8


def test_locks_of_other_hosts_are_judged_by_their_heartbeat_and_slurm_requeues_by_their_job(tmp_path, monkeypatch):
    path = write_lock(tmp_path / "a", host="another-node", pid=12345)
    with pytest.raises(run_lock.RunLocked, match=r"host another-node, pid 12345, .*heartbeat 0 s ago"):
        run_lock.RunLock(str(tmp_path / "a")).acquire()  # alive as far as anyone here can tell
    old = time.time() - run_lock.STALE_SECONDS - 10
    os.utime(path, (old, old))
    lock = run_lock.RunLock(str(tmp_path / "a"))
    lock.acquire()  # its heartbeat stopped: a dead node's run
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
    # A requeued Slurm job: its earlier incarnation ran on another node, with the same job id.
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(tmp_path / "b", host="another-node", pid=12345, slurm_job_id="4242", slurm_restart_count="0")
    lock = run_lock.RunLock(str(tmp_path / "b"))
    lock.acquire()
    lock.release()


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
    lock = run_lock.RunLock(str(tmp_path))
    lock.acquire()
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert time.time() - os.stat(lock.path).st_mtime < 5
    lock.release()


# ---------------------------------------------------------------------------------------------------- settings


class PoisonAbove(TrainerCallback):
    """Makes the loss NaN at every step whose learning rate is above `limit`: a rate too high for the run."""

    def __init__(self, limit):
        self.limit, self.hook = limit, None

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.hook is None:
            self.hook = model.register_forward_hook(self.poison)
        self.too_high = optimizer.param_groups[0]["lr"] > self.limit

    def poison(self, module, inputs, output):
        if self.too_high:
            output.loss = output.loss * float("nan")
        return output


def learning_rates(out) -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["learning_rate"] for e in history if "learning_rate" in e}


@pytest.mark.parametrize("how", ["latest", "path"])
def test_the_non_finite_loss_advice_resume_latest_with_a_lower_learning_rate_works_end_to_end(tmp_path, how):
    # constant schedule after 5 warmup steps: at 1e-4 the rate is 0, 2e-5, 4e-5, 6e-5 (too high: > 5e-5) at steps 1-4
    schedule = ["--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "5"]
    high, low = ["--base_learning_rate", "3.2e-3", *schedule], ["--base_learning_rate", "1.6e-3", *schedule]
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError, match=r"--resume_from_checkpoint latest, e.g. with a lower"):
        pretrain(out, *high, "--save_steps", "2", callbacks=[PoisonAbove(5e-5)])
    assert checkpoint_step(newest_complete_checkpoint(str(out))[0]) == 2
    resume = "latest" if how == "latest" else str(out / "checkpoint-2")
    pretrain(out, *low, "--save_steps", "2", "--resume_from_checkpoint", resume, callbacks=[PoisonAbove(5e-5)])
    pretrain(tmp_path / "low", *low, "--save_steps", "2")
    rates, expected = learning_rates(out), learning_rates(tmp_path / "low")
    assert [rates[step] for step in range(3, 9)] == [expected[step] for step in range(3, 9)]  # the new rate, exactly
    assert rates[2] == pytest.approx(1e-4 / 5)  # steps 1-2 ran at the old one
    old, new = 3.2e-3 * 8 / 256, 1.6e-3 * 8 / 256  # lr = base x global batch / 256
    for folder in (out / "checkpoint-8", out):  # recorded as it was done
        manifest = read_manifest(str(folder))
        assert manifest["run_identity"]["learning_rate"] == new
        changed = {"base_learning_rate": [3.2e-3, 1.6e-3], "learning_rate": [old, new]}
        assert manifest["changes"] == [{"step": 2, "settings": changed}]


class GroupSettings(TrainerCallback):
    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        raise Killed


def test_weight_decay_changed_on_resume_reaches_the_optimizer(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Killed):
        pretrain(out, callbacks=[StopAfter(3)])
    seen = GroupSettings()
    with pytest.raises(Killed):
        pretrain(
            out, "--weight_decay", "0.2", "--adam_beta2", "0.99", "--resume_from_checkpoint", "latest", callbacks=[seen]
        )
    decays = sorted({group["weight_decay"] for group in seen.groups})
    assert decays == [0.0, 0.2] and {group["betas"] for group in seen.groups} == {(0.9, 0.99)}


def test_a_setting_that_defines_the_run_is_refused_by_name(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Killed):
        pretrain(out, callbacks=[StopAfter(3)])
    with pytest.raises(ValueError, match=r"checkpoint-3 belongs to another run: seed: 0 there, 1 here. These settings"):
        pretrain(out, "--seed", "1", "--resume_from_checkpoint", str(out / "checkpoint-3"))
    with pytest.raises(ValueError, match=r"no complete checkpoint of this run .*belongs to another run \(seed: 0"):
        pretrain(out, "--seed", "1", "--resume_from_checkpoint", "latest")


def test_data_staged_elsewhere_is_the_same_run(tmp_path):
    # $SLURM_TMPDIR: the same ImageFolder copied to node-local disk; its absolute path made it "another run".
    shared, staged = make_image_folder(tmp_path / "shared"), tmp_path / "node-local" / "data"
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *TINY, *STEPS, "--per_device_train_batch_size", "4", "--train_val_split", "0.2"]
    with pytest.raises(Killed):
        run_pretraining.main([*argv, "--train_dir", str(shared)], callbacks=[StopAfter(3)])
    shutil.copytree(shared, staged)
    run_pretraining.main([*argv, "--train_dir", str(staged), "--resume_from_checkpoint", "latest"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8
    content = read_manifest(str(out))["run_identity"]["train_dir"]["local content"]
    assert content == path_content(str(shared)) and content["files"] == 12
    (staged / "class_0" / "0.jpg").write_bytes(b"another image")  # other data: another run
    assert path_content(str(staged)) != content


# ---------------------------------------------------------------------------------------------------- wandb


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *PRETRAIN, *STEPS, "--report_to", "wandb"]
    main = run_pretraining.main
    assert in_child(main, argv, [StopAfter(4)]) == 1  # killed after step 4 (checkpoint-3 on disk)
    assert in_child(main, [*argv, "--resume_from_checkpoint", "latest"]) == 0
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run_ids = [run.name.rsplit("-", 1)[1] for run in runs]
    assert len(runs) == 2 and len(set(run_ids)) == 1  # two sessions, one wandb run
    assert read_manifest(str(out))["wandb_run_id"] == run_ids[0]
    assert read_manifest(str(out / "checkpoint-3"))["wandb_run_id"] == run_ids[0]


# ---------------------------------------------------------------------------------------------------- length


def test_a_run_shortened_below_the_step_it_reached_is_refused_naming_max_steps(tmp_path, stopped_run):
    # It "finished" at step 6 with --max_steps 4, recorded as stopped by "the training data ended at step 6 of 8" and
    # with the change "max_steps: 8 -> 4 applied from step 7 on".
    out = tmp_path / "out"
    shutil.copytree(stopped_run, out)
    with pytest.raises(ValueError, match=r"checkpoint-6 is at step 6, beyond the 4 steps of --max_steps 4: a run"):
        pretrain(out, "--max_steps", "4", "--resume_from_checkpoint", "latest")
    assert read_manifest(str(out)) is None and not (out / "model.safetensors").exists()
    pretrain(out, "--max_steps", "6", "--resume_from_checkpoint", "latest")  # shortened to the step it reached
    assert read_manifest(str(out))["status"] == "finished" and read_manifest(str(out))["global_step"] == 6


def test_save_eval_and_logging_steps_changed_on_resume_are_applied(tmp_path, stopped_run):
    # Trainer keeps the checkpoint's save / eval / logging steps (with a warning that they "do not match"): a job
    # requeued with --save_steps 1 to lose less at the next pre-emption still saved every 3 steps.
    out = tmp_path / "out"
    shutil.copytree(stopped_run, out)
    evaluations = ["--do_eval", "true", "--eval_strategy", "steps", "--max_eval_samples", "8"]
    pretrain(
        out,
        "--save_steps",
        "1",
        "--logging_steps",
        "2",
        *evaluations,
        "--eval_steps",
        "7",
        "--resume_from_checkpoint",
        "latest",
    )
    assert [step for step, _ in checkpoint_folders(str(out))] == [8, 7, 6, 3]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e and e["step"] > 6] == [8]
    assert [e["step"] for e in history if "eval_loss" in e] == [7, 8]  # (and at the end, as Trainer does)


def test_auto_does_not_start_over_when_every_checkpoint_is_corrupt(tmp_path, stopped_run):
    # It logged "no checkpoint in OUT; starting the run" and trained from step 0, writing over the corrupt ones:
    # with --save_total_limit 1 a single flipped bit discarded the whole run.
    out = tmp_path / "out"
    shutil.copytree(stopped_run, out)
    for step in (3, 6):
        flip_bit(out / f"checkpoint-{step}" / "optimizer.pt")
    before = sorted(os.listdir(out))
    corrupt_6 = r"checkpoint-6 is incomplete or corrupt: optimizer.pt is corrupt: its xxh3_128 checksum is"
    with pytest.raises(ValueError, match=rf"auto: no complete checkpoint of this run in {out} \({corrupt_6}"):
        pretrain(out, "--resume_from_checkpoint", "auto")
    assert sorted(os.listdir(out)) == before


def test_a_damaged_trainer_state_of_a_trained_run_is_named_and_saved_again_from_the_last_checkpoint(tmp_path, caplog):
    # The output dir's trainer_state.json was not in its manifest: a truncated one (a node lost while the file system
    # flushed it) made the resume of the trained run fail with a bare JSONDecodeError, naming no file.
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *PRETRAIN, *STEPS, "--max_steps", "6", "--do_eval", "true"]
    assert (
        in_child(run_pretraining.main, [*argv, "--max_eval_samples", "8"], [Signal(0, during="final evaluation")]) == 75
    )
    assert read_manifest(str(out))["status"] == "trained" and "trainer_state.json" in read_manifest(str(out))["files"]
    state = out / "trainer_state.json"
    state.write_text(state.read_text()[:300])
    with caplog.at_level(logging.INFO, logger="mae_hf"):
        run_pretraining.main([*argv, "--max_eval_samples", "8", "--resume_from_checkpoint", "latest"])
    assert f"the final model in {out} is incomplete or corrupt (trainer_state.json has " in caplog.text
    assert "checkpoint-6 is the end of training: saving its model" in caplog.text
    assert json.loads(state.read_text())["global_step"] == 6 and read_manifest(str(out))["status"] == "finished"
    assert folder_problems(str(out)) == []
