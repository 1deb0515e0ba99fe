"""What a checkpoint holds, independent of any model: reading its files, the architecture its tensor shapes imply,
and the key names of the other MAE layouts (official MAE / timm, transformers ViTMAE) against ours.

- reading:    `read_state_dict` (one file: `.safetensors`, or a `torch.save`d `.bin` / `.pth` with
              `weights_only=True`), `weight_files` (a saved model folder's weight files), `read_shapes` (from the
              safetensors headers only), `load_files`;
- grid:       `square_side`, `table_grid` (the patch grid a position table was made for), `saved_grid` (the grid
              recorded in the config.json beside the weights), `infer_config` (all MAEConfig fields from shapes);
- key maps:   official <-> ours (`our_name`, `official_name`), transformers -> official
              (`transformers_to_official`) and ours -> transformers (`to_transformers_state_dict`), both from the
              one table `TRANSFORMERS_V5_OFFICIAL` and its per-block part `TRANSFORMERS_BLOCK_TO_OFFICIAL`.

Only relative imports: saved models copy this file for remote code (through `weight_loading.py`).
"""

import argparse
import contextlib
import json
import os
import re

import torch

from .configuration_mae import to_pair

# ---- reading ---------------------------------------------------------------------------------------------------


def read_state_dict(path):
    """A `.safetensors` or `torch.save`d file -> flat {name: tensor}, unwrapping a "model" or "state_dict" entry
    (official training checkpoints also hold the optimizer, epoch and argparse arguments)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    # weights_only: never run pickled code. The argparse Namespace stored by official training checkpoints is
    # plain data, so it is allowed.
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}


def weight_files(folder) -> list[str]:
    """Names of a saved model folder's weight files: the shards of model.safetensors.index.json, else the first of
    model.safetensors, pytorch_model.bin that exists (safetensors first, as transformers does); [] without any."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    candidates = ("model.safetensors", "pytorch_model.bin")
    return [name for name in candidates if os.path.isfile(os.path.join(folder, name))][:1]


def read_shapes(files) -> dict[str, tuple[int, ...]]:
    """{key: shape} of checkpoint files; safetensors files are read from their header only."""
    shapes = {}
    for file in files:
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="pt") as f:  # reads the header only
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        else:
            shapes.update({k: tuple(v.shape) for k, v in read_state_dict(file).items()})
    return shapes


def load_files(files) -> dict[str, torch.Tensor]:
    """The state dict of checkpoint files (the shards of one model) merged."""
    state_dict = {}
    for file in files:
        state_dict.update(read_state_dict(file))
    return state_dict


# ---- grid and architecture from shapes -------------------------------------------------------------------------

# Head counts of the standard ViT widths (Ti, S, B, L, H) and of the official 512-wide decoder. Any other width
# is ambiguous (the weights do not record the head count) and must be given explicitly.
ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
DECODER_HEADS = {512: 16}


def square_side(patches: int) -> int | None:
    """Patches per side of a square grid of `patches` cells; None when `patches` is not a square."""
    side = round(patches**0.5)
    return side if side * side == patches else None


def table_grid(key: str, patches: int, saved_grid, new_grid) -> tuple[int, int]:
    """The (rows, columns) grid a table of `patches` patch rows was made for: the saved config's grid when it has
    that many cells; with no such record, the model's grid when the count matches (nothing tells them apart), else
    a square grid."""
    if saved_grid and saved_grid[0] * saved_grid[1] == patches:
        return tuple(saved_grid)
    if new_grid[0] * new_grid[1] == patches:
        return tuple(new_grid)
    side = square_side(patches)
    if side is None:
        raise ValueError(f"cannot tell the patch grid of {key} with {patches} patch rows; save a config.json")
    return side, side


def saved_grid(checkpoint_files) -> tuple[int, int] | None:
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


