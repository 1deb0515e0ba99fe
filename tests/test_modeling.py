"""MAEModel / MAEForPreTraining / MAEForImageClassification: init, masking, shapes, gradients, loading."""

import logging

import pytest
import torch
from conftest import tiny_config
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from mae_hf import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel
from mae_hf.modeling_mae import random_masking
from mae_hf.pos_embed import resample_pos_embed, sincos_2d


def official_table(dim, grid_h, grid_w):
    """The official table, rebuilt from transformers' [sin_h|cos_h|sin_w|cos_w] one by swapping the halves."""
    table = build_2d_sinusoidal_position_embedding(grid_h, grid_w, dim, cls_token=True)
    half = dim // 2
    return torch.cat([table[:, half:], table[:, :half]], dim=1).unsqueeze(0)


def images(config, batch=2, size=None):
    height, width = config.image_hw if size is None else size
    return torch.randn(batch, config.num_channels, height, width)


# ---- initialisation (DESIGN.md §4: transformers' ViTMAE zeros these) -------------------------------------------


def assert_official_init(model: MAEForPreTraining, config: MAEConfig):
    grid = config.grid_size
    torch.testing.assert_close(model.vit.pos_embed, official_table(config.hidden_size, *grid), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        model.decoder.pos_embed, official_table(config.decoder_hidden_size, *grid), rtol=0, atol=1e-6
    )
    for name in ("vit.pos_embed", "decoder.pos_embed"):
        assert name not in dict(model.named_parameters()), f"{name} must not be trainable"
        assert not model.get_buffer(name).requires_grad
    assert model.decoder.mask_token.abs().min() > 0
    assert 0.01 < model.decoder.mask_token.std() < 0.03
    assert 0.01 < model.vit.cls_token.std() < 0.03


def test_fresh_model_has_sincos_tables_and_nonzero_tokens():
    config = tiny_config(hidden_size=128, decoder_hidden_size=64, num_attention_heads=4)
    assert_official_init(MAEForPreTraining(config), config)


def test_tables_and_tokens_survive_save_and_load(tmp_path):
    config = tiny_config(hidden_size=128, decoder_hidden_size=64)
    model = MAEForPreTraining(config)
    model.save_pretrained(tmp_path)
    loaded = MAEForPreTraining.from_pretrained(tmp_path)
    assert_official_init(loaded, config)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert all(p.requires_grad for p in loaded.parameters())


def test_fresh_task_models_build_tables_when_missing_from_checkpoint(tmp_path):
    """A classifier made from a config alone, and one loaded from a bare encoder, both get sin-cos tables."""
    config = tiny_config()
    MAEModel(config).save_pretrained(tmp_path)
    for model in (MAEForImageClassification(config), MAEForImageClassification.from_pretrained(tmp_path)):
        torch.testing.assert_close(model.vit.pos_embed, official_table(64, 4, 4), rtol=0, atol=1e-6)


def test_sincos_layout_is_column_first_for_non_square_grids():
    table = sincos_2d(16, (2, 3))[0, 1:]  # 6 patches, row-major
    # Patch (row 1, col 2) = index 5: first half encodes the column 2, second half the row 1.
    col_part, row_part = table[5, :8], table[5, 8:]
    assert torch.allclose(col_part, table[2, :8]) and torch.allclose(row_part, table[3, 8:])
    assert torch.allclose(table[:, :8][[0, 3]], table[[0, 0], :8])  # same column, other row: same first half
    torch.testing.assert_close(sincos_2d(16, (2, 3)), official_table(16, 2, 3), rtol=0, atol=1e-6)


def test_linear_and_patch_embed_init_follow_official():
    model = MAEForPreTraining(tiny_config(hidden_size=128, decoder_hidden_size=64))
    qkv = model.vit.blocks[0].attn.qkv.weight
    bound = (6 / (qkv.shape[0] + qkv.shape[1])) ** 0.5  # xavier-uniform
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert torch.all(model.vit.blocks[0].attn.qkv.bias == 0)
    patch = model.vit.patch_embed.proj.weight.view(128, -1)
    patch_bound = (6 / (patch.shape[0] + patch.shape[1])) ** 0.5
    assert patch.abs().max() <= patch_bound and patch.abs().max() > 0.9 * patch_bound
    head = MAEForImageClassification(tiny_config(num_labels=10)).head
    assert 1e-5 < head.weight.std() < 4e-5 and torch.all(head.bias == 0)


