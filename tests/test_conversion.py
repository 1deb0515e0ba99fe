"""mae_hf.conversion: official MAE, transformers ViTMAE and timm checkpoints -> mae_hf models with equal outputs.

Every reference model gets random non-zero weights (position tables, class and mask tokens included), so a
misplaced or transposed tensor changes the outputs. Outputs must agree within 1e-5 (max abs difference).
"""

import argparse
import json
import os
import re
import subprocess
import sys
from functools import partial

import pytest
import torch
from reference_official_mae import MaskedAutoencoderViT
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from mae_hf import MAEForImageClassification, MAEForPreTraining, MAEModel
from mae_hf.conversion import convert, convert_official, convert_transformers, detect_file_format, infer_config, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
BATCH, IMAGE, PATCH, NUM_PATCHES = 2, 32, 8, 16
# Width 64 and decoder width 32 are not standard widths: every conversion must be told the head counts.
HEAD_ARGS = ["--num_attention_heads", "4", "--decoder_num_attention_heads", "4"]


def assert_max_diff(ours, reference, name):
    diff = (ours.float() - reference.float()).abs().max().item()
    print(f"max abs diff {name}: {diff:.3g}")  # shown with pytest -s; quoted in reports
    assert diff < TOL, f"{name}: max abs diff {diff}"


@torch.no_grad()
def randomize(module, scale=0.1):
    """Random non-zero values in every parameter and float buffer; LayerNorm weights around 1 so that outputs
    stay O(1) and the 1e-5 tolerance stays tight."""
    for tensor in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
        tensor.copy_(torch.randn_like(tensor) * scale)
    for sub in module.modules():
        if isinstance(sub, (nn.LayerNorm, nn.BatchNorm1d)) and sub.weight is not None:
            sub.weight.add_(1.0)
        if isinstance(sub, nn.BatchNorm1d):
            sub.running_var.abs_().add_(0.5)
    return module.eval()


def official_mae(norm_pix_loss=False):
    return randomize(
        MaskedAutoencoderViT(
            img_size=IMAGE,
            patch_size=PATCH,
            in_chans=3,
            embed_dim=64,
            depth=2,
            num_heads=4,
            decoder_embed_dim=32,
            decoder_depth=2,
            decoder_num_heads=4,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            norm_pix_loss=norm_pix_loss,
        )
    )


def timm_vit(**kwargs):
    return randomize(VisionTransformer(img_size=IMAGE, patch_size=PATCH, embed_dim=64, depth=2, num_heads=4, **kwargs))


def inputs():
    return torch.randn(BATCH, 3, IMAGE, IMAGE), torch.rand(BATCH, NUM_PATCHES)


def save_official(path, module):
    torch.save({"model": module.state_dict()}, path)  # the released files hold {"model": state dict}
    return path


def is_decoder(key):
    return key == "mask_token" or key.startswith("decoder_")


# ---- official facebookresearch/mae checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename, norm_pix_loss, via_subprocess",
    [("mae_visualize_tiny.pth", False, False), ("mae_pretrain_tiny_full.pth", True, True)],
)
def test_official_pretraining_matches_reference(tmp_path, filename, norm_pix_loss, via_subprocess):
    reference = official_mae(norm_pix_loss)
    source, out = save_official(tmp_path / filename, reference), tmp_path / "out"
    args = [str(source), str(out), *HEAD_ARGS]
    if via_subprocess:
        result = subprocess.run([sys.executable, "-m", "mae_hf.conversion", *args], cwd=REPO, capture_output=True)
        assert result.returncode == 0, result.stderr.decode()
    else:
        main(args)

    model = MAEForPreTraining.from_pretrained(out).eval()
    assert model.config.norm_pix_loss is norm_pix_loss  # read from the file name
    pixels, noise = inputs()
    with torch.no_grad():
        loss, pred, mask = reference(pixels, mask_ratio=0.75, noise=noise)
        ours = model(pixels, noise=noise)
    assert_max_diff(ours.loss, loss, f"official loss ({filename})")
    assert_max_diff(ours.logits, pred, f"official logits ({filename})")
    assert torch.equal(ours.mask, mask)


