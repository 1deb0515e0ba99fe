"""Import external MAE checkpoints into mae_hf models and save them with `save_pretrained`.

    python -m mae_hf.conversion SOURCE OUTPUT_DIR [--format official|transformers|timm]

Sources:
    official      facebookresearch/mae `.pth` files: `mae_pretrain_vit_*.pth` (encoder) -> MAEModel,
                  `*_full.pth` / `mae_visualize_*.pth` (with decoder) -> MAEForPreTraining,
                  `mae_finetuned_vit_*.pth` (fc_norm + head) -> MAEForImageClassification(pooling="mean"),
                  norm + head (class-token fine-tuning or a main_linprobe.py BatchNorm head) -> pooling="cls".
    transformers  a `ViTMAEForPreTraining` / `ViTMAEModel` folder (config.json + weights), v4 or v5 key names.
    timm          a `VisionTransformer` state dict (e.g. `vit_*.mae`): no head -> MAEModel, else a classifier.

Format detection (when `format` is not given), in this order:
    1. a folder -> transformers (its config.json must say model_type "vit_mae");
    2. a file whose state dict (after unwrapping "model" / "state_dict") has decoder keys -> official;
    3. a `.safetensors` file -> timm;
    4. any other file (`.pth`, `.bin`...) -> official. The official and timm encoder layouts are the same, so
       both formats give the same weights; only the recorded `norm_pix_loss` default differs.

Official and timm configs are inferred from tensor shapes; transformers configs are copied from config.json.
Every conversion is strict: each source tensor must land in the model and each model tensor must be filled.
"""

import argparse
import json
import os
import sys

from transformers.utils import logging

from .checkpoint import (
    DECODER_HEADS,
    ENCODER_HEADS,
    infer_config,
    is_decoder_key,
    load_files,
    our_name,
    read_state_dict,
    transformers_to_official,
    weight_files,
)
from .configuration_mae import MAEConfig, to_pair
from .modeling_mae import MAEForImageClassification, MAEForPreTraining, MAEModel
from .preflight import check_writable_dir

logger = logging.get_logger(__name__)

FORMATS = ("official", "transformers", "timm")

TRANSFORMERS_CONFIG_FIELDS = (
    "image_size patch_size num_channels hidden_size num_hidden_layers num_attention_heads intermediate_size "
    "hidden_act qkv_bias layer_norm_eps decoder_hidden_size decoder_num_hidden_layers decoder_num_attention_heads "
    "decoder_intermediate_size mask_ratio norm_pix_loss initializer_range"
).split()

LINPROBE_BN_EPS = 1e-6  # main_linprobe.py: BatchNorm1d(affine=False, eps=1e-6) in front of the head


# ---- public API ------------------------------------------------------------------------------------------------


def convert_official(
    state_dict, *, num_attention_heads=None, decoder_num_attention_heads=None, norm_pix_loss=None, **config_overrides
):
    """A facebookresearch/mae state dict -> MAEModel, MAEForPreTraining or MAEForImageClassification.

    Keys: `cls_token` (1, 1, D), `pos_embed` (1, 1 + N, D), `patch_embed.proj.*` (D, C, p, p), `blocks.{i}.*`,
    `norm.*`; with a decoder also `mask_token` (1, 1, D_dec), `decoder_embed.*` (D_dec, D), `decoder_pos_embed`
    (1, 1 + N, D_dec), `decoder_blocks.{i}.*`, `decoder_norm.*`, `decoder_pred.*` (p*p*C, D_dec); fine-tuned
    classifiers have `fc_norm.*` and/or `head.*` (num_labels, D). A main_linprobe.py head
    (`head.0` BatchNorm statistics, `head.1` Linear) is folded into one Linear.
    `norm_pix_loss` defaults to True, the setting of the released pretraining runs.
    """
    state_dict = fold_linprobe_head(dict(state_dict))
    config = infer_config(
        state_dict, num_attention_heads, decoder_num_attention_heads, config_overrides.get("image_size")
    )
    config["norm_pix_loss"] = True if norm_pix_loss is None else bool(norm_pix_loss)
    return build_model(state_dict, {**config, **config_overrides})


