"""The classification loss of every mae_hf classifier: transformers' ViT's for each `problem_type`, with soft
targets (mixup / cutmix / label smoothing) as one-class distributions. Only relative imports: saved models copy this
file for remote code."""

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """The loss of transformers' ViTForImageClassification (`ForSequenceClassificationLoss`) for
    `config.problem_type`, computed in float32: "regression" MSE, "single_label_classification" cross-entropy,
    "multi_label_classification" BCE-with-logits. Unset, it is inferred as ViT does (one label: regression;
    integer labels: single-label), except that float (B, num_labels) labels are soft targets of one class (mixup /
    cutmix / label smoothing: cross-entropy against the distribution), not multi-label; unlike ViT, the inferred
    type is not written into the config. Single-label cross-entropy also takes soft targets.

    logits (B, num_labels); labels (B,) class ids, (B, num_labels) soft targets / multi-hot / regression targets.
    Raises ValueError for soft targets of another shape and for an unknown problem_type.
    """
    problem_type = config.problem_type or infer_problem_type(logits, labels)
    logits = logits.float()
    if problem_type == "regression":
        labels = labels.to(logits)
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits))
    if problem_type != "single_label_classification":
        raise ValueError(f"config.problem_type {problem_type!r} is not one of {PROBLEM_TYPES}")
    if labels.is_floating_point() and labels.ndim > 1:
        if labels.shape != logits.shape:
            raise ValueError(
                f"soft labels must have shape (batch, num_labels) = {tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        return F.cross_entropy(logits, labels.float())
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1).long())


PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def infer_problem_type(logits: torch.Tensor, labels: torch.Tensor) -> str:
    if logits.shape[-1] == 1:
        return "regression"
    if not labels.is_floating_point() or labels.ndim == logits.ndim:  # class ids, or soft targets (B, C)
        return "single_label_classification"
    return "multi_label_classification"
