"""The feature monitor: DINO's weighted k-NN against a plain re-implementation of its definition, the linear probe,
features in dataset order, its arguments' errors, and that it tells a pretrained encoder from broken ones."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from mae_hf import MAEModel
from mae_hf.feature_metrics import fit_logistic_regression, knn_top1, linear_probe_top1
from mae_hf.monitor import FeatureMonitor, MonitorArguments, encoder_features, random_subset, shard_batches

TINY_PRETRAINED = Path(__file__).parent / "data" / "tiny_mae_digits"


def knn_reference(train, train_labels, test, test_labels, num_classes, k, temperature) -> float:
    """DINO's weighted k-NN written from its definition, one test image at a time, in float64."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = 0
    for query, label in zip(test, test_labels):
        similarity = train @ query
        neighbours = np.argsort(-similarity, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in neighbours:
            votes[train_labels[j]] += np.exp(similarity[j] / temperature)
        correct += int(np.argmax(votes) == label)
    return correct / len(test)


@pytest.mark.parametrize("k, temperature, chunk_size", [(20, 0.07, 1024), (5, 0.5, 7), (1, 0.07, 3), (200, 0.07, 50)])
def test_knn_matches_its_definition(k, temperature, chunk_size):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    train_labels, test_labels = rng.integers(0, 5, 120), rng.integers(0, 5, 40)
    train = centres[train_labels] + 1.5 * rng.normal(size=(120, 16))
    test = centres[test_labels] + 1.5 * rng.normal(size=(40, 16))
    expected = knn_reference(train, train_labels, test, test_labels, 5, min(k, 120), temperature)
    got = knn_top1(
        torch.tensor(train, dtype=torch.float32),
        torch.tensor(train_labels),
        torch.tensor(test, dtype=torch.float32),
        torch.tensor(test_labels),
        5,
        k,
        temperature,
        chunk_size,
    )
    assert got == expected and 0.3 < got < 1  # neither trivial nor hopeless


def test_knn_votes_are_weighted_by_similarity():
    # Neighbours of the query (1, 0): one of class 1 at similarity 1.0, two of class 0 at 0.8. A majority vote says
    # 0; DINO's weights exp(s / 0.07) say 1 (exp(1/0.07) > 2 exp(0.8/0.07)); at T = 10 the weights are nearly equal.
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    labels, query = torch.tensor([1, 0, 0]), torch.tensor([[2.0, 0.0]])  # cosine: the length does not matter
    assert knn_top1(train, labels, query, torch.tensor([1]), num_classes=2, k=3, temperature=0.07) == 1.0
    assert knn_top1(train, labels, query, torch.tensor([0]), num_classes=2, k=3, temperature=10.0) == 1.0


def test_linear_probe_separates_separable_classes_and_ignores_feature_scale():
    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, 3, 90))
    features = torch.tensor(rng.normal(size=(90, 8)), dtype=torch.float32)
    features[:, 0] += 6 * labels  # class written along one axis
    assert linear_probe_top1(features[:60], labels[:60], features[60:], labels[60:]) == 1.0
    noisy = features.clone()
    noisy[:, 0] = torch.tensor(rng.normal(size=90), dtype=torch.float32)
    chance = linear_probe_top1(noisy[:60], labels[:60], noisy[60:], labels[60:])
    scaled = linear_probe_top1(1e3 * noisy[:60], labels[:60], 1e3 * noisy[60:], labels[60:])
    assert chance < 0.7 and scaled == chance  # standardised: the probe does not depend on the features' scale
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe_top1(features[:5], torch.zeros(5, dtype=torch.long), features[5:9], labels[5:9])


def test_device_probe_minimises_scikit_learns_objective():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    features = rng.normal(size=(4, 12))[labels] + 1.5 * rng.normal(size=(300, 12))
    reference = LogisticRegression(tol=1e-10, max_iter=10_000).fit(features, labels)
    weight, bias = fit_logistic_regression(torch.tensor(features), torch.tensor(labels), 4, tolerance=1e-10)
    np.testing.assert_allclose(weight.numpy(), reference.coef_.T, atol=1e-3)
    # softmax ignores a shift shared by all classes, and the bias has no penalty to pin it: compare centred
    np.testing.assert_allclose(
        bias.numpy() - bias.numpy().mean(), reference.intercept_ - reference.intercept_.mean(), atol=1e-3
    )
    train, test = torch.tensor(features[:200], dtype=torch.float32), torch.tensor(features[200:], dtype=torch.float32)
    accuracies = [
        linear_probe_top1(train, torch.tensor(labels[:200]), test, torch.tensor(labels[200:]), backend=b)
        for b in ("sklearn", "torch")
    ]
    assert abs(accuracies[0] - accuracies[1]) <= 0.01 and 0.5 < accuracies[0] < 1


