"""Configuration of the MAE vision transformer (encoder + pretraining decoder + classification head)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

POOLING_CHOICES = ("mean", "cls")


def to_pair(value) -> tuple[int, int]:
    """`224` -> `(224, 224)`; `(224, 320)` -> `(224, 320)` (height, width)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"image_size must be an int or an (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


@strict
class MAEConfig(PreTrainedConfig):
    r"""
    Configuration of a ViT trained as a Masked Autoencoder (He et al., 2021). Field names follow
    `transformers.ViTMAEConfig`; defaults are ViT-B/16 with the official MAE decoder (512 wide, 8 deep).

    Args:
        image_size (`int` or `(height, width)`): input resolution the position tables are built for.
        patch_size (`int`): side of the square patches.
        num_channels (`int`): image channels.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: encoder width, depth, heads, MLP width.
        hidden_act (`str`): MLP activation (`"gelu"`, exact erf form, as the official code).
        qkv_bias (`bool`): bias in the fused query/key/value projection.
        layer_norm_eps (`float`): LayerNorm epsilon (official MAE: 1e-6; transformers' ViTMAE: 1e-12).
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            the pretraining decoder.
        mask_ratio (`float`): fraction of patches removed during pretraining, in [0, 1).
        norm_pix_loss (`bool`): regress per-patch normalised pixels (the paper's best setting).
        drop_path_rate (`float`): stochastic depth rate, rising linearly over the encoder blocks.
        pooling (`str`): classification pooling, `"mean"` (mean of patch tokens + fc_norm, official fine-tuning
            default) or `"cls"` (final norm, then the class token).
        head_batchnorm (`bool`): a BatchNorm1d(affine=False) before the classification head (linear probing).
        initializer_range (`float`): std of the class and mask tokens.
    """

    model_type = "mae_vit"

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    mask_ratio: float | int = 0.75
    norm_pix_loss: bool = False
    drop_path_rate: float | int = 0.0
    pooling: str = "mean"
    head_batchnorm: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # Checked here rather than in a `validate_*` hook so that users get a plain ValueError naming the field.
        self.check()
        super().__post_init__(**kwargs)

    def check(self):
        positive = (
            "patch_size num_channels hidden_size num_hidden_layers num_attention_heads intermediate_size "
            "decoder_hidden_size decoder_num_hidden_layers decoder_num_attention_heads decoder_intermediate_size"
        ).split()
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        height, width = to_pair(self.image_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size!r}")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size!r} is not divisible by patch_size {self.patch_size}"
            )
        for prefix in ("", "decoder_"):
            hidden, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_attention_heads")
            if hidden % heads:
                raise ValueError(
                    f"{prefix}hidden_size ({hidden}) is not divisible by {prefix}num_attention_heads ({heads})"
                )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {self.pooling!r}")

    def validate_architecture(self):
        self.check()

    @property
    def image_hw(self) -> tuple[int, int]:
        return to_pair(self.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along (height, width)."""
        height, width = self.image_hw
        return height // self.patch_size, width // self.patch_size

    @property
    def num_patches(self) -> int:
        grid_h, grid_w = self.grid_size
        return grid_h * grid_w


__all__ = ["MAEConfig"]