def convert_timm(state_dict, *, num_attention_heads=None, **config_overrides):
    """A timm `VisionTransformer` state dict (same key layout as the official encoder, plus optional `fc_norm.*`,
    `head.*`) -> MAEModel (no head: timm's `*.mae` weights) or MAEForImageClassification."""
    decoder = sorted(key for key in state_dict if is_decoder_key(key))
    if decoder:
        raise ValueError(f"timm ViTs have no MAE decoder; unknown keys: {decoder} (use format 'official')")
    config = infer_config(state_dict, num_attention_heads, None, config_overrides.get("image_size"))
    return build_model(dict(state_dict), {**config, **config_overrides})


def convert_transformers(state_dict, config_dict):
    """A transformers `ViTMAEForPreTraining` (keys `vit.*`, `decoder.*`) or `ViTMAEModel` (no prefix, no decoder)
    state dict, with v4 or v5 key names, plus its config.json as a dict -> MAEForPreTraining or MAEModel.

    The separate q/k/v projections (D, D) each are concatenated, in that order, into `attn.qkv` (3D, D).
    """
    state_dict = transformers_to_official(state_dict)
    config = transformers_config(config_dict)
    model = build_model(state_dict, config)
    if isinstance(model, MAEForPreTraining) and not model.decoder.pos_embed.any():
        # transformers 5.x zero-initialises this table and keeps it frozen, so a model it created, trained and
        # saved carries the zeros.
        logger.warning(
            "The decoder position table of this transformers checkpoint is all zeros (transformers 5.x "
            "ViTMAE zero-initialises it): the decoder has no position information. It was converted as it is."
        )
    return model


