"""The PreTrainedModel contract as transformers' own vision models meet it, on every model class: half precision
with float32 pixels (losses float32), meta-device construction and materialisation, device_map loading,
`config.problem_type` exactly as ViTForImageClassification, the accessor and output conventions, and pipelines
that work without "not supported" noise."""

import inspect
import logging

import accelerate
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from test_conversion import randomize
from test_modeling_segmentation import seg_config
from transformers import SegformerImageProcessor, ViTConfig, ViTForImageClassification, pipeline

from mae_hf import MAEForImageClassification, MAEForPreTraining, MAEForSemanticSegmentation, MAEModel
from mae_hf.conversion import convert_timm, transformers_to_official
from mae_hf.modeling_mae import MAEDecoder
from mae_hf.pos_embed import sincos_2d

MODELS = {
    "encoder": (MAEModel, lambda **kw: tiny_config(**kw), None),
    "pretraining": (MAEForPreTraining, lambda **kw: tiny_config(norm_pix_loss=True, **kw), "noise"),
    "classification": (MAEForImageClassification, lambda **kw: tiny_config(num_labels=3, **kw), "ids"),
    "linear_probe": (
        MAEForImageClassification,
        lambda **kw: tiny_config(num_labels=3, head_batchnorm=True, pooling="cls", **kw),
        "ids",
    ),
    "segmentation": (MAEForSemanticSegmentation, lambda **kw: seg_config(**kw), "maps"),
}


