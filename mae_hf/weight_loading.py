"""Fitting a checkpoint to the model that `from_pretrained` builds: shape checks that name both shapes, and
position tables resampled when the checkpoint was made for another patch grid.

"Resample or not" is decided from the patch GRIDS (the checkpoint's, from the config.json saved beside it, and the
model's), never from the token count: a (32, 48) checkpoint loaded at (48, 32) has as many tokens, but every token
would get the position code of another cell. Only relative imports: saved models copy this file for remote code.
"""

import json
import os

import torch
from transformers.utils import logging

from .configuration_mae import to_pair
from .pos_embed import resample_pos_embed

logger = logging.get_logger(__name__)


def adapt_checkpoint(model, state_dict, checkpoint_files, shapes=None):
    """Check that the checkpoint fits `model` and resample the position tables made for another patch grid.

    state_dict / checkpoint_files: as `PreTrainedModel._load_pretrained_model` receives them; `shapes`: the
    checkpoint's {key: shape} when already read (`checkpoint_shapes`). Returns the checkpoint as a full state dict
    with (1, 1 + h * w, D) tables resampled bicubically to the model's grid, or None when every table already fits.
    A tensor of another shape (other than a position table, or a layer sized by the number of classes,
    `model._label_layers`, which transformers' `ignore_mismatched_sizes` governs) raises a ValueError naming both
    shapes, before any weight is loaded.
    """
    shapes = checkpoint_shapes(state_dict, checkpoint_files) if shapes is None else shapes
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved_grid, new_grid = checkpoint_grid(checkpoint_files), model.config.grid_size
    todo, misfits = {}, []
    for key, shape in shapes.items():
        target = _matching_key(key, expected, model.base_model_prefix)
        if target is None:
            continue
        if key.endswith("pos_embed") and len(shape) == 3 and shape[-1] == expected[target][-1]:
            grid = table_grid(key, shape[1] - 1, saved_grid, new_grid)
            if grid != new_grid:
                todo[key] = grid
                continue
        if tuple(shape) != expected[target] and not target.startswith(model._label_layers):
            misfits.append(f"{key} is {tuple(shape)} in the checkpoint but {expected[target]} in the model")
    if misfits:
        raise ValueError(
            f"the checkpoint does not fit {type(model).__name__} ({model.config.hidden_size} wide, patch "
            f"{model.config.patch_size}): " + "; ".join(misfits[:4]) + (f" (+{len(misfits) - 4} more)" if len(misfits) > 4 else "")
        )
    if not todo:
        return None
    full = dict(state_dict) if state_dict is not None else _load_checkpoint_files(checkpoint_files)
    for key, grid in todo.items():
        full[key] = resample_pos_embed(full[key], grid, new_grid)
        logger.warning(
            f"Resampled {key} from a {grid[0]}x{grid[1]} to a {new_grid[0]}x{new_grid[1]} patch grid (bicubic): the "
            f"checkpoint was made for another image size than {model.config.image_size}."
        )
    return full


def table_grid(key: str, patches: int, saved_grid, new_grid) -> tuple[int, int]:
    """The (rows, columns) grid a table of `patches` patch rows was made for: the saved config's grid when it has
    that many cells; with no such record, the model's grid when the count matches (nothing tells them apart), else
    a square grid."""
    if saved_grid and saved_grid[0] * saved_grid[1] == patches:
        return tuple(saved_grid)
    if new_grid[0] * new_grid[1] == patches:
        return tuple(new_grid)
    side = round(patches**0.5)
    if side * side != patches:
        raise ValueError(f"cannot tell the patch grid of {key} with {patches} patch rows; save a config.json")
    return side, side


def checkpoint_shapes(state_dict, checkpoint_files) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the checkpoint; safetensors files are read from their header only."""
    if state_dict is not None:
        return {k: tuple(v.shape) for k, v in state_dict.items()}
    shapes = {}
    for file in checkpoint_files or []:
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="pt") as f:  # reads the header only
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True)
            shapes.update({k: tuple(v.shape) for k, v in sd.items()})
    return shapes


def checkpoint_grid(checkpoint_files) -> tuple[int, int] | None:
    """The patch grid (rows, columns) the checkpoint was made for, read from the config.json saved beside it."""
    if not checkpoint_files:
        return None
    path = os.path.join(os.path.dirname(checkpoint_files[0]), "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if "image_size" not in saved or "patch_size" not in saved:
        return None
    height, width = to_pair(saved["image_size"])
    return height // saved["patch_size"], width // saved["patch_size"]


def _matching_key(key, expected, prefix):
    for candidate in (key, key.removeprefix(prefix + "."), f"{prefix}.{key}"):
        if candidate in expected:
            return candidate
    return None


def _load_checkpoint_files(checkpoint_files):
    from safetensors.torch import load_file

    full = {}
    for file in checkpoint_files:
        full.update(load_file(file) if file.endswith(".safetensors") else torch.load(file, map_location="cpu", weights_only=True))
    return full