def test_features_come_in_dataset_order_whatever_the_batch_size():
    config = tiny_config(image_size=8, patch_size=2, num_channels=1)
    monitor = FeatureMonitor.from_arguments(
        MonitorArguments(monitor_dataset="digits", monitor_train_samples=37, monitor_crop_pct=1.0), config
    )
    encoder = MAEModel(config).eval()
    data = monitor.splits[0]
    pixels = torch.stack([data[i]["pixel_values"] for i in range(len(data))])
    with torch.no_grad():
        hidden = encoder(pixels).last_hidden_state
    for batch_size in (5, 64):
        features = encoder_features(encoder, shard_batches(data, batch_size), len(data), torch.device("cpu"))
        torch.testing.assert_close(features["cls"], hidden[:, 0])
        torch.testing.assert_close(features["mean"], hidden[:, 1:].mean(dim=1))
        assert features["labels"].tolist() == [data[i]["labels"] for i in range(len(data))]


def test_random_subset_is_fixed_and_spread_over_the_data():
    from datasets import Dataset

    sorted_by_class = Dataset.from_dict({"label": [i // 100 for i in range(1000)]})
    subset = random_subset(sorted_by_class, 50)
    assert subset["label"] == random_subset(sorted_by_class, 50)["label"] and len(set(subset["label"])) == 10
    assert len(random_subset(sorted_by_class, 0)) == 1000 and len(random_subset(sorted_by_class, 5000)) == 1000


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"monitor_knn_k": 0}, "--monitor_knn_k must be >= 1"),
        ({"monitor_knn_temperature": 0.0}, "--monitor_knn_temperature must be > 0"),
        ({"monitor_train_samples": -1}, "--monitor_train_samples must be >= 0"),
        ({"monitor_crop_pct": 1.5}, r"--monitor_crop_pct must be in \(0, 1\]"),
    ],
)
def test_bad_arguments(fields, message):
    with pytest.raises(ValueError, match=message):
        MonitorArguments(**fields)


def test_missing_label_column_and_two_sources_are_refused():
    config = tiny_config(image_size=8, patch_size=2, num_channels=1)
    arguments = MonitorArguments(monitor_dataset="digits", monitor_label_column_name="digit")
    with pytest.raises(ValueError, match=r"--monitor_label_column_name 'digit' is not a column.*\['image', 'label'\]"):
        FeatureMonitor.from_arguments(arguments, config)
    with pytest.raises(ValueError, match="--monitor_dataset or --monitor_train_dir, not both"):
        FeatureMonitor.from_arguments(MonitorArguments(monitor_dataset="digits", monitor_train_dir="x"), config)


def test_monitor_tells_a_pretrained_encoder_from_broken_ones():
    """tests/data/tiny_mae_digits: the encoder of a tiny MAE pretrained on the digits' training images
    (tests/data/make_tiny_mae_digits.py). Zeroed position tables (what transformers 5.x's ViTMAE starts from) or
    random weights must score clearly lower."""
    pretrained = MAEModel.from_pretrained(TINY_PRETRAINED)
    monitor = FeatureMonitor.from_arguments(
        MonitorArguments(monitor_dataset="digits", monitor_crop_pct=1.0), pretrained.config, batch_size=512
    )
    cpu = torch.device("cpu")
    scores = {"pretrained": monitor(pretrained, cpu)}
    pretrained.pos_embed.zero_()
    scores["zeroed position tables"] = monitor(pretrained, cpu)
    torch.manual_seed(0)
    scores["random weights"] = monitor(MAEModel(pretrained.config), cpu)
    # Measured: k-NN top-1 (cls / mean) 84.8 / 91.6 pretrained, 48.1 / 59.3 zeroed tables, 50.5 / 40.1 random;
    # linear probe 89.2 / 93.6, 64.0 / 66.7, 82.5 / 84.2 (random features of 8x8 digits are quite separable).
    for broken in ("zeroed position tables", "random weights"):
        for pooling in ("cls", "mean"):
            knn, linear = f"eval_knn_top1_{pooling}", f"eval_linear_top1_{pooling}"
            assert scores[broken][knn] < scores["pretrained"][knn] - 0.2, (broken, scores)
            assert scores[broken][linear] < scores["pretrained"][linear] - 0.05, (broken, scores)


def test_mean_and_std_come_from_the_image_processor(tmp_path):
    # The saved image processor is the one source of mean/std: the monitor normalised with ImageNet's whatever the
    # run (or the saved model, for `python -m mae_hf.evaluate_features`) used.
    from transformers import ViTImageProcessor

    from mae_hf.evaluate_features import saved_processor

    config = tiny_config(image_size=8, patch_size=2, num_channels=1)
    arguments = MonitorArguments(monitor_dataset="digits", monitor_train_samples=4, monitor_crop_pct=1.0)
    default = FeatureMonitor.from_arguments(arguments, config).splits[0][0]["pixel_values"]
    ViTImageProcessor(image_mean=[0.0], image_std=[1.0]).save_pretrained(tmp_path)
    processor = saved_processor(str(tmp_path))
    assert list(processor.image_mean) == [0.0] and saved_processor(str(tmp_path / "none")) is None
    plain = FeatureMonitor.from_arguments(arguments, config, processor=processor).splits[0][0]["pixel_values"]
    assert 0 <= plain.min() and plain.max() <= 1  # x / 255: mean 0, std 1
    torch.testing.assert_close(default, (plain - 0.449) / 0.226, atol=1e-5, rtol=0)
