"""mae_hf: Masked Autoencoders (He et al., 2021) as Hugging Face models.

`import mae_hf` registers the models with the transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSemanticSegmentation,
)

from .configuration_mae import MAEConfig, MAESegmentationConfig
from .modeling_mae import (
    MAEForImageClassification,
    MAEForPreTraining,
    MAEForPreTrainingOutput,
    MAEModel,
    MAEModelOutput,
    MAEPreTrainedModel,
)
from .modeling_segmentation import MAEForSemanticSegmentation

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(MAEConfig.model_type, MAEConfig, exist_ok=True)
    for auto, model in (
        (AutoModel, MAEModel),
        (AutoModelForPreTraining, MAEForPreTraining),
        (AutoModelForImageClassification, MAEForImageClassification),
    ):
        auto.register(MAEConfig, model, exist_ok=True)
        model.register_for_auto_class(auto.__name__)
    MAEConfig.register_for_auto_class()
    AutoConfig.register(MAESegmentationConfig.model_type, MAESegmentationConfig, exist_ok=True)
    AutoModelForSemanticSegmentation.register(MAESegmentationConfig, MAEForSemanticSegmentation, exist_ok=True)
    MAEForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    MAESegmentationConfig.register_for_auto_class()


_register()

__all__ = [
    "MAEConfig",
    "MAESegmentationConfig",
    "MAEForSemanticSegmentation",
    "MAEModel",
    "MAEForPreTraining",
    "MAEForImageClassification",
    "MAEPreTrainedModel",
    "MAEModelOutput",
    "MAEForPreTrainingOutput",
]
