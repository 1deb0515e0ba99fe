"""What to resume, and whether it fits: a run's identity (the arguments that define it), the newest complete
checkpoint of this run (`--resume_from_checkpoint latest`, with the reasons any other was skipped), a check that a
checkpoint holds a model of this run's size, and what `--overwrite_output_dir` does with a previous run's
checkpoints (moved aside, never mixed with the new run's)."""

import dataclasses
import json
import logging
import os
import time

from transformers import TrainingArguments

from .checkpoint import read_shapes, weight_files
from .checkpointing import (
    MANIFEST_NAME,
    checkpoint_folders,
    folder_problems,
    is_leftover,
    read_manifest,
)

logger = logging.getLogger("mae_hf")

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


def resume_request(training_args) -> str | None:
    """--resume_from_checkpoint as None (no resume), "latest" (also "true") or the path given."""
    wanted = training_args.resume_from_checkpoint
    if wanted in (None, "", "false", "False"):
        return None
    return "latest" if wanted in ("latest", "true", "True") else wanted


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


def checkpoint_step(path: str | None) -> int:
    """The global step a checkpoint was saved at (0 for none)."""
    if path is None:
        return 0
    try:
        with open(os.path.join(path, "trainer_state.json")) as file:
            return int(json.load(file)["global_step"])
    except (OSError, ValueError, KeyError):
        return 0


def newest_complete_checkpoint(output_dir: str, identity: dict | None = None) -> tuple[str | None, list[str]]:
    """(the newest complete checkpoint-N of `output_dir` whose run identity is `identity` (any when None), the
    reasons each newer one was skipped)."""
    skipped = []
    for _step, path in checkpoint_folders(output_dir):
        if problems := folder_problems(path):
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            skipped.append(f"{os.path.basename(path)} is incomplete: {'; '.join(problems[:3])}{more}")
        elif identity is not None and (
            diff := identity_differences((read_manifest(path) or {}).get("run_identity"), identity)
        ):
            more = f"; and {len(diff) - 4} more" if len(diff) > 4 else ""
            skipped.append(f"{os.path.basename(path)} belongs to another run ({'; '.join(diff[:4])}{more})")
        else:
            return path, skipped
    return None, skipped


def check_resume_argument(training_args) -> None:
    """Before any data work: `latest` needs a complete checkpoint in the output dir, a path must be a complete
    checkpoint. (Which one `latest` takes is decided once the run identity is known: `choose_checkpoint`.)"""
    wanted = resume_request(training_args)
    if wanted is None:
        return
    if wanted == "latest":
        found, skipped = newest_complete_checkpoint(training_args.output_dir)
        if found is None and not skipped:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint-* folder in {training_args.output_dir}")
        if found is None:
            raise ValueError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {training_args.output_dir}: "
                + "; ".join(skipped)
            )
        return
    if not os.path.isdir(wanted):
        raise ValueError(f"--resume_from_checkpoint {wanted} does not exist")
    if problems := folder_problems(wanted):
        raise ValueError(
            f"--resume_from_checkpoint {wanted} is not a complete checkpoint: {'; '.join(problems)}. "
            "--resume_from_checkpoint latest takes the newest complete one"
        )


def choose_checkpoint(training_args, identity: dict) -> str | None:
    """The checkpoint to resume, logged with why: `latest` = the newest complete checkpoint of this run (newer ones
    that are incomplete or belong to another run are named with the reason); a path is taken as given (a warning
    lists the arguments in which its run differs)."""
    wanted = resume_request(training_args)
    if wanted is None:
        return None
    if wanted == "latest":
        found, skipped = newest_complete_checkpoint(training_args.output_dir, identity)
        for reason in skipped:
            logger.warning(f"--resume_from_checkpoint latest: skipping {reason}")
        if found is None:
            raise ValueError(
                f"--resume_from_checkpoint latest: no complete checkpoint of this run in "
                f"{training_args.output_dir} ({'; '.join(skipped)}). Give a checkpoint's path to resume "
                "it anyway, or start this run in another --output_dir"
            )
        why = "the newest complete checkpoint of this run" + (" (newer ones skipped, see above)" if skipped else "")
    else:
        found, why = wanted, "as given"
        if diff := identity_differences((read_manifest(found) or {}).get("run_identity"), identity):
            logger.warning(f"resuming {found} although its run differs from this one: {'; '.join(diff)}")
    logger.info(f"resuming from {found} (step {checkpoint_step(found)}; {why})")
    return found


# ---------------------------------------------------------------------------------------------------- model fit


