"""The MAE vision transformer as Hugging Face models.

`MAEModel` is the one ViT encoder; every task model holds it as `self.vit`:
    MAEForPreTraining          encoder on the visible patches + light decoder that reconstructs the masked ones
    MAEForImageClassification  encoder on all patches + (mean pool, fc_norm | class token) + linear head
Only relative imports below: saved models copy these files so they load with `trust_remote_code=True`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from .configuration_mae import MAEConfig, to_pair
from .layers import PatchEmbed, init_patch_embed, make_blocks, run_blocks
from .losses import classification_loss
from .pos_embed import position_table, sincos_2d
from .weight_loading import fit_checkpoint

AUTO_CLASSES = {
    "MAEModel": "AutoModel",
    "MAEForPreTraining": "AutoModelForPreTraining",
    "MAEForImageClassification": "AutoModelForImageClassification",
}


@dataclass
class MAEModelOutput(ModelOutput):
    """
    last_hidden_state: (B, 1 + kept patches, D), class token first, patches in natural order when not masking.
    mask: (B, L) with 1 for removed patches, 0 for kept ones; None when not masking.
    ids_restore: (B, L) position of each patch in the shuffled sequence; None when not masking.
    hidden_states: embeddings and the output of each block (before the final norm).
    attentions: (B, heads, N, N) per block, when asked for.
    """

    last_hidden_state: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MAEForPreTrainingOutput(ModelOutput):
    """
    loss: mean squared error over the pixels of the removed patches (per-patch normalised with norm_pix_loss).
    logits: (B, L, patch_size**2 * num_channels) reconstruction of every patch, in `patchify` layout.
    mask, ids_restore, hidden_states, attentions: as in `MAEModelOutput` (the encoder's).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """Keep the (1 - mask_ratio) share of tokens with the smallest noise, per sample.

    x: (B, L, D) -> kept (B, L_keep, D), mask (B, L; 1 = removed), ids_restore (B, L).
    """
    batch, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, length, device=x.device)
    elif noise.shape != (batch, length):
        raise ValueError(f"noise must have shape (batch, num_patches) = {(batch, length)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = (ids_restore >= len_keep).float()  # a patch is removed iff its shuffled position is past len_keep
    return kept, mask, ids_restore


class MAEPreTrainedModel(PreTrainedModel):
    config_class = MAEConfig
    config: MAEConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _can_compile_fullgraph = True
    _no_split_modules = ["Block"]
    _auto_classes = AUTO_CLASSES  # written into config.json's auto_map on save
    # Sized by config.num_labels: new with `ignore_mismatched_sizes` when a checkpoint has other classes.
    _label_layers = ("head.",)
    # Where transformers' get_input_embeddings / set_input_embeddings (and enable_input_require_grads) find the patch
    # embedding: on the encoder, and through `base_model` (the encoder) on the task models, as ViT's `patch_embeddings`.
    _input_embed_layer = "patch_embed"

    def __init__(self, config: MAEConfig, *args, **kwargs):
        config.check()  # again: from_pretrained overrides and plain attribute writes bypass __post_init__
        super().__init__(config, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """The official MAE init: xavier-uniform Linears (the patch embedding too, seen as a Linear), unit
        LayerNorms, N(0, 0.02) class/mask tokens, fixed sin-cos tables, a classifier head with std 2e-5.

        `init.*` skip tensors that were loaded. Work is attached to modules that own parameters directly:
        transformers skips remote-code modules that own none (such as `PatchEmbed`)."""
        if isinstance(module, nn.Linear):
            if module is head_linear(self):
                # official init: std 2e-5 for fine-tuning, 0.01 for the linear probe
                init.trunc_normal_(module.weight, std=0.01 if self.config.head_batchnorm else 2e-5)
            else:
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")  # dense heads and neck
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.affine:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, MAEModel):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            init.copy_(module.pos_embed, sincos_2d(module.pos_embed.shape[-1], self.config.grid_size))
            if isinstance(module.patch_embed, PatchEmbed):  # not one the user set (`set_input_embeddings`)
                init_patch_embed(module.patch_embed.proj)
        elif isinstance(module, MAEDecoder):
            init.normal_(module.mask_token, std=self.config.initializer_range)
            init.copy_(module.pos_embed, sincos_2d(module.pos_embed.shape[-1], self.config.grid_size))

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Saved as our own class however the model is wrapped: FSDP2's fully_shard swaps the class for a subclass it
        # generates in torch's files, whose name and files would otherwise go into config.json and the folder.
        wrapped_class, self.__class__ = type(self), model_class(self)
        try:
            # Point every Auto class at this file, so any task model loads from any checkpoint with remote code.
            if self._auto_class is not None:
                module = type(self).__module__.split(".")[-1]
                self.config.auto_map = {auto: f"{module}.{name}" for name, auto in self._auto_classes.items()}
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.__class__ = wrapped_class

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys=None):
        """Load as transformers does, after checking shapes and resampling position tables (`fit_checkpoint`)."""
        state_dict, checkpoint_files = fit_checkpoint(
            model, state_dict, checkpoint_files, is_encoder=isinstance(model, MAEModel)
        )
        return PreTrainedModel._load_pretrained_model(
            model, state_dict, checkpoint_files, load_config, expected_keys=expected_keys
        )


def fixed_table(dim: int, config: MAEConfig) -> torch.Tensor:
    """The (1, 1 + L, dim) sin-cos table of a new `pos_embed` buffer, in the default dtype (that of the model being
    built). Computed at construction as well as in `_init_weights`: a model built without weight initialisation
    (transformers' `no_init_weights`, DeepSpeed ZeRO-3 loading) then holds the table, never zeros, and one built on the
    meta device gets it from `_init_weights` once materialised; both hold the same values."""
    return sincos_2d(dim, config.grid_size).to(torch.get_default_dtype())


def model_class(model: nn.Module) -> type:
    """The model's own class: FSDP2's `fully_shard` turns `model` into an instance of a generated subclass
    (`FSDPMAEForPreTraining`, defined in torch's files); this is the class it was built as."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no FSDP2 class swap to undo
        return type(model)
    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def head_linear(model) -> nn.Linear | None:
    head = getattr(model, "head", None)
    return head[-1] if isinstance(head, nn.Sequential) else head


class MAEModel(MAEPreTrainedModel):
    """The ViT encoder. With `mask_ratio` (or `noise`) it encodes only a random subset of the patches, as in
    pretraining; otherwise it encodes every patch in natural (row-major) order."""

    def __init__(self, config: MAEConfig, final_norm: bool = True):
        super().__init__(config)
        self.patch_embed = PatchEmbed(config.patch_size, config.num_channels, config.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # A buffer, not a frozen Parameter: it cannot become trainable after from_pretrained, and it is saved.
        self.register_buffer("pos_embed", fixed_table(config.hidden_size, config))
        self.blocks = make_blocks(
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config,
            config.drop_path_rate,
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if final_norm else nn.Identity()
        self.post_init()

    def pos_embed_for(self, grid: tuple[int, int], interpolate_pos_encoding: bool) -> torch.Tensor:
        return position_table(self.pos_embed, self.config, grid, interpolate_pos_encoding)

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MAEModelOutput | tuple:
        """
        pixel_values: (B, C, H, W).
        mask_ratio: share of patches to remove at random; None (default) encodes them all, unless `noise` is
            given, which masks with `config.mask_ratio`.
        noise: (B, L) scores; the patches with the smallest noise are kept (the official convention).
        interpolate_pos_encoding: accept an image size other than `config.image_size` (2-D bicubic resampling).
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if mask_ratio is None and noise is not None:
            mask_ratio = self.config.mask_ratio

        # Image processors and users give float32 pixels; a bf16/fp16 model takes them in its own dtype, as ViT does.
        x = self.patch_embed(pixel_values.to(self.cls_token.dtype))  # (B, L, D)
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        pos_embed = self.pos_embed_for(grid, interpolate_pos_encoding)  # (1, 1 + L, D)
        x = x + pos_embed[:, 1:]
        mask = ids_restore = None
        if mask_ratio is not None:
            x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # (B, L_keep, D)
        cls_token = (self.cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token, x], dim=1)

        x, hidden_states, attentions = run_blocks(
            self.blocks, x, output_hidden_states, output_attentions, eager=self.config._attn_implementation == "eager"
        )
        x = self.norm(x)
        if not return_dict:
            return tuple(v for v in (x, mask, ids_restore, hidden_states, attentions) if v is not None)
        return MAEModelOutput(
            last_hidden_state=x, mask=mask, ids_restore=ids_restore, hidden_states=hidden_states, attentions=attentions
        )

    def get_intermediate_layers(
        self, pixel_values: torch.Tensor, indices: tuple[int, ...], interpolate_pos_encoding: bool = False
    ) -> list[torch.Tensor]:
        """Channels-first feature maps (B, D, H/p, W/p) after the blocks numbered `indices` (0-based), for dense heads."""
        outputs = self(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, output_hidden_states=True, return_dict=True
        )
        return self.feature_maps(outputs.hidden_states, indices, tuple(pixel_values.shape[-2:]))

    def feature_maps(
        self, hidden_states: tuple[torch.Tensor, ...], indices: tuple[int, ...], image_hw: tuple[int, int]
    ) -> list[torch.Tensor]:
        """`hidden_states` of an unmasked forward on (H, W) images -> (B, D, H/p, W/p) maps after blocks `indices`."""
        grid_h, grid_w = image_hw[0] // self.config.patch_size, image_hw[1] // self.config.patch_size
        maps = []
        for index in indices:
            tokens = hidden_states[index + 1][:, 1:]  # (B, N, D) without the class token
            maps.append(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid_h, grid_w))  # -> (B, D, h, w)
        return maps


class MAEDecoder(nn.Module):
    """Embeds the visible tokens, fills the removed positions with the mask token, unshuffles, and predicts the
    pixels of every patch."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.register_buffer("pos_embed", fixed_table(config.decoder_hidden_size, config))
        self.blocks = make_blocks(
            config.decoder_num_hidden_layers,
            config.decoder_hidden_size,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
            config,
        )
        self.norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.pred = nn.Linear(config.decoder_hidden_size, config.patch_size**2 * config.num_channels)

    def forward(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int], interpolate: bool = False
    ) -> torch.Tensor:
        """latent (B, 1 + L_keep, D), ids_restore (B, L) -> pixel predictions (B, L, p*p*C)."""
        x = self.embed(latent)  # (B, 1 + L_keep, D_dec)
        batch, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, length + 1 - x.shape[1], -1).to(x.dtype)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, L, D_dec), shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + position_table(self.pos_embed, self.config, grid, interpolate)
        x, _, _ = run_blocks(self.blocks, x, False, False, eager=self.config._attn_implementation == "eager")
        return self.pred(self.norm(x))[:, 1:]  # drop the class token


class MAEForPreTraining(MAEPreTrainedModel):
    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.vit = MAEModel(config)
        self.decoder = MAEDecoder(config)
        self.post_init()

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), each patch flattened as (row, column, channel) like the official code."""
        patch, channels = self.config.patch_size, self.config.num_channels
        batch, _, height, width = pixel_values.shape
        grid_h, grid_w = height // patch, width // patch
        x = pixel_values.reshape(batch, channels, grid_h, patch, grid_w, patch)
        x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
        return x.reshape(batch, grid_h * grid_w, patch * patch * channels)

    def unpatchify(self, patches: torch.Tensor, image_size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W); `image_size` defaults to `config.image_size`."""
        patch, channels = self.config.patch_size, self.config.num_channels
        height, width = to_pair(self.config.image_size if image_size is None else image_size)
        grid_h, grid_w = height // patch, width // patch
        if grid_h * grid_w != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patches do not tile a {height}x{width} image with patch size {patch}")
        x = patches.reshape(patches.shape[0], grid_h, grid_w, patch, patch, channels)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
        return x.reshape(patches.shape[0], channels, height, width)

    def forward_loss(self, pixel_values: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches only; with norm_pix_loss the target is each patch's pixels
        normalised by that patch's own mean and variance."""
        target = self.patchify(pixel_values.float())  # float32 statistics and loss, whatever the model's dtype
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((logits.float() - target) ** 2).mean(dim=-1)  # (B, L): per-patch error
        return (loss * mask).sum() / mask.sum().clamp(min=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MAEForPreTrainingOutput | tuple:
        """Masks `mask_ratio` (default `config.mask_ratio`) of the patches, reconstructs them, returns the loss."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoded = self.vit(
            pixel_values,
            mask_ratio=self.config.mask_ratio if mask_ratio is None else mask_ratio,
            noise=noise,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        logits = self.decoder(encoded.last_hidden_state, encoded.ids_restore, grid, interpolate_pos_encoding)
        loss = self.forward_loss(pixel_values, logits, encoded.mask)
        output = MAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            mask=encoded.mask,
            ids_restore=encoded.ids_restore,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


class MAEForImageClassification(MAEPreTrainedModel):
    """Encoder + pooling + linear head. `pooling="mean"`: mean of the patch tokens, then fc_norm (the encoder's
    final norm is unused, as in the official fine-tuning); `"cls"`: final norm, then the class token. With
    `head_batchnorm` the head is BatchNorm1d(affine=False) + Linear (the paper's linear probe)."""

    # A pretraining checkpoint brings its decoder; with mean pooling, its final norm (`vit.norm`, or `norm` from a
    # bare encoder) is not used.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^(vit\.)?norm\."]

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        mean_pool = config.pooling == "mean"
        self.vit = MAEModel(config, final_norm=not mean_pool)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if mean_pool else nn.Identity()
        self.head = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        if config.head_batchnorm:  # the linear-probing protocol: normalise the frozen features first
            self.head = nn.Sequential(nn.BatchNorm1d(config.hidden_size, affine=False, eps=1e-6), self.head)
        self.post_init()

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """(B, 1 + L, D) -> (B, D)."""
        if self.config.pooling == "mean":
            return self.fc_norm(last_hidden_state[:, 1:].mean(dim=1))
        return last_hidden_state[:, 0]

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        """labels: as `config.problem_type` says (see `classification_loss`): class ids (B,) or soft targets
        (B, num_labels), e.g. from mixup/cutmix; multi-hot (B, num_labels); regression targets."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoded = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.head(self.pool(encoded.last_hidden_state))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "MAEModel",
    "MAEForPreTraining",
    "MAEForImageClassification",
    "MAEPreTrainedModel",
    "MAEModelOutput",
    "MAEForPreTrainingOutput",
    "random_masking",
]
