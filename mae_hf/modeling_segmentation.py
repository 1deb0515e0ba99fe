"""Semantic segmentation: the MAE encoder as a multi-scale backbone under transformers' UperNet heads.

    pixels -> MAEModel blocks `out_indices` -> (B, D, H/p, W/p) maps -> neck (x4, x2, x1, x0.5) -> UperNet -> logits
Only relative imports below: saved models copy these files so they load with `trust_remote_code=True`.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import UperNetConfig
from transformers import initialization as init
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

from .configuration_mae import MAESegmentationConfig
from .modeling_mae import MAEModel, MAEPreTrainedModel


def rescale_block(width: int, rescale: float) -> nn.Module:
    """mmsegmentation's Feature2Pyramid: 4 = deconv-BN-GELU-deconv, 2 = deconv, 1 = identity, 1/k = max-pool k."""
    if rescale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
        )
    if rescale == 2:
        return nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)
    if rescale == 1:
        return nn.Identity()
    return nn.MaxPool2d(kernel_size=round(1 / rescale), stride=round(1 / rescale))


class MultiScaleNeck(nn.Module):
    """Four (B, D, h, w) maps of one resolution -> maps at h * rescale (a pyramid for UperNet)."""

    def __init__(self, width: int, rescales):
        super().__init__()
        self.levels = nn.ModuleList(rescale_block(width, r) for r in rescales)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [level(x) for level, x in zip(self.levels, maps)]


class SegmentationClassifier(nn.Conv2d):
    """mmsegmentation's `BaseDecodeHead.cls_seg`: Dropout2d(`dropout`) then the 1x1 convolution to class logits.
    Its state-dict keys are a plain Conv2d's (`weight`, `bias`), those of transformers' UperNet heads."""

    def __init__(self, in_channels: int, num_labels: int, dropout: float):
        super().__init__(in_channels, num_labels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(features))


def upernet_config(config: MAESegmentationConfig) -> UperNetConfig:
    """The settings transformers' UperNet heads read, from ours (UperNet calls its width `hidden_size`)."""
    return UperNetConfig(
        num_labels=config.num_labels,
        hidden_size=config.decode_channels,
        pool_scales=list(config.pool_scales),
        auxiliary_in_channels=None,
        auxiliary_channels=config.auxiliary_channels,
        auxiliary_num_convs=config.auxiliary_num_convs,
        auxiliary_concat_input=False,
    )