def test_official_encoder_only_gives_mae_model(tmp_path):
    reference = official_mae()
    source = tmp_path / "mae_pretrain_vit_tiny.pth"
    encoder = {k: v for k, v in reference.state_dict().items() if not is_decoder(k)}
    # A training checkpoint, as main_pretrain.py saves it: the argparse arguments must not block weights_only.
    torch.save({"model": encoder, "epoch": 3, "args": argparse.Namespace(lr=1e-3, model="mae_vit_tiny")}, source)
    main([str(source), str(tmp_path / "out"), "--num_attention_heads", "4"])

    model = MAEModel.from_pretrained(tmp_path / "out").eval()
    pixels, noise = inputs()
    with torch.no_grad():
        latent, mask, ids_restore = reference.forward_encoder(pixels, 0.75, noise)
        ours = model(pixels, noise=noise)
    assert_max_diff(ours.last_hidden_state, latent, "official encoder latent")
    assert torch.equal(ours.mask, mask) and torch.equal(ours.ids_restore, ids_restore)


def test_official_finetuned_gives_mean_pooling_classifier(tmp_path):
    # The official fine-tuned ViT is timm's VisionTransformer with global average pooling and fc_norm.
    reference = timm_vit(num_classes=5, global_pool="avg", fc_norm=True, class_token=True)
    source = save_official(tmp_path / "mae_finetuned_vit_tiny.pth", reference)
    main([str(source), str(tmp_path / "out"), "--num_attention_heads", "4"])

    model = MAEForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert model.config.pooling == "mean" and model.config.num_labels == 5
    assert isinstance(model.vit.norm, nn.Identity)
    pixels, _ = inputs()
    with torch.no_grad():
        assert_max_diff(model(pixels).logits, reference(pixels), "official fine-tuned logits")


def test_official_linprobe_batchnorm_head_is_folded():
    # main_linprobe.py: class-token pooling after the final norm, head = Sequential(BatchNorm1d(affine=False), Linear).
    reference = VisionTransformer(img_size=IMAGE, patch_size=PATCH, embed_dim=64, depth=2, num_heads=4, num_classes=5)
    reference.head = nn.Sequential(nn.BatchNorm1d(64, affine=False, eps=1e-6), reference.head)
    randomize(reference)
    model = convert_official(reference.state_dict(), num_attention_heads=4)

    assert isinstance(model, MAEForImageClassification) and model.config.pooling == "cls"
    pixels, _ = inputs()
    with torch.no_grad():
        assert_max_diff(model(pixels).logits, reference(pixels), "official linprobe logits")


# ---- transformers ViTMAE folders ---------------------------------------------------------------------------------


def transformers_config():
    return ViTMAEConfig(
        image_size=IMAGE,
        patch_size=PATCH,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
        layer_norm_eps=1e-6,
    )


def to_v4_names(key):
    """v5 name -> the transformers 4.x name (as in facebook/vit-mae-base)."""
    for new, old in (
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ):
        key = key.replace(new, old)
    return re.sub(r"^(vit\.)?layers\.", r"\1encoder.layer.", key)


def save_transformers(model, folder, layout):
    """layout: "v5" (current names), "saved" (transformers' default save, which renames back to 4.x names but
    writes the decoder blocks as `decoder.decoder_encoder.layer.N`) or "v4" (true 4.x names, written by hand)."""
    model.save_pretrained(folder, save_original_format=layout == "saved")
    if layout == "v4":
        weights = load_file(folder / "model.safetensors")
        save_file({to_v4_names(k): v.contiguous() for k, v in weights.items()}, folder / "model.safetensors")
    return sorted(load_file(folder / "model.safetensors"))


@pytest.mark.parametrize("layout", ["v5", "saved", "v4"])
def test_transformers_pretraining_matches(tmp_path, layout):
    reference = randomize(ViTMAEForPreTraining(transformers_config()))  # tables and mask token included
    keys = save_transformers(reference, tmp_path / "hf", layout)
    expected_key = {
        "v5": "decoder.decoder_layers.0.attention.q_proj.weight",
        "saved": "decoder.decoder_encoder.layer.0.attention.attention.query.weight",
        "v4": "decoder.decoder_layers.0.attention.attention.query.weight",
    }[layout]
    assert expected_key in keys
    main([str(tmp_path / "hf"), str(tmp_path / "out")])

    model = MAEForPreTraining.from_pretrained(tmp_path / "out").eval()
    assert model.config.layer_norm_eps == 1e-6 and model.config.decoder_num_attention_heads == 4
    pixels, noise = inputs()
    with torch.no_grad():
        expected, ours = reference(pixels, noise=noise), model(pixels, noise=noise)
    assert_max_diff(ours.loss, expected.loss, f"transformers loss ({layout})")
    assert_max_diff(ours.logits, expected.logits, f"transformers logits ({layout})")
    assert torch.equal(ours.mask, expected.mask) and torch.equal(ours.ids_restore, expected.ids_restore)