# ---- masking and the pretraining forward --------------------------------------------------------------------------


def test_random_masking_keeps_smallest_noise_and_restores_order():
    x = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 8, 1)
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    kept, mask, ids_restore = random_masking(x, 0.75, noise)
    assert kept[:, :, 0].tolist() == [[1.0, 3.0], [8.0, 9.0]]
    assert mask.tolist() == [[1, 0, 1, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]
    shuffled = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), torch.arange(8).expand(2, 8))


def test_pretraining_output_shapes_and_mask_count(config):
    out = MAEForPreTraining(config)(images(config))
    assert out.logits.shape == (2, 16, 8 * 8 * 3)
    assert out.mask.shape == out.ids_restore.shape == (2, 16)
    assert out.mask.sum(dim=1).tolist() == [12.0, 12.0]
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_loss_counts_only_removed_patches(config):
    model = MAEForPreTraining(config)
    pixels, noise = images(config), torch.rand(2, 16)
    out = model(pixels, noise=noise)
    per_patch = ((out.logits - model.patchify(pixels)) ** 2).mean(-1)
    expected = per_patch[out.mask.bool()].mean()
    torch.testing.assert_close(out.loss, expected)


def test_norm_pix_loss_uses_each_patch_mean_and_variance(config):
    model = MAEForPreTraining(tiny_config(norm_pix_loss=True))
    pixels, noise = images(config), torch.rand(2, 16)
    out = model(pixels, noise=noise)
    target = model.patchify(pixels)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    expected = ((out.logits - target) ** 2).mean(-1)[out.mask.bool()].mean()
    torch.testing.assert_close(out.loss, expected)


def test_encoder_without_mask_keeps_natural_order(config):
    encoder = MAEModel(config).eval()
    pixels = images(config)
    plain = encoder(pixels)
    assert plain.mask is None and plain.ids_restore is None and plain.last_hidden_state.shape == (2, 17, 64)
    shuffled = encoder(pixels, mask_ratio=0.0, noise=torch.rand(2, 16))  # all patches kept, in shuffled order
    ids_shuffle = torch.argsort(shuffled.ids_restore, dim=1)
    restored = torch.gather(plain.last_hidden_state[:, 1:], 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, 64))
    torch.testing.assert_close(shuffled.last_hidden_state[:, 1:], restored, rtol=1e-5, atol=1e-5)


def test_patchify_layout_and_round_trip():
    config = tiny_config(image_size=(16, 24), num_channels=2, patch_size=8)
    model = MAEForPreTraining(config)
    pixels = torch.randn(2, 2, 16, 24)
    patches = model.patchify(pixels)
    assert patches.shape == (2, 6, 8 * 8 * 2)
    # patch 4 = row 1, column 1; its flattened pixels are (row, column, channel) within the patch
    assert torch.equal(patches[0, 4].reshape(8, 8, 2), pixels[0, :, 8:16, 8:16].permute(1, 2, 0))
    assert torch.equal(model.unpatchify(patches, (16, 24)), pixels)
    with pytest.raises(ValueError, match="do not tile"):
        model.unpatchify(patches, (32, 32))


# ---- gradients, attention paths, checkpointing, drop path ---------------------------------------------------------


