"""Batch-level mixup / cutmix with label smoothing, as the official fine-tuning (timm `Mixup`) applies them, on
torchvision v2's MixUp and CutMix."""

import torch
from torchvision.transforms import v2

from .collate import collate_pixel_values


class MixupCollator:
    """Collates a batch, then applies mixup (alpha `mixup_alpha`) or cutmix (alpha `cutmix_alpha`), one of the
    two per batch (cutmix with probability `switch_prob`), and smooths the targets: labels become soft (B, C)
    targets. With both alphas 0 only label smoothing applies (still soft targets)."""

    def __init__(self, num_classes: int, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1):
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        choices = []
        if mixup_alpha > 0:
            choices.append((v2.MixUp(alpha=mixup_alpha, num_classes=num_classes), 1 - switch_prob))
        if cutmix_alpha > 0:
            choices.append((v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes), switch_prob))
        if len(choices) == 2:
            self.mix = v2.RandomChoice([c for c, _ in choices], p=[p for _, p in choices])
        else:
            self.mix = choices[0][0] if choices else None

    def __call__(self, examples: list[dict]) -> dict:
        batch = collate_pixel_values(examples)
        if self.mix is not None:
            batch["pixel_values"], targets = self.mix(batch["pixel_values"], batch["labels"])
        else:
            targets = torch.nn.functional.one_hot(batch["labels"], self.num_classes).float()
        # Smoothing the mixed one-hot targets equals mixing smoothed ones (it is linear): timm's order.
        batch["labels"] = targets * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return batch
