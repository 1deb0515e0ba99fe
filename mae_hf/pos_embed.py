"""Fixed 2-D sin-cos position tables (official MAE layout), their bicubic resampling, and the table a model uses
for a given patch grid."""

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions (M,) float64 -> (M, dim): [sin(pos * omega) | cos(pos * omega)], omega = 10000^(-2i/dim)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1, 1) * omega.reshape(1, -1)  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """The official `get_2d_sincos_pos_embed` for a (grid_h, grid_w) grid -> (1, [1 +] grid_h * grid_w, dim).

    Tokens are in row-major (h-outer) order. The first half of the channels encodes the COLUMN (w) and the second
    half the ROW (h): the official code names them the other way round, and every released checkpoint relies on
    this layout. The class token's row is zeros. Computed in float64 like the official NumPy code.
    """
    if dim % 4:
        raise ValueError(f"position table width must be divisible by 4, got {dim}")
    grid_h, grid_w = grid_size
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )  # (grid_h, grid_w) each
    table = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)  # (grid_h * grid_w, dim)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table.float().unsqueeze(0)


def resample_pos_embed(
    table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Bicubic 2-D resampling of a (1, prefix + old_h * old_w, D) table to (1, prefix + new_h * new_w, D).

    The prefix (class token) rows are kept as they are, as in the official `interpolate_pos_embed`.
    """
    if tuple(old_grid) == tuple(new_grid):
        return table
    prefix, patches = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    if patches.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(
            f"position table has {patches.shape[1]} patch rows, which does not match a {old_grid[0]}x{old_grid[1]} grid"
        )
    dim = table.shape[-1]
    grid = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, D, old_h, old_w)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False).to(table.dtype)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)  # back to (1, N, D)
    return torch.cat([prefix, patches], dim=1)


def position_table(table: torch.Tensor, config, grid: tuple[int, int], interpolate: bool) -> torch.Tensor:
    """A model's (1, 1 + h * w, D) table for a (rows, columns) patch grid: as it is at `config.grid_size`, resampled
    when `interpolate`; another grid without `interpolate` raises a ValueError naming both image sizes."""
    if grid == config.grid_size:
        return table
    if not interpolate:
        height, width = grid[0] * config.patch_size, grid[1] * config.patch_size
        raise ValueError(
            f"image size {height}x{width} differs from config.image_size {config.image_size}; "
            "pass interpolate_pos_encoding=True to resample the position tables"
        )
    return resample_pos_embed(table, config.grid_size, grid)