@pytest.mark.parametrize("layout", ["v5", "saved"])
def test_transformers_model_gives_mae_model(tmp_path, layout):
    reference = randomize(ViTMAEModel(transformers_config()))
    save_transformers(reference, tmp_path / "hf", layout)
    main([str(tmp_path / "hf"), str(tmp_path / "out")])

    model = MAEModel.from_pretrained(tmp_path / "out").eval()
    pixels, noise = inputs()
    with torch.no_grad():
        expected, ours = reference(pixels, noise=noise), model(pixels, noise=noise)
    assert_max_diff(ours.last_hidden_state, expected.last_hidden_state, f"transformers encoder ({layout})")
    assert torch.equal(ours.ids_restore, expected.ids_restore)


@pytest.mark.parametrize("image_size", [["16", "64"], ["64"]])
def test_transformers_folder_at_another_grid_is_refused(tmp_path, capsys, image_size):
    """The folder's config.json records a 4x4 grid: --image_size 16 64 (2x8, as many tokens) would put every position
    code on another cell; 64 (8x8) has other shapes. Both are refused, naming the way that resamples."""
    save_transformers(randomize(ViTMAEForPreTraining(transformers_config())), tmp_path / "hf", "v5")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "hf"), str(tmp_path / "out"), "--image_size", *image_size])
    assert "from_pretrained(folder, image_size=...)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    main([str(tmp_path / "hf"), str(tmp_path / "out"), "--image_size", "32"])  # the recorded size is fine


def test_transformers_zero_decoder_table_is_kept_with_a_warning(caplog):
    reference = ViTMAEForPreTraining(transformers_config())
    with torch.no_grad():
        reference.decoder.decoder_pos_embed.zero_()  # as transformers 5.x leaves it (zeroed again in case a fix lands)
    with caplog.at_level("WARNING"):
        model = convert_transformers(reference.state_dict(), reference.config.to_dict())
    assert not model.decoder.pos_embed.any()
    assert "all zeros" in caplog.text


def test_recorded_norm_pix_loss_of_each_format_is_the_default_help_gives(tmp_path, capsys):
    """--help said "off for mae_visualize_* files, else on": transformers folders keep their config.json's value
    and timm files are recorded off (the official files: test_official_pretraining_matches_reference)."""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "transformers folders: their config.json's; timm files: off" in " ".join(capsys.readouterr().out.split())
    for recorded in (True, False):
        config = transformers_config()
        config.norm_pix_loss = recorded
        save_transformers(ViTMAEForPreTraining(config), tmp_path / f"hf_{recorded}", "v5")
        main([str(tmp_path / f"hf_{recorded}"), str(tmp_path / f"out_{recorded}")])
        assert MAEForPreTraining.from_pretrained(tmp_path / f"out_{recorded}").config.norm_pix_loss is recorded
    save_file(timm_vit(num_classes=0).state_dict(), tmp_path / "vit.safetensors")
    main([str(tmp_path / "vit.safetensors"), str(tmp_path / "timm"), "--num_attention_heads", "4"])
    assert MAEModel.from_pretrained(tmp_path / "timm").config.norm_pix_loss is False


# ---- timm VisionTransformer state dicts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, model_class, pooling",
    [
        (dict(num_classes=0), MAEModel, None),  # timm's vit_*.mae weights: no head
        (dict(num_classes=5, global_pool="avg"), MAEForImageClassification, "mean"),
        (dict(num_classes=5, global_pool="token"), MAEForImageClassification, "cls"),
    ],
)
def test_timm_matches(tmp_path, kwargs, model_class, pooling):
    reference = timm_vit(**kwargs)
    source = tmp_path / "vit_tiny_patch8_32.mae.safetensors"
    save_file(reference.state_dict(), source)
    main([str(source), str(tmp_path / "out"), "--num_attention_heads", "4"])

    model = model_class.from_pretrained(tmp_path / "out").eval()
    pixels, _ = inputs()
    with torch.no_grad():
        if model_class is MAEModel:
            assert_max_diff(model(pixels).last_hidden_state, reference.forward_features(pixels), "timm features")
        else:
            assert model.config.pooling == pooling
            assert_max_diff(model(pixels).logits, reference(pixels), f"timm logits ({pooling})")


