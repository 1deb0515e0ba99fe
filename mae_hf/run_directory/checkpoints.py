"""Checkpoints of a run: the `checkpoint-N` folders, their rotation (`--save_total_limit`), and the Trainer mixin
that writes them crash-safe (see `files`): a kill at any instant leaves the previous set of complete checkpoints, or
that set plus the new complete one.
"""

import json
import logging
import os
import re
import shutil

from .files import (
    STAGING_PREFIX,
    delete_folder,
    file_sizes,
    folder_problems,
    publish_files,
    publish_folder,
    read_manifest,
    remove_leftovers,
    write_json_atomic,
    write_manifest,
)

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


def rotate_checkpoints(folder: str, limit: int | None, belongs, keep=()) -> list[str]:
    """Delete the oldest complete checkpoints for which `belongs(path)` holds, beyond the newest `limit` of them;
    `keep` (e.g. the best checkpoint) is never deleted. Incomplete or foreign folders neither count nor get
    deleted, so the only complete checkpoint is never the one deleted. Returns the deleted paths."""
    if not limit or limit <= 0:
        return []
    ours = [path for _step, path in checkpoint_folders(folder) if belongs(path) and not folder_problems(path)]
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
      that writes the output dir then adds the manifest, flushes and renames the folder to `checkpoint-N` once every
      process has written its files (RNG states, sharded states); the others wait for the rename. Rotation
      (`save_total_limit`) counts only this run's complete checkpoints.
    - `save_model` into the output dir stages the model the same way and moves its files in, `config.json` last.
    - `save_metrics` replaces `{split}_results.json` and `all_results.json` atomically (Trainer's truncates them
      first; a kill then left an empty all_results.json, which the next save_metrics and a resume of the finished
      run read back and fail on).
    - An exception in an evaluation that is due with a checkpoint saves that checkpoint before it propagates (one
      process only: with several, the others would wait for it in the middle of their evaluation).
    `run_identity` (a JSON-ready dict, see `resume.run_identity`) goes into every manifest."""

    run_identity: dict | None = None
    published_model_files: tuple = ()  # the files the last save_model into the output dir moved there
    _staging_root: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _belongs_to_run(self, path: str) -> bool:
        return (read_manifest(path) or {}).get("run_identity") == self.run_identity

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging, final = os.path.join(run_dir, STAGING_PREFIX + name), os.path.join(run_dir, name)
        if self.args.should_save:
            remove_leftovers(run_dir)
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
            write_manifest(staged, self.run_identity, self.state.global_step, file_sizes(staged))
            publish_folder(staged, final)
            os.rmdir(staging)
            rotate_checkpoints(
                run_dir,
                self.args.save_total_limit,
                self._belongs_to_run,
                keep=[self.state.best_model_checkpoint, final],
            )
        self.accelerator.wait_for_everyone()

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
        try:
            return super()._evaluate(trial, ignore_keys_for_eval, skip_scheduler)
        except Exception:
            if self.is_in_train and self.control.should_save and self.args.world_size == 1:
                logger.error(
                    f"the evaluation at step {self.state.global_step} failed; saving "
                    f"checkpoint-{self.state.global_step} before stopping"
                )
                self._save_checkpoint(self.model_wrapped, trial)
            raise
