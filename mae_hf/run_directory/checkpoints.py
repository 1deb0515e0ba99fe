"""Checkpoints of a run: the `checkpoint-N` folders, their rotation (`--save_total_limit`), and the Trainer mixin
that writes them crash-safe (see `files`): a kill at any instant leaves the previous set of complete checkpoints, or
that set plus the new complete one.
"""

import json
import logging
import os
import re
import shutil

from transformers import TrainerCallback

from .files import (
    MANIFEST_NAME,
    STAGING_PREFIX,
    delete_folder,
    describe_files,
    folder_problems,
    publish_files,
    publish_folder,
    read_manifest,
    remove_leftovers,
    write_json_atomic,
    write_manifest,
)
from .identity import identity_differences
from .preemption import EvaluationInterrupted, PreemptionCallback, TrainingPreempted
from .settings import apply_resumed_settings

logger = logging.getLogger("mae_hf")

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR naming


def checkpoint_folders(folder: str) -> list[tuple[int, str]]:
    """(step, path) of the `checkpoint-N` folders in `folder`, newest (highest step) first."""
    if not os.path.isdir(folder):
        return []
    found = [
        (int(m.group(1)), os.path.join(folder, name))
        for name in os.listdir(folder)
        if (m := CHECKPOINT_PATTERN.match(name)) and os.path.isdir(os.path.join(folder, name))
    ]
    return sorted(found, reverse=True)


def _trainer_state_step(path: str) -> int | None:
    try:
        with open(os.path.join(path, "trainer_state.json")) as file:
            return int(json.load(file)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_step(path: str | None) -> int:
    """The global step a checkpoint was saved at: its manifest's (trainer_state.json's for a checkpoint written by
    plain transformers); 0 for none. `checkpoint_problems` checks that the two and the folder name agree."""
    if path is None:
        return 0
    manifest = read_manifest(path)
    step = manifest.get("global_step") if manifest else _trainer_state_step(path)
    return step if isinstance(step, int) else 0


def checkpoint_problems(path: str, verify: bool = True) -> list[str]:
    """Why `path` is not a checkpoint to resume: `folder_problems` (missing, short, unreadable or corrupt files),
    then a step on which its manifest, its trainer_state.json and its folder name (checkpoint-N) disagree."""
    if problems := folder_problems(path, verify):
        return problems
    manifest = read_manifest(path) or {}
    steps = {"trainer_state.json": _trainer_state_step(path)}
    if "global_step" in manifest:
        steps[MANIFEST_NAME] = manifest["global_step"]
    if match := CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path))):
        steps["the folder name"] = int(match.group(1))
    if len(set(steps.values())) > 1:
        return ["the step differs: " + ", ".join(f"{step} in {where}" for where, step in steps.items())]
    return []


def rotate_checkpoints(folder: str, limit: int | None, belongs, keep=()) -> list[str]:
    """Delete the oldest complete checkpoints for which `belongs(path)` holds, beyond the newest `limit` of them;
    `keep` (e.g. the best checkpoint) is never deleted. Incomplete or foreign folders neither count nor get
    deleted, so the only complete checkpoint is never the one deleted. Returns the deleted paths. (Completeness is
    checked without checksums: reading every kept checkpoint at every save would cost more than the save.)"""
    if not limit or limit <= 0:
        return []
    ours = [
        path for _step, path in checkpoint_folders(folder) if belongs(path) and not folder_problems(path, verify=False)
    ]
    keep = {os.path.abspath(path) for path in keep if path}
    deleted = [path for path in ours[limit:] if os.path.abspath(path) not in keep]
    for path in deleted:
        logger.info(f"deleting {path} (--save_total_limit {limit})")
        delete_folder(path)
    return deleted


# ---------------------------------------------------------------------------------------------------- Trainer


