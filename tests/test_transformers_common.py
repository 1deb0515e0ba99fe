"""transformers' common model tests (tests/test_modeling_common.py of transformers 5.x, which is not shipped with the
package) reproduced on every model class, and the accessors and hooks of transformers' vision models (ViTModel,
ViTMAEModel, ViTForImageClassification): the same buffers with and without weight initialisation, the input
embeddings get and set, gradient checkpointing with input gradients, attention switching, nothing tied."""

import copy
import warnings
from contextlib import contextmanager

import pytest
import torch
from test_pretrained_contract import MODELS, inputs
from transformers import PreTrainedModel, set_seed
from transformers.initialization import no_init_weights

from mae_hf import MAEForPreTraining, MAEModel
from mae_hf.pos_embed import sincos_2d


@contextmanager
def replaced_initialize_weights(replacement):
    original = PreTrainedModel._initialize_weights
    PreTrainedModel._initialize_weights = lambda *args, **kwargs: replacement(original, *args, **kwargs)
    try:
        yield
    finally:
        PreTrainedModel._initialize_weights = original


def skip_initialize_weights():
    """transformers' `skip_weight_init`: no `_init_weights` at all, the buffers are those `__init__` registers."""
    return replaced_initialize_weights(lambda original, *args, **kwargs: None)


def seeded_initialize_weights():
    """transformers' `seeded_weight_init`: the same random weights whichever way the model is built."""

    def seeded(original, *args, **kwargs):
        set_seed(42)
        original(*args, **kwargs)

    return replaced_initialize_weights(seeded)


WITHOUT_INIT = {"skip_initialize_weights": skip_initialize_weights, "no_init_weights": no_init_weights}


def encoder_of(model):
    return model if isinstance(model, MAEModel) else model.vit


def main_output(output) -> torch.Tensor:
    return output.last_hidden_state if "last_hidden_state" in output else output.logits


# ---- buffers and weights, whichever way the model is built ---------------------------------------------------------


@pytest.mark.parametrize("without_init", list(WITHOUT_INIT))
@pytest.mark.parametrize("name", list(MODELS))
def test_init_weights_can_init_buffers(name, without_init):
    """transformers 5.25's `test_init_weights_can_init_buffers`: a model built without weight init (the buffers of
    `__init__`) and one built on the meta device, moved with `to_empty` and re-initialised with `init_weights()`, hold
    the same buffers, exactly. The position tables were zeros until `_init_weights`; now they are the sin-cos tables in
    both, never zeros (DESIGN.md section 4). `no_init_weights` is how transformers builds a model for DeepSpeed ZeRO-3."""
    model_class, make_config, _ = MODELS[name]
    config = make_config()
    with WITHOUT_INIT[without_init]():
        from_init = model_class(copy.deepcopy(config))
    with torch.device("meta"):
        from_meta = model_class(copy.deepcopy(config))
    from_meta.to_empty(device="cpu")
    from_meta.init_weights()
    buffers, meta_buffers = dict(from_init.named_buffers()), dict(from_meta.named_buffers())
    assert sorted(buffers) == sorted(meta_buffers)
    assert [key for key, buffer in buffers.items() if not torch.equal(buffer, meta_buffers[key])] == []
    tables = {key: buffer for key, buffer in buffers.items() if key.endswith("pos_embed")}
    assert len(tables) == (2 if model_class is MAEForPreTraining else 1)
    for table in tables.values():
        assert torch.equal(table, sincos_2d(table.shape[-1], config.grid_size))


@pytest.mark.parametrize("name", list(MODELS))
def test_can_init_all_missing_weights(name):
    """transformers' companion test: built from its config, or loaded from an empty state dict (everything on the meta
    device, then `_init_weights`), with the same seed a model holds the same tensors, exactly."""
    model_class, make_config, _ = MODELS[name]
    config = make_config()
    with seeded_initialize_weights():
        from_init = model_class(copy.deepcopy(config))
        from_pretrained = model_class.from_pretrained(None, config=copy.deepcopy(config), state_dict={})
    expected, got = from_init.state_dict(), from_pretrained.state_dict()
    assert sorted(expected) == sorted(got)
    assert [key for key, tensor in expected.items() if not torch.equal(tensor, got[key])] == []


# ---- input embeddings ----------------------------------------------------------------------------------------------