def test_timm_non_square_grid_needs_image_size(tmp_path):
    reference = randomize(
        VisionTransformer(img_size=(32, 48), patch_size=PATCH, embed_dim=64, depth=2, num_heads=4, num_classes=0)
    )
    source = tmp_path / "vit.safetensors"
    save_file(reference.state_dict(), source)
    with pytest.raises(ValueError, match="not a square grid"):
        convert(source, tmp_path / "out", num_attention_heads=4)
    main([str(source), str(tmp_path / "out"), "--num_attention_heads", "4", "--image_size", "32", "48"])

    model = MAEModel.from_pretrained(tmp_path / "out").eval()
    pixels = torch.randn(BATCH, 3, 32, 48)
    with torch.no_grad():
        assert_max_diff(model(pixels).last_hidden_state, reference.forward_features(pixels), "timm 32x48 features")


# ---- inference rules and errors ----------------------------------------------------------------------------------


def shapes(**shapes):
    return {key.replace("__", "."): torch.empty(shape, device="meta") for key, shape in shapes.items()}


def test_standard_widths_give_head_counts_and_sizes():
    vit_large = shapes(  # ViT-L/16 with the official decoder, as shapes only
        cls_token=(1, 1, 1024),
        pos_embed=(1, 197, 1024),
        patch_embed__proj__weight=(1024, 3, 16, 16),
        blocks__0__mlp__fc1__weight=(4096, 1024),
        blocks__0__attn__qkv__bias=(3072,),
        decoder_embed__weight=(512, 1024),
        decoder_blocks__0__mlp__fc1__weight=(2048, 512),
    )
    vit_large.update(shapes(**{f"blocks__{i}__norm1__weight": (1024,) for i in range(24)}))
    vit_large.update(shapes(**{f"decoder_blocks__{i}__norm1__weight": (512,) for i in range(8)}))
    config = infer_config(vit_large, None, None)
    assert config == dict(
        image_size=224,
        patch_size=16,
        num_channels=3,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        qkv_bias=True,
        layer_norm_eps=1e-6,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=2048,
    )
    assert infer_config(vit_large, 8, 4)["num_attention_heads"] == 8  # explicit counts win
    del vit_large["blocks.7.norm1.weight"]
    with pytest.raises(ValueError, match="numbered"):
        infer_config(vit_large, None, None)


def test_file_format_detection():
    encoder = {"cls_token": torch.zeros(1), "blocks.0.attn.qkv.weight": torch.zeros(1)}
    assert detect_file_format("vit.safetensors", encoder) == "timm"
    assert detect_file_format("vit.pth", encoder) == "official"
    assert detect_file_format("full.safetensors", {**encoder, "mask_token": torch.zeros(1)}) == "official"
    assert detect_file_format("hf.bin", {"vit.embeddings.cls_token": torch.zeros(1)}) == "transformers"
    with pytest.raises(ValueError, match="not an MAE"):
        detect_file_format("other.pth", {"conv1.weight": torch.zeros(1)})


def test_unknown_head_count_is_an_error(tmp_path, capsys):
    state_dict = official_mae().state_dict()
    with pytest.raises(ValueError, match="num_attention_heads.*--num_attention_heads"):
        convert_official(state_dict)
    with pytest.raises(ValueError, match="decoder_num_attention_heads"):
        convert_official(state_dict, num_attention_heads=4)
    source = save_official(tmp_path / "mae.pth", official_mae())
    with pytest.raises(SystemExit):
        main([str(source), str(tmp_path / "out")])
    assert "--num_attention_heads" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_and_missing_keys_are_errors():
    state_dict = official_mae().state_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['blocks.0.attn.extra', 'extra_token'\]"):
        convert_official(
            {**state_dict, "extra_token": torch.zeros(1), "blocks.0.attn.extra": torch.zeros(1)},
            num_attention_heads=4,
            decoder_num_attention_heads=4,
        )
    encoder = {k: v for k, v in state_dict.items() if not is_decoder(k) and not k.startswith("norm.")}
    with pytest.raises(ValueError, match=r"missing model keys \['norm.bias', 'norm.weight'\]"):
        convert_official(encoder, num_attention_heads=4)
    hf = randomize(ViTMAEModel(transformers_config()))
    with pytest.raises(ValueError, match=r"unknown keys .*\['pooler.dense.weight'\]"):
        convert_transformers({**hf.state_dict(), "pooler.dense.weight": torch.zeros(1)}, hf.config.to_dict())


def test_existing_output_folder_is_left_alone(tmp_path, capsys):
    source = save_official(tmp_path / "mae.pth", official_mae())
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=re.escape(str(out))):
        convert(source, out, num_attention_heads=4, decoder_num_attention_heads=4)
    with pytest.raises(SystemExit):
        main([str(source), str(out), *HEAD_ARGS])
    assert str(out) in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"

    convert(source, out, overwrite=True, num_attention_heads=4, decoder_num_attention_heads=4)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 64
