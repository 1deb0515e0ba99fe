"""A run's identity: the arguments that define what a run trains, JSON-ready, recorded in every manifest of its
output directory. Of them, `RUN_DEFINING` make a checkpoint another run's: `--resume_from_checkpoint latest` skips
it, and a checkpoint given by its path is refused, naming them. The others (learning rate, schedule, weight decay,
augmentations, ...) may change when a run is resumed: they are applied from the resumed step on and recorded, as the
official MAE computes its learning-rate schedule from the arguments at every step.

Local files and folders (an ImageFolder, a parquet folder, a model folder) enter by their content, not their place:
data staged on node-local disk (`$SLURM_TMPDIR`) is the same run as the same data on a shared file system."""

import dataclasses
import json
import os

import xxhash
from transformers import TrainingArguments

# Arguments that change how a run is executed, evaluated or reported, not what it trains: a resume may change them.
NOT_DEFINING = {
    "num_visualized_images",
    "attn_implementation",
    "cache_dir",
    "verify_images",
    "image_decoding",
    "validation_dir",
    "max_eval_samples",
    "eval_mask_seed",
    "gpu_fast_paths",
    "sdpa_backend",
    "finite_loss_check",
    "crop_pct",
    "save_every_epochs",
    "overwrite_output_dir",
    "sync_batchnorm",
    "inference_mode",
    "test_crop_size",
    "test_stride",
}
# The TrainingArguments fields that define what is trained (the batch enters as the global batch size).
DEFINING_TRAINING = (
    "seed",
    "data_seed",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "optim",
    "optim_args",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "max_grad_norm",
    "label_smoothing_factor",
    "train_sampling_strategy",
    "dataloader_drop_last",
)


# MAEConfig / MAESegmentationConfig fields that decide tensor shapes: named when a checkpoint does not fit.
SIZE_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_intermediate_size",
    "num_labels",
    "head_batchnorm",
    "out_indices",
    "neck_rescales",
    "decode_channels",
    "auxiliary_channels",
    "use_auxiliary_head",
)


# The settings that define which run a checkpoint belongs to: its data (and their order), its model, its optimizer.
# A resume that changes one of them would continue another run's state (the data position is a step count, the
# optimizer's moments belong to its type): refused, by name.
RUN_DEFINING = frozenset(
    {
        # data and their order
        "dataset_name",
        "dataset_config_name",
        "train_dir",
        "image_column_name",
        "label_column_name",
        "annotation_column_name",
        "train_val_split",
        "max_train_samples",
        "train_examples",
        "streaming",
        "skip_corrupt_images",
        "label_fraction",
        "label_fraction_seed",
        "reduce_labels",
        "seed",
        "data_seed",
        "global_train_batch_size",
        "dataloader_drop_last",
        "train_sampling_strategy",
        # model (and SIZE_FIELDS)
        "model_name_or_path",
        "num_attention_heads",
        "decoder_num_attention_heads",
        "pooling",
        "linear_probe",
        # optimizer type
        "optim",
        "optim_args",
        "use_lars",
        *SIZE_FIELDS,
    }
)


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


def run_identity(model_args, data_args, training_args, train_size: int | None) -> dict:
    """The arguments that define a run, JSON-ready: every model and data argument and the script's own recipe
    arguments (except NOT_DEFINING), the defining TrainingArguments, the global batch and the number of training
    examples. Worker counts, logging, evaluation and checkpoint settings are left out, and so are the arguments the
    script does not use (its IGNORED ones)."""
    recipe = {f.name for f in dataclasses.fields(training_args)} - {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    recipe -= set(getattr(training_args, "IGNORED", {}))
    identity = {}
    for args, names in ((model_args, None), (data_args, None), (training_args, (*DEFINING_TRAINING, *sorted(recipe)))):
        for name in names or [f.name for f in dataclasses.fields(args)]:
            if name not in NOT_DEFINING:
                identity[name] = _jsonable(getattr(args, name, None))
    identity["global_train_batch_size"] = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    identity["train_examples"] = train_size
    return identity


def changed_settings(theirs: dict, ours: dict) -> dict[str, tuple]:
    """{name: (value there, value here)} of every defining setting that differs."""
    return {
        name: (theirs.get(name), ours.get(name))
        for name in sorted(theirs.keys() | ours.keys())
        if theirs.get(name) != ours.get(name)
    }


def describe(changes: dict[str, tuple]) -> list[str]:
    return [f"{name}: {there!r} there, {here!r} here" for name, (there, here) in changes.items()]


def identity_differences(theirs: dict | None, ours: dict) -> list[str]:
    """'name: X there, Y here' for each RUN_DEFINING setting that differs ([] for the same run, whose other
    settings may differ: see `applied_changes`)."""
    if theirs is None:
        return ["it records no run identity (written by plain transformers or an older mae_hf)"]
    changes = changed_settings(theirs, ours)
    return describe({name: change for name, change in changes.items() if name in RUN_DEFINING})


def applied_changes(theirs: dict | None, ours: dict) -> dict[str, tuple]:
    """{name: (value there, value here)} of the settings that differ and that a resume applies (not RUN_DEFINING)."""
    changes = changed_settings(theirs or {}, ours)
    return {name: change for name, change in changes.items() if name not in RUN_DEFINING}
