"""Optimizer parameter groups for the MAE recipes: the weight-decay split and layer-wise lr decay."""

from torch import nn

# Tokens and position tables are embeddings, not weights: decaying them towards zero only hurts.
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed")


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters that get weight decay: every matrix/kernel, i.e. not biases, norm
    weights (all 1-D), tokens or position tables. (transformers' default split decays the tokens.)"""
    return [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and param.ndim >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES
    ]


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings (patch embedding, class token), i + 1 for block i, depth + 1 for everything after
    the blocks (final norm, fc_norm, head) -- the official `get_layer_id_for_vit`."""
    parts = name.removeprefix("vit.").split(".")
    if parts[0] in ("cls_token", "pos_embed", "patch_embed"):
        return 0
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    return depth + 1


def param_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float | None = None
) -> list[dict]:
    """Optimizer groups, each with its own `lr` and `weight_decay`.

    Without `layer_decay`: two groups (decayed, not decayed) at `learning_rate`. With it (official fine-tuning):
    a parameter of layer l (see `layer_id`) gets lr = learning_rate * layer_decay ** (depth + 1 - l), so block i
    trains at learning_rate * layer_decay ** (depth - i) and the head at the full rate. Transformers' schedulers
    then scale every group's own lr.
    """
    decayed = set(decay_parameter_names(model))
    depth = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth) if layer_decay is not None else depth + 1
        scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
        key = (layer, name in decayed)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "lr": learning_rate * scale,
                "weight_decay": weight_decay if key[1] else 0.0,
                "layer": layer,
                "lr_scale": scale,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]
