"""Mean IoU from a streaming confusion matrix (`mae_hf/metrics/mean_iou.py`): the plain functions, the streaming
class and the offline `evaluate` metric, all checked against an independent NumPy computation."""

import importlib.util
import math
import sys
import uuid
import warnings

import numpy as np
import pytest
import torch

from mae_hf.metrics import (
    MEAN_IOU_PATH,
    METRICS_DIR,
    StreamingMeanIoU,
    confusion_matrix,
    load_mean_iou,
    metrics_from_confusion,
)

NUM_LABELS = 12
IGNORE = 255
KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy")


def random_maps(seed=0, batch=4, height=24, width=20):
    """(B, H, W) int64 predictions and references over NUM_LABELS = 12 classes with ~10 % ignored pixels, where
    class 9 is only in the references, class 10 only in the predictions and class 11 in neither."""
    rng = np.random.default_rng(seed)
    references = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], size=(batch, height, width))
    predictions = references.copy()
    wrong = rng.random(references.shape) < 0.45  # enough errors that IoU is far from 0 and 1
    predictions[wrong] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 10], size=int(wrong.sum()))
    predictions[predictions == 9] = 10
    references[rng.random(references.shape) < 0.1] = IGNORE
    return predictions, references


def reference_confusion(predictions, references, num_labels=NUM_LABELS, ignore_index=IGNORE):
    """Independent NumPy confusion matrix (rows: truth, columns: prediction) with np.add.at."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    counted = references != ignore_index
    np.add.at(matrix, (references[counted], predictions[counted]), 1)
    return matrix


def reference_metrics(predictions, references, num_labels=NUM_LABELS, ignore_index=IGNORE):
    """Independent per-class counts straight from the maps (no confusion matrix), mmsegmentation's definitions."""
    counted = references != ignore_index
    ious, accuracies = [], []
    for c in range(num_labels):
        true_c, pred_c = (references == c) & counted, (predictions == c) & counted
        tp = int((true_c & pred_c).sum())
        fn = int((true_c & ~pred_c).sum())
        fp = int((~true_c & pred_c).sum())
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        accuracies.append(tp / (tp + fn) if tp + fn else math.nan)
    correct = int(((predictions == references) & counted).sum())
    return {
        "mean_iou": float(np.nanmean(ious)),
        "mean_accuracy": float(np.nanmean(accuracies)),
        "overall_accuracy": correct / int(counted.sum()),
        "per_category_iou": ious,
        "per_category_accuracy": accuracies,
    }


def assert_same_metrics(result, expected, tol=1e-9):
    assert set(expected) <= set(result)
    for key, want in expected.items():
        got = result[key]
        if isinstance(want, list):
            assert isinstance(got, list) and len(got) == len(want), key
            pairs = list(zip(got, want))
        else:
            pairs = [(got, want)]
        for g, w in pairs:
            assert type(g) is float, (key, type(g))  # plain Python floats, not NumPy/torch scalars
            assert (math.isnan(g) and math.isnan(w)) or abs(g - w) <= tol, (key, g, w)


def test_confusion_matrix_and_metrics_match_independent_numpy():
    predictions, references = random_maps()
    matrix = confusion_matrix(predictions, references, NUM_LABELS, ignore_index=IGNORE)
    assert isinstance(matrix, torch.Tensor) and matrix.dtype == torch.int64
    assert matrix.shape == (NUM_LABELS, NUM_LABELS)
    np.testing.assert_array_equal(matrix.numpy(), reference_confusion(predictions, references))
    assert int(matrix.sum()) == int((references != IGNORE).sum())  # ignored pixels are not counted

    expected = reference_metrics(predictions, references)
    # The test data is what it claims: 9 only in references (IoU 0, accuracy 0), 10 only in predictions
    # (IoU 0, accuracy NaN), 11 nowhere (both NaN), and the rest meaningful.
    assert expected["per_category_iou"][9] == 0 and expected["per_category_accuracy"][9] == 0
    assert expected["per_category_iou"][10] == 0 and math.isnan(expected["per_category_accuracy"][10])
    assert math.isnan(expected["per_category_iou"][11]) and math.isnan(expected["per_category_accuracy"][11])
    assert 0.2 < expected["mean_iou"] < 0.8

    result = metrics_from_confusion(matrix)
    assert set(result) == set(expected)
    assert_same_metrics(result, expected)
    assert_same_metrics(metrics_from_confusion(matrix.numpy()), expected)  # a NumPy matrix too