class MAEForSemanticSegmentation(MAEPreTrainedModel):
    """UperNet on the MAE encoder. `labels` (B, H, W) class ids, `ignore_index` for unlabelled pixels; the loss is
    cross-entropy of the decode head + `auxiliary_loss_weight` x that of the auxiliary head, both at input size."""

    config_class = MAESegmentationConfig
    config: MAESegmentationConfig
    _auto_classes = {"MAEForSemanticSegmentation": "AutoModelForSemanticSegmentation"}
    # An MAE pretraining, bare-encoder or classification checkpoint brings parts that segmentation does not use.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^(vit\.)?norm\.", r"^fc_norm\.", r"^head\."]
    _label_layers = ("decode_head.classifier.", "auxiliary_head.classifier.")

    def __init__(self, config: MAESegmentationConfig):
        super().__init__(config)
        self.vit = MAEModel(config, final_norm=False)  # dense features come from the blocks, not the final norm
        self.neck = MultiScaleNeck(config.hidden_size, config.neck_rescales)
        heads = upernet_config(config)
        in_channels = [config.hidden_size] * len(config.out_indices)
        self.decode_head = UperNetHead(heads, in_channels=in_channels)
        self.auxiliary_head = (
            UperNetFCNHead(heads, in_channels=in_channels, in_index=config.auxiliary_in_index)
            if config.use_auxiliary_head
            else None
        )
        for head in (self.decode_head, self.auxiliary_head):
            if head is not None:
                head.classifier = SegmentationClassifier(
                    head.channels, config.num_labels, config.classifier_dropout_prob
                )
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # convolutions: kaiming-normal (fan-out), as mmcv's ConvModule
        if isinstance(module, SegmentationClassifier) and self.config.classifier_init_std > 0:
            init.normal_(module.weight, std=self.config.classifier_init_std)  # mmseg's conv_seg: N(0, 0.01)
            init.zeros_(module.bias)

    def features(self, pixel_values: torch.Tensor, output_attentions: bool = False):
        """pixel_values (B, C, H, W), H and W multiples of the patch size -> (the neck's pyramid of (B, D, h_i, w_i)
        maps, the encoder's `MAEModelOutput` with every hidden state). Other image sizes than the config's resample
        the position table."""
        size = tuple(pixel_values.shape[-2:])
        encoded = self.vit(
            pixel_values,
            interpolate_pos_encoding=size != self.config.image_hw,
            output_hidden_states=True,
            output_attentions=output_attentions,
            return_dict=True,
        )
        return self.neck(self.vit.feature_maps(encoded.hidden_states, self.config.out_indices, size)), encoded

    def segment(self, pixel_values: torch.Tensor, output_attentions: bool = False):
        """pixel_values (B, C, H, W) -> (decode logits, auxiliary logits or None (always None in eval mode), the
        encoder's output on the padded image); logits (B, num_labels, H, W) at the input's size. Sizes that are not
        multiples of the patch size are padded (bottom, right) and the logits cropped back."""
        size, patch = pixel_values.shape[-2:], self.config.patch_size
        pad_h, pad_w = -size[0] % patch, -size[1] % patch
        padded = F.pad(pixel_values, (0, pad_w, 0, pad_h)) if pad_h or pad_w else pixel_values
        pyramid, encoded = self.features(padded, output_attentions)
        padded_size, crop = padded.shape[-2:], (..., slice(0, size[0]), slice(0, size[1]))
        logits = F.interpolate(self.decode_head(pyramid), size=padded_size, mode="bilinear", align_corners=False)
        auxiliary = None
        if self.auxiliary_head is not None and self.training:
            auxiliary = F.interpolate(
                self.auxiliary_head(pyramid), size=padded_size, mode="bilinear", align_corners=False
            )[crop]
        return logits[crop], auxiliary, encoded

    def loss(self, logits, auxiliary, labels) -> torch.Tensor:
        """Cross-entropy of the decode head + `auxiliary_loss_weight` x that of the auxiliary head. Pixels labelled
        `ignore_index` add nothing; the mean is over all pixels (mmseg's default, `avg_non_ignore=False`) or over
        the others (`config.avg_non_ignore`, PyTorch's `ignore_index` mean)."""
        loss = self.pixel_loss(logits, labels)
        if auxiliary is not None:
            loss = loss + self.config.auxiliary_loss_weight * self.pixel_loss(auxiliary, labels)
        return loss

    def pixel_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (B, C, H, W), labels (B, H, W) -> the mean cross-entropy (see `loss`)."""
        if self.config.avg_non_ignore:
            return F.cross_entropy(logits.float(), labels.long(), ignore_index=self.config.ignore_index)
        total = F.cross_entropy(logits.float(), labels.long(), ignore_index=self.config.ignore_index, reduction="sum")
        return total / labels.numel()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SemanticSegmenterOutput | tuple:
        """pixel_values (B, C, H, W), labels (B, H, W) -> logits (B, num_labels, H, W), as transformers'
        UperNetForSemanticSegmentation; `hidden_states` / `attentions` are the encoder's (embeddings, then each
        block). Sliding-window inference (`inference_mode="slide"`, eval mode) returns neither: one set per window."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        encoded = None
        if not self.training and self.config.inference_mode == "slide":
            logits, auxiliary = slide_inference(self, pixel_values), None
        else:
            logits, auxiliary, encoded = self.segment(pixel_values, output_attentions)
        loss = None if labels is None else self.loss(logits, auxiliary, labels)
        output = SemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=encoded.hidden_states if encoded is not None and output_hidden_states else None,
            attentions=encoded.attentions if encoded is not None and output_attentions else None,
        )
        return output if return_dict else output.to_tuple()


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """mmseg's grid: ceil((length - crop) / stride) + 1 windows, the last one flush with the end."""
    if length <= crop:
        return [0]
    count = -(-(length - crop) // stride) + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})


@torch.no_grad()
def slide_inference(model: MAEForSemanticSegmentation, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, H, W) averaged over `test_crop_size` windows placed every `test_stride` pixels (images
    smaller than a window are evaluated whole)."""
    crop, stride = model.config.test_crop_size, model.config.test_stride
    batch, _, height, width = pixel_values.shape
    total = pixel_values.new_zeros(batch, model.config.num_labels, height, width, dtype=torch.float32)
    count = pixel_values.new_zeros(1, 1, height, width, dtype=torch.float32)
    for top in window_starts(height, crop, stride):
        for left in window_starts(width, crop, stride):
            window = pixel_values[:, :, top : top + crop, left : left + crop]
            logits = model.segment(window)[0]
            total[:, :, top : top + window.shape[-2], left : left + window.shape[-1]] += logits.float()
            count[:, :, top : top + window.shape[-2], left : left + window.shape[-1]] += 1
    return total / count


@torch.no_grad()
def segment_to_original_size(
    model: MAEForSemanticSegmentation,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor | None = None,
    original_sizes: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """mmsegmentation's inference + `postprocess_result` for a padded batch, image by image.

    pixel_values: (B, C, H, W), images resized for the model and padded at the bottom/right to one size.
    image_sizes: (B, 2) each image's (height, width) before padding (default: H, W).
    original_sizes: (B, 2) each image's original annotation size (default: its image size).
    Each image is cut to its own size, so that neither padding nor the other images of the batch change its
    prediction; images of the same size go through the model together (`config.inference_mode`: whole or sliding
    window); each image's logits are resized (bilinear, align_corners=False) to its original size.
    Returns B float32 logits (num_labels, H_i, W_i) at the original sizes.
    """
    batch, _, height, width = pixel_values.shape
    image_sizes = _sizes(image_sizes, batch, (height, width))
    original_sizes = _sizes(original_sizes, batch, None) or image_sizes
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(image_sizes):
        groups.setdefault(size, []).append(index)
    outputs: list[torch.Tensor | None] = [None] * batch
    for (h, w), indices in groups.items():
        logits = model(pixel_values[indices, :, :h, :w]).logits.float()
        for row, index in enumerate(indices):
            outputs[index] = F.interpolate(
                logits[row : row + 1], size=original_sizes[index], mode="bilinear", align_corners=False
            )[0]
    return outputs


def _sizes(sizes, batch: int, default) -> list[tuple[int, int]] | None:
    if sizes is None:
        return None if default is None else [tuple(default)] * batch
    sizes = [tuple(int(v) for v in size) for size in torch.as_tensor(sizes).tolist()]
    if len(sizes) != batch or any(len(size) != 2 for size in sizes):
        raise ValueError(f"expected {batch} (height, width) sizes, got {sizes}")
    return sizes


def register_with_segmentation_pipeline() -> None:
    """transformers' image-segmentation pipeline checks the model's class name against a copy of its built-in
    tables, a copy that leaves out the classes registered with `AutoModelForSemanticSegmentation.register`, and logs
    "not supported" before working. The name is added to the table it copies (at import: remote code too)."""
    from transformers.models.auto import modeling_auto

    names = modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES
    names.setdefault(MAESegmentationConfig.model_type, MAEForSemanticSegmentation.__name__)


register_with_segmentation_pipeline()

__all__ = ["MAEForSemanticSegmentation", "MultiScaleNeck", "segment_to_original_size", "slide_inference"]