def assert_every_parameter_gets_gradient(model, loss):
    loss.backward()
    missing = [
        name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing, f"no gradient for {missing}"


def test_every_trainable_parameter_gets_a_gradient(config):
    model = MAEForPreTraining(config)
    assert_every_parameter_gets_gradient(model, model(images(config)).loss)
    for pooling in ("mean", "cls"):
        classifier = MAEForImageClassification(tiny_config(num_labels=5, pooling=pooling))
        loss = classifier(images(config), labels=torch.tensor([1, 3])).loss
        assert_every_parameter_gets_gradient(classifier, loss)


def test_sdpa_and_eager_attention_agree(config):
    sdpa = MAEForPreTraining(config)
    eager = MAEForPreTraining(tiny_config(attn_implementation="eager"))
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    pixels, noise = images(config), torch.rand(2, 16)
    a, b = sdpa(pixels, noise=noise), eager(pixels, noise=noise)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-5)
    with_maps = sdpa(pixels, noise=noise, output_attentions=True)
    torch.testing.assert_close(with_maps.logits, a.logits, rtol=1e-5, atol=1e-5)
    assert len(with_maps.attentions) == 2 and with_maps.attentions[0].shape == (2, 4, 5, 5)
    torch.testing.assert_close(with_maps.attentions[0].sum(-1), torch.ones(2, 4, 5))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(config):
    model = MAEForPreTraining(config).train()
    pixels, noise = images(config), torch.rand(2, 16)
    model(pixels, noise=noise).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.vit.blocks[0].gradient_checkpointing
    model(pixels, noise=noise).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_drop_path_rates_rise_linearly_and_only_act_in_training():
    model = MAEModel(tiny_config(num_hidden_layers=3, drop_path_rate=0.2))
    assert [b.drop_path.drop_prob for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    pixels = torch.randn(8, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(pixels).last_hidden_state, model(pixels).last_hidden_state)
    model.train()
    assert not torch.allclose(model(pixels).last_hidden_state, model(pixels).last_hidden_state)


# ---- image sizes and channels -------------------------------------------------------------------------------------


def test_one_channel_and_non_square_images():
    config = tiny_config(num_channels=1, image_size=(32, 48))
    model = MAEForPreTraining(config)
    out = model(torch.randn(2, 1, 32, 48))
    assert out.logits.shape == (2, 24, 64) and out.mask.sum(1).tolist() == [18.0, 18.0]
    torch.testing.assert_close(model.vit.pos_embed, official_table(64, 4, 6), rtol=0, atol=1e-6)
    logits = MAEForImageClassification(tiny_config(num_channels=1, image_size=(32, 48), num_labels=3))(
        torch.randn(2, 1, 32, 48)
    ).logits
    assert logits.shape == (2, 3)


def test_interpolate_pos_encoding_resamples_encoder_and_decoder_in_2d(config):
    model = MAEForPreTraining(config)
    pixels = torch.randn(2, 3, 48, 64)  # 6x8 grid instead of 4x4
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pixels)
    out = model(pixels, interpolate_pos_encoding=True)
    assert out.logits.shape == (2, 48, 192)
    # The same model at its own size is unchanged by the flag.
    pixels, noise = images(config), torch.rand(2, 16)
    torch.testing.assert_close(
        model(pixels, noise=noise).logits, model(pixels, noise=noise, interpolate_pos_encoding=True).logits
    )
    # Interpolating = a model built at 48x64 holding the 2-D resampled tables (encoder AND decoder).
    big = MAEForPreTraining(tiny_config(image_size=(48, 64)))
    weights = model.state_dict()
    for name in ("vit.pos_embed", "decoder.pos_embed"):
        weights[name] = resample_pos_embed(weights[name], (4, 4), (6, 8))
    big.load_state_dict(weights)
    noise = torch.rand(2, 48)
    pixels = torch.randn(2, 3, 48, 64)
    torch.testing.assert_close(
        model(pixels, noise=noise, interpolate_pos_encoding=True).logits, big(pixels, noise=noise).logits
    )


def test_resampling_is_two_dimensional():
    columns = torch.arange(4.0).repeat(3)  # a 3x4 grid whose value is the column index
    table = torch.cat([torch.zeros(1), columns]).reshape(1, 13, 1).expand(1, 13, 4)
    resampled = resample_pos_embed(table, (3, 4), (5, 8))[0, 1:, 0].reshape(5, 8)
    torch.testing.assert_close(resampled, resampled[:1].expand(5, 8))  # rows stay identical: no 1-D stretch
    assert resampled[0, 0] < resampled[0, -1]


# ---- classification -----------------------------------------------------------------------------------------------