class Doubled(torch.nn.Module):
    """A patch embedding of another class than ours (no `proj`): twice the tokens of the one it wraps."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(pixel_values)


@pytest.mark.parametrize("name", list(MODELS))
def test_set_input_embeddings_replaces_the_patch_embedding_the_forward_uses(name):
    """`set_input_embeddings` raised NotImplementedError while transformers' ViTModel / ViTMAEModel take any module.
    The module set is the one `get_input_embeddings` returns, the one the forward runs and the one
    `enable_input_require_grads` hooks: doubling the tokens gives the output of doubled patch-embedding weights."""
    model_class, make_config, labels = MODELS[name]
    model = model_class(make_config()).eval()
    pixels, kwargs = inputs(labels)
    with torch.no_grad():
        before = main_output(model(pixels, **kwargs))
        reference = copy.deepcopy(model)
        proj = encoder_of(reference).patch_embed.proj
        proj.weight.mul_(2), proj.bias.mul_(2)
        expected = main_output(reference(pixels, **kwargs))
    doubled = Doubled(model.get_input_embeddings())
    model.set_input_embeddings(doubled)
    assert model.get_input_embeddings() is doubled and encoder_of(model).patch_embed is doubled
    with torch.no_grad():
        got = main_output(model(pixels, **kwargs))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, before)
    model.requires_grad_(False)
    model.enable_input_require_grads()
    assert main_output(model(pixels, **kwargs)).requires_grad


# ---- gradient checkpointing with input gradients (what PEFT relies on) ----------------------------------------------


def adapter_gradient(model, adapter: torch.nn.Parameter, pixels, kwargs) -> torch.Tensor | None:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    output = model(pixels, **kwargs)[0]  # the loss, or the encoder's last hidden state
    if not output.requires_grad:
        return None
    output.float().sum().backward()
    return adapter.grad.clone()


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_checkpointing_with_input_gradients_trains_a_frozen_model(name):
    """A frozen model whose one trainable weight sits inside the checkpointed blocks (a LoRA adapter, as PEFT trains).
    With reentrant checkpointing, blocks whose inputs need no gradient give none: the loss does not even require one,
    until `enable_input_require_grads` hooks the patch embedding (`get_input_embeddings`); then the weight gets the
    gradient it gets without checkpointing. transformers' default (non-reentrant) checkpointing needs no hook.
    Enabled and disabled with the names of transformers 4 (`gradient_checkpointing_*`) and 5 (`activation_...`)."""
    model_class, make_config, labels = MODELS[name]
    model = model_class(make_config()).train()
    blocks = encoder_of(model).blocks
    model.requires_grad_(False)
    adapter = blocks[-1].attn.qkv.weight
    adapter.requires_grad_(True)
    pixels, kwargs = inputs(labels)
    expected = adapter_gradient(model, adapter, pixels, kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated name; torch: "None of the inputs have requires_grad=True"
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        assert model.is_gradient_checkpointing and all(block.gradient_checkpointing for block in blocks)
        assert adapter_gradient(model, adapter, pixels, kwargs) is None
    model.enable_input_require_grads()
    torch.testing.assert_close(adapter_gradient(model, adapter, pixels, kwargs), expected)
    model.disable_input_require_grads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_disable()
        assert not model.is_gradient_checkpointing and not any(block.gradient_checkpointing for block in blocks)

    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing and all(block.gradient_checkpointing for block in blocks)
    torch.testing.assert_close(adapter_gradient(model, adapter, pixels, kwargs), expected)
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing


# ---- the other accessors of transformers' vision models -----------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_encoder_decoder_accessors_tying_counting_and_attention_switch(name):
    """As on ViTMAEModel / ViTMAEForPreTraining / ViTForImageClassification: no separate encoder (`get_encoder()` is
    the model), `get_decoder()` is the pretraining decoder or the base model's own answer (the encoder), nothing tied,
    `num_parameters` counts the parameters (the fixed tables are buffers; there is no nn.Embedding to exclude), and
    `set_attn_implementation("eager")` switches every part to the attention that materialises its maps."""
    model_class, make_config, labels = MODELS[name]
    model = model_class(make_config()).eval()
    encoder = encoder_of(model)
    assert model.get_encoder() is model
    decoder = {MAEModel: model, MAEForPreTraining: getattr(model, "decoder", None)}.get(model_class, encoder)
    assert model.get_decoder() is decoder
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    model.tie_weights()
    assert model.all_tied_weights_keys == {}
    assert all(torch.equal(tensor, state[key]) for key, tensor in model.state_dict().items())
    count = sum(parameter.numel() for parameter in model.parameters())
    assert model.num_parameters() == model.num_parameters(exclude_embeddings=True) == count

    pixels, kwargs = inputs(labels)
    with torch.no_grad():
        fused = main_output(model(pixels, **kwargs))
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == encoder.config._attn_implementation == "eager"
        torch.testing.assert_close(main_output(model(pixels, **kwargs)), fused, rtol=1e-4, atol=1e-5)