def load_source(path, format=None, **kwargs):
    """Read a checkpoint file or folder, detect its format (see the module docstring) and convert it.

    `kwargs`: `num_attention_heads`, `decoder_num_attention_heads`, `norm_pix_loss` and MAEConfig overrides;
    None values are ignored. For transformers folders they override config.json fields.
    """
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    path = os.fspath(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if not os.path.exists(path):
        raise ValueError(f"no such checkpoint: {path}")
    if os.path.isdir(path):
        if format not in (None, "transformers"):
            raise ValueError(f"{path} is a folder: only the 'transformers' format is read from folders")
        state_dict, config_dict = read_transformers_folder(path)
        check_recorded_grid(config_dict, kwargs)
        return convert_transformers(state_dict, {**config_dict, **kwargs})
    state_dict = read_state_dict(path)
    format = format or detect_file_format(path, state_dict)
    if format == "transformers":
        raise ValueError(f"{path}: transformers checkpoints are read from their folder (config.json + weights)")
    if format == "timm":
        kwargs.pop("decoder_num_attention_heads", None)  # timm models have no decoder
        return convert_timm(state_dict, **kwargs)
    # The mae_visualize_* checkpoints were trained on raw pixels (for nicer reconstructions), the others on
    # per-patch normalised pixels.
    kwargs.setdefault("norm_pix_loss", "visualize" not in os.path.basename(path))
    return convert_official(state_dict, **kwargs)


def convert(source, output_dir, format=None, overwrite=False, **kwargs):
    """Convert `source` (see `load_source`) and `save_pretrained` it into `output_dir`; returns the model.

    Refuses to write into an existing non-empty `output_dir` unless `overwrite=True`.
    """
    output_dir = os.fspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output path {output_dir} exists and is not a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ValueError(f"output folder {output_dir} is not empty; pass overwrite=True (--overwrite) to write into it")
    check_writable_dir(output_dir, "output folder")  # before reading a checkpoint of gigabytes
    model = load_source(source, format=format, **kwargs)
    model.save_pretrained(output_dir)
    return model


# ---- reading files ---------------------------------------------------------------------------------------------


def read_transformers_folder(path):
    """(state dict, config dict) of a transformers folder: config.json + model.safetensors (optionally sharded
    with model.safetensors.index.json) or pytorch_model.bin."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path} has no config.json: not a transformers model folder")
    with open(config_path) as f:
        config_dict = json.load(f)
    if config_dict.get("model_type") != "vit_mae":
        raise ValueError(f"{config_path} has model_type {config_dict.get('model_type')!r}, expected 'vit_mae'")
    files = weight_files(path)
    if not files:
        raise ValueError(f"{path} has no model.safetensors or pytorch_model.bin")
    return load_files([os.path.join(path, name) for name in files]), config_dict


def detect_file_format(path, state_dict):
    """'official' or 'timm' for a state-dict file (rules in the module docstring); 'transformers' for a
    transformers state dict, which `load_source` refuses without its folder's config.json."""
    if any(key.startswith(("vit.", "embeddings.", "encoder.layer.", "layers.")) for key in state_dict):
        return "transformers"
    if "cls_token" not in state_dict and "blocks.0.attn.qkv.weight" not in state_dict:
        raise ValueError(f"{path}: not an MAE / ViT state dict (no cls_token or blocks.0.*); pass --format")
    if any(is_decoder_key(key) for key in state_dict):
        return "official"
    return "timm" if path.endswith(".safetensors") else "official"


# ---- config mapping ------------------------------------------------------------------------------------


def transformers_config(config_dict):
    """MAEConfig fields from a ViTMAE config.json dict (plus any mae_hf fields given as overrides); fields the
    file leaves out take `ViTMAEConfig`'s defaults, not ours (e.g. layer_norm_eps 1e-12)."""
    from transformers import ViTMAEConfig

    defaults = ViTMAEConfig().to_dict()
    config = {name: defaults[name] for name in TRANSFORMERS_CONFIG_FIELDS}
    config.update({name: value for name, value in config_dict.items() if name in MAEConfig.__annotations__})
    patch = config["patch_size"]
    if isinstance(patch, (list, tuple)):
        if patch[0] != patch[1]:
            raise ValueError(f"only square patches are supported, got patch_size {patch}")
        config["patch_size"] = int(patch[0])
    if config_dict.get("hidden_dropout_prob") or config_dict.get("attention_probs_dropout_prob"):
        logger.warning("mae_hf models have no dropout: the checkpoint's dropout probabilities are dropped")
    return config


def check_recorded_grid(config_dict, overrides):
    """A transformers folder records the patch grid of its position tables; an image_size override for another grid
    is refused, even with as many patches (32 -> (16, 64) at patch 8: 4x4 and 2x8), whose tables would load onto
    the wrong cells. Conversion keeps tensors as they are; `from_pretrained(..., image_size=...)` resamples them."""
    if "image_size" not in overrides:
        return
    saved = transformers_config(config_dict)
    wanted = {**saved, **overrides}
    grids = [tuple(side // c["patch_size"] for side in to_pair(c["image_size"])) for c in (saved, wanted)]
    if grids[0] != grids[1]:
        raise ValueError(
            f"image_size {wanted['image_size']} gives a {grids[1][0]}x{grids[1][1]} patch grid, but the position "
            f"tables of this checkpoint are for {grids[0][0]}x{grids[0][1]} (image_size {saved['image_size']} in "
            "config.json); convert at the checkpoint's size and load with from_pretrained(folder, image_size=...)"
        )


def fold_linprobe_head(state_dict):
    """main_linprobe.py's head, `Sequential(BatchNorm1d(affine=False), Linear)` (keys `head.0.running_*`,
    `head.1.*`), folded into one Linear `head.*`: W (x - mean) / s + b = (W / s) x + (b - W @ (mean / s)),
    s = sqrt(var + eps). Other state dicts are returned unchanged."""
    if "head.0.running_mean" not in state_dict:
        return state_dict
    mean = state_dict.pop("head.0.running_mean").double()
    scale = (state_dict.pop("head.0.running_var").double() + LINPROBE_BN_EPS).rsqrt()
    state_dict.pop("head.0.num_batches_tracked", None)
    weight, bias = state_dict.pop("head.1.weight"), state_dict.pop("head.1.bias")
    state_dict["head.weight"] = (weight.double() * scale).to(weight.dtype)
    state_dict["head.bias"] = (bias.double() - weight.double() @ (mean * scale)).to(bias.dtype)
    logger.info("Folded the linear-probing BatchNorm statistics into the classification head")
    return state_dict


# ---- building the model ----------------------------------------------------------------------------------------


def model_kind(state_dict):
    """(model class, config fields it implies) from the official-layout keys present."""
    if any(is_decoder_key(key) for key in state_dict):
        return MAEForPreTraining, {}
    if "fc_norm.weight" in state_dict or any(key.startswith("head.") for key in state_dict):
        num_labels = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
        # Mean pooling is recognisable by its fc_norm; a norm + head checkpoint pools the class token.
        pooling = "mean" if "fc_norm.weight" in state_dict else "cls"
        return MAEForImageClassification, {"num_labels": num_labels, "pooling": pooling}
    return MAEModel, {}


def build_model(state_dict, config_fields):
    """Create the model the keys call for and load the official-layout `state_dict` into it, strictly."""
    model_class, implied = model_kind(state_dict)
    config = MAEConfig(**{**implied, **config_fields})
    model = model_class(config)
    load_strict(model, state_dict, "" if model_class is MAEModel else "vit.")
    return model.eval()


def load_strict(model, state_dict, encoder_prefix):
    """Load with every source key used and every model key filled; errors name the source keys."""
    source_of = {our_name(key, encoder_prefix): key for key in state_dict}
    expected = model.state_dict()
    unknown = sorted(key for name, key in source_of.items() if name not in expected)
    missing = sorted(name for name in expected if name not in source_of)
    if unknown or missing:
        raise ValueError(
            f"checkpoint does not fit {type(model).__name__}: unknown keys {unknown}, missing model keys {missing}"
        )
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[name].shape)}"
        for name, key in source_of.items()
        if state_dict[key].shape != expected[name].shape
    ]
    if mismatched:
        # A position table made for another image size is resampled by `from_pretrained(..., image_size=...)`
        # on the converted folder, not here: conversion keeps the checkpoint as it is.
        raise ValueError(
            f"shape mismatches (checkpoint vs model): {mismatched}; to change the image size, convert at the "
            "checkpoint's size and load with from_pretrained(folder, image_size=...)"
        )
    model.load_state_dict({name: state_dict[key] for name, key in source_of.items()}, strict=True)


