"""Optimizer parameter groups for the MAE recipes."""

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