def inputs(kind, size=(32, 32), batch=2):
    """Pixels (float32, as image processors give them) and the model's other inputs: labels, or a fixed mask."""
    pixels = torch.randn(batch, 3, *size)
    if kind == "noise":
        return pixels, {"noise": torch.rand(batch, (size[0] // 8) * (size[1] // 8))}
    labels = {"ids": torch.tensor([0, 2]), "maps": torch.randint(0, 5, (batch, *size)), None: None}[kind]
    return pixels, ({} if labels is None else {"labels": labels})


# ---- half precision (float32 pixels into a bf16/fp16 model, as transformers' ViT takes them) ----------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("interpolate", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_half_precision_models_take_float32_pixels(tmp_path, name, dtype, interpolate):
    model_class, make_config, labels = MODELS[name]
    reference = model_class(make_config()).eval()
    reference.save_pretrained(tmp_path)
    half = model_class.from_pretrained(tmp_path, dtype=dtype).eval()
    assert half.dtype == dtype
    size = (48, 40) if interpolate else (32, 32)  # a 6x5 grid: both tables resampled on the fly
    pixels, kwargs = inputs(labels, size)
    if model_class is not MAEForSemanticSegmentation:  # the segmenter resamples for any input size by itself
        kwargs["interpolate_pos_encoding"] = interpolate
    with torch.no_grad():
        got, expected = half(pixels, **kwargs), reference(pixels, **kwargs)
    first = "last_hidden_state" if model_class is MAEModel else "logits"
    assert getattr(got, first).dtype == dtype
    assert relative_error(getattr(got, first), getattr(expected, first)) < 0.03  # half-precision rounding only
    if "loss" in got:
        assert got.loss.dtype == torch.float32  # losses stay float32
        assert relative_error(got.loss, expected.loss) < 0.03


def relative_error(got, expected) -> float:
    return ((got.float() - expected).norm() / expected.norm()).item()


# ---- meta device, empty weights, device_map ----------------------------------------------------------------------


def assert_initialised(model, config):
    """Materialised and initialised as a model built on the CPU: sin-cos tables, N(0, 0.02) tokens, unit norms."""
    encoder = model if isinstance(model, MAEModel) else model.vit
    torch.testing.assert_close(encoder.pos_embed, sincos_2d(config.hidden_size, config.grid_size))
    assert 0.005 < encoder.cls_token.std() < 0.05
    for module in model.modules():
        if isinstance(module, MAEDecoder):
            torch.testing.assert_close(module.pos_embed, sincos_2d(config.decoder_hidden_size, config.grid_size))
            assert 0.005 < module.mask_token.std() < 0.05
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


EMPTY_CONTEXTS = {
    "meta": lambda: torch.device("meta"),
    "init_empty_weights": lambda: accelerate.init_empty_weights(include_buffers=True),
}


@pytest.fixture
def fresh_device_context():
    """As in a fresh process. transformers' from_pretrained swaps `torch.linspace` for a CPU-defaulting wrapper while
    it builds a model; torch caches its table of factory functions on first use, so after any from_pretrained in
    the session the table holds the wrapper and `with torch.device("meta")` no longer reaches the real linspace."""
    cache = getattr(torch.utils._device, "_device_constructors", None)
    if cache is not None:
        cache.cache_clear()
    yield
    if cache is not None:
        cache.cache_clear()


@pytest.mark.parametrize("context", list(EMPTY_CONTEXTS))
@pytest.mark.parametrize("name", list(MODELS))
def test_built_on_the_meta_device_then_materialised(name, context, fresh_device_context):
    model_class, make_config, labels = MODELS[name]
    config = make_config(drop_path_rate=0.1)  # the stochastic-depth schedule is computed while building
    with EMPTY_CONTEXTS[context]():
        model = model_class(config)
    assert {t.device.type for t in model.state_dict().values()} == {"meta"}
    model.to_empty(device="cpu")
    model.init_weights()
    assert_initialised(model, config)
    pixels, kwargs = inputs(labels)
    assert torch.isfinite(model.eval()(pixels, **kwargs)[0]).all()


@pytest.mark.parametrize("device_map", ["cpu", "auto", {"": "cpu"}])
@pytest.mark.parametrize("name", list(MODELS))
def test_from_pretrained_with_a_device_map(tmp_path, name, device_map):
    model_class, make_config, labels = MODELS[name]
    saved = model_class(make_config()).eval()
    with torch.no_grad():  # tables that init would not recompute
        for key, buffer in saved.named_buffers():
            if key.endswith("pos_embed"):
                buffer.normal_()
    saved.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path, device_map=device_map).eval()
    for key, tensor in saved.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, rtol=0, atol=0, msg=key)
    pixels, kwargs = inputs(labels)
    torch.testing.assert_close(loaded(pixels, **kwargs)[0], saved(pixels, **kwargs)[0])


# ---- problem_type, against transformers' ViTForImageClassification ------------------------------------------------


def vit_and_ours(num_labels, problem_type):
    """transformers' ViT classifier with random weights and ours holding the same weights (class-token pooling)."""
    vit_config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        layer_norm_eps=1e-6,
        num_labels=num_labels,
        problem_type=problem_type,
    )
    vit = randomize(ViTForImageClassification(vit_config), scale=0.5)
    weights = vit.state_dict()
    head = {k.replace("classifier.", "head."): v for k, v in weights.items() if k.startswith("classifier.")}
    encoder = transformers_to_official({k: v for k, v in weights.items() if not k.startswith("classifier.")})
    ours = convert_timm({**encoder, **head}, num_attention_heads=4, problem_type=problem_type)
    assert ours.config.pooling == "cls" and ours.config.problem_type == problem_type
    return vit, ours


def labels_for(kind, batch=4, num_labels=3):
    generator = torch.Generator().manual_seed(1)
    if kind == "ids":
        return torch.randint(0, num_labels, (batch,), generator=generator)
    if kind == "multi_hot":
        return torch.randint(0, 2, (batch, num_labels), generator=generator).float()
    return torch.randn(batch, num_labels, generator=generator)  # regression targets


