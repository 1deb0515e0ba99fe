"""A run's identity: the arguments that define what a run trains, JSON-ready, recorded in every manifest of its
output directory. Of them, the `defining` ones make a checkpoint another run's: `--resume_from_checkpoint latest`
skips it, and a checkpoint given by its path is refused, naming them. The others (learning rate, schedule, weight
decay, augmentations, ...) may change when a run is resumed: they are applied from the resumed step on and recorded,
as the official MAE computes its learning-rate schedule from the arguments at every step. Which arguments are part of
the identity, and which of them define the run, each argument's field says (`arguments.run_settings`).

Local files and folders (an ImageFolder, a parquet folder, a model folder) enter by their content, not their place:
data staged on node-local disk (`$SLURM_TMPDIR`) is the same run as the same data on a shared file system."""

import json
import os

import xxhash


class RunIdentity(dict):
    """{setting: JSON-ready value}, the mapping written into manifests, and `defining`: the settings whose change makes
    a checkpoint another run's (also any setting that only one of two runs has: they come from different scripts)."""

    def __init__(self, settings: dict, defining):
        super().__init__(settings)
        self.defining = frozenset(defining)


def path_content(path: str) -> dict:
    """A local file or folder described by its content, not its place: the number of files, their bytes, and the
    xxh3_128 of their sorted relative names and sizes. (Names and sizes, not every byte: reading a data set to start
    a run would cost minutes; a file listing costs what `datasets` already spends finding the files.)"""
    if os.path.isfile(path):
        entries = [(os.path.basename(path), os.path.getsize(path))]
    else:
        entries = []
        for root, _dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                entries.append((os.path.relpath(full, path), os.path.getsize(full)))
        entries.sort()
    listing = "\n".join(f"{name}\t{size}" for name, size in entries)
    return {
        "files": len(entries),
        "bytes": sum(size for _name, size in entries),
        "names_and_sizes_xxh3_128": xxhash.xxh3_128_hexdigest(listing.encode()),
    }


def _jsonable(value):
    if isinstance(value, str) and os.path.exists(value):
        return {"local content": path_content(value)}  # the same data wherever they are
    return json.loads(json.dumps(value, default=str))


def run_identity(settings: dict, defining, training_args, train_size: int | None) -> RunIdentity:
    """The identity of a run from its `settings` and the names of the `defining` ones (`arguments.run_settings`), its
    global batch size and number of training examples (both defining). Local files and folders enter by content."""
    identity = {name: _jsonable(value) for name, value in settings.items()}
    identity["global_train_batch_size"] = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    identity["train_examples"] = train_size
    return RunIdentity(identity, {*defining, "global_train_batch_size", "train_examples"})


def _defining(name: str, theirs: dict, ours: RunIdentity) -> bool:
    return name in ours.defining or (name in theirs) != (name in ours)


def changed_settings(theirs: dict, ours: dict) -> dict[str, tuple]:
    """{name: (value there, value here)} of every defining setting that differs."""
    return {
        name: (theirs.get(name), ours.get(name))
        for name in sorted(theirs.keys() | ours.keys())
        if theirs.get(name) != ours.get(name)
    }


def describe(changes: dict[str, tuple]) -> list[str]:
    return [f"{name}: {there!r} there, {here!r} here" for name, (there, here) in changes.items()]


def identity_differences(theirs: dict | None, ours: RunIdentity) -> list[str]:
    """'name: X there, Y here' for each defining setting that differs ([] for the same run, whose other settings
    may differ: see `applied_changes`)."""
    if theirs is None:
        return ["it records no run identity (written by plain transformers or an older mae_hf)"]
    changes = changed_settings(theirs, ours)
    return describe({name: change for name, change in changes.items() if _defining(name, theirs, ours)})


def applied_changes(theirs: dict | None, ours: RunIdentity) -> dict[str, tuple]:
    """{name: (value there, value here)} of the settings that differ and that a resume applies (not defining)."""
    changes = changed_settings(theirs or {}, ours)
    return {name: change for name, change in changes.items() if not _defining(name, theirs or {}, ours)}
