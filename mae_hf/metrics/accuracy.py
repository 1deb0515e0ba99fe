"""Top-1 / top-5 classification accuracy as an offline `evaluate` metric.

`evaluate.load("accuracy")` fetches its script from the Hugging Face Hub; this file is loaded by local path
instead (`mae_hf.metrics.load_accuracy()`). evaluate copies it alone into its modules cache and imports it from
there, so it must stay self-contained: no relative or `mae_hf` imports, one import per line (evaluate's import
scanner reads only the first module of `import a, b`), only installed libraries, and `Accuracy` must stay the
only `evaluate.Metric` subclass here (evaluate takes the first one it finds).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Accuracy of ranked class predictions. `predictions` holds, per example, the class ids ranked best first (the
top-k indices of the logits, k >= 1) or a single predicted class id; `references` holds the true class ids.
`accuracy` is the share of examples whose best prediction is the label (top-1); `top5_accuracy`, reported only
when at least 5 ranked predictions are given, is the share whose label is among the first 5. Examples labelled
`ignore_index` are not counted.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`, shape (N, k), or `list` of `int`, shape (N,)): predicted class ids,
        best first.
    references (`list` of `int`, shape (N,)): true class ids.
    ignore_index (`int`, defaults to -100): examples with this reference are left out of both counts.

Returns:
    accuracy (`float`): top-1 share of the counted examples, in [0, 1] (NaN when no example is counted).
    top5_accuracy (`float`): top-5 share; only when k >= 5.

Examples:
    >>> accuracy = mae_hf.metrics.load_accuracy()
    >>> accuracy.compute(predictions=[[2, 0, 1, 3, 4], [1, 2, 0, 3, 4]], references=[2, 0])
    {'accuracy': 0.5, 'top5_accuracy': 1.0}
    >>> accuracy.compute(predictions=[2, 1, 0], references=[2, 0, -100])
    {'accuracy': 0.5}
"""

_CITATION = """\
@inproceedings{he2022masked,
  title={Masked Autoencoders Are Scalable Vision Learners},
  author={He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle={CVPR},
  year={2022}
}
"""


def _features(ranked: bool) -> datasets.Features:
    predictions = datasets.Sequence(datasets.Value("int64")) if ranked else datasets.Value("int64")
    return datasets.Features({"predictions": predictions, "references": datasets.Value("int64")})


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # evaluate picks, from the first example, the first configuration that encodes it: ranked (N, k)
            # lists, else single (N,) ids.
            features=[_features(ranked=True), _features(ranked=False)],
            # No format="numpy": evaluate allows it only with a single, all-`Value` configuration, so the
            # columns come back as Python lists and `_compute` makes the arrays.
            reference_urls=["https://github.com/facebookresearch/mae/blob/main/engine_finetune.py"],
        )

    def _compute(self, predictions, references, ignore_index=-100):
        if len(predictions) and np.ndim(predictions[0]) and len({len(row) for row in predictions}) > 1:
            raise ValueError("Accuracy: every example needs the same number of ranked predictions")
        ranked = np.asarray(predictions, dtype=np.int64)
        if ranked.ndim == 1:
            ranked = ranked[:, None]  # (N,) -> (N, 1)
        labels = np.asarray(references).reshape(-1)
        kept = labels != ignore_index
        ranked, labels = ranked[kept], labels[kept]
        hits = ranked == labels[:, None]  # (N, k): at most one True per row
        # An empty evaluation has no accuracy; NaN (np.mean of nothing) says so instead of a misleading 0.
        mean = (lambda x: float(x.mean())) if len(labels) else (lambda x: float("nan"))
        results = {"accuracy": mean(hits[:, 0])}
        if ranked.shape[1] >= 5:
            results["top5_accuracy"] = mean(hits[:, :5].any(axis=1))
        return results