def _weight_shapes(folder: str) -> dict[str, tuple] | None:
    """{tensor name: shape} from the safetensors headers of a saved model (no tensor read); None without them."""
    files = weight_files(folder)
    if not files or not files[0].endswith(".safetensors"):
        return None
    return read_shapes([os.path.join(folder, name) for name in files])


def _describe(saved, current) -> str:
    """'field X there, Y here' for the size fields in which two configs differ."""
    return "; ".join(
        f"{name} {getattr(saved, name, None)!r} there, {getattr(current, name, None)!r} here"
        for name in SIZE_FIELDS
        if getattr(saved, name, None) != getattr(current, name, None)
    )


def _architecture(folder: str) -> str | None:
    """The model class a saved config names (`architectures`, written by save_pretrained), or None."""
    try:
        with open(os.path.join(folder, "config.json")) as file:
            return (json.load(file).get("architectures") or [None])[0]
    except (OSError, ValueError, AttributeError):
        return None


def check_checkpoint_fits(checkpoint: str | None, model) -> None:
    """Before training: the checkpoint holds a model of this run's class (a pretraining checkpoint given to the
    fine-tuning script fails with the flag to use instead, not with the optimizer's group count) and of its shapes.
    A ValueError names the checkpoint's and this run's sizes (the config fields that differ) and the first tensor
    that does not fit."""
    if checkpoint is None:
        return
    if (saved_class := _architecture(checkpoint)) not in (None, type(model).__name__):
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} holds a {saved_class}, this run trains a {type(model).__name__}: "
            "a checkpoint resumes the run that wrote it. To start from its weights, pass it as --model_name_or_path"
        )
    if (saved := _weight_shapes(checkpoint)) is None:
        return
    # ZeRO-3 builds the model partitioned (empty tensors); `ds_shape` holds each parameter's own shape.
    current = {name: tuple(getattr(t, "ds_shape", t.shape)) for name, t in model.state_dict(keep_vars=True).items()}
    wrong = [name for name in sorted(saved.keys() & current.keys()) if saved[name] != current[name]]
    if not wrong:
        return
    sizes = _describe(type(model.config).from_pretrained(checkpoint), model.config)
    raise ValueError(
        f"--resume_from_checkpoint {checkpoint} holds a model of another size than this run's: {sizes or 'see below'} "
        f"({len(wrong)} tensor(s) differ, e.g. {wrong[0]} {saved[wrong[0]]} there, {current[wrong[0]]} here). Resume "
        "with the model arguments of the run that wrote it, or start this run in another --output_dir"
    )


# ---------------------------------------------------------------------------------------------------- output dir


# A run's results and per-evaluation figures (the FigureCallback folders), which a new run would merge into
# (all_results.json) or add to.
PREVIOUS_RESULTS = ("all_results.json", "train_results.json", "eval_results.json", "reconstructions", "segmentations")


def move_aside_previous_checkpoints(training_args) -> str | None:
    """--overwrite_output_dir without a resume: a previous run's checkpoint-N folders, results and per-evaluation
    figures (and leftovers of killed saves) go to `overwritten-<time>/` in the output dir, so that the new run never
    resumes, rotates or mixes them. Done by the process that writes the output dir; the others wait. Returns the
    folder they went to."""
    out = training_args.output_dir
    moved_to = None
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="moving old checkpoints"):
        if not training_args.should_save or not os.path.isdir(out):
            return None
        old = [path for _step, path in checkpoint_folders(out)]  # and the previous run's "finished" manifest
        old += [
            os.path.join(out, n)
            for n in os.listdir(out)
            if is_leftover(n) or n == MANIFEST_NAME or n in PREVIOUS_RESULTS
        ]
        if old:
            moved_to = os.path.join(out, time.strftime("overwritten-%Y%m%d-%H%M%S"))
            os.makedirs(moved_to)
            for path in old:
                os.rename(path, os.path.join(moved_to, os.path.basename(path)))
            logger.warning(
                f"--overwrite_output_dir: moved the checkpoints and results of a previous run ({len(old)} "
                f"entries) to {moved_to}; delete it if you do not need them"
            )
    return moved_to


def finished_run(output_dir: str, identity: dict, step: int) -> bool:
    """The output dir holds this run's final model and results, complete (its manifest written last), of `step` or
    later: a run can end after its newest checkpoint (--save_total_limit 1 with --load_best_model_at_end keeps only
    the best one; early stopping)."""
    manifest = read_manifest(output_dir)
    return (
        manifest is not None
        and manifest.get("run_identity") == identity
        and manifest.get("global_step", -1) >= step
        and not folder_problems(output_dir)
    )
