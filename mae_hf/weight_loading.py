"""Fitting a checkpoint to the model that `from_pretrained` builds: shape checks that name both shapes, position
tables resampled when the checkpoint was made for another patch grid, and a bare encoder built without the final
norm its checkpoint lacks. Reading the files, their shapes and recorded grid is `checkpoint.py`'s.

"Resample or not" is decided from the patch GRIDS (the checkpoint's, from the config.json saved beside it, and the
model's), never from the token count: a (32, 48) checkpoint loaded at (48, 32) has as many tokens, but every token
would get the position code of another cell. Only relative imports: saved models copy this file for remote code.
"""

from torch import nn
from transformers.utils import logging

from .checkpoint import load_files, read_shapes, saved_grid, table_grid
from .pos_embed import resample_pos_embed

logger = logging.get_logger(__name__)


def fit_checkpoint(model, state_dict, checkpoint_files, is_encoder: bool):
    """(state_dict, checkpoint_files) as `PreTrainedModel._load_pretrained_model` receives them -> the same, fitted
    to `model`: shapes checked and position tables resampled (`adapt_checkpoint`); a bare encoder (`is_encoder`)
    loses its final norm when the checkpoint's encoder has none (`drop_final_norm_absent_from`)."""
    shapes = checkpoint_shapes(state_dict, checkpoint_files)
    if is_encoder:
        drop_final_norm_absent_from(model, shapes)
    resampled = adapt_checkpoint(model, state_dict, checkpoint_files, shapes)
    if resampled is not None:
        return resampled, None
    return state_dict, checkpoint_files


def drop_final_norm_absent_from(model, shapes) -> None:
    """A bare encoder loaded from a checkpoint whose encoder has no final norm (a mean-pooled classifier's, a
    segmenter's) is built without one as well: it then computes what that encoder computed, and no norm is
    reported as newly initialised (`AutoModel.from_pretrained(classifier_dir)`)."""
    if not isinstance(model.norm, nn.LayerNorm):
        return
    has_encoder = bool({"patch_embed.proj.weight", "vit.patch_embed.proj.weight"} & shapes.keys())
    if has_encoder and not {"norm.weight", "vit.norm.weight"} & shapes.keys():
        model.norm = nn.Identity()
        logger.info(
            "The checkpoint's encoder has no final norm (a mean-pooled classifier or a segmenter): loaded without one."
        )


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
    # DeepSpeed ZeRO-3 builds the model partitioned (empty tensors); `ds_shape` holds each parameter's own shape.
    expected = {name: tuple(getattr(t, "ds_shape", t.shape)) for name, t in model.state_dict(keep_vars=True).items()}
    recorded_grid, new_grid = saved_grid(checkpoint_files), model.config.grid_size
    todo, misfits = {}, []
    for key, shape in shapes.items():
        target = _matching_key(key, expected, model.base_model_prefix)
        if target is None:
            continue
        if key.endswith("pos_embed") and len(shape) == 3 and shape[-1] == expected[target][-1]:
            grid = table_grid(key, shape[1] - 1, recorded_grid, new_grid)
            if grid != new_grid:
                todo[key] = grid
                continue
        if tuple(shape) != expected[target] and not target.startswith(model._label_layers):
            misfits.append(f"{key} is {tuple(shape)} in the checkpoint but {expected[target]} in the model")
    if misfits:
        raise ValueError(
            f"the checkpoint does not fit {type(model).__name__} ({model.config.hidden_size} wide, patch "
            f"{model.config.patch_size}): "
            + "; ".join(misfits[:4])
            + (f" (+{len(misfits) - 4} more)" if len(misfits) > 4 else "")
        )
    if not todo:
        return None
    full = dict(state_dict) if state_dict is not None else load_files(checkpoint_files)
    for key, grid in todo.items():
        full[key] = resample_pos_embed(full[key], grid, new_grid)
        logger.warning(
            f"Resampled {key} from a {grid[0]}x{grid[1]} to a {new_grid[0]}x{new_grid[1]} patch grid (bicubic): the "
            f"checkpoint was made for another image size than {model.config.image_size}."
        )
    return full


def checkpoint_shapes(state_dict, checkpoint_files) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the checkpoint, given as a state dict or as files (safetensors: from the header only)."""
    if state_dict is not None:
        return {k: tuple(v.shape) for k, v in state_dict.items()}
    return read_shapes(checkpoint_files or [])


def _matching_key(key, expected, prefix):
    for candidate in (key, key.removeprefix(prefix + "."), f"{prefix}.{key}"):
        if candidate in expected:
            return candidate
    return None
