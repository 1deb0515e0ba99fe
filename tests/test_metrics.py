"""The offline top-1/top-5 accuracy metric (an `evaluate` script loaded by path) and its logits preprocessing."""

import os
import sys

import numpy as np
import pytest
import torch

from mae_hf.metrics import ACCURACY_PATH, METRICS_DIR, load_accuracy, top_k_predictions


@pytest.fixture
def accuracy(no_network, tmp_path):
    return load_accuracy(cache_dir=str(tmp_path))


def reference_accuracy(logits: np.ndarray, labels: np.ndarray, ignore_index: int = -100) -> dict:
    """Independent NumPy top-1/top-5: a label is in the top 5 when fewer than 5 classes score strictly higher
    (no sorting; random float logits have no ties)."""
    kept = labels != ignore_index
    logits, labels = logits[kept], labels[kept]
    label_score = logits[np.arange(len(labels)), labels]
    rank = (logits > label_score[:, None]).sum(axis=1)
    return {"accuracy": float(np.mean(rank == 0)), "top5_accuracy": float(np.mean(rank < 5))}


def random_batch(rng, n=64, classes=10):
    logits = rng.standard_normal((n, classes))
    labels = rng.integers(0, classes, n)
    labels[rng.random(n) < 0.2] = -100
    # Make top-1 right for some examples, so accuracy isn't just ~1/classes and ~5/classes.
    hit = rng.random(n) < 0.4
    logits[hit & (labels >= 0), labels[hit & (labels >= 0)]] += 10.0
    return logits, labels


def test_loads_from_the_local_script_with_the_hub_offline(accuracy):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert ACCURACY_PATH == os.path.join(METRICS_DIR, "accuracy.py") and os.path.isabs(ACCURACY_PATH)
    # evaluate ran a copy of *our* script (not a Hub metric cached under "evaluate-metric--accuracy").
    module = sys.modules[type(accuracy).__module__]
    assert module.__name__.startswith("evaluate_modules.metrics.accuracy.")
    with open(module.__file__) as copy, open(ACCURACY_PATH) as ours:
        assert copy.read() == ours.read()
    assert type(accuracy).__name__ == "Accuracy" and "top5_accuracy" in accuracy.inputs_description
    assert accuracy.citation and accuracy.description


def test_each_load_has_its_own_experiment_id(no_network, tmp_path):
    first, second = load_accuracy(cache_dir=str(tmp_path)), load_accuracy(cache_dir=str(tmp_path))
    assert first.experiment_id != second.experiment_id
    first.add_batch(predictions=[1, 2], references=[1, 2])
    second.add_batch(predictions=[0, 0], references=[1, 2])
    assert first.compute() == {"accuracy": 1.0} and second.compute() == {"accuracy": 0.0}


def test_matches_numpy_on_random_logits(accuracy):
    rng = np.random.default_rng(0)
    logits, labels = random_batch(rng)
    ranked = top_k_predictions(torch.from_numpy(logits)).numpy()
    result = accuracy.compute(predictions=ranked, references=labels)
    expected = reference_accuracy(logits, labels)
    assert result.keys() == expected.keys()
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert result["top5_accuracy"] == pytest.approx(expected["top5_accuracy"], abs=1e-12)
    assert 0.0 < result["accuracy"] < result["top5_accuracy"] < 1.0  # a nontrivial case


def test_ignore_index_is_configurable(accuracy):
    result = accuracy.compute(predictions=[[3, 1], [0, 1], [2, 1]], references=[3, 1, 7], ignore_index=7)
    assert result == {"accuracy": 0.5}
    # With the default -100, the 7 is an ordinary (wrong) label.
    assert accuracy.compute(predictions=[[3, 1], [0, 1], [2, 1]], references=[3, 1, 7]) == {"accuracy": 1 / 3}


def test_single_predictions_and_short_rankings_report_top1_only(accuracy):
    assert accuracy.compute(predictions=[2, 1, 0, 5], references=[2, 0, -100, 5]) == {"accuracy": 2 / 3}
    assert accuracy.compute(predictions=np.array([[2, 0, 1, 3], [1, 2, 0, 3]]), references=[2, 0]) == {"accuracy": 0.5}


def test_streaming_batches_equals_one_shot(accuracy, tmp_path):
    rng = np.random.default_rng(1)
    logits, labels = random_batch(rng, n=100, classes=7)
    ranked = top_k_predictions(torch.from_numpy(logits)).numpy()
    for start in range(0, 100, 32):  # uneven last batch
        accuracy.add_batch(predictions=ranked[start : start + 32], references=labels[start : start + 32])
    streamed = accuracy.compute()
    one_shot = load_accuracy(cache_dir=str(tmp_path)).compute(predictions=ranked, references=labels)
    assert streamed == one_shot == reference_accuracy(logits, labels)


def test_ragged_rankings_are_rejected(accuracy):
    with pytest.raises(ValueError, match="same number"):
        accuracy.compute(predictions=[[1, 2], [1]], references=[1, 1])


@pytest.mark.parametrize("classes", [3, 5, 12])
def test_top_k_predictions_are_topk_indices(classes):
    logits = torch.randn(6, classes)
    ranked = top_k_predictions(logits)
    assert ranked.dtype == torch.long and ranked.shape == (6, min(5, classes))
    assert torch.equal(ranked, torch.topk(logits, min(5, classes)).indices)
    # Best first: the scores along each row never increase.
    scores = logits.gather(1, ranked)
    assert (scores[:, 1:] <= scores[:, :-1]).all()


def test_top_k_predictions_takes_the_first_of_a_tuple():
    logits = torch.randn(4, 8)
    assert torch.equal(top_k_predictions((logits, torch.randn(4, 3)), k=2), torch.topk(logits, 2).indices)
