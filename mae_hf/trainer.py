"""`transformers.Trainer` for MAE: the recipe's weight-decay split, evaluation masks drawn from a fixed seed,
a stop on a non-finite loss, and reconstruction figures at each evaluation."""

import os

import torch
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from .optim import decay_parameter_names
from .visualize import fixed_noise, reconstruction_grid

logger = logging.get_logger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


class MAETrainer(Trainer):
    def get_decay_parameter_names(self, model) -> list[str]:
        return decay_parameter_names(model)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Raised before the optimizer step: the weights and the last checkpoint on disk stay as they were.
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.state.global_step + 1}; training stopped. "
                f"The last checkpoint in {self.args.output_dir} is intact (resume with --resume_from_checkpoint "
                "latest, e.g. with a lower learning rate or without fp16)."
            )
        return loss

    def evaluate(self, *args, **kwargs):
        # Evaluation masks come from a fixed seed (the batch order is fixed too), so eval_loss is comparable from
        # one evaluation to the next; the training RNG state is restored afterwards.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.args.eval_mask_seed)
            return super().evaluate(*args, **kwargs)


class ReconstructionCallback(TrainerCallback):
    """Saves `reconstructions/step_N.png` at each evaluation and `reconstruction.png` at the end (same images,
    same masks every time), and logs them to wandb when it is active."""

    def __init__(self, pixel_values: torch.Tensor, mean, std, output_dir: str):
        self.pixel_values, self.mean, self.std, self.output_dir = pixel_values, mean, std, output_dir

    def _figure(self, model, name: str, step: int) -> None:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        noise = fixed_noise(len(self.pixel_values), model.config.num_patches).to(device)
        grid = reconstruction_grid(model, self.pixel_values.to(device), self.mean, self.std, noise)
        model.train(was_training)
        os.makedirs(os.path.dirname(os.path.join(self.output_dir, name)) or self.output_dir, exist_ok=True)
        grid.save(os.path.join(self.output_dir, name))
        try:
            import wandb

            if wandb.run is not None:  # the step metric of transformers' WandbCallback, not wandb's own counter
                wandb.log({"eval/reconstruction": wandb.Image(grid), "train/global_step": step})
        except ImportError:
            pass

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            self._figure(model, os.path.join("reconstructions", f"step_{state.global_step}.png"), state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            self._figure(model, "reconstruction.png", state.global_step)
