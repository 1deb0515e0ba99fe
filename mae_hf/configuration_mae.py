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
            raise ValueError(f"image_size {self.image_size!r} is not divisible by patch_size {self.patch_size}")
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

    @property
    def num_masked_patches(self) -> int:
        """Patches removed per image in pretraining: the model keeps int(num_patches x (1 - mask_ratio))."""
        return self.num_patches - int(self.num_patches * (1 - self.mask_ratio))


NECK_RESCALES = (4.0, 2.0, 1.0, 0.5, 0.25)


@strict
class MAESegmentationConfig(MAEConfig):
    r"""
    The MAE encoder under an UperNet head (mmsegmentation's MAE recipe): features after the blocks `out_indices`,
    a neck that rescales them by `neck_rescales` (4: deconv-BN-GELU-deconv, 2: deconv, 1: identity, 0.5 / 0.25:
    max-pool), an UperNet decode head (`pool_scales`, `decode_channels` wide) and an FCN auxiliary head on level
    `auxiliary_in_index` whose loss counts `auxiliary_loss_weight`; both heads apply Dropout2d
    (`classifier_dropout_prob`, mmseg's `dropout_ratio` 0.1) before their 1x1 classifier, whose weights start
    N(0, `classifier_init_std`) (mmseg: 0.01; 0 = kaiming-normal like the other convolutions). Pixels labelled
    `ignore_index` add nothing to the loss, which is averaged over all pixels (mmseg's default) or, with
    `avg_non_ignore`, over the others only.
    `inference_mode` "slide" evaluates in `test_crop_size` windows every `test_stride` pixels (mmseg's
    slide_inference), "whole" in one pass.
    """

    model_type = "mae_upernet"

    image_size: int | list[int] | tuple[int, int] = 512
    drop_path_rate: float | int = 0.1
    out_indices: list[int] | tuple[int, ...] = (3, 5, 7, 11)
    neck_rescales: list[float] | tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    decode_channels: int = 768
    pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6)
    use_auxiliary_head: bool = True
    auxiliary_in_index: int = 2
    auxiliary_channels: int = 256
    auxiliary_num_convs: int = 1
    auxiliary_loss_weight: float = 0.4
    classifier_dropout_prob: float = 0.1
    classifier_init_std: float = 0.01
    avg_non_ignore: bool = False
    ignore_index: int = 255
    inference_mode: str = "whole"
    test_crop_size: int = 512
    test_stride: int = 341

    def check(self):
        super().check()
        if len(self.out_indices) != len(self.neck_rescales):
            raise ValueError(
                f"out_indices {list(self.out_indices)} and neck_rescales {list(self.neck_rescales)} differ in length"
            )
        bad = [i for i in self.out_indices if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"out_indices {bad} are not blocks of a {self.num_hidden_layers}-block encoder")
        if any(r not in NECK_RESCALES for r in self.neck_rescales):
            raise ValueError(f"neck_rescales must be among {NECK_RESCALES}, got {list(self.neck_rescales)}")
        if self.classifier_init_std < 0:
            raise ValueError(f"classifier_init_std must be >= 0 (0: kaiming-normal), got {self.classifier_init_std}")
        if not 0 <= self.classifier_dropout_prob < 1:
            raise ValueError(f"classifier_dropout_prob must be in [0, 1), got {self.classifier_dropout_prob}")
        if not 0 <= self.auxiliary_in_index < len(self.out_indices):
            raise ValueError(f"auxiliary_in_index {self.auxiliary_in_index} is not a feature level")
        if self.inference_mode not in ("whole", "slide"):
            raise ValueError(f"inference_mode must be 'whole' or 'slide', got {self.inference_mode!r}")
        if not 0 < self.test_stride <= self.test_crop_size:
            raise ValueError(f"test_stride must be in (0, test_crop_size], got {self.test_stride}")


def segmentation_config(encoder: MAEConfig, **overrides) -> MAESegmentationConfig:
    """A segmentation config on the encoder of `encoder` (e.g. a pretraining checkpoint's config), with
    segmentation settings and any encoder field (image_size, drop_path_rate...) from `overrides`."""
    encoder_fields = {name: getattr(encoder, name) for name in MAEConfig.__annotations__ if hasattr(encoder, name)}
    return MAESegmentationConfig(**{**encoder_fields, **overrides})


__all__ = ["MAEConfig", "MAESegmentationConfig", "segmentation_config"]
