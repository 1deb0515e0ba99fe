"""Checks the training scripts run on their arguments before any data or model work, so that a run that cannot
work fails in seconds with a message naming the flag, not after the datasets and the model are built.

Two kinds: Trainer arguments whose other values break the image pipeline (`check_trainer_arguments`), and the
training-length checks that need no data (`check_training_plan`; those that need the number of training examples
are in `run_utils.apply_recipe_schedule`). Evaluation-only runs (`--do_train false`) skip the training checks.
"""

import math
from fnmatch import fnmatch

# The metrics each script's evaluation reports (without transformers' "eval_" prefix), for --metric_for_best_model.
PRETRAINING_METRICS = ("loss",)
CLASSIFICATION_METRICS = ("loss", "accuracy", "top5_accuracy")
SEGMENTATION_METRICS = ("loss", "mean_iou", "mean_accuracy", "overall_accuracy", "iou_*")

SAMPLERS_BY_LENGTH = ("group_by_length", "batch_rebalance")


def check_trainer_arguments(training_args, label_names: list[str], metrics: tuple[str, ...], smoothing_hint: str = ""):
    """Refuse the Trainer arguments that break these scripts' image pipeline late (a KeyError in the DataLoader,
    a loss or metric computed on the wrong axis, a metric that never exists), naming each flag; the training
    sampler and the best-model metric only when training.

    label_names: what the script's model takes as labels (Trainer computes eval_loss from them); metrics: the
    evaluation's metric names (fnmatch patterns); smoothing_hint: what to use instead of --label_smoothing_factor.
    Raises ValueError listing every problem found.
    """
    problems = []
    if training_args.remove_unused_columns:
        problems.append(
            "--remove_unused_columns True drops the image column before the image transforms see it (a KeyError in "
            "the DataLoader, after the data and the model are built); these scripts need --remove_unused_columns False"
        )
    if list(training_args.label_names or []) != list(label_names):
        problems.append(
            f"--label_names {training_args.label_names}: this script's model takes its labels as {list(label_names)} "
            "(the Trainer computes eval_loss from them); leave --label_names unset"
        )
    if training_args.do_train and training_args.train_sampling_strategy in SAMPLERS_BY_LENGTH:
        problems.append(
            f"--train_sampling_strategy {training_args.train_sampling_strategy} groups examples by token count, which "
            "images do not have (it would run the image transform on every example to measure it); use random or "
            "sequential"
        )
    if training_args.label_smoothing_factor:
        problems.append(
            f"--label_smoothing_factor {training_args.label_smoothing_factor}: transformers' label smoother takes the "
            "last axis of the logits as the classes, which this script's labels and logits do not fit"
            + (f"; {smoothing_hint}" if smoothing_hint else "")
        )
    wanted = training_args.metric_for_best_model  # the best model is chosen among training's evaluations
    reported = ("loss",) if training_args.prediction_loss_only else metrics
    if (
        training_args.do_train
        and wanted is not None
        and not any(fnmatch(wanted.removeprefix("eval_"), p) for p in reported)
    ):
        given = ", ".join("eval_" + m for m in reported)
        problems.append(
            f"--metric_for_best_model {wanted} is not reported by this script's evaluation, which gives {given}"
        )
    if problems:
        raise ValueError("; ".join(problems))


def check_training_plan(training_args, streaming: bool = False) -> None:
    """The training-length checks that need no data: a run shorter than its warmup, a streamed run without
    --max_steps or with settings given in epochs. Nothing is checked for evaluation-only runs. Raises ValueError."""
    if not training_args.do_train:
        return
    max_steps, warmup_epochs = training_args.max_steps, training_args.warmup_epochs
    epoch_warmup = bool(warmup_epochs) and not training_args.warmup_steps
    if streaming and max_steps <= 0:
        raise ValueError("--streaming needs --max_steps (a streamed dataset has no length)")
    if streaming and epoch_warmup:
        raise ValueError("--warmup_epochs needs the dataset size; with --streaming give --warmup_steps")
    if streaming and training_args.save_every_epochs:
        raise ValueError("--save_every_epochs needs the dataset size; with --streaming give --save_steps")
    if epoch_warmup and max_steps <= 0 and warmup_epochs >= training_args.num_train_epochs:
        raise ValueError(
            f"--warmup_epochs {warmup_epochs:g} must be shorter than the training (--num_train_epochs "
            f"{training_args.num_train_epochs:g})"
        )
    warmup_steps = training_args.warmup_steps
    if warmup_steps >= 1 and max_steps > 0 and warmup_steps >= max_steps:
        raise ValueError(f"--warmup_steps {warmup_steps:g} must be fewer than the training's --max_steps {max_steps}")


def steps_per_epoch(training_args, train_size: int) -> int:
    """Optimizer steps per epoch as transformers' Trainer counts them: the batches of each process (accelerate
    shards whole batches; --dataloader_drop_last drops the incomplete one), the last accumulation short."""
    batch = training_args.per_device_train_batch_size * training_args.world_size
    batches = train_size // batch if training_args.dataloader_drop_last else math.ceil(train_size / batch)
    return max(1, math.ceil(batches / training_args.gradient_accumulation_steps))


def check_schedule(training_args, train_size: int | None) -> None:
    """Once the training split's size is known: a split smaller than one batch per process with
    --dataloader_drop_last (no step at all), and --warmup_steps N (N >= 1) against a length given in epochs
    (check_training_plan compares it with --max_steps): a run shorter than its warmup never reaches its learning rate
    (e.g. segmentation's 1500 with --num_train_epochs)."""
    if train_size is None:
        return
    batch, warmup = training_args.per_device_train_batch_size * training_args.world_size, training_args.warmup_steps
    if training_args.dataloader_drop_last and train_size < batch:
        raise ValueError(
            f"the {train_size} training examples are fewer than one batch ({batch} over "
            f"{training_args.world_size} process(es)) and --dataloader_drop_last drops it: no training step per epoch"
        )
    if warmup < 1 or training_args.max_steps > 0 or not train_size:
        return
    per_epoch = steps_per_epoch(training_args, train_size)
    total = math.ceil(training_args.num_train_epochs * per_epoch)
    if warmup >= total:
        raise ValueError(
            f"--warmup_steps {warmup:g} must be fewer than the training's {total} steps (--num_train_epochs "
            f"{training_args.num_train_epochs:g} of {per_epoch} steps)"
        )


def check_batchnorm_batches(training_args, train_size: int | None, batchnorm: str | None) -> None:
    """A BatchNorm that normalises over the batch in training (`batchnorm` names it; None: the model has none) fails
    on a batch of one example ("Expected more than 1 value per channel"), after all the set-up work or at the end
    of the first epoch. Refused: --per_device_train_batch_size 1, and, in one process (accelerate completes the last
    batches of several), a training split that leaves one example in the last batch of an epoch the run reaches."""
    if batchnorm is None or not training_args.do_train:
        return
    batch = training_args.per_device_train_batch_size
    if batch == 1:
        raise ValueError(
            f"--per_device_train_batch_size 1: {batchnorm} normalises over the batch and cannot train on one example"
        )
    if train_size is None or training_args.world_size > 1 or training_args.dataloader_drop_last:
        return
    if train_size % batch == 1 and not 0 < training_args.max_steps < steps_per_epoch(training_args, train_size):
        raise ValueError(
            f"the {train_size} training examples leave a last batch of 1 example in each epoch (--per_device_train_"
            f"batch_size {batch}), on which {batchnorm} cannot train: pass --dataloader_drop_last true, or another "
            "batch size"
        )
