"""MAEConfig: defaults, validation errors that name the field, and input errors raised by the models."""

import pytest
import torch
from conftest import tiny_config
from transformers import ViTMAEConfig

from mae_hf import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel


def test_defaults_are_vit_base_with_the_official_decoder():
    config = MAEConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        768,
        12,
        12,
        3072,
    )
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        512,
        8,
        16,
    )
    assert config.grid_size == (14, 14) and config.num_patches == 196
    assert config.mask_ratio == 0.75 and config.layer_norm_eps == 1e-6 and config.pooling == "mean"


def test_field_names_match_transformers_vitmae():
    ours = set(MAEConfig().to_dict())
    theirs = set(ViTMAEConfig().to_dict()) - {"hidden_dropout_prob", "attention_probs_dropout_prob"}
    assert theirs <= ours, theirs - ours  # every ViTMAEConfig field the model uses exists here
    assert MAEConfig.model_type == "mae_vit"


def test_non_square_image_size_and_round_trip(tmp_path):
    config = tiny_config(image_size=(32, 48))
    assert config.grid_size == (4, 6)
    config.save_pretrained(tmp_path)
    assert MAEConfig.from_pretrained(tmp_path).grid_size == (4, 6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 30}, "image_size 30 is not divisible by patch_size 8"),
        ({"image_size": (32, 36)}, "is not divisible by patch_size"),
        ({"hidden_size": 66}, r"hidden_size \(66\) is not divisible by num_attention_heads \(4\)"),
        ({"decoder_hidden_size": 30}, r"decoder_hidden_size \(30\) is not divisible by decoder_num_attention_heads"),
        ({"mask_ratio": 1.0}, r"mask_ratio must be in \[0, 1\)"),
        ({"mask_ratio": -0.1}, r"mask_ratio must be in \[0, 1\)"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"num_hidden_layers": -1}, "num_hidden_layers must be a positive integer"),
        ({"patch_size": 0}, "patch_size must be a positive integer"),
        ({"image_size": -32}, "image_size must be positive"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"drop_path_rate": 1.5}, "drop_path_rate must be in"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_wrong_channel_count_is_named():
    model = MAEModel(tiny_config())
    with pytest.raises(ValueError, match="1 channels but the model expects num_channels=3"):
        model(torch.randn(1, 1, 32, 32))


def test_image_size_must_match_without_interpolation():
    for model in (MAEModel(tiny_config()), MAEForPreTraining(tiny_config()), MAEForImageClassification(tiny_config())):
        with pytest.raises(ValueError, match=r"image size 48x48 differs from config.image_size 32"):
            model(torch.randn(1, 3, 48, 48))


def test_image_size_must_be_divisible_by_patch_even_with_interpolation():
    with pytest.raises(ValueError, match="image size 36x32 is not divisible by the patch size 8"):
        MAEModel(tiny_config())(torch.randn(1, 3, 36, 32), interpolate_pos_encoding=True)


def test_noise_shape_is_checked():
    with pytest.raises(ValueError, match=r"noise must have shape \(batch, num_patches\) = \(2, 16\)"):
        MAEForPreTraining(tiny_config())(torch.randn(2, 3, 32, 32), noise=torch.rand(2, 15))


def test_overrides_given_to_from_pretrained_are_checked(tmp_path):
    MAEModel(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="image_size 36 is not divisible by patch_size 8"):
        MAEModel.from_pretrained(tmp_path, image_size=36)
