"""Backbones behind one interface (`Classifier`), built by name from the registry."""

from cxr.models import convnext, densenet, efficientnet, resnet  # noqa: F401 - they register
from cxr.models.registry import (
    ARCHITECTURES,
    Classifier,
    build_model,
    check_arch,
    check_pretrained,
    load_backbone_file,
    probabilities,
    probabilities_numpy,
)

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "build_model",
    "check_arch",
    "check_pretrained",
    "load_backbone_file",
    "probabilities",
    "probabilities_numpy",
]