def test_soft_labels_equal_hard_labels_when_one_hot(config):
    model = MAEForImageClassification(tiny_config(num_labels=5))
    pixels, labels = images(config), torch.tensor([0, 4])
    hard = model(pixels, labels=labels).loss
    soft = model(pixels, labels=torch.nn.functional.one_hot(labels, 5).float()).loss
    torch.testing.assert_close(hard, soft)
    mixed = torch.tensor([[0.5, 0.5, 0, 0, 0], [0, 0, 0, 0.2, 0.8]])
    log_probs = model(pixels).logits.log_softmax(-1)
    torch.testing.assert_close(model(pixels, labels=mixed).loss, -(mixed * log_probs).sum(-1).mean())
    with pytest.raises(ValueError, match="soft labels must have shape"):
        model(pixels, labels=torch.rand(2, 4))


def test_mean_and_cls_pooling(config):
    mean_model = MAEForImageClassification(tiny_config(num_labels=3, pooling="mean")).eval()
    tokens = mean_model.vit(images(config)).last_hidden_state
    assert isinstance(mean_model.vit.norm, torch.nn.Identity)
    torch.testing.assert_close(mean_model.pool(tokens), mean_model.fc_norm(tokens[:, 1:].mean(1)))
    cls_model = MAEForImageClassification(tiny_config(num_labels=3, pooling="cls")).eval()
    assert isinstance(cls_model.vit.norm, torch.nn.LayerNorm) and isinstance(cls_model.fc_norm, torch.nn.Identity)
    tokens = cls_model.vit(images(config)).last_hidden_state
    torch.testing.assert_close(cls_model.pool(tokens), tokens[:, 0])


@pytest.mark.parametrize("pooling, missing", [("mean", {"head", "fc_norm"}), ("cls", {"head"})])
def test_pretraining_checkpoint_into_classifier_leaves_only_head_missing(tmp_path, config, pooling, missing):
    pretrained = MAEForPreTraining(config)
    pretrained.save_pretrained(tmp_path)
    classifier, info = MAEForImageClassification.from_pretrained(
        tmp_path, num_labels=7, pooling=pooling, output_loading_info=True
    )
    assert {key.rsplit(".", 1)[0] for key in info["missing_keys"]} == missing
    assert {k.split(".")[0] for k in info["unexpected_keys"]} <= {"decoder", "vit"}
    assert all(k.startswith("decoder.") or k.startswith("vit.norm.") for k in info["unexpected_keys"])
    assert not info["mismatched_keys"]
    for name, tensor in classifier.vit.state_dict().items():
        torch.testing.assert_close(tensor, pretrained.vit.state_dict()[name], rtol=0, atol=0)


def test_checkpoint_at_another_image_size_is_resampled_and_logged(tmp_path, config, caplog):
    pretrained = MAEForPreTraining(config)
    with torch.no_grad():
        pretrained.vit.pos_embed.normal_()  # a learned-looking table: resampling, not recomputation, must happen
    pretrained.save_pretrained(tmp_path)
    logger = logging.getLogger("mae_hf")
    logger.addHandler(caplog.handler)
    try:
        classifier = MAEForImageClassification.from_pretrained(tmp_path, image_size=48, num_labels=2)
    finally:
        logger.removeHandler(caplog.handler)
    assert classifier.vit.pos_embed.shape == (1, 37, 64)
    expected = resample_pos_embed(pretrained.vit.pos_embed, (4, 4), (6, 6))
    torch.testing.assert_close(classifier.vit.pos_embed, expected)
    assert "Resampled vit.pos_embed from a 4x4 to a 6x6 patch grid" in caplog.text
    assert classifier(torch.randn(1, 3, 48, 48)).logits.shape == (1, 2)


def test_intermediate_layers_are_permuted_feature_maps():
    config = tiny_config(image_size=(16, 32))  # 2x4 grid: a missing permute or a swapped h/w cannot pass
    encoder = MAEModel(config).eval()
    pixels = torch.randn(2, 3, 16, 32)
    maps = encoder.get_intermediate_layers(pixels, (0, 1))
    hidden = encoder(pixels, output_hidden_states=True).hidden_states
    assert [m.shape for m in maps] == [(2, 64, 2, 4)] * 2
    for level, index in enumerate((0, 1)):
        for row in range(2):
            for col in range(4):
                torch.testing.assert_close(maps[level][:, :, row, col], hidden[index + 1][:, 1 + row * 4 + col])


def test_hidden_states_and_return_dict(config):
    model = MAEForPreTraining(config)
    out = model(images(config), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 5, 64)
    as_tuple = model(images(config), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[1].shape == (2, 16, 192)
