"""Crash-safe checkpoints: a kill at any instant leaves the previous set of complete checkpoints, or that set plus
the new complete one.

A checkpoint (and the final model) is written into a temporary folder beside its final place (`.tmp-NAME`, which no
`checkpoint-*` pattern matches), flushed to disk, then renamed: renaming within one file system is atomic. The
last file written into it is a manifest (`mae_hf_manifest.json`: the run identity, the step and every file with its
size), so a folder is complete when its manifest is there and every file it lists has that size and reads back
(JSON parses, safetensors headers and torch zip directories are intact). Old checkpoints are deleted by renaming
them to `.trash-NAME` first, so a kill during a deletion never leaves a half-deleted `checkpoint-N`.
"""

import json
import logging
import os
import re
import shutil
import struct
import zipfile

logger = logging.getLogger("mae_hf")

MANIFEST_NAME = "mae_hf_manifest.json"
STAGING_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR naming
# Written last when a model folder is published: until then a from_pretrained of the folder finds no model.
CONFIG_NAME = "config.json"
WEIGHT_FILES = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")


# ---------------------------------------------------------------------------------------------------- writing


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str) -> None:
    """Flush every file under `folder`, then the folders themselves (so that their entries are on disk too)."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def write_json_atomic(path: str, content: dict) -> None:
    """Write a JSON file through a temporary sibling and a rename: readers see the old file or the new one."""
    temporary = os.path.join(os.path.dirname(path), STAGING_PREFIX + os.path.basename(path))
    with open(temporary, "w") as file:
        json.dump(content, file, indent=2, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync(os.path.dirname(path) or ".")


def file_sizes(folder: str, names=None) -> dict[str, int]:
    """{path relative to folder: size} of every file under `folder` (or of `names`), the manifest excluded."""
    if names is not None:
        return {name: os.path.getsize(os.path.join(folder, name)) for name in names}
    sizes = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative != MANIFEST_NAME:
                sizes[relative] = os.path.getsize(path)
    return dict(sorted(sizes.items()))


def write_manifest(folder: str, identity: dict | None, step: int, files: dict[str, int]) -> None:
    write_json_atomic(
        os.path.join(folder, MANIFEST_NAME), {"run_identity": identity, "global_step": step, "files": files}
    )


def read_manifest(folder: str) -> dict | None:
    """The folder's manifest, or None when it has none (or an unreadable one)."""
    try:
        with open(os.path.join(folder, MANIFEST_NAME)) as file:
            manifest = json.load(file)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def delete_folder(path: str) -> None:
    """Rename first (atomic), then delete: a kill midway leaves a `.trash-` folder, never a half-deleted one."""
    trash = os.path.join(os.path.dirname(path), TRASH_PREFIX + os.path.basename(path))
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def publish_folder(staged: str, final: str) -> None:
    """Flush `staged`, then rename it to `final` (replacing a folder of that name)."""
    fsync_tree(staged)
    if os.path.exists(final):
        trash = os.path.join(os.path.dirname(final), TRASH_PREFIX + os.path.basename(final))
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(staged, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staged, final)
    _fsync(os.path.dirname(final) or ".")


def publish_files(staged: str, folder: str) -> list[str]:
    """Move the entries of `staged` into `folder` (each by an atomic rename), `config.json` last and any old
    `config.json` removed first: at every instant the folder holds the old model, no loadable model, or the new
    one, never a half-written file. Old weight files the new model does not have are removed (as save_pretrained
    does). Returns the names moved."""
    fsync_tree(staged)
    names = sorted(os.listdir(staged), key=lambda name: name == CONFIG_NAME)
    if CONFIG_NAME in names and os.path.exists(os.path.join(folder, CONFIG_NAME)):
        os.remove(os.path.join(folder, CONFIG_NAME))
    for name in os.listdir(folder):
        if WEIGHT_FILES.match(name) and name not in names:
            os.remove(os.path.join(folder, name))
    for name in names:
        source, target = os.path.join(staged, name), os.path.join(folder, name)
        if os.path.isdir(source) and os.path.exists(target):
            delete_folder(target)
        os.replace(source, target)
    _fsync(folder)
    os.rmdir(staged)
    return names


def is_leftover(name: str) -> bool:
    """A staging or trash entry of ours (what a killed save or deletion leaves behind)."""
    ours = ("checkpoint-", "model", MANIFEST_NAME)
    staged_results = name.startswith(STAGING_PREFIX) and name.endswith("_results.json")  # see save_metrics
    return staged_results or name.startswith(
        tuple(prefix + kind for prefix in (STAGING_PREFIX, TRASH_PREFIX) for kind in ours)
    )


def remove_leftovers(folder: str) -> None:
    """Delete the staging and trash entries that a killed save or deletion left in `folder`."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if is_leftover(name):
            path = os.path.join(folder, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


# ---------------------------------------------------------------------------------------------------- reading


def _safetensors_problem(path: str) -> str | None:
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            return "has no safetensors header"
        (length,) = struct.unpack("<Q", head)
        try:
            header = json.loads(file.read(length))
        except ValueError:
            return "has a broken safetensors header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if os.path.getsize(path) != 8 + length + end:
        return f"is truncated ({os.path.getsize(path)} bytes of {8 + length + end})"
    return None


def _file_problem(path: str) -> str | None:
    """Why the file would not load (cheap checks only: no tensor is read), or None."""
    try:
        if path.endswith(".json"):
            with open(path) as file:
                json.load(file)
        elif path.endswith(".safetensors"):
            return _safetensors_problem(path)
        elif path.endswith((".pt", ".pth", ".bin")):
            with open(path, "rb") as file:
                zipped = file.read(2) == b"PK"  # torch.save's format; older pickles are not checked
            if zipped:
                zipfile.ZipFile(path).close()  # reads the central directory, which a truncated file lacks
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        return f"cannot be read ({type(error).__name__}: {error})"
    return None


# Without a manifest (a checkpoint written by plain transformers): what `Trainer` cannot resume without.
REQUIRED_WITHOUT_MANIFEST = ("trainer_state.json", CONFIG_NAME)


def folder_problems(folder: str) -> list[str]:
    """Why `folder` is not a complete checkpoint (or model folder): missing, short or unreadable files. [] when
    complete."""
    if not os.path.isdir(folder):
        return [f"{folder} is not a folder"]
    manifest = read_manifest(folder)
    if manifest is not None:
        expected = manifest["files"]
    else:
        if os.path.exists(os.path.join(folder, MANIFEST_NAME)):
            return [f"{MANIFEST_NAME} cannot be read"]
        expected = {name: None for name in REQUIRED_WITHOUT_MANIFEST}
        if not any(WEIGHT_FILES.match(name) for name in os.listdir(folder)):
            return ["it holds no model weights (model.safetensors)"]
        expected.update(file_sizes(folder))
    problems = []
    for name, size in expected.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            problems.append(f"{name} is missing")
        elif size is not None and os.path.getsize(path) != size:
            problems.append(f"{name} has {os.path.getsize(path)} bytes, not {size}")
        elif problem := _file_problem(path):
            problems.append(f"{name} {problem}")
    return problems


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
