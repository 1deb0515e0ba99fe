"""mae_hf.checkpoint: reading state-dict files, grid inference, and the key maps in both directions."""

import argparse

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import save_file
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from mae_hf import MAEForPreTraining
from mae_hf.checkpoint import (
    our_name,
    read_shapes,
    read_state_dict,
    square_side,
    to_transformers_state_dict,
    transformers_to_official,
    weight_files,
)


def test_key_maps_round_trip_through_transformers():
    config = tiny_config()
    ours = MAEForPreTraining(config).state_dict()
    theirs = to_transformers_state_dict(ours)
    fields = {
        k: getattr(config, k)
        for k in (
            "image_size",
            "patch_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
        )
    }
    model = ViTMAEForPreTraining(ViTMAEConfig(**fields))
    model.load_state_dict(theirs, strict=True)  # every transformers key filled, none left over
    back = {our_name(key, "vit."): value for key, value in transformers_to_official(theirs).items()}
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[key], ours[key]) for key in ours)


def test_read_state_dict_unwraps_official_training_checkpoints(tmp_path):
    weights = {"cls_token": torch.zeros(1, 1, 4), "pos_embed": torch.ones(1, 5, 4)}
    torch.save({"model": weights, "epoch": 3, "args": argparse.Namespace(lr=1.0)}, tmp_path / "checkpoint.pth")
    save_file(weights, tmp_path / "model.safetensors")
    for name in ("checkpoint.pth", "model.safetensors"):
        read = read_state_dict(str(tmp_path / name))
        assert read.keys() == weights.keys() and torch.equal(read["pos_embed"], weights["pos_embed"])
    assert read_shapes([str(tmp_path / "model.safetensors")]) == {"cls_token": (1, 1, 4), "pos_embed": (1, 5, 4)}
    assert weight_files(tmp_path) == ["model.safetensors"]
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        read_state_dict(str(tmp_path / "list.pth"))


def test_square_side():
    assert square_side(196) == 14
    assert square_side(24) is None
