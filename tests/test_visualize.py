"""Reconstruction figures: norm_pix_loss undone with each patch's own statistics, the reconstruction column holding
only the removed patches, visible patches pasted back; titles with the step and the mask ratio."""

import torch
from conftest import tiny_config

from mae_hf import MAEForPreTraining
from mae_hf.visualize import (
    reconstruct,
    reconstruction_grid,
    reconstruction_notes,
    reconstruction_title,
)


class PerfectDecoder(MAEForPreTraining):
    """Predicts exactly the loss target (normalised per patch when norm_pix_loss): a perfect reconstruction."""

    def forward(self, pixel_values, noise=None, **kwargs):
        out = super().forward(pixel_values, noise=noise, **kwargs)
        target = self.patchify(pixel_values)
        if self.config.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        out.logits = target
        return out


def test_perfect_prediction_reconstructs_the_image_with_and_without_norm_pix_loss():
    pixels, noise = torch.randn(2, 3, 32, 32) * 2 + 1, torch.rand(2, 16)
    for norm_pix_loss in (False, True):
        model = PerfectDecoder(tiny_config(norm_pix_loss=norm_pix_loss)).eval()
        _, masked, reconstruction, pasted = reconstruct(model, pixels, noise)
        removed = model.unpatchify(model(pixels, noise=noise).mask.unsqueeze(-1).expand(-1, -1, 192)).bool()
        torch.testing.assert_close(reconstruction[removed], pixels[removed], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pasted, pixels, rtol=1e-4, atol=1e-4)
        assert torch.all(masked[removed] == 0) and torch.equal(masked[~removed], pixels[~removed])


def test_pasted_panel_keeps_visible_pixels_and_takes_predictions_elsewhere():
    model = MAEForPreTraining(tiny_config()).eval()
    pixels, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    _, _, reconstruction, pasted = reconstruct(model, pixels, noise)
    removed = model.unpatchify(model(pixels, noise=noise).mask.unsqueeze(-1).expand(-1, -1, 192)).bool()
    torch.testing.assert_close(pasted[~removed], pixels[~removed])
    torch.testing.assert_close(pasted[removed], reconstruction[removed])


def test_visible_patches_of_the_reconstruction_are_not_the_untrained_outputs():
    """The loss never reaches the visible patches: their raw outputs (noise) are not drawn, they stay at 0 (the
    mean colour), as the removed patches of the masked input."""
    model = MAEForPreTraining(tiny_config()).eval()
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    _, _, reconstruction, _ = reconstruct(model, pixels, noise)
    removed = model.unpatchify(model(pixels, noise=noise).mask.unsqueeze(-1).expand(-1, -1, 192)).bool()
    assert torch.all(reconstruction[~removed] == 0) and torch.all(reconstruction[removed] != 0)


def test_titles_say_step_mask_ratio_and_norm_pix_denormalisation():
    config = tiny_config(mask_ratio=0.75, norm_pix_loss=True)
    expected = "MAE reconstructions at step 1,440: mask ratio 0.75, 12 of 16 patches removed"
    assert reconstruction_title(config, 1440) == expected
    assert "mean and variance of the original patch" in " ".join(reconstruction_notes(config))
    assert "norm_pix_loss" not in " ".join(reconstruction_notes(tiny_config(norm_pix_loss=False)))
    assert tiny_config(mask_ratio=0.9).num_masked_patches == 16 - int(16 * (1 - 0.9))  # as the model keeps them


def test_grid_is_a_titled_figure_with_one_row_per_image():
    model = MAEForPreTraining(tiny_config()).eval()
    three = reconstruction_grid(model, torch.randn(3, 3, 32, 32), (0.5,) * 3, (0.5,) * 3, step=7)
    one = reconstruction_grid(model, torch.randn(1, 3, 32, 32), (0.5,) * 3, (0.5,) * 3)
    assert three.mode == "RGB" and three.width == one.width and three.height - one.height == 2 * 115  # 1.15 in rows


def test_cli_turns_photos_upright_by_their_exif_orientation_as_training_does(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image, ImageOps

    from mae_hf.data import eval_transform, to_model_mode
    from mae_hf.visualize import cli as visualize

    model_dir = tmp_path / "model"
    MAEForPreTraining(tiny_config()).save_pretrained(model_dir)
    pixels = np.zeros((16, 48, 3), dtype=np.uint8)
    pixels[:, :16] = 255  # a white left third: its place after the crop shows the orientation
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # stored sideways, shown rotated by 90 degrees
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif)
    seen = {}

    def spy(model, pixel_values, *args, **kwargs):
        seen["pixels"] = pixel_values
        return Image.new("RGB", (1, 1))

    monkeypatch.setattr(visualize, "reconstruction_grid", spy)
    visualize.main([str(model_dir), str(tmp_path / "photo.jpg"), "--output", str(tmp_path / "figure.png")])
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "photo.jpg"))
    assert upright.size == (16, 48)
    expected = eval_transform(32)(to_model_mode(upright))
    assert torch.equal(seen["pixels"][0], expected)
