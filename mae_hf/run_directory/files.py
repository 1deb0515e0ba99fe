"""Files of a run directory written so that a kill at any instant leaves the old state or the new one, and read back
with the checks that say whether a folder is complete.

A folder (a checkpoint, the final model) is written into a temporary folder beside its final place (`.tmp-NAME`,
which no `checkpoint-*` pattern matches), flushed to disk, then renamed: renaming within one file system is atomic.
The last file written into it is a manifest (`mae_hf_manifest.json`: the run identity, the step and every file with
its size), so a folder is complete when its manifest is there and every file it lists has that size and reads back
(JSON parses, safetensors headers and torch zip directories are intact). Old folders are deleted by renaming them
to `.trash-NAME` first, so a kill during a deletion never leaves a half-deleted `checkpoint-N`.
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
