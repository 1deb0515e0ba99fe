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
from concurrent.futures import ThreadPoolExecutor

import xxhash

logger = logging.getLogger("mae_hf")

MANIFEST_NAME = "mae_hf_manifest.json"
# 2: every file with {"bytes", "xxh3_128"}; 1 (older mae_hf): every file with its size only.
MANIFEST_FORMAT = 2
CHECKSUM = "xxh3_128"
CHUNK_BYTES = 8 << 20
STAGING_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"
# The probe file `preflight.check_writable_dir` writes and removes: other processes of the run, listing the output dir
# at that moment, do not count it as content.
WRITE_PROBE_PREFIX = ".mae_hf-write-probe-"
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


def _listing(folder: str) -> list[str]:
    """Every file under `folder` (paths relative to it), the manifest excluded, sorted."""
    found = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), folder)
            if relative != MANIFEST_NAME:
                found.append(relative)
    return sorted(found)


def file_sizes(folder: str, names=None) -> dict[str, int]:
    """{path relative to folder: size} of every file under `folder` (or of `names`), the manifest excluded."""
    return {
        name: os.path.getsize(os.path.join(folder, name)) for name in (_listing(folder) if names is None else names)
    }


def _in_threads(function, items: list) -> list:
    """[function(item) for item in items], files read and hashed in parallel (both release the GIL)."""
    with ThreadPoolExecutor(max(1, min(len(items), os.cpu_count() or 1, 8))) as pool:
        return list(pool.map(function, items))


def file_checksum(path: str) -> str:
    """The file's xxh3_128 digest (hex). xxhash is not a cryptographic hash: it guards against corruption (flipped
    bits, torn or mixed-up files), not against tampering, at ~10 GB/s per core against ~1.2 GB/s for SHA-256 (see
    benchmarks/bench_checksums.py). xxhash comes with `datasets`, which depends on it."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def describe_files(folder: str, names=None) -> dict[str, dict]:
    """{path relative to folder: {"bytes": size, "xxh3_128": digest}} of every file under `folder` (or of `names`),
    the manifest excluded."""
    names = _listing(folder) if names is None else sorted(names)
    paths = [os.path.join(folder, name) for name in names]
    digests = _in_threads(file_checksum, paths)
    return {
        name: {"bytes": os.path.getsize(path), CHECKSUM: digest} for name, path, digest in zip(names, paths, digests)
    }


def write_manifest(folder: str, identity: dict | None, step: int, files: dict[str, dict], **record) -> None:
    """The folder's manifest, written last (atomically): the run identity, the step, every file with its size and
    checksum (`describe_files`), and anything else the run records (`record`: how the run stopped, ...)."""
    content = {"format": MANIFEST_FORMAT, "run_identity": identity, "global_step": step, "files": files, **record}
    write_json_atomic(os.path.join(folder, MANIFEST_NAME), content)


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


def _expected(entry) -> tuple[int | None, str | None]:
    """(size, checksum) a manifest gives for a file: {"bytes", "xxh3_128"} (format 2) or a size (format 1)."""
    if isinstance(entry, dict):
        return entry.get("bytes"), entry.get(CHECKSUM)
    return entry, None


def _problem(folder: str, name: str, entry, verify: bool) -> str | None:
    path = os.path.join(folder, name)
    size, checksum = _expected(entry)
    if not os.path.isfile(path):
        return f"{name} is missing"
    if size is not None and os.path.getsize(path) != size:
        return f"{name} has {os.path.getsize(path)} bytes, not {size}"
    if checksum is None or not verify:
        problem = _file_problem(path)
        return f"{name} {problem}" if problem else None
    if (found := file_checksum(path)) != checksum:
        return f"{name} is corrupt: its {CHECKSUM} checksum is {found}, the manifest says {checksum}"
    return None


def folder_problems(folder: str, verify: bool = True) -> list[str]:
    """Why `folder` is not a complete, intact checkpoint (or model folder): missing, short or unreadable files, and
    (`verify`) files whose content does not match the checksum in the manifest. [] when complete and intact.
    Without `verify` only sizes and headers are read (what rotating checkpoints needs at every save)."""
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
    names = sorted(expected)
    problems = _in_threads(lambda name: _problem(folder, name, expected[name], verify), names)
    return [problem for problem in problems if problem]
