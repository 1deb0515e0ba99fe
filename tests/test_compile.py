"""`torch.compile(fullgraph=True)` traces every task model's forward with no graph break (checked with the eager
backend: dynamo's tracing is what breaks graphs, and it runs in seconds on a CPU); bf16 autocast keeps losses in
float32."""

import pytest
import torch
from conftest import tiny_config
from test_modeling_segmentation import seg_config

from mae_hf import MAEForImageClassification, MAEForPreTraining, MAEForSemanticSegmentation


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(model):
    return torch.compile(model, fullgraph=True, backend="eager", dynamic=False)


def test_pretraining_forward_and_backward_compile_without_graph_breaks():
    model = MAEForPreTraining(tiny_config()).train()
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    expected = model(pixels, noise=noise).loss
    loss = compiled(model)(pixels, noise=noise).loss
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.vit.patch_embed.proj.weight.grad is not None
    compiled(model)(pixels)  # the random-masking path (noise drawn inside forward) too


@pytest.mark.parametrize("labels", [torch.tensor([1, 0]), torch.tensor([[0.2, 0.8, 0.0], [1.0, 0.0, 0.0]])])
def test_classification_forward_compiles_without_graph_breaks(labels):
    model = MAEForImageClassification(tiny_config(num_labels=3, drop_path_rate=0.1)).eval()
    pixels = torch.randn(2, 3, 32, 32)
    expected = model(pixels, labels=labels)
    out = compiled(model)(pixels, labels=labels)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.loss, expected.loss)


@pytest.mark.parametrize("training", [True, False])
def test_segmentation_forward_compiles_without_graph_breaks(training):
    model = MAEForSemanticSegmentation(seg_config()).train(training)
    pixels, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    out = compiled(model)(pixels, labels=labels)
    assert out.logits.shape == (2, 5, 32, 32) and torch.isfinite(out.loss)
    if not training:  # BatchNorm in eval: deterministic, equal to the uncompiled model
        torch.testing.assert_close(out.logits, model(pixels, labels=labels).logits)


@pytest.mark.parametrize("task", ["pretraining", "classification"])
def test_bf16_autocast_keeps_the_loss_in_float32_and_close(task):
    """The `--bf16` fast path: matmuls in bf16, loss reduced in float32."""
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    if task == "pretraining":
        model, kwargs = MAEForPreTraining(tiny_config()), {"noise": torch.rand(2, 16)}
    else:
        model, kwargs = MAEForImageClassification(tiny_config(num_labels=3)), {"labels": torch.tensor([0, 2])}
    reference = model(pixels, **kwargs).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixels, **kwargs)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, reference, rtol=1e-2, atol=0)
    out.loss.backward()
    assert model.vit.patch_embed.proj.weight.grad.dtype == torch.float32