def test_id2label_adds_flat_iou_keys_int_or_str_keys():
    predictions, references = random_maps(seed=1)
    expected = reference_metrics(predictions, references)
    matrix = confusion_matrix(predictions, references, NUM_LABELS)
    names = [f"class{i}" for i in range(NUM_LABELS)]
    for id2label in ({i: n for i, n in enumerate(names)}, {str(i): n for i, n in enumerate(names)}):
        result = metrics_from_confusion(matrix, id2label=id2label)
        assert_same_metrics(result, expected)
        assert set(result) == set(expected) | {f"iou_{n}" for n in names}
        assert_same_metrics(
            {f"iou_{n}": result[f"iou_{n}"] for n in names},
            {f"iou_{n}": expected["per_category_iou"][i] for i, n in enumerate(names)},
        )


def test_streaming_over_several_updates_equals_one_shot():
    predictions, references = random_maps(seed=2, batch=7)
    one_shot = metrics_from_confusion(confusion_matrix(predictions, references, NUM_LABELS))
    stream = StreamingMeanIoU(NUM_LABELS, ignore_index=IGNORE)
    stream.update(predictions[:3], references[:3])  # a batch
    stream.update(torch.from_numpy(predictions[3]), torch.from_numpy(references[3]))  # one (H, W) map, torch
    stream.update(predictions[4:], references[4:])
    np.testing.assert_array_equal(stream.matrix.numpy(), reference_confusion(predictions, references))
    streamed = stream.compute()
    assert_same_metrics(streamed, one_shot, tol=0)
    assert_same_metrics(streamed, reference_metrics(predictions, references))

    stream.reset()
    assert int(stream.matrix.sum()) == 0
    stream.update(predictions[:1], references[:1])
    assert_same_metrics(stream.compute(), reference_metrics(predictions[:1], references[:1]))


def test_evaluate_metric_loaded_by_path_offline_gives_the_same(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = load_mean_iou(cache_dir=str(tmp_path))
    # evaluate ran a copy of *our* script, not a Hub metric.
    module = sys.modules[type(metric).__module__]
    assert type(metric).__name__ == "MeanIoU" and module.__name__.startswith("evaluate_modules.metrics.mean_iou.")
    with open(module.__file__) as copy, open(MEAN_IOU_PATH) as ours:
        assert copy.read() == ours.read()
    assert MEAN_IOU_PATH.startswith(METRICS_DIR)
    assert metric.description and metric.citation and "ignore_index" in metric.inputs_description

    predictions, references = random_maps(seed=3, batch=5)
    expected = reference_metrics(predictions, references)
    id2label = {i: f"c{i}" for i in range(NUM_LABELS)}
    # One (N, H, W) array; then (H, W) arrays one example at a time; then a batch of nested lists.
    result = metric.compute(predictions=predictions, references=references, num_labels=NUM_LABELS, id2label=id2label)
    assert_same_metrics(result, expected)
    assert result["iou_c3"] == pytest.approx(expected["per_category_iou"][3], abs=1e-9)
    for prediction, reference in zip(predictions, references):
        metric.add(predictions=prediction, references=reference)
    assert_same_metrics(metric.compute(num_labels=NUM_LABELS), expected)
    metric.add_batch(predictions=predictions.tolist(), references=references.tolist())
    assert_same_metrics(metric.compute(num_labels=NUM_LABELS, ignore_index=IGNORE), expected)


def test_evaluate_metric_takes_maps_of_different_sizes(no_network, tmp_path):
    predictions, references = random_maps(seed=4, batch=2)
    small_p, small_r = predictions[1, :5, :7], references[1, :5, :7]
    metric = load_mean_iou(cache_dir=str(tmp_path))
    result = metric.compute(
        predictions=[predictions[0], small_p], references=[references[0], small_r], num_labels=NUM_LABELS
    )
    both_p = np.concatenate([predictions[0].ravel(), small_p.ravel()])
    both_r = np.concatenate([references[0].ravel(), small_r.ravel()])
    assert_same_metrics(result, reference_metrics(both_p, both_r))


def test_ignored_pixels_do_not_count_in_overall_accuracy():
    references = np.array([[0, 1, IGNORE, IGNORE], [1, 1, IGNORE, IGNORE]])
    predictions = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])  # the ignored pixels happen to be predicted 1
    result = metrics_from_confusion(confusion_matrix(predictions, references, 2))
    # 3 of the 4 counted pixels are right; counting the ignored ones would give 3/8 (as wrong) or 7/8 (as right).
    assert result["overall_accuracy"] == 0.75
    assert result["per_category_iou"] == [0.5, 2 / 3] and result["per_category_accuracy"] == [1.0, 2 / 3]
    assert_same_metrics(result, reference_metrics(predictions, references, num_labels=2))