# ---- command line ----------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(  # each help states its default
        prog="python -m mae_hf.conversion",
        description="Convert an official MAE, transformers ViTMAE or timm ViT checkpoint into a mae_hf model folder.",
        allow_abbrev=False,  # a misspelt prefix of a flag is an error, as in the training scripts
    )
    parser.add_argument("source", help="checkpoint file (.pth, .bin, .safetensors) or transformers folder")
    parser.add_argument("output_dir", help="folder to save_pretrained into (must be empty unless --overwrite)")
    parser.add_argument("--format", choices=FORMATS, help="source format (default: detected from the keys)")
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        help=f"encoder heads (default: from the width, {ENCODER_HEADS}; ViT Ti/S/B/L/H); needed for other widths",
    )
    parser.add_argument(
        "--decoder_num_attention_heads",
        type=int,
        help="decoder heads (default: from the width, "
        f"{DECODER_HEADS}; official models_mae.py); needed for other widths",
    )
    # One spelling for negated flags across the project: HfArgumentParser's --no_x.
    parser.add_argument(
        "--norm_pix_loss",
        action="store_true",
        default=None,
        help="record norm_pix_loss=True "
        "(default: official files: off for mae_visualize_*, else on (official PRETRAIN.md and demo "
        "notebook); transformers folders: their config.json's; timm files: off)",
    )
    parser.add_argument(
        "--no_norm_pix_loss", action="store_false", dest="norm_pix_loss", help="record norm_pix_loss=False"
    )
    parser.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        help="H [W], for a non-square position table (default: the square its length implies)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder (default: off)")
    args = parser.parse_args(argv)
    image_size = None
    if args.image_size is not None:
        if len(args.image_size) > 2:
            parser.error("--image_size takes one or two integers")
        image_size = to_pair(args.image_size if len(args.image_size) == 2 else args.image_size[0])
    try:
        model = convert(
            args.source,
            args.output_dir,
            format=args.format,
            overwrite=args.overwrite,
            num_attention_heads=args.num_attention_heads,
            decoder_num_attention_heads=args.decoder_num_attention_heads,
            norm_pix_loss=args.norm_pix_loss,
            image_size=image_size,
        )
    except ValueError as error:
        parser.error(str(error))
    print(f"Saved {type(model).__name__} to {args.output_dir}", file=sys.stderr)
    return model


if __name__ == "__main__":
    main()
