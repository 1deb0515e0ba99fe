"""Optimizer parameter groups for the MAE recipes: the weight-decay split and layer-wise lr decay, the same however an
engine wraps the model (DDP, FSDP1, FSDP2, DeepSpeed ZeRO)."""

from torch import nn

from .distributed import clean_name, parameter_shapes

# Tokens and position tables are embeddings, not weights: decaying them towards zero only hurts.
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed")


def _named_trainable(model: nn.Module, shapes: dict | None) -> list[tuple[str, str, nn.Parameter, int]]:
    """(name as the model gives it, name without wrapper prefixes, parameter, number of dimensions) of every
    trainable parameter. The dimensions come from `shapes` ({clean name: shape}, see `distributed.parameter_shapes`),
    taken before an engine wrapped the model: FSDP1 shows the optimizer flat 1-D shards, ZeRO-3 empty tensors."""
    shapes = parameter_shapes(model) if shapes is None else shapes
    found = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = clean_name(name)
        if clean not in shapes:
            raise ValueError(
                f"the optimizer sees a parameter {name!r} that the model did not have before the engine wrapped it: "
                "FSDP1 with use_orig_params false flattens decayed and non-decayed tensors into one, so neither weight "
                'decay nor layer decay can be set per tensor. Set "use_orig_params": true in the FSDP config '
                "(--fsdp_config, or fsdp_use_orig_params in the accelerate config), or use FSDP2"
            )
        found.append((name, clean, param, len(shapes[clean])))
    return found


def decay_parameter_names(model: nn.Module, shapes: dict | None = None) -> list[str]:
    """Names (as `model` gives them) of the trainable parameters that get weight decay: every matrix/kernel, i.e. not
    biases, norm weights (all 1-D), tokens or position tables. (transformers' default split decays the tokens.)
    `shapes`: see `_named_trainable`."""
    return [
        name
        for name, clean, _param, ndim in _named_trainable(model, shapes)
        if ndim >= 2 and clean.rsplit(".", 1)[-1] not in NO_DECAY_NAMES
    ]


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings (patch embedding, class token), i + 1 for block i, depth + 1 for everything after
    the blocks (final norm, fc_norm, head) -- the official `get_layer_id_for_vit`."""
    parts = clean_name(name).removeprefix("vit.").split(".")
    if parts[0] in ("cls_token", "pos_embed", "patch_embed"):
        return 0
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    return depth + 1


def param_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float | None = None,
    shapes: dict | None = None,
) -> list[dict]:
    """Optimizer groups, each with its own `lr` and `weight_decay` (and its parameters' clean `names`).

    Without `layer_decay`: two groups (decayed, not decayed) at `learning_rate`. With it (official fine-tuning):
    a parameter of layer l (see `layer_id`) gets lr = learning_rate * layer_decay ** (depth + 1 - l), so block i
    trains at learning_rate * layer_decay ** (depth - i) and the head at the full rate. Transformers' schedulers
    then scale every group's own lr. `model` may be wrapped by an engine: give the `shapes` taken before (see
    `_named_trainable`); a ValueError names what cannot be grouped (FSDP1's flat parameters).
    """
    named = _named_trainable(model, shapes)
    decayed = set(decay_parameter_names(model, shapes))
    depth = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, clean, param, _ndim in named:
        layer = layer_id(clean, depth) if layer_decay is not None else depth + 1
        scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
        key = (layer, name in decayed)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr": learning_rate * scale,
                "weight_decay": weight_decay if key[1] else 0.0,
                "layer": layer,
                "lr_scale": scale,
            },
        )
        group["params"].append(param)
        group["names"].append(clean)
    return [groups[key] for key in sorted(groups)]
