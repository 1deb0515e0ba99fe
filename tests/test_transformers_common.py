"""transformers' common model tests (tests/test_modeling_common.py of transformers 5.x, which is not shipped with the
package) reproduced on every model class: the same buffers and weights with and without weight initialisation."""

import copy
from contextlib import contextmanager

import pytest
import torch
from test_pretrained_contract import MODELS
from transformers import PreTrainedModel, set_seed
from transformers.initialization import no_init_weights

from mae_hf import MAEForPreTraining
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
