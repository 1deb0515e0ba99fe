"""`transformers.Trainer` for MAE: the recipe's weight-decay split, evaluation masks drawn from a fixed seed,
a stop on a non-finite loss, and reconstruction figures at each evaluation."""

import os

import torch
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from .optim import decay_parameter_names, param_groups
from .visualize import fixed_noise, reconstruction_grid

logger = logging.get_logger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


class MAETrainer(Trainer):
    """`eval_data_collator`: a collator for evaluation only (training may mix images, evaluation must not)."""

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def get_decay_parameter_names(self, model) -> list[str]:
        return decay_parameter_names(model)

    def create_optimizer(self, model=None):
        """The recipe's groups (no decay on biases, norms, tokens; layer-wise lr decay when
        `args.layer_decay` is set), with the optimizer the arguments name, or LARS with `args.use_lars`."""
        if self.optimizer is None:
            layer_decay = getattr(self.args, "layer_decay", None)
            groups = param_groups(self.model, self.args.learning_rate, self.args.weight_decay, layer_decay)
            if getattr(self.args, "use_lars", False):
                from .lars import LARS

                self.optimizer = LARS(groups, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
            else:
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

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
