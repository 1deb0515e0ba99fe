"""Semantic-segmentation mean IoU, per-class accuracy and pixel accuracy from a streaming confusion matrix.

The Hub's `mean_iou` keeps every prediction and reference map until the end and then loops over them; here each
map (or batch of maps) is folded into a `num_labels x num_labels` confusion matrix right away, so memory does not
grow with the number of images. The file serves three uses:

* `confusion_matrix` / `metrics_from_confusion`: plain functions (torch or NumPy inputs, any device);
* `StreamingMeanIoU`: `update(predictions, references)` per batch, `compute()`, `reset()` -- for Trainer's
  `batch_eval_metrics`;
* `MeanIoU`: the same as an offline `evaluate` metric, loaded by local path (`mae_hf.metrics.load_mean_iou()`).

evaluate copies this file alone into its modules cache and imports it from there, so it must stay
self-contained: no relative or `mae_hf` imports, one import per line (evaluate's import scanner reads only the
first module of `import a, b`), only installed libraries, and `MeanIoU` must stay the only `evaluate.Metric`
subclass here (evaluate takes the first one it finds).
"""

import math

import datasets
import evaluate
import numpy as np
import torch

_DESCRIPTION = """\
Mean intersection-over-union (IoU) and accuracies of semantic-segmentation maps, computed from a confusion matrix
(rows: ground truth, columns: prediction) that is accumulated one map at a time. Pixels whose reference is
`ignore_index` are not counted anywhere. For class c, IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN)
(recall). A class that appears in neither the references nor the predictions has no IoU (NaN) and is left out of
`mean_iou`; a class absent from the references has no accuracy (NaN) and is left out of `mean_accuracy` -- the
nan-mean of mmsegmentation. `overall_accuracy` is the share of counted pixels predicted right.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D `int` maps, each (H, W); or an (N, H, W) array): predicted class ids.
    references (`list` of 2-D `int` maps, each the shape of its prediction): ground-truth class ids.
    num_labels (`int`): number of classes; predictions must lie in [0, num_labels), references too unless they
        equal `ignore_index`.
    ignore_index (`int`, defaults to 255): pixels with this reference are not counted.
    id2label (`dict` of `int` to `str`, optional): class names; adds one flat `iou_<name>` key per class.

Returns:
    mean_iou (`float`): mean IoU over the classes present in the references or the predictions.
    mean_accuracy (`float`): mean per-class accuracy (recall) over the classes present in the references.
    overall_accuracy (`float`): correct / counted pixels (NaN when no pixel is counted).
    per_category_iou (`list` of `float`): IoU per class, NaN for a class absent from references and predictions.
    per_category_accuracy (`list` of `float`): accuracy per class, NaN for a class absent from the references.
    iou_<name> (`float`): IoU of each class, only with `id2label`.

Examples:
    >>> mean_iou = mae_hf.metrics.load_mean_iou()
    >>> mean_iou.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=3)
    {'mean_iou': 0.5, 'mean_accuracy': 0.75, 'overall_accuracy': 0.6666666666666666, 'per_category_iou': [0.5, 0.5, nan], 'per_category_accuracy': [0.5, 1.0, nan]}
"""

_CITATION = """\
@inproceedings{he2022masked,
  title={Masked Autoencoders Are Scalable Vision Learners},
  author={He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle={CVPR},
  year={2022}
}
@misc{mmseg2020,
  title={{MMSegmentation}: OpenMMLab Semantic Segmentation Toolbox and Benchmark},
  author={MMSegmentation Contributors},
  howpublished={\\url{https://github.com/open-mmlab/mmsegmentation}},
  year={2020}
}
"""


def _as_long_tensor(maps, name: str, device=None) -> torch.Tensor:
    """A torch tensor (kept on its device unless `device` is given), NumPy array or nested list of class ids ->
    int64 tensor. Floating-point maps are refused: they are most likely logits or probabilities."""
    if isinstance(maps, torch.Tensor):
        tensor = maps
    else:
        array = np.asarray(maps)
        if array.dtype.kind not in "biu":
            raise TypeError(f"{name} must hold integer class ids, got a {array.dtype} array")
        # int64 first: torch.from_numpy does not take every unsigned dtype, and it needs a native, writable buffer.
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{name} must hold integer class ids (e.g. logits.argmax(dim=1)), got {tensor.dtype}")
    if device is not None:
        tensor = tensor.to(device)
    return tensor.long()


