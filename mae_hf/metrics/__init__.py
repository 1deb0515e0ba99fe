"""Offline `evaluate` metrics for the classification scripts, and the logits preprocessing they need."""

import os
import uuid

import torch

# Holds one `evaluate` metric script per file, loaded by absolute path so nothing comes from the Hub.
METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
ACCURACY_PATH = os.path.join(METRICS_DIR, "accuracy.py")


def load_accuracy(**kwargs):
    """`evaluate.load` of our top-1/top-5 accuracy script (`accuracy.py`), fully offline.

    A fresh `experiment_id` per call keeps the metric's cache files (named after it) apart, so processes or
    instances evaluating at the same time don't clash; `kwargs` (e.g. `cache_dir`, `keep_in_memory`) go to
    `evaluate.load`.
    """
    import evaluate  # imported here: it is slow to import and only the classification runs need it

    kwargs.setdefault("experiment_id", uuid.uuid4().hex)
    return evaluate.load(ACCURACY_PATH, **kwargs)


def top_k_predictions(logits, k: int = 5) -> torch.Tensor:
    """(B, C) logits -> (B, min(k, C)) LongTensor of class ids, best first.

    For Trainer's `preprocess_logits_for_metrics`: it keeps only what the accuracy needs instead of gathering
    every logit over the whole evaluation set. Takes the logits tensor or a tuple whose first element is it (the
    model outputs other than the loss).
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return torch.topk(logits, k=min(k, logits.shape[-1]), dim=-1, sorted=True).indices.long()