def infer_config(state_dict, num_attention_heads, decoder_num_attention_heads, image_size=None):
    """MAEConfig fields read off official/timm-layout tensor shapes: `cls_token` (1, 1, D), `pos_embed`
    (1, 1 + N, D) (a square grid unless `image_size` is given), `patch_embed.proj.weight` (D, C, p, p),
    `blocks.0.mlp.fc1.weight` (I, D), and likewise for the decoder (`decoder_embed.weight` (D_dec, D))."""
    hidden = tensor(state_dict, "cls_token").shape[-1]
    _, channels, patch, _ = tensor(state_dict, "patch_embed.proj.weight").shape
    if image_size is None:
        patches = tensor(state_dict, "pos_embed").shape[1] - 1
        side = square_side(patches)
        if side is None:
            raise ValueError(f"pos_embed has {patches} patch rows, not a square grid: pass image_size=(height, width)")
        image_size = side * patch
    config = dict(
        image_size=image_size,
        patch_size=patch,
        num_channels=channels,
        hidden_size=hidden,
        num_hidden_layers=count_blocks(state_dict, "blocks."),
        num_attention_heads=head_count(hidden, num_attention_heads, ENCODER_HEADS, "num_attention_heads"),
        intermediate_size=tensor(state_dict, "blocks.0.mlp.fc1.weight").shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        layer_norm_eps=1e-6,  # official and timm ViTs: partial(nn.LayerNorm, eps=1e-6)
    )
    if "decoder_embed.weight" in state_dict:
        width = state_dict["decoder_embed.weight"].shape[0]
        config.update(
            decoder_hidden_size=width,
            decoder_num_hidden_layers=count_blocks(state_dict, "decoder_blocks."),
            decoder_num_attention_heads=head_count(
                width, decoder_num_attention_heads, DECODER_HEADS, "decoder_num_attention_heads"
            ),
            decoder_intermediate_size=tensor(state_dict, "decoder_blocks.0.mlp.fc1.weight").shape[0],
        )
    return config


def tensor(state_dict, key):
    if key not in state_dict:
        raise ValueError(f"missing key {key!r}: not an MAE / ViT checkpoint in the expected layout")
    return state_dict[key]


def count_blocks(state_dict, prefix):
    indices = {int(key[len(prefix) :].split(".")[0]) for key in state_dict if key.startswith(prefix)}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"{prefix}N blocks must be numbered 0..N-1, found {sorted(indices)}")
    return len(indices)


def head_count(width, override, known, name):
    if override is not None:
        return int(override)
    if width not in known:
        raise ValueError(f"cannot infer {name} for width {width} (known widths: {known}): pass {name}=... (--{name})")
    return known[width]


# ---- key maps --------------------------------------------------------------------------------------------------

# Official-layout name -> ours, for the decoder (the encoder only gains the `vit.` prefix in task models).
DECODER_RENAMES = {
    "decoder_embed.": "decoder.embed.",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.pos_embed",
    "decoder_blocks.": "decoder.blocks.",
    "decoder_norm.": "decoder.norm.",
    "decoder_pred.": "decoder.pred.",
}

# transformers v4 -> v5 names, applied in order as plain substring replacements, as transformers itself does.
# "encoder.layer." also catches "decoder.decoder_encoder.layer.", which transformers 5.x writes for the decoder
# when it saves in the "original" (v4) format.
TRANSFORMERS_V4_TO_V5 = (
    ("encoder.layer.", "layers."),
    ("attention.query", "q_proj"),
    ("attention.key", "k_proj"),
    ("attention.value", "v_proj"),
    ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
)

# transformers v5 name (without the `vit.` prefix) <-> official layout: (transformers prefix, official prefix, what
# must follow the prefix, a regex); the whole key must match. Read in both directions.
TRANSFORMERS_V5_OFFICIAL = (
    ("embeddings.cls_token", "cls_token", ""),
    ("embeddings.position_embeddings", "pos_embed", ""),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj.", r"(weight|bias)"),
    ("layernorm.", "norm.", r"(weight|bias)"),
    ("layers.", "blocks.", r"\d+\..+"),
    ("decoder.decoder_embed.", "decoder_embed.", r"(weight|bias)"),
    ("decoder.mask_token", "mask_token", ""),
    ("decoder.decoder_pos_embed", "decoder_pos_embed", ""),
    ("decoder.decoder_layers.", "decoder_blocks.", r"\d+\..+"),
    ("decoder.decoder_norm.", "decoder_norm.", r"(weight|bias)"),
    ("decoder.decoder_pred.", "decoder_pred.", r"(weight|bias)"),
)
TRANSFORMERS_BLOCK_TO_OFFICIAL = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.q_proj": "attn.q",  # q/k/v are fused into attn.qkv (rows [q; k; v])
    "attention.k_proj": "attn.k",
    "attention.v_proj": "attn.v",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
