"""How good frozen features are for classification: DINO's weighted k-NN classifier and a linear probe.

Both take features (N, D) of a labelled training set (the k-NN bank, the probe's training data) and of a test set,
and return the top-1 accuracy on the test set as a share in [0, 1] (like the classification script's
`eval_accuracy`).
"""

import warnings

import numpy as np
import torch
import torch.nn.functional as F

KNN_K = 20  # DINO eval_knn.py: "20 is usually working the best"
KNN_TEMPERATURE = 0.07  # DINO eval_knn.py --temperature (from Wu et al. 2018, instance discrimination)


@torch.no_grad()
def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 1024,
) -> float:
    """Weighted k-NN top-1 as DINO's `eval_knn.knn_classifier`: features are L2-normalised, each test image takes
    its k most cosine-similar training images, and each neighbour votes for its class with weight
    exp(similarity / temperature); the class with the largest sum wins.

    train_features (N, D), train_labels (N,) class ids in [0, num_classes), test_features (M, D), test_labels (M,);
    k is capped at N. Runs on the features' device, `chunk_size` test images at a time (memory chunk_size x N).
    """
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError(f"k-NN needs training and test features, got {len(train_features)} and {len(test_features)}")
    bank = F.normalize(train_features.float(), dim=1)  # (N, D)
    queries = F.normalize(test_features.float(), dim=1)  # (M, D)
    bank_labels = train_labels.to(bank.device).long()
    test_labels = test_labels.to(bank.device).long()
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), chunk_size):
        similarity = queries[start : start + chunk_size] @ bank.T  # (b, N) cosine similarities
        top_similarity, top_index = similarity.topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(similarity), num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[top_index], (top_similarity / temperature).exp())  # (b, C)
        correct += (votes.argmax(dim=1) == test_labels[start : start + chunk_size]).sum().item()
    return correct / len(queries)


def linear_probe_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    max_iter: int = 1000,
    backend: str = "auto",
) -> float:
    """A linear probe on frozen features: multinomial logistic regression (L2, C = 1, no penalty on the bias) on
    features standardised with the training set's mean and std (the role of MAE's BatchNorm(affine=False) in front
    of its linear probe, paper Tab. 10). Deterministic: the same features give the same accuracy.

    backend: "sklearn" (scikit-learn's LogisticRegression, L-BFGS, on the CPU), "torch" (the same objective
    minimised by torch.optim.LBFGS on the features' device, for large sets on GPUs), "auto" (torch for CUDA
    features, else sklearn). Shapes as `knn_top1`. Cost grows with N x D x classes: bound N for large sets.
    """
    if len(torch.unique(train_labels)) < 2:
        raise ValueError(f"a linear probe needs at least 2 classes in its training labels, got {train_labels.unique()}")
    if backend == "auto":
        backend = "torch" if train_features.is_cuda else "sklearn"
    if backend == "torch":
        return _torch_probe_top1(train_features, train_labels, test_features, test_labels, max_iter)
    if backend != "sklearn":
        raise ValueError(f"backend must be 'auto', 'sklearn' or 'torch', got {backend!r}")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = (np.asarray(f.float().cpu(), dtype=np.float64) for f in (train_features, test_features))
    train_y, test_y = (np.asarray(labels.cpu()) for labels in (train_labels, test_labels))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():  # a probe stopped at max_iter still says how separable the features are
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def _torch_probe_top1(train_features, train_labels, test_features, test_labels, max_iter: int) -> float:
    dtype = torch.promote_types(train_features.dtype, torch.float32)  # bf16 features are fitted in float32
    train_x = train_features.to(dtype)
    mean, std = train_x.mean(dim=0), train_x.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # StandardScaler leaves constant features unscaled
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight, bias = fit_logistic_regression((train_x - mean) / std, train_labels, num_classes, max_iter=max_iter)
    predictions = (((test_features.to(dtype) - mean) / std) @ weight + bias).argmax(dim=1)
    return (predictions == test_labels.to(predictions.device)).to(dtype).mean().item()


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    c: float = 1.0,
    max_iter: int = 1000,
    tolerance: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's multinomial LogisticRegression objective, C x sum(cross-entropy) + |W|^2 / 2 (divided here
    by C x N), minimised by full-batch L-BFGS on the features' device. features (N, D), labels (N,) -> weight
    (D, num_classes), bias (num_classes,); logits = features @ weight + bias."""
    labels = labels.to(features.device).long()
    weight = torch.zeros(
        features.shape[1], num_classes, dtype=features.dtype, device=features.device, requires_grad=True
    )
    bias = torch.zeros(num_classes, dtype=features.dtype, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=max_iter, tolerance_grad=tolerance, history_size=10, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + weight.square().sum() / (2 * c * len(features))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()