def test_absent_class_is_nan_and_left_out_of_the_means():
    references = np.array([[0, 0, 1], [1, 2, 2]])
    predictions = np.array([[0, 1, 1], [1, 2, 0]])
    result = metrics_from_confusion(confusion_matrix(predictions, references, 4), id2label={3: "absent"})
    iou, accuracy = result["per_category_iou"], result["per_category_accuracy"]
    assert math.isnan(iou[3]) and math.isnan(accuracy[3]) and math.isnan(result["iou_absent"])
    assert iou[:3] == [1 / 3, 2 / 3, 1 / 2] and accuracy[:3] == [1 / 2, 1.0, 1 / 2]
    assert result["mean_iou"] == pytest.approx(sum(iou[:3]) / 3, abs=1e-12)  # the mean of 3 classes, not 4
    assert result["mean_accuracy"] == pytest.approx(2 / 3, abs=1e-12)


def test_nothing_counted_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics_from_confusion(confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), IGNORE), 3))
    assert all(math.isnan(result[key]) for key in KEYS)
    assert all(math.isnan(v) for v in result["per_category_iou"] + result["per_category_accuracy"])


def test_out_of_range_ids_raise_value_error_naming_the_value():
    references = np.array([[0, 1], [2, 1]])
    with pytest.raises(ValueError, match=r"prediction class id 7 is outside \[0, 3\)"):
        confusion_matrix(np.array([[0, 7], [2, 1]]), references, 3)
    with pytest.raises(ValueError, match="prediction class id -1"):
        confusion_matrix(torch.tensor([[0, -1], [2, 1]]), torch.from_numpy(references), 3)
    with pytest.raises(ValueError, match="prediction class id 3 "):  # == num_labels, through the stream too
        StreamingMeanIoU(3).update(np.array([[3, 1], [2, 1]]), references)
    with pytest.raises(ValueError, match="reference class id 150 "):  # e.g. labels not reduced
        confusion_matrix(references, np.array([[0, 150], [2, 1]]), 3)
    # An out-of-range prediction on an ignored pixel is not counted, so it is no error.
    matrix = confusion_matrix(np.array([[0, IGNORE], [2, 1]]), np.array([[0, IGNORE], [2, 1]]), 3)
    assert int(matrix.trace()) == 3
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 3, 4), int), np.zeros((2, 4, 3), int), 3)
    with pytest.raises(TypeError, match="integer class ids"):  # logits by mistake
        confusion_matrix(torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long), 3)


