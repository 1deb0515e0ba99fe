"""Parameter groups: the no-decay set and layer-wise lr decay, exactly."""

import pytest
from conftest import tiny_config

from mae_hf import MAEForImageClassification, MAEForPreTraining
from mae_hf.optim import decay_parameter_names, layer_id, param_groups


def names_of(model, group):
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)] for p in group["params"]}


def test_layer_ids_follow_the_official_rule():
    assert [
        layer_id(n, 12)
        for n in (
            "vit.cls_token",
            "vit.patch_embed.proj.weight",
            "vit.blocks.0.norm1.weight",
            "vit.blocks.11.mlp.fc2.bias",
            "fc_norm.weight",
            "head.weight",
        )
    ] == [0, 0, 1, 12, 13, 13]


def test_layer_decay_groups_have_exactly_the_recipe_learning_rates():
    model = MAEForImageClassification(tiny_config(num_labels=5, num_hidden_layers=3))
    groups = param_groups(model, learning_rate=1e-3, weight_decay=0.05, layer_decay=0.65)
    depth = 3
    seen = set()
    for group in groups:
        names = names_of(model, group)
        seen |= names
        for name in names:
            if name.startswith("vit.blocks."):
                block = int(name.split(".")[2])
                assert group["lr"] == pytest.approx(1e-3 * 0.65 ** (depth - block), rel=1e-12), name
            elif name.startswith(("vit.cls_token", "vit.patch_embed")):
                assert group["lr"] == pytest.approx(1e-3 * 0.65 ** (depth + 1), rel=1e-12), name
            else:
                assert group["lr"] == pytest.approx(1e-3, rel=1e-12), name
        decayed = {n for n in names if group["weight_decay"] == 0.05}
        assert decayed == names or not decayed
    assert seen == {n for n, p in model.named_parameters() if p.requires_grad}


def test_no_decay_set_is_exactly_biases_norms_tokens():
    model = MAEForImageClassification(tiny_config(num_labels=5))
    groups = param_groups(model, 1e-3, 0.05, 0.75)
    undecayed = set().union(*(names_of(model, g) for g in groups if g["weight_decay"] == 0))
    expected = {n for n, p in model.named_parameters() if n.endswith(".bias") or "norm" in n or n == "vit.cls_token"}
    assert undecayed == expected
    assert set(decay_parameter_names(model)) == {n for n, _ in model.named_parameters()} - expected


def test_without_layer_decay_two_groups_and_frozen_parameters_left_out():
    model = MAEForPreTraining(tiny_config())
    groups = param_groups(model, 2e-4, 0.05)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(2e-4, 0.0), (2e-4, 0.05)]
    classifier = MAEForImageClassification(tiny_config(num_labels=3))
    classifier.vit.requires_grad_(False)
    kept = set().union(*(names_of(classifier, g) for g in param_groups(classifier, 0.1, 0.0)))
    assert kept == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