@pytest.mark.parametrize(
    "problem_type, num_labels, labels",
    [
        ("regression", 1, "values"),
        ("regression", 3, "values"),
        ("multi_label_classification", 3, "multi_hot"),
        ("single_label_classification", 3, "ids"),
        (None, 1, "values"),  # unset: inferred as ViT does
        (None, 3, "ids"),
    ],
)
def test_problem_type_gives_vits_loss(problem_type, num_labels, labels):
    vit, ours = vit_and_ours(num_labels, problem_type)
    pixels = torch.randn(4, 3, 32, 32)
    targets = labels_for(labels, num_labels=num_labels)
    if num_labels == 1:
        targets = targets[:, :1]
    expected, got = vit(pixels, labels=targets), ours(pixels, labels=targets)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    assert got.loss.dtype == torch.float32 and got.loss > 0


def test_soft_targets_stay_one_class_cross_entropy_when_unset():
    """Our one deliberate difference: float (B, num_labels) targets with no problem_type are mixup/cutmix soft
    targets of ONE class (ViT would take them as multi-label); the config is not changed by a forward."""
    _, ours = vit_and_ours(3, None)
    pixels, soft = torch.randn(4, 3, 32, 32), torch.softmax(torch.randn(4, 3), dim=-1)
    out = ours(pixels, labels=soft)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, soft))
    assert ours.config.problem_type is None
    with pytest.raises(ValueError, match="problem_type 'ordinal' is not one of"):
        ours.config.problem_type = "ordinal"
        ours(pixels, labels=soft)


# ---- accessors and outputs, as on transformers' vision models -----------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_accessors_and_output_conventions(name):
    model_class, make_config, labels = MODELS[name]
    config = make_config()
    model = model_class(config).eval()
    encoder = model if model_class is MAEModel else model.vit
    assert model.base_model is encoder and model.main_input_name == "pixel_values"
    assert model.get_input_embeddings() is encoder.patch_embed and model.get_output_embeddings() is None
    parameters = list(inspect.signature(model.forward).parameters)
    assert parameters[0] == "pixel_values"
    assert {"output_attentions", "output_hidden_states", "return_dict"} <= set(parameters)

    pixels, kwargs = inputs(labels)
    out = model(pixels, output_hidden_states=True, output_attentions=True, **kwargs)
    tokens = 1 + config.num_patches
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert len(out.attentions) == config.num_hidden_layers
    assert out.hidden_states[0].shape == (2, tokens, config.hidden_size) or model_class is MAEForPreTraining
    assert out.attentions[0].shape[:2] == (2, config.num_attention_heads)
    plain = model(pixels, **kwargs)
    assert plain.hidden_states is None and plain.attentions is None

    model.config.output_hidden_states = True  # the config's default counts too (output_attentions needs eager)
    from_config = model(pixels, **kwargs)
    assert len(from_config.hidden_states) == config.num_hidden_layers + 1 and from_config.attentions is None
    as_tuple = model(pixels, return_dict=False, **kwargs)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(from_config.to_tuple())
    for a, b in zip(as_tuple, from_config.to_tuple()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_checkpointing_and_input_gradients_on_every_class(name):
    model_class, make_config, labels = MODELS[name]
    model = model_class(make_config()).train()
    pixels, kwargs = inputs(labels)
    torch.manual_seed(0)
    plain = model(pixels, **kwargs)[0].float().sum()
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in (model if model_class is MAEModel else model.vit).blocks)
    torch.manual_seed(0)
    torch.testing.assert_close(model(pixels, **kwargs)[0].float().sum(), plain)
    model.requires_grad_(False)
    model.enable_input_require_grads()  # what PEFT relies on with a frozen model
    assert model(pixels, **kwargs)[0].requires_grad


def test_segmentation_pipeline_has_no_not_supported_noise(tmp_path, caplog):
    model = MAEForSemanticSegmentation(seg_config())
    model.save_pretrained(tmp_path)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(caplog.handler)
    try:
        segmenter = pipeline("image-segmentation", model=str(tmp_path))
    finally:
        transformers_logger.removeHandler(caplog.handler)
    assert "not supported" not in caplog.text
    assert segmenter(Image.new("RGB", (40, 30), (90, 20, 20)))  # and it works
