"""The start banner of a training run, like the one of transformers' example scripts, plus what our recipes add:
the learning rate after scaling, the optimizer and the task's own numbers (e.g. how many patches are masked)."""

import logging
import math

from transformers import TrainerCallback

from .distributed import logical_numel

logger = logging.getLogger("mae_hf")


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, all) parameters of `model`, each counted whole even when an engine holds only a slice of it on
    this process (ZeRO-3 partitions; count before FSDP wraps the model)."""
    trainable = sum(logical_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(logical_numel(p) for p in model.parameters())


def banner_lines(
    args, state, model, optimizer, train_size: int | None, eval_size: int | None, steps_per_epoch: int | None
) -> dict[str, str]:
    """{what: value} of a run about to start; `state` is the Trainer's, with max_steps and num_train_epochs set.
    `model`: the model itself, or its (trainable, all) `parameter_counts`."""
    processes, accumulation = args.world_size, args.gradient_accumulation_steps
    global_batch = args.per_device_train_batch_size * processes * accumulation
    examples = "streamed" if train_size is None else f"{train_size:,} training"
    if eval_size is not None:
        examples += f", {eval_size:,} validation"
    steps = f"{state.max_steps:,}" + (f" ({steps_per_epoch:,} per epoch)" if steps_per_epoch else "")
    lr = f"{args.learning_rate:.4g}"
    if args.base_learning_rate is not None:
        lr += f" = base {args.base_learning_rate:g} x {global_batch:,} / 256"
    lr += f", {getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} after "
    lr += f"{args.get_warmup_steps(state.max_steps):,} warmup steps"
    if args.layer_decay:
        lr += f", layer decay {args.layer_decay:g}"
    trainable, total = model if isinstance(model, tuple) else parameter_counts(model)
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return {
        "Examples": examples,
        "Epochs": f"{state.num_train_epochs:,}",
        "Global batch": f"{global_batch:,} = {args.per_device_train_batch_size:,} per device x {processes} "
        f"process(es) x {accumulation} accumulation step(s)",
        "Optimization steps": steps,
        "Learning rate": lr,
        "Optimizer": f"{type(optimizer).__name__}, weight decay {args.weight_decay:g}",
        "Trainable parameters": f"{trainable:,} of {total:,}",
    }


def format_banner(title: str, lines: dict[str, str]) -> str:
    width = max(len(key) for key in lines)
    return "\n".join([f"***** {title} *****", *(f"  {key:<{width}} = {value}" for key, value in lines.items())])


def _length(data) -> int | None:
    try:
        return len(data)
    except TypeError:  # streamed
        return None


class StartBanner(TrainerCallback):
    """Logs the banner once, on the main process, when training starts. `task_lines`: the script's own
    {what: value} lines (e.g. "Masked patches"). The parameters are counted when the Trainer is made, before an
    engine wraps the model (FSDP1's flat shards would count this process's slice only)."""

    def __init__(self, title: str, train_dataset, eval_dataset, task_lines: dict[str, str] | None = None):
        self.title, self.task_lines = title, task_lines or {}
        self.train_size = _length(train_dataset)
        self.eval_size = None if eval_dataset is None else _length(eval_dataset)
        self.counts = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.counts = parameter_counts(model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if not state.is_world_process_zero:
            return
        batches = _length(train_dataloader)
        steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps) if batches else None
        counts = self.counts or model
        lines = banner_lines(args, state, counts, optimizer, self.train_size, self.eval_size, steps_per_epoch)
        logger.info(format_banner(self.title, {**lines, **self.task_lines}))
