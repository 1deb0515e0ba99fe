"""Settings changed when a run is resumed, applied to the optimizer and scheduler states that Trainer loads from the
checkpoint (which hold the old run's learning rate, weight decay and betas).

The official MAE computes the learning rate at every step from the arguments (`util/lr_sched.py`:
`adjust_learning_rate(optimizer, epoch, args)`), so a resume with a lower `--lr`, more `--epochs` or another
`--warmup_epochs` continues with them. transformers restores the scheduler's `base_lrs` and the optimizer's param
groups instead, so the new learning rate (and weight decay, betas, eps) would be ignored while the manifests
recorded it. Here the loaded states take this run's values: each group's hyperparameters those of the optimizer this
run built (with its layer-decay scales), and the scheduler this run's base learning rates, at the resumed step of
this run's schedule (its lambdas come from this run's arguments already).
"""

import torch


def apply_resumed_settings(optimizer, scheduler, fresh_groups: list[dict], changes: dict) -> None:
    """`optimizer`, `scheduler`: as Trainer loaded them from the checkpoint. `fresh_groups`: the hyperparameters of
    each param group as this run built them (every key but "params"). `changes`: {setting: (old, new)}, named in the
    ValueError raised when they cannot be applied (another number of groups; a schedule that is not a LambdaLR,
    e.g. reduce_lr_on_plateau, whose state has no base learning rates)."""
    names = ", ".join(changes)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise ValueError(
            f"{names} changed on resume, which a {type(scheduler).__name__} learning-rate schedule cannot take "
            "(it keeps no base learning rate to replace): resume with the settings of the checkpoint's run"
        )
    groups = optimizer.param_groups
    if fresh_groups is None or len(fresh_groups) != len(groups):
        raise ValueError(
            f"{names} changed on resume and the checkpoint's optimizer has {len(groups)} parameter groups, this "
            f"run's {len(fresh_groups or [])}: resume with the settings of the checkpoint's run"
        )
    for group, fresh in zip(groups, fresh_groups):
        group.update(fresh)
        group["initial_lr"] = fresh["lr"]
    scheduler.base_lrs = [fresh["lr"] for fresh in fresh_groups]
    step = scheduler.last_epoch
    rates = [base * schedule(step) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(groups, rates):
        group["lr"] = rate
    # What get_last_lr() returns, and Trainer logs as the step's learning rate, until the scheduler's next step
    # (torch keeps it in this attribute; there is no setter).
    scheduler._last_lr = list(rates)
