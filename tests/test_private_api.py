"""The private methods of transformers (and torch, DeepSpeed) that mae_hf still overrides or calls, pinned: the
signatures our overrides and calls rely on, and the behaviour that the Trainer's own use of `_get_train_sampler`
gives us. ARCHITECTURE.md ("Private API") lists each with why no public hook serves and the end-to-end tests that
pin what it does; a transformers upgrade that changes one fails here first, naming it."""

import inspect

import pytest
import torch
from conftest import tiny_config
from test_trainer import trainer_for
from torch.utils.data import Dataset
from transformers import PreTrainedModel, Trainer

from mae_hf import MAEForPreTraining
from mae_hf.data.seeding import seeded_rng

# name -> the parameters (after self) that our override receives or our call passes
TRAINER = {
    "_get_train_sampler": ["train_dataset"],
    "_get_output_dir": ["trial"],
    "_save_checkpoint": ["model", "trial"],
    "_evaluate": ["trial", "ignore_keys_for_eval", "skip_scheduler"],
    "_determine_best_metric": ["metrics", "trial"],
    "_save": ["output_dir", "state_dict"],
}


@pytest.mark.parametrize("name", TRAINER)
def test_trainer_private_methods_keep_the_signatures_we_override(name):
    parameters = list(inspect.signature(getattr(Trainer, name)).parameters)
    assert parameters == ["self", *TRAINER[name]], f"Trainer.{name}{parameters}: see ARCHITECTURE.md, Private API"


def test_load_pretrained_model_is_still_the_static_step_from_pretrained_loads_through():
    method = inspect.getattr_static(PreTrainedModel, "_load_pretrained_model")
    assert isinstance(method, staticmethod)
    parameters = list(inspect.signature(PreTrainedModel._load_pretrained_model).parameters)
    assert parameters == ["model", "state_dict", "checkpoint_files", "load_config", "expected_keys"]


def test_lr_scheduler_keeps_the_last_rates_in_last_lr():
    """`settings.apply_resumed_settings` writes the resumed run's rates there (torch has no setter)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    scheduler._last_lr = [0.25]
    assert scheduler.get_last_lr() == [0.25]


class Indexed(Dataset):
    """Image `i` is filled with the value i: a batch tells which examples it holds."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return {"pixel_values": torch.full((3, 32, 32), float(index))}


def test_the_trainer_draws_its_training_examples_through_our_sampler(tmp_path):
    """`MAETrainer._get_train_sampler` turns the Trainer's sampler into (epoch, index) keys: each example's draws
    (here the mask noise) come from (data seed, epoch, index), whichever batch and position it lands in."""
    trainer = trainer_for(tmp_path, MAEForPreTraining(tiny_config()), Indexed(), seed=3)
    trainer.sample_draws = {"noise": lambda: torch.rand(16)}
    seen = []
    for batch in trainer.get_train_dataloader():
        for pixels, noise in zip(batch["pixel_values"], batch["noise"]):
            index = int(pixels[0, 0, 0])
            with seeded_rng(3, 0, index):
                assert torch.equal(noise, torch.rand(16)), index
            seen.append(index)
    assert sorted(seen) == list(range(12)) and seen != list(range(12))  # every example once, shuffled


@pytest.mark.parametrize("strategy", ["group_by_length", "batch_rebalance"])
def test_samplers_by_token_count_are_refused_naming_the_strategy(tmp_path, strategy):
    """They failed with a TypeError (the Trainer measured each example by reading it with an int key)."""
    model = MAEForPreTraining(tiny_config())
    trainer = trainer_for(tmp_path, model, Indexed(), train_sampling_strategy=strategy)
    with pytest.raises(ValueError, match=f"--train_sampling_strategy {strategy} groups examples by token count"):
        trainer.get_train_dataloader()