def confusion_matrix(predictions, references, num_labels: int, ignore_index=255) -> torch.Tensor:
    """(num_labels, num_labels) int64 confusion matrix: entry [t, p] counts the pixels of true class t predicted
    as p (rows = ground truth, columns = prediction).

    `predictions` and `references` are maps of class ids of the same shape -- (B, H, W), (H, W) or anything else:
    torch tensors (counted with `torch.bincount` on the predictions' device, where the result stays), NumPy
    arrays or nested lists. Pixels whose reference is `ignore_index` (None: none) are not counted. A counted
    prediction or reference outside [0, num_labels) raises ValueError.
    """
    num_labels = int(num_labels)
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    preds = _as_long_tensor(predictions, "predictions")
    refs = _as_long_tensor(references, "references", device=preds.device)
    if preds.shape != refs.shape:
        raise ValueError(
            f"predictions {tuple(preds.shape)} and references {tuple(refs.shape)} must have the same shape "
            "(pass class-id maps, e.g. logits upsampled to the label size and argmax-ed over classes)"
        )
    preds, refs = preds.reshape(-1), refs.reshape(-1)
    if ignore_index is not None:
        counted = refs != ignore_index
        preds, refs = preds[counted], refs[counted]
    if preds.numel():
        # One host sync per call, for the four extremes together.
        extremes = torch.stack([preds.min(), preds.max(), refs.min(), refs.max()])
        low_pred, high_pred, low_ref, high_ref = extremes.tolist()
        for what, low, high in (("prediction", low_pred, high_pred), ("reference", low_ref, high_ref)):
            bad = low if low < 0 else high if high >= num_labels else None
            if bad is not None:
                raise ValueError(
                    f"{what} class id {bad} is outside [0, {num_labels}) (num_labels={num_labels}, "
                    f"ignore_index={ignore_index})"
                )
    # Flat index t * num_labels + p; in place when `refs` is already our copy (saves one map-sized buffer).
    index = refs.mul_(num_labels) if ignore_index is not None else refs * num_labels
    counts = torch.bincount(index.add_(preds), minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def _label_name(id2label, index: int) -> str:
    """`id2label[index]`, whether its keys are ints or (after a JSON round trip) strings; the index if missing."""
    for key in (index, str(index)):
        if key in id2label:
            return str(id2label[key])
    return str(index)


def metrics_from_confusion(matrix, id2label=None) -> dict:
    """The metrics of a (num_labels, num_labels) confusion matrix (rows = ground truth, columns = prediction):
    `mean_iou`, `mean_accuracy`, `overall_accuracy`, `per_category_iou`, `per_category_accuracy` and, with
    `id2label`, one `iou_<name>` per class -- all plain Python floats (lists of them for the per-category keys).

    A class with union 0 (in neither references nor predictions) has NaN IoU and a class absent from the
    references NaN accuracy; the means leave the NaNs out (NaN when every class is NaN).
    """
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix, dtype=np.float64)  # float64 counts are exact up to 2**53 pixels
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {matrix.shape}")
    intersection = np.diag(matrix)
    label_area = matrix.sum(axis=1)
    prediction_area = matrix.sum(axis=0)
    union = label_area + prediction_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        accuracy = np.where(label_area > 0, intersection / label_area, np.nan)

    def nanmean(values) -> float:
        present = values[~np.isnan(values)]
        return float(present.mean()) if present.size else math.nan  # np.nanmean warns on all-NaN input

    total = matrix.sum()
    results = {
        "mean_iou": nanmean(iou),
        "mean_accuracy": nanmean(accuracy),
        "overall_accuracy": float(intersection.sum() / total) if total > 0 else math.nan,
        "per_category_iou": [float(value) for value in iou],
        "per_category_accuracy": [float(value) for value in accuracy],
    }
    if id2label is not None:
        for index, value in enumerate(iou):
            results[f"iou_{_label_name(id2label, index)}"] = float(value)
    return results


class StreamingMeanIoU:
    """Accumulates a confusion matrix over `update(predictions, references)` calls (one map or a batch at a time,
    torch on any device or NumPy); `compute()` gives `metrics_from_confusion` of everything so far, `reset()`
    starts over. Memory is one (num_labels, num_labels) int64 matrix, whatever the number of images.
    """

    def __init__(self, num_labels: int, ignore_index=255, id2label=None):
        self.num_labels = int(num_labels)
        self.ignore_index = ignore_index
        self.id2label = id2label
        self.reset()

    def reset(self) -> None:
        self.matrix = torch.zeros(self.num_labels, self.num_labels, dtype=torch.int64)

    def update(self, predictions, references) -> None:
        batch = confusion_matrix(predictions, references, self.num_labels, self.ignore_index)
        self.matrix += batch.cpu()  # a tiny copy; the range check in confusion_matrix has synced already

    def compute(self) -> dict:
        return metrics_from_confusion(self.matrix, self.id2label)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # No format="numpy": evaluate allows it only for `datasets.Value` features, so the maps come back as
            # nested Python lists and `_compute` turns them into arrays one at a time.
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
            reference_urls=[
                "https://github.com/open-mmlab/mmsegmentation/blob/main/mmseg/evaluation/metrics/iou_metric.py"
            ],
        )

    def _compute(self, predictions, references, num_labels, ignore_index=255, id2label=None):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        stream = StreamingMeanIoU(num_labels, ignore_index=ignore_index, id2label=id2label)
        for prediction, reference in zip(predictions, references):
            stream.update(prediction, reference)
        return stream.compute()
