"""Figures drawn at each evaluation and at the end of training, saved into the output folder and logged to wandb:
the pretraining reconstructions (`ReconstructionCallback`) and the segmentation overlays
(`SegmentationFigureCallback`); the training curves (`curves.TrainingCurvesCallback`) share their base class. Under
parameter sharding (FSDP, ZeRO-3) those that run the model draw on every process (see `distributed`)."""

import os

import torch
from transformers import TrainerCallback

from .distributed import parameters_sharded
from .modeling_segmentation import segment_to_original_size
from .visualize import fixed_noise, reconstruction_grid, segmentation_figure, to_uint8


class FigureCallback(TrainerCallback):
    """Draws a figure of the model at each evaluation (`{folder}/step_N.png`) and at the end (`{final}`), saves it on
    the main process and logs it to wandb when a run is active. Subclasses implement `draw(model, step)`; those
    whose figure runs the model (`runs_model`) draw on every process when its parameters are sharded (FSDP, ZeRO-3),
    as each forward pass gathers parameters from all of them, and call only the model's own forward (which the
    engine wraps), never a part of it."""

    folder, final, wandb_key = "figures", "figure.png", "eval/figure"
    runs_model = True

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def draw(self, model, step: int):
        raise NotImplementedError

    def _draws_here(self, state, model) -> bool:
        if model is None:
            return False
        return state.is_world_process_zero or (self.runs_model and parameters_sharded(model))

    def _draw_and_save(self, model, name: str, step: int, main: bool = True) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            grid = self.draw(model, step)
        model.train(was_training)
        if not main:
            return
        path = os.path.join(self.output_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        grid.save(path)
        try:
            import wandb

            if wandb.run is not None:  # the step metric of transformers' WandbCallback, not wandb's own counter
                wandb.log({self.wandb_key: wandb.Image(grid), "train/global_step": step})
        except ImportError:
            pass

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self._draws_here(state, model):
            name = os.path.join(self.folder, f"step_{state.global_step}.png")
            self._draw_and_save(model, name, state.global_step, state.is_world_process_zero)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._draws_here(state, model):
            self._draw_and_save(model, self.final, state.global_step, state.is_world_process_zero)


class ReconstructionCallback(FigureCallback):
    """Reconstructions of the same images with the same masks every time (`reconstructions/step_N.png`,
    `reconstruction.png`)."""

    folder, final, wandb_key = "reconstructions", "reconstruction.png", "eval/reconstruction"

    def __init__(self, pixel_values: torch.Tensor, mean, std, output_dir: str):
        super().__init__(output_dir)
        self.pixel_values, self.mean, self.std = pixel_values, mean, std

    def draw(self, model, step: int):
        device = next(model.parameters()).device
        noise = fixed_noise(len(self.pixel_values), model.config.num_patches).to(device)
        return reconstruction_grid(model, self.pixel_values.to(device), self.mean, self.std, noise, step)


class SegmentationFigureCallback(FigureCallback):
    """Image, ground truth and prediction of the same validation images with a class legend
    (`segmentations/step_N.png`, `segmentation.png`), at each image's original annotation size."""

    folder, final, wandb_key = "segmentations", "segmentation.png", "eval/segmentation"

    def __init__(self, examples: list[dict], mean, std, output_dir: str):
        super().__init__(output_dir)
        self.examples, self.mean, self.std = examples, mean, std

    def draw(self, model, step: int):
        device = next(model.parameters()).device
        images, labels, predictions = [], [], []
        for example in self.examples:
            truth = torch.as_tensor(example["labels"])
            pixels = example["pixel_values"][None].to(device)
            logits = segment_to_original_size(model, pixels, original_sizes=torch.tensor([list(truth.shape)]))[0]
            shown = torch.nn.functional.interpolate(
                pixels.float(), size=tuple(truth.shape), mode="bilinear", align_corners=False
            )
            images.append(to_uint8(shown, self.mean, self.std)[0])
            labels.append(truth.numpy())
            predictions.append(logits.argmax(dim=0).cpu().numpy())
        return segmentation_figure(
            images, labels, predictions, model.config.id2label, model.config.ignore_index, title=f"step {step}"
        )
