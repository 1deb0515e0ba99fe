"""Reconstruction figures: norm_pix_loss undone with each patch's own statistics, visible patches pasted back."""

import torch
from conftest import tiny_config

from mae_hf import MAEForPreTraining
from mae_hf.visualize import reconstruct, reconstruction_grid


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
        original, masked, reconstruction, pasted = reconstruct(model, pixels, noise)
        torch.testing.assert_close(reconstruction, pixels, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pasted, pixels, rtol=1e-4, atol=1e-4)
        removed = model.unpatchify(model(pixels, noise=noise).mask.unsqueeze(-1).expand(-1, -1, 192))
        assert torch.all(masked[removed.bool()] == 0) and torch.equal(masked[~removed.bool()], pixels[~removed.bool()])


def test_pasted_panel_keeps_visible_pixels_and_takes_predictions_elsewhere():
    model = MAEForPreTraining(tiny_config()).eval()
    pixels, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    _, _, reconstruction, pasted = reconstruct(model, pixels, noise)
    removed = model.unpatchify(model(pixels, noise=noise).mask.unsqueeze(-1).expand(-1, -1, 192)).bool()
    torch.testing.assert_close(pasted[~removed], pixels[~removed])
    torch.testing.assert_close(pasted[removed], reconstruction[removed])


def test_grid_layout():
    model = MAEForPreTraining(tiny_config()).eval()
    grid = reconstruction_grid(model, torch.randn(3, 3, 32, 32), (0.5,) * 3, (0.5,) * 3, min_side=64)
    assert grid.size == (4 * (64 + 2) + 2, 3 * (64 + 2) + 2)  # 4 panels, 3 rows, 32 px enlarged 2x