OFFICIAL_BLOCK_TO_TRANSFORMERS = {official: name for name, official in TRANSFORMERS_BLOCK_TO_OFFICIAL.items()}
BLOCK_KEY = re.compile(r"((?:decoder_)?blocks\.\d+)\.(.+)\.(weight|bias)")


def is_decoder_key(key):
    return key == "mask_token" or key.startswith("decoder_")


def our_name(key, encoder_prefix):
    """Official-layout key -> ours: `decoder_blocks.0.x` -> `decoder.blocks.0.x`, `blocks.0.x` -> `vit.blocks.0.x`."""
    for old, new in DECODER_RENAMES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if key.startswith(("fc_norm.", "head.")):
        return key
    return encoder_prefix + key


def official_name(key):
    """Our key (of MAEForPreTraining, or with no `vit.` prefix of MAEModel) -> the official-layout name."""
    for old, new in DECODER_RENAMES.items():
        if key.startswith(new):
            return old + key[len(new) :]
    return key.removeprefix("vit.")


def transformers_to_official(state_dict):
    """transformers ViTMAE keys (v4 or v5) -> official layout, with q/k/v fused into `attn.qkv`."""
    converted, qkv, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        name = official_name_of_transformers_key(key)
        if name is None:
            unknown.append(key)
        elif match := re.fullmatch(r"(.+)\.attn\.([qkv])\.(weight|bias)", name):
            qkv.setdefault((match[1], match[3]), {})[match[2]] = tensor
        else:
            converted[name] = tensor
    if unknown:
        raise ValueError(f"unknown keys in the transformers checkpoint: {sorted(unknown)}")
    for (block, kind), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ValueError(f"{block}: attention {kind} needs query, key and value, found only {sorted(parts)}")
        converted[f"{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return converted


def official_name_of_transformers_key(key):
    """One transformers key -> its official-layout name (q/k/v as `attn.q` etc.), or None when unknown."""
    for old, new in TRANSFORMERS_V4_TO_V5:
        key = key.replace(old, new)
    key = key.removeprefix("vit.")
    for name, official, rest in TRANSFORMERS_V5_OFFICIAL:
        if re.fullmatch(re.escape(name) + rest, key):
            key = official + key[len(name) :]
            break
    else:
        return None
    if block := BLOCK_KEY.fullmatch(key):
        inner = TRANSFORMERS_BLOCK_TO_OFFICIAL.get(block[2])
        return None if inner is None else f"{block[1]}.{inner}.{block[3]}"
    return key


def transformers_name_of_official_key(key):
    """One official-layout key (q/k/v as `attn.q` etc.) -> its transformers v5 name (with `vit.` for the encoder)."""
    if block := BLOCK_KEY.fullmatch(key):
        key = f"{block[1]}.{OFFICIAL_BLOCK_TO_TRANSFORMERS[block[2]]}.{block[3]}"
    for name, official, rest in TRANSFORMERS_V5_OFFICIAL:
        if re.fullmatch(re.escape(official) + rest, key):
            key = name + key[len(official) :]
            return key if key.startswith("decoder.") else "vit." + key
    raise KeyError(f"no transformers name for {key}")


def to_transformers_state_dict(state_dict: dict) -> dict:
    """mae_hf MAEForPreTraining state dict -> transformers ViTMAEForPreTraining state dict (v5 names); the fused
    `attn.qkv` (3D, D) is split into the q/k/v projections (D, D) each."""
    out = {}
    for key, value in state_dict.items():
        name = official_name(key)
        if fused := re.fullmatch(r"(.+)\.attn\.qkv\.(weight|bias)", name):
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[transformers_name_of_official_key(f"{fused[1]}.attn.{part}.{fused[2]}")] = chunk
        else:
            out[transformers_name_of_official_key(name)] = value
    return out
