"""Offline `evaluate` metrics for the classification and segmentation scripts, and the logits preprocessing they
need."""

import os
import uuid

import numpy as np
import torch

# Holds one `evaluate` metric script per file, loaded by absolute path so nothing comes from the Hub.
METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
ACCURACY_PATH = os.path.join(METRICS_DIR, "accuracy.py")
MEAN_IOU_PATH = os.path.join(METRICS_DIR, "mean_iou.py")

__all__ = [
    "ACCURACY_PATH",
    "MEAN_IOU_PATH",
    "METRICS_DIR",
    "StreamingMeanIoU",
    "confusion_matrix",
    "eval_batches",
    "load_accuracy",
    "load_mean_iou",
    "metrics_from_confusion",
    "to_numpy",
    "top_k_predictions",
]


def load_accuracy(**kwargs):
    """`evaluate.load` of our top-1/top-5 accuracy script (`accuracy.py`), fully offline.

    A fresh `experiment_id` per call keeps the metric's cache files (named after it) apart, so processes or
    instances evaluating at the same time don't clash; `kwargs` (e.g. `cache_dir`, `keep_in_memory`) go to
    `evaluate.load`.
    """
    import evaluate  # imported here: it is slow to import and only the classification runs need it

    kwargs.setdefault("experiment_id", uuid.uuid4().hex)
    return evaluate.load(ACCURACY_PATH, **kwargs)


def load_mean_iou(**kwargs):
    """`evaluate.load` of our streaming-confusion-matrix mean IoU script (`mean_iou.py`), fully offline.

    As `load_accuracy`: a fresh `experiment_id` per call, `kwargs` (e.g. `cache_dir`) go to `evaluate.load`.
    `compute(predictions=..., references=..., num_labels=..., ignore_index=255, id2label=None)`. evaluate still
    stores every added map (as Arrow, then Python lists at `compute`); for a Trainer evaluation use
    `StreamingMeanIoU`, whose memory does not grow with the images.
    """
    import evaluate  # imported here: it is slow to import and only the evaluation scripts need it

    kwargs.setdefault("experiment_id", uuid.uuid4().hex)
    return evaluate.load(MEAN_IOU_PATH, **kwargs)


# `mean_iou.py` is also an `evaluate` script, hence self-contained (no relative imports): importing it as a plain
# submodule gives the Trainer code the very same functions that `load_mean_iou()` runs. It is imported on first
# use of these names only, because it imports `evaluate` (which pulls in transformers.pipelines and torchvision:
# seconds and ~250 MB of RSS), which `import mae_hf.metrics` alone should not cost.
_MEAN_IOU_NAMES = ("StreamingMeanIoU", "confusion_matrix", "metrics_from_confusion")


def __getattr__(name):
    if name in _MEAN_IOU_NAMES:
        from . import mean_iou

        return getattr(mean_iou, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def top_k_predictions(logits, k: int = 5) -> torch.Tensor:
    """(B, C) logits -> (B, min(k, C)) LongTensor of class ids, best first.

    For Trainer's `preprocess_logits_for_metrics`: it keeps only what the accuracy needs instead of gathering
    every logit over the whole evaluation set. Takes the logits tensor or a tuple whose first element is it (the
    model outputs other than the loss).
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return torch.topk(logits, k=min(k, logits.shape[-1]), dim=-1, sorted=True).indices.long()


def eval_batches(eval_pred) -> list[tuple]:
    """The (predictions, references) pairs of a Trainer `EvalPrediction`, whatever the arguments that shaped it:
    one batch of tensors (--batch_eval_metrics), one concatenated array each, or lists of per-batch arrays
    (--eval_do_concat_batches false)."""
    predictions, references = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, list):
        return list(zip(predictions, references))
    return [(predictions, references)]


def to_numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