class CrashSafeCheckpoints:
    """A `transformers.Trainer` mixin (put it before Trainer in the bases). Hooks, no copies of Trainer code:

    - `_save_checkpoint` runs Trainer's own, with `_get_output_dir` pointing into `.tmp-checkpoint-N/`; the process
      that writes the output dir then adds the manifest (sizes and checksums of every file, the run identity, the
      run's record), flushes and renames the folder to `checkpoint-N` once every process has written its files (RNG
      states, sharded states); the others wait for the rename. Rotation (`save_total_limit`) counts only this run's
      complete checkpoints.
    - `save_model` into the output dir stages the model the same way and moves its files in, `config.json` last.
    - `save_metrics` replaces `{split}_results.json` and `all_results.json` atomically (Trainer's truncates them
      first; a kill then left an empty all_results.json, which the next save_metrics and a resume of the finished
      run read back and fail on).
    - An exception in an evaluation that is due with a checkpoint saves that checkpoint before it propagates (one
      process only: with several, the others would wait for it in the middle of their evaluation).
    - Pre-emption (`preemption`): a stop signal ends training at a step with that step's checkpoint; an evaluation
      it interrupts is recorded as pending in the checkpoint and run first by the resumed run.
    - Settings changed on resume (`settings.apply_resumed_settings`) replace those of the loaded optimizer and
      scheduler states.
    `run_identity` (a JSON-ready dict, see `identity.run_identity`) and `run_record` (the settings changed at each
    resume, the wandb run id) go into every manifest."""

    run_identity: dict | None = None
    run_record: dict | None = None
    evaluation_pending = False  # the evaluation of the current step was left for the resumed run (pre-emption)
    resumed_changes: dict | None = None  # {setting: (old, new)} that this run changed on resume: applied at its start
    stopped_by: str | None = None  # why training ended on purpose (`lifecycle.stop_reason`); None: it did not
    published_model_files: tuple = ()  # the files the last save_model into the output dir moved there
    _staging_root: str | None = None
    _fresh_groups: list | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for callback in list(self.callback_handler.callbacks):
            # transformers' --enable_jit_checkpoint saves on SIGTERM from one process after 3 s and lets train()
            # return as if training ended; `preemption` stops every process at one step and never returns.
            if type(callback).__name__ == "JITCheckpointCallback":
                self.remove_callback(callback)
                logger.info("--enable_jit_checkpoint: mae_hf handles SIGTERM itself (see README, Pre-emption)")
        self.add_callback(PreemptionCallback(self))
        self.add_callback(_ApplyResumedSettings(self))

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _belongs_to_run(self, path: str) -> bool:
        return not identity_differences((read_manifest(path) or {}).get("run_identity"), self.run_identity)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging, final = os.path.join(run_dir, STAGING_PREFIX + name), os.path.join(run_dir, name)
        if self.args.should_save:
            remove_leftovers(run_dir)  # under the run's lock: nothing of another live run
        self.accelerator.wait_for_everyone()
        self._staging_root = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every process has written its files into the staged folder
        if self.args.should_save:
            staged = os.path.join(staging, name)
            best = self.state.best_model_checkpoint
            if best and os.path.abspath(best).startswith(os.path.abspath(staging) + os.sep):
                self.state.best_model_checkpoint = final  # as Trainer would have named it
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            record = {**(self.run_record or {}), "evaluation_pending": self.evaluation_pending}
            write_manifest(staged, self.run_identity, self.state.global_step, describe_files(staged), **record)
            publish_folder(staged, final)
            os.rmdir(staging)
            rotate_checkpoints(
                run_dir,
                self.args.save_total_limit,
                self._belongs_to_run,
                keep=[self.state.best_model_checkpoint, final],
            )
        self.accelerator.wait_for_everyone()

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # Trainer builds the optimizer from this run's arguments, then the scheduler, then loads a checkpoint's
        # states over both: the hyperparameters this run asked for are those of the groups at this point.
        groups = (optimizer or self.optimizer).param_groups
        self._fresh_groups = [{k: v for k, v in group.items() if k != "params"} for group in groups]
        return super().create_scheduler(num_training_steps, optimizer)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self._staging_root is not None:  # called by _save_checkpoint: the checkpoint folder is staged already
            return super().save_model(output_dir, _internal_call)
        target = output_dir or self.args.output_dir
        staging = os.path.join(target, STAGING_PREFIX + "model")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        super().save_model(staging, _internal_call=True)
        self.accelerator.wait_for_everyone()
        if self.args.should_save and os.path.isdir(staging):
            self.published_model_files = publish_files(staging, target)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:  # what Trainer.save_model does after saving
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def save_metrics(self, split: str, metrics: dict, combined: bool = True) -> None:
        if not self.is_world_process_zero():
            return
        write_json_atomic(os.path.join(self.args.output_dir, f"{split}_results.json"), metrics)
        if combined:
            path = os.path.join(self.args.output_dir, "all_results.json")
            combined_metrics = {}
            if os.path.exists(path):
                with open(path, encoding="utf-8") as file:
                    combined_metrics = json.load(file)
            write_json_atomic(path, {**combined_metrics, **metrics})

    def _evaluate(self, trial, ignore_keys_for_eval, skip_scheduler: bool = False):
        # Private Trainer method (no public hook runs around an evaluation within training): it is where an
        # evaluation's failure or interruption can still save the step's checkpoint. Pinned by tests/test_preemption.py.
        pending = self.evaluation_pending  # a resumed step's evaluation: run as it was due then (eval_on_start)
        try:
            metrics = super()._evaluate(trial, ignore_keys_for_eval, skip_scheduler and not pending)
        except EvaluationInterrupted as stop:
            if not self.is_in_train:
                raise
            self._save_interrupted_step(trial)
            raise TrainingPreempted(f"{stop}; checkpoint-{self.state.global_step} saved") from None
        except Exception:
            if self.is_in_train and self.control.should_save and self.args.world_size == 1:
                logger.error(
                    f"the evaluation at step {self.state.global_step} failed; saving "
                    f"checkpoint-{self.state.global_step} before stopping"
                )
                self._save_checkpoint(self.model_wrapped, trial)
            raise
        if pending:  # what Trainer does after an evaluation due at a step (`_maybe_log_save_evaluate`); private,
            # no public method judges metrics for the best checkpoint. Pinned by test_preemption (best checkpoint)
            self._determine_best_metric(metrics=metrics, trial=trial)
        return metrics

    def _save_interrupted_step(self, trial) -> None:
        """The checkpoint of a step whose evaluation a stop signal interrupted, recording the evaluation as pending
        (nothing to save at step 0, or when this step's checkpoint is the one this run resumed)."""
        self.evaluation_pending = True
        step = self.state.global_step
        existing = os.path.join(super()._get_output_dir(trial), f"checkpoint-{step}")
        if step > 0 and not (self._belongs_to_run(existing) and not folder_problems(existing, verify=False)):
            self._save_checkpoint(self.model_wrapped, trial)


class _ApplyResumedSettings(TrainerCallback):
    """At the start of a resumed run: the loaded optimizer and scheduler states take this run's hyperparameters when
    they changed (`CrashSafeCheckpoints.resumed_changes`, see `settings.apply_resumed_settings`), and the state the
    save, evaluation and logging intervals of this run's arguments (Trainer keeps the checkpoint's, warning that
    they "do not match": a job requeued with a shorter --save_steps would still save at the old interval)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if self.trainer.resumed_changes:
            apply_resumed_settings(optimizer, lr_scheduler, self.trainer._fresh_groups, self.trainer.resumed_changes)
        kinds = ("save_steps", "eval_steps", "logging_steps")
        saved = {kind: getattr(state, kind) for kind in kinds}
        state.compute_steps(args, state.max_steps)  # what Trainer does for a fresh start
        if changed := [
            f"{kind} {saved[kind]:g} -> {getattr(state, kind):g}"
            for kind in kinds
            if saved[kind] != getattr(state, kind)
        ]:
            logger.info(f"intervals changed since the checkpoint, applied: {', '.join(changed)}")
