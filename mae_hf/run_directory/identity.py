"""A run's identity: the arguments that define what a run trains, JSON-ready, recorded in every manifest of its
output directory, so that `--resume_from_checkpoint latest` resumes only checkpoints of the same run."""

import dataclasses
import json
import os

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


def _jsonable(value):
    if isinstance(value, str) and os.path.exists(value):
        value = os.path.abspath(value)  # the same folder however it was written
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


def identity_differences(theirs: dict | None, ours: dict) -> list[str]:
    """'name: X there, Y here' for each argument that differs ([] for the same run)."""
    if theirs is None:
        return ["it records no run identity (written by plain transformers or an older mae_hf)"]
    return [
        f"{name}: {theirs.get(name)!r} there, {ours.get(name)!r} here"
        for name in sorted(theirs.keys() | ours.keys())
        if theirs.get(name) != ours.get(name)
    ]