def test_torch_numpy_and_list_inputs_agree():
    predictions, references = random_maps(seed=5, batch=3)
    expected = reference_confusion(predictions, references)
    inputs = [
        (predictions, references),
        (torch.from_numpy(predictions), torch.from_numpy(references)),
        (torch.from_numpy(predictions).to(torch.uint8), torch.from_numpy(references).to(torch.uint8)),
        (predictions.astype(np.uint8), references.astype(np.int32)),
        (torch.from_numpy(predictions).int(), references),  # mixed: references go to the predictions' device
        (predictions.tolist(), references.tolist()),
        (np.asfortranarray(predictions[:, ::-1]), np.asfortranarray(references[:, ::-1])),  # strided views
    ]
    for p, r in inputs:
        matrix = confusion_matrix(p, r, NUM_LABELS)
        assert matrix.device.type == "cpu"
        np.testing.assert_array_equal(matrix.numpy(), expected)
    # (H, W) maps one by one sum to the (B, H, W) matrix.
    np.testing.assert_array_equal(
        sum(confusion_matrix(torch.from_numpy(p), r, NUM_LABELS) for p, r in zip(predictions, references)).numpy(),
        expected,
    )


def import_mean_iou_module():
    """`mean_iou.py` imported as a module by its path (as evaluate does, without evaluate's modules cache), afresh."""
    spec = importlib.util.spec_from_file_location(f"mae_hf_mean_iou_{uuid.uuid4().hex}", MEAN_IOU_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imported_by_path_and_as_package_names_are_the_same_code():
    module = import_mean_iou_module()
    assert module.__file__ == MEAN_IOU_PATH
    predictions, references = random_maps(seed=6)
    stream = module.StreamingMeanIoU(NUM_LABELS)
    stream.update(predictions, references)
    assert_same_metrics(
        stream.compute(), metrics_from_confusion(confusion_matrix(predictions, references, NUM_LABELS)), tol=0
    )
    from mae_hf.metrics import mean_iou

    assert StreamingMeanIoU is mean_iou.StreamingMeanIoU and confusion_matrix is mean_iou.confusion_matrix
    # evaluate takes the first evaluate.Metric subclass it finds: there must be exactly one.
    import evaluate

    subclasses = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, evaluate.Metric)]
    assert [cls.__name__ for cls in subclasses] == ["MeanIoU"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_counts_on_the_gpu():
    predictions, references = random_maps(seed=7)
    matrix = confusion_matrix(torch.from_numpy(predictions).cuda(), references, NUM_LABELS)
    assert matrix.device.type == "cuda"
    np.testing.assert_array_equal(matrix.cpu().numpy(), reference_confusion(predictions, references))


def test_matches_torchmetrics_if_installed():
    try:
        from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_jaccard_index
    except ImportError:
        pytest.skip("torchmetrics is not installed (an optional second reference)")
    predictions, references = (torch.from_numpy(x) for x in random_maps(seed=8))
    ours = confusion_matrix(predictions, references, NUM_LABELS)
    theirs = multiclass_confusion_matrix(predictions, references, NUM_LABELS, ignore_index=IGNORE)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    iou = metrics_from_confusion(ours)["per_category_iou"]
    their_iou = multiclass_jaccard_index(predictions, references, NUM_LABELS, average="none", ignore_index=IGNORE)
    present = [c for c in range(NUM_LABELS) if not math.isnan(iou[c])]  # torchmetrics gives 0 for absent classes
    np.testing.assert_allclose([iou[c] for c in present], their_iou[present].double().numpy(), atol=1e-6)


def test_inputs_are_not_modified_and_ignore_index_none_counts_everything():
    predictions, references = random_maps(seed=9)
    references[references == IGNORE] = 0
    torch_p, torch_r = torch.from_numpy(predictions.copy()), torch.from_numpy(references.copy())
    for ignore_index in (IGNORE, None):
        matrix = confusion_matrix(torch_p, torch_r, NUM_LABELS, ignore_index=ignore_index)
        np.testing.assert_array_equal(matrix.numpy(), reference_confusion(predictions, references))
        assert int(matrix.sum()) == references.size
    np.testing.assert_array_equal(torch_p.numpy(), predictions)
    np.testing.assert_array_equal(torch_r.numpy(), references)
