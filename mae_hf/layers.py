"""The ViT building blocks: patch embedding, attention with fused qkv, MLP, stochastic depth, pre-norm block.

Parameter names follow timm and the official MAE code (`patch_embed.proj`, `attn.qkv`, `mlp.fc1`, `norm1`...), so
their checkpoints map onto these modules one to one.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer


class PatchEmbed(nn.Module):
    """(B, C, H, W) images -> (B, H/p * W/p, D) patch tokens in row-major order."""

    def __init__(self, patch_size: int, num_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.proj = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def check_input(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        channels, height, width = pixel_values.shape[1:]
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects num_channels={self.num_channels}"
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not divisible by the patch size {self.patch_size}")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_input(pixel_values)
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The fused path is `scaled_dot_product_attention` (flash / memory-efficient kernels on GPUs); the eager path,
    which materialises the attention map, runs only when the map is asked for or `eager=True`.
    """

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(hidden_size, hidden_size * 3, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, eager: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, tokens, width = x.shape
        # Unbound on the qkv axis of the Linear's own (B, N, 3, heads, head_dim) layout and only then transposed:
        # backward stacks the three gradients straight into that layout, with no further full-size copy.
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, heads, N, head_dim) each
        if eager:
            weights = ((query * self.scale) @ key.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
            x = weights @ value
        else:
            weights = None
            x = F.scaled_dot_product_attention(query, key, value)
        x = x.transpose(1, 2).reshape(batch, tokens, width)  # heads back into channels
        return self.proj(x), weights


class Mlp(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample. Written here because torchvision's `StochasticDepth` does not rescale
    in the same place as timm/official MAE and transformers exposes it only inside individual model files."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)  # one draw per sample
        return x * mask  # rescaled on the (B, 1, 1) mask: one full-size product, as in timm

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Block(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each branch with stochastic depth."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        drop_path: float = 0.0,
        act: str = "gelu",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attn = Attention(hidden_size, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = Mlp(hidden_size, intermediate_size, act)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, eager: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.norm1(x), eager)
        x = x + self.drop_path(attended)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


def make_blocks(
    depth: int, hidden_size: int, num_heads: int, intermediate_size: int, config, drop_path_rate: float = 0.0
) -> nn.ModuleList:
    """`depth` blocks whose drop-path rate rises linearly from 0 to `drop_path_rate` (official schedule)."""
    # On the CPU explicitly: under `with torch.device("meta")` (big-model loading, FSDP) a meta tensor has no values.
    rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
    return nn.ModuleList(
        Block(
            hidden_size, num_heads, intermediate_size, config.qkv_bias, config.layer_norm_eps, rate, config.hidden_act
        )
        for rate in rates
    )


def run_blocks(blocks, x, output_hidden_states: bool, output_attentions: bool, eager: bool = False):
    """x through every block; returns (x, hidden states or None, attention maps or None)."""
    hidden_states = (x,) if output_hidden_states else None
    attentions = () if output_attentions else None
    for block in blocks:
        x, weights = block(x, eager or output_attentions)
        if output_hidden_states:
            hidden_states += (x,)
        if output_attentions:
            attentions += (weights,)
    return x, hidden_states, attentions


def init_patch_embed(proj: nn.Conv2d) -> None:
    """Xavier-uniform on the kernel seen as a (D, C*p*p) Linear; the bias keeps PyTorch's Conv2d default, which
    the official code leaves as it is."""
    if not getattr(proj.weight, "_is_hf_initialized", False):  # a view drops the flag: check it here
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    bound = 1.0 / (proj.weight[0].numel() ** 0.5)
    init.uniform_(proj.bias, -bound, bound)
